"""A full disk, said in one line: how much a write needs and how much is free."""
from __future__ import annotations

import errno


def is_disk_full(error: BaseException | None) -> bool:
  """Whether `error`, or an exception it was raised from, is ENOSPC (under any library's wrapper)."""
  while error is not None:
    if getattr(error, "errno", None) == errno.ENOSPC or "No space left on device" in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


def size_text(num_bytes: float) -> str:
  return f"{num_bytes / 2**30:.2f} GiB" if num_bytes >= 2**30 else f"{num_bytes / 2**20:.1f} MiB"

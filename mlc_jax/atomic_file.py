"""Files that are either whole or absent: written to a temporary sibling, then renamed over the target."""
from __future__ import annotations

import uuid

from etils import epath


def write_atomically(path, data: bytes) -> None:
  """Writes `data` to `path` (a local path or a URL) through a temporary sibling renamed over it; a failure or Ctrl-C
  leaves the previous file (or none) and no temporary one."""
  target = epath.Path(path)
  tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
  try:
    tmp.write_bytes(data)
    tmp.replace(target)
  except BaseException:
    if tmp.exists():
      tmp.unlink()
    raise

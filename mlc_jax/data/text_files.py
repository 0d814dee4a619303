"""Reading text data files with errors that name the file and the 1-based line (no TensorFlow, no TFDS)."""
from __future__ import annotations

from etils import epath


def where(path: epath.PathLike, line: int) -> str:
  """``"<path>, line <line>"``, the prefix of every data error."""
  return f"{path}, line {line}"


def read_text(path: epath.PathLike) -> str:
  """The UTF-8 text of ``path`` without a byte-order mark; invalid UTF-8 is an error naming the line."""
  data = epath.Path(path).read_bytes()
  try:
    return data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    line = data.count(b"\n", 0, e.start) + 1
    raise ValueError(f"{where(path, line)}: not UTF-8 ({e.reason})") from None

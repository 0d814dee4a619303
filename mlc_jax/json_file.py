"""JSON files of the folders a user hands over (model and tokenizer directories): a broken one is named."""
from __future__ import annotations

import json


def read(path: str) -> dict:
  """The JSON object in the file `path`.

  Raises:
    ValueError: naming `path` when it is not valid UTF-8 JSON or not an object.
  """
  try:
    with open(path, encoding="utf-8") as f:
      value = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} is not valid JSON ({e}); restore it or download it again") from None
  if not isinstance(value, dict):
    raise ValueError(f"{path} holds a JSON {type(value).__name__}, not an object; restore it or download it again")
  return value

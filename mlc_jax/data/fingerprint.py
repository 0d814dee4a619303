"""Content fingerprints of files (size and SHA-256), what derived caches are keyed by so that they never outlive
their sources."""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

from etils import epath

_CHUNK = 1 << 20


def file_digest(path: epath.PathLike) -> dict[str, int | str]:
  """``{"size": bytes, "sha256": hex}`` of one file's content."""
  h, size = hashlib.sha256(), 0
  with epath.Path(path).open("rb") as f:
    while chunk := f.read(_CHUNK):
      h.update(chunk)
      size += len(chunk)
  return {"size": size, "sha256": h.hexdigest()}


def _files(folder: epath.Path) -> Iterator[epath.Path]:
  for path in folder.iterdir():
    yield from _files(path) if path.is_dir() else (path,)


def fingerprint(root: epath.PathLike, paths: Iterable[epath.PathLike] | None = None) -> dict[str, dict]:
  """``{path relative to root: file_digest(path)}`` for ``paths`` (every file under ``root`` when not given)."""
  root = epath.Path(root)
  paths = [epath.Path(p) for p in paths] if paths is not None else list(_files(root))
  return {str(p.relative_to(root)): file_digest(p) for p in sorted(paths)}


def model_fingerprint(folder: epath.PathLike) -> dict[str, dict]:
  """`fingerprint` of what loading an HF model directory reads as the model: config.json and its safetensors files."""
  folder = epath.Path(folder)
  return fingerprint(folder, [p for p in folder.iterdir() if p.name == "config.json" or p.name.endswith(".safetensors")])


def changes(old: dict[str, dict], new: dict[str, dict]) -> str:
  """What differs between two fingerprints, e.g. ``"changed: a.json (180 → 60 bytes); added: b.csv"``."""
  changed = [f"{k} ({old[k]['size']} → {new[k]['size']} bytes)" for k in sorted(old.keys() & new.keys())
             if old[k] != new[k]]
  parts = [("changed", changed), ("added", sorted(new.keys() - old.keys())),
           ("removed", sorted(old.keys() - new.keys()))]
  return "; ".join(f"{what}: {', '.join(names)}" for what, names in parts if names) or "no change"

"""The output directory of an export (`save_hf`, `export_hf`, `convert`): refused when writing there would lose data,
written by one process at a time, built whole in a folder beside it and swapped in by renames."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator

from mlc_jax.disk_space import is_disk_full, size_text

EXPORT_MARKER = "mlc_jax_export.json"  # in every directory written here; records the target it was written for
TMP_PREFIX = ".tmp-save_hf-"  # + NAME-…: the export being built for NAME
OLD_PREFIX = ".old-save_hf-"  # + NAME-…: the previous export of NAME, moved aside for the swap


class OutputInUse(FileExistsError):
  """Another process is writing the same output directory."""


class DiskFull(OSError):
  """The export does not fit on the output's device; the message says how much it needs and how much is free."""


def check_output_dir(out_dir: str, *, overwrite: bool, sources: dict[str, str] | None = None,
                     protected: dict[str, str] | None = None, flag: str = "--out") -> None:
  """Refuses an output directory that would lose data, naming the paths involved (`FileExistsError`/`ValueError`).

  `sources` (`{what: path}`: an input model, a training workdir) may be neither `out_dir`, nor inside it, nor contain
  it, except that a new sub-folder of a training workdir is fine when it is not inside one of the `protected`
  folders (`{what: path}`: the workdir's checkpoints and caches). An existing non-empty `out_dir` is replaced only
  with `overwrite` and only when it holds a previous export (`EXPORT_MARKER`). `flag` names the output in messages.
  """
  out = os.path.realpath(out_dir)
  inside = lambda path, folder: os.path.commonpath([path, folder]) == folder
  for what, path in (protected or {}).items():
    if inside(out, os.path.realpath(path)):
      raise ValueError(f"{flag} {out_dir!r} lies inside the {what} {path!r}; write the export somewhere else")
  for what, path in (sources or {}).items():
    src = os.path.realpath(path)
    if out == src or inside(src, out):
      raise ValueError(f"{flag} {out_dir!r} is or contains the {what} {path!r}; writing there would delete it")
    if what != "training workdir" and inside(out, src):
      raise ValueError(f"{flag} {out_dir!r} lies inside the {what} {path!r}; write the export somewhere else")
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise FileExistsError(f"{out_dir!r} is a file; refusing to replace it")
  if os.path.isdir(out_dir) and os.listdir(out_dir):
    if not overwrite:
      raise FileExistsError(f"{out_dir!r} exists and is not empty; refusing to overwrite it (--overwrite replaces a "
                            "previous export)")
    if not os.path.isfile(os.path.join(out_dir, EXPORT_MARKER)):
      raise FileExistsError(f"{out_dir!r} is not a previous export (it has no {EXPORT_MARKER}); --overwrite only "
                            "replaces what mlc_jax wrote, never an arbitrary directory")


@contextlib.contextmanager
def staged(out_dir: str, *, overwrite: bool, needed_bytes: int, about: dict) -> Iterator[str]:
  """A new folder to write all of `out_dir` into; it replaces `out_dir` when the block ends without an exception.

  For the whole block `out_dir` is locked (an exclusive `flock` on the directory, made empty when absent), so a second
  export to it is refused (`OutputInUse`) instead of the last writer silently winning. The folder `.tmp-save_hf-NAME-…`
  beside `out_dir` gets `EXPORT_MARKER` (`about` plus the target) first and the modes of the process umask last; the swap
  moves the old export aside, renames the new one in, then deletes the old one. On any exception, Ctrl-C included,
  the new folder is removed and `out_dir` is as it was. Leftovers of a killed export to `out_dir` (by name and
  marker) are removed first. `needed_bytes` over the free space is a `DiskFull` before anything is written.
  """
  out = os.path.realpath(out_dir)  # (a symlink to an export keeps pointing at the new one)
  parent, name = os.path.split(out)
  created = not os.path.exists(out)
  try:
    os.makedirs(out, exist_ok=True)
  except OSError as e:  # a file on the way, a read-only or pseudo file system
    raise OSError(f"{out_dir!r} cannot be created: {e.strerror} ({e.filename})") from None
  handle, locked = os.open(out, os.O_RDONLY | os.O_DIRECTORY), False
  try:
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise OutputInUse(f"{out_dir!r} is being written by another export right now; wait for it to finish or write "
                        "somewhere else") from None
    locked = True
    check_output_dir(out_dir, overwrite=overwrite)  # again under the lock: another export may have just finished
    _remove_leftovers(parent, name, out)
    free = shutil.disk_usage(parent).free
    if free < needed_bytes:
      raise _disk_full(out_dir, needed_bytes, free)
    tmp, aside = tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{name}-", dir=parent), None
    try:
      with open(os.path.join(tmp, EXPORT_MARKER), "w") as f:
        json.dump({**about, "target": out}, f)
      yield tmp
      _apply_umask(tmp)
      aside = tempfile.mkdtemp(prefix=f"{OLD_PREFIX}{name}-", dir=parent)
      os.rename(out, aside)  # (replaces the empty `aside`)
      os.rename(tmp, out)
    except BaseException as e:
      if aside is not None:  # the swap failed half-way: the old export goes back
        os.rename(aside, out) if not os.path.exists(out) else os.rmdir(aside)
      _remove(tmp)
      if is_disk_full(e):
        raise _disk_full(out_dir, needed_bytes, shutil.disk_usage(parent).free) from e
      raise
    _remove(aside)
  except BaseException:
    if created and locked:
      with contextlib.suppress(OSError):
        os.rmdir(out)  # only while still the empty directory made here
    raise
  finally:
    os.close(handle)


def _apply_umask(folder: str) -> None:
  """Gives `folder` and everything in it the modes of files the user creates (mkdtemp makes 0700, safetensors 0600)."""
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(folder, 0o777 & ~umask)
  for root, dirs, files in os.walk(folder):
    for name in dirs:
      os.chmod(os.path.join(root, name), 0o777 & ~umask)
    for name in files:
      os.chmod(os.path.join(root, name), 0o666 & ~umask)


def _disk_full(out_dir: str, needed: int, free: int) -> DiskFull:
  return DiskFull(f"no space left on the device of {out_dir!r} while writing the export: it needs about "
                  f"{size_text(needed)} and {size_text(free)} are free; {out_dir!r} is as it was. Free some space and "
                  "run the same command again")


def _ours(folder: str, out: str) -> bool:
  """Whether `folder` is empty or holds the marker of an export written for `out`."""
  marker = os.path.join(folder, EXPORT_MARKER)
  if not os.listdir(folder):
    return True
  try:
    with open(marker) as f:
      return json.load(f).get("target") == out
  except (OSError, ValueError, AttributeError):
    return False


def _remove_leftovers(parent: str, name: str, out: str) -> None:
  """Removes the folders a killed export to `out` left beside it; an old export moved aside only once `out` holds
  an export again (a kill between the swap's two renames leaves it the only copy)."""
  replaced = os.path.isfile(os.path.join(out, EXPORT_MARKER))
  for entry in os.listdir(parent):
    path = os.path.join(parent, entry)
    old = entry.startswith(f"{OLD_PREFIX}{name}-")
    if (old or entry.startswith(f"{TMP_PREFIX}{name}-")) and os.path.isdir(path) and _ours(path, out) and (
        replaced or not old or not os.listdir(path)):
      _remove(path)


def _remove(folder: str) -> None:
  """Deletes `folder`, its marker last, so an interrupted removal is still recognised as ours next time."""
  for entry in os.listdir(folder):
    path = os.path.join(folder, entry)
    if entry != EXPORT_MARKER:
      shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
  shutil.rmtree(folder)

"""A training workdir: its checks, its saved config and the lock that keeps one process on it at a time.

  WORKDIR/config.json    the run's config, written atomically, and only once the run is known to start or resume
  WORKDIR/.lock          held (fcntl.flock) by the process training there; records its pid, host, start and command
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time

CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"


class WorkdirError(ValueError):
  """A workdir that cannot be used as asked; the message names the path."""


def check_usable(workdir: str) -> None:
  """Raises `WorkdirError` when `workdir` is a file, or it (or, if absent, its nearest existing parent) is not a
  writable directory. Creates nothing."""
  path = os.path.abspath(workdir)
  if os.path.exists(path):
    if not os.path.isdir(path):
      raise WorkdirError(f"--workdir {workdir!r} is a file, not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
      raise WorkdirError(f"--workdir {workdir!r} is not writable")
    return
  parent = os.path.dirname(path)
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
    raise WorkdirError(f"--workdir {workdir!r} cannot be created: {parent!r} is not a writable directory")


def read_config(workdir: str) -> dict | None:
  """The saved config of the run in `workdir` (None when there is none); a corrupt file is named."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise WorkdirError(f"{path} is not a valid config ({e}); restore it, or start a new --workdir") from None
  if not isinstance(saved, dict):
    raise WorkdirError(f"{path} is not a valid config (a JSON object expected); start a new --workdir")
  return saved


def write_config(workdir: str, text: str) -> None:
  """Writes config.json atomically (a killed write never leaves half a file)."""
  path = os.path.join(workdir, CONFIG_FILE)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)


class Lock:
  """An exclusive lock on a workdir for the life of a training process.

  `fcntl.flock` is released by the kernel when the process dies, so a lock left by a crashed or killed run is
  taken over (with a note naming it); a live holder is named in the error. On file systems without `flock`
  (some network mounts) the lock is only advisory.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._file = None

  def __enter__(self) -> "Lock":
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    self._file = open(self.path, "a+", encoding="utf-8")
    try:
      fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = self._holder()
      self._file.close()
      raise WorkdirError(f"{os.path.dirname(self.path)} is in use by {holder}; wait for it to finish or use "
                         "another --workdir") from None
    previous = self._holder()
    if previous != "another process":
      print(f"workdir: taking over the lock left by {previous}, which is no longer running")
    self._file.seek(0)
    self._file.truncate()
    json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
               "command": " ".join(sys.argv)}, self._file)
    self._file.flush()
    return self

  def _holder(self) -> str:
    self._file.seek(0)
    try:
      info = json.loads(self._file.read() or "null")
    except json.JSONDecodeError:
      info = None
    if not isinstance(info, dict):
      return "another process"
    return f"pid {info.get('pid')} on {info.get('host')} since {info.get('started')} ({info.get('command')})"

  def __exit__(self, *exc):
    self._file.seek(0)
    self._file.truncate()
    fcntl.flock(self._file, fcntl.LOCK_UN)
    self._file.close()

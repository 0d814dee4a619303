"""A training workdir: its checks, its saved config and the lock that keeps one process on it at a time.

A workdir is a local path or a URL (`gs://bucket/run`, …). Every file of ours in it goes through etils' `epath`, which
hands a URL to its object store (through fsspec's gcsfs, or tf.io.gfile when TensorFlow is installed); Orbax writes
the checkpoints there natively.

  WORKDIR/config.json    the run's config, written atomically, and only once the run is known to start or resume
  WORKDIR/.lock          held by the process training there; records its pid, host, start and command
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import threading
import time
import uuid

from etils import epath

from mlc_jax.atomic_file import write_atomically

CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"
# A URL workdir's lock (`HeartbeatLock`): renewed every HEARTBEAT_S, taken over once STALE_S old; read back SETTLE_S
# after it is written.
HEARTBEAT_S, STALE_S, SETTLE_S = 30.0, 120.0, 2.0


class WorkdirError(ValueError):
  """A workdir that cannot be used as asked; the message names the path."""


def is_remote(path) -> bool:
  """Whether `path` is a URL (`gs://…`): one store that every host of a run shares, unlike a local path."""
  return "://" in os.fspath(path)


def check_usable(workdir: str) -> None:
  """Raises `WorkdirError` when `workdir` is a file, or it (or, if absent, its nearest existing parent) is not a
  writable directory; a URL that cannot be reached (no gcsfs, no credentials) is named too. Creates nothing."""
  if is_remote(workdir):  # an object store has no permission bits to ask: a refused write fails at the first one
    path = epath.Path(workdir)
    try:
      is_file = path.exists() and not path.is_dir()
    except Exception as e:  # noqa: BLE001  (a missing backend, credentials or network: each its own type)
      hint = " (pip install 'mlc_jax[gcs]' installs gcsfs)" if isinstance(e, ImportError) else ""
      raise WorkdirError(f"--workdir {workdir!r} cannot be reached: {type(e).__name__}: {e}{hint}") from None
    if is_file:
      raise WorkdirError(f"--workdir {workdir!r} is a file, not a directory")
    return
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
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    return None
  try:
    saved = json.loads(path.read_text())
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise WorkdirError(f"{path} is not a valid config ({e}); restore it, or start a new --workdir") from None
  if not isinstance(saved, dict):
    raise WorkdirError(f"{path} is not a valid config (a JSON object expected); start a new --workdir")
  return saved


def write_config(workdir: str, text: str) -> None:
  """Writes config.json atomically (a killed write never leaves half a file)."""
  write_atomically(epath.Path(workdir) / CONFIG_FILE, text.encode())


def lock(workdir: str, *, primary: bool = True):
  """The lock of `workdir` for the life of a training process (a context manager): a `FileLock` on a local path, a
  `HeartbeatLock` on a URL. On a multi-host run every host shares a URL workdir, and only process 0 (`primary`) locks
  it; a local path is each host's own."""
  if not is_remote(workdir):
    return FileLock(workdir)
  return HeartbeatLock(workdir) if primary else contextlib.nullcontext()


def _holder_info() -> dict:
  return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
          "command": " ".join(sys.argv)}


def _describe(info) -> str:
  if not isinstance(info, dict):
    return "another process"
  return f"pid {info.get('pid')} on {info.get('host')} since {info.get('started')} ({info.get('command')})"


class FileLock:
  """An exclusive lock on a local workdir.

  `fcntl.flock` is released by the kernel when the process dies, so a lock left by a crashed or killed run is
  taken over (with a note naming it); a live holder is named in the error. On file systems without `flock`
  (some network mounts) the lock is only advisory.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._file = None

  def __enter__(self) -> "FileLock":
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
    json.dump(_holder_info(), self._file)
    self._file.flush()
    return self

  def _holder(self) -> str:
    self._file.seek(0)
    try:
      info = json.loads(self._file.read() or "null")
    except json.JSONDecodeError:
      info = None
    return _describe(info)

  def __exit__(self, *exc):
    self._file.seek(0)
    self._file.truncate()
    fcntl.flock(self._file, fcntl.LOCK_UN)
    self._file.close()


class HeartbeatLock:
  """An exclusive lock on a URL workdir, where there is no `flock`: the object WORKDIR/.lock.

  It holds the holder's details, a token and a heartbeat time that a thread renews every `heartbeat_s`; the process
  that ends removes it. A lock whose heartbeat is older than `stale_s` (its process died without removing it) is
  taken over with a note, a fresher one is named in the error. Taking it: write it, wait `settle_s`, read it back;
  of two processes that start together the last writer keeps it and the other stops. The lock guards against the
  usual mistake (a second run on a live workdir), not against every race, and assumes the hosts' clocks agree to
  well within `stale_s`.
  """

  def __init__(self, workdir: str, *, heartbeat_s: float = HEARTBEAT_S, stale_s: float = STALE_S,
               settle_s: float = SETTLE_S):
    self.workdir, self.path = workdir, epath.Path(workdir) / LOCK_FILE
    self.heartbeat_s, self.stale_s, self.settle_s = heartbeat_s, stale_s, settle_s
    self._info = {**_holder_info(), "token": uuid.uuid4().hex}
    self._stop = threading.Event()
    self._thread = None

  def _read(self) -> dict | None:
    try:
      info = json.loads(self.path.read_text())
    except (FileNotFoundError, UnicodeDecodeError, json.JSONDecodeError):
      return None
    return info if isinstance(info, dict) else None

  def _write(self):
    self.path.write_text(json.dumps({**self._info, "heartbeat": time.time()}))

  def _in_use(self, held: dict, why: str) -> WorkdirError:
    return WorkdirError(f"{self.workdir} is in use by {_describe(held)} ({why}); wait for it to finish or use "
                        "another --workdir")

  def __enter__(self) -> "HeartbeatLock":
    held = self._read()
    if held is not None:
      age = time.time() - float(held.get("heartbeat", 0))
      if age < self.stale_s:
        raise self._in_use(held, f"its heartbeat is {age:.0f} s old; a lock is taken over at {self.stale_s:.0f} s")
      print(f"workdir: taking over the lock left by {_describe(held)}, whose heartbeat stopped {age:.0f} s ago")
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._write()
    time.sleep(self.settle_s)
    held = self._read()
    if held is None or held.get("token") != self._info["token"]:
      raise self._in_use(held, "it took the lock at the same moment")
    self._thread = threading.Thread(target=self._beat, name="mlc_jax-workdir-heartbeat", daemon=True)
    self._thread.start()
    return self

  def _beat(self):
    while not self._stop.wait(self.heartbeat_s):
      try:
        held = self._read()
        if held is None or held.get("token") != self._info["token"]:
          print(f"workdir: {self.path} was taken over by {_describe(held)}; this run no longer holds it",
                file=sys.stderr)
          return
        self._write()
      except Exception as e:  # noqa: BLE001  (a network error: try again at the next heartbeat)
        print(f"workdir: could not renew {self.path} ({type(e).__name__}: {e})", file=sys.stderr)

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    held = self._read()
    if held is not None and held.get("token") == self._info["token"]:
      self.path.unlink(missing_ok=True)

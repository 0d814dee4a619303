"""Orbax checkpoints of the train state and the data-iterator position under WORKDIR/checkpoints (a local path or a
URL: Orbax writes `gs://` natively)."""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from mlc_jax.disk_space import is_disk_full, size_text
from mlc_jax.train.workdir import is_remote


def manager(workdir: str, *, keep: int, every: int, async_save: bool) -> ocp.CheckpointManager:
  """Keeps the last `keep` checkpoints; `save` writes every `every` steps (or when forced)."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every,
                                         enable_async_checkpointing=async_save, create=True)
  directory = epath.Path(workdir) / "checkpoints"
  return ocp.CheckpointManager(directory if is_remote(workdir) else directory.resolve(), options=options,
                               item_names=("state", "data"))


class CheckpointWriteError(RuntimeError):
  """A checkpoint could not be written (e.g. the disk is full); the message says where and how much was needed."""


def _disk_full(mngr: ocp.CheckpointManager, needed: int) -> CheckpointWriteError:
  free, latest = shutil.disk_usage(str(mngr.directory)).free, mngr.latest_step()
  kept = ("there is no complete checkpoint yet" if latest is None
          else f"the newest complete checkpoint (step {latest}) is intact")
  return CheckpointWriteError(
      f"no space left on the device of {mngr.directory} while writing a checkpoint: it needs about "
      f"{size_text(needed)} and {size_text(free)} are free; {kept}. Free some space (or lower checkpoint.keep) and run the "
      "same command again")


def _write_error(mngr: ocp.CheckpointManager, state, error: Exception) -> Exception:
  return _disk_full(mngr, _state_bytes(state)) if is_disk_full(error) else error


def _state_bytes(state) -> int:
  return sum(x.nbytes for x in jax.tree.leaves(state))


# A checkpoint takes about its arrays' bytes (compression gains little on weights) plus metadata.
SPACE_MARGIN, SPACE_OVERHEAD = 1.1, 2**20


def save(mngr: ocp.CheckpointManager, step: int, state, data_state: dict, *, force: bool = False) -> bool:
  """Saves (asynchronously with `async_save`) at `step` when due or `force`d; a full disk is a clear error.

  Free space on a local disk is checked first, so the usual full disk is refused before Orbax starts writing (no
  partial files, no background tracebacks); a disk that fills during the write is reported the same way when the save
  fails.
  """
  if (force or mngr.should_save(step)) and not is_remote(mngr.directory):
    needed = int(_state_bytes(state) * SPACE_MARGIN) + SPACE_OVERHEAD
    if shutil.disk_usage(str(mngr.directory)).free < needed:
      raise _disk_full(mngr, needed)
  try:
    return mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                   data=ocp.args.JsonSave(data_state)), force=force)
  except Exception as e:  # noqa: BLE001  (a failed background save of an earlier step surfaces here too)
    raise _write_error(mngr, state, e) from e


def wait(mngr: ocp.CheckpointManager, state) -> None:
  """Waits for the background saves; a full disk is a clear error (`state` sizes what was needed)."""
  try:
    mngr.wait_until_finished()
  except Exception as e:  # noqa: BLE001
    raise _write_error(mngr, state, e) from e


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state):
  """(state, data_state) at `step`, each array read straight into the sharding of its `jax.ShapeDtypeStruct`."""
  restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                        data=ocp.args.JsonRestore()))
  return restored["state"], restored["data"]


def restore_params(mngr: ocp.CheckpointManager, step: int, abstract_params: dict, *, to_host: bool = False) -> dict:
  """Only the parameters (`state.params`) at `step`: the optimizer state and the reference copy are never read.

  Arrays go into the shardings of `abstract_params`' `jax.ShapeDtypeStruct`s, or with `to_host` into host NumPy
  arrays (one copy in host memory, nothing on the devices: what writing them to files needs).
  """
  item = {"params": abstract_params}
  if to_host:
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
  else:
    restore_args = ocp.checkpoint_utils.construct_restore_args(item)
  restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item=item, restore_args=restore_args, partial_restore=True)))
  return restored["state"]["params"]


class CheckpointError(ValueError):
  """No usable checkpoint (the message names the workdir, the steps and why each failed)."""


def _reason(error: BaseException) -> str:
  text = str(error).strip().splitlines()[0] if str(error).strip() else ""
  return f"{type(error).__name__}: {text[:240]}"


@contextlib.contextmanager
def _stderr_to(path: str):
  """Sends file descriptor 2 to `path` (C++ libraries write there directly) for the duration."""
  sys.stderr.flush()
  saved = os.dup(2)
  with open(path, "ab") as f:
    os.dup2(f.fileno(), 2)
  try:
    yield
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)


def _drain_into(log: str, *, quiet_s: float = 1.0, max_s: float = 15.0):
  """Keeps stderr in `log` until the failed restore's in-flight reads stop writing to it (quiet for `quiet_s`)."""
  deadline, quiet_since, size = time.monotonic() + max_s, time.monotonic(), -1
  with _stderr_to(log):
    while time.monotonic() < deadline and time.monotonic() - quiet_since < quiet_s:
      time.sleep(0.25)
      if os.path.getsize(log) != size:
        size, quiet_since = os.path.getsize(log), time.monotonic()


class _LateTaskErrors(logging.Filter):
  """Drops asyncio's "Task exception was never retrieved" records (each with its traceback) into `log`."""

  def __init__(self, log: str):
    super().__init__()
    self.log = log

  def filter(self, record: logging.LogRecord) -> bool:
    if "Task exception was never retrieved" not in record.getMessage():
      return True
    with open(self.log, "a") as f:
      f.write(logging.Formatter().format(record) + "\n")
    return False


@contextlib.contextmanager
def _late_errors_to(log: str):
  """Sends the late errors of a restore's reads to `log`; kept for the run if it fails.

  When a restore fails, TensorStore still completes the reads in flight after Orbax has closed their event loop:
  each reports "Event loop is closed" through `sys.unraisablehook`, and each task whose exception nobody read is
  logged by asyncio ("Task exception was never retrieved", when the task is collected), at any later time. Every
  other unraisable error and log record goes where it went before.
  """
  previous = sys.unraisablehook

  def hook(args):
    if isinstance(args.exc_value, RuntimeError) and "Event loop is closed" in str(args.exc_value):
      with open(log, "a") as f:
        traceback.print_exception(args.exc_value, file=f)
    else:
      previous(args)

  tasks = _LateTaskErrors(log)
  sys.unraisablehook = hook
  logging.getLogger("asyncio").addFilter(tasks)
  yield
  sys.unraisablehook = previous  # reached only when the restore succeeded
  logging.getLogger("asyncio").removeFilter(tasks)


def restore_intact(mngr: ocp.CheckpointManager, abstract_state, step: int | None = None):
  """(state, data_state, step) from the newest checkpoint that restores (or exactly `step`).

  A checkpoint that fails to restore (a truncated or missing file, a missing item) is skipped with a line naming
  the step and why, and the next older one is tried. The steps newer than the one restored are moved aside to
  `checkpoints/skipped-<step>-<time>` (never deleted), so training can write those steps again.
  """
  steps = sorted(mngr.all_steps(), reverse=True)
  if step is not None and step not in steps:
    raise CheckpointError(f"--restore_step {step}: no checkpoint at that step in {mngr.directory}; "
                          f"available: {sorted(steps)}")
  failed = []
  for candidate in ([step] if step is not None else steps):
    log = os.path.join(tempfile.gettempdir(), f"mlc_jax-restore-step{candidate}-{os.getpid()}.log")
    try:
      # A failing restore makes Orbax/TensorStore print pages of tracebacks (also from reads still in flight):
      # they go to a log (outside the workdir, which stays as it was), and the one line below says what failed.
      with _late_errors_to(log), _stderr_to(log):
        state, data_state = restore(mngr, candidate, abstract_state)
    except Exception as e:  # noqa: BLE001  (corruption shows up as many error types: report it, try the next)
      _drain_into(log)
      failed.append((candidate, _reason(e)))
      print(f"checkpoint: skipping step {candidate} in {mngr.directory}: {failed[-1][1]} (details: {log})")
      continue
    if failed:
      _drain_into(log)
    else:
      os.remove(log)
    newer = [s for s in steps if s > candidate]
    for s in newer:
      aside = (epath.Path(mngr.directory) / str(s)).rename(
          epath.Path(mngr.directory) / f"skipped-{s}-{time.strftime('%Y%m%d-%H%M%S')}")
      print(f"checkpoint: moved step {s} aside to {aside}")
    if newer:
      mngr.reload()
    return state, data_state, candidate
  raise CheckpointError(f"no checkpoint in {mngr.directory} could be restored (does the config still describe the "
                        "model that wrote them?): " + "; ".join(f"step {s}: {why}" for s, why in failed))

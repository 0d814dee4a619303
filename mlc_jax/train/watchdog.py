"""A watchdog for the training loop: a stuck step becomes a clear error, and SIGTERM or Ctrl-C ends even a stuck run.

The loop's main thread spends a step inside XLA, where Python signal handlers cannot run. The watchdog thread
learns of SIGTERM and SIGINT through `signal.set_wakeup_fd` (written by the C-level handler from whatever thread
receives the signal) and watches the clock:
  * a step that runs longer than `timeout_s` ends the process with exit code 124 and one line naming the step, the
    mesh and the last checkpoint (a hung collective, or a deadlocked kernel, never finishes on its own);
  * after SIGTERM (SIGINT, Ctrl-C) the loop saves a checkpoint when the step returns and exits 143 (130); if the step
    does not return within `grace_s`, the watchdog exits with that code itself, saying that no checkpoint was written;
  * a second SIGINT exits 130 at once, without saving.
"""
from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable

TIMEOUT_EXIT_CODE = 124
PREEMPTED_EXIT_CODE = 143
INTERRUPTED_EXIT_CODE = 130
# How each stopping signal is named in messages, and the exit code it ends the run with.
STOP_SIGNALS = {signal.SIGTERM: ("SIGTERM", PREEMPTED_EXIT_CODE), signal.SIGINT: ("Ctrl-C", INTERRUPTED_EXIT_CODE)}


class StepWatchdog:
  """Use as a context manager around the loop; call `started(step)` / `finished()` around each step."""

  def __init__(self, timeout_s: float, describe: Callable[[], str], *, grace_s: float = 60.0):
    """`describe()` → what to add to a message (the mesh, the last checkpoint)."""
    self.timeout_s, self.grace_s, self.describe = timeout_s, grace_s, describe
    self.stopped_by: signal.Signals | None = None  # the first stopping signal received
    self._step, self._step_start, self._signal_time, self._interrupts = None, None, None, 0
    self._stop = threading.Event()

  def started(self, step: int):
    self._step, self._step_start = step, time.monotonic()

  def finished(self):
    self._step, self._step_start = None, None

  @property
  def preempted(self) -> bool:
    """A stopping signal arrived: the loop saves and stops after this step."""
    return self.stopped_by is not None

  def __enter__(self) -> "StepWatchdog":
    self._previous_handlers = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
    self._read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    self._write_fd = write_fd
    self._previous_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    self._thread = threading.Thread(target=self._watch, name="mlc_jax-step-watchdog", daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join(timeout=5)
    signal.set_wakeup_fd(self._previous_wakeup)
    for s, handler in self._previous_handlers.items():
      signal.signal(s, handler)
    os.close(self._read_fd)
    os.close(self._write_fd)

  def _on_signal(self, signum, _frame):
    if self.stopped_by is None:
      self.stopped_by = signal.Signals(signum)

  def _exit(self, code: int, message: str):
    sys.stderr.write(f"\nerror: {message}; {self.describe()}\n")  # after a progress bar's unfinished line
    sys.stderr.flush()
    os._exit(code)

  def _watch(self):
    while not self._stop.is_set():
      ready, _, _ = select.select([self._read_fd], [], [], 1.0)
      for signum in os.read(self._read_fd, 64) if ready else b"":
        self._received(signum)
      now, step, start = time.monotonic(), self._step, self._step_start
      if step is None or start is None:
        continue
      if self._signal_time is not None and now - max(self._signal_time, start) > self.grace_s:
        name, code = STOP_SIGNALS[self.stopped_by]
        self._exit(code, f"{name} during step {step}, which has not finished {self.grace_s:.0f} s later: exiting "
                   "without saving it")
      if self.timeout_s and now - start > self.timeout_s:
        self._exit(TIMEOUT_EXIT_CODE, f"step {step} has run for {now - start:.0f} s, over train.step_timeout_s="
                   f"{self.timeout_s:g} (a hung collective or a deadlocked kernel never finishes)")

  def _received(self, signum: int):
    """Seen from the watchdog thread: the first stopping signal starts the grace period; a second SIGINT exits."""
    if signum not in STOP_SIGNALS:
      return
    if self.stopped_by is None:
      self.stopped_by = signal.Signals(signum)
    if self._signal_time is None:
      self._signal_time = time.monotonic()
    if signum == signal.SIGINT:
      self._interrupts += 1
      if self._interrupts > 1:
        during = "" if self._step is None else f" during step {self._step}"
        self._exit(INTERRUPTED_EXIT_CODE, f"interrupted (Ctrl-C) twice{during}: exiting at once without saving")

"""`python tests/faults.py FAULT N TRAIN_ARGS…`: the training CLI with a fault right after step N completes.

FAULT is `kill_after` (SIGKILL) or `interrupt_twice_after` (two Ctrl-Cs (SIGINT), then a hook that never returns:
only the second Ctrl-C can end the run). Installs the fault through the trainer's step hook, so the production loop
carries no test-only code.
"""
import os
import signal
import sys
import time


def kill_after(n: int):
  def hook(step, state):
    del state
    if step == n:
      os.kill(os.getpid(), signal.SIGKILL)
  return hook


def interrupt_twice_after(n: int):
  def hook(step, state):
    del state
    if step == n:
      os.kill(os.getpid(), signal.SIGINT)
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(120)
  return hook


FAULTS = {"kill_after": kill_after, "interrupt_twice_after": interrupt_twice_after}

if __name__ == "__main__":
  from mlc_jax.train.__main__ import main

  fault, n, *train_args = sys.argv[1:]
  if fault not in FAULTS:
    sys.exit(f"unknown fault {fault!r}")
  sys.exit(main(train_args, on_step=FAULTS[fault](int(n))))

"""`python tests/faults.py kill_after N TRAIN_ARGS…`: the training CLI, SIGKILLed right after step N completes.

Installs the fault through the trainer's step hook, so the production loop carries no test-only code.
"""
import os
import signal
import sys


def kill_after(n: int):
  def hook(step, state):
    del state
    if step == n:
      os.kill(os.getpid(), signal.SIGKILL)
  return hook


if __name__ == "__main__":
  from mlc_jax.train.__main__ import main

  fault, n, *train_args = sys.argv[1:]
  if fault != "kill_after":
    sys.exit(f"unknown fault {fault!r}")
  sys.exit(main(train_args, on_step=kill_after(int(n))))

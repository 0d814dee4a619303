"""`python tests/export_fault.py FAULT MODULE ARGS…`: `python -m MODULE ARGS…` (export_hf, convert) with FAULT right after
the export's first safetensors file is written into its temporary folder.

FAULT: `sigint` (Ctrl-C), `sigkill`, or `wait:PATH` (pause until PATH exists, at most 120 s). Installed by wrapping
`hf_io.save_file`, so the production code carries no test-only code.
"""
import os
import runpy
import signal
import sys
import time

from mlc_jax.models import hf_io


def after_first_write(fault: str):
  write = hf_io.save_file
  done = []

  def save_file(*args, **kwargs):
    write(*args, **kwargs)
    if done:
      return
    done.append(True)
    if fault == "sigint":
      os.kill(os.getpid(), signal.SIGINT)
    elif fault == "sigkill":
      os.kill(os.getpid(), signal.SIGKILL)
    elif fault.startswith("wait:"):
      deadline = time.time() + 120
      while not os.path.exists(fault[len("wait:"):]) and time.time() < deadline:
        time.sleep(0.1)
    else:
      sys.exit(f"unknown fault {fault!r}")

  return save_file


if __name__ == "__main__":
  fault, module, *args = sys.argv[1:]
  hf_io.save_file = after_first_write(fault)
  sys.argv = [module, *args]
  runpy.run_module(module, run_name="__main__", alter_sys=True)

"""mlc_jax.host_malloc: with it, XLA:CPU's buffers come from malloc's heap (not fresh mmaps) and a freed block is
reused without faulting its pages in again; without it (glibc's defaults, or opted out), every large block is a
fresh mmap whose pages the kernel faults in and zeroes anew. Each case runs in a fresh process: malloc's settings
are process-wide."""
import json
import os
import platform
import subprocess
import sys

import pytest

from mlc_jax import host_malloc
from paths import ROOT

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the settings are glibc's")

# Prints what keep_freed_memory() returned; the bytes malloc holds in mmaps while a jitted program's 64 MiB output is
# alive, and the free bytes it keeps in its heap once the output is deleted; the minor page faults of each of five
# rounds of allocating, touching and freeing 64 MiB.
PROBE = r"""
import ctypes, gc, json, resource, sys
from mlc_jax import host_malloc
tuned = host_malloc.keep_freed_memory() if sys.argv[1] == "call" else None

class Mallinfo2(ctypes.Structure):
  _fields_ = [(name, ctypes.c_size_t) for name in
              "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Mallinfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
import jax, jax.numpy as jnp
x = jnp.ones((4096, 4096), jnp.float32)
y = jax.jit(lambda a: jnp.exp(a) * 2.0)(x).block_until_ready()
assert abs(float(y[0, 0]) - 5.436563656918091) < 1e-5
mmapped = libc.mallinfo2().hblkhd
del y
gc.collect()
kept = libc.mallinfo2().fordblks

size, faults = 64 << 20, []
for _ in range(5):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  block = libc.malloc(size)
  ctypes.memset(block, 1, size)
  libc.free(block)
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"tuned": tuned, "mmapped": mmapped, "kept": kept, "faults": faults}))
"""
BLOCK = 64 << 20
PAGES = BLOCK // 4096  # what touching a block faults in when none of it is reused


def _probe(mode: str, **env) -> dict:
  proc = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=300, cwd=ROOT,
                        env={**os.environ, "JAX_PLATFORMS": "cpu", **env})
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_xla_buffers_come_from_the_heap_and_freed_blocks_are_reused():
  tuned = _probe("call")
  assert tuned["tuned"] is True
  assert tuned["mmapped"] < BLOCK, tuned  # the jitted program's output is not an mmap of its own
  assert tuned["kept"] >= BLOCK, tuned  # deleting it leaves its memory with the process
  assert max(tuned["faults"][1:]) < PAGES // 16, tuned  # the first round's pages serve the later ones


def test_glibc_defaults_mmap_large_buffers_and_fault_them_in_every_time():
  default = _probe("skip")
  assert default["mmapped"] >= BLOCK, default
  assert default["kept"] < BLOCK, default  # the output's mmap went back to the OS
  assert min(default["faults"]) >= PAGES // 2, default


def test_opting_out_keeps_glibcs_defaults():
  opted_out = _probe("call", MLC_JAX_HOST_MALLOC="system")
  assert opted_out["tuned"] is False
  assert opted_out["mmapped"] >= BLOCK, opted_out
  assert min(opted_out["faults"]) >= PAGES // 2, opted_out


def test_an_unknown_setting_is_refused_by_name(monkeypatch):
  monkeypatch.setenv("MLC_JAX_HOST_MALLOC", "off")
  with pytest.raises(ValueError, match="MLC_JAX_HOST_MALLOC='off'"):
    host_malloc.keep_freed_memory()


def test_a_command_given_an_unknown_setting_says_so_in_one_line_and_writes_nothing(tmp_path):
  workdir = tmp_path / "run"
  proc = subprocess.run([sys.executable, "-m", "mlc_jax.train", "--config", str(ROOT / "configs" / "demo.py"),
                         "--workdir", str(workdir)], capture_output=True, text=True, timeout=300, cwd=ROOT,
                        env={**os.environ, "JAX_PLATFORMS": "cpu", "MLC_JAX_HOST_MALLOC": "off"})
  assert proc.returncode == 2, proc.stderr[-3000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert errors == [errors[0]] and "MLC_JAX_HOST_MALLOC='off'" in errors[0], proc.stderr[-3000:]
  assert not workdir.exists()

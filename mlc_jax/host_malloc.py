"""The host allocator: keep the memory a step frees for the next step instead of handing it back to the OS.

XLA:CPU takes each execution's buffers from `malloc`. With glibc's defaults the large ones are fresh `mmap`s (and
the runtime threads' arenas are heaps that glibc unmaps once empty), so every step faults its GBs of temporaries in
again and the kernel zeroes every page: on the 58.5M-parameter bench a quarter of a DPO step's CPU samples were
in the kernel, most of it `clear_page_erms`; with this setting under 1 %, and DPO and DPO+MLC steps 9 % faster
in alternating processes at the same peak memory (docs/benchmarks.md, "The host allocator").

`keep_freed_memory()` sets, through `mallopt`, one arena for all threads (the runtime threads' own arenas would
`mmap` every block over 64 MiB), no `mmap` for large blocks (glibc still falls back to it where the heap cannot grow)
and no trimming of the heap's top (a bounded threshold, 2 GiB, let the DPO+MLC bench step's larger buffers go back
to the OS and fault in again every step), so freed blocks are reused. It must run before jax's backend starts its
threads (the first computation): every command calls it first (`mlc_jax.cli.run`, the generate CLI, the scripts).
For another process, the same settings go in its environment at its start: `GLIBC_TUNABLES` (the constant below;
scripts/bench.py gives it to the TRL side with `--trl_malloc tuned`).
`MLC_JAX_HOST_MALLOC=system` leaves the C library's defaults (`tuned` or unset: the settings); on a C library other
than glibc nothing is changed.
"""
from __future__ import annotations

import ctypes
import os
import platform

# tunable name: (mallopt option from glibc's malloc.h, its value, the tunable's value); trimming off is mallopt's -1
SETTINGS = {"arena_max": (-8, 1, 1), "mmap_max": (-4, 0, 0), "trim_threshold": (-1, -1, 2**62)}
GLIBC_TUNABLES = ":".join(f"glibc.malloc.{name}={tunable}" for name, (_, _, tunable) in SETTINGS.items())
OPT_OUT_ENV = "MLC_JAX_HOST_MALLOC"
CHOICES = ("tuned", "system")


def keep_freed_memory() -> bool:
  """Tunes glibc's malloc as the module docstring says; True when it did (glibc, not opted out), else False.

  Raises ValueError when `MLC_JAX_HOST_MALLOC` is set to something other than `tuned` or `system`.
  """
  choice = os.environ.get(OPT_OUT_ENV, "tuned").lower() or "tuned"
  if choice not in CHOICES:
    raise ValueError(f"{OPT_OUT_ENV}={os.environ[OPT_OUT_ENV]!r}: expected 'tuned' (the default: freed memory kept "
                     f"for the next step) or 'system' (the C library's malloc defaults)")
  if choice == "system" or platform.libc_ver()[0] != "glibc":
    return False
  libc = ctypes.CDLL("libc.so.6")
  return all(libc.mallopt(option, value) == 1 for option, value, _ in SETTINGS.values())

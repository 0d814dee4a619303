"""Which jax platforms a command starts, chosen before jax is imported. Imports no jax.

With libtpu installed and no TPU attached, jax's automatic choice starts libtpu anyway, which prints several lines
of start-up errors on stderr before falling back to the CPU. `select()` (run on `import mlc_jax`) sets
`JAX_PLATFORMS=cpu` in that one case: JAX_PLATFORMS unset, no TPU chip here, and no other PJRT plugin (a GPU's)
installed for jax to choose. A user's JAX_PLATFORMS, a TPU VM and a GPU plugin are left to jax. libtpu still
compiles for a TPU topology without a TPU under JAX_PLATFORMS=cpu (`mlc_jax.compile`).
"""
from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import os
import pkgutil


def tpu_attached() -> bool:
  """A TPU chip is on this machine (its device files: /dev/accel* on v2-v4 and v5e, /dev/vfio/N on v5p and v6e)."""
  return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def other_plugins() -> list[str]:
  """The installed PJRT plugins jax discovers besides libtpu (entry points and `jax_plugins.*` modules)."""
  names = [e.name for e in importlib.metadata.entry_points(group="jax_plugins")]
  spec = importlib.util.find_spec("jax_plugins")
  if spec is not None and spec.submodule_search_locations:
    names += [m.name for m in pkgutil.iter_modules(spec.submodule_search_locations)]
  return names


def select(environ=os.environ) -> None:
  """Sets JAX_PLATFORMS=cpu where jax would otherwise start libtpu on a machine without a TPU."""
  if "JAX_PLATFORMS" in environ or tpu_attached() or importlib.util.find_spec("libtpu") is None or other_plugins():
    return
  environ["JAX_PLATFORMS"] = "cpu"

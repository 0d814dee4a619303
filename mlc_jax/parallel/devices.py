"""What the accelerators can do: peak dense bf16 FLOP/s per chip, by JAX `device_kind` (the vendors' figures).

TPUs come from their generation table (`mlc_jax.parallel.tpu`); NVIDIA GPUs are listed here.
"""
from __future__ import annotations

from mlc_jax.parallel.tpu import GENERATIONS

# Matched as prefixes of `jax.devices()[0].device_kind`, longest first.
PEAK_BF16_FLOPS = {
    **{g.device_kind: g.peak_bf16_flops for g in GENERATIONS.values()},
    "NVIDIA H200": 989e12,
    "NVIDIA H100": 989e12,
    "NVIDIA A100": 312e12,
    "NVIDIA L4": 121e12,
}


def peak_flops(device_kind: str) -> float | None:
  """The chip's peak dense bf16 FLOP/s, or None when it is not in `PEAK_BF16_FLOPS` (e.g. a CPU)."""
  for prefix in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
    if device_kind.startswith(prefix):
      return PEAK_BF16_FLOPS[prefix]
  return None

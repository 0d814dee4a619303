"""Rotary position embeddings (RoPE), with the frequency scalings of the supported families."""
from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
import numpy as np

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


def inverse_frequencies(head_dim: int, theta: float, scaling: dict[str, Any] | None = None) -> np.ndarray:
  """Per-pair rotation frequencies `[head_dim // 2]` (float64 numpy; cast by the caller).

  `scaling` is HF's rope-parameters dict: `None`/`default`, `linear` (positions divided by `factor`) or
  `llama3` (Llama-3.1: long wavelengths divided by `factor`, short ones kept, a smooth blend between).
  """
  inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
  rope_type = (scaling or {}).get("rope_type", "default")
  if rope_type == "default":
    return inv_freq
  if rope_type == "linear":
    return inv_freq / scaling["factor"]
  if rope_type == "llama3":
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return np.where(is_medium, blended, scaled)
  raise ValueError(f"rope_type {rope_type!r} is not supported (supported: {', '.join(SUPPORTED_ROPE_TYPES)})")


def rotary_tables(positions: jnp.ndarray, inv_freq: np.ndarray, num_positions: int | None = None
                  ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """cos and sin tables `[batch, seq, head_dim]` (float32) for integer `positions` `[batch, seq]`.

  With `num_positions` P (the caller guarantees every position is in `[0, P)`), cos and sin are evaluated once per
  position, on a `[P, head_dim]` table, and gathered per token: the same values. Evaluated per token instead, XLA
  fuses them into every consumer, so each layer's rotations of q and k (forward and backward) would compute them
  again (on XLA:CPU a scalar libm call per element; docs/benchmarks.md).
  """
  if num_positions is None:
    return _cos_sin(positions.astype(jnp.float32), inv_freq)
  cos_ph, sin_ph = _cos_sin(jnp.arange(num_positions, dtype=jnp.float32), inv_freq)
  return cos_ph[positions], sin_ph[positions]


def _cos_sin(positions: jnp.ndarray, inv_freq: np.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """cos and sin `[..., head_dim]` of float32 `positions` `[...]` times the frequencies (HF's half-split layout)."""
  angles = positions[..., None] * jnp.asarray(inv_freq, jnp.float32)
  angles = jnp.concatenate([angles, angles], axis=-1)
  return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x_bsnh: jnp.ndarray, cos_bsh: jnp.ndarray, sin_bsh: jnp.ndarray) -> jnp.ndarray:
  """Rotates `x` `[batch, seq, heads, head_dim]` by position (HF's half-split layout); keeps x's dtype."""
  half = x_bsnh.shape[-1] // 2
  x = x_bsnh.astype(jnp.float32)
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  out = x * cos_bsh[:, :, None, :] + rotated * sin_bsh[:, :, None, :]
  return out.astype(x_bsnh.dtype)

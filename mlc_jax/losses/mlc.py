"""MLC multilingual consistency loss (DESIGN.md §2.1).

The extractor maps the L language variants of each prompt to `z` `[batch, L, D]`. Each row is scaled to unit
length and the singular values of the resulting `L x D` matrix are pushed towards rank one: the loss is the
cross-entropy of `softmax(s / tau)` with target index 0 (the largest singular value). No language is an anchor.

Degenerate inputs (all rows equal, a zero row, an all-zero `z`, `D < L`) give a finite value and gradient: the
row norm uses a safe square root, the singular values are taken without singular vectors (their derivative
`u_j^T dZ v_j` has no `1 / (sigma_i^2 - sigma_j^2)` terms), and `sigma_1` is floored before dividing by it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

NORMALIZE_MODES = ("sigma1", "none")


def _singular_values(z: jax.Array, eps: float) -> jax.Array:
  """Singular values `[batch, min(L, D)]` (descending, at least float32) of the row-normalised `z` `[batch, L, D]`."""
  if z.ndim != 3:
    raise ValueError(f"z must be [batch, languages, dim], got shape {z.shape}")
  z = z.astype(jnp.promote_types(z.dtype, jnp.float32))
  sq = jnp.sum(jnp.square(z), axis=-1, keepdims=True)
  positive = sq > 0
  # Double where: sqrt'(0) is inf, and inf * 0 = NaN would leak through a single where.
  norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)
  z_hat = z / (norm + eps)
  if jax.default_backend() == "cpu":
    # One matrix per LAPACK call. A batched call splits its batch into tasks on XLA:CPU's intra-op thread pool and
    # waits for them; with several (simulated) devices each already holding a pool thread in its own batched SVD,
    # those tasks never run (DESIGN.md §7). An unbatched call runs on the calling thread.
    return jax.lax.map(lambda m: jnp.linalg.svd(m, compute_uv=False), z_hat)
  return jnp.linalg.svd(z_hat, compute_uv=False)


def consistency_loss(z: jax.Array, *, tau: float = 0.2, normalize: str = "sigma1", eps: float = 1e-12) -> jax.Array:
  """Scalar MLC loss `mean_batch(-log softmax(s / tau)[0])` for extractor outputs `z` `[batch, L, D]`.

  `normalize="sigma1"` (the official code, default): `s_j = sigma_j / stop_gradient(max(sigma_1, eps))`;
  `normalize="none"` (the paper): `s_j = sigma_j`. `eps` is added to each row norm before normalising.
  """
  if normalize not in NORMALIZE_MODES:
    raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")
  s = _singular_values(z, eps)
  if normalize == "sigma1":
    s = s / jax.lax.stop_gradient(jnp.maximum(s[:, :1], eps))
  return -jnp.mean(jax.nn.log_softmax(s / tau, axis=-1)[:, 0])


def sigma1_share(z: jax.Array, *, eps: float = 1e-12) -> jax.Array:
  """Collinearity metric `sigma_1 / sum_j sigma_j` `[batch]` of the row-normalised `z` `[batch, L, D]`.

  1 when the L representations are collinear, `1 / min(L, D)` when orthogonal, 0 for an all-zero example.
  """
  s = _singular_values(z, eps)
  return s[:, 0] / jnp.maximum(jnp.sum(s, axis=-1), eps)

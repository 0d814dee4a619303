"""MPO, Multilingual reward gaP Optimization (DESIGN.md §2.2): pure loss functions."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def reward_gap_errors(dominant_chosen_avg, dominant_rejected_avg, target_chosen_avg, target_rejected_avg, *,
                      beta: float) -> jax.Array:
  """Per-example `(beta * (tc - tr) - (dc - dr))²` `[batch]` on per-token average log-probs `[batch]`.

  The dominant-language gap `dc - dr` comes from the frozen reference and carries no gradient.
  """
  dc, dr, tc, tr = (jnp.asarray(x, jnp.promote_types(jnp.result_type(x), jnp.float32))
                    for x in (dominant_chosen_avg, dominant_rejected_avg, target_chosen_avg, target_rejected_avg))
  dominant_gap = jax.lax.stop_gradient(dc - dr)
  return jnp.square(beta * (tc - tr) - dominant_gap)


def mean_pool(hidden, mask, *, include_padding: bool = False) -> jax.Array:
  """Mean over positions `[batch, seq, hidden]` → `[batch, hidden]` (float32).

  `include_padding=False` averages the positions where `mask` `[batch, seq]` is set; `True` averages every
  position, padding included, as the official MPO code does.
  """
  hidden = hidden.astype(jnp.float32)
  if include_padding:
    return hidden.mean(axis=1)
  mask = mask.astype(jnp.float32)[..., None]
  return (hidden * mask).sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1.0)


def pooled_mse(policy_pooled, reference_pooled) -> jax.Array:
  """MPO's L2: the scalar mean squared error between pooled states `[batch, hidden]` (see `mean_pool`).

  The reference side carries no gradient (its pooled states are usually computed once before training).
  """
  return jnp.mean(jnp.square(policy_pooled.astype(jnp.float32) - jax.lax.stop_gradient(reference_pooled)))

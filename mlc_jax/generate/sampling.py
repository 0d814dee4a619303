"""How the next token is chosen from a step's logits: greedy, or temperature → top-k → top-p (nucleus) sampling.

Shape letters: b batch (rows), v vocabulary.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
  """Everything static about one sampling run (hashable: jitted code is specialised on it).

  max_new_tokens: tokens generated per row at most (≥ 1).
  temperature: 0 is greedy (arg-max); otherwise the logits are divided by it before top-k and top-p.
  top_k: keep the k most likely tokens (0: all).
  top_p: then keep the smallest set of most likely tokens whose probability reaches top_p (1: all), in (0, 1].
  eos_ids: tokens that end a row (the eos itself is kept and counted); after it a row emits `pad_id`.
  pad_id: the token written after a row has ended.
  """

  max_new_tokens: int
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  eos_ids: tuple[int, ...] = ()
  pad_id: int = 0

  def __post_init__(self):
    object.__setattr__(self, "eos_ids", tuple(int(e) for e in self.eos_ids))
    if not (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1):
      raise ValueError(f"max_new_tokens={self.max_new_tokens!r} must be an integer ≥ 1")
    if not self.temperature >= 0:
      raise ValueError(f"temperature={self.temperature!r} must be ≥ 0 (0 is greedy)")
    if not (isinstance(self.top_k, int) and self.top_k >= 0):
      raise ValueError(f"top_k={self.top_k!r} must be an integer ≥ 0 (0 keeps every token)")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p={self.top_p!r} must be in (0, 1] (1 keeps every token)")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0


def truncated_logits(logits_bv, settings: SamplingSettings):
  """The logits sampling draws from: divided by the temperature, `-inf` outside the top-k and then the top-p set.

  Ties at a cut-off are kept. Top-p is taken over the top-k candidates when top_k is set (a k-element sort),
  over the whole vocabulary otherwise.
  """
  x_bv = logits_bv.astype(jnp.float32) / settings.temperature
  if settings.top_k:
    top_bk = jax.lax.top_k(x_bv, min(settings.top_k, x_bv.shape[-1]))[0]
    x_bv = jnp.where(x_bv < top_bk[:, -1:], -jnp.inf, x_bv)
  if settings.top_p < 1:
    sorted_bk = top_bk if settings.top_k else -jnp.sort(-x_bv, axis=-1)
    probs_bk = jax.nn.softmax(sorted_bk, axis=-1)
    mass_before_bk = jnp.cumsum(probs_bk, axis=-1) - probs_bk
    threshold_b1 = jnp.min(jnp.where(mass_before_bk < settings.top_p, sorted_bk, jnp.inf), axis=-1, keepdims=True)
    x_bv = jnp.where(x_bv < threshold_b1, -jnp.inf, x_bv)
  return x_bv


def choose(logits_bv, keys_b, step, settings: SamplingSettings):
  """The next token `[b]` int32 of each row; row r draws with `fold_in(keys_b[r], step)` (unused when greedy)."""
  if settings.greedy:
    return jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
  step_keys_b = jax.vmap(jax.random.fold_in, (0, None))(keys_b, step)
  return jax.vmap(jax.random.categorical)(step_keys_b, truncated_logits(logits_bv, settings)).astype(jnp.int32)


def token_logps(logits_bv, tokens_b):
  """`log softmax(logits)[token]` `[b]` float32: the model's own distribution (temperature 1, nothing cut)."""
  logits_bv = logits_bv.astype(jnp.float32)
  picked_b = jnp.take_along_axis(logits_bv, tokens_b[:, None], axis=-1)[:, 0]
  return picked_b - jax.nn.logsumexp(logits_bv, axis=-1)

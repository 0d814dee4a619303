"""MSD, multilingual self-distillation (DESIGN.md §2.3): per-token reverse KL weighted by Dual-Perspective Safety
Weighting (DPSW). Pure functions of logits `[B, T, V]` and a mask `[B, T]` of response tokens, and a chunked form of
the same quantities from hidden states and LM heads that never builds `[B, T, V]` float32 logits.

At each response position t, with the student's distribution p_S (prompt in the target language only) and the
teacher's p_T (the same network shown the English translation and the reasoning instruction):
  KL_t  = Σ_v p_S(v) (log p_S(v) − log p_T(v))                    (reverse KL: the student's expectation)
  w^T_t = 1 − H(q_T) / log K, q_T = p_T renormalised over its K most likely tokens (teacher confidence)
  w^S_t = 1 − p_S(y*_t), y*_t = argmax_v p_T(v)                    (student risk: how far from the teacher's choice)
  w_t = w^T_t · w^S_t,  w̃_t = n · w_t / Σ_{masked-in j} w_j         (n = the row's number of response tokens)
  loss = (1/n) Σ_t w̃_t · KL_t  per row.
The weights carry no gradient. Where a row's Σ w is 0 (every token already certain of the teacher's choice, or a
teacher spread evenly over its top K), the weights fall back to 1: the loss is the plain mean KL of that row.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from mlc_jax.losses.logps import softcap

WEIGHTINGS = ("dpsw", "uniform")
_TINY = 1e-12


def token_reverse_kl(student_logits: jax.Array, teacher_logits: jax.Array) -> jax.Array:
  """`Σ_v p_S (log p_S − log p_T)` `[B, T]` float32 from logits `[B, T, V]`."""
  log_s = jax.nn.log_softmax(student_logits.astype(jnp.float32), axis=-1)
  log_t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32), axis=-1)
  return jnp.sum(jnp.exp(log_s) * (log_s - log_t), axis=-1)


def _confidence(top_teacher_logits: jax.Array) -> jax.Array:
  """`1 − H(softmax(top K logits)) / log K` `[...]` of the teacher's K largest logits `[..., K]`."""
  k = top_teacher_logits.shape[-1]
  log_q = jax.nn.log_softmax(top_teacher_logits, axis=-1)
  entropy = -jnp.sum(jnp.exp(log_q) * log_q, axis=-1)
  return 1.0 - entropy / math.log(k)


def normalise_weights(raw: jax.Array, mask: jax.Array) -> jax.Array:
  """`n · w / Σ_masked w` `[B, T]` of raw weights `[B, T]` (0 where masked out; 1 where a row's Σ w is 0)."""
  mask = mask.astype(jnp.float32)
  raw = jnp.where(mask > 0, raw, 0.0)
  total, n = raw.sum(-1, keepdims=True), mask.sum(-1, keepdims=True)
  normalised = n * raw / jnp.where(total > _TINY, total, 1.0)
  return jax.lax.stop_gradient(jnp.where(total > _TINY, normalised, mask))


def dpsw_from_stats(teacher_confidence: jax.Array, student_prob_of_teacher_choice: jax.Array, mask) -> jax.Array:
  """DPSW weights `[B, T]` from w^T `[B, T]` and p_S(y*) `[B, T]` (see the module docstring)."""
  return normalise_weights(teacher_confidence * (1.0 - student_prob_of_teacher_choice), mask)


def dpsw_weights(student_logits: jax.Array, teacher_logits: jax.Array, mask: jax.Array, *, top_k: int) -> jax.Array:
  """Normalised DPSW weights `[B, T]` (no gradient) from logits `[B, T, V]` and the response mask `[B, T]`."""
  if not 2 <= top_k <= teacher_logits.shape[-1]:
    raise ValueError(f"top_k={top_k} must be in [2, vocabulary size {teacher_logits.shape[-1]}]")
  student, teacher = student_logits.astype(jnp.float32), teacher_logits.astype(jnp.float32)
  confidence = _confidence(jax.lax.top_k(teacher, top_k)[0])
  choice = jnp.argmax(teacher, axis=-1)
  p_choice = jnp.take_along_axis(jax.nn.softmax(student, axis=-1), choice[..., None], axis=-1)[..., 0]
  return dpsw_from_stats(confidence, p_choice, mask)


def weighted_mean(values: jax.Array, weights: jax.Array, mask: jax.Array) -> jax.Array:
  """`(1/n) Σ_t weights · values` `[B]` over each row's masked-in positions (0 for a row without any)."""
  mask = mask.astype(jnp.float32)
  return jnp.sum(jnp.where(mask > 0, weights * values, 0.0), -1) / jnp.maximum(mask.sum(-1), 1.0)


def msd_loss(student_logits: jax.Array, teacher_logits: jax.Array, mask: jax.Array, *, top_k: int,
             weighting: str = "dpsw") -> jax.Array:
  """Per-row MSD loss `[B]`; the gradient reaches the student logits only (the teacher is a constant)."""
  if weighting not in WEIGHTINGS:
    raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
  teacher_logits = jax.lax.stop_gradient(teacher_logits)
  kl = token_reverse_kl(student_logits, teacher_logits)
  weights = (dpsw_weights(student_logits, teacher_logits, mask, top_k=top_k) if weighting == "dpsw"
             else mask.astype(jnp.float32))
  return weighted_mean(kl, weights, mask)


def streamed_token_stats(student_hidden: jax.Array, student_head: jax.Array, teacher_hidden: jax.Array,
                         teacher_head: jax.Array, *, top_k: int, vocab_chunk: int | None = None,
                         logit_softcap: float | None = None) -> dict[str, jax.Array]:
  """Per-token KL, teacher confidence w^T and p_S(teacher's arg-max) `[B, T]` from hidden states and heads.

  Args:
    student_hidden, teacher_hidden: `[B, T, D]` final hidden states at the positions that predict the response.
    student_head, teacher_head: `[D, V]` LM heads (the student's trained, the frozen teacher's constant).
    top_k: K of the teacher-confidence entropy.
    vocab_chunk: None computes full `[B, T, V]` logits; C streams both distributions over V / C chunks (online
      log-sum-exp, running top-K and arg-max) in a rematerialised `lax.scan`, one `[B, T, C]` slab alive at a time.
    logit_softcap: the model's final soft-cap (Gemma-2), applied to both.

  Only `kl` carries a gradient (to the student's hidden states and head); the other two are constants.
  """
  teacher_hidden, teacher_head = jax.lax.stop_gradient(teacher_hidden), jax.lax.stop_gradient(teacher_head)
  vocab = student_head.shape[1]
  logits = lambda hidden, head, start, size: softcap(jnp.matmul(
      hidden.reshape(-1, hidden.shape[-1]), jax.lax.dynamic_slice_in_dim(head, start, size, axis=1),
      preferred_element_type=jnp.float32).reshape(*hidden.shape[:-1], size), logit_softcap)
  if vocab_chunk is None:
    s, t = logits(student_hidden, student_head, 0, vocab), logits(teacher_hidden, teacher_head, 0, vocab)
    choice = jnp.argmax(t, axis=-1)
    p_choice = jnp.take_along_axis(jax.nn.softmax(s, axis=-1), choice[..., None], axis=-1)[..., 0]
    return {"kl": token_reverse_kl(s, t), "teacher_confidence": _confidence(jax.lax.top_k(t, top_k)[0]),
            "student_prob_of_teacher_choice": jax.lax.stop_gradient(p_choice)}
  if vocab_chunk <= 0 or vocab % vocab_chunk or top_k > vocab_chunk:
    raise ValueError(f"vocab_chunk={vocab_chunk} must be a positive divisor of the vocabulary size {vocab} and at "
                     f"least top_k={top_k}")

  @jax.checkpoint
  def chunk(carry, start):
    m_s, z_s, a, m_t, z_t, top, best_t, s_at_best = carry
    s_c, t_c = logits(student_hidden, student_head, start, vocab_chunk), logits(teacher_hidden, teacher_head,
                                                                                start, vocab_chunk)
    new_m_s, new_m_t = jnp.maximum(m_s, s_c.max(-1)), jnp.maximum(m_t, t_c.max(-1))
    scale_s, e_s = jnp.exp(m_s - new_m_s), jnp.exp(s_c - new_m_s[..., None])
    z_s = z_s * scale_s + e_s.sum(-1)
    a = a * scale_s + jnp.sum(e_s * (s_c - t_c), -1)
    z_t = z_t * jnp.exp(m_t - new_m_t) + jnp.exp(t_c - new_m_t[..., None]).sum(-1)
    top = jax.lax.top_k(jnp.concatenate([top, t_c], -1), top_k)[0]
    idx = jnp.argmax(t_c, -1)
    chunk_best = jnp.take_along_axis(t_c, idx[..., None], -1)[..., 0]
    chunk_s = jnp.take_along_axis(s_c, idx[..., None], -1)[..., 0]
    better = chunk_best > best_t  # ties keep the earlier index, as argmax does
    return (new_m_s, z_s, a, new_m_t, z_t, top, jnp.where(better, chunk_best, best_t),
            jnp.where(better, chunk_s, s_at_best)), None

  shape = student_hidden.shape[:-1]
  neg_inf = jnp.full(shape, -jnp.inf, jnp.float32)
  zeros = jnp.zeros(shape, jnp.float32)
  init = (neg_inf, zeros, zeros, neg_inf, zeros, jnp.full((*shape, top_k), -jnp.inf, jnp.float32), neg_inf, zeros)
  (m_s, z_s, a, m_t, z_t, top, _, s_at_best), _ = jax.lax.scan(chunk, init, jnp.arange(0, vocab, vocab_chunk))
  lse_s, lse_t = m_s + jnp.log(z_s), m_t + jnp.log(z_t)
  return {"kl": a / z_s - lse_s + lse_t, "teacher_confidence": _confidence(top),
          "student_prob_of_teacher_choice": jax.lax.stop_gradient(jnp.exp(s_at_best - lse_s))}

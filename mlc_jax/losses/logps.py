"""Per-token and per-sequence log-probabilities from final hidden states and the LM head.

`token_logps` never materialises a float32 `[batch, seq, vocab]` array when given `vocab_chunk`: it streams
the log-partition over vocabulary chunks and takes the target logit from the target columns of the head.
`gather_positions` picks the positions a loss reads first, so the head runs on those only; `slot_sums` adds the
per-token values of packed rows up per sequence.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def softcap(x: jax.Array, cap: float | None) -> jax.Array:
  """`cap * tanh(x / cap)` (Gemma-2's attention and logit soft-caps); `x` unchanged when `cap` is None."""
  return x if cap is None else cap * jnp.tanh(x / cap)


@jax.custom_vjp
def head_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """`x @ w` `[M, D] @ [D, C]` accumulated and returned in float32, its backward in the inputs' dtype.

  The float32 cotangent of the logits is cast to the dtype of `x` first, so in bf16 training all three matmuls of
  the LM head run bf16 × bf16 (plain autodiff would make the two backward ones float32 × bf16). No-op for float32.
  """
  return jnp.matmul(x, w, preferred_element_type=jnp.float32)


def _head_matmul_fwd(x, w):
  return head_matmul(x, w), (x, w)


def _head_matmul_bwd(residuals, g):
  x, w = residuals
  g = g.astype(x.dtype)
  return (jnp.matmul(g, w.T, preferred_element_type=jnp.float32).astype(x.dtype),
          jnp.matmul(x.T, g, preferred_element_type=jnp.float32).astype(w.dtype))


head_matmul.defvjp(_head_matmul_fwd, _head_matmul_bwd)


def token_logps(
    hidden: jax.Array,
    head: jax.Array,
    targets: jax.Array,
    *,
    vocab_chunk: int | None = None,
    logit_softcap: float | None = None,
) -> jax.Array:
  """`log p(targets[b, s] | hidden[b, s])` `[batch, seq]` float32.

  Args:
    hidden: `[B, S, D]` final hidden states (any float dtype); position s predicts `targets[:, s]`.
    head: `[D, V]` LM head (unembedding) matrix.
    targets: `[B, S]` int token ids in `[0, V)`; out-of-range ids (e.g. at masked positions) are clipped.
    vocab_chunk: None computes `[B, S, V]` logits at once. C streams the logsumexp over `V / C` chunks with a
      `lax.scan` whose rematerialised body keeps one `[B, S, C]` slab alive, forward and backward.
      V must be divisible by C (a ValueError otherwise; padding would copy the head every step).
    logit_softcap: c applies `c * tanh(logit / c)` to every logit (Gemma-2).

  Logits are accumulated in float32 (`preferred_element_type`), whatever the input dtypes; their backward runs in
  the dtype of `hidden` (`head_matmul`).
  """
  vocab = head.shape[1]
  # Target logits from the target columns of the head: [D, B, S] gathered, then a [B, S, D] dot.
  target_cols = jnp.take(head, targets, axis=1, mode="clip")
  target_logits = softcap(jnp.einsum("bsd,dbs->bs", hidden, target_cols, preferred_element_type=jnp.float32),
                           logit_softcap)

  def chunk_logsumexp(start: jax.Array | int, size: int) -> jax.Array:
    cols = jax.lax.dynamic_slice_in_dim(head, start, size, axis=1)
    # One 2-D matmul [B·S, D] @ [D, C]: cheaper on XLA:CPU than a 3-D einsum in the backward pass.
    flat = head_matmul(hidden.reshape(-1, hidden.shape[-1]), cols)
    logits = softcap(flat.reshape(*hidden.shape[:-1], size), logit_softcap)
    return jax.nn.logsumexp(logits, axis=-1)

  if vocab_chunk is None:
    log_z = chunk_logsumexp(0, vocab)
  else:
    if vocab_chunk <= 0 or vocab % vocab_chunk:
      raise ValueError(f"vocab_chunk={vocab_chunk} must be a positive divisor of the vocabulary size {vocab}")
    body = jax.checkpoint(lambda start: chunk_logsumexp(start, vocab_chunk))

    def step(log_z: jax.Array, start: jax.Array) -> tuple[jax.Array, None]:
      return jnp.logaddexp(log_z, body(start)), None

    init = jnp.full(targets.shape, -jnp.inf, jnp.float32)
    log_z, _ = jax.lax.scan(step, init, jnp.arange(0, vocab, vocab_chunk))
  return target_logits - log_z


def next_token_targets(ids: jax.Array, loss_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The token each position predicts and whether it is scored: `[B, T]` → `[B, T]` each, shifted left by one.

  Position t predicts `ids[:, t + 1]` where `loss_mask[:, t + 1]`; the last position predicts nothing (target 0,
  mask 0). Scoring all T positions instead of slicing the hidden states to T − 1 keeps the `[B·T, V]` ↔
  `[B, T, V]` logits reshapes bitcasts on TPU when T is a multiple of 8 (T − 1 = 1023 made the TPU compiler copy
  the whole float32 logits and not finish in minutes, DESIGN.md §6).
  """
  shift = lambda x: jnp.pad(x[:, 1:], ((0, 0), (0, 1)))
  return shift(ids), shift(loss_mask)


def sequence_logps(token_logps: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Masked sum `[B]`, mean `[B]` and token count `[B]` (float32) of `token_logps` `[B, S]`.

  `mask` `[B, S]` (bool or 0/1) selects the response tokens; masked-out values never reach the result, even if
  they are NaN. A row without tokens has sum 0 and mean 0.
  """
  mask = mask.astype(bool)
  summed = jnp.sum(jnp.where(mask, token_logps, 0.0), axis=-1)
  count = jnp.sum(mask, axis=-1).astype(summed.dtype)
  return summed, summed / jnp.maximum(count, 1.0), count


def gather_positions(hidden_bsd: jax.Array, index_bm: jax.Array) -> jax.Array:
  """`hidden[b, index[b, m]]` `[B, M, D]`: the hidden states a loss reads, before the LM head runs on them."""
  return jnp.take_along_axis(hidden_bsd, index_bm[..., None], axis=1)


def slot_sums(values_bm: jax.Array, slot_bm: jax.Array, num_slots: int) -> jax.Array:
  """Per-row sums `[B, num_slots]` of `values` `[B, M]` by slot (`slot` -1: left out, even where the value is NaN)."""
  onehot_bmk = slot_bm[..., None] == jnp.arange(num_slots)
  return jnp.sum(jnp.where(onehot_bmk, values_bm[..., None], 0.0), axis=1)

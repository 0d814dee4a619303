"""Decoding with a KV cache: one prefill pass over the prompts, then one token per step in a `lax.while_loop`.

Shape letters: b batch, p prompt slots (bucketed), n new tokens, t cache slots, v vocabulary.

`sample` is the pure core (jittable, usable inside a train step: it takes a graphdef and a parameter tree, e.g.
the live `TrainState.params['model']`, and never copies them); `generate` wraps it for arrays on the host:
checks, prompt-length bucketing, one compiled program per (batch, bucket, settings), a mesh, the cache donated.

Padding: any layout; the mask decides. Positions are `cumsum(mask) - 1`, padding slots are never attended (the
cache masks by position), and row r's first new token follows its own last real prompt token, so left padding,
right padding or holes all give the tokens of the unpadded prompt. Generated tokens of every row go to the same
cache slots `p, p + 1, …` (after the bucketed prompt), each at its own next position.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mlc_jax.generate import sampling
from mlc_jax.generate.sampling import SamplingSettings
from mlc_jax.models.decoder import CACHE_KV_AXES, CACHE_POSITION_AXES, EMPTY, Decoder, KVCache
from mlc_jax.parallel import sharding as sharding_lib

MIN_BUCKET = 16


class GenerateOutput(NamedTuple):
  """tokens `[b, n]` int32 (`pad_id` after a row's eos), logps `[b, n]` float32 (each token's log-probability
  under the model, 0 after the eos), lengths `[b]` int32 (generated tokens, the eos included)."""

  tokens: jax.Array
  logps: jax.Array
  lengths: jax.Array


class _Loop(NamedTuple):
  step: jax.Array  # int32 scalar: tokens chosen so far
  cache: KVCache
  token_b: jax.Array  # the last chosen token, fed next
  position_b: jax.Array  # its position
  tokens_bn: jax.Array
  logps_bn: jax.Array
  done_b: jax.Array  # the row has emitted an eos (or had no prompt)
  lengths_b: jax.Array


def row_keys(seed: int, rows) -> jax.Array:
  """Typed PRNG keys `[len(rows)]`, `fold_in(key(seed), row)`: a row's samples depend on its id, not its batch."""
  return jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(seed), jnp.asarray(rows, jnp.uint32))


def _record(state: _Loop, logits_bv, keys_b, settings: SamplingSettings) -> _Loop:
  """Chooses step `state.step`'s tokens from `logits_bv` and writes them (pad / logp 0 for finished rows)."""
  live_b = ~state.done_b
  token_b = jnp.where(live_b, sampling.choose(logits_bv, keys_b, state.step, settings), settings.pad_id)
  logp_b = jnp.where(live_b, sampling.token_logps(logits_bv, token_b), 0.0)
  at = (0, state.step)
  return state._replace(
      step=state.step + 1, token_b=token_b,
      tokens_bn=jax.lax.dynamic_update_slice(state.tokens_bn, token_b[:, None], at),
      logps_bn=jax.lax.dynamic_update_slice(state.logps_bn, logp_b[:, None], at),
      done_b=state.done_b | jnp.isin(token_b, jnp.asarray(settings.eos_ids, jnp.int32)),
      lengths_b=state.lengths_b + live_b.astype(jnp.int32))


def sample(graphdef, params, prompt_ids, prompt_mask, keys, settings: SamplingSettings,
           cache: KVCache | None = None) -> tuple[GenerateOutput, KVCache]:
  """Generates `settings.max_new_tokens` tokens per row: a pure function of the parameters and the prompts.

  Args:
    graphdef, params: the `Decoder` as `nnx.split` gives it (params: an `nnx.State` or a pure dict of arrays).
    prompt_ids, prompt_mask: `[b, p]`; the mask (1 real, 0 padding) may have any layout. A row without real
      tokens is finished from the start (length 0): use it to pad a batch.
    keys: `[b]` typed PRNG keys, one per row (`row_keys`); unused when greedy.
    settings: static.
    cache: a `KVCache` with `b` rows and at least `p + n - 1` slots whose contents are discarded (None: a new one).

  Returns:
    (`GenerateOutput`, the cache) — return the cache to a donating caller so its buffer is reused in place.
  """
  model: Decoder = nnx.merge(graphdef, params)
  b, p = prompt_ids.shape
  slots = p + settings.max_new_tokens - 1
  if cache is None:
    cache = model.init_cache(b, slots)
  elif cache.positions.shape[0] != b or cache.positions.shape[1] < slots:
    raise ValueError(f"cache of {cache.positions.shape} (rows, slots) is too small for {b} rows of p + n - 1 = {slots}")
  cache = cache._replace(positions=jnp.full_like(cache.positions, EMPTY), index=jnp.zeros_like(cache.index))

  mask_bp = prompt_mask.astype(jnp.bool_)
  prompt_len_b = mask_bp.sum(axis=1, dtype=jnp.int32)
  hidden_bpd, cache = model.decode(prompt_ids, cache, positions=jnp.maximum(jnp.cumsum(mask_bp, axis=1) - 1, 0),
                                   attention_mask=mask_bp)
  last_b = p - 1 - jnp.argmax(mask_bp[:, ::-1], axis=1)  # each row's last real prompt slot
  last_bd = jnp.take_along_axis(hidden_bpd, last_b[:, None, None], axis=1)[:, 0]
  n = settings.max_new_tokens
  state = _Loop(step=jnp.zeros((), jnp.int32), cache=cache, token_b=jnp.zeros((b,), jnp.int32),
                position_b=prompt_len_b, tokens_bn=jnp.full((b, n), settings.pad_id, jnp.int32),
                logps_bn=jnp.zeros((b, n), jnp.float32), done_b=prompt_len_b == 0,
                lengths_b=jnp.zeros((b,), jnp.int32))
  state = _record(state, model.logits(last_bd), keys, settings)

  def step(state: _Loop) -> _Loop:
    hidden_b1d, cache = model.decode(state.token_b[:, None], state.cache, positions=state.position_b[:, None])
    state = state._replace(cache=cache, position_b=state.position_b + 1)
    return _record(state, model.logits(hidden_b1d[:, 0]), keys, settings)

  state = jax.lax.while_loop(lambda s: (s.step < n) & ~jnp.all(s.done_b), step, state)
  return GenerateOutput(state.tokens_bn, state.logps_bn, state.lengths_b), state.cache


_sample_jit = jax.jit(sample, static_argnames=("graphdef", "settings"), donate_argnames=("cache",))


def bucket_length(length: int, buckets: Sequence[int] | None = None) -> int:
  """The compiled prompt width for `length` tokens: the smallest of `buckets` that fits, or by default the next
  power of two (at least MIN_BUCKET)."""
  if buckets is None:
    return max(MIN_BUCKET, 1 << max(length - 1, 0).bit_length())
  fits = [w for w in buckets if w >= length]
  if not fits:
    raise ValueError(f"a prompt of {length} tokens is longer than the largest prompt bucket {max(buckets)}")
  return min(fits)


def cache_shardings(cfg, batch: int, slots: int, mesh: Mesh, rules=sharding_lib.DEFAULT_RULES) -> KVCache:
  """`NamedSharding`s of a cache (rows over the batch axes, kv heads over `tensor`, by the logical-axis rules)."""
  kv_shape = (cfg.num_layers, batch, cfg.num_kv_heads, slots, cfg.head_dim)
  kv = sharding_lib.named_sharding(CACHE_KV_AXES, kv_shape, mesh, rules)
  positions = sharding_lib.named_sharding(CACHE_POSITION_AXES, (batch, slots), mesh, rules)
  return KVCache(kv, kv, positions, NamedSharding(mesh, PartitionSpec()))


class Prepared(NamedTuple):
  """A model split for `run`: graphdef, parameters (on the mesh when one is given) and the mesh."""

  graphdef: Any
  params: Any
  mesh: Mesh | None
  rules: Any


def prepare(model: Decoder, mesh: Mesh | None = None, rules=sharding_lib.DEFAULT_RULES) -> Prepared:
  """Splits `model`; with a mesh its parameters are placed by their logical axes (no copy when already there)."""
  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(state)
  if mesh is not None:
    params = jax.device_put(params, sharding_lib.variable_shardings(state, mesh, rules))
  return Prepared(graphdef, params, mesh, rules)


def new_cache(prepared: Prepared, batch: int, slots: int) -> KVCache:
  """A zeroed cache (`sample` resets it), each array allocated in place on the prepared mesh."""
  model = nnx.merge(prepared.graphdef, prepared.params)
  abstract = jax.eval_shape(lambda: model.init_cache(batch, slots))
  if prepared.mesh is None:
    return jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), abstract)
  shardings = cache_shardings(model.cfg, batch, slots, prepared.mesh, prepared.rules)
  return jax.tree.map(lambda a, s: jnp.zeros(a.shape, a.dtype, device=s), abstract, shardings)


def run(prepared: Prepared, prompt_ids: np.ndarray, prompt_mask: np.ndarray, keys, settings: SamplingSettings,
        cache: KVCache | None = None) -> tuple[GenerateOutput, KVCache]:
  """The compiled `sample` on host prompts `[b, p]` (p already bucketed); the cache is donated and returned."""
  b, p = prompt_ids.shape
  if cache is None:
    cache = new_cache(prepared, b, p + settings.max_new_tokens - 1)
  ids, mask = jnp.asarray(prompt_ids, jnp.int32), jnp.asarray(prompt_mask, jnp.int32)
  if prepared.mesh is not None:
    rows = sharding_lib.named_sharding(("batch", None), ids.shape, prepared.mesh, prepared.rules)
    ids, mask = jax.device_put(ids, rows), jax.device_put(mask, rows)
    keys = jax.device_put(keys, sharding_lib.named_sharding(("batch",), (b,), prepared.mesh, prepared.rules))
  return _sample_jit(prepared.graphdef, prepared.params, ids, mask, keys, settings, cache)


def check_prompts(model: Decoder, prompt_ids, prompt_mask, max_new_tokens: int) -> tuple[np.ndarray, np.ndarray]:
  """Host copies of the prompts; a clear error for wrong shapes or a prompt beyond the model's positions."""
  ids, mask = np.asarray(prompt_ids), np.asarray(prompt_mask)
  if ids.ndim != 2 or ids.shape != mask.shape or ids.shape[0] == 0:
    raise ValueError(f"prompt_ids {ids.shape} and prompt_mask {mask.shape} must both be [batch ≥ 1, length]")
  lengths = mask.astype(bool).sum(axis=1)
  limit = model.cfg.max_position_embeddings
  if lengths.max() + max_new_tokens > limit:
    row = int(lengths.argmax())
    raise ValueError(f"prompt row {row} has {lengths[row]} tokens: with max_new_tokens={max_new_tokens} it needs "
                     f"{lengths[row] + max_new_tokens} positions, more than the model's "
                     f"max_position_embeddings={limit}")
  return ids, mask


def right_pad(ids: np.ndarray, mask: np.ndarray, width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Widens `[b, p]` prompts to `[b, width]` with padding columns on the right."""
  extra = ((0, 0), (0, width - ids.shape[1]))
  return np.pad(ids, extra, constant_values=pad_id), np.pad(mask, extra)


def generate(model: Decoder, prompt_ids, prompt_mask, *, max_new_tokens: int, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, eos_ids: Sequence[int] = (), pad_id: int = 0, seed: int = 0,
             mesh: Mesh | None = None, rules=sharding_lib.DEFAULT_RULES,
             buckets: Sequence[int] | None = None) -> GenerateOutput:
  """Generates up to `max_new_tokens` tokens after each prompt row (see the module docstring).

  Args:
    model: the `Decoder` (its parameters are used in place).
    prompt_ids, prompt_mask: `[b, p]` int arrays; any padding layout.
    temperature, top_k, top_p: `SamplingSettings` (temperature 0: greedy).
    eos_ids: tokens that end a row; pad_id: written after the end.
    seed: row r samples with `row_keys(seed, [r])`; the same seed gives the same samples.
    mesh: shard rows over ('data', 'fsdp') and heads / MLP over 'tensor' (parameters moved there if needed).
    buckets: prompt widths to compile for (default: powers of two, see `bucket_length`).

  Returns:
    `GenerateOutput` of device arrays: tokens `[b, n]`, logps `[b, n]`, lengths `[b]`.
  """
  settings = SamplingSettings(max_new_tokens, temperature, top_k, top_p, tuple(eos_ids), pad_id)
  ids, mask = check_prompts(model, prompt_ids, prompt_mask, max_new_tokens)
  ids, mask = right_pad(ids, mask, bucket_length(ids.shape[1], buckets), pad_id)
  out, _ = run(prepare(model, mesh, rules), ids, mask, row_keys(seed, np.arange(ids.shape[0])), settings)
  return out

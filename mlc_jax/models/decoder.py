"""One decoder-only transformer in Flax NNX, configured per family by `ModelConfig`.

Shape letters in names: b batch, s query positions, t key positions, d hidden, n query heads, k key/value
heads, g query heads per key/value head, h head dim, f MLP width, v vocabulary, l layers.

Every parameter carries logical axis names in its `axes` metadata (e.g. `('layers', 'embed', 'q_heads',
'head_dim')`); `mlc_jax.parallel.sharding` maps them to mesh axes. The blocks are stored stacked along a
leading `layers` axis and applied with `jax.lax.scan`, so a model compiles once per block, not per layer.
Per-layer differences (sliding window or not, which RoPE table) are a `[layers]` bool scanned beside the
parameters; the tables and masks of both kinds are built once, outside the scan.

KV cache (`Decoder.init_cache`, `Decoder.decode`): `KVCache.k` and `.v` are `[l, b, k, t, h]` — stacked along the
leading `layers` axis like the block parameters and carried through the same layer scan — in the compute dtype,
with `t` slots per row; `.positions` `[b, t]` int32 holds each slot's RoPE position (`EMPTY` for a slot not written
yet or holding padding) and `.index` the next slot to write, the same for every row. Masks come from positions,
not slots: a new token sees the filled slots whose position is at most its own (and, on sliding layers, within
`sliding_window` positions), so padding anywhere in a row, e.g. between a right-padded prompt and its generated
tokens, is simply never attended. Memory: `2 · l · k · h · bytes(dtype)` per token per row for keys and values
(+ 4 bytes of position), e.g. 128 KiB per token for Llama-3.1-8B in bf16 (2 · 32 · 8 · 128 · 2). Every layer,
sliding ones included, keeps all `t` slots.

Packed rows (`hidden_states(..., segment_ids=, branch_ids=)`): one row holds several sequences, and sequences that
share a prefix hold it once. Token j is visible to token i when both are in the same segment (0 = padding, never
seen), `position[j] <= position[i]`, and j is in the shared prefix (branch 0) or in i's own branch: a preference
pair's chosen and rejected responses (branches 1 and 2) both attend to the keys and values of their one prompt, and
never to each other. With RoPE positions restarting per sequence, every real token's hidden state equals that of
the same token in its own unpacked sequence (tests/models/test_packed.py).
"""
from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mlc_jax.losses.logps import gather_positions, softcap, token_logps
from mlc_jax.models import rope
from mlc_jax.models.attention_kernels import splash_attention
from mlc_jax.models.config import ModelConfig

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}

# 'xla': our einsum attention, full [s, t] scores (masked, soft-capped). 'dot_product': jax.nn.dot_product_attention
# (implementation=None, which jax 0.10 resolves to its XLA path) with `local_window_size` on sliding layers.
# 'cudnn': the same with implementation='cudnn' (GPU, bf16/fp16, right padding only: padding is passed as
# key_value_seq_lengths). 'splash': the Pallas splash attention kernel on TPU (mlc_jax.models.attention_kernels;
# sequence lengths multiples of 128). Attention soft-capping (Gemma-2) is in 'xla' and 'splash': the others fall back
# to 'xla'.
ATTENTION_IMPLS = ("xla", "dot_product", "cudnn", "splash")

ACTIVATIONS = {"silu": jax.nn.silu, "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True)}


def project(x, w, *, in_dims: int = 1):
  """Contracts the last `in_dims` axes of activations `x` `[b, s, *in]` with the leading axes of `w` `[*in, *out]`.

  Written as one 2-D matmul `[b·s, in] @ [in, out]`: XLA:CPU turns the weight gradient of a 3-D einsum into a
  transpose + copy + slower matmul (docs/benchmarks.md).
  """
  lead, in_shape = x.shape[:-in_dims], w.shape[:in_dims]
  out_shape = w.shape[in_dims:]
  flat = x.reshape(-1, math.prod(in_shape)) @ w.reshape(math.prod(in_shape), -1)
  return flat.reshape(*lead, *out_shape)


def _param(rngs: nnx.Rngs, shape, axes, dtype, num_layers: int | None, std: float | None = 0.02):
  """A parameter of `shape` (with a leading `[num_layers]` axis when stacked); std=None means ones."""
  if num_layers is not None:
    shape, axes = (num_layers, *shape), ("layers", *axes)
  if std is None:
    value = jnp.ones(shape, dtype)
  else:
    value = std * jax.random.normal(rngs.params(), shape, dtype)
  return nnx.Param(value, axes=tuple(axes))


def _zeros(shape, axes, dtype, num_layers: int | None):
  if num_layers is not None:
    shape, axes = (num_layers, *shape), ("layers", *axes)
  return nnx.Param(jnp.zeros(shape, dtype), axes=tuple(axes))


class RMSNorm(nnx.Module):
  """x / rms(x) * scale over the last axis, normalised in float32 as HF does.

  With `plus_one` (Gemma) the factor is `1 + scale` (scale initialised to 0) and the product is taken in
  float32 before the cast back; otherwise (Llama, Qwen) the normalised x is cast first, then scaled.
  """

  def __init__(self, dim: int, *, eps: float, param_dtype, rngs: nnx.Rngs, num_layers: int | None = None,
               plus_one: bool = False):
    self.eps, self.plus_one = eps, plus_one
    if plus_one:
      self.scale = _zeros((dim,), ("norm",), param_dtype, num_layers)
    else:
      self.scale = _param(rngs, (dim,), ("norm",), param_dtype, num_layers, std=None)

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    if self.plus_one:
      return (normed * (1.0 + self.scale[...].astype(jnp.float32))).astype(x.dtype)
    return self.scale[...].astype(x.dtype) * normed.astype(x.dtype)


class AttentionInputs(NamedTuple):
  """What every layer's attention shares, built once per forward pass outside the layer scan.

  cos, sin: RoPE tables `[b, s, h]` (of the full-attention layers when `local_cos` is set).
  local_cos, local_sin: the sliding layers' RoPE tables `[b, s, h]`, or None when they share the above.
  key_mask_bt: `[b, t]` bool, False at padding.
  mask_bst: `[b, s, t]` bool, causal & key padding (read by the 'xla' implementation).
  sliding_mask_bst: `[b, s, t]` bool, mask_bst within the window; None when no window can mask anything
    (no sliding layer, or seq <= sliding_window) — then sliding layers run exactly as full ones.
  packed: True when mask_bst is not "causal by index & key padding" (packed rows, a cache): the fused kernels then
    take mask_bst itself (splash cannot).
  """

  cos: jax.Array
  sin: jax.Array
  local_cos: jax.Array | None
  local_sin: jax.Array | None
  key_mask_bt: jax.Array
  mask_bst: jax.Array
  sliding_mask_bst: jax.Array | None
  packed: bool = False


EMPTY = np.iinfo(np.int32).max  # KVCache.positions of a slot that holds no token (never attended)
# Logical axes of KVCache.k / .v (the slot axis is never sharded) and of KVCache.positions.
CACHE_KV_AXES = ("layers", "batch", "kv_heads", None, "head_dim")
CACHE_POSITION_AXES = ("batch", None)


class KVCache(NamedTuple):
  """Every layer's keys and values for `t` slots per row (layout and memory: the module docstring).

  k, v: `[l, b, k, t, h]` in the compute dtype.
  positions: `[b, t]` int32, the RoPE position of each slot's token; `EMPTY` where none (unwritten or padding).
  index: int32 scalar, the next slot to write (rows fill their slots in lockstep).
  """

  k: jax.Array
  v: jax.Array
  positions: jax.Array
  index: jax.Array

  def write(self, layer, k_bskh, v_bskh) -> "KVCache":
    """Writes one layer's keys and values of `s` new tokens at slots `index … index + s - 1` (in place)."""
    start = (layer, 0, 0, self.index, 0)
    update = lambda cache, x_bskh: jax.lax.dynamic_update_slice(cache, x_bskh.swapaxes(1, 2)[None].astype(cache.dtype),
                                                                start)
    return self._replace(k=update(self.k, k_bskh), v=update(self.v, v_bskh))

  def layer(self, layer) -> tuple[jax.Array, jax.Array]:
    """One layer's keys and values as `[b, t, k, h]`."""
    return self.k[layer].swapaxes(1, 2), self.v[layer].swapaxes(1, 2)


def xla_attention(q_bsnh, k_btkh, v_btkh, mask_bst, *, scale: float, cap: float | None = None):
  """Softmax attention with GQA over full `[s, t]` scores (float32), masked where `mask_bst` is False.

  Scores are `q·k * scale`, then soft-capped `c * tanh(score / c)` when `cap` is given (before masking, as
  HF does). A fully masked query row (left padding) attends uniformly and stays finite.
  """
  dtype = q_bsnh.dtype
  b, s, n, h = q_bsnh.shape
  k_heads = k_btkh.shape[2]
  q_bskgh = q_bsnh.reshape(b, s, k_heads, n // k_heads, h)
  scores = jnp.einsum("bskgh,btkh->bkgst", q_bskgh, k_btkh).astype(jnp.float32) * scale
  scores = softcap(scores, cap)
  scores = jnp.where(mask_bst[:, None, None], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
  out_bskgh = jnp.einsum("bkgst,btkh->bskgh", probs, v_btkh)
  return out_bskgh.reshape(b, s, n, h)


def causal_chunked_attention(q_bsnh, k_btkh, v_btkh, mask_bst, *, scale: float, cap: float | None = None,
                             chunk: int):
  """`xla_attention` over blocks of `chunk` queries, each against the keys up to the block's end only `[b, s, n, h]`.

  Exact wherever `mask_bst` lets no query see a later key (causal with padding, packed rows, sliding windows): about
  half the score FLOPs of the full `[s, t]` matrix for s ≫ chunk, and a `[chunk, ≤ s]` slab of scores per block
  (3× faster forward + backward than the full matrix at s = 1024 on XLA:CPU). A fully masked query row (left
  padding) attends uniformly over its block's keys instead of all keys (its value is read by nothing).
  """
  s = q_bsnh.shape[1]
  return jnp.concatenate([
      xla_attention(q_bsnh[:, i:i + chunk], k_btkh[:, :i + chunk], v_btkh[:, :i + chunk],
                    mask_bst[:, i:i + chunk, :i + chunk], scale=scale, cap=cap)
      for i in range(0, s, chunk)], axis=1)


def fused_attention(q_bsnh, k_btkh, v_btkh, key_mask_bt, *, scale: float, window: int | None,
                    implementation: str | None):
  """Causal `jax.nn.dot_product_attention` with a key padding mask and an optional left window.

  `window` W lets query i see keys `i - W < j <= i` (HF's sliding window; `local_window_size=(W - 1, 0)`).
  With implementation='cudnn' the padding goes in as `key_value_seq_lengths` (right padding only).
  """
  kwargs = dict(scale=scale, is_causal=True, implementation=implementation,
                local_window_size=None if window is None else (window - 1, 0))
  if implementation == "cudnn":
    kwargs["key_value_seq_lengths"] = key_mask_bt.sum(-1).astype(jnp.int32)
  else:
    kwargs["mask"] = key_mask_bt[:, None, None, :]
  return jax.nn.dot_product_attention(q_bsnh, k_btkh, v_btkh, **kwargs)


class Attention(nnx.Module):
  """Grouped-query self-attention with RoPE, a causal mask, a key padding mask and, on sliding layers, a window.

  `attention_impl` is one of ATTENTION_IMPLS; configs with attention soft-capping always use 'xla', which runs over
  query blocks of `attention_chunk` (`causal_chunked_attention`) when a sequence is longer (0: never).
  """

  def __init__(self, cfg: ModelConfig, *, param_dtype, rngs: nnx.Rngs, num_layers: int | None = None,
               attention_impl: str = "xla", attention_chunk: int = 0):
    self.cfg, self.attention_chunk = cfg, attention_chunk
    softcap_fallback = cfg.attn_logit_softcap is not None and attention_impl != "splash"
    self.attention_impl = "xla" if softcap_fallback else attention_impl
    d, n, k, h = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    self.q_proj = _param(rngs, (d, n, h), ("embed", "q_heads", "head_dim"), param_dtype, num_layers)
    self.k_proj = _param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), param_dtype, num_layers)
    self.v_proj = _param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), param_dtype, num_layers)
    self.o_proj = _param(rngs, (n, h, d), ("q_heads", "head_dim", "embed"), param_dtype, num_layers)
    if cfg.attention_bias:
      self.q_bias = _zeros((n, h), ("q_heads", "head_dim"), param_dtype, num_layers)
      self.k_bias = _zeros((k, h), ("kv_heads", "head_dim"), param_dtype, num_layers)
      self.v_bias = _zeros((k, h), ("kv_heads", "head_dim"), param_dtype, num_layers)
    if cfg.qk_norm:
      kw = dict(eps=cfg.rms_norm_eps, param_dtype=param_dtype, rngs=rngs, num_layers=num_layers,
                plus_one=cfg.norm_plus_one)
      self.q_norm = RMSNorm(h, **kw)
      self.k_norm = RMSNorm(h, **kw)

  def __call__(self, x_bsd, inputs: AttentionInputs, is_sliding, cache: KVCache | None = None, layer=None,
               queries_bq=None):
    """`[b, s, d]` → (`[b, s, d]`, cache); `is_sliding` and `layer` are this layer's scalars (scanned inputs).

    Without a cache the `s` tokens attend to each other (`inputs` masks `[b, s, s]`). With one, their keys and
    values are written into the cache's layer `layer` first and they attend to all its `t` slots (`[b, s, t]`).
    `queries_bq` `[b, q]` (no cache): only these positions query, against the keys of all `s` → `[b, q, d]`.
    """
    cfg, dtype = self.cfg, x_bsd.dtype
    subset = (lambda a: a) if queries_bq is None else (lambda a: gather_positions(a, queries_bq))
    q_bsnh = project(subset(x_bsd), self.q_proj[...].astype(dtype))
    k_btkh = project(x_bsd, self.k_proj[...].astype(dtype))
    v_btkh = project(x_bsd, self.v_proj[...].astype(dtype))
    if cfg.attention_bias:
      q_bsnh = q_bsnh + self.q_bias[...].astype(dtype)
      k_btkh = k_btkh + self.k_bias[...].astype(dtype)
      v_btkh = v_btkh + self.v_bias[...].astype(dtype)
    if cfg.qk_norm:
      q_bsnh, k_btkh = self.q_norm(q_bsnh), self.k_norm(k_btkh)
    cos, sin = inputs.cos, inputs.sin
    if inputs.local_cos is not None:
      cos, sin = jnp.where(is_sliding, inputs.local_cos, cos), jnp.where(is_sliding, inputs.local_sin, sin)
    q_bsnh = rope.apply_rotary(q_bsnh, subset(cos), subset(sin))
    k_btkh = rope.apply_rotary(k_btkh, cos, sin)
    if cache is not None:
      cache = cache.write(layer, k_btkh, v_btkh)
      k_btkh, v_btkh = cache.layer(layer)
    if queries_bq is not None:
      sliding = inputs.sliding_mask_bst
      inputs = inputs._replace(mask_bst=subset(inputs.mask_bst), sliding_mask_bst=None if sliding is None
                               else subset(sliding))
    out_bsnh = self._attend(q_bsnh, k_btkh, v_btkh, inputs, is_sliding,
                            keys_are_queries=cache is None and queries_bq is None)
    return project(out_bsnh, self.o_proj[...].astype(dtype), in_dims=2), cache

  def _attend(self, q_bsnh, k_btkh, v_btkh, inputs: AttentionInputs, is_sliding, *, keys_are_queries: bool):
    cfg, windowed = self.cfg, inputs.sliding_mask_bst is not None
    mask_bst = inputs.mask_bst
    if windowed:
      mask_bst = jnp.where(is_sliding, inputs.sliding_mask_bst, mask_bst)
    if self.attention_impl == "xla" or not keys_are_queries:  # the fused kernels' causal mask assumes them equal
      kwargs = dict(scale=cfg.attention_scale, cap=cfg.attn_logit_softcap)
      if self.attention_chunk and keys_are_queries and q_bsnh.shape[1] > self.attention_chunk:
        return causal_chunked_attention(q_bsnh, k_btkh, v_btkh, mask_bst, chunk=self.attention_chunk, **kwargs)
      return xla_attention(q_bsnh, k_btkh, v_btkh, mask_bst, **kwargs)
    if self.attention_impl == "splash":
      if inputs.packed:
        raise ValueError("attention_impl='splash' cannot mask packed rows (shared prompts); set data.pack_pairs=0")
      run = functools.partial(splash_attention, q_bsnh, k_btkh, v_btkh, inputs.key_mask_bt, scale=cfg.attention_scale,
                              cap=cfg.attn_logit_softcap)
    else:
      implementation = "cudnn" if self.attention_impl == "cudnn" else None
      if inputs.packed:  # the row's own mask (window included), no causal-by-index assumption
        return jax.nn.dot_product_attention(q_bsnh, k_btkh, v_btkh, mask=mask_bst[:, None], scale=cfg.attention_scale,
                                            implementation=implementation)
      run = functools.partial(fused_attention, q_bsnh, k_btkh, v_btkh, inputs.key_mask_bt, scale=cfg.attention_scale,
                              implementation=implementation)
    if not windowed:
      return run(window=None)
    # Both variants are compiled into the one block; only the layer's own runs.
    return jax.lax.cond(is_sliding, lambda: run(window=cfg.sliding_window), lambda: run(window=None))


class MLP(nnx.Module):
  """Gated MLP: down(act(gate(x)) * up(x)) (SwiGLU with silu, GeGLU with gelu_pytorch_tanh)."""

  def __init__(self, cfg: ModelConfig, *, param_dtype, rngs: nnx.Rngs, num_layers: int | None = None):
    d, f = cfg.hidden_size, cfg.intermediate_size
    self.act = cfg.hidden_act
    self.gate_proj = _param(rngs, (d, f), ("embed", "mlp"), param_dtype, num_layers)
    self.up_proj = _param(rngs, (d, f), ("embed", "mlp"), param_dtype, num_layers)
    self.down_proj = _param(rngs, (f, d), ("mlp", "embed"), param_dtype, num_layers)

  def __call__(self, x_bsd):
    dtype = x_bsd.dtype
    gate_bsf = project(x_bsd, self.gate_proj[...].astype(dtype))
    up_bsf = project(x_bsd, self.up_proj[...].astype(dtype))
    return project(ACTIVATIONS[self.act](gate_bsf) * up_bsf, self.down_proj[...].astype(dtype))


class Block(nnx.Module):
  """Pre-norm residual block, with post-norms on both branches when `cfg.post_norms` (Gemma).

  Built stacked (`num_layers` given); called on one layer's slice.
  """

  def __init__(self, cfg: ModelConfig, *, param_dtype, rngs: nnx.Rngs, num_layers: int | None = None,
               attention_impl: str = "xla", attention_chunk: int = 0):
    kw = dict(param_dtype=param_dtype, rngs=rngs, num_layers=num_layers)
    norm = lambda: RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, plus_one=cfg.norm_plus_one, **kw)
    self.post_norms = cfg.post_norms
    self.attn_norm = norm()
    self.attn = Attention(cfg, attention_impl=attention_impl, attention_chunk=attention_chunk, **kw)
    if cfg.post_norms:
      self.attn_post_norm = norm()
    self.mlp_norm = norm()
    self.mlp = MLP(cfg, **kw)
    if cfg.post_norms:
      self.mlp_post_norm = norm()

  def __call__(self, x_bsd, inputs: AttentionInputs, is_sliding, cache: KVCache | None = None, layer=None,
               queries_bq=None):
    """`[b, s, d]` → (`[b, s, d]`, cache), or `[b, q, d]` at `queries_bq`; see `Attention.__call__`."""
    y_bsd, cache = self.attn(self.attn_norm(x_bsd), inputs, is_sliding, cache, layer, queries_bq)
    if queries_bq is not None:
      x_bsd = gather_positions(x_bsd, queries_bq)
    x_bsd = x_bsd + (self.attn_post_norm(y_bsd) if self.post_norms else y_bsd)
    y_bsd = self.mlp(self.mlp_norm(x_bsd))
    return x_bsd + (self.mlp_post_norm(y_bsd) if self.post_norms else y_bsd), cache


class Decoder(nnx.Module):
  """The language model: embeddings, `num_layers` blocks, a final norm and the LM head.

  Args:
    cfg: the architecture.
    dtype: compute dtype of activations (bf16 on accelerators); parameters are cast to it at use.
    param_dtype: storage dtype of the parameters (master weights).
    remat: rematerialisation of each block in the backward pass: 'none', 'full' or 'dots'.
    attention_impl: 'xla' (default), 'dot_product', 'cudnn' or 'splash'; see ATTENTION_IMPLS. Soft-capped
      attention (Gemma-2) runs 'xla' unless 'splash'.
    attention_chunk: C > 0 runs 'xla' attention over blocks of C queries against the keys up to each block's end
      on sequences longer than C (`causal_chunked_attention`: the same values, about half the score FLOPs); 0 never.
    scan_unroll: blocks per iteration of the layer scan (`jax.lax.scan`'s `unroll`): 1 compiles one block (fastest
      compile, the choice at scale); `num_layers` unrolls the loop, which spares XLA the per-layer slicing of the
      stacked weights and residuals (faster steps on small models, longer compiles).
    vocab_chunk: how `token_logps` computes the log-partition: None over the whole vocabulary at once, C
      streamed over chunks of C columns (never a float32 `[b, s, v]` array; C must divide the vocabulary).
  """

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32,
               remat: str = "none", attention_impl: str = "xla", attention_chunk: int = 0,
               vocab_chunk: int | None = None, scan_unroll: int = 1):
    if remat not in REMAT_POLICIES:
      raise ValueError(f"remat={remat!r} is not one of {sorted(REMAT_POLICIES)}")
    if attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"attention_impl={attention_impl!r} is not one of {', '.join(ATTENTION_IMPLS)}")
    if attention_chunk < 0:
      raise ValueError(f"attention_chunk={attention_chunk} must be 0 (off) or positive")
    if scan_unroll < 1:
      raise ValueError(f"scan_unroll={scan_unroll} must be at least 1 (blocks per layer-scan iteration)")
    if vocab_chunk is not None and (vocab_chunk <= 0 or cfg.vocab_size % vocab_chunk):
      raise ValueError(f"vocab_chunk={vocab_chunk} must be a positive divisor of the vocabulary size "
                       f"{cfg.vocab_size}")
    self.cfg, self.dtype, self.remat, self.attention_impl = cfg, dtype, remat, attention_impl
    self.vocab_chunk, self.scan_unroll = vocab_chunk, scan_unroll
    self.embed = nnx.Param(0.02 * jax.random.normal(rngs.params(), (cfg.vocab_size, cfg.hidden_size), param_dtype),
                           axes=("vocab", "embed"))
    self.blocks = Block(cfg, param_dtype=param_dtype, rngs=rngs, num_layers=cfg.num_layers,
                        attention_impl=attention_impl, attention_chunk=attention_chunk)
    self.final_norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=param_dtype, rngs=rngs,
                              plus_one=cfg.norm_plus_one)
    if not cfg.tie_embeddings:
      self.lm_head = _param(rngs, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), param_dtype, None)

  def unembedding(self) -> jnp.ndarray:
    """The LM-head matrix `[hidden, vocab]` (the transposed embedding table when tied)."""
    return self.embed[...].T if self.cfg.tie_embeddings else self.lm_head[...]

  def logits(self, hidden_bsd) -> jax.Array:
    """LM logits `[..., vocab]` float32 of final-norm hidden states `[..., hidden]`, with `cfg.final_logit_softcap`."""
    logits = jnp.einsum("...d,dv->...v", hidden_bsd, self.unembedding().astype(hidden_bsd.dtype),
                        preferred_element_type=jnp.float32)
    return softcap(logits, self.cfg.final_logit_softcap)

  def token_logps(self, hidden_bsd, targets_bs) -> jax.Array:
    """`log p(targets[b, s] | hidden[b, s])` `[b, s]` float32 (chunked over the vocabulary with `vocab_chunk`).

    The head is cast to the compute dtype, as in `logits`: a bf16 matmul accumulated in float32.
    """
    head_dv = self.unembedding().astype(hidden_bsd.dtype)
    return token_logps(hidden_bsd, head_dv, targets_bs, vocab_chunk=self.vocab_chunk,
                       logit_softcap=self.cfg.final_logit_softcap)

  def hidden_states(self, input_ids, attention_mask=None, *, positions=None, segment_ids=None, branch_ids=None,
                    num_blocks: int | None = None, collect: bool = False, at=None):
    """Runs the first `num_blocks` blocks (all by default).

    Args:
      input_ids: `[batch, seq]` int token ids.
      attention_mask: `[batch, seq]`, 1 for real tokens and 0 for padding (None: no padding).
      positions: `[batch, seq]` RoPE positions; default `0..seq-1` per row, as HF's forward does.
      segment_ids, branch_ids: `[batch, seq]` int, a packed row (module docstring): the mask then comes from them
        and `positions` (required), and `attention_mask` must be None.
      num_blocks: how many blocks to run; fewer than `num_layers` skips the rest (and the final norm).
      collect: also return every block's output (costs `[num_blocks, batch, seq, hidden]` of memory).
      at: `[batch, q]` int positions: the output only there (`[batch, q, hidden]`, not with `collect`); the last
        block run then computes its queries, MLP and norm at those positions only (its keys and values everywhere).

    Returns:
      The final-norm output `[batch, seq, hidden]` when all blocks ran, otherwise the output of block
      `num_blocks`; with `collect`, a pair of that and every block's output `[num_blocks, batch, seq, hidden]`.
    """
    cfg = self.cfg
    num_blocks = cfg.num_layers if num_blocks is None else num_blocks
    if not 0 <= num_blocks <= cfg.num_layers:
      raise ValueError(f"num_blocks={num_blocks} is outside [0, {cfg.num_layers}]")
    b, s = input_ids.shape
    if segment_ids is not None:
      if positions is None or branch_ids is None or attention_mask is not None:
        raise ValueError("packed rows take segment_ids with branch_ids and positions, and no attention_mask")
      inputs = self._packed_attention_inputs(segment_ids, branch_ids, positions)
    else:
      if attention_mask is None:
        attention_mask = jnp.ones((b, s), jnp.bool_)
      num_positions = None  # positions passed in: no bound known
      if positions is None:  # our own, all in [0, s): the RoPE tables come from one [s, h] table
        positions, num_positions = jnp.broadcast_to(jnp.arange(s), (b, s)), s
      inputs = self._attention_inputs(attention_mask, positions, num_positions)
    if at is not None and collect:
      raise ValueError("hidden_states: `at` returns some positions only; it cannot `collect` every block's output")
    x_bsd = self.embed_tokens(input_ids)
    if at is None:
      x_bsd, per_block_lbsd, _ = self._run_blocks(x_bsd, inputs, num_blocks, collect=collect)
    elif num_blocks == 0:
      x_bsd = gather_positions(x_bsd, at)
    else:
      x_bsd = self._run_blocks(x_bsd, inputs, num_blocks - 1)[0]
      graphdef, stacked = nnx.split(self.blocks)
      last = nnx.merge(graphdef, jax.tree.map(lambda a: a[num_blocks - 1], stacked))
      x_bsd = last(x_bsd, inputs, jnp.asarray(cfg.sliding_layers[num_blocks - 1]), queries_bq=at)[0]
    if num_blocks == cfg.num_layers:
      x_bsd = self.final_norm(x_bsd)
    return (x_bsd, per_block_lbsd) if collect else x_bsd

  def _run_blocks(self, x_bsd, inputs: AttentionInputs, num_blocks: int, *, collect: bool = False,
                  cache: KVCache | None = None):
    """Scans the first `num_blocks` blocks; → (output, every block's output or None, cache or None).

    A cache rides in the scan carry with `x` (each block writes its layer in place); the layer index is scanned
    beside the parameters only then.
    """
    graphdef, stacked = nnx.split(self.blocks)
    stacked = jax.tree.map(lambda a: a[:num_blocks], stacked)
    is_sliding_l = jnp.asarray(self.cfg.sliding_layers[:num_blocks], jnp.bool_)
    layer_l = None if cache is None else jnp.arange(num_blocks)

    def body(carry, layer):
      x, cache = carry
      layer_params, is_sliding, index = layer
      x, cache = nnx.merge(graphdef, layer_params)(x, inputs, is_sliding, cache, index)
      return (x, cache), (x if collect else None)

    if REMAT_POLICIES[self.remat] is not None:
      body = jax.checkpoint(body, policy=REMAT_POLICIES[self.remat], prevent_cse=False)
    (x_bsd, cache), per_block_lbsd = jax.lax.scan(body, (x_bsd, cache), (stacked, is_sliding_l, layer_l),
                                                      unroll=min(self.scan_unroll, max(num_blocks, 1)))
    return x_bsd, per_block_lbsd, cache

  def _rope_tables(self, positions, num_positions: int | None = None):
    """(cos, sin, local_cos, local_sin) for `positions` `[b, s]`; the local pair None unless Gemma-3's local RoPE.

    `num_positions`: every position is known to be in `[0, num_positions)` (`rope.rotary_tables`), or None.
    """
    cfg = self.cfg
    tables = lambda theta, scaling=None: rope.rotary_tables(
        positions, rope.inverse_frequencies(cfg.head_dim, theta, scaling), num_positions)
    cos, sin = tables(cfg.rope_theta, cfg.rope_scaling_dict)
    if any(cfg.sliding_layers) and cfg.rope_local_theta is not None:
      return cos, sin, *tables(cfg.rope_local_theta)
    return cos, sin, None, None

  def _attention_inputs(self, attention_mask, positions, num_positions: int | None = None) -> AttentionInputs:
    """The `[b, s, s]` masks of a forward pass: causal by sequence index & key padding (& the window)."""
    cfg, s = self.cfg, attention_mask.shape[1]
    sliding_mask_bst = None
    key_mask_bt = attention_mask.astype(jnp.bool_)
    mask_bst = jnp.tril(jnp.ones((s, s), jnp.bool_))[None] & key_mask_bt[:, None, :]
    if any(cfg.sliding_layers) and s > cfg.sliding_window:  # otherwise the window cannot mask anything
      band_st = jnp.arange(s)[:, None] - jnp.arange(s)[None, :] < cfg.sliding_window
      sliding_mask_bst = mask_bst & band_st[None]
    return AttentionInputs(*self._rope_tables(positions, num_positions), key_mask_bt, mask_bst, sliding_mask_bst)

  def _packed_attention_inputs(self, segments_bs, branches_bs, positions_bs) -> AttentionInputs:
    """The `[b, s, s]` masks of packed rows: same segment, shared prefix or same branch, by position (& window)."""
    cfg, s = self.cfg, segments_bs.shape[1]
    key_mask_bt = segments_bs != 0
    offset_bst = positions_bs[:, :, None] - positions_bs[:, None, :]
    visible_bst = (branches_bs[:, None, :] == 0) | (branches_bs[:, None, :] == branches_bs[:, :, None])
    mask_bst = (key_mask_bt[:, None, :] & (segments_bs[:, :, None] == segments_bs[:, None, :]) & visible_bst
                & (offset_bst >= 0))
    sliding_mask_bst = None
    if any(cfg.sliding_layers) and s > cfg.sliding_window:
      sliding_mask_bst = mask_bst & (offset_bst < cfg.sliding_window)
    # A packed sequence's positions restart at 0 and its tokens fit the row: all in [0, s).
    return AttentionInputs(*self._rope_tables(positions_bs, s), key_mask_bt, mask_bst, sliding_mask_bst, packed=True)

  def _cached_attention_inputs(self, positions_bs, key_positions_bt) -> AttentionInputs:
    """The `[b, s, t]` masks of new tokens at `positions_bs` over cache slots at `key_positions_bt`, by position."""
    cfg = self.cfg
    sliding_mask_bst = None
    key_mask_bt = key_positions_bt != EMPTY
    offset_bst = positions_bs[:, :, None] - key_positions_bt[:, None, :]
    mask_bst = key_mask_bt[:, None, :] & (offset_bst >= 0)
    if any(cfg.sliding_layers) and key_positions_bt.shape[1] > cfg.sliding_window:
      sliding_mask_bst = mask_bst & (offset_bst < cfg.sliding_window)
    return AttentionInputs(*self._rope_tables(positions_bs), key_mask_bt, mask_bst, sliding_mask_bst, packed=True)

  def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
    """An empty `KVCache` of `max_len` slots for `batch` rows (dtype: the compute dtype by default)."""
    cfg = self.cfg
    shape = (cfg.num_layers, batch, cfg.num_kv_heads, max_len, cfg.head_dim)
    dtype = self.dtype if dtype is None else dtype
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.full((batch, max_len), EMPTY, jnp.int32),
                   jnp.zeros((), jnp.int32))

  def decode(self, input_ids, cache: KVCache, *, positions, attention_mask=None):
    """Runs `s` new tokens per row through every block against the cache; → (final-norm hidden `[b, s, d]`, cache).

    Args:
      input_ids: `[b, s]` token ids, written at slots `cache.index … cache.index + s - 1` of every row.
      cache: from `init_cache` or an earlier call.
      positions: `[b, s]` int RoPE positions of the new tokens.
      attention_mask: `[b, s]`, 0 where a new token is padding (its slot stays `EMPTY`); None: all real.

    Each new token attends to every filled slot whose position is at most its own (within `sliding_window`
    positions on sliding layers), so a prompt prefill (`s` = prompt length, any padding) and a one-token decode
    step are the same call. The attention always runs 'xla' here.
    """
    positions = positions.astype(jnp.int32)
    slot_positions_bs = positions
    if attention_mask is not None:
      slot_positions_bs = jnp.where(attention_mask.astype(jnp.bool_), positions, EMPTY)
    key_positions_bt = jax.lax.dynamic_update_slice(cache.positions, slot_positions_bs, (0, cache.index))
    inputs = self._cached_attention_inputs(positions, key_positions_bt)
    x_bsd, _, cache = self._run_blocks(self.embed_tokens(input_ids), inputs, self.cfg.num_layers,
                                       cache=cache._replace(positions=key_positions_bt))
    return self.final_norm(x_bsd), cache._replace(index=cache.index + input_ids.shape[1])

  def embed_tokens(self, input_ids):
    """The embedding output `[batch, seq, hidden]` in the compute dtype (HF's `hidden_states[0]`).

    With `cfg.scale_embeddings` (Gemma) multiplied by √hidden, the factor cast to the compute dtype as HF does.
    """
    x_bsd = jnp.take(self.embed[...], input_ids, axis=0).astype(self.dtype)
    if self.cfg.scale_embeddings:
      x_bsd = x_bsd * jnp.asarray(np.float32(self.cfg.hidden_size**0.5)).astype(self.dtype)
    return x_bsd

  def hidden_state_at(self, input_ids, attention_mask=None, *, layer: int, positions=None, at=None):
    """HF's `hidden_states[layer]` `[batch, seq, hidden]` (`[batch, q, hidden]` at the `at` `[batch, q]`
    positions only: see `hidden_states`), running only the blocks it needs.

    layer 0 is the embedding output, i in 1..num_layers-1 the output of block i, num_layers the final-norm output.
    """
    if not 0 <= layer <= self.cfg.num_layers:
      raise ValueError(f"hidden-state layer {layer} is outside [0, {self.cfg.num_layers}] for this model")
    return self.hidden_states(input_ids, attention_mask, positions=positions, num_blocks=layer, at=at)

  def __call__(self, input_ids, attention_mask=None, *, positions=None, output_hidden_states: bool = False):
    """Logits `[batch, seq, vocab]` (float32); with output_hidden_states also HF-indexed hidden states.

    The hidden states are a tuple of `num_layers + 1` arrays `[batch, seq, hidden]`: index 0 the embedding
    output, i the output of block i, and the last the final-norm output (as HF transformers returns them).
    With `cfg.final_logit_softcap` c the logits are `c * tanh(logits / c)` (`token_logps` applies it too).
    """
    out = self.hidden_states(input_ids, attention_mask, positions=positions, collect=output_hidden_states)
    last_bsd, per_block_lbsd = out if output_hidden_states else (out, None)
    logits_bsv = self.logits(last_bsd)
    if not output_hidden_states:
      return logits_bsv
    hidden = (self.embed_tokens(input_ids), *(per_block_lbsd[i] for i in range(self.cfg.num_layers - 1)), last_bsd)
    return logits_bsv, hidden


def init_model(cfg: ModelConfig, *, seed: int = 0, **kwargs: Any) -> Decoder:
  """A randomly initialised `Decoder` (kwargs: dtype, param_dtype, remat, attention_impl, attention_chunk,
  vocab_chunk, scan_unroll)."""
  return Decoder(cfg, rngs=nnx.Rngs(seed), **kwargs)

"""Fused attention kernels for accelerators behind `model.attention_impl`: Pallas splash attention on TPU.

(cuDNN on GPU is `jax.nn.dot_product_attention(implementation='cudnn')`, see `decoder.fused_attention`.)

`splash_attention` runs `jax.experimental.pallas.ops.tpu.splash_attention` — a block-sparse flash attention that
skips fully masked blocks — with the decoder's masks: causal, key padding (as segment ids) and, on sliding layers,
Gemma's window (query i sees keys `i - W < j <= i`); Gemma-2's attention soft-cap is applied inside the kernel.
GQA runs the kernel's multi-query form once per key/value head. A Pallas call is opaque to XLA's sharding
propagation, so under a mesh (`jax.sharding.get_abstract_mesh()`, set by the train step) it runs in `shard_map`:
examples over ('data', 'fsdp') and key/value heads over 'tensor' where they divide.

Padding: a padded position is its own segment, so a padded query attends to the padded keys up to it (never a
fully masked row); outputs at real positions equal the 'xla' path, outputs at padded positions differ (nothing
reads them, except MPO's `pool_padding=True` mean over every position).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

BLOCK_SIZES = (512, 256, 128)  # the kernel's q and kv tiles: the largest dividing the sequence is used
BATCH_AXES, HEAD_AXIS = ("data", "fsdp"), "tensor"


def _block(seq_len: int) -> int:
  for block in BLOCK_SIZES:
    if seq_len % block == 0:
      return block
  raise ValueError(f"attention_impl='splash' needs sequence lengths that are multiples of {BLOCK_SIZES[-1]}; got "
                   f"{seq_len} (set the data lengths, e.g. data.max_prompt_len + data.max_response_len, to multiples)")


@functools.lru_cache(maxsize=None)
def _kernel(seq_len: int, group: int, window: int | None, cap: float | None, interpret: bool):
  """The multi-query splash kernel for `group` query heads per key/value head: q `[g, s, h]`, k and v `[s, h]`."""
  from jax.experimental.pallas.ops.tpu import splash_attention as splash
  shape = (seq_len, seq_len)
  mask = splash.CausalMask(shape) if window is None else splash.LocalMask(shape, (window - 1, 0), offset=0)
  block = _block(seq_len)
  sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                            block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
  with jax.ensure_compile_time_eval():  # the mask tables are concrete arrays, safe to cache across traces
    return splash.make_splash_mqa_single_device(splash.MultiHeadMask([mask] * group), block_sizes=sizes,
                                                attn_logits_soft_cap=cap, interpret=interpret)


def _attend_local(q_bsnh, k_btkh, v_btkh, key_mask_bt, *, scale, window, cap, interpret):
  """Splash attention of the examples and heads on one device (see `splash_attention`)."""
  from jax.experimental.pallas.ops.tpu.splash_attention import SegmentIds
  b, s, n, h = q_bsnh.shape
  k_heads = k_btkh.shape[2]
  kernel = _kernel(s, n // k_heads, window, cap, interpret)
  q_bkgsh = (q_bsnh * scale).reshape(b, s, k_heads, n // k_heads, h).transpose(0, 2, 3, 1, 4)
  k_bksh, v_bksh = k_btkh.transpose(0, 2, 1, 3), v_btkh.transpose(0, 2, 1, 3)
  segments_bt = key_mask_bt.astype(jnp.int32)
  per_head = jax.vmap(kernel, in_axes=(0, 0, 0, None))  # over key/value heads
  per_example = jax.vmap(lambda q, k, v, seg: per_head(q, k, v, SegmentIds(seg, seg)))
  out_bkgsh = per_example(q_bkgsh, k_bksh, v_bksh, segments_bt)
  return out_bkgsh.transpose(0, 3, 1, 2, 4).reshape(b, s, n, h).astype(q_bsnh.dtype)


def splash_attention(q_bsnh, k_btkh, v_btkh, key_mask_bt, *, scale: float, window: int | None = None,
                     cap: float | None = None, interpret: bool | None = None):
  """Causal GQA attention `[b, s, n, h]` with key padding `key_mask_bt` `[b, t]` (bool), an optional window W.

  `cap` soft-caps the scores (`c * tanh(score / c)`). `interpret` runs the kernel in Pallas' interpreter (default:
  when compiling for anything but TPU), for tests on the CPU. The sequence length must be a multiple of 128.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if interpret is None:  # the platform compiled for: the mesh's (AOT for TPU from a CPU host), else the default
    interpret = (jax.default_backend() if mesh.empty else mesh.abstract_device.platform) != "tpu"
  local = functools.partial(_attend_local, scale=scale, window=window, cap=cap, interpret=interpret)
  if mesh.empty:
    return local(q_bsnh, k_btkh, v_btkh, key_mask_bt)
  b, k_heads = q_bsnh.shape[0], k_btkh.shape[2]
  batch = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
  batch = batch if batch and b % int(np.prod([mesh.shape[a] for a in batch])) == 0 else None
  heads = HEAD_AXIS if HEAD_AXIS in mesh.axis_names and k_heads % mesh.shape[HEAD_AXIS] == 0 else None
  qkv, keys = PartitionSpec(batch, None, heads, None), PartitionSpec(batch, None)
  return jax.shard_map(local, mesh=mesh, in_specs=(qkv, qkv, qkv, keys), out_specs=qkv, check_vma=False)(
      q_bsnh, k_btkh, v_btkh, key_mask_bt)

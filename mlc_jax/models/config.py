"""The decoder's hyper-parameters: one frozen dataclass shared by every model family."""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

# The dtype names configs and CLIs accept, for parameters, activations and files on disk.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
HIDDEN_ACTS = ("silu", "gelu_pytorch_tanh")
LAYER_TYPES = ("full_attention", "sliding_attention")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of a decoder-only transformer.

  The Llama-3 family uses the defaults below; other families switch on their deltas through the same fields,
  so the decoder has one implementation:
    attention_bias: q/k/v projection biases (Qwen2.5).
    qk_norm: RMSNorm over head_dim on q and k, before RoPE (Qwen3, Gemma-3).
    norm_plus_one: every RMSNorm scales by `1 + weight` (weights stored as HF stores them, init 0; Gemma).
    post_norms: norms after attention and after the MLP too, 4 per block (Gemma-2/3).
    scale_embeddings: embedding output × √hidden, the factor cast to the compute dtype (Gemma).
    query_pre_attn_scalar: attention scale `query_pre_attn_scalar ** -0.5` (None: head_dim; Gemma).
    attn_logit_softcap / final_logit_softcap: `c * tanh(x / c)` on attention scores / LM logits (Gemma-2).
    layer_types: HF's per-layer 'full_attention' | 'sliding_attention' (None: all full).
    sliding_window: the sliding layers attend to keys at sequence index `i - sliding_window < j <= i`.
    rope_local_theta: RoPE base of the sliding layers (Gemma-3's rope_local_base_freq; None: rope_theta).
      `rope_theta` / `rope_scaling` then apply to the full-attention layers only.
  """

  family: str = "llama"
  vocab_size: int = 512
  hidden_size: int = 64
  intermediate_size: int = 176
  num_layers: int = 2
  num_heads: int = 4
  num_kv_heads: int = 2
  head_dim: int = 16
  rope_theta: float = 500000.0
  # HF's `rope_scaling` dict (e.g. {"rope_type": "llama3", "factor": 8.0, ...}) or None.
  rope_scaling: tuple[tuple[str, Any], ...] | None = None
  max_position_embeddings: int = 8192
  rms_norm_eps: float = 1e-5
  tie_embeddings: bool = False
  attention_bias: bool = False
  hidden_act: str = "silu"
  bos_token_id: int | None = None
  eos_token_id: int | tuple[int, ...] | None = None
  pad_token_id: int | None = None
  qk_norm: bool = False
  norm_plus_one: bool = False
  post_norms: bool = False
  scale_embeddings: bool = False
  query_pre_attn_scalar: float | None = None
  attn_logit_softcap: float | None = None
  final_logit_softcap: float | None = None
  layer_types: tuple[str, ...] | None = None
  sliding_window: int | None = None
  rope_local_theta: float | None = None

  def __post_init__(self):
    if isinstance(self.layer_types, list):
      object.__setattr__(self, "layer_types", tuple(self.layer_types))
    problems = []
    if self.num_heads % self.num_kv_heads:
      problems.append(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
    if self.head_dim % 2:
      problems.append(f"head_dim={self.head_dim} must be even for rotary embeddings")
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads"):
      if getattr(self, name) <= 0:
        problems.append(f"{name}={getattr(self, name)} must be positive")
    if self.hidden_act not in HIDDEN_ACTS:
      problems.append(f"hidden_act={self.hidden_act!r} is not supported (supported: {', '.join(HIDDEN_ACTS)})")
    if self.layer_types is not None:
      if len(self.layer_types) != self.num_layers:
        problems.append(f"layer_types has {len(self.layer_types)} entries for num_layers={self.num_layers}")
      wrong = sorted(set(self.layer_types) - set(LAYER_TYPES))
      if wrong:
        problems.append(f"layer_types {wrong} not supported (supported: {', '.join(LAYER_TYPES)})")
      if "sliding_attention" in self.layer_types and not (self.sliding_window or 0) > 0:
        problems.append(f"layer_types has sliding layers but sliding_window={self.sliding_window}")
    for name in ("query_pre_attn_scalar", "attn_logit_softcap", "final_logit_softcap", "rope_local_theta"):
      if getattr(self, name) is not None and getattr(self, name) <= 0:
        problems.append(f"{name}={getattr(self, name)} must be positive or None")
    if problems:
      raise ValueError("invalid ModelConfig: " + "; ".join(problems))

  @property
  def rope_scaling_dict(self) -> dict[str, Any] | None:
    return dict(self.rope_scaling) if self.rope_scaling else None

  @property
  def sliding_layers(self) -> tuple[bool, ...]:
    """Per layer: whether it attends through the sliding window."""
    return tuple(t == "sliding_attention" for t in (self.layer_types or ("full_attention",) * self.num_layers))

  @property
  def attention_scale(self) -> float:
    return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

  def replace(self, **changes) -> "ModelConfig":
    if isinstance(changes.get("rope_scaling"), dict):
      changes["rope_scaling"] = freeze_rope_scaling(changes["rope_scaling"])
    return dataclasses.replace(self, **changes)

  def num_params(self) -> int:
    """Parameter count from the shapes alone (embeddings counted once when tied)."""
    d, f, h = self.hidden_size, self.intermediate_size, self.head_dim
    attn = d * h * (self.num_heads * 2 + self.num_kv_heads * 2)
    if self.attention_bias:
      attn += h * (self.num_heads + 2 * self.num_kv_heads)
    if self.qk_norm:
      attn += 2 * h
    mlp = 3 * d * f
    per_layer = attn + mlp + (4 if self.post_norms else 2) * d
    head = 0 if self.tie_embeddings else d * self.vocab_size
    return self.vocab_size * d + self.num_layers * per_layer + d + head


def freeze_rope_scaling(rope_scaling: dict[str, Any] | None):
  """HF's rope_scaling dict → a hashable sorted tuple (the config is frozen and hashed by jit)."""
  if not rope_scaling:
    return None
  return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in rope_scaling.items()))

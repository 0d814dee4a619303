"""What a family declares: config translation and a table of HF ↔ mlc_jax parameter rules.

A rule names our parameter path, the HF tensor name (with `{layer}` for stacked block parameters) and a
layout that converts in both directions, so import and export share one table and cannot drift.
The families here share HF's Llama naming (`model.layers.{i}.self_attn.q_proj.weight`, …); `decoder_rules`
builds that table from the config, each family naming its block norms.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from mlc_jax.models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Layout:
  """How one HF tensor relates to ours (per layer): shapes and values in both directions."""

  name: str
  to_ours: Callable[[np.ndarray, tuple[int, ...]], np.ndarray]  # (hf tensor, our shape) → ours
  to_hf: Callable[[np.ndarray], np.ndarray]
  hf_shape: Callable[[tuple[int, ...]], tuple[int, ...]]  # our shape → the HF shape it must come from


COPY = Layout("copy", lambda a, shape: a, lambda a: a, tuple)
TRANSPOSE = Layout("transpose", lambda a, shape: a.T, lambda a: a.T, lambda s: tuple(reversed(s)))
# HF Linear weight [heads*head_dim, hidden] ↔ ours [hidden, heads, head_dim].
IN_PROJ = Layout("in_proj", lambda a, shape: a.T.reshape(shape), lambda a: a.reshape(a.shape[0], -1).T,
                 lambda s: (int(np.prod(s[1:])), s[0]))
# HF Linear weight [hidden, heads*head_dim] ↔ ours [heads, head_dim, hidden].
OUT_PROJ = Layout("out_proj", lambda a, shape: a.T.reshape(shape), lambda a: a.reshape(-1, a.shape[-1]).T,
                  lambda s: (s[-1], int(np.prod(s[:-1]))))
# HF bias [heads*head_dim] ↔ ours [heads, head_dim].
HEADS_BIAS = Layout("heads_bias", lambda a, shape: a.reshape(shape), lambda a: a.reshape(-1),
                    lambda s: (int(np.prod(s)),))


@dataclasses.dataclass(frozen=True)
class ParamRule:
  ours: str  # '/'-joined path in the NNX state, e.g. 'blocks/attn/q_proj'
  hf: str  # HF tensor name; '{layer}' marks a block parameter stacked along our leading axis
  layout: Layout = COPY

  @property
  def stacked(self) -> bool:
    return "{layer}" in self.hf

  def hf_names(self, num_layers: int) -> list[str]:
    return [self.hf.format(layer=i) for i in range(num_layers)] if self.stacked else [self.hf]


@dataclasses.dataclass(frozen=True)
class Family:
  model_type: str
  architecture: str  # HF class name written to config.json, e.g. 'LlamaForCausalLM'
  config_from_hf: Callable[[object], ModelConfig]  # transformers PretrainedConfig → ours
  config_to_hf: Callable[[ModelConfig], object]  # ours → transformers PretrainedConfig
  rules: Callable[[ModelConfig], tuple[ParamRule, ...]]  # the parameter table for this config
  ignored_hf_tensors: tuple[str, ...] = ("rotary_emb.inv_freq",)  # substrings of HF names we may skip


def decoder_rules(cfg: ModelConfig, block_norms: dict[str, str]) -> tuple[ParamRule, ...]:
  """The HF ↔ ours table of a Llama-style checkpoint.

  Args:
    block_norms: our block norm → HF module name, e.g. {'attn_norm': 'input_layernorm', 'mlp_norm':
      'post_attention_layernorm'} (Llama); it must name every norm the config builds.
  """
  layer = "model.layers.{layer}."
  table = [ParamRule("embed", "model.embed_tokens.weight")]
  table += [ParamRule(f"blocks/{ours}/scale", layer + f"{hf}.weight") for ours, hf in block_norms.items()]
  table += [ParamRule(f"blocks/attn/{x}_proj", layer + f"self_attn.{x}_proj.weight", IN_PROJ) for x in "qkv"]
  table.append(ParamRule("blocks/attn/o_proj", layer + "self_attn.o_proj.weight", OUT_PROJ))
  if cfg.attention_bias:
    table += [ParamRule(f"blocks/attn/{x}_bias", layer + f"self_attn.{x}_proj.bias", HEADS_BIAS) for x in "qkv"]
  if cfg.qk_norm:
    table += [ParamRule(f"blocks/attn/{x}_norm/scale", layer + f"self_attn.{x}_norm.weight") for x in "qk"]
  table += [ParamRule(f"blocks/mlp/{x}_proj", layer + f"mlp.{x}_proj.weight", TRANSPOSE)
            for x in ("gate", "up", "down")]
  table.append(ParamRule("final_norm/scale", "model.norm.weight"))
  if not cfg.tie_embeddings:
    table.append(ParamRule("lm_head", "lm_head.weight", TRANSPOSE))
  return tuple(table)


# (ModelConfig field, transformers config attribute) that every family maps one-to-one, both directions.
COMMON_FIELDS = (
    ("vocab_size", "vocab_size"), ("hidden_size", "hidden_size"), ("intermediate_size", "intermediate_size"),
    ("num_layers", "num_hidden_layers"), ("num_heads", "num_attention_heads"),
    ("num_kv_heads", "num_key_value_heads"), ("head_dim", "head_dim"),
    ("max_position_embeddings", "max_position_embeddings"), ("rms_norm_eps", "rms_norm_eps"),
    ("tie_embeddings", "tie_word_embeddings"), ("bos_token_id", "bos_token_id"),
    ("eos_token_id", "eos_token_id"), ("pad_token_id", "pad_token_id"),
)


def common_fields_from_hf(hf) -> dict[str, Any]:
  """The ModelConfig fields of `COMMON_FIELDS` read from a transformers config.

  A missing `num_key_value_heads` means MHA and a missing `head_dim` means hidden / heads; a list of eos ids
  becomes a tuple (ModelConfig is hashable).
  """
  fields = {ours: getattr(hf, theirs, None) for ours, theirs in COMMON_FIELDS}
  fields["num_kv_heads"] = fields["num_kv_heads"] or hf.num_attention_heads
  fields["head_dim"] = fields["head_dim"] or hf.hidden_size // hf.num_attention_heads
  fields["tie_embeddings"] = bool(fields["tie_embeddings"])
  if isinstance(fields["eos_token_id"], list):
    fields["eos_token_id"] = tuple(fields["eos_token_id"])
  return fields


def common_hf_kwargs(cfg: ModelConfig, architecture: str) -> dict[str, Any]:
  """The transformers config kwargs of `COMMON_FIELDS` (inverse of `common_fields_from_hf`) and architectures."""
  kwargs = {theirs: getattr(cfg, ours) for ours, theirs in COMMON_FIELDS}
  if isinstance(cfg.eos_token_id, tuple):
    kwargs["eos_token_id"] = list(cfg.eos_token_id)
  return dict(kwargs, architectures=[architecture])


def rope_from_hf(params: dict | None, default_theta: float = 10000.0) -> tuple[float, dict | None]:
  """(theta, scaling dict or None) from one transformers-5 `rope_parameters` dict."""
  params = dict(params or {})
  theta = params.pop("rope_theta", None) or default_theta
  if params.get("rope_type", "default") == "default":
    return float(theta), None
  return float(theta), params


def rope_to_hf(theta: float, scaling: dict | None) -> dict:
  return {"rope_theta": theta, "rope_type": "default", **(scaling or {})}


def sliding_from_hf(hf) -> dict[str, Any]:
  """layer_types and sliding_window from a transformers config (None/None when every layer is full)."""
  layer_types = tuple(getattr(hf, "layer_types", None) or ())
  if "sliding_attention" not in layer_types:
    return dict(layer_types=None, sliding_window=None)
  return dict(layer_types=layer_types, sliding_window=hf.sliding_window)


def refuse(condition: bool, model_type: str, message: str):
  """A one-line config.json error for a setting the family does not implement."""
  if condition:
    raise ValueError(f"config.json: {message} is not supported for model_type {model_type!r}")

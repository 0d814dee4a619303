"""Analytic matmul FLOPs of the decoder (1 multiply-add = 2 FLOPs; elementwise work is not counted).

XLA's `cost_analysis()` counts the body of the layer scan once, not once per layer: these formulas are the figures
MFU and the ahead-of-time compiler report, and XLA's only a check.
"""
from __future__ import annotations

from mlc_jax.models.config import ModelConfig


def layer_weight_params(cfg: ModelConfig) -> int:
  """Weights one block multiplies each token by: the q/k/v/o projections and the gated MLP."""
  d, h = cfg.hidden_size, cfg.head_dim
  return d * h * (2 * cfg.num_heads + 2 * cfg.num_kv_heads) + 3 * d * cfg.intermediate_size


def block_flops(cfg: ModelConfig, *, sequences: int, seq_len: int, num_blocks: int | None = None) -> float:
  """A forward pass of `sequences` rows of `seq_len` tokens through `num_blocks` blocks (all by default).

  Per token and block: 2 · the block's weights, plus 4 · seq_len · heads · head_dim for QKᵀ and PV over the full
  `seq_len × seq_len` score matrix (what the 'xla' attention computes).
  """
  blocks = cfg.num_layers if num_blocks is None else num_blocks
  return sequences * seq_len * blocks * (2 * layer_weight_params(cfg) + 4 * seq_len * cfg.num_heads * cfg.head_dim)


def head_flops(cfg: ModelConfig, *, positions: int) -> float:
  """The LM head (hidden → vocabulary) at `positions` positions."""
  return positions * 2 * cfg.hidden_size * cfg.vocab_size


def training_flops(forward: float) -> float:
  """Forward + backward (twice the forward: gradients of the activations and of the weights)."""
  return 3.0 * forward

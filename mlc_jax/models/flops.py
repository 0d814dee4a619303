"""Model FLOPs of the decoder, analytically from its `ModelConfig` (a multiply-add counts 2).

XLA's `cost_analysis()` counts the body of the layer scan once, not once per layer, so step FLOPs (the AOT report,
MFU in metrics.jsonl, the benchmarks) come from here; each objective adds up its own (`Objective.step_flops`).
Counted: every matmul of the blocks, the attention scores and values (causal: query i sees i + 1 keys, at most
`sliding_window` on sliding layers; or the full `seq_len × seq_len` matrix the 'xla' attention computes, with
`full_attention`) and the LM head where it runs. Not counted: norms, RoPE, softmax and other elementwise work, and
rematerialisation (model FLOPs, not hardware FLOPs).
"""
from __future__ import annotations

from mlc_jax.models.config import ModelConfig


def _attended_keys(seq_len: int, window: int | None) -> int:
  """Σ over queries i < seq_len of the keys each sees: min(i + 1, window)."""
  if window is None or window >= seq_len:
    return seq_len * (seq_len + 1) // 2
  return window * (window + 1) // 2 + (seq_len - window) * window


def forward_flops(cfg: ModelConfig, seq_len: int, *, num_blocks: int | None = None, head_positions: int = 0,
                  full_attention: bool = False) -> int:
  """FLOPs of one forward pass over one sequence of `seq_len` tokens through `num_blocks` blocks (default all),
  with the `[hidden, vocab]` LM head at `head_positions` of its positions."""
  d, h, n, k = cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
  per_token = 2 * d * h * (2 * n + 2 * k) + 2 * 3 * d * cfg.intermediate_size  # q k v o projections, gated MLP
  sliding = cfg.sliding_layers[:cfg.num_layers if num_blocks is None else num_blocks]
  keys = lambda s: seq_len * seq_len if full_attention else _attended_keys(seq_len, cfg.sliding_window if s else None)
  attention = sum(4 * n * h * keys(s) for s in sliding)
  return len(sliding) * per_token * seq_len + attention + 2 * d * cfg.vocab_size * head_positions


def block_flops_at(cfg: ModelConfig, seq_len: int, queries: int) -> int:
  """FLOPs of one block computing its output at `queries` positions only (`Decoder.hidden_states(at=…)`): keys and
  values at all `seq_len` positions, queries, output projection and MLP at `queries`, each query against every key."""
  d, h, n, k = cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
  at_queries = 2 * d * h * 2 * n + 2 * 3 * d * cfg.intermediate_size
  return 2 * d * h * 2 * k * seq_len + queries * (at_queries + 4 * n * h * seq_len)


def training_flops(forward: float) -> float:
  """Forward and backward: 3 × the forward (the backward computes gradients of activations and of weights)."""
  return 3.0 * forward

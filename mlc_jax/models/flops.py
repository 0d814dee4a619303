"""Model FLOPs of the decoder, analytically from its `ModelConfig` (a multiply-add counts 2).

XLA's `cost_analysis()` counts the body of the layer scan once, not once per layer, so step FLOPs (for the AOT
report and MFU) come from here. Counted: every matmul of the blocks, the attention scores and values (causal:
query i sees i + 1 keys, at most `sliding_window` on sliding layers) and the LM head where it runs. Not counted:
norms, RoPE, softmax and other elementwise work, and rematerialisation (model FLOPs, not hardware FLOPs).
"""
from __future__ import annotations

from mlc_jax.models.config import ModelConfig


def _attended_keys(seq_len: int, window: int | None) -> int:
  """Σ over queries i < seq_len of the keys each sees: min(i + 1, window)."""
  if window is None or window >= seq_len:
    return seq_len * (seq_len + 1) // 2
  return window * (window + 1) // 2 + (seq_len - window) * window


def forward_flops(cfg: ModelConfig, seq_len: int, *, num_blocks: int | None = None, lm_head: bool = True) -> int:
  """FLOPs of one forward pass over one sequence of `seq_len` tokens through `num_blocks` blocks (default all).

  `lm_head` adds the `[hidden, vocab]` unembedding at every position.
  """
  d, h, n, k = cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
  per_token = 2 * d * h * (2 * n + 2 * k) + 2 * 3 * d * cfg.intermediate_size  # q k v o projections, gated MLP
  sliding = cfg.sliding_layers[:cfg.num_layers if num_blocks is None else num_blocks]
  attention = sum(4 * n * h * _attended_keys(seq_len, cfg.sliding_window if s else None) for s in sliding)
  head = 2 * d * cfg.vocab_size * seq_len if lm_head else 0
  return len(sliding) * per_token * seq_len + attention + head


def step_flops(cfg: ModelConfig, *, batch_size: int, seq_len: int, sides: int, logp_sides: int,
               frozen_sides: int = 0, prompt_variants: int = 0, prompt_len: int = 0,
               prompt_blocks: int | None = None, prompt_every: int = 1) -> float:
  """Model FLOPs of one optimizer step over `batch_size` examples (forward + backward = 3 × forward).

  Args:
    sides: sequences of `seq_len` tokens per example the policy runs (an objective's `sides`).
    logp_sides: of those, how many go through the LM head (its `logp_sides`).
    frozen_sides: sequences per example a live frozen reference runs forward only, LM head included.
    prompt_variants, prompt_len, prompt_blocks: the MLC term's L prompt variants of P tokens per example,
      through the first `prompt_blocks` blocks (no LM head), trained on one step in `prompt_every`.
  """
  trained = (sides * forward_flops(cfg, seq_len, lm_head=False)
             + logp_sides * 2 * cfg.hidden_size * cfg.vocab_size * seq_len)
  frozen = frozen_sides * forward_flops(cfg, seq_len)
  prompts = prompt_variants * forward_flops(cfg, prompt_len, num_blocks=prompt_blocks, lm_head=False) / prompt_every
  return batch_size * (3 * (trained + prompts) + frozen)

"""Helpers for comparing against Hugging Face transformers (PyTorch, CPU, fp32) on random tiny models."""
from __future__ import annotations

import numpy as np
import torch
import transformers


def random_hf_model(config: transformers.PretrainedConfig, seed: int = 0) -> transformers.PreTrainedModel:
  """An HF causal LM whose every parameter (norm weights included) is random, so a mapping error shows."""
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.normal_(0.0, 0.2 if p.ndim == 1 else 0.05)
  return model


def padded_batch(vocab: int, b: int = 3, s: int = 20, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """Random ids `[b, s]` and an attention mask: row 0 full, rows 1 and 2 right-padded after 13 and 5 tokens."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, vocab, (b, s))
  mask = np.ones((b, s), np.int64)
  mask[1, 13:] = 0
  mask[2, 5:] = 0
  return ids, mask


def hf_forward(model, input_ids: np.ndarray, attention_mask: np.ndarray | None = None,
               positions: np.ndarray | None = None):
  """(logits, hidden_states) as numpy float32 from an HF model."""
  with torch.no_grad():
    out = model(input_ids=torch.tensor(np.asarray(input_ids)),
                attention_mask=None if attention_mask is None else torch.tensor(np.asarray(attention_mask)),
                position_ids=None if positions is None else torch.tensor(np.asarray(positions)),
                output_hidden_states=True)
  return out.logits.numpy(), [h.numpy() for h in out.hidden_states]


def max_rel_error(ours, ref, mask=None) -> float:
  """max |ours − ref| / max |ref| over the positions where `mask` `[batch, seq]` is set."""
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  if mask is not None:
    keep = np.asarray(mask).astype(bool)
    ours, ref = ours[keep], ref[keep]
  return float(np.abs(ours - ref).max() / np.abs(ref).max())


def assert_forward_matches(model, hf_model, ids, mask, tol: float):
  """Our logits and every HF-indexed hidden state equal transformers' within `tol` relative (real tokens)."""
  import jax.numpy as jnp

  ref_logits, ref_hidden = hf_forward(hf_model, ids, mask)
  logits, hidden = model(jnp.asarray(ids), jnp.asarray(mask), output_hidden_states=True)
  assert logits.shape == ref_logits.shape and len(hidden) == len(ref_hidden) == model.cfg.num_layers + 1
  assert max_rel_error(logits, ref_logits, mask) < tol
  for k in range(len(ref_hidden)):
    assert max_rel_error(hidden[k], ref_hidden[k], mask) < tol, f"hidden_states[{k}]"
  return ref_hidden

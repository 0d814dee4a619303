"""Analytic model FLOPs against XLA's count on a one-layer model (XLA counts a scanned layer once)."""
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from mlc_jax.models import Decoder, get_preset
from mlc_jax.models.flops import forward_flops, step_flops

CFG = get_preset("tiny", hidden_size=256, intermediate_size=1024, num_heads=4, num_kv_heads=2, head_dim=64,
                 vocab_size=2048, num_layers=1)


@pytest.mark.parametrize("seq_len", [64, 256])
def test_forward_flops_match_xla_on_one_layer(seq_len):
  model = Decoder(CFG, rngs=nnx.Rngs(0))
  ids = jnp.zeros((1, seq_len), jnp.int32)
  xla = jax.jit(lambda ids: model(ids)).lower(ids).compile().cost_analysis()["flops"]
  # The 'xla' attention computes every [s, t] score and masks half: XLA counts the masked half, we do not.
  masked = 4 * CFG.num_heads * CFG.head_dim * (seq_len**2 - seq_len * (seq_len + 1) // 2)
  assert forward_flops(CFG, seq_len) + masked == pytest.approx(xla, rel=0.03)


def test_sliding_window_and_partial_forward():
  gemma = get_preset("gemma2_9b")
  full = get_preset("gemma2_9b", layer_types=None, sliding_window=None)
  assert forward_flops(gemma, 1024) == forward_flops(full, 1024)  # window 4096 masks nothing at 1024 tokens
  assert forward_flops(gemma, 8192) < forward_flops(full, 8192)
  assert forward_flops(CFG, 64, num_blocks=0, lm_head=False) == 0


def test_step_flops_are_three_forwards_per_trained_sequence():
  one = forward_flops(CFG, 64)
  assert step_flops(CFG, batch_size=2, seq_len=64, sides=1, logp_sides=1) == 2 * 3 * one
  # a frozen reference adds one forward per side; the MLC variants are trained every other step
  with_ref = step_flops(CFG, batch_size=1, seq_len=64, sides=2, logp_sides=2, frozen_sides=2)
  assert with_ref == 2 * 3 * one + 2 * one
  mlc = step_flops(CFG, batch_size=1, seq_len=64, sides=1, logp_sides=1, prompt_variants=4, prompt_len=32,
                   prompt_every=2)
  assert mlc == 3 * one + 3 * 4 * forward_flops(CFG, 32, lm_head=False) / 2

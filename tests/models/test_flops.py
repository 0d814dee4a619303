"""Analytic model FLOPs against XLA's count on a one-layer model (XLA counts a scanned layer once)."""
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from mlc_jax.models import Decoder, get_preset
from mlc_jax.models.flops import block_flops_at, forward_flops

CFG = get_preset("tiny", hidden_size=256, intermediate_size=1024, num_heads=4, num_kv_heads=2, head_dim=64,
                 vocab_size=2048, num_layers=1)


@pytest.mark.parametrize("seq_len", [64, 256])
def test_forward_flops_match_xla_on_one_layer(seq_len):
  model = Decoder(CFG, rngs=nnx.Rngs(0))
  ids = jnp.zeros((1, seq_len), jnp.int32)
  xla = jax.jit(lambda ids: model(ids)).lower(ids).compile().cost_analysis()["flops"]
  # The 'xla' attention computes every [s, t] score and masks half: XLA counts the masked half, we do not.
  masked = 4 * CFG.num_heads * CFG.head_dim * (seq_len**2 - seq_len * (seq_len + 1) // 2)
  assert forward_flops(CFG, seq_len, head_positions=seq_len) + masked == pytest.approx(xla, rel=0.03)
  assert forward_flops(CFG, seq_len, head_positions=seq_len, full_attention=True) == pytest.approx(xla, rel=0.03)


@pytest.mark.parametrize("queries", [1, 5])
def test_a_block_at_some_positions_matches_xla(queries):
  model = Decoder(CFG, rngs=nnx.Rngs(0))
  ids, at = jnp.zeros((1, 64), jnp.int32), jnp.zeros((1, queries), jnp.int32)
  xla = jax.jit(lambda ids: model.hidden_states(ids, at=at)).lower(ids).compile().cost_analysis()["flops"]
  assert block_flops_at(CFG, 64, queries) == pytest.approx(xla, rel=0.03)
  assert block_flops_at(CFG, 64, 64) == forward_flops(CFG, 64, full_attention=True)


def test_sliding_window_and_partial_forward():
  gemma = get_preset("gemma2_9b")
  full = get_preset("gemma2_9b", layer_types=None, sliding_window=None)
  assert forward_flops(gemma, 1024) == forward_flops(full, 1024)  # window 4096 masks nothing at 1024 tokens
  assert forward_flops(gemma, 8192) < forward_flops(full, 8192)
  assert forward_flops(CFG, 64, num_blocks=0) == 0


def test_step_flops_are_three_forwards_per_trained_sequence():
  """The train step's count: 3 × forward of each trained sequence, one forward of a live reference's, MLC weighted."""
  from mlc_jax.config import RunConfig, apply_overrides, base_config
  from mlc_jax.train.step import step_flops
  t, p = 64, 32
  one, head = forward_flops(CFG, t), forward_flops(CFG, t, num_blocks=0, head_positions=t)
  pair = {f"{side}_ids": (2, t) for side in ("chosen", "rejected")}
  run = lambda *o: RunConfig.parse(apply_overrides(base_config(), ["mlc.enabled=False", *o]))
  assert step_flops(run("objective.name=sft"), CFG, pair, mlc_share=1.0) == 2 * 3 * (one + head)
  dpo = 2 * 3 * 2 * (one + head)
  assert step_flops(run(), CFG, pair, mlc_share=1.0) == dpo  # reference precomputed: not in the step
  assert step_flops(run("reference=frozen_copy"), CFG, pair, mlc_share=1.0) == dpo + 2 * 2 * (one + head)
  mlc = RunConfig.parse(apply_overrides(base_config(), ["mlc.extractor_dim=8"]))
  shapes = {**pair, "prompt_ids": (2, 4, p)}
  term = 2 * 4 * 3 * (block_flops_at(CFG, p, 1) + 2 * CFG.hidden_size * 8)  # (one layer: the last, at one token)
  assert step_flops(mlc, CFG, shapes, mlc_share=0.5) == dpo + term / 2

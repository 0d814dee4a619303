"""Three ways the decoder does less work for the same values, each against the plain computation (outputs and
gradients, rtol 1e-5): an unrolled layer scan (`model.scan_unroll`), the last block run only at the positions a
caller reads (`hidden_states(at=…)`, what the MLC representation uses), and RoPE's cos/sin evaluated once per
position (`rope.rotary_tables(num_positions=…)`)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mlc_jax.models import get_preset, init_model, rope

PRESETS = ["tiny", "tiny_gemma2", "tiny_gemma3"]  # GQA; soft-caps, post-norms, sliding windows; qk-norm, local RoPE


def inputs(cfg, seq=24):
  ids = jax.random.randint(jax.random.PRNGKey(2), (3, seq), 0, cfg.vocab_size)
  mask = (jnp.arange(seq) < jnp.array([[seq], [17], [9]])).astype(jnp.int32)
  return ids, mask


def grads_of(model, loss):
  return nnx.state(nnx.grad(loss)(model), nnx.Param)


def assert_close(got, want):
  # (fp32 sums in another order: 1e-5 of each array's largest entry)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max())), got,
               want)


@pytest.mark.parametrize("preset", PRESETS)
def test_an_unrolled_layer_scan_equals_the_rolled_one(preset):
  cfg = get_preset(preset)
  ids, mask = inputs(cfg)
  weights = jax.random.normal(jax.random.PRNGKey(3), (*ids.shape, cfg.vocab_size))
  loss = lambda m: jnp.sum(jnp.where(mask[..., None] > 0, m(ids, mask), 0.0) * weights)
  rolled, unrolled = (init_model(cfg, seed=0, scan_unroll=u) for u in (1, cfg.num_layers))
  assert_close(unrolled(ids, mask), rolled(ids, mask))
  assert_close(grads_of(unrolled, loss), grads_of(rolled, loss))
  with pytest.raises(ValueError, match="scan_unroll=0"):
    init_model(cfg, scan_unroll=0)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("layer", [0, 1, "last_block", "final_norm"])
def test_hidden_states_at_some_positions_equal_the_whole_sequence_gathered(preset, layer):
  cfg = get_preset(preset)
  layer = {"last_block": cfg.num_layers - 1, "final_norm": cfg.num_layers}.get(layer, layer)
  model = init_model(cfg, seed=0)
  ids, mask = inputs(cfg)
  at = jnp.stack([mask.sum(-1) - 1, jnp.array([0, 3, 8])], axis=1)  # [3, 2]: each row's last real token, another
  weights = jax.random.normal(jax.random.PRNGKey(4), (*at.shape, cfg.hidden_size))
  full = lambda m: jnp.take_along_axis(m.hidden_state_at(ids, mask, layer=layer), at[..., None], axis=1)
  subset = lambda m: m.hidden_state_at(ids, mask, layer=layer, at=at)
  assert subset(model).shape == (3, 2, cfg.hidden_size)
  assert_close(subset(model), full(model))
  if layer:
    assert_close(grads_of(model, lambda m: jnp.sum(subset(m) * weights)),
                 grads_of(model, lambda m: jnp.sum(full(m) * weights)))


def test_at_cannot_collect_every_block():
  cfg = get_preset("tiny")
  ids, mask = inputs(cfg)
  with pytest.raises(ValueError, match="cannot `collect`"):
    init_model(cfg).hidden_states(ids, mask, collect=True, at=jnp.zeros((3, 1), jnp.int32))


@pytest.mark.parametrize("scaling", [None, {"rope_type": "linear", "factor": 4.0},
                                     {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16}])
def test_rope_tables_gathered_from_one_per_position_equal_the_per_token_ones(scaling):
  positions = jax.random.randint(jax.random.PRNGKey(0), (3, 40), 0, 64)
  inv_freq = rope.inverse_frequencies(16, 10000.0, scaling)
  for table, direct in zip(rope.rotary_tables(positions, inv_freq, num_positions=64),
                           rope.rotary_tables(positions, inv_freq)):
    assert table.shape == direct.shape == (3, 40, 16)
    np.testing.assert_array_equal(table, direct)


@pytest.mark.parametrize("preset", PRESETS)
def test_rope_cos_sin_are_computed_once_per_step(preset):
  """Our own positions take the table: the same outputs and gradients as positions passed in (per-token cos/sin),
  and XLA evaluates cos once per RoPE table in the whole forward + backward, not once per layer and direction."""
  cfg = get_preset(preset)
  ids, mask = inputs(cfg)
  model = init_model(cfg, seed=0, scan_unroll=cfg.num_layers)  # unrolled: where XLA would fuse cos into each layer
  weights = jax.random.normal(jax.random.PRNGKey(3), (*ids.shape, cfg.hidden_size))
  given = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
  loss = lambda m, positions=None: jnp.sum(m.hidden_states(ids, mask, positions=positions) * weights)
  assert_close(model.hidden_states(ids, mask), model.hidden_states(ids, mask, positions=given))
  assert_close(grads_of(model, loss), grads_of(model, lambda m: loss(m, given)))

  def cosines(positions):
    graphdef, params = nnx.split(model)
    step = jax.jit(jax.grad(lambda p: loss(nnx.merge(graphdef, p), positions)))
    return step.lower(params).compile().as_text().count(" cosine(")
  tables = 2 if cfg.rope_local_theta is not None else 1
  assert cosines(None) == tables
  assert cosines(given) > tables  # per token, XLA recomputes them inside the layers' fusions

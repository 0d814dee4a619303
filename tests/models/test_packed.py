"""Packed rows (segments, shared prompts): each real token's hidden state and every gradient equal the unpacked ones."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mlc_jax.models import get_preset, init_model

# Two pairs in one row: (prompt 5, responses 7 and 4) and (prompt 3, responses 6 and 9), then 3 padding positions.
PAIRS = [(5, 7, 4), (3, 6, 9)]
PAD = 3


def packed_row(vocab: int, seed: int = 0):
  """(row arrays `[1, S]`, the unpacked sequences as (ids `[n]`, row positions of their tokens `[n]`))."""
  rng = np.random.default_rng(seed)
  ids, positions, segments, branches, sequences = [], [], [], [], []
  for segment, (p, *responses) in enumerate(PAIRS, 1):
    prompt = rng.integers(0, vocab, p)
    start = len(ids)
    ids += list(prompt)
    positions += list(range(p))
    segments += [segment] * p
    branches += [0] * p
    for branch, n in enumerate(responses, 1):
      response = rng.integers(0, vocab, n)
      offset = len(ids)
      ids += list(response)
      positions += list(range(p, p + n))
      segments += [segment] * n
      branches += [branch] * n
      sequences.append((np.concatenate([prompt, response]), np.r_[start:start + p, offset:offset + n]))
  ids, positions, segments, branches = (np.pad(np.asarray(x, np.int32), (0, PAD)) for x in
                                        (ids, positions, segments, branches))
  row = {k: jnp.asarray(v)[None] for k, v in dict(input_ids=ids, positions=positions, segment_ids=segments,
                                                    branch_ids=branches).items()}
  return row, sequences


def unpacked_hidden(model, sequences):
  return [model.hidden_states(jnp.asarray(ids)[None])[0] for ids, _ in sequences]


@pytest.mark.parametrize("preset", ["tiny", "tiny_qwen3", "tiny_gemma2", "tiny_gemma3"])
def test_packed_hidden_states_equal_each_sequence_alone(preset):
  """Gemma's windows (16 tokens) are longer than these sequences; `test_sliding_window_counts_positions` covers them."""
  model = init_model(get_preset(preset), seed=1)
  row, sequences = packed_row(model.cfg.vocab_size)
  hidden = model.hidden_states(**row)[0]
  for alone, (_, where) in zip(unpacked_hidden(model, sequences), sequences):
    np.testing.assert_allclose(hidden[where], alone, rtol=1e-5, atol=1e-5)


def test_sliding_window_counts_positions():
  cfg = get_preset("tiny_gemma2", sliding_window=4)
  model = init_model(cfg, seed=2)
  row, sequences = packed_row(cfg.vocab_size)
  hidden = model.hidden_states(**row)[0]
  for alone, (_, where) in zip(unpacked_hidden(model, sequences), sequences):
    np.testing.assert_allclose(hidden[where], alone, rtol=1e-5, atol=1e-5)


def test_packed_gradients_equal_the_unpacked_sum():
  """A loss on every real token of every sequence: the shared prompt's gradient is the sum over both branches."""
  model = init_model(get_preset("tiny"), seed=3)
  row, sequences = packed_row(model.cfg.vocab_size)
  weights = [np.random.default_rng(i).normal(size=(len(ids), model.cfg.hidden_size)) for i, (ids, _) in
             enumerate(sequences)]
  graphdef, params = nnx.split(model)

  def packed_loss(params):
    hidden = nnx.merge(graphdef, params).hidden_states(**row)[0]
    return sum(jnp.sum(hidden[where] * w) for (_, where), w in zip(sequences, weights))

  def unpacked_loss(params):
    alone = unpacked_hidden(nnx.merge(graphdef, params), sequences)
    return sum(jnp.sum(h * w) for h, w in zip(alone, weights))

  (value, grads), (ref_value, ref_grads) = (jax.value_and_grad(f)(params) for f in (packed_loss, unpacked_loss))
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(ref_grads))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * scale), grads, ref_grads)


def test_dot_product_attention_takes_the_packed_mask():
  cfg = get_preset("tiny")
  row, _ = packed_row(cfg.vocab_size)
  xla = init_model(cfg, seed=4).hidden_states(**row)
  fused = init_model(cfg, seed=4, attention_impl="dot_product").hidden_states(**row)
  real = np.asarray(row["segment_ids"][0]) > 0
  np.testing.assert_allclose(fused[0, real], xla[0, real], rtol=1e-5, atol=1e-5)


def test_packed_rows_need_positions_and_no_attention_mask():
  model = init_model(get_preset("tiny"), seed=0)
  row, _ = packed_row(model.cfg.vocab_size)
  with pytest.raises(ValueError, match="segment_ids with branch_ids and positions"):
    model.hidden_states(row["input_ids"], segment_ids=row["segment_ids"], branch_ids=row["branch_ids"])
  with pytest.raises(ValueError, match="no attention_mask"):
    model.hidden_states(**row, attention_mask=jnp.ones_like(row["input_ids"]))

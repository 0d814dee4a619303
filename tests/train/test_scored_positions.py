"""Plain sequences run the LM head only at the positions that predict a response token (`{side}_scores_index`, from
the input pipeline): the same log-probs, losses and gradients as the head on every position, for the pair objectives
and the reference precompute, with the vocabulary whole or chunked."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_helpers import assert_trees_close, setup, small_config, tokenized_builtin

from mlc_jax.config import RunConfig
from mlc_jax.data import pipeline
from mlc_jax.data.tokenized import SCORES_INDEX, scored_positions
from mlc_jax.objectives import sequence_stats
from mlc_jax.parallel.mesh import make_mesh
from mlc_jax.train.step import loss_fn, step_flops

PAIR = ("chosen", "rejected")
INDEX_KEYS = tuple(f"{side}_{SCORES_INDEX}" for side in PAIR)
ONE_DEVICE = lambda: make_mesh((1, 1, 1), devices=jax.devices()[:1])



def one_batch(data, batch_size=4, **kwargs):
  return next(pipeline.batch_iterator(data, batch_size, seed=0, **kwargs))


def without_index(batch):
  return {k: v for k, v in batch.items() if k not in INDEX_KEYS}


def test_scored_positions_are_the_predecessors_of_the_response_tokens():
  loss_mask = np.array([[0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 1, 1], [0, 1, 0, 0, 0, 0]])
  np.testing.assert_array_equal(scored_positions(loss_mask, 4), [[1, 2, 3, 0], [3, 4, 0, 0], [0, 0, 0, 0]])
  with pytest.raises(ValueError, match="3 response tokens, more than the width 2"):
    scored_positions(loss_mask, 2)

  data = tokenized_builtin(small_config("data.max_response_len=400"))
  width = data.scores_width
  assert width == max(int(data.chosen_loss_mask.sum(1).max()), int(data.rejected_loss_mask.sum(1).max()))
  for side in PAIR:
    index, loss = getattr(data, f"{side}_{SCORES_INDEX}"), getattr(data, f"{side}_loss_mask")
    for row, mask in zip(index, loss):
      count = int(mask.sum())
      np.testing.assert_array_equal(row[:count], np.flatnonzero(mask) - 1)
      assert not row[count:].any()
  # The pipeline carries them at their full width, also when it cuts the sequences to a shorter bucket.
  longest = int(max(data.chosen_mask.sum(1).max(), data.rejected_mask.sum(1).max()))
  assert longest < data.chosen_ids.shape[1]
  batch = one_batch(data, pair_buckets=(longest,))
  assert batch["chosen_ids"].shape[1] == longest and batch["chosen_scores_index"].shape == (4, width)
  np.testing.assert_array_equal(batch["rejected_scores_index"], data.rejected_scores_index[batch["index"]])


@pytest.mark.parametrize("vocab_chunk", [0, 128])  # (the byte vocabulary: 512)
def test_sequence_stats_and_their_gradients_equal_the_head_on_every_position(vocab_chunk):
  config = small_config("data.max_response_len=40", f"model.vocab_chunk={vocab_chunk}")
  _, spec, state = setup(config, ONE_DEVICE())
  batch = {k: jnp.asarray(v) for k, v in one_batch(tokenized_builtin(config)).items()}

  @jax.jit
  def value_and_grad(params, batch):
    def total(p):
      out = sequence_stats(spec.policy_def.merge_model(p), batch, PAIR, logps_of=PAIR)
      return sum(jnp.sum(v * w) for v, w in zip(jax.tree.leaves(out), (1.0, 0.3, -0.5, 2.0))), out
    return jax.value_and_grad(total, has_aux=True)(params)

  (_, got), got_grads = value_and_grad(state.params["model"], batch)
  (_, want), want_grads = value_and_grad(state.params["model"], without_index(batch))
  assert_trees_close(got, want)
  assert_trees_close(got_grads, want_grads)


@pytest.mark.parametrize("base", ["sft", "dpo", "simpo"])  # chosen only; summed with a reference; averaged, none
def test_losses_and_gradients_equal_the_head_on_every_position(base):
  config = small_config(f"objective.name={base}", "data.max_response_len=40", "reference=precomputed",
                        "mlc.enabled=False")
  run, spec, state = setup(config, ONE_DEVICE())
  data = tokenized_builtin(config)
  rng = np.random.default_rng(0)
  reference = {f"ref_{k}": -rng.uniform(20, 80, 4).astype(np.float32) for k in run.objective.reference_keys}

  @jax.jit
  def value_and_grad(params, batch):
    fn = lambda p: loss_fn(spec.policy_def.merge(p), None, batch, jnp.bool_(True), run.objective, None,
                           num_languages=len(data.languages))
    return jax.value_and_grad(fn, has_aux=True)(params)

  batch = {k: jnp.asarray(v) for k, v in {**one_batch(data), **reference}.items() if k != "index"}
  (loss, _), grads = value_and_grad(state.params, batch)
  (want_loss, _), want_grads = value_and_grad(state.params, without_index(batch))
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  assert_trees_close(grads, want_grads)


def test_the_reference_precompute_reads_the_scored_positions_and_the_flops_count_them():
  config = small_config("data.max_response_len=40", "reference=precomputed", "mlc.enabled=False")
  run, spec, state = setup(config, ONE_DEVICE())
  data = tokenized_builtin(config)
  pre = run.objective.precomputed(run, None)
  assert set(INDEX_KEYS) <= set(pre.input_keys)
  model = spec.policy_def.merge_model(state.params["model"])
  rows = np.arange(6)
  got = pre.fn(model, {k: jnp.asarray(getattr(data, k)[rows]) for k in pre.input_keys})
  want = pre.fn(model, {k: jnp.asarray(getattr(data, k)[rows]) for k in pre.input_keys if k not in INDEX_KEYS})
  assert_trees_close(got, want)

  from mlc_jax.models.flops import forward_flops, training_flops
  cfg = RunConfig.parse(config).architecture()
  shapes = {f"{side}_{k}": (4, 64) for side in PAIR for k in ("ids", "mask", "loss_mask")}
  head = lambda positions: forward_flops(cfg, 64, num_blocks=0, head_positions=positions)
  expected = lambda positions: 4 * training_flops(2 * forward_flops(cfg, 64) + 2 * head(positions))
  assert step_flops(run, cfg, shapes, mlc_share=0.0) == expected(64)
  shapes.update({k: (4, 40) for k in INDEX_KEYS})
  assert step_flops(run, cfg, shapes, mlc_share=0.0) == expected(40)

"""Packed pairs (each prompt once, the head on response tokens only, several pairs per row) against plain sequences:
the same log-probs, pools, losses and gradients, for every pair objective, MPO's four sides, MLC's shared variant and
the reference precompute."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_helpers import assert_trees_close, setup, small_config, tokenized_builtin, train_in_process

from mlc_jax.config import RunConfig, apply_overrides
from mlc_jax.config.fields import ConfigError
from mlc_jax.data import packing, pipeline, tokenized
from mlc_jax.data.datasets import PREFERENCE_PAIRS
from mlc_jax.objectives import OBJECTIVES, sequence_stats
from mlc_jax.parallel.mesh import make_mesh
from mlc_jax.train.step import loss_fn, step_flops

PAIR = ("chosen", "rejected")
MPO_SIDES = (*PAIR, "dominant_chosen", "dominant_rejected")
ONE_DEVICE = lambda: make_mesh((1, 1, 1), devices=jax.devices()[:1])
PAIR_BASES = [name for name, cls in OBJECTIVES.items() if cls.data_kind is PREFERENCE_PAIRS]



def plain_and_packed(data, layout, batch_size=4, seed=0, share_variant=False):
  """One batch of `data` arranged with `layout` (None: plain sequences) and `share_variant`, and the same examples
  (in its order) as plain sequences with every prompt variant."""
  packed = next(pipeline.batch_iterator(dataclasses.replace(data, layout=layout, share_variant=share_variant),
                                        batch_size, seed=seed))
  order = packed["index"]
  plain = {k: v[order] for k, v in next(pipeline.batch_iterator(data, len(data), seed=0, shuffle=False)).items()}
  return plain, packed


def with_dominant_pairs(data):
  """MPO-shaped arrays: the pairs, and (as the dominant pairs) the same arrays rolled by one example."""
  arrays = {k: getattr(data, k) for k in tokenized.PAIR_KEYS}
  arrays.update({f"dominant_{k}": np.roll(v, 1, axis=0) for k, v in arrays.items()})
  return arrays


def model_of(config):
  """(RunConfig, TrainStateSpec, initial TrainState) on one device."""
  return setup(config, ONE_DEVICE())


@pytest.mark.parametrize("pairs_per_row", [1, 2])
def test_sequence_stats_and_their_gradients_equal_the_plain_computation(pairs_per_row):
  config = small_config("data.max_response_len=40")
  run, spec, state = model_of(config)
  data = tokenized_builtin(config)
  plain, packed = plain_and_packed(data, packing.RowLayout(PAIR, PAIR, pairs_per_row=pairs_per_row, multiple=16))
  graphdef = spec.policy_def

  def stats(params, batch):
    out = sequence_stats(graphdef.merge_model(params), batch, PAIR, logps_of=PAIR, pool_of=PAIR)
    return out, sum(jnp.sum(v * w) for v, w in zip(jax.tree.leaves(out), (1.0, 0.3, -0.5, 2.0, 0.1, -1.0)))

  # Jitted: eager op-by-op dispatch of the layer scan and its backward takes longer than compiling them.
  grad = jax.jit(lambda batch: jax.grad(lambda p: stats(p, batch)[1])(state.params["model"]))
  want, got = (jax.jit(stats)(state.params["model"], {k: jnp.asarray(v) for k, v in b.items()})[0]
               for b in (plain, packed))
  assert_trees_close(got, want)
  assert_trees_close(grad({k: jnp.asarray(v) for k, v in packed.items()}),
                     grad({k: jnp.asarray(v) for k, v in plain.items()}))


def test_mpo_sides_with_two_trees_per_pair():
  config = small_config("data.max_response_len=40")
  _, spec, state = model_of(config)
  arrays = with_dominant_pairs(tokenized_builtin(config))
  rows = np.arange(4)
  trees = {**packing.tree_arrays(arrays), **packing.tree_arrays(arrays, "dominant_")}
  layout = packing.RowLayout(MPO_SIDES, MPO_SIDES, pairs_per_row=2, multiple=16)
  packed = packing.pack({**{k: v[rows] for k, v in trees.items()}, "index": rows}, layout)
  plain = {k: v[packed["index"]] for k, v in arrays.items()}
  model = spec.policy_def.merge_model(state.params["model"])
  kwargs = dict(logps_of=MPO_SIDES, pool_of=MPO_SIDES)
  want = sequence_stats(model, jax.tree.map(jnp.asarray, plain), MPO_SIDES, **kwargs)
  got = sequence_stats(model, jax.tree.map(jnp.asarray, packed), MPO_SIDES, **kwargs)
  assert_trees_close(got, want)
  # The live reference reads the dominant tree of the same rows.
  dominant = sequence_stats(model, jax.tree.map(jnp.asarray, packed), MPO_SIDES[2:], logps_of=MPO_SIDES[2:],
                            pool_of=MPO_SIDES[2:])
  assert_trees_close({k: got[k] for k in dominant}, dominant)


# sft: chosen only; dpo: summed, with a reference; simpo: averaged, none; packed 2 pairs a row, or plain sequences
@pytest.mark.parametrize("base,pack_pairs", [("sft", 2), ("dpo", 2), ("simpo", 2), ("sft", 0), ("dpo", 0)])
def test_loss_and_gradients_with_mlc_equal_the_plain_step(base, pack_pairs):
  """The MLC term's variant in the pair language comes from the pair's prompt (`shared_variant`), in packed rows or
  plain sequences: the same loss and gradients as running every variant."""
  config = small_config(f"objective.name={base}", "objective.ipo.beta=0.5", "data.max_response_len=40",
                        f"data.pack_pairs={pack_pairs}", "reference=precomputed")
  run, spec, state = model_of(config)
  assert run.objective.shares_variant(run)
  layout = run.objective.row_layout(run)
  assert (layout is None) if pack_pairs == 0 else layout.pairs_per_row == 2
  data = tokenized_builtin(config)
  plain, packed = plain_and_packed(data, layout, share_variant=True)
  assert packed["prompt_ids"].shape[1] == plain["prompt_ids"].shape[1] - 1 and "shared_variant" in packed
  rng = np.random.default_rng(0)
  reference = {f"ref_{k}": -rng.uniform(20, 80, 4).astype(np.float32) for k in run.objective.reference_keys}

  def value_and_grad(batch):
    batch = {k: jnp.asarray(v) for k, v in {**batch, **reference}.items() if k != "index"}
    fn = lambda params: loss_fn(spec.policy_def.merge(params), None, batch, jnp.bool_(True), run.objective, run.mlc,
                                num_languages=len(data.languages))
    return jax.jit(jax.value_and_grad(fn, has_aux=True))(state.params)

  (loss, metrics), grads = value_and_grad(packed)
  (ref_loss, ref_metrics), ref_grads = value_and_grad(plain)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  np.testing.assert_allclose(metrics["mlc_loss"], ref_metrics["mlc_loss"], rtol=1e-5)
  assert_trees_close(grads, ref_grads)


def test_reference_precompute_reads_the_trees():
  config = small_config("data.max_response_len=40", "reference=precomputed", "data.pack_pairs=1")
  run, spec, state = model_of(config)
  data = tokenized_builtin(config)
  pre = run.objective.precomputed(run, None)
  assert pre.input_keys == tuple(f"tree_{k}" for k in packing.TREE_FIELDS)
  rows = np.arange(6)
  model = spec.policy_def.merge_model(state.params["model"])
  got = pre.fn(model, {k: jnp.asarray(getattr(data, k)[rows]) for k in pre.input_keys})
  want = run.objective.reference_outputs(model, {k: jnp.asarray(getattr(data, k)[rows]) for k in tokenized.PAIR_KEYS})
  assert_trees_close(got, want)


def test_training_steps_equal_the_plain_steps():
  """Two steps on packed rows (2 pairs per row, 2 micro-batches, the rows split over 2 devices, the live reference,
  MLC on every step with its shared variant) against the same steps on plain sequences."""
  overrides = ("train.grad_accum=2", "mlc.aux_every=1", "data.max_response_len=40")
  config = small_config(*overrides, "data.pack_pairs=2")
  run = RunConfig.parse(config)
  assert run.objective.live_reference(run) and run.objective.shares_variant(run)
  data = tokenized_builtin(config)
  mesh = make_mesh((1, 2, 1), devices=jax.devices()[:2])
  params, history = train_in_process(config, mesh, steps=2, data=run.objective.arrange(run, data))
  ref_params, ref_history = train_in_process(small_config(*overrides), mesh, steps=2, data=data)
  for ours, ref in zip(history, ref_history):
    for key in ("loss", "dpo_loss", "mlc_loss", "grad_norm"):
      np.testing.assert_allclose(ours[key], ref[key], rtol=1e-5, err_msg=key)
  # As in tests/train/test_step.py: sums in another order (~1e-7 relative in fp32), amplified by the Adam steps.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), params, ref_params)


def test_packing_is_off_by_default_and_refuses_what_it_cannot_do():
  run = RunConfig.parse(small_config())
  assert run.data.pack_pairs == 0 and run.objective.row_layout(run) is None
  for overrides, message in [(("model.attention_impl=splash",), "splash' cannot mask packed rows"),
                             (("data.pair_buckets=(32,)",), "apply to plain sequences only"),
                             (("data.pack_pairs=3",), "does not divide the micro-batch of 8 pairs"),
                             (("objective.name=mpo", "objective.mpo.pool_padding=True", "mlc.enabled=False",
                               "data.source=tfds", "data.name=mpo_pairs/llama"),
                              "pool_padding=True averages over padding")]:
    with pytest.raises(ConfigError, match=message):
      RunConfig.parse(small_config("data.pack_pairs=2", *overrides))  # (the last value of a key wins)


def test_step_flops_count_the_rows_and_the_scored_positions():
  from mlc_jax.models.flops import forward_flops
  config = small_config("mlc.enabled=False", "reference=precomputed", "data.pack_pairs=1")
  run = RunConfig.parse(config)
  cfg = run.architecture()
  shapes = {"rows_ids": (2, 128), "scores_index": (2, 64)}
  head = forward_flops(cfg, 1, num_blocks=0, head_positions=128)
  assert step_flops(run, cfg, shapes, mlc_share=1.0) == 3 * (2 * forward_flops(cfg, 128) + head)
  live = RunConfig.parse(apply_overrides(config, ["reference=frozen_copy"]))
  assert step_flops(live, cfg, shapes, mlc_share=1.0) == 4 * (2 * forward_flops(cfg, 128) + head)

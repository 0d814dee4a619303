"""Every base objective, with and without MLC, inside the sharded train step."""
import jax
import numpy as np
import pytest
from train_helpers import compiled_step, device_batch, numpy_logps, setup, small_config, tokenized_builtin, \
    train_in_process

from mlc_jax.data import pipeline
from mlc_jax.data.datasets import PREFERENCE_PAIRS
from mlc_jax.objectives import OBJECTIVES, sequence_stats
from mlc_jax.parallel.mesh import make_mesh
from mlc_jax.train import trainer

PAIR_BASES = [name for name, cls in OBJECTIVES.items() if cls.data_kind is PREFERENCE_PAIRS]  # MPO: test_mpo.py
HYPER = {"ipo": ["objective.ipo.beta=0.5"]}


@pytest.mark.parametrize("base", PAIR_BASES)
def test_every_base_with_mlc_trains_on_a_2x2x2_mesh(base):
  config = small_config(f"objective.name={base}", "mlc.aux_every=1", *HYPER.get(base, []))
  params, history = train_in_process(config, make_mesh((2, 2, 2)), steps=2)
  assert all(np.isfinite(h["loss"]) and h["mlc_applied"] == 1 for h in history)
  assert f"{base}_loss" in history[0] and ("reward_acc" in history[0]) == (base != "sft")


def numpy_base_loss(base, beta, gamma, pol, ref):
  ls = lambda x: -np.logaddexp(0.0, -x)
  (pcs, pcm), (prs, prm) = pol
  (rcs, rcm), (rrs, rrm) = ref
  if base == "dpo":
    return -ls(beta * ((pcs - rcs) - (prs - rrs)))
  if base == "hinge":
    return np.maximum(0.0, 1 - beta * ((pcs - rcs) - (prs - rrs)))
  if base == "ipo":
    return ((pcm - rcm) - (prm - rrm) - 1 / (2 * beta)) ** 2
  if base == "simpo":
    return -ls(beta * (pcm - prm) - gamma)
  if base == "orpo":
    odds = lambda a: a - np.log(-np.expm1(a))
    return -pcm - beta * ls(odds(pcm) - odds(prm))
  return -pcm  # sft


@pytest.mark.parametrize("base", PAIR_BASES)
def test_mlc_off_step_loss_equals_the_plain_objective_from_full_logits(base):
  """mlc.enabled=False ignores λ, and the step's loss equals the formula on independently computed log-probs."""
  config = small_config(f"objective.name={base}", "mlc.enabled=False", "mlc.weight=7.0", *HYPER.get(base, []))
  mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
  run, spec, state = setup(config, mesh, total_steps=2)
  model = spec.policy_def.merge_model(state.params["model"])
  batch = next(pipeline.batch_iterator(tokenized_builtin(config), config.train.batch_size, seed=0))
  batch.pop("index")
  sides = {}
  for side in ("chosen", "rejected"):
    logits = model(batch[f"{side}_ids"], batch[f"{side}_mask"])
    sides[side] = numpy_logps(logits, batch[f"{side}_ids"], batch[f"{side}_loss_mask"])
  # Before the first update the policy is the reference.
  expected = numpy_base_loss(base, getattr(run.objective, "beta", None), getattr(run.objective, "gamma", None),
                             (sides["chosen"], sides["rejected"]), (sides["chosen"], sides["rejected"])).mean()
  _, metrics = compiled_step(run, spec, mesh)(state, device_batch(batch, mesh))
  assert "mlc_loss" not in metrics
  np.testing.assert_allclose(metrics["loss"], expected, rtol=2e-5)


@pytest.mark.parametrize("base", ["sft", "simpo", "orpo"])
def test_reference_free_bases_compute_no_reference(tmp_path, base):
  config = small_config(f"objective.name={base}", "train.steps=1", "mesh.shape=(1,-1,1)")
  config.reference = "precomputed"
  trainer.train(config, str(tmp_path))
  assert not (tmp_path / "reference").exists()
  run, _, state = setup(small_config(f"objective.name={base}"), make_mesh((1, 1, 1), devices=jax.devices()[:1]))
  assert state.ref_params is None and not run.objective.reference_keys


def test_sequence_stats_equal_full_logits_log_probs():
  """The policy's summed and mean response log-probs equal float64 NumPy on the model's full logits."""
  config = small_config("mlc.enabled=False")
  mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
  _, spec, state = setup(config, mesh)
  model = spec.policy_def.merge_model(state.params["model"])
  batch = next(pipeline.batch_iterator(tokenized_builtin(config), config.train.batch_size, seed=0))
  stats = sequence_stats(model, batch, ("chosen", "rejected"), logps_of=("chosen", "rejected"))
  for side in ("chosen", "rejected"):
    summed, mean = numpy_logps(model(batch[f"{side}_ids"], batch[f"{side}_mask"]), batch[f"{side}_ids"],
                               batch[f"{side}_loss_mask"])
    np.testing.assert_allclose(stats[f"{side}_sum"], summed, rtol=1e-5)
    np.testing.assert_allclose(stats[f"{side}_mean"], mean, rtol=1e-5)

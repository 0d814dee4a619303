"""Every base objective, with and without MLC, inside the sharded train step."""
import jax
import numpy as np
import pytest
from train_helpers import numpy_logps, small_config, tokenized_builtin, train_in_process

from mlc_jax.data import pipeline
from mlc_jax.parallel.mesh import make_mesh
from mlc_jax.train import trainer
from mlc_jax.train.objective import BASES, REFERENCE_BASES, Objective
from mlc_jax.train.state import init_train_state
from mlc_jax.train.step import batch_sharding, make_train_step, split_micro_batches, to_device
from mlc_jax.train.validate import model_config

PAIR_BASES = [b for b in BASES if b != "mpo"]  # MPO trains on its own data: tests/test_mpo.py
HYPER = {"simpo": ["objective.beta=2.0", "objective.gamma=0.5"], "ipo": ["objective.beta=0.5"]}


@pytest.mark.parametrize("base", PAIR_BASES)
def test_every_base_with_mlc_trains_on_a_2x2x2_mesh(base):
  config = small_config(f"objective.base={base}", "mlc.aux_every=1", *HYPER.get(base, []))
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
  config = small_config(f"objective.base={base}", "mlc.enabled=False", "mlc.weight=7.0", *HYPER.get(base, []))
  mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
  cfg = model_config(config)
  built = init_train_state(config, cfg, mesh, total_steps=2)
  model = built.policy_def.merge_model(built.state.params["model"])
  batch = next(pipeline.batch_iterator(tokenized_builtin(config), config.train.batch_size, seed=0))
  batch.pop("index")
  sides = {}
  for side in ("chosen", "rejected"):
    logits = model(batch[f"{side}_ids"], batch[f"{side}_mask"])
    sides[side] = numpy_logps(logits, batch[f"{side}_ids"], batch[f"{side}_loss_mask"])
  # Before the first update the policy is the reference.
  expected = numpy_base_loss(base, config.objective.beta, config.objective.gamma,
                             (sides["chosen"], sides["rejected"]), (sides["chosen"], sides["rejected"])).mean()
  step = make_train_step(built, Objective.from_config(config, cfg.num_layers), aux_every=1, mesh=mesh)
  _, metrics = step(built.state, to_device(split_micro_batches(batch, 1), batch_sharding(mesh, accumulated=True)))
  assert "mlc_loss" not in metrics
  np.testing.assert_allclose(metrics["loss"], expected, rtol=2e-5)


@pytest.mark.parametrize("base", ["sft", "simpo", "orpo"])
def test_reference_free_bases_compute_no_reference(tmp_path, base):
  config = small_config(f"objective.base={base}", "train.steps=1", "mesh.shape=(1,-1,1)")
  config.reference = "precomputed"
  trainer.run(config, str(tmp_path))
  assert not (tmp_path / "reference").exists()
  frozen = small_config(f"objective.base={base}")
  built = init_train_state(frozen, model_config(frozen), make_mesh((1, 1, 1), devices=jax.devices()[:1]), 1)
  assert built.state.ref_params is None and base not in REFERENCE_BASES

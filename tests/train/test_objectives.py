"""Every base objective, with and without MLC, inside the sharded train step."""
import dataclasses
import json

import jax
import numpy as np
import pytest
from train_helpers import compiled_step, numpy_logps, setup, small_config, tokenized_builtin, train_in_process

from mlc_jax.config import ConfigError, RunConfig, base_config, field
from mlc_jax.config.fields import positive
from mlc_jax.data import pipeline
from mlc_jax.data.datasets import PREFERENCE_PAIRS
from mlc_jax.objectives import OBJECTIVES, LossTerms, Objective, register, sequence_stats
from mlc_jax.parallel.mesh import make_mesh
from mlc_jax.train import trainer
from mlc_jax.train.step import device_batch

PAIR_BASES = [name for name, cls in OBJECTIVES.items() if cls.data_kind is PREFERENCE_PAIRS]  # MPO: test_mpo.py
HYPER = {"ipo": ["objective.ipo.beta=0.5"]}


@pytest.mark.parametrize("base", PAIR_BASES)
def test_every_base_with_mlc_trains_on_a_2x2x2_mesh(base):
  config = small_config(f"objective.name={base}", "mlc.aux_every=1", *HYPER.get(base, []))
  params, history = train_in_process(config, make_mesh((2, 2, 2)), steps=2)
  assert all(np.isfinite(h["loss"]) and h["mlc_applied"] == 1 for h in history)
  assert f"{base}_loss" in history[0] and ("reward_acc" in history[0]) == (base != "sft")


def numpy_base_loss(base, beta, gamma, pol, ref, nll_weight=0.0):
  ls = lambda x: -np.logaddexp(0.0, -x)
  (pcs, pcm), (prs, prm) = pol
  (rcs, rcm), (rrs, rrm) = ref
  if base == "dpo":  # with RPO's NLL term
    return -ls(beta * ((pcs - rcs) - (prs - rrs))) - nll_weight * pcm
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


@pytest.mark.parametrize("base,nll_weight", [(base, 0.0) for base in PAIR_BASES] + [("dpo", 0.7)])
def test_mlc_off_step_loss_equals_the_plain_objective_from_full_logits(base, nll_weight):
  """mlc.enabled=False ignores λ, and the step's loss equals the formula on independently computed log-probs."""
  config = small_config(f"objective.name={base}", "mlc.enabled=False", "mlc.weight=7.0", *HYPER.get(base, []),
                        *([f"objective.dpo.nll_weight={nll_weight}"] if nll_weight else []))
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
                             (sides["chosen"], sides["rejected"]), (sides["chosen"], sides["rejected"]),
                             nll_weight).mean()
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


@dataclasses.dataclass(frozen=True)
class MarginObjective(Objective):
  """A toy objective defined here: hinge on the per-token average log-prob gap, `relu(margin − (avg_c − avg_r))`."""

  name = "toy_margin"
  data_kind = PREFERENCE_PAIRS
  margin: float = field(1.0, "the target gap between chosen and rejected average log-probs", positive())

  def loss(self, outputs, reference):
    gap = outputs["chosen_mean"] - outputs["rejected_mean"]
    return LossTerms(jax.nn.relu(self.margin - gap), (outputs["chosen_mean"], outputs["rejected_mean"]))


@pytest.fixture
def toy_objective():
  register(MarginObjective)
  yield MarginObjective
  del OBJECTIVES[MarginObjective.name]


def test_an_objective_defined_outside_the_package_trains(toy_objective, tmp_path):
  """Registered from this file, it gets its config section, its checks and the whole training loop."""
  assert base_config().objective.toy_margin.margin == 1.0
  with pytest.raises(ConfigError, match=r"objective.toy_margin.margin=-2.0 must be > 0"):
    RunConfig.parse(small_config("objective.name=toy_margin", "objective.toy_margin.margin=-2.0"))
  config = small_config("objective.name=toy_margin", "objective.toy_margin.margin=3.0", "train.steps=4",
                        "optim.lr=1e-2", "optim.warmup_ratio=0.0", "mlc.aux_every=1", "mesh.shape=(1,-1,1)",
                        "train.log_every=1")
  trainer.train(config, str(tmp_path))
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in records] == [1, 2, 3, 4] and not (tmp_path / "reference").exists()
  # the loss the loop logs is the toy's own, plus λ·MLC: relu(3 − gap) with gap = reward_margin at the start
  first = records[0]
  np.testing.assert_allclose(first["toy_margin_loss"], max(0.0, 3.0 - first["reward_margin"]), rtol=1e-5)
  np.testing.assert_allclose(first["loss"], first["toy_margin_loss"] + 0.8 * first["mlc_loss"], rtol=1e-5)
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

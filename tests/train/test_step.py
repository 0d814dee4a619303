"""The train step: sharded equals one device, accumulation equals one batch, the MLC schedule, every family trains."""
import jax
import numpy as np
import pytest
from train_helpers import small_config, train_in_process

from mlc_jax.parallel.mesh import make_mesh


_SINGLE_DEVICE_RUNS = {}


def single_device_run(*overrides, steps):
  key = (overrides, steps)
  if key not in _SINGLE_DEVICE_RUNS:
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    _SINGLE_DEVICE_RUNS[key] = train_in_process(small_config(*overrides), mesh, steps=steps)
  return _SINGLE_DEVICE_RUNS[key]


@pytest.mark.parametrize("mesh_shape,grad_accum", [((1, 8, 1), 1), ((2, 2, 2), 1), ((1, 2, 4), 1), ((2, 2, 2), 2)])
def test_sharded_steps_equal_one_device(mesh_shape, grad_accum):
  overrides = (f"train.grad_accum={grad_accum}",)
  params, history = train_in_process(small_config(*overrides), make_mesh(mesh_shape), steps=3)
  ref_params, ref_history = single_device_run(*overrides, steps=3)
  # Tolerance: sums split across devices are reordered (~1e-7 relative in fp32); 3 Adam steps amplify that.
  for ours, ref in zip(history, ref_history):
    np.testing.assert_allclose(ours["loss"], ref["loss"], rtol=1e-5)
    np.testing.assert_allclose(ours["mlc_loss"], ref["mlc_loss"], rtol=1e-4, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), params, ref_params)


def test_gradient_accumulation_equals_one_big_batch():
  params, _ = train_in_process(small_config("train.grad_accum=1", "mlc.enabled=False"),
                               make_mesh((1, 1, 1), devices=jax.devices()[:1]), steps=2)
  accumulated, _ = train_in_process(small_config("train.grad_accum=2", "mlc.enabled=False"),
                                    make_mesh((1, 1, 1), devices=jax.devices()[:1]), steps=2)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), params, accumulated)


@pytest.mark.parametrize("aux_every,expected", [(2, [1, 0, 1, 0, 1]), (3, [1, 0, 0, 1, 0])])
def test_mlc_term_runs_exactly_on_aux_steps(aux_every, expected):
  mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
  _, history = train_in_process(small_config(f"mlc.aux_every={aux_every}"), mesh, steps=5)
  assert [int(h["mlc_applied"]) for h in history] == expected
  for h in history:  # the total is DPO + λ·MLC exactly on those steps
    np.testing.assert_allclose(h["loss"], h["dpo_loss"] + 0.8 * h["mlc_loss"] * h["mlc_applied"], rtol=1e-6)
    assert (h["mlc_loss"] > 0) == bool(h["mlc_applied"])


def test_zero_mlc_weight_equals_plain_dpo():
  mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
  with_zero, _ = train_in_process(small_config("mlc.weight=0.0", "mlc.aux_every=1"), mesh, steps=3)
  plain, _ = train_in_process(small_config("mlc.enabled=False"), mesh, steps=3)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), with_zero["model"], plain["model"])


@pytest.mark.parametrize("preset", ["tiny_qwen2", "tiny_qwen3", "tiny_gemma2", "tiny_gemma3"])
def test_each_family_trains_on_a_2x2x2_mesh(preset):
  """Sequences (up to 64 tokens) exceed the tiny Gemma windows (16), so the sliding layers are exercised."""
  config = small_config(f"model.preset={preset}", "mlc.aux_every=1", "data.max_response_len=40")
  initial, _ = train_in_process(config, make_mesh((2, 2, 2)), steps=0)
  params, history = train_in_process(config, make_mesh((2, 2, 2)), steps=2)
  assert all(np.isfinite(h["loss"]) and h["mlc_applied"] == 1 for h in history)
  np.testing.assert_allclose(history[0]["dpo_loss"], np.log(2.0), rtol=1e-6)  # policy == reference at first
  moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), params, initial)
  assert all(v > 0 for v in jax.tree.leaves(moved))  # every parameter (norms, biases, extractor) trained

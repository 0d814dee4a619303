"""The abstract train state allocates and reads nothing; export restores the parameters and nothing else."""
import json

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from train_helpers import small_config

from mlc_jax import export_hf
from mlc_jax.config import RunConfig, to_json
from mlc_jax.models import init_model, save_hf
from mlc_jax.parallel.mesh import make_mesh
from mlc_jax.train import checkpointing
from mlc_jax.train import state as state_lib


def test_abstract_state_is_shapes_and_shardings_only(tmp_path):
  """With model.hf_path naming a directory without weights, the abstract state still builds: nothing is read."""
  model = init_model(RunConfig.parse(small_config()).architecture())
  save_hf(model, str(tmp_path / "hf"))
  for f in tmp_path.glob("hf/*.safetensors"):
    f.unlink()
  run = RunConfig.parse(small_config(f"model.hf_path={tmp_path / 'hf'}", "mesh.shape=(2,2,2)"))
  before = len(jax.live_arrays())
  spec = state_lib.abstract_train_state(run, run.architecture(), make_mesh((2, 2, 2)))
  assert len(jax.live_arrays()) == before
  leaves = jax.tree.leaves(spec.abstract)
  assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) and x.sharding is not None for x in leaves)
  q = spec.abstract.params["model"]["blocks"]["attn"]["q_proj"]
  assert q.sharding.spec[1] == "fsdp" and q.sharding.spec[2] == "tensor"
  # Adam's moments take their parameter's sharding; the frozen copy (reference=frozen_copy) its parameters'.
  mu = spec.abstract.opt_state[1][0].mu["model"]["blocks"]["attn"]["q_proj"]
  assert mu.sharding == q.sharding and spec.abstract.ref_params["blocks"]["attn"]["q_proj"].sharding == q.sharding
  with pytest.raises(FileNotFoundError, match="neither model.safetensors"):
    state_lib.init_train_state(spec, run)


def test_export_restores_the_parameters_and_nothing_else(tmp_path, monkeypatch):
  config = small_config("mesh.shape=(1,1,1)")
  run = RunConfig.parse(config)
  spec = state_lib.abstract_train_state(run, run.architecture(), make_mesh((1, 1, 1), jax.devices()[:1]))
  saved = state_lib.init_train_state(spec, run)
  (tmp_path / "config.json").write_text(to_json(config))
  mngr = checkpointing.manager(str(tmp_path), keep=1, every=1, async_save=False)
  checkpointing.save(mngr, 5, saved, {}, force=True)
  mngr.wait_until_finished()
  mngr.close()
  param_bytes = sum(x.nbytes for x in jax.tree.leaves(saved.params))
  expected = jax.tree.map(np.asarray, saved.params)
  del saved

  def forbidden(*args, **kwargs):
    raise AssertionError("restoring parameters built a train state")

  monkeypatch.setattr(state_lib, "init_train_state", forbidden)
  monkeypatch.setattr(state_lib, "initial_model_params", forbidden)
  before = {id(x) for x in jax.live_arrays()}
  restored = export_hf.restore_params(str(tmp_path), mesh=make_mesh((1, 1, 1), jax.devices()[:1]))
  new = [x for x in jax.live_arrays() if id(x) not in before]
  assert restored.step == 5 and sum(x.nbytes for x in new) == param_bytes  # no optimizer state, no frozen copy
  params = {"model": nnx.to_pure_dict(nnx.state(restored.model)), "extractor": restored.extractor}
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), params, expected)
  on_host = export_hf.restore_params(str(tmp_path), to_host=True)
  assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(on_host.extractor))
  export_hf.export(str(tmp_path), str(tmp_path / "hf"))
  assert json.loads((tmp_path / "hf" / "mlc_extractor.json").read_text())["step"] == 5


@pytest.mark.parametrize("max_norm", [1e-3, 1.0, 1e6])
def test_clip_by_global_norm_equals_optax(max_norm):
  """Our one-multiply clipping gives optax.clip_by_global_norm's gradients: scaled to the bound above it, unchanged
  (bit for bit) below it, and zeros stay zeros."""
  key = jax.random.PRNGKey(0)
  grads = {"w": jax.random.normal(key, (64, 32)), "b": {"x": jax.random.normal(jax.random.fold_in(key, 1), (7,))},
           "zero": jax.numpy.zeros((3, 3))}
  ours, _ = state_lib.clip_by_global_norm(max_norm).update(grads, optax.EmptyState())
  theirs, _ = optax.clip_by_global_norm(max_norm).update(grads, optax.EmptyState())
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=0)
  norm = float(optax.tree.norm(grads))
  np.testing.assert_allclose(float(optax.tree.norm(ours)), min(norm, max_norm), rtol=1e-6)
  if norm < max_norm:
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(grads)))
  zeros = jax.tree.map(jax.numpy.zeros_like, grads)
  assert all(not np.asarray(x).any() for x in jax.tree.leaves(state_lib.clip_by_global_norm(max_norm).update(
      zeros, optax.EmptyState())[0]))

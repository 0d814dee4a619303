"""The train state (parameters, optimizer state, step, frozen reference): its abstract form, its shardings, its init.

Parameters live as pure nested dicts of arrays (`{'model': …, 'extractor': …}`) so the state is a plain pytree for
`jax.jit`, optax and Orbax; `PolicyDef.merge(params)` turns them back into NNX modules.

`abstract_train_state` gives every leaf's shape, dtype and sharding (`jax.ShapeDtypeStruct`s) without allocating an
array or reading a weight: resume restores straight into it, export restores only its parameters, and ahead-of-time
compilation lowers the step against it. `init_train_state` allocates the initial state from the same description.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from flax import traverse_util as traversals
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mlc_jax.models import Decoder, ModelConfig, load_hf
from mlc_jax.models.config import DTYPES
from mlc_jax.models.extractor import Extractor
from mlc_jax.parallel import sharding as sharding_lib


class Policy(nnx.Module):
  """The trained modules: the language model and (with MLC) the extractor."""

  def __init__(self, model: Decoder, extractor: Extractor | None):
    self.model, self.extractor = model, extractor


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer updates done
  params: dict[str, Any]  # {'model': …, 'extractor': …} pure dicts
  opt_state: Any
  ref_params: dict[str, Any] | None  # frozen initial model params (reference='frozen_copy'), else None


@dataclasses.dataclass(frozen=True)
class PolicyDef:
  """Static structure: how to rebuild modules from pure parameter dicts."""

  graphdef: Any
  model_graphdef: Any

  def merge(self, params) -> Policy:
    return nnx.merge(self.graphdef, params)

  def merge_model(self, model_params) -> Decoder:
    return nnx.merge(self.model_graphdef, model_params)


def learning_rate_schedule(optim, total_steps: int) -> optax.Schedule:
  """Linear warmup over `optim.warmup_ratio` of the steps, then cosine decay to 0 (or a constant rate)."""
  if optim.schedule == "constant":
    return optax.constant_schedule(optim.lr)
  warmup = max(int(optim.warmup_ratio * total_steps), 1)
  return optax.warmup_cosine_decay_schedule(0.0, optim.lr, warmup, max(total_steps, warmup + 1), 0.0)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
  """Gradients scaled by `min(1, max_norm / global_norm)`: `optax.clip_by_global_norm`'s values to rounding (a scale
  of exactly 1 below the bound), as one multiply. optax's `select(norm < max_norm, g, g / norm * max_norm)` does not
  vectorise on XLA:CPU: 0.16 s a step more over the bench's 58.5M parameters (docs/benchmarks.md)."""
  def update_fn(updates, state, params=None):
    del params
    scale = jnp.minimum(1.0, max_norm / optax.tree.norm(updates))
    return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates), state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)


def make_optimizer(optim, total_steps: int, clip=clip_by_global_norm) -> optax.GradientTransformation:
  """`clip(optim.clip_norm)` (global-norm clipping), then AdamW with the schedule (`optim`: the run's
  `OptimSection`)."""
  return optax.chain(clip(optim.clip_norm),
                     optax.adamw(learning_rate_schedule(optim, total_steps), b1=optim.b1, b2=optim.b2, eps=optim.eps,
                                 weight_decay=optim.weight_decay))


@dataclasses.dataclass(frozen=True)
class TrainStateSpec:
  """A train state described, not allocated: `abstract` holds a `jax.ShapeDtypeStruct` (with its sharding) per leaf."""

  abstract: TrainState
  model_cfg: ModelConfig
  policy_def: PolicyDef
  optimizer: optax.GradientTransformation
  schedule: optax.Schedule

  @property
  def shardings(self) -> TrainState:
    return jax.tree.map(lambda x: x.sharding, self.abstract)


def _opt_state_shardings(abstract_opt_state, params_shardings: dict, mesh: Mesh):
  """Optimizer-state leaves whose key path ends with a parameter's path get that parameter's sharding."""
  by_path = {tuple(str(k) for k in path): s for path, s in traversals.flatten_dict(params_shardings).items()}
  replicated = NamedSharding(mesh, PartitionSpec())

  def one(path, leaf):
    keys = tuple(re.sub(r"^\[?'?|'?\]?$", "", str(getattr(k, "key", getattr(k, "name", k)))) for k in path)
    for n in range(len(keys)):
      if keys[n:] in by_path and leaf.ndim == len(by_path[keys[n:]].spec):
        return by_path[keys[n:]]
    return replicated

  return jax.tree_util.tree_map_with_path(one, abstract_opt_state)


def _with_shardings(abstract, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)


def _make_model(run, model_cfg: ModelConfig) -> Decoder:
  return Decoder(model_cfg, rngs=nnx.Rngs(run.model.init_seed), **run.model.decoder_kwargs())


def _make_extractor(run, model_cfg: ModelConfig) -> Extractor:
  return run.mlc.make_extractor(model_cfg, seed=run.model.init_seed + 1, param_dtype=DTYPES[run.model.param_dtype])


def abstract_train_state(run, model_cfg: ModelConfig, mesh: Mesh, total_steps: int = 1) -> TrainStateSpec:
  """The train state of `run` (a `RunConfig`) for architecture `model_cfg` on `mesh`: shapes, dtypes and shardings only.

  Nothing is allocated and no weight is read (`model.hf_path` only decides where `init_train_state` gets them).
  `total_steps` shapes the learning-rate schedule, not the state.
  """
  rules = tuple(tuple(r) for r in run.mesh.rules)
  abstract_policy = nnx.eval_shape(lambda: Policy(_make_model(run, model_cfg),
                                                  _make_extractor(run, model_cfg) if run.mlc.enabled else None))
  graphdef, abstract_modules = nnx.split(abstract_policy)
  policy_def = PolicyDef(graphdef, nnx.split(abstract_policy.model)[0])
  param_shardings = sharding_lib.variable_shardings(abstract_modules, mesh, rules)
  params = _with_shardings(nnx.to_pure_dict(abstract_modules), param_shardings)
  params = {k: v for k, v in params.items() if v is not None}
  optimizer = make_optimizer(run.optim, total_steps)
  abstract_opt = jax.eval_shape(optimizer.init, params)
  opt_state = _with_shardings(abstract_opt, _opt_state_shardings(abstract_opt, param_shardings, mesh))
  replicated = NamedSharding(mesh, PartitionSpec())
  frozen_copy = run.objective.live_reference(run)
  abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated), params=params,
                        opt_state=opt_state, ref_params=params["model"] if frozen_copy else None)
  return TrainStateSpec(abstract, model_cfg, policy_def, optimizer, learning_rate_schedule(run.optim, total_steps))


def initial_model_params(spec: TrainStateSpec, run) -> dict:
  """The initial language-model parameters, placed in their shardings: `model.hf_path`'s weights or the random init."""
  shardings = jax.tree.map(lambda x: x.sharding, spec.abstract.params["model"])
  if run.model.hf_path:
    mesh = jax.tree.leaves(shardings)[0].mesh
    loaded = load_hf(run.model.hf_path, dtype=DTYPES[run.model.param_dtype], mesh=mesh,
                     rules=tuple(tuple(r) for r in run.mesh.rules))
    return nnx.to_pure_dict(nnx.state(loaded))
  return _init_pure(lambda: _make_model(run, spec.model_cfg), shardings)


def _init_pure(make, shardings):
  return jax.jit(lambda: nnx.to_pure_dict(nnx.state(make())), out_shardings=shardings)()


def init_train_state(spec: TrainStateSpec, run) -> TrainState:
  """The initial train state that `spec` describes, allocated in its shardings."""
  params = {"model": initial_model_params(spec, run)}
  if "extractor" in spec.abstract.params:
    shardings = jax.tree.map(lambda x: x.sharding, spec.abstract.params["extractor"])
    params["extractor"] = _init_pure(lambda: _make_extractor(run, spec.model_cfg), shardings)
  opt_state = jax.jit(spec.optimizer.init, out_shardings=spec.shardings.opt_state)(params)
  ref_params = None if spec.abstract.ref_params is None else jax.tree.map(jnp.copy, params["model"])
  step = jax.device_put(jnp.zeros((), jnp.int32), spec.abstract.step.sharding)
  return TrainState(step=step, params=params, opt_state=opt_state, ref_params=ref_params)

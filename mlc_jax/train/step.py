"""The one compiled train step: gradient accumulation over micro-batches, AdamW update, state donated."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mlc_jax.train.objective import Objective, loss_fn, reference_outputs
from mlc_jax.train.state import Built, TrainState

BATCH_AXES = ("data", "fsdp")


def batch_sharding(mesh: Mesh, *, accumulated: bool) -> NamedSharding:
  """Examples split over data × fsdp; with `accumulated` the leading axis is the micro-batch index."""
  return NamedSharding(mesh, PartitionSpec(None, BATCH_AXES) if accumulated else PartitionSpec(BATCH_AXES))


def to_device(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """Assembles global arrays from each process's rows (the whole batch when there is one process)."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def split_micro_batches(batch: dict[str, np.ndarray], grad_accum: int) -> dict[str, np.ndarray]:
  """`[B, …]` → `[grad_accum, B // grad_accum, …]` (consecutive examples form a micro-batch)."""
  return {k: v.reshape(grad_accum, v.shape[0] // grad_accum, *v.shape[1:]) for k, v in batch.items()}


def make_train_step(built: Built, obj: Objective, *, aux_every: int, mesh: Mesh):
  """`step(state, batch) → (state, metrics)`, jitted with shardings and the state donated.

  `batch` leaves are `[grad_accum, micro_batch, …]`. MLC is added on steps where `state.step % aux_every == 0`.
  Metrics are averaged over micro-batches; `grad_norm` is before clipping.
  """
  policy_def, optimizer, schedule = built.policy_def, built.optimizer, built.schedule

  def train_step(state: TrainState, batch):
    apply_mlc = (state.step % aux_every) == 0
    ref_model = None if state.ref_params is None else policy_def.merge_model(state.ref_params)

    def micro(carry, micro_batch):
      def objective(params):
        return loss_fn(policy_def.merge(params), ref_model, micro_batch, apply_mlc, obj)

      (_, metrics), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
      return jax.tree.map(jnp.add, carry, (grads, metrics)), None

    zero_grads = jax.tree.map(jnp.zeros_like, state.params)
    zero_metrics = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(
        lambda: loss_fn(policy_def.merge(state.params), ref_model, jax.tree.map(lambda x: x[0], batch),
                        apply_mlc, obj)[1]))
    accum = jax.tree.leaves(batch)[0].shape[0]
    (grads, metrics), _ = jax.lax.scan(micro, (zero_grads, zero_metrics), batch)
    grads = jax.tree.map(lambda g: g / accum, grads)
    metrics = jax.tree.map(lambda m: m / accum, metrics)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics.update(grad_norm=optax.global_norm(grads), lr=schedule(state.step))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  replicated = NamedSharding(mesh, PartitionSpec())
  return jax.jit(train_step, in_shardings=(built.shardings, batch_sharding(mesh, accumulated=True)),
                 out_shardings=(built.shardings, replicated), donate_argnums=0)


def make_reference_fn(built: Built, obj: Objective, mesh: Mesh):
  """`fn(model_params, batch) → {key: [B, …]}` for `obj.reference_keys`, jitted (the precomputation pass).

  `batch` holds `obj.reference_inputs` `[B, T]`; see `objective.reference_outputs`.
  """
  def fn(model_params, batch):
    return reference_outputs(built.policy_def.merge_model(model_params), batch, obj)

  replicated = NamedSharding(mesh, PartitionSpec())
  return jax.jit(fn, in_shardings=(built.shardings.params["model"], batch_sharding(mesh, accumulated=False)),
                 out_shardings=replicated)

"""The one compiled train step: the objective's loss (plus the MLC term), gradient accumulation, AdamW, state donated.

A micro-batch of B examples holds the keys of its objective's data kind (`{side}_{ids,mask,loss_mask}` `[B, T]`, or
the pairs packed into rows `rows_*` `[r, S]` with their scored positions (`mlc_jax.data.packing`),
`prompt_ids`/`prompt_mask` `[B, L, P]` for MLC, `pair_language` `[B]`, …) and, when the reference values were
precomputed, `ref_<key>` `[B]` or `[B, …]` for each of the objective's `reference_keys`. Row arrays are split into
micro-batches like the examples: micro-batch m's rows hold exactly its examples.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mlc_jax.objectives import Mlc, Objective
from mlc_jax.train.state import TrainState, TrainStateSpec

BATCH_AXES = ("data", "fsdp")
PER_LANGUAGE_PREFIX = "by_language/"


def batch_sharding(mesh: Mesh, *, accumulated: bool) -> NamedSharding:
  """Examples split over data × fsdp; with `accumulated` the leading axis is the micro-batch index."""
  return NamedSharding(mesh, PartitionSpec(None, BATCH_AXES) if accumulated else PartitionSpec(BATCH_AXES))


def to_device(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """Assembles global arrays from each process's rows (the whole batch when there is one process)."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def split_micro_batches(batch: dict[str, np.ndarray], grad_accum: int) -> dict[str, np.ndarray]:
  """`[B, …]` → `[grad_accum, B // grad_accum, …]` (consecutive examples form a micro-batch)."""
  return {k: v.reshape(grad_accum, v.shape[0] // grad_accum, *v.shape[1:]) for k, v in batch.items()}


def device_batch(host_batch: dict[str, np.ndarray], mesh: Mesh, *, grad_accum: int = 1,
                 reference: dict[str, np.ndarray] | None = None) -> dict[str, jax.Array]:
  """An input-pipeline batch as the train step's `[grad_accum, micro, …]` global arrays.

  `index` (the examples' dataset positions) is dropped; with `reference` (`{key: [N, …]}` precomputed for the whole
  dataset) each example's values are added as `ref_<key>`.
  """
  batch = {k: v for k, v in host_batch.items() if k != "index"}
  if reference is not None:
    batch.update({f"ref_{k}": v[host_batch["index"]] for k, v in reference.items()})
  return to_device(split_micro_batches(batch, grad_accum), batch_sharding(mesh, accumulated=True))


def per_language_sums(values: dict[str, jax.Array], pair_language, num_languages: int) -> dict[str, jax.Array]:
  """Per-language sums `[num_languages]` of per-example values `[B]`, and the example counts.

  Keys `by_language/<name>` and `by_language/count`; `MetricsWriter` turns them into `<name>/<language>`
  means. Sums (not means) add up correctly over micro-batches, devices and logging windows.
  """
  onehot = jax.nn.one_hot(pair_language, num_languages, dtype=jnp.float32)  # [B, K]
  out = {PER_LANGUAGE_PREFIX + name: onehot.T @ v.astype(jnp.float32) for name, v in values.items()}
  out[PER_LANGUAGE_PREFIX + "count"] = onehot.sum(0)
  return out


def loss_fn(policy, ref_model, batch, apply_mlc, objective: Objective, mlc: Mlc | None, num_languages: int = 0):
  """Scalar loss and metrics for one micro-batch.

  Args:
    policy: `Policy` (model + extractor) being trained.
    ref_model: the frozen initial model (reference='frozen_copy'), or None when the batch carries the precomputed
      values (`ref_*`) or the objective needs none.
    apply_mlc: whether this step adds the MLC term: a traced bool, or Python `True` when every step does.
    mlc: the MLC section when the term is enabled, else None.
    num_languages: the number of pair languages `batch['pair_language']` indexes (0: no per-language metrics).
  """
  outputs = objective.outputs(policy.model, batch)
  if ref_model is not None:
    reference = jax.lax.stop_gradient(objective.reference_outputs(ref_model, batch))
  else:
    reference = {k: batch[f"ref_{k}"] for k in objective.reference_keys} if objective.reference_keys else None
  terms = objective.loss(outputs, reference)
  loss = terms.losses.mean() + terms.extra_loss
  per_example = {f"{objective.name}_loss": terms.losses, **terms.per_example}
  metrics = dict(terms.metrics)
  if terms.rewards is not None:
    chosen, rejected = terms.rewards
    per_example.update(reward_acc=(chosen > rejected).astype(jnp.float32), reward_margin=chosen - rejected)
    metrics.update(chosen_reward=chosen.mean(), rejected_reward=rejected.mean())
  metrics.update({k: v.mean() for k, v in per_example.items()})
  if num_languages and "pair_language" in batch:
    metrics.update(per_language_sums(per_example, batch["pair_language"], num_languages))
  if mlc is not None:
    mlc_loss, mlc_metrics = mlc.term(policy, batch, apply_mlc, outputs.get("prompt_state"))
    loss = loss + mlc_loss
    metrics.update(mlc_metrics)
  metrics["loss"] = loss
  return loss, metrics


def step_flops(run, model_cfg, shapes: dict[str, tuple[int, ...]], *, mlc_share: float) -> float:
  """Analytic model FLOPs of one step of `run` on a batch of `shapes` (`{key: [B, …]}`): the objective's, and the MLC
  term's weighted by `mlc_share` (1 on a step that runs it, `1 / mlc.aux_every` on average)."""
  total = run.objective.step_flops(model_cfg, shapes, frozen_reference=run.objective.live_reference(run))
  return total + (mlc_share * run.mlc.step_flops(model_cfg, shapes) if run.mlc.enabled else 0.0)


def under_mesh(fn, mesh: Mesh):
  """`fn` traced with `mesh` as the abstract mesh: what kernels wrapped in `shard_map` (splash attention) read."""
  @functools.wraps(fn)
  def traced(*args):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return fn(*args)
  return traced


def make_train_step(spec: TrainStateSpec, objective: Objective, mlc: Mlc | None, *, mesh: Mesh,
                    num_languages: int = 0):
  """`step(state, batch) → (state, metrics)`, jitted with shardings and the state donated.

  `batch` leaves are `[grad_accum, micro_batch, …]`. With `mlc`, its term is added on steps where
  `state.step % mlc.aux_every == 0`. Metrics are averaged over micro-batches; `grad_norm` is before clipping.
  """
  policy_def, optimizer, schedule = spec.policy_def, spec.optimizer, spec.schedule
  aux_every = mlc.aux_every if mlc is not None else 1

  def train_step(state: TrainState, batch):
    apply_mlc = True if aux_every == 1 else (state.step % aux_every) == 0  # (True: no `lax.cond` around the term)
    ref_model = None if state.ref_params is None else policy_def.merge_model(state.ref_params)

    def micro_loss(params, micro_batch):
      return loss_fn(policy_def.merge(params), ref_model, micro_batch, apply_mlc, objective, mlc, num_languages)

    def micro_grads(micro_batch):
      (_, metrics), grads = jax.value_and_grad(micro_loss, has_aux=True)(state.params, micro_batch)
      return grads, metrics

    def micro(carry, micro_batch):
      return jax.tree.map(jnp.add, carry, micro_grads(micro_batch)), None

    # The first micro-batch seeds the sums and a scan adds the others' in: with grad_accum=1 there is no loop and no
    # zero-filled gradient tree to add to (a pass over every parameter less).
    accum = jax.tree.leaves(batch)[0].shape[0]
    sums = micro_grads(jax.tree.map(lambda x: x[0], batch))
    if accum > 1:
      sums, _ = jax.lax.scan(micro, sums, jax.tree.map(lambda x: x[1:], batch))
    grads, metrics = jax.tree.map(lambda x: x / accum, sums) if accum > 1 else sums
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics.update(grad_norm=optax.tree.norm(grads), lr=schedule(state.step))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  replicated = NamedSharding(mesh, PartitionSpec())
  return jax.jit(under_mesh(train_step, mesh), in_shardings=(spec.shardings, batch_sharding(mesh, accumulated=True)),
                 out_shardings=(spec.shardings, replicated), donate_argnums=0)


def make_precompute_fn(spec: TrainStateSpec, fn, mesh: Mesh):
  """`jitted(model_params, batch) → {key: [B, …]}` of a `Precomputed.fn(model, batch)` (the pass before training).

  `batch` holds its input arrays `[B, …]`, split over the data shards; the outputs are replicated.
  """
  def run(model_params, batch):
    return fn(spec.policy_def.merge_model(model_params), batch)

  replicated = NamedSharding(mesh, PartitionSpec())
  return jax.jit(under_mesh(run, mesh),
                 in_shardings=(spec.shardings.params["model"], batch_sharding(mesh, accumulated=False)),
                 out_shardings=replicated)

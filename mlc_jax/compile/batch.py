"""The batch a run's train step and reference precompute read, as shapes: `jax.ShapeDtypeStruct`s from the config.

One helper for every objective, from what the objective declares: `{side}_{ids,mask,loss_mask}` int32 `[B, T]` for
each of its `sides` (T = data.max_prompt_len + data.max_response_len), `prompt_ids`/`prompt_mask` `[B, L, P]` with
the MLC term (L languages of data.langs, P = data.mlc_prompt_len), `pair_language` `[B]`, and with precomputed
reference values `ref_<key>` for each of its `reference_keys`, their shapes and dtypes those of
`objective.reference_outputs` (traced abstractly, e.g. `[B]` float32 log-probs, `[B, hidden]` pools).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from mlc_jax.data.languages import resolve_languages

SEQUENCE_KEYS = ("ids", "mask", "loss_mask")


def num_languages(run) -> int:
  """The number of languages of `data.langs` (the MLC variants, and the pair languages metrics are kept for)."""
  return len(resolve_languages(run.data.langs, key="data.langs"))


def sequences(sides, batch_size: int, seq_len: int) -> dict[str, jax.ShapeDtypeStruct]:
  """`{side}_{ids,mask,loss_mask}` int32 `[batch_size, seq_len]` for each side."""
  return {f"{side}_{k}": jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32) for side in sides
          for k in SEQUENCE_KEYS}


def reference_batch(run, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
  """What the reference precompute reads: the objective's `reference_inputs` `[batch_size, T]`."""
  return sequences(run.objective.reference_sides, batch_size, run.data.limits.pair_len)


def micro_batch(run, spec) -> dict[str, jax.ShapeDtypeStruct]:
  """One micro-batch `[B, …]` of the train step (B = run.micro_batch_size); `spec` is the `TrainStateSpec`."""
  objective, b = run.objective, run.micro_batch_size
  batch = sequences(objective.sides, b, run.data.limits.pair_len)
  if run.mlc.enabled:
    shape = (b, num_languages(run), run.data.mlc_prompt_len)
    batch.update(prompt_ids=jax.ShapeDtypeStruct(shape, jnp.int32), prompt_mask=jax.ShapeDtypeStruct(shape, jnp.int32))
  batch["pair_language"] = jax.ShapeDtypeStruct((b,), jnp.int32)
  if run.reference == "precomputed" and objective.reference_keys:
    outputs = jax.eval_shape(lambda p, x: objective.reference_outputs(spec.policy_def.merge_model(p), x),
                             spec.abstract.params["model"], reference_batch(run, b))
    batch.update({f"ref_{k}": outputs[k] for k in objective.reference_keys})
  return batch


def accumulated(batch: dict[str, jax.ShapeDtypeStruct], grad_accum: int) -> dict[str, jax.ShapeDtypeStruct]:
  """`[B, …]` → `[grad_accum, B, …]`, the train step's layout."""
  return {k: jax.ShapeDtypeStruct((grad_accum, *v.shape), v.dtype) for k, v in batch.items()}

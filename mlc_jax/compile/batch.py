"""The batch a run's train step and reference precompute read, as shapes: `jax.ShapeDtypeStruct`s from the config.

One helper for every objective, from what the objective declares: `{side}_{ids,mask,loss_mask}` int32 `[B, T]` and
`{side}_scores_index` `[B, R]` for each of its `sides` (T = data.max_prompt_len + data.max_response_len,
R = data.max_response_len) or, with packed pairs, the largest packed rows
(`packing.RowLayout.max_shapes`; the reference precompute: `packing.max_tree_shapes`), `prompt_ids`/`prompt_mask`
`[B, L, P]` with the MLC term (L languages of data.langs, P = data.mlc_prompt_len), `pair_language` `[B]`, and with
values precomputed before training `ref_<key>` for each output of `objective.precomputed`, their shapes and dtypes
those of its function (traced abstractly, e.g. `[B]` float32 log-probs, `[B, hidden]` pools, MSD's off-policy
responses); for prompt-only objectives (MSD) the student's and the teacher's prompts.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from mlc_jax.data import packing
from mlc_jax.data.datasets import PROMPT_ONLY
from mlc_jax.data.languages import resolve_languages
from mlc_jax.data.tokenized import SCORES_INDEX

SEQUENCE_KEYS = ("ids", "mask", "loss_mask")


def num_languages(run) -> int:
  """The number of languages of `data.langs` (the MLC variants, and the pair languages metrics are kept for)."""
  return len(resolve_languages(run.data.langs, key="data.langs"))


def sequences(sides, batch_size: int, limits) -> dict[str, jax.ShapeDtypeStruct]:
  """`{side}_{ids,mask,loss_mask}` int32 `[batch_size, T]` and `{side}_scores_index` `[batch_size, R]` for each side
  (`limits`: the run's `SequenceLimits`, T its pair length, R its response length)."""
  shapes = {f"{side}_{k}": (batch_size, limits.pair_len) for side in sides for k in SEQUENCE_KEYS}
  return _int32({**shapes, **{f"{side}_{SCORES_INDEX}": (batch_size, limits.max_response_len) for side in sides}})


def _int32(shapes: dict[str, tuple[int, ...]]) -> dict[str, jax.ShapeDtypeStruct]:
  return {k: jax.ShapeDtypeStruct(shape, jnp.int32) for k, shape in shapes.items()}


def prompt_only(run, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
  """A prompt-only batch (MSD): the student's `[B, P]` and the teacher's `[B, Pt]` left-padded prompts,
  `pair_language` and `index` `[B]` (P = data.max_prompt_len, Pt = the objective's teacher_prompt_len)."""
  p, pt = run.data.limits.max_prompt_len, run.objective.teacher_prompt_len
  return _int32({"student_prompt_ids": (batch_size, p), "student_prompt_mask": (batch_size, p),
                 "teacher_prompt_ids": (batch_size, pt), "teacher_prompt_mask": (batch_size, pt),
                 "pair_language": (batch_size,), "index": (batch_size,)})


def reference_batch(run, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
  """What the precompute before training reads: the objective's `Precomputed.input_keys`, at their largest."""
  objective, limits = run.objective, run.data.limits
  if objective.data_kind is PROMPT_ONLY:
    keys = objective.precomputed(run, None).input_keys
    return {k: v for k, v in prompt_only(run, batch_size).items() if k in keys}
  if objective.pairs_packed(run):
    (prefix,) = packing.tree_prefixes(objective.reference_sides)
    return _int32(packing.max_tree_shapes(prefix, batch_size, limits.max_prompt_len, limits.max_response_len))
  return sequences(objective.reference_sides, batch_size, limits)


def micro_batch(run, spec) -> dict[str, jax.ShapeDtypeStruct]:
  """One micro-batch `[B, …]` of the train step (B = run.micro_batch_size) at its largest, before on-policy
  sampling adds its keys; `spec` is the `TrainStateSpec`."""
  objective, b, limits = run.objective, run.micro_batch_size, run.data.limits
  layout = objective.row_layout(run)
  if objective.data_kind is PROMPT_ONLY:
    batch = {k: v for k, v in prompt_only(run, b).items() if k != "index"}
  elif layout is None:
    batch = sequences(objective.sides, b, limits)
  else:
    batch = _int32(layout.max_shapes(b, limits.max_prompt_len, limits.max_response_len))
  if run.mlc.enabled:
    shared = objective.shares_variant(run)  # (when the data's variants match, as they usually do)
    shape = (b, num_languages(run) - shared, run.data.mlc_prompt_len)
    batch.update(prompt_ids=jax.ShapeDtypeStruct(shape, jnp.int32), prompt_mask=jax.ShapeDtypeStruct(shape, jnp.int32))
    if shared:
      batch["shared_variant"] = jax.ShapeDtypeStruct((b,), jnp.int32)
  batch["pair_language"] = jax.ShapeDtypeStruct((b,), jnp.int32)
  pre = objective.precomputed(run, None)
  if pre is not None:
    outputs = jax.eval_shape(lambda p, x: pre.fn(spec.policy_def.merge_model(p), x), spec.abstract.params["model"],
                             reference_batch(run, b))
    batch.update({f"ref_{k}": outputs[k] for k in pre.output_keys})
  return batch


def accumulated(batch: dict[str, jax.ShapeDtypeStruct], grad_accum: int) -> dict[str, jax.ShapeDtypeStruct]:
  """`[B, …]` → `[grad_accum, B, …]`, the train step's layout."""
  return {k: jax.ShapeDtypeStruct((grad_accum, *v.shape), v.dtype) for k, v in batch.items()}

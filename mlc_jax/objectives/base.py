"""What an objective is, and the registry that names them.

An objective is a frozen dataclass of its hyper-parameters (a config `Section`: each field's default, help and
check) registered by name with `@register`. It owns everything the trainer needs to know about it:

  data_kind         the data it reads (`mlc_jax.data.datasets`: preference pairs, MPO pairs, prompts, …)
  sides, logp_sides, pool_sides
                    the sequences its forward runs, those whose response log-probs it needs (the LM head runs on
                    their response tokens only) and those it mean-pools; preference-pair sides arrive packed
                    (`mlc_jax.data.packing`: each pair's prompt once, `data.pack_pairs` pairs per row) or, with
                    `data.pack_pairs=0`, as plain `{side}_{ids,mask,loss_mask}` `[B, T]` with the positions the
                    head runs at, `{side}_scores_index` `[B, W]`
  reference_keys    what the frozen initial model contributes per example (() = no reference), computed by
                    `reference_outputs` either once before training (cached) or live from a frozen copy
  outputs(model, batch) → dict    its forward
  loss(outputs, reference) → LossTerms
  check_run(run)    checks across config sections (e.g. MPO's pooling against the length buckets)

The train step (`mlc_jax.train.step`) is generic over objectives; nothing outside this package compares an
objective's name. `mlc_jax.objectives.mlc` is the add-on term any objective with prompt variants can take.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from mlc_jax.config.fields import ConfigError, Section
from mlc_jax.data import packing
from mlc_jax.data.datasets import DataKind
from mlc_jax.data.tokenized import SCORES_INDEX
from mlc_jax.losses import logps, mpo
from mlc_jax.models import Decoder, ModelConfig, flops

OBJECTIVES: dict[str, type["Objective"]] = {}


def register(cls: type["Objective"]) -> type["Objective"]:
  """Class decorator: makes `cls` selectable as `objective.name=cls.name` (its section `objective.<name>`)."""
  if not (isinstance(cls, type) and issubclass(cls, Objective) and dataclasses.is_dataclass(cls)):
    raise TypeError(f"{cls!r} is not an Objective dataclass")
  if cls.name in OBJECTIVES and OBJECTIVES[cls.name] is not cls:
    raise ValueError(f"an objective named {cls.name!r} is already registered ({OBJECTIVES[cls.name].__qualname__})")
  OBJECTIVES[cls.name] = cls
  return cls


def objective_class(name: str) -> type["Objective"]:
  if name not in OBJECTIVES:
    raise ConfigError(f"objective.name={name!r} is not one of {', '.join(sorted(OBJECTIVES))}")
  return OBJECTIVES[name]


class Precomputed(NamedTuple):
  """Per-example values of the frozen initial model computed once before training, cached by content hash in
  WORKDIR/reference and added to each batch as `ref_<key>`.

  name: the cache file's prefix; input_keys: the dataset arrays `fn` reads; output_keys: what it returns;
  fn: `fn(model, batch) → {key: [B, …]}` (jitted by the trainer, on the mesh); identity: what else the values
  depend on (hashed into the cache key beside the model and the input arrays, e.g. sampling settings).
  """

  name: str
  input_keys: tuple[str, ...]
  output_keys: tuple[str, ...]
  fn: Callable
  identity: dict = {}


class LossTerms(NamedTuple):
  """What an objective's loss gives for one micro-batch of B examples.

  losses: `[B]` per-example losses; their mean is the `<name>_loss` metric and (with `extra_loss`) the loss.
  rewards: `(chosen, rejected)` `[B]` implicit rewards for the reward_acc / reward_margin metrics, or None.
  metrics: further scalar metrics.
  per_example: further `[B]` values, reported as batch means and per pair language.
  extra_loss: a scalar added to the mean of `losses` (e.g. MPO's weighted retention term).
  """

  losses: jax.Array
  rewards: tuple[jax.Array, jax.Array] | None = None
  metrics: dict[str, jax.Array] = {}
  per_example: dict[str, jax.Array] = {}
  extra_loss: jax.Array | float = 0.0


def sequence_stats(model: Decoder, batch, sides: tuple[str, ...], *, logps_of: tuple[str, ...] = (),
                   pool_of: tuple[str, ...] = (), pool_padding: bool = False) -> dict[str, jax.Array]:
  """One forward pass over the sequences of `sides`: packed rows (`rows_*`), per-example trees (`{prefix}tree_*`, the
  reference precompute's) or plain `{side}_{ids,mask,loss_mask}` `[B, T]`.

  Returns `{side}_sum` and `{side}_mean` `[B]` (summed and per-token average response log-probs) for the
  sides in `logps_of`, and `{side}_pool` `[B, hidden]` (final hidden states mean-pooled, see `mpo.mean_pool`) for
  those in `pool_of`; with `shared_variant` in the batch also `prompt_state` `[B, hidden]`, the final hidden state at
  each pair's last prompt token (the MLC representation of its own-language variant, `Objective.shares_variant`).
  """
  prefix = packing.tree_prefixes(sides)[0] if all(_is_pair_side(side) for side in sides) else None
  if prefix is not None and f"{prefix}tree_ids" in batch:
    if len(packing.tree_prefixes(sides)) != 1:
      raise ValueError(f"per-example trees hold one pair; sides {sides} span several")
    batch = packing.as_rows(batch, prefix)
  if "rows_ids" in batch:
    return _packed_stats(model, batch, sides, logps_of, pool_of, pool_padding)
  return _plain_stats(model, batch, sides, logps_of, pool_of, pool_padding)


def _is_pair_side(side: str) -> bool:
  return side.endswith(packing.BRANCHES)


def _packed_stats(model: Decoder, batch, sides, logps_of, pool_of, pool_padding) -> dict[str, jax.Array]:
  """`sequence_stats` of packed rows (`mlc_jax.data.packing`): the head only at the scored positions."""
  if pool_of and pool_padding:
    raise ValueError("mean-pooling over padding needs the plain layout (data.pack_pairs=0)")
  num_branches = len(packing.BRANCHES)
  hidden = model.hidden_states(batch["rows_ids"], positions=batch["rows_positions"],
                               segment_ids=batch["rows_segments"], branch_ids=batch["rows_branches"])
  rows = hidden.shape[0]
  pairs = batch[f"{packing.tree_prefixes(sides)[0]}prompt_last"].shape[1]  # per row
  out = {}
  for prefix in packing.tree_prefixes(logps_of):
    slot = batch[f"{prefix}scores_slot"]
    token = model.token_logps(logps.gather_positions(hidden, batch[f"{prefix}scores_index"]),
                              batch[f"{prefix}scores_targets"])
    summed = logps.slot_sums(token, slot, pairs * num_branches).reshape(rows * pairs, num_branches)
    count = logps.slot_sums(jnp.ones_like(token), slot, pairs * num_branches).reshape(rows * pairs, num_branches)
    for side in logps_of:
      side_prefix, branch = packing.side_tree(side)
      if side_prefix == prefix:
        out[f"{side}_sum"] = summed[:, branch - 1]
        out[f"{side}_mean"] = summed[:, branch - 1] / jnp.maximum(count[:, branch - 1], 1.0)
  for side in pool_of:  # a sequence is its tree's prompt and its branch
    prefix, branch = packing.side_tree(side)
    segment_rj = jnp.take_along_axis(batch["rows_segments"], batch[f"{prefix}prompt_last"], axis=1)
    in_sequence_rsj = ((batch["rows_segments"][..., None] == segment_rj[:, None, :])
                       & jnp.isin(batch["rows_branches"], jnp.array([0, branch]))[..., None]).astype(jnp.float32)
    total = jnp.einsum("rsj,rsd->rjd", in_sequence_rsj, hidden.astype(jnp.float32)).reshape(rows * pairs, -1)
    out[f"{side}_pool"] = total / jnp.maximum(in_sequence_rsj.sum(1).reshape(rows * pairs, 1), 1.0)
  if "shared_variant" in batch:
    out["prompt_state"] = logps.gather_positions(hidden, batch["prompt_last"]).reshape(rows * pairs, -1)
  return out


def _plain_stats(model: Decoder, batch, sides, logps_of, pool_of, pool_padding) -> dict[str, jax.Array]:
  """`sequence_stats` of plain `[B, T]` sequences: every side its own row; the head at the `{side}_scores_index`
  `[B, W]` positions (`tokenized.scored_positions`, from the input pipeline) or, without them, at every position."""
  if tuple(sides[:len(logps_of)]) != tuple(logps_of):
    raise ValueError(f"logps_of={logps_of} must be the first sides of {sides}")
  cat = lambda key, which: jnp.concatenate([batch[f"{side}_{key}"] for side in which])
  ids, mask = cat("ids", sides), cat("mask", sides)
  hidden = model.hidden_states(ids, mask)
  b = batch[f"{sides[0]}_ids"].shape[0]
  rows = lambda x, side: x[sides.index(side) * b:(sides.index(side) + 1) * b]
  out = {}
  if logps_of:
    n = len(logps_of) * b
    if all(f"{side}_{SCORES_INDEX}" in batch for side in logps_of):
      index = cat(SCORES_INDEX, logps_of)  # [n, W]: the positions predicting a response token, then zeros
      targets = jnp.take_along_axis(ids[:n], index + 1, axis=1)
      count = cat("loss_mask", logps_of)[:, 1:].sum(1)
      token = model.token_logps(logps.gather_positions(hidden[:n], index), targets)
      summed, mean, _ = logps.sequence_logps(token, jnp.arange(index.shape[1]) < count[:, None])
    else:
      # Every position scores the next token, the last one masked out: no `hidden[:, :-1]` slice, whose
      # T − 1 positions make the TPU compiler copy the float32 logits (see logps.next_token_targets).
      targets, target_mask = logps.next_token_targets(ids[:n], cat("loss_mask", logps_of))
      summed, mean, _ = logps.sequence_logps(model.token_logps(hidden[:n], targets), target_mask)
    for side in logps_of:
      out[f"{side}_sum"], out[f"{side}_mean"] = rows(summed, side), rows(mean, side)
  for side in pool_of:
    out[f"{side}_pool"] = mpo.mean_pool(rows(hidden, side), rows(mask, side), include_padding=pool_padding)
  if "shared_variant" in batch:  # (a pair's sequence: its prompt, then its response from loss_mask's first 1 on)
    side = next(side for side in sides if side in packing.BRANCHES)
    prompt_last = jnp.argmax(batch[f"{side}_loss_mask"], axis=1) - 1
    out["prompt_state"] = logps.gather_positions(rows(hidden, side), prompt_last[:, None])[:, 0]
  return out


def reward_terms(chosen: jax.Array, rejected: jax.Array) -> tuple[dict, dict]:
  """(per-example reward_acc and reward_margin `[B]`, scalar chosen/rejected reward means) of rewards `[B]`."""
  return ({"reward_acc": (chosen > rejected).astype(jnp.float32), "reward_margin": chosen - rejected},
          {"chosen_reward": chosen.mean(), "rejected_reward": rejected.mean()})


@dataclasses.dataclass(frozen=True)
class Objective(Section):
  """Base of every objective; see the module docstring. Subclasses add hyper-parameter `field`s."""

  name: ClassVar[str]
  data_kind: ClassVar[DataKind]
  sides: ClassVar[tuple[str, ...]] = ("chosen", "rejected")
  logp_sides: ClassVar[tuple[str, ...]] = ("chosen", "rejected")
  pool_sides: ClassVar[tuple[str, ...]] = ()
  reference_keys: ClassVar[tuple[str, ...]] = ()
  reference_sides: ClassVar[tuple[str, ...]] = ("chosen", "rejected")

  def pairs_packed(self, run) -> bool:
    """Whether this run's batches hold packed rows (`data.pack_pairs` > 0 and every side a preference-pair side)."""
    return run.data.pack_pairs > 0 and all(map(_is_pair_side, (*self.sides, *self.reference_sides)))

  def reference_inputs(self, run) -> tuple[str, ...]:
    """The dataset arrays `reference_outputs` reads before training: the per-example trees of the reference sides
    when pairs are packed, else their plain sequences with their scored positions."""
    if self.pairs_packed(run):
      prefixes = packing.tree_prefixes(self.reference_sides)
      return tuple(f"{prefix}tree_{k}" for prefix in prefixes for k in packing.TREE_FIELDS)
    return tuple(f"{side}_{k}" for side in self.reference_sides for k in ("ids", "mask", "loss_mask", SCORES_INDEX))

  def row_layout(self, run) -> packing.RowLayout | None:
    """How the input pipeline packs this run's pairs (None: plain sequences). The response tokens of the logp sides
    are scored, and those of the reference sides when the frozen model runs live."""
    if not self.pairs_packed(run):
      return None
    scored = (*self.logp_sides, *(self.reference_sides if self.live_reference(run) else ()))
    return packing.RowLayout(self.sides, tuple(dict.fromkeys(s for s in self.sides if s in scored)),
                             pairs_per_row=run.data.pack_pairs, multiple=run.data.pack_multiple)

  def shares_variant(self, run) -> bool:
    """Whether the MLC term takes the representation of each pair's own-language prompt variant from the pair's
    forward (the final hidden state at its last prompt token, packed or plain) instead of running that variant
    again: when the term reads the final-norm output and a side holds the pair's prompt. The pipeline drops the
    variant only where the data's variants are those prompts (`TokenizedData.variants_match_pair_prompts`)."""
    mlc = run.mlc
    return (mlc.enabled and any(side in packing.BRANCHES for side in self.sides)
            and mlc.layer in (-1, run.architecture().num_layers))

  def arrange(self, run, data):
    """`data` (a `PairArrays`) arranged for this run's input pipeline: its `row_layout` and `shares_variant`."""
    return dataclasses.replace(data, layout=self.row_layout(run), share_variant=self.shares_variant(run))

  @property
  def reference_cache_name(self) -> str:
    """File-name prefix of the precomputed reference values in WORKDIR/reference."""
    return "ref_logps"

  def live_reference(self, run) -> bool:
    """Whether the frozen initial model runs in every step (a copy in the train state) rather than never, or once
    before training for cached values: `reference=frozen_copy` with reference values to compute."""
    return bool(self.reference_keys) and run.reference == "frozen_copy"

  def precomputed(self, run, tokenizer) -> Precomputed | None:
    """What is computed once from the initial model before training: the reference values when
    `reference=precomputed` (None when there are none to compute)."""
    if run.reference == "precomputed" and self.reference_keys:
      return Precomputed(self.reference_cache_name, self.reference_inputs(run), self.reference_keys,
                         self.reference_outputs)
    return None

  def sampling_step(self, spec, run, mesh, tokenizer) -> Callable | None:
    """A jitted `fn(model_params, batches, first_step) → batches` (on-policy sampling from the live parameters), or
    None: `batches` is a tuple of the device batches of steps `first_step, first_step + 1, …` in the step's
    `[grad_accum, micro, …]` layout, returned with the sampled keys added (`mlc_jax.train.batches`)."""
    return None

  def sampling_every(self) -> int:
    """How many steps' batches each `sampling_step` call answers (1: before every step)."""
    return 1

  def check_run(self, run) -> None:
    """Checks against the rest of the run's config (`mlc_jax.config.run.RunConfig`); raise `ConfigError`."""

  def outputs(self, model: Decoder, batch) -> dict[str, jax.Array]:
    """The policy's values `loss` reads (default: `sequence_stats` over the class's sides)."""
    return sequence_stats(model, batch, self.sides, logps_of=self.logp_sides, pool_of=self.pool_sides)

  def reference_outputs(self, model: Decoder, batch) -> dict[str, jax.Array]:
    """The frozen initial model's `reference_keys` values, each `[B]` or `[B, …]`."""
    out = sequence_stats(model, batch, self.reference_sides, logps_of=self.reference_sides)
    return {k: out[k] for k in self.reference_keys}

  def loss(self, outputs: dict[str, jax.Array], reference: dict[str, jax.Array] | None) -> LossTerms:
    raise NotImplementedError

  def step_flops(self, model_cfg: ModelConfig, shapes: dict[str, tuple[int, ...]], *, frozen_reference: bool) -> float:
    """Analytic model FLOPs of its forward and backward on a batch whose arrays have `shapes`, plus the frozen
    reference's forward when it runs live. Packed rows `[r, S]`: every row position through the blocks (attention
    counted causal over the row), the head at the `[r, M]` scored positions; plain `[B, T]` per side: the head at
    the `[B, W]` positions of `{side}_scores_index` of the `logp_sides` (at all T without them)."""
    if "rows_ids" in shapes:
      r, s = shapes["rows_ids"]
      blocks = r * flops.forward_flops(model_cfg, s)
      head = lambda sides: sum(math.prod(shapes[f"{prefix}scores_index"]) for prefix in packing.tree_prefixes(sides)
                               if f"{prefix}scores_index" in shapes)
      head_flops = lambda sides: flops.forward_flops(model_cfg, 1, num_blocks=0, head_positions=head(sides))
      frozen = blocks + head_flops(self.reference_sides) if frozen_reference else 0
      return flops.training_flops(blocks + head_flops(self.logp_sides)) + frozen
    b, t = shapes[f"{self.sides[0]}_ids"]
    scored = shapes.get(f"{self.sides[0]}_{SCORES_INDEX}", (b, t))[1]
    head = flops.forward_flops(model_cfg, t, num_blocks=0, head_positions=scored)
    forward = len(self.sides) * flops.forward_flops(model_cfg, t) + len(self.logp_sides) * head
    frozen = len(self.reference_sides) * (flops.forward_flops(model_cfg, t) + head) if frozen_reference else 0
    return b * (flops.training_flops(forward) + frozen)

"""What an objective is, and the registry that names them.

An objective is a frozen dataclass of its hyper-parameters (a config `Section`: each field's default, help and
check) registered by name with `@register`. It owns everything the trainer needs to know about it:

  data_kind         the data it reads (`mlc_jax.data.datasets`: preference pairs, MPO pairs, prompts, …)
  sides, logp_sides, pool_sides
                    the sequences `{side}_{ids,mask,loss_mask}` `[B, T]` its forward runs, those whose response
                    log-probs it needs (the LM head runs on those rows only) and those it mean-pools
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
from collections.abc import Callable
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from mlc_jax.config.fields import ConfigError, Section
from mlc_jax.data.datasets import DataKind
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
  """One forward pass over the sequences `{side}_{ids,mask,loss_mask}` `[B, T]` of every side in `sides`.

  Returns `{side}_sum` and `{side}_mean` `[B]` (summed and per-token average response log-probs) for the
  sides in `logps_of`, which must be the first sides of `sides` (the LM head runs on those rows only), and
  `{side}_pool` `[B, hidden]` (final hidden states mean-pooled, see `mpo.mean_pool`) for those in `pool_of`.
  """
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
    # Every position scores the next token, the last one masked out: no `hidden[:, :-1]` slice, whose
    # T − 1 positions make the TPU compiler copy the float32 logits (see logps.next_token_targets).
    targets, target_mask = logps.next_token_targets(ids[:n], cat("loss_mask", logps_of))
    summed, mean, _ = logps.sequence_logps(model.token_logps(hidden[:n], targets), target_mask)
    for side in logps_of:
      out[f"{side}_sum"], out[f"{side}_mean"] = rows(summed, side), rows(mean, side)
  for side in pool_of:
    out[f"{side}_pool"] = mpo.mean_pool(rows(hidden, side), rows(mask, side), include_padding=pool_padding)
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

  @property
  def reference_inputs(self) -> tuple[str, ...]:
    """The batch keys `reference_outputs` reads."""
    return tuple(f"{side}_{k}" for side in self.reference_sides for k in ("ids", "mask", "loss_mask"))

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
      return Precomputed(self.reference_cache_name, self.reference_inputs, self.reference_keys,
                         self.reference_outputs)
    return None

  def sampling_step(self, spec, run, mesh, tokenizer) -> Callable | None:
    """A jitted `fn(model_params, batch, step) → batch` run before every train step (on-policy sampling from the
    live parameters; `batch` in the step's `[grad_accum, micro, …]` layout), or None."""
    return None

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
    """Analytic model FLOPs of its forward and backward on a batch whose arrays have `shapes` (`[B, T]` per side;
    the LM head scores every position of its `logp_sides`), plus the frozen reference's forward when it runs live."""
    b, t = shapes[f"{self.sides[0]}_ids"]
    head = flops.forward_flops(model_cfg, t, num_blocks=0, head_positions=t)
    forward = len(self.sides) * flops.forward_flops(model_cfg, t) + len(self.logp_sides) * head
    frozen = len(self.reference_sides) * (flops.forward_flops(model_cfg, t) + head) if frozen_reference else 0
    return b * (flops.training_flops(forward) + frozen)

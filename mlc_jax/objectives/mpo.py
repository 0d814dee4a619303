"""MPO, Multilingual reward gaP Optimization (DESIGN.md §2.2): L = L1 + retention_weight · L2.

L1 pulls β times the target pair's reward gap (per-token average log-probs) onto the dominant pair's gap under the
frozen initial model; L2 keeps the mean-pooled final hidden states of the dominant chosen and rejected sequences
where the initial model had them. Both dominant-side quantities are reference values (computed once, or live from
a frozen copy). Rewards for the metrics are β·(average log-prob) of the target pair, so `reward_margin` is
β·RG, which L1 closes onto `dominant_gap`.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from mlc_jax.config.fields import ConfigError, field, non_negative, positive
from mlc_jax.data.datasets import MPO_PAIRS
from mlc_jax.losses import mpo
from mlc_jax.objectives.base import LossTerms, Objective, register, sequence_stats

DOMINANT_SIDES = ("dominant_chosen", "dominant_rejected")


@register
@dataclasses.dataclass(frozen=True)
class Mpo(Objective):
  name = "mpo"
  data_kind = MPO_PAIRS
  sides = ("chosen", "rejected", *DOMINANT_SIDES)
  logp_sides = ("chosen", "rejected")
  pool_sides = DOMINANT_SIDES
  reference_sides = DOMINANT_SIDES
  reference_keys = ("dominant_chosen_mean", "dominant_rejected_mean", "dominant_chosen_pool",
                    "dominant_rejected_pool")
  beta: float = field(1.0, "β on the target reward gap (paper: 1.0 Llama-3.1-8B, 1.5 Gemma-2-9B and Qwen2.5-7B)",
                      positive())
  retention_weight: float = field(1.0, "weight of the retention term L2 (the paper's L = L1 + L2)", non_negative())
  pool_padding: bool = field(False, "L2 mean-pools over padding too, as the official code does")

  @property
  def reference_cache_name(self) -> str:
    return "mpo_dominant" + ("_padded" if self.pool_padding else "")

  def check_run(self, run):
    if self.pool_padding and run.data.pack_pairs:
      raise ConfigError(f"objective.mpo.pool_padding=True averages over padding, which packed rows do not have; set "
                        f"data.pack_pairs=0 (got {run.data.pack_pairs})")
    if self.pool_padding and run.data.pair_buckets:
      raise ConfigError(f"objective.mpo.pool_padding=True averages over the padded length, which data.pair_buckets="
                        f"{tuple(run.data.pair_buckets)} changes per batch; use one or the other")

  def outputs(self, model, batch):
    return sequence_stats(model, batch, self.sides, logps_of=self.logp_sides, pool_of=self.pool_sides,
                          pool_padding=self.pool_padding)

  def reference_outputs(self, model, batch):
    out = sequence_stats(model, batch, DOMINANT_SIDES, logps_of=DOMINANT_SIDES, pool_of=DOMINANT_SIDES,
                         pool_padding=self.pool_padding)
    return {k: out[k] for k in self.reference_keys}

  def loss(self, outputs, reference):
    chosen, rejected = outputs["chosen_mean"], outputs["rejected_mean"]
    errors = mpo.reward_gap_errors(reference["dominant_chosen_mean"], reference["dominant_rejected_mean"], chosen,
                                   rejected, beta=self.beta)
    pool = lambda values: jnp.concatenate([values["dominant_chosen_pool"], values["dominant_rejected_pool"]])
    retention = mpo.pooled_mse(pool(outputs), pool(reference))
    return LossTerms(errors, (self.beta * chosen, self.beta * rejected), metrics={"retention_loss": retention},
                     per_example={"dominant_gap": reference["dominant_chosen_mean"]
                                  - reference["dominant_rejected_mean"]},
                     extra_loss=self.retention_weight * retention)

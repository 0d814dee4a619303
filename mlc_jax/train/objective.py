"""The training objective: a base loss on the pairs (a preference/SFT objective or MPO) plus λ·MLC.

A batch (per micro-batch, B pairs, L languages) holds:
  chosen_ids, chosen_mask, chosen_loss_mask, rejected_ids, rejected_mask, rejected_loss_mask  int32 [B, T]
  prompt_ids, prompt_mask                                       int32 [B, L, P] (MLC prompt variants)
  pair_language                                                 int32 [B]: index into Objective.languages
  dominant_{chosen,rejected}_{ids,mask,loss_mask}               int32 [B, T] (MPO: the dominant-language pair)
  ref_<key> for key in Objective.reference_keys                 float32 [B] or [B, hidden]: values of the frozen
    initial model (reference='precomputed' and a base that needs a reference only)
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mlc_jax.data.batching import DOMINANT_PAIR_KEYS, PAIR_KEYS
from mlc_jax.losses import logps, mlc, mpo, preference
from mlc_jax.models import Decoder

BASES = ("sft", "dpo", "ipo", "hinge", "simpo", "orpo", "mpo")
REFERENCE_BASES = ("dpo", "ipo", "hinge", "mpo")  # the others never compute a reference
PAIR_REFERENCE_KEYS = ("chosen_sum", "rejected_sum", "chosen_mean", "rejected_mean")
MPO_REFERENCE_KEYS = ("dominant_chosen_mean", "dominant_rejected_mean", "dominant_chosen_pool",
                      "dominant_rejected_pool")
PER_LANGUAGE_PREFIX = "by_language/"


@dataclasses.dataclass(frozen=True)
class Objective:
  """Static hyper-parameters of the loss (hashable: part of the compiled step)."""

  base: str = "dpo"
  beta: float = 0.1
  label_smoothing: float = 0.0
  gamma: float = 0.5  # SimPO's target margin
  retention_weight: float = 1.0  # MPO: weight of the retention term L2
  pool_padding: bool = False  # MPO: mean-pool over padding too (the official code)
  mlc_enabled: bool = True
  mlc_weight: float = 0.8
  tau: float = 0.2
  normalize: str = "sigma1"
  mlc_layer: int = -1  # HF hidden_states index, resolved (0..num_layers)
  vocab_chunk: int | None = None
  languages: tuple[str, ...] = ()  # the pair languages `pair_language` indexes; () = no per-language metrics

  @classmethod
  def from_config(cls, config, mlc_layer: int, languages: tuple[str, ...] = ()) -> "Objective":
    o = config.objective
    return cls(base=o.base, beta=o.beta, label_smoothing=o.label_smoothing, gamma=o.gamma,
               retention_weight=o.retention_weight, pool_padding=o.pool_padding, mlc_enabled=config.mlc.enabled,
               mlc_weight=config.mlc.weight, tau=config.mlc.tau, normalize=config.mlc.normalize,
               mlc_layer=mlc_layer, vocab_chunk=config.model.vocab_chunk or None, languages=tuple(languages))

  @property
  def needs_reference(self) -> bool:
    return self.base in REFERENCE_BASES

  @property
  def reference_keys(self) -> tuple[str, ...]:
    """What the frozen initial model contributes to each example."""
    return MPO_REFERENCE_KEYS if self.base == "mpo" else PAIR_REFERENCE_KEYS

  @property
  def reference_inputs(self) -> tuple[str, ...]:
    """The batch keys `reference_outputs` reads."""
    return DOMINANT_PAIR_KEYS if self.base == "mpo" else PAIR_KEYS


def sequence_stats(model: Decoder, batch, sides: tuple[str, ...], *, logps_of: tuple[str, ...] = (),
                   pool_of: tuple[str, ...] = (), vocab_chunk=None, pool_padding: bool = False) -> dict:
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
    token = logps.token_logps(hidden[:n, :-1], model.unembedding(), ids[:n, 1:], vocab_chunk=vocab_chunk,
                              logit_softcap=model.cfg.final_logit_softcap)
    summed, mean, _ = logps.sequence_logps(token, cat("loss_mask", logps_of)[:, 1:])
    for side in logps_of:
      out[f"{side}_sum"], out[f"{side}_mean"] = rows(summed, side), rows(mean, side)
  for side in pool_of:
    out[f"{side}_pool"] = mpo.mean_pool(rows(hidden, side), rows(mask, side), include_padding=pool_padding)
  return out


def reference_outputs(model: Decoder, batch, obj: Objective) -> dict[str, jax.Array]:
  """The frozen initial model's values `obj.reference_keys`, each `[B]` or `[B, hidden]`.

  The pair log-probs; for MPO the dominant pair's average log-probs and pooled final hidden states.
  """
  sides = ("dominant_chosen", "dominant_rejected") if obj.base == "mpo" else ("chosen", "rejected")
  out = sequence_stats(model, batch, sides, logps_of=sides, pool_of=sides if obj.base == "mpo" else (),
                       vocab_chunk=obj.vocab_chunk, pool_padding=obj.pool_padding)
  return {k: out[k] for k in obj.reference_keys}


def policy_outputs(model: Decoder, batch, obj: Objective) -> dict[str, jax.Array]:
  """The policy's values the base loss reads: pair log-probs (chosen only for SFT); MPO adds dominant pools."""
  if obj.base == "mpo":
    sides = ("chosen", "rejected", "dominant_chosen", "dominant_rejected")
    return sequence_stats(model, batch, sides, logps_of=sides[:2], pool_of=sides[2:], vocab_chunk=obj.vocab_chunk,
                          pool_padding=obj.pool_padding)
  sides = ("chosen",) if obj.base == "sft" else ("chosen", "rejected")
  return sequence_stats(model, batch, sides, logps_of=sides, vocab_chunk=obj.vocab_chunk)


def base_loss(obj: Objective, policy: dict, ref: dict | None):
  """Per-example losses `[B]` of the base objective and (chosen, rejected) rewards `[B]` for metrics.

  Rewards: β·(π − ref) on summed log-probs for DPO and hinge, the per-token log-ratio for IPO, β·(average
  log-prob) for SimPO and MPO (MPO's margin is then β·RG of the target pair, which L1 pulls to the dominant
  pair's gap), the average log-prob for ORPO and SFT. For MPO the losses are L1's per-example errors.
  """
  b = obj.base
  if b in ("dpo", "hinge"):
    args = (policy["chosen_sum"], policy["rejected_sum"], ref["chosen_sum"], ref["rejected_sum"])
    losses = (preference.dpo(*args, beta=obj.beta, label_smoothing=obj.label_smoothing) if b == "dpo"
              else preference.hinge(*args, beta=obj.beta))
    return losses, (preference.dpo_rewards(policy["chosen_sum"], ref["chosen_sum"], beta=obj.beta),
                    preference.dpo_rewards(policy["rejected_sum"], ref["rejected_sum"], beta=obj.beta))
  if b == "ipo":
    chosen, rejected = policy["chosen_mean"] - ref["chosen_mean"], policy["rejected_mean"] - ref["rejected_mean"]
    return preference.ipo(chosen, rejected, beta=obj.beta), (chosen, rejected)
  if b in ("simpo", "mpo"):
    chosen, rejected = policy["chosen_mean"], policy["rejected_mean"]
    losses = (preference.simpo(chosen, rejected, beta=obj.beta, gamma=obj.gamma) if b == "simpo" else
              mpo.reward_gap_errors(ref["dominant_chosen_mean"], ref["dominant_rejected_mean"], chosen, rejected,
                                    beta=obj.beta))
    return losses, (obj.beta * chosen, obj.beta * rejected)
  if b == "orpo":
    chosen, rejected = policy["chosen_mean"], policy["rejected_mean"]
    return preference.orpo(chosen, rejected, beta=obj.beta), (chosen, rejected)
  if b == "sft":
    return preference.sft(policy["chosen_mean"]), None
  raise ValueError(f"objective.base={b!r} is not one of {', '.join(BASES)}")


def per_language_sums(values: dict[str, jax.Array], pair_language, num_languages: int) -> dict[str, jax.Array]:
  """Per-language sums `[num_languages]` of per-example values `[B]`, and the example counts.

  Keys `by_language/<name>` and `by_language/count`; `MetricsWriter` turns them into `<name>/<language>`
  means. Sums (not means) add up correctly over micro-batches, devices and logging windows.
  """
  onehot = jax.nn.one_hot(pair_language, num_languages, dtype=jnp.float32)  # [B, K]
  out = {PER_LANGUAGE_PREFIX + name: onehot.T @ v.astype(jnp.float32) for name, v in values.items()}
  out[PER_LANGUAGE_PREFIX + "count"] = onehot.sum(0)
  return out


def last_token_states(model: Decoder, prompt_ids, prompt_mask, *, layer: int):
  """HF `hidden_states[layer]` at each prompt variant's last real token: `[B, L, P]` → `[B, L, hidden]`."""
  b, num_langs, p = prompt_ids.shape
  ids, mask = prompt_ids.reshape(b * num_langs, p), prompt_mask.reshape(b * num_langs, p)
  hidden = model.hidden_state_at(ids, mask, layer=layer)
  last = jnp.maximum(mask.sum(-1) - 1, 0)
  return jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0].reshape(b, num_langs, -1)


def loss_fn(policy, ref_model: Decoder | None, batch, apply_mlc, obj: Objective):
  """Scalar loss and metrics for one micro-batch.

  Args:
    policy: `Policy` (model + extractor) being trained.
    ref_model: the frozen initial model (reference='frozen_copy'), or None when the batch carries its
      precomputed values (`ref_*`) or the base needs none.
    apply_mlc: traced bool, whether this step adds the MLC term.
  """
  pol = policy_outputs(policy.model, batch, obj)
  ref = None
  if obj.needs_reference:
    if ref_model is None:
      ref = {k: batch[f"ref_{k}"] for k in obj.reference_keys}
    else:
      ref = jax.lax.stop_gradient(reference_outputs(ref_model, batch, obj))
  losses, rewards = base_loss(obj, pol, ref)
  loss = losses.mean()
  metrics = {f"{obj.base}_loss": loss}
  per_example = {}
  if rewards is not None:
    chosen_reward, rejected_reward = rewards
    per_example.update(reward_acc=(chosen_reward > rejected_reward).astype(jnp.float32),
                       reward_margin=chosen_reward - rejected_reward)
    metrics.update(chosen_reward=chosen_reward.mean(), rejected_reward=rejected_reward.mean())
  if obj.base == "mpo":
    retention = mpo.pooled_mse(jnp.concatenate([pol["dominant_chosen_pool"], pol["dominant_rejected_pool"]]),
                               jnp.concatenate([ref["dominant_chosen_pool"], ref["dominant_rejected_pool"]]))
    loss = loss + obj.retention_weight * retention
    per_example.update(dominant_gap=ref["dominant_chosen_mean"] - ref["dominant_rejected_mean"], mpo_loss=losses)
    metrics["retention_loss"] = retention
  metrics.update({k: v.mean() for k, v in per_example.items() if k != "mpo_loss"})
  if obj.languages and per_example and "pair_language" in batch:
    metrics.update(per_language_sums(per_example, batch["pair_language"], len(obj.languages)))
  if obj.mlc_enabled:
    def mlc_term():
      z = policy.extractor(last_token_states(policy.model, batch["prompt_ids"], batch["prompt_mask"],
                                             layer=obj.mlc_layer))
      z = z.astype(jnp.float32)
      return (mlc.consistency_loss(z, tau=obj.tau, normalize=obj.normalize),
              jax.lax.stop_gradient(mlc.sigma1_share(z).mean()))

    mlc_loss, share = jax.lax.cond(apply_mlc, mlc_term, lambda: (jnp.float32(0.0), jnp.float32(0.0)))
    loss = loss + obj.mlc_weight * mlc_loss
    metrics.update(mlc_loss=mlc_loss, sigma1_share=share, mlc_applied=apply_mlc.astype(jnp.float32))
  metrics["loss"] = loss
  return loss, metrics

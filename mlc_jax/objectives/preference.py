"""The monolingual objectives on preference pairs (DESIGN.md §2.4): SFT, DPO (sigmoid, cDPO), IPO, hinge, SimPO, ORPO.

Each reads the pair's response log-probs (`sequence_stats`): summed (DPO, hinge) or per-token averages (IPO, SimPO,
ORPO, SFT). DPO, IPO and hinge compare with the frozen initial model; SFT, SimPO and ORPO need no reference.
Defaults are the MLC paper's for DPO (β 0.1); the others are TRL's (IPO, hinge, ORPO β 0.1) or the SimPO paper's
range (β 2.0, γ 0.5): the MLC paper reports them without hyper-parameters.
"""
from __future__ import annotations

import dataclasses

from mlc_jax.config.fields import field, in_range, positive
from mlc_jax.data.datasets import PREFERENCE_PAIRS
from mlc_jax.losses import preference
from mlc_jax.objectives.base import LossTerms, Objective, register

PAIR_REFERENCE_KEYS = ("chosen_sum", "rejected_sum", "chosen_mean", "rejected_mean")


@dataclasses.dataclass(frozen=True)
class PairObjective(Objective):
  """An objective on the pairs (chosen, rejected) of preference data with prompt variants."""

  data_kind = PREFERENCE_PAIRS


@register
@dataclasses.dataclass(frozen=True)
class Sft(PairObjective):
  """Negative per-token average log-likelihood of the chosen response; the rejected one is not read."""

  name = "sft"
  sides = ("chosen",)
  logp_sides = ("chosen",)

  def loss(self, outputs, reference):
    return LossTerms(preference.sft(outputs["chosen_mean"]))


@register
@dataclasses.dataclass(frozen=True)
class Dpo(PairObjective):
  """Sigmoid DPO on summed log-probs, with conservative label smoothing (cDPO) and RPO's NLL term (α times the
  chosen response's per-token negative log-likelihood, TRL's `rpo_alpha`); rewards β·(π − ref)."""

  name = "dpo"
  reference_keys = PAIR_REFERENCE_KEYS
  beta: float = field(0.1, "β, the inverse temperature of the implicit reward", positive())
  label_smoothing: float = field(0.0, "cDPO's ε: the share of pairs assumed mislabelled",
                                 in_range(0.0, 0.5, high_open=True))
  nll_weight: float = field(0.0, "RPO's α: the weight of the chosen response's per-token NLL added to the loss "
                            "(0 = plain DPO)", in_range(0.0, 1e3))

  def loss(self, outputs, reference):
    args = (outputs["chosen_sum"], outputs["rejected_sum"], reference["chosen_sum"], reference["rejected_sum"])
    loss = preference.dpo(*args, beta=self.beta, label_smoothing=self.label_smoothing)
    if self.nll_weight:
      loss = loss + self.nll_weight * preference.sft(outputs["chosen_mean"])
    return LossTerms(loss, _dpo_rewards(outputs, reference, self.beta))


@register
@dataclasses.dataclass(frozen=True)
class Hinge(PairObjective):
  """SLiC hinge `relu(1 − β·logits)` on summed log-probs; rewards as DPO's."""

  name = "hinge"
  reference_keys = PAIR_REFERENCE_KEYS
  beta: float = field(0.1, "β: the margin is 1/β in log-ratio units", positive())

  def loss(self, outputs, reference):
    args = (outputs["chosen_sum"], outputs["rejected_sum"], reference["chosen_sum"], reference["rejected_sum"])
    return LossTerms(preference.hinge(*args, beta=self.beta), _dpo_rewards(outputs, reference, self.beta))


@register
@dataclasses.dataclass(frozen=True)
class Ipo(PairObjective):
  """IPO `(Δ − 1/(2β))²` on length-normalised log-ratios; rewards are the per-token log-ratios."""

  name = "ipo"
  reference_keys = PAIR_REFERENCE_KEYS
  beta: float = field(0.1, "β: the target log-ratio gap is 1/(2β)", positive())

  def loss(self, outputs, reference):
    chosen = outputs["chosen_mean"] - reference["chosen_mean"]
    rejected = outputs["rejected_mean"] - reference["rejected_mean"]
    return LossTerms(preference.ipo(chosen, rejected, beta=self.beta), (chosen, rejected))


@register
@dataclasses.dataclass(frozen=True)
class Simpo(PairObjective):
  """SimPO `−log σ(β(avg_c − avg_r) − γ)`; rewards β·(average log-prob)."""

  name = "simpo"
  beta: float = field(2.0, "β, the scale of the average log-prob reward", positive())
  gamma: float = field(0.5, "γ, the target reward margin", in_range(0.0, 1e3))

  def loss(self, outputs, reference):
    chosen, rejected = outputs["chosen_mean"], outputs["rejected_mean"]
    return LossTerms(preference.simpo(chosen, rejected, beta=self.beta, gamma=self.gamma),
                     (self.beta * chosen, self.beta * rejected))


@register
@dataclasses.dataclass(frozen=True)
class Orpo(PairObjective):
  """ORPO: the chosen NLL plus β times the log-odds-ratio loss; rewards the average log-probs."""

  name = "orpo"
  beta: float = field(0.1, "β, the weight of the odds-ratio term", positive())

  def loss(self, outputs, reference):
    chosen, rejected = outputs["chosen_mean"], outputs["rejected_mean"]
    return LossTerms(preference.orpo(chosen, rejected, beta=self.beta), (chosen, rejected))


def _dpo_rewards(outputs, reference, beta):
  return (preference.dpo_rewards(outputs["chosen_sum"], reference["chosen_sum"], beta=beta),
          preference.dpo_rewards(outputs["rejected_sum"], reference["rejected_sum"], beta=beta))

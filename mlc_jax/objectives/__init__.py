"""Training objectives, one module per family, registered by name (see `mlc_jax.objectives.base`).

`preference`: sft, dpo, ipo, hinge, simpo, orpo. `mpo`: mpo. `msd`: msd (self-distillation on prompts). `mlc`: the
MLC consistency term any objective with prompt variants can add. Importing this package registers them all.
"""
from mlc_jax.objectives import mpo, msd, preference  # noqa: F401  (registers the objectives)
from mlc_jax.objectives.base import OBJECTIVES, LossTerms, Objective, objective_class, register, sequence_stats
from mlc_jax.objectives.mlc import Mlc

__all__ = ["LossTerms", "Mlc", "OBJECTIVES", "Objective", "objective_class", "register", "sequence_stats"]

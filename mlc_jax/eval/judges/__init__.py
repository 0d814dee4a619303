"""Judges by name: ``refusal`` (offline, model-free), ``guard`` (a guard model), ``api`` (a chat-completions API).

Each takes a batch of ``(prompt, response, lang)`` and returns one ``Verdict`` (label safe / unsafe / invalid,
judge name, raw output) per item; ``measures`` says in one sentence what its labels mean, for reports.
"""
from __future__ import annotations

import inspect

from mlc_jax.eval.judges.api import ApiJudge
from mlc_jax.eval.judges.base import LABELS, Judge, JudgeInput, Verdict
from mlc_jax.eval.judges.guard import GuardJudge
from mlc_jax.eval.judges.refusal import RefusalJudge

JUDGES = {"refusal": RefusalJudge, "guard": GuardJudge, "api": ApiJudge}

__all__ = ["JUDGES", "LABELS", "Judge", "JudgeInput", "Verdict", "make_judge"]


def make_judge(name: str, **options) -> Judge:
  """The judge called ``name`` built with ``options``; an unknown name or option is an error naming it."""
  if name not in JUDGES:
    raise ValueError(f"unknown judge {name!r}; known judges: {sorted(JUDGES)}")
  try:
    inspect.signature(JUDGES[name]).bind(**options)
  except TypeError as e:
    raise ValueError(f"judge {name!r}: {e}") from None
  return JUDGES[name](**options)

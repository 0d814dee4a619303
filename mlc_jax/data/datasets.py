"""The kinds of training data an objective can read, each with its checks and its loader.

A `DataKind` turns a run's `data` section (`mlc_jax.config.sections.DataSection`) and a tokenizer into a
tokenized dataset (`TokenizedData`, `MpoTokenizedData`, `PromptOnlyData`) that the input pipeline batches by its
`batch_keys`; pairs carry the run's arrangement (how the pipeline packs them, `Objective.arrange`).
"""
from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable

from mlc_jax.config.fields import ConfigError
from mlc_jax.data import tokenized
from mlc_jax.data.preferences import MPO_DATASET_PREFIX, load_mpo_pairs, load_preferences


@dataclasses.dataclass(frozen=True)
class DataKind:
  """What an objective trains on.

  Attributes:
    name: a short description used in messages.
    prompt_variants: whether each example carries its prompt in every language (`prompt_ids` `[N, L, P]`, what
      the MLC term reads).
    check: `check(data_section)` raises `ConfigError` naming the key when the section cannot give this kind.
    load: `load(run, tokenizer)` → the tokenized dataset (prints a one-line summary); `run` is the `RunConfig`
      (its data section, and the objective's settings where tokenisation depends on them).
  """

  name: str
  prompt_variants: bool
  check: Callable
  load: Callable


def _is_mpo_dataset(data) -> bool:
  return data.source == "tfds" and data.name.startswith(MPO_DATASET_PREFIX)


def _check_preference_pairs(data):
  if _is_mpo_dataset(data):
    raise ConfigError(f"data.name={data.name!r} holds MPO pairs, which only objective.name='mpo' reads")


def _load_preference_pairs(run, tokenizer) -> tokenized.TokenizedData:
  data = run.data
  try:
    examples, langs = load_preferences(data.source, data.path or None, data.langs, empty_responses="keep",
                                       name=data.name, manual_dir=data.manual_dir, data_dir=data.data_dir)
  except (OSError, ValueError) as e:
    raise ConfigError(f"data: {e}") from e
  print(f"data: {len(examples)} pairs, languages {', '.join(langs)}")
  pairs = tokenized.tokenize_examples(examples, tokenizer, data.limits)
  return run.objective.arrange(run, pairs)


def _check_mpo_pairs(data):
  if not _is_mpo_dataset(data):
    raise ConfigError(f"objective.name='mpo' trains on an mpo_pairs dataset: set data.source='tfds' and "
                      f"data.name='mpo_pairs/llama' (or gemma, qwen); got data.source={data.source!r}, "
                      f"data.name={data.name!r}")


def _load_mpo_pairs(run, tokenizer) -> tokenized.MpoTokenizedData:
  data = run.data
  try:
    examples, dropped, untranslated = load_mpo_pairs(data.name, data.langs, manual_dir=data.manual_dir,
                                                     data_dir=data.data_dir)
  except (OSError, ValueError) as e:
    raise ConfigError(f"data: {e}") from e
  if untranslated:
    from mlc_jax.data.tfds_builders import mpo_pairs

    source = os.path.join(data.manual_dir, mpo_pairs.MpoPairs.SOURCE_DIR,
                          mpo_pairs.FILE.format(config=data.name.removeprefix(MPO_DATASET_PREFIX)))
    where = "; ".join(f"{lang}: {', '.join(map(str, indices))}" for lang, indices in untranslated.items())
    print(f"warning: data: left out {sum(map(len, untranslated.values()))} pairs of {data.name} whose target prompt "
          f"is in their dominant language, which would train nothing (indices in {source} by language: {where})",
          file=sys.stderr)
  pairs = tokenized.tokenize_mpo(examples, tokenizer, data.limits)
  pairs = run.objective.arrange(run, pairs)
  count = lambda codes, which: ", ".join(f"{code} {int((which == i).sum())}" for i, code in enumerate(codes))
  print(f"data: {len(pairs)} MPO pairs from {data.name}; dominant languages "
        f"{count(pairs.dominant_languages, pairs.dominant_language)}; target languages "
        f"{count(pairs.languages, pairs.pair_language)}"
        + (f"; left out (target not in data.langs): {dropped}" if dropped else ""))
  return pairs


PREFERENCE_PAIRS = DataKind("preference pairs with prompt variants", prompt_variants=True,
                            check=_check_preference_pairs, load=_load_preference_pairs)
MPO_PAIRS = DataKind("MPO pairs (a dominant-language and a target-language pair)", prompt_variants=False,
                     check=_check_mpo_pairs, load=_load_mpo_pairs)


def _load_prompt_only(run, tokenizer) -> tokenized.PromptOnlyData:
  from mlc_jax.data.prompts import load_prompts

  data, objective = run.data, run.objective
  try:
    examples, targets, skipped = load_prompts(data)
  except (OSError, ValueError) as e:
    raise ConfigError(f"data: {e}") from e
  prompts = tokenized.tokenize_prompt_only(examples, tokenizer, prompt_len=data.max_prompt_len,
                                           teacher_prompt_len=objective.teacher_prompt_len,
                                           teacher_template=objective.teacher_template, languages=targets)
  counts = ", ".join(f"{lang} {int((prompts.pair_language == i).sum())}" for i, lang in enumerate(targets))
  print(f"data: {len(prompts)} prompts from {data.name if data.source == 'tfds' else data.source} with their English "
        f"translation; target languages {counts}" + (f"; left out (a prompt or its English empty): {skipped}"
                                                     if skipped else ""))
  return prompts


PROMPT_ONLY = DataKind("prompts with their English translation (no responses)", prompt_variants=False,
                       check=_check_preference_pairs, load=_load_prompt_only)


"""Prompt-only multilingual training data (MSD, DESIGN.md §2.3): each target-language prompt with its English twin.

Sources (`data.source`): ``tfds`` reads any mlc_jax TFDS dataset whose examples hold the same prompt in several
languages (``xsafety/aligned``: 10 languages, 2,800 rows; ``mlc_pku_saferlhf/dpo`` or ``/sft``: mlc10);
``builtin`` and ``mlc_jsonl`` read the prompts of the preference sets. ``data.langs`` names the languages to use and
must include ``en``: every other one is a target language, and each (row, target) with both texts non-empty is one
example. Responses are not read: MSD samples them.
"""
from __future__ import annotations

import dataclasses
import os

from mlc_jax.data.languages import LANGUAGE_SETS, resolve_languages
from mlc_jax.data.preferences import PAIR_LANGUAGE, load_preferences, mlc_jsonl_languages

ENGLISH = PAIR_LANGUAGE


@dataclasses.dataclass(frozen=True)
class PromptExample:
  """One training prompt: `prompt` in `language` (a target) and its English translation `english`.

  `prompt_id` is the row of the source (shared by the row's languages); `index` the example's position.
  """

  index: int
  prompt_id: int
  language: str
  prompt: str
  english: str


def prompt_table(data) -> tuple[list, list[dict[str, str]], tuple[str, ...]]:
  """`(ids, rows, languages)`: every source row's id and `{language: prompt}`, and the languages the source has.

  `data` names the source as a run's data section does (`source`, `path`, `name`, `manual_dir`, `data_dir`). A row's
  id is the dataset's own (`id`, or `category/index` for XSafety), else its position.
  """
  if data.source != "tfds":  # every language the preference source has
    everything = (mlc_jsonl_languages(data.path) if data.source == "mlc_jsonl" and os.path.isfile(data.path)
                  else LANGUAGE_SETS["builtin"])
    examples, langs = load_preferences(data.source, data.path or None, list(everything), empty_responses="keep")
    return [ex.index for ex in examples], [ex.prompts for ex in examples], langs
  from mlc_jax.data.tfds_builders import common

  builder = common.prepared_builder(data.name, manual_dir=data.manual_dir, data_dir=data.data_dir or None)
  features = builder.info.features
  if "prompt" not in features or not hasattr(features["prompt"], "keys"):
    raise ValueError(f"data.name={data.name!r} has no prompt in several languages (features: "
                     f"{sorted(features.keys())}); prompt tables are e.g. 'xsafety/aligned', 'multijail' or "
                     "'mlc_pku_saferlhf/dpo'")
  splits = list(builder.info.splits)
  records = common.read_split(builder, "train" if "train" in splits else splits[0])  # MultiJail has only 'test'

  ids = [r["id"] if "id" in r else f"{r['category']}/{r['index']}" if "category" in r else r.get("index", i)
         for i, r in enumerate(records)]
  return ids, [r["prompt"] for r in records], tuple(features["prompt"].keys())


def load_prompts(data) -> tuple[list[PromptExample], tuple[str, ...], dict[str, int]]:
  """`(examples, target languages, skipped)` from a run's data section; `skipped` counts rows left out per target
  language because the prompt or its English twin is empty."""
  _, rows, available = prompt_table(data)
  languages = resolve_languages(data.langs, available=available, key="data.langs")
  if ENGLISH not in languages:
    raise ValueError(f"data.langs={list(languages)}: the teacher reads each prompt's English translation, so the "
                     f"languages must include {ENGLISH!r}")
  targets = tuple(lang for lang in languages if lang != ENGLISH)
  if not targets:
    raise ValueError("data.langs=['en']: name at least one target language besides 'en'")
  examples, skipped = [], dict.fromkeys(targets, 0)
  for row_id, row in enumerate(rows):
    english = row[ENGLISH].strip()
    for lang in targets:
      text = row[lang].strip()
      if not text or not english:
        skipped[lang] += 1
        continue
      examples.append(PromptExample(len(examples), row_id, lang, text, english))
  if not examples:
    raise ValueError(f"data: no row of {data.name or data.source} has a prompt in {list(targets)} and in English")
  return examples, targets, {k: v for k, v in skipped.items() if v}

"""Multilingual preference data: one chosen / rejected pair per example plus the prompt in several languages.

Sources:
  ``builtin``: the package's own set (``load_builtin_prefs``), languages ``LANGUAGE_SETS["builtin"]``.
  ``mlc_jsonl``: the MLC training format, one JSON object a line::

      {"prompt": [{"from": "human", "value": <English prompt>}],
       "chosen": {"from": "gpt", "value": <English response>}, "rejected": {"from": "gpt", "value": ...},
       "prompt_zh": [{"from": "human", "value": <Chinese prompt>}], "prompt_ar": [...], ...}

  The pair answers the English prompt unless the row names another of its languages in an optional
  ``"pair_language": "sw"`` field (our extension: SFT data whose responses are in the prompt's language).

  ``tfds``: a prepared TFDS dataset (``mlc_pku_saferlhf/dpo``).

In ``builtin`` and ``tfds`` the pair is written for the English prompt (``pair_language == "en"``). MPO's data
(``mpo_pairs/{llama,gemma,qwen}``, read by ``load_mpo_pairs``) holds each pair twice, in a dominant language
and in a target language (``MpoExample``).
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

from mlc_jax.data.builtin_data import load_builtin_prefs
from mlc_jax.data.languages import LANGUAGE_SETS, resolve_languages
from mlc_jax.data.text_files import read_text, where

SOURCES = ("builtin", "mlc_jsonl", "tfds")
PAIR_LANGUAGE = "en"
EMPTY_RESPONSE_POLICIES = ("error", "keep")
_MLC_PROMPT_PREFIX = "prompt_"
MPO_DATASET_PREFIX = "mpo_pairs/"  # the TFDS datasets MPO trains on: mpo_pairs/{llama,gemma,qwen}


@dataclasses.dataclass(frozen=True)
class PreferenceExample:
  """One preference pair with its prompt in the requested languages.

  Attributes:
    index: position of the example in its dataset (0-based).
    prompts: language -> prompt text, exactly the requested languages.
    chosen: the preferred response to ``prompts[pair_language]``.
    rejected: the dispreferred response to ``prompts[pair_language]``.
    pair_language: the language of the prompt the chosen / rejected pair answers.
  """

  index: int
  prompts: dict[str, str]
  chosen: str
  rejected: str
  pair_language: str

  def __post_init__(self):
    if self.pair_language not in self.prompts:
      raise ValueError(
          f"example {self.index}: pair language {self.pair_language!r} is not among its prompt languages "
          f"{list(self.prompts)}"
      )


@dataclasses.dataclass(frozen=True)
class MpoExample:
  """One MPO example: a pair in the dominant language and the same pair in a target language.

  Each side is a `PreferenceExample` whose only prompt is in its ``pair_language`` (the detected language).
  """

  index: int
  dominant: PreferenceExample
  target: PreferenceExample


def _require_pair_language(langs: Sequence[str], key: str) -> None:
  if PAIR_LANGUAGE not in langs:
    raise ValueError(
        f"{key}: the chosen/rejected responses answer the {PAIR_LANGUAGE!r} prompt, so the languages must "
        f"include {PAIR_LANGUAGE!r}; got {list(langs)}"
    )


def read_builtin(langs: Sequence[str]) -> list[PreferenceExample]:
  """The built-in preference set restricted to ``langs`` (codes, must include ``"en"``)."""
  data = load_builtin_prefs()
  langs = resolve_languages(list(langs), available=data["languages"], key="langs")
  _require_pair_language(langs, "langs")
  return [
      PreferenceExample(
          index=i,
          prompts={lang: ex["prompt"][lang] for lang in langs},
          chosen=ex["chosen"],
          rejected=ex["rejected"],
          pair_language=PAIR_LANGUAGE,
      )
      for i, ex in enumerate(data["examples"])
  ]


def _row_languages(row: dict) -> list[str]:
  """The prompt languages of an MLC jsonl row: ``prompt`` is English, ``prompt_xx`` is language xx."""
  langs = [PAIR_LANGUAGE] if "prompt" in row else []
  return langs + [k[len(_MLC_PROMPT_PREFIX):] for k in row if k.startswith(_MLC_PROMPT_PREFIX)]


def _iter_jsonl(path: str):
  """Yields ``(line_number, row)`` for every non-blank line (1-based numbers), rows parsed as JSON objects."""
  for lineno, line in enumerate(read_text(path).splitlines(), start=1):
    if not line.strip():
      continue
    place = where(path, lineno)
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{place}: invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(row, dict):
      raise ValueError(f"{place}: expected a JSON object, got {type(row).__name__}")
    yield lineno, row


def mlc_jsonl_languages(path: str) -> tuple[str, ...]:
  """The prompt languages of an MLC jsonl file, read from its first row (``en`` for column ``prompt``)."""
  for _, row in _iter_jsonl(path):
    return tuple(_row_languages(row))
  raise ValueError(f"{path}: no examples (the file is empty)")


def _message_text(value: Any, role: str, field: str, where: str, *, as_list: bool) -> str:
  """The text of a sharegpt message: ``{"from": role, "value": text}``, or a one-message list of it."""
  if as_list:
    if not isinstance(value, list) or len(value) != 1:
      raise ValueError(
          f"{where}: {field!r} must be a list with one {role!r} message (single-turn prompts only), got {value!r}"
      )
    value = value[0]
  if not isinstance(value, dict) or value.get("from") != role or not isinstance(value.get("value"), str):
    raise ValueError(f"{where}: {field!r} must be a message {{'from': {role!r}, 'value': <text>}}, got {value!r}")
  return value["value"]


def read_mlc_jsonl(
    path: str, langs: Sequence[str], *, empty_responses: str = "error"
) -> list[PreferenceExample]:
  """Examples from an MLC training jsonl file (see the module docstring), prompts restricted to ``langs``.

  Args:
    path: the jsonl file.
    langs: language codes (must include ``"en"``, the ``prompt`` column).
    empty_responses: ``"error"``: an empty (or whitespace-only) chosen / rejected response is an error;
      ``"keep"``: keep it, so the response is just the end-of-sequence token (what the official MLC code
      trains on).

  Raises:
    ValueError: naming the file and the 1-based line: invalid JSON, a malformed message, a requested
      language column missing (lists the line's languages), an empty prompt or (by default) response.
  """
  if empty_responses not in EMPTY_RESPONSE_POLICIES:
    raise ValueError(f"empty_responses must be one of {EMPTY_RESPONSE_POLICIES}, got {empty_responses!r}")
  _require_pair_language(langs, "langs")
  examples = []
  for lineno, row in _iter_jsonl(path):
    where = f"{path}, line {lineno}"
    prompts = {}
    for lang in langs:
      column = "prompt" if lang == PAIR_LANGUAGE else _MLC_PROMPT_PREFIX + lang
      if column not in row:
        raise ValueError(
            f"{where}: no column {column!r} for language {lang!r}; the line has languages {_row_languages(row)}"
        )
      text = _message_text(row[column], "human", column, where, as_list=True)
      if not text.strip():
        raise ValueError(f"{where}: empty prompt in column {column!r} (language {lang!r})")
      prompts[lang] = text
    responses = {}
    for field in ("chosen", "rejected"):
      if field not in row:
        raise ValueError(f"{where}: no {field!r} response")
      text = _message_text(row[field], "gpt", field, where, as_list=False)
      if not text.strip() and empty_responses == "error":
        raise ValueError(
            f"{where}: empty {field!r} response (read with empty_responses='keep' to train on it as a "
            "bare end-of-sequence)"
        )
      responses[field] = text
    pair_language = row.get("pair_language", PAIR_LANGUAGE)
    if pair_language not in prompts:
      raise ValueError(f"{where}: 'pair_language' {pair_language!r} is not among the languages read "
                       f"({list(prompts)}; data.langs must include it)")
    examples.append(
        PreferenceExample(
            index=len(examples),
            prompts=prompts,
            chosen=responses["chosen"],
            rejected=responses["rejected"],
            pair_language=pair_language,
        )
    )
  if not examples:
    raise ValueError(f"{path}: no examples (the file is empty)")
  return examples


def read_tfds_records(records: Sequence[dict], langs: Sequence[str]) -> list[PreferenceExample]:
  """PreferenceExamples from records of a TFDS preference dataset (`mlc_pku_saferlhf/dpo`)."""
  return [PreferenceExample(index=i, prompts={lang: r["prompt"][lang] for lang in langs}, chosen=r["chosen"],
                            rejected=r["rejected"], pair_language=PAIR_LANGUAGE) for i, r in enumerate(records)]


def _tfds_preference_builder(name: str, manual_dir: str | None, data_dir: str | None):
  from mlc_jax.data.tfds_builders import common

  if not name:
    raise ValueError("data.name: source 'tfds' needs a dataset name, e.g. 'mlc_pku_saferlhf/dpo'")
  builder = common.prepared_builder(name, manual_dir=manual_dir, data_dir=data_dir or None)
  features = builder.info.features
  if not {"prompt", "chosen", "rejected"} <= set(features.keys()):
    raise ValueError(f"data.name={name!r} has no chosen/rejected responses (features: {sorted(features.keys())}); "
                     "preference training reads 'mlc_pku_saferlhf/dpo'")
  return builder


def load_preferences(
    source: str,
    path: str | None,
    langs: str | Sequence[str],
    *,
    empty_responses: str = "error",
    name: str = "",
    manual_dir: str | None = None,
    data_dir: str | None = None,
) -> tuple[list[PreferenceExample], tuple[str, ...]]:
  """Reads a preference source (``data.source``) with its prompts in ``langs`` (``data.langs``).

  Args:
    source: one of ``SOURCES``.
    path: the data file (``data.path``), required for ``mlc_jsonl``, ignored otherwise.
    langs: a language set name, comma-separated codes or a list (see ``resolve_languages``); must be
      languages the source has and include the pair language ``"en"``.
    empty_responses: for ``mlc_jsonl``, see ``read_mlc_jsonl``.
    name, manual_dir, data_dir: for ``tfds``: the dataset (``data.name``, e.g. ``mlc_pku_saferlhf/dpo``),
      the folder it is prepared from and the TFDS data_dir (prepared on first use, then reused).

  Returns:
    ``(examples, languages)``: the examples and the resolved language codes in order.
  """
  builder = None
  if source == "builtin":
    available = LANGUAGE_SETS["builtin"]
  elif source == "tfds":
    builder = _tfds_preference_builder(name, manual_dir, data_dir)
    available = tuple(builder.info.features["prompt"].keys())
  elif source == "mlc_jsonl":
    if not path:
      raise ValueError("data.path: source 'mlc_jsonl' needs the path of a jsonl file")
    if not os.path.isfile(path):
      raise FileNotFoundError(f"data.path: {path!r} is not a file")
    available = mlc_jsonl_languages(path)
  else:
    raise ValueError(f"data.source: unknown source {source!r}; known sources: {list(SOURCES)}")
  languages = resolve_languages(langs, available=available, key="data.langs")
  _require_pair_language(languages, "data.langs")
  if source == "builtin":
    return read_builtin(languages), languages
  if source == "tfds":
    from mlc_jax.data.tfds_builders import common

    return read_tfds_records(common.read_split(builder, "train"), languages), languages
  return read_mlc_jsonl(path, languages, empty_responses=empty_responses), languages


def _mpo_side(index: int, side: dict) -> PreferenceExample:
  language = side["prompt_language"]
  return PreferenceExample(index=index, prompts={language: side["prompt"]}, chosen=side["chosen"],
                           rejected=side["rejected"], pair_language=language)


def load_mpo_pairs(name: str, langs: str | Sequence[str], *, manual_dir: str | None = None, data_dir: str | None = None
                   ) -> tuple[list[MpoExample], dict[str, int], dict[str, list[int]]]:
  """MPO examples from the TFDS dataset ``name`` (``mpo_pairs/llama|gemma|qwen``) whose target is in ``langs``.

  A pair whose target prompt is in its dominant prompt's language (an untranslated copy, as 22 Gemma pairs are)
  would pull a pair's reward gap onto its own: it is left out, and returned so that the caller can say so.

  Args:
    name: the dataset (``data.name``); prepared from ``manual_dir`` on first use.
    langs: the target languages to train on (``data.langs``; a set name such as ``mpo``, codes, or a list).
    manual_dir, data_dir: as for ``load_preferences``.

  Returns:
    ``(examples, dropped, untranslated)``: the examples; per target language the number left out because it is
    not in ``langs`` (``unknown`` for a target prompt whose language was not detected, e.g. an empty one); and
    per language the positions in the file (``index``) of the pairs left out because both sides are in it.

  Raises:
    ValueError: ``name`` is not an MPO dataset, or no example is left.
  """
  from mlc_jax.data.tfds_builders import common

  if not name.startswith(MPO_DATASET_PREFIX):
    raise ValueError(f"data.name={name!r}: MPO trains on an mpo_pairs dataset (mpo_pairs/llama, mpo_pairs/gemma "
                     "or mpo_pairs/qwen)")
  languages = resolve_languages(langs, available=LANGUAGE_SETS["mpo"], key="data.langs")
  builder = common.prepared_builder(name, manual_dir=manual_dir, data_dir=data_dir or None)
  examples, dropped, untranslated = [], {}, {}
  for record in common.read_split(builder, "train"):
    target_language = record["target"]["prompt_language"]
    if target_language not in languages:
      dropped[target_language] = dropped.get(target_language, 0) + 1
      continue
    if target_language == record["source"]["prompt_language"]:
      untranslated.setdefault(target_language, []).append(record["index"])
      continue
    index = len(examples)  # the position among the kept examples (what batches index cached values with)
    examples.append(MpoExample(index=index, dominant=_mpo_side(index, record["source"]),
                               target=_mpo_side(index, record["target"])))
  if not examples:
    raise ValueError(f"data.langs={list(languages)}: no pair of {name} has its target in these languages and "
                     f"in another language than its dominant side (targets found: {sorted(dropped)}; in the "
                     f"dominant language: {sorted(untranslated)})")
  return examples, dropped, untranslated

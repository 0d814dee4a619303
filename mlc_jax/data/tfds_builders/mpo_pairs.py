"""MPO's preference pairs: each pair in a dominant language (``source_*``) and in a target one (``target_*``).

``mpo/<config>_mpo_data.json`` (config ``llama``, ``gemma`` or ``qwen``) is a JSON array of objects with
``source_conversations`` / ``target_conversations`` (one-message sharegpt lists, role ``human``) and
``source_chosen`` / ``source_rejected`` / ``target_chosen`` / ``target_rejected`` (``{"from": "gpt", ...}``).
The files do not say which language a side is in, and it differs between files (the Qwen file's dominant
language is Chinese), so every text's language is detected (``mlc_jax.data.langdetect``) and stored; the build
log reports the dominant language and the per-language counts. The source prompt must be non-empty; an empty
target prompt (one in the Llama file) is kept, with language ``unknown``.
"""
from __future__ import annotations

import collections

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from mlc_jax.data.langdetect import detect_language
from mlc_jax.data.preferences import _message_text
from mlc_jax.data.tfds_builders import common

MODELS = ("llama", "gemma", "qwen")
SIDES = ("source", "target")
TEXTS = ("prompt", "chosen", "rejected")
FILE = "{config}_mpo_data.json"  # in the source folder
# The JSON field of each text, and its sharegpt role.
_FIELDS = {"prompt": ("conversations", "human"), "chosen": ("chosen", "gpt"), "rejected": ("rejected", "gpt")}


def _side(row: dict, side: str, place: str) -> dict[str, str]:
  """One side of a pair: its prompt, chosen and rejected texts and the detected language of each."""
  texts = {}
  for text, (field, role) in _FIELDS.items():
    key = f"{side}_{field}"
    if key not in row:
      raise ValueError(f"{place}: no field {key!r}; the object has {sorted(row)}")
    texts[text] = _message_text(row[key], role, key, place, as_list=text == "prompt")
  if side == "source":
    common.require_text(texts["prompt"], place, "source_conversations")
  return {**texts, **{f"{text}_language": detect_language(value) for text, value in texts.items()}}


class MpoPairs(common.SourceBuilder):
  """MPO pairs from ``<manual_dir>/mpo/<config>_mpo_data.json``; configs ``llama``, ``gemma``, ``qwen``."""

  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name=model, description=f"{model}_mpo_data.json (600 pairs).") for model in MODELS
  ]
  SOURCE_DIR = "mpo"

  def _info(self) -> tfds.core.DatasetInfo:
    side = {
        **{text: tfds.features.Text() for text in TEXTS},
        **{f"{text}_language": tfds.features.Text() for text in TEXTS},
    }
    return self._dataset_info(
        {"index": np.int32, "source": side, "target": side},
        description=(
            "MPO preference pairs: `source` in the dominant language, `target` in a target language; "
            "`*_language` is the detected language of each text; `index` is the position in the file."
        ),
        license="Apache-2.0",
    )

  def _generate_examples(self, source_dir):
    name = f"{self.name}/{self.builder_config.name}"
    path = self._source_file(source_dir, FILE.format(config=self.builder_config.name))
    prompts = {side: collections.Counter() for side in SIDES}  # prompt language -> pairs
    off = {side: collections.Counter() for side in SIDES}  # prompt language -> responses in another language
    for index, (line, row) in enumerate(common.read_json_array(path)):
      place = common.where(path, line)
      if not isinstance(row, dict):
        raise ValueError(f"{place}: expected a JSON object, got {type(row).__name__}")
      example = {"index": index, **{side: _side(row, side, place) for side in SIDES}}
      for side in SIDES:
        texts = example[side]
        language = texts["prompt_language"]
        prompts[side][language] += 1
        off[side][language] += (texts["chosen_language"] != language) + (texts["rejected_language"] != language)
        if not texts["prompt"].strip():
          logging.info("%s: %s: empty %s prompt, kept with language 'unknown'", name, place, side)
      yield index, example
    total = prompts["source"].total()
    if not total:
      raise ValueError(f"{path}: no pairs (the array is empty)")
    dominant, n = prompts["source"].most_common(1)[0]
    logging.info("%s: dominant (source) language %r in %d of %d pairs", name, dominant, n, total)
    for side in SIDES:
      common.log_counts(f"{name}: {side} prompts per language", prompts[side])
      common.log_counts(f"{name}: {side} responses in another language than their prompt", +off[side])

  @staticmethod
  def texts(example):
    for side in SIDES:
      for text in TEXTS:
        yield f"{side}.{text}", example[side][f"{text}_language"], example[side][text]

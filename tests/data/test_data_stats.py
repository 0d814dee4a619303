"""``python -m mlc_jax.data.stats``: per-language counts and token lengths, with the byte tokenizer."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from paths import SHARED_DATA
from mlc_jax.data import stats
from mlc_jax.data.languages import LANGUAGE_SETS
from mlc_jax.data.tokenizer import load_tokenizer


# The byte tokenizer's chat template renders a prompt as <|bos|><|user|>{prompt}<|assistant|>: its bytes + 3.
TEMPLATE_TOKENS = 3


def test_text_stats_counts_and_lengths():
  examples = [{"p": "ab", "r": "xyz"}, {"p": "", "r": "é"}, {"p": "abcd", "r": ""}]

  def texts(example):
    yield "prompt", "en", example["p"]
    yield "chosen", "en", example["r"]

  rows = stats.text_stats("train", examples, texts, load_tokenizer("byte"))
  assert [(r.field, r.count, r.empty, r.mean, r.max) for r in rows] == [
      ("prompt", 2, 1, 3 + TEMPLATE_TOKENS, 4 + TEMPLATE_TOKENS),  # prompts go through the chat template
      ("chosen", 2, 1, 2.5, 3),  # responses are bare bytes ("é" is 2)
  ]


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} is not there")
def test_cli_multijail_byte_tokenizer(tmp_path, capsys):
  stats.main(
      ["--dataset", "multijail", "--manual_dir", str(SHARED_DATA), "--data_dir", str(tmp_path), "--tokenizer", "byte"]
  )
  lines = capsys.readouterr().out.splitlines()
  assert lines[1].split() == ["split", "field", "language", "count", "empty", "mean", "median", "p95", "max"]
  table = {cells[2]: cells for cells in (line.split() for line in lines[2:])}
  assert sorted(table) == sorted(LANGUAGE_SETS["multijail"])
  with (SHARED_DATA / "multijail" / "MultiJail.csv").open(encoding="utf-8-sig", newline="") as f:
    rows = list(csv.DictReader(f))
  for lang in ("en", "sw", "bn"):
    lengths = np.array([len(row[lang].encode("utf-8")) + TEMPLATE_TOKENS for row in rows])
    assert table[lang] == [
        "test", "prompt", lang, "315", "0", f"{lengths.mean():.1f}", f"{np.median(lengths):.0f}",
        f"{np.percentile(lengths, 95):.0f}", str(lengths.max()),
    ]

"""Per-language example counts and token lengths of an mlc_jax TFDS dataset.

    python -m mlc_jax.data.stats --dataset mpo_pairs/qwen --tokenizer byte \\
        [--manual_dir ../shared/data] [--data_dir ~/tensorflow_datasets]

Builds the dataset (or reuses it when ``data_dir`` has it built from the same source files), then prints, per
split, one row per (field, language): the number of non-empty texts, the number of empty ones, and the
token-length mean, median, p95 and max. Prompts are measured as the model sees them, rendered with the
tokenizer's chat template up to the assistant header (``add_generation_prompt=True``); responses as their bare
tokens.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import sys
from collections.abc import Iterable, Sequence

import numpy as np

from mlc_jax import cli
from mlc_jax.data.tfds_builders import common
from mlc_jax.data.tokenizer import chat_prompts, load_tokenizer

DEFAULT_MANUAL_DIR = os.path.join("..", "shared", "data")


@dataclasses.dataclass(frozen=True)
class TextStats:
  """Counts and token lengths of the texts of one (split, field, language)."""

  split: str
  field: str
  language: str
  count: int
  empty: int
  mean: float
  median: float
  p95: float
  max: int


def token_lengths(tokenizer, texts: Sequence[str], *, prompts: bool) -> list[int]:
  """Token counts of ``texts``: prompts rendered with the chat template, responses as bare text."""
  if prompts:
    texts = chat_prompts(tokenizer, texts)
  return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def text_stats(split: str, examples: Iterable[dict], texts_fn, tokenizer) -> list[TextStats]:
  """Stats of every (field, language) of decoded ``examples``; ``texts_fn`` is the builder's ``texts``."""
  groups = collections.defaultdict(list)
  for example in examples:
    for field, language, text in texts_fn(example):
      groups[field, language].append(text)
  fields = list(dict.fromkeys(field for field, _ in groups))  # in the builder's order
  rows = []
  for field, language in sorted(groups, key=lambda key: (fields.index(key[0]), key[1])):
    texts = groups[field, language]
    present = [text for text in texts if text.strip()]
    lengths = token_lengths(tokenizer, present, prompts=field.endswith("prompt")) if present else [0]
    rows.append(
        TextStats(
            split=split,
            field=field,
            language=language,
            count=len(present),
            empty=len(texts) - len(present),
            mean=float(np.mean(lengths)),
            median=float(np.median(lengths)),
            p95=float(np.percentile(lengths, 95)),
            max=max(lengths),
        )
    )
  return rows


def dataset_stats(dataset: str, *, tokenizer, manual_dir: str, data_dir: str | None = None) -> list[TextStats]:
  """Builds (or reuses) ``dataset`` (``NAME`` or ``NAME/CONFIG``) and returns its per-language stats."""
  builder = common.prepared_builder(dataset, manual_dir=manual_dir, data_dir=data_dir)
  rows = []
  for split in builder.info.splits:
    rows += text_stats(split, common.read_split(builder, split), type(builder).texts, tokenizer)
  return rows


def format_table(rows: Sequence[TextStats]) -> str:
  """The stats as an aligned text table."""
  header = ("split", "field", "language", "count", "empty", "mean", "median", "p95", "max")
  cells = [header] + [
      (r.split, r.field, r.language, str(r.count), str(r.empty),
       f"{r.mean:.1f}", f"{r.median:.0f}", f"{r.p95:.0f}", str(r.max))
      for r in rows
  ]
  widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
  return "\n".join(
      "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
      for row in cells
  )


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m mlc_jax.data.stats", description=__doc__.split("\n")[0])
  parser.add_argument("--dataset", required=True, help="NAME or NAME/CONFIG, e.g. xsafety/aligned")
  parser.add_argument("--manual_dir", default=DEFAULT_MANUAL_DIR, help="folder with the source files")
  parser.add_argument("--data_dir", default=None, help="TFDS data_dir (default: TFDS's, ~/tensorflow_datasets)")
  parser.add_argument("--tokenizer", required=True, help="a local Hugging Face tokenizer folder, or 'byte'")
  args = parser.parse_args(argv)

  def body():
    tokenizer = load_tokenizer(args.tokenizer)
    rows = dataset_stats(args.dataset, tokenizer=tokenizer, manual_dir=args.manual_dir, data_dir=args.data_dir)
    print(f"{args.dataset} (tokenizer {args.tokenizer}; prompts with the chat template, responses bare)")
    print(format_table(rows))

  return cli.run(body)


if __name__ == "__main__":
  sys.exit(main())

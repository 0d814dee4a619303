"""How much of a step's computed positions are real tokens, on real preference data: padding, buckets, packing, TRL.

  python scripts/bench_padding.py [--dataset mlc_pku_saferlhf/dpo] [--batch 4] [--pack 1,2,4] [--json OUT]

Tokenises the dataset the way `configs/mlc.py` trains on it (chat template, prompt ≤ 256 and response ≤ 768
tokens; the byte tokenizer here, since no model's tokenizer is at hand offline: lengths are bytes, about 4× a BPE
tokenizer's), then runs the input pipeline over one epoch (shuffled, batch `--batch` pairs) and counts, per
layout, the positions the train step computes for the pair sequences (chosen and rejected; the MLC variants
aside) against the real tokens in them:

  fixed           every pair padded to prompt + response = 1024 (no buckets)
  buckets         `data.pair_buckets` 256, 512, 768, 1024: each batch cut to the shortest that holds it
  trl             TRL's DPOTrainer: chosen and rejected padded to the batch's longest (no fixed length)
  packed G        `data.pack_pairs=G`: each pair's prompt once, G pairs a row, rows padded to a multiple of 64

A real token is one the step needs: in the unpacked layouts each sequence's own (a pair's prompt
in both), in packed rows each distinct one (the prompt once). The last column sets the positions against a
padding-free unpacked step's (every sequence exactly as long as its tokens, the prompt twice): below 1× a layout
does less work than that. Nothing is timed: this is the work a layout asks for, the same on every device.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

BUCKETS = (256, 512, 768, 1024)


def load(dataset: str, manual_dir: str, data_dir: str):
  """The tokenized pairs of `dataset` as `configs/mlc.py` (tiny model, byte tokenizer) would train on them."""
  from mlc_jax.config import RunConfig, apply_overrides, load_config_file
  from mlc_jax.data.tokenizer import byte_tokenizer

  config = apply_overrides(load_config_file(os.path.join(ROOT, "configs", "mlc.py") + ":model=tiny,langs=mlc10"), [
      "data.source='tfds'", f"data.name='{dataset}'", f"data.manual_dir='{manual_dir}'", f"data.data_dir='{data_dir}'",
      "data.max_prompt_len=256", "data.max_response_len=768", "mlc.enabled=False"])
  run = RunConfig.parse(config)
  return run, run.objective.data_kind.load(run, byte_tokenizer())


def count(run, data, layout_name: str, batch: int, pack: int = 0) -> dict:
  """Computed positions, real and distinct tokens over one epoch of `batch`-pair batches in a layout."""
  from mlc_jax.data import packing, pipeline

  layout = None
  if pack:
    run = dataclasses.replace(run, data=dataclasses.replace(run.data, pack_pairs=pack))
    layout = run.objective.row_layout(run)
  data = dataclasses.replace(data, layout=layout)
  buckets = BUCKETS if layout_name in ("buckets", "packed") else ()
  it = pipeline.batch_iterator(data, batch, seed=0, pair_buckets=buckets)
  computed = real = distinct = 0
  for _ in range(len(data) // batch):
    b = next(it)
    if pack:
      computed += b["rows_segments"].size
      distinct += int((b["rows_segments"] > 0).sum())
      real += packing.real_tokens(b)
      continue
    chosen, rejected = b["chosen_mask"], b["rejected_mask"]
    pair_real = int(chosen.sum() + rejected.sum())
    prompt = int(((chosen == 1) & (b["chosen_loss_mask"] == 0)).sum())
    real += pair_real
    distinct += pair_real - prompt
    if layout_name == "trl":
      longest = int(max(chosen.sum(1).max(), rejected.sum(1).max()))
      computed += 2 * chosen.shape[0] * longest
    else:
      computed += chosen.size + rejected.size
  pairs = (len(data) // batch) * batch
  return {"layout": layout_name + (f" {pack}" if pack else ""), "pairs": pairs, "computed_per_pair": computed / pairs,
          "real_share": real / computed, "distinct_share": distinct / computed, "real_per_pair": real / pairs}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dataset", default="mlc_pku_saferlhf/dpo")
  parser.add_argument("--manual_dir", default=os.path.join(ROOT, "..", "shared", "data"))
  parser.add_argument("--data_dir", default="", help="TFDS data_dir (default: TFDS's)")
  parser.add_argument("--batch", type=int, default=4, help="pairs a batch (configs/mlc.py: 4 a step)")
  parser.add_argument("--pack", default="1,2,4", help="data.pack_pairs values to count")
  parser.add_argument("--json", default="")
  args = parser.parse_args()

  run, data = load(args.dataset, args.manual_dir, args.data_dir)
  print(f"{args.dataset}: {len(data)} pairs, byte tokens, pair length {data.chosen_ids.shape[1]}; truncated "
        f"{data.truncation}", flush=True)
  rows = [count(run, data, name, args.batch) for name in ("fixed", "buckets", "trl")]
  rows += [count(run, data, "packed", args.batch, int(g)) for g in args.pack.split(",") if g]
  unpacked = rows[0]["real_per_pair"]
  print(f"\n| layout | positions computed a pair | share of them that are real tokens | positions / a padding-free "
        f"unpacked step's ({unpacked:.0f} a pair) |")
  print("|---|---:|---:|---:|")
  for r in rows:
    share = r["distinct_share"] if r["layout"].startswith("packed") else r["real_share"]
    print(f"| {r['layout']} | {r['computed_per_pair']:.0f} | {100 * share:.1f} % | "
          f"{r['computed_per_pair'] / unpacked:.2f}× |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"dataset": args.dataset, "batch": args.batch, "rows": rows}, f, indent=1)


if __name__ == "__main__":
  main()

"""The main job: make a small model unsafe in five languages, align it with English pairs by DPO and by DPO+MLC,
judge it on held-out prompts per language, then export the DPO+MLC model and check it in transformers.

  python scripts/demo.py [--out runs/demo]

Built-in data only (the transfer experiment's `builtin` setting, docs/experiments/transfer.md): 42 mild harmful
requests and 40 benign ones in en zh ar bn sw, split by prompt id; the alignment sees English responses only, with
MLC's prompt variants in zh ar sw; Bengali stays unseen. Running it again reuses what is finished.
"""
import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def replies(eval_dir: str, lang: str) -> dict:
  """{prompt id: the generation record, with the judge's label} of one language of an evaluation."""
  with open(os.path.join(eval_dir, "generations.jsonl"), encoding="utf-8") as f:
    out = {r["id"]: r for r in map(json.loads, f) if r["lang"] == lang}
  with open(os.path.join(eval_dir, "verdicts.jsonl"), encoding="utf-8") as f:
    for v in map(json.loads, f):
      if v["lang"] == lang:
        out[v["id"]]["label"] = v["label"]
  return out


def check_export(workdir: str, prompt: str) -> float:
  """Exports `workdir`, reloads it in transformers (PyTorch) → the largest logit difference on `prompt`."""
  import jax.numpy as jnp
  import torch
  import transformers

  from mlc_jax.export_hf import export, restore_params
  export_dir = export(workdir, os.path.join(workdir, "hf_export"), overwrite=True)
  hf = transformers.AutoModelForCausalLM.from_pretrained(export_dir, dtype=torch.float32)
  tokenizer = transformers.AutoTokenizer.from_pretrained(export_dir)
  text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                       tokenize=False)
  ids = tokenizer(text, add_special_tokens=False, return_tensors="np")["input_ids"]
  with torch.no_grad():
    ref = hf(torch.tensor(ids)).logits.numpy()
  _, ours, _, _ = restore_params(workdir)
  return float(np.abs(np.asarray(ours(jnp.asarray(ids))) - ref).max())


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=os.path.join(ROOT, "runs", "demo"))
  args = parser.parse_args()

  from mlc_jax import host_malloc
  from mlc_jax.experiments import transfer
  try:
    host_malloc.keep_freed_memory()  # before jax's threads allocate
  except ValueError as e:
    parser.error(str(e))
  setting = transfer.SETTINGS["builtin"]
  summary = transfer.run(args.out, setting=setting, budget=transfer.BUDGETS["demo"], manual_dir="")
  out = os.path.abspath(args.out)

  by_model = {name: replies(os.path.join(out, "eval", run, "harmful"), "sw")
              for name, run in (("start (SFT)", "start"), ("DPO", "dpo-s0"), ("DPO+MLC", "dpo_mlc-s0"))}
  # a request the start complies with, preferably one DPO+MLC refuses
  complied = [i for i, r in by_model["start (SFT)"].items() if r["label"] != "safe"]
  pick = next((i for i in complied if by_model["DPO+MLC"][i]["label"] == "safe"), (complied or [*by_model["DPO"]])[0])
  before = by_model["start (SFT)"][pick]
  print(f"\nA held-out Swahili request: {before['prompt']!r}")
  for name, by_id in by_model.items():
    print(f"  {name:12s} [{by_id[pick]['label']:7s}] {by_id[pick]['response']!r}")

  print("\nexporting DPO+MLC to HF and reloading it in transformers (PyTorch)")
  diff = check_export(os.path.join(out, "dpo_mlc-s0"), before["prompt"])
  print(f"max |Δlogit| mlc_jax vs transformers: {diff:.2e}")
  r = summary["results"]
  print(f"\nmean safety over {len(setting.languages)} languages: start {100 * r['start']['mean_safety_rate']['mean']:.0f} %"
        f", DPO {100 * r['dpo']['mean_safety_rate']['mean']:.0f} %, DPO+MLC "
        f"{100 * r['dpo_mlc']['mean_safety_rate']['mean']:.0f} % (table: {out}/results.md, plot: "
        f"{out}/safety_by_language.png, export: {out}/dpo_mlc-s0/hf_export)")
  if diff > 1e-4:
    sys.exit("error: the exported model's logits differ from ours")


if __name__ == "__main__":
  main()

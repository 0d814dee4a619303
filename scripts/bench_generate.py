"""Greedy decoding throughput of `mlc_jax.generate` against transformers' `generate` (PyTorch, CPU), same weights.

The benchmark model of docs/benchmarks.md (Llama: 8 layers, hidden 512, MLP 1408, 8 heads, 8 kv heads, head_dim
64, vocab 32000; 58.5M parameters, fp32, random init) is written with `save_hf` and loaded by
`AutoModelForCausalLM.from_pretrained` in a worker process (its own OpenMP threads never spin against XLA's).
Both sides get the same random 64-token prompts (no padding) and generate 128 tokens greedily, no eos, at
batch 1 and 16. Rounds interleave the sides (ours b1, HF b1, ours b16, HF b16, …); tokens/s = batch × 128 /
wall time of one whole call (prefill included; ours includes the host → device copy, not the compile, which
happens in an untimed warm-up call). Medians over rounds; the CPU share used by other processes during each
timed call is printed, and the tokens of both sides are compared.

  .venv/bin/python scripts/bench_generate.py [--rounds 5] [--batches 1,16] [--new_tokens 128] [--json OUT]

`--ours_dtype bfloat16` runs our side on the same weights rounded to bf16 (parameters and compute), against
transformers in fp32: not the same setting (its tokens drift from fp32's), reported apart.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the benchmark model)
import bench_machine  # noqa: E402  (machine-load accounting)

PROMPT_LEN = 64


def worker(model_dir: str, prompts_file: str, new_tokens: int):
  """The transformers side: waits for `go B` lines, answers `BENCH {"seconds": …, "tokens": …}`."""
  import torch
  import transformers

  torch.set_num_threads(2)
  model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
  config = transformers.GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                                         pad_token_id=0)
  prompts = torch.tensor(np.load(prompts_file))
  print("BENCH " + json.dumps({"ready": torch.__version__, "transformers": transformers.__version__}), flush=True)
  for line in sys.stdin:
    ids = prompts[:int(line.split()[1])]
    start = time.perf_counter()
    with torch.no_grad():
      out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
    seconds = time.perf_counter() - start
    print("BENCH " + json.dumps({"seconds": seconds, "tokens": out[:, ids.shape[1]:].tolist()}), flush=True)


class HFWorker:
  def __init__(self, model_dir: str, prompts_file: str, new_tokens: int):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", model_dir, prompts_file, str(new_tokens)]
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    self.info = self._read()

  def _read(self) -> dict:
    for line in self.proc.stdout:
      if line.startswith("BENCH "):
        return json.loads(line[len("BENCH "):])
    raise RuntimeError(f"the transformers worker exited with {self.proc.wait()}")

  def run(self, batch: int) -> dict:
    self.proc.stdin.write(f"go {batch}\n")
    self.proc.stdin.flush()
    return self._read()

  def close(self):
    self.proc.stdin.close()
    self.proc.wait(timeout=60)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--batches", default="1,16")
  p.add_argument("--new_tokens", type=int, default=128)
  p.add_argument("--wait_idle", type=float, default=0.0, help="first wait up to S seconds for an idle machine")
  p.add_argument("--ours_dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--json", default=None)
  p.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.worker:
    return worker(args.worker[0], args.worker[1], int(args.worker[2]))

  import jax
  import jax.numpy as jnp
  from flax import nnx

  from mlc_jax.generate import generate
  from mlc_jax.models import init_model, save_hf

  batches = [int(b) for b in args.batches.split(",")]
  cfg = bench.model_config()
  model = init_model(cfg, seed=0)
  tmp = tempfile.mkdtemp(prefix="bench_generate-")
  save_hf(model, os.path.join(tmp, "hf"))
  if args.ours_dtype == "bfloat16":
    rounded = init_model(cfg, seed=0, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    nnx.update(rounded, jax.tree.map(lambda a: a.astype(jnp.bfloat16), nnx.state(model)))
    model = rounded
  prompts = np.random.default_rng(0).integers(3, cfg.vocab_size, (max(batches), PROMPT_LEN)).astype(np.int64)
  np.save(os.path.join(tmp, "prompts.npy"), prompts)
  hf = HFWorker(os.path.join(tmp, "hf"), os.path.join(tmp, "prompts.npy"), args.new_tokens)

  def ours(batch: int) -> dict:
    ids = prompts[:batch]
    start = time.perf_counter()
    out = jax.block_until_ready(generate(model, ids, np.ones_like(ids), max_new_tokens=args.new_tokens))
    return {"seconds": time.perf_counter() - start, "tokens": np.asarray(out.tokens).tolist()}

  for batch in batches:
    ours(batch)  # compile
  if args.wait_idle:
    print(f"machine busy share before the first round: {bench_machine.wait_until_idle(args.wait_idle):.0%}")
  pids = lambda: [os.getpid(), hf.proc.pid]
  results = {side: {b: [] for b in batches} for side in ("ours", "transformers")}
  for r in range(args.rounds):
    for batch in batches:
      for side, fn in (("ours", ours), ("transformers", hf.run)):
        with bench_machine.ForeignLoad(pids) as load:
          res = fn(batch)
        res["foreign_share"] = load.result["foreign_share"]
        results[side][batch].append(res)
        print(f"round {r + 1} {side:12s} b={batch:2d}: {batch * args.new_tokens / res['seconds']:8.1f} tokens/s "
              f"({res['seconds']:.2f} s; other processes {load.result['foreign_share']:.0%} of the CPU)", flush=True)
  hf.close()

  print(f"\n{bench_machine.cpu_model()}, {os.cpu_count()} cores; jax {jax.__version__}, torch {hf.info['ready']}, "
        f"transformers {hf.info['transformers']}; ours in {args.ours_dtype}; {args.rounds} rounds, median")
  print("| batch | ours tokens/s | transformers tokens/s | ours / transformers | same tokens (rows) |")
  print("|---:|---:|---:|---:|---:|")
  summary = {}
  for batch in batches:
    rate = {side: bench.median([batch * args.new_tokens / x["seconds"] for x in results[side][batch]])
            for side in results}
    same = np.mean([a == b for a, b in zip(results["ours"][batch][0]["tokens"],
                                           results["transformers"][batch][0]["tokens"])])
    summary[batch] = dict(ours=rate["ours"], transformers=rate["transformers"], same_rows=float(same))
    ratio = rate["ours"] / rate["transformers"]
    print(f"| {batch} | {rate['ours']:.1f} | {rate['transformers']:.1f} | **{ratio:.2f}×** | {same:.0%} |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"summary": summary, "rounds": results, "machine": bench_machine.cpu_model()}, f)


if __name__ == "__main__":
  main()

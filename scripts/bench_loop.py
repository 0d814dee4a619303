"""The training loop's own cost: step time of one training command from two source trees, interleaved.

  python scripts/bench_loop.py --trees /path/to/old/checkout . [--config configs/demo.py] [--steps 10 50] [--rounds 3]

Runs `python -m mlc_jax.train --config CONFIG` (plus `--override`s) for each tree in turn (PYTHONPATH=tree, a fresh
workdir each run) at two step counts, `--rounds` times. A step's time is the difference of the two commands' wall
times over the difference of their steps, so start-up, compilation and the final checkpoint cancel and every cost
of the loop between steps counts, whatever the tree logs; where the tree logs `host_batch_s` (how long the loop
waited for its next batch) its median is shown too. With the same config and data, a difference is the loop's:
e.g. a synchronous loop (every step waits for its metrics, then prepares the next batch) against the
asynchronous one.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_once(tree: str, config: str, steps: int, overrides: list[str], workdir: str) -> dict:
  """Wall seconds of one training command, and the median `host_batch_s` of its records (None when not logged)."""
  env = {**os.environ, "PYTHONPATH": os.path.abspath(tree), "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
  command = [sys.executable, "-m", "mlc_jax.train", "--config", config, "--workdir", workdir,
             f"--config.train.steps={steps}", "--config.train.log_every=1", f"--config.checkpoint.every={steps}",
             *(f"--config.{o}" for o in overrides)]
  start = time.perf_counter()
  done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=os.path.abspath(tree))  # (-m: the cwd first)
  wall = time.perf_counter() - start
  if done.returncode:
    sys.exit(f"error: {' '.join(command)} (tree {tree}) exited {done.returncode}:\n{done.stderr[-2000:]}")
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))][1:]
  waits = [r["host_batch_s"] for r in records if "host_batch_s" in r]
  return {"wall_s": wall, "host_batch_s": statistics.median(waits) if waits else None}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--trees", nargs=2, required=True, metavar=("BASELINE", "CANDIDATE"),
                      help="two source trees (checkouts) holding mlc_jax/")
  parser.add_argument("--config", default=os.path.join(ROOT, "configs", "demo.py"))
  parser.add_argument("--steps", type=int, nargs=2, default=(10, 50), metavar=("SHORT", "LONG"))
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--override", action="append", default=[], help="KEY=VALUE, passed as --config.KEY=VALUE")
  parser.add_argument("--json", default=None)
  args = parser.parse_args()
  short, long = args.steps
  if not 0 < short < long:
    sys.exit(f"error: --steps {short} {long}: need 0 < SHORT < LONG")
  for tree in args.trees:
    if not os.path.isdir(os.path.join(tree, "mlc_jax")):
      sys.exit(f"error: --trees: {tree!r} holds no mlc_jax/ package")

  results = {tree: [] for tree in args.trees}
  with tempfile.TemporaryDirectory(prefix="bench_loop-") as tmp:
    for r in range(args.rounds):
      for i, tree in enumerate(args.trees):
        runs = [run_once(tree, args.config, n, args.override, os.path.join(tmp, f"r{r}-t{i}-{n}")) for n in (short, long)]
        out = {"step_s": (runs[1]["wall_s"] - runs[0]["wall_s"]) / (long - short),
               "wall_s": [x["wall_s"] for x in runs], "host_batch_s": runs[1]["host_batch_s"]}
        results[tree].append(out)
        wait = "" if out["host_batch_s"] is None else f"; waited {1e3 * out['host_batch_s']:.2f} ms for a batch"
        print(f"round {r + 1} {tree}: {1e3 * out['step_s']:.1f} ms a step (commands {runs[0]['wall_s']:.1f} s, "
              f"{runs[1]['wall_s']:.1f} s){wait}", flush=True)
  print(f"\n| tree | ms a step (median of {args.rounds} rounds) | per round | wait for a batch (ms) |")
  print("|---|---:|---|---:|")
  for tree, outs in results.items():
    waits = [o["host_batch_s"] for o in outs if o["host_batch_s"] is not None]
    wait = f"{1e3 * statistics.median(waits):.2f}" if waits else "—"
    print(f"| {tree} | {1e3 * statistics.median(o['step_s'] for o in outs):.1f} | "
          f"{' '.join(format(1e3 * o['step_s'], '.1f') for o in outs)} | {wait} |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"config": args.config, "steps": [short, long], "overrides": args.override, "results": results}, f,
                indent=1)


if __name__ == "__main__":
  main()

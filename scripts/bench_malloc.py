"""Our train step with and without `mlc_jax.host_malloc` (glibc's defaults: `MLC_JAX_HOST_MALLOC=system`).

  python scripts/bench_malloc.py [--setting dpo] [--rounds 3] [--steps 3] [--json runs/bench_malloc_ab.json]

malloc's settings are process-wide, so each variant is its own `scripts/bench.py --skip_trl --rounds 1` process
(the 58.5M Llama, 4 pairs × 256 tokens, fp32), the two alternating round by round so that the machine's drift hits
both. Prints every round's median step, the medians over all timed steps of each variant and their ratio, with the
page faults of each timed step and the peak RSS of each process (the settings keep freed memory, so memory is part of
the comparison).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_TIMEOUT_S = 1800  # one bench.py process takes 1-3 minutes on 2 cores
VARIANTS = {"tuned": {}, "glibc defaults": {"MLC_JAX_HOST_MALLOC": "system"}}


def run_once(setting: str, steps: int, warmup: int, env: dict, workdir: str) -> dict:
  """One bench.py process → {'times': [s, …], 'page_faults': [minor faults of each timed step], 'max_rss_gib': its
  peak RSS, 'peak_flops': its measured peak}."""
  out = os.path.join(workdir, "run.json")
  cmd = [sys.executable, os.path.join(ROOT, "scripts", "bench.py"), "--skip_trl", "--setting", setting,
         "--rounds", "1", "--steps", str(steps), "--warmup", str(warmup), "--json", out, "--workdir", workdir]
  try:
    proc = subprocess.run(cmd, env={**os.environ, "JAX_PLATFORMS": "cpu", **env}, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)
  except subprocess.TimeoutExpired:
    sys.exit(f"error: {' '.join(cmd)} ran over {RUN_TIMEOUT_S} s")
  if proc.returncode != 0:
    sys.exit(f"error: {' '.join(cmd)} exited with {proc.returncode}:\n{proc.stderr[-3000:]}")
  with open(out) as f:
    result = json.load(f)
  timed = result["rounds"][f"ours/{setting}"][0]
  return {"times": timed["times"], "page_faults": timed["page_faults"], "max_rss_gib": result["max_rss_gib"],
          "peak_flops": result["peak_flops"]}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--setting", choices=("dpo", "mlc"), default="dpo")
  p.add_argument("--rounds", type=int, default=3, help="rounds, each one process per variant")
  p.add_argument("--steps", type=int, default=3, help="timed steps per process")
  p.add_argument("--warmup", type=int, default=3, help="untimed steps per process (the first compiles)")
  p.add_argument("--json", default="", help="write every step time here")
  args = p.parse_args()
  if min(args.rounds, args.steps, args.warmup) < 1:
    p.error(f"--rounds {args.rounds}, --steps {args.steps} and --warmup {args.warmup} must be >= 1")

  runs = {name: [] for name in VARIANTS}
  with tempfile.TemporaryDirectory(prefix="mlc_jax_bench_malloc_") as workdir:
    for r in range(args.rounds):
      for name, env in VARIANTS.items():
        run = run_once(args.setting, args.steps, args.warmup, env, workdir)
        runs[name].append(run)
        print(f"[bench_malloc] round {r + 1}/{args.rounds} {name}: median step "
              f"{statistics.median(run['times']):.3f}s, {statistics.median(run['page_faults']):.0f} page faults a step, "
              f"peak RSS {run['max_rss_gib']:.2f} GiB", flush=True)
  medians = {name: statistics.median([t for run in rs for t in run["times"]]) for name, rs in runs.items()}
  print(f"\n{args.setting} step, median of {args.rounds * args.steps} per variant: "
        + ", ".join(f"{name} {m:.3f}s" for name, m in medians.items())
        + f"; glibc defaults / tuned = {medians['glibc defaults'] / medians['tuned']:.2f}x")
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
      json.dump({"command": " ".join(["python", *sys.argv]), "medians": medians, "runs": runs}, f, indent=1)
    print(f"[bench_malloc] wrote {args.json}")


if __name__ == "__main__":
  main()

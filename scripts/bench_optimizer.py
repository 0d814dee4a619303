"""The optimizer update alone: our `make_optimizer` against optax's own clipping, on the bench model's parameters.

  python scripts/bench_optimizer.py [--rounds 5] [--steps 10]

One jitted update (clip to the global norm, AdamW, `optax.apply_updates`, the logged gradient norm; the parameters
and the optimizer state donated, as in the train step) over the parameter tree of `scripts/bench.py`'s 58.5M Llama,
built two ways: with `optax.clip_by_global_norm` and with ours (`mlc_jax.train.state.clip_by_global_norm`, the same
values as one multiply). The two alternate round by round; the median and fastest update of each are printed, and
the largest difference of the updated parameters.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def make_update(clip, optim):
  """`update(params, opt_state, grads) → (params, opt_state, grad_norm)` with `clip(max_norm)` before AdamW."""
  import jax
  import optax

  from mlc_jax.train.state import make_optimizer
  optimizer = make_optimizer(optim, 10_000, clip=clip)

  def update(params, opt_state, grads):
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, optax.tree.norm(grads)

  return optimizer, jax.jit(update, donate_argnums=(0, 1))


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--rounds", type=int, default=5, help="rounds, each timing both variants")
  p.add_argument("--steps", type=int, default=10, help="timed updates per variant per round")
  args = p.parse_args()
  if args.rounds < 1 or args.steps < 1:
    p.error(f"--rounds {args.rounds} and --steps {args.steps} must be >= 1")

  import jax
  import optax
  from flax import nnx

  import bench
  from mlc_jax.models import init_model
  from mlc_jax.train import state as state_lib

  optim = bench.run_config(False, bench.Shape(), 1e-5).optim
  params = nnx.to_pure_dict(nnx.state(init_model(bench.model_config()), nnx.Param))
  grads = jax.tree.map(lambda x, k: 1e-3 * jax.random.normal(k, x.shape, x.dtype), params,
                       jax.tree.unflatten(jax.tree.structure(params),
                                          jax.random.split(jax.random.PRNGKey(0), len(jax.tree.leaves(params)))))
  count = sum(x.size for x in jax.tree.leaves(params))
  print(f"[bench_optimizer] {count / 1e6:.1f}M parameters in {len(jax.tree.leaves(params))} arrays; "
        f"clip_norm {optim.clip_norm}, gradient norm {float(optax.tree.norm(grads)):.3f}", flush=True)

  variants = {"optax.clip_by_global_norm": optax.clip_by_global_norm, "ours": state_lib.clip_by_global_norm}
  runs, times, first = {}, {name: [] for name in variants}, {}
  for name, clip in variants.items():
    optimizer, update = make_update(clip, optim)
    state = (jax.tree.map(jax.numpy.copy, params), optimizer.init(params))
    first[name] = jax.tree.map(np.asarray, update(jax.tree.map(jax.numpy.copy, params), optimizer.init(params),
                                                  grads)[0])
    runs[name] = [update, state]
  for r in range(args.rounds):
    for name, (update, (p_, s_)) in runs.items():
      for _ in range(args.steps):
        t0 = time.perf_counter()
        p_, s_, norm = update(p_, s_, grads)
        jax.block_until_ready((p_, s_, norm))
        times[name].append(time.perf_counter() - t0)
      runs[name][1] = (p_, s_)
    print(f"[bench_optimizer] round {r + 1}: "
          + ", ".join(f"{n} {np.median(t[-args.steps:]):.3f} s" for n, t in times.items()), flush=True)
  diff = max(float(np.max(np.abs(a - b))) for a, b in zip(*(jax.tree.leaves(f) for f in first.values())))
  print("| clipping | median | fastest |\n|---|---:|---:|")
  for name, t in times.items():
    print(f"| {name} | {np.median(t):.3f} s | {min(t):.3f} s |")
  print(f"max |Δ parameter| after one update: {diff:.2e}")


if __name__ == "__main__":
  main()

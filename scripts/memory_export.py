"""Peak host memory of export and resume against the parameter bytes, this code against the old recipe, in one run.

  .venv/bin/python scripts/memory_export.py [--hidden 1024 --layers 12] [--workdir runs/memory_export]

Builds a fine-tuning run of a Llama-architecture model of a few hundred M parameters (an HF checkpoint written with
`save_hf` as `model.hf_path`, fp32 weights and fp32 AdamW, so the train state is 3 × the parameter bytes) and saves
its train state as a checkpoint. Then each phase runs in a fresh process and reports its peak RSS (`getrusage`)
minus the RSS of the same process after its imports and JAX start-up (the baseline, which no model changes):
  export      `mlc_jax.export_hf.export` (partial restore of the parameters only, shards written one by one)
  export_old  the recipe before the abstract state: a fully initialised train state as the restore template, the
              whole state restored into it, then the same HF writer
  resume      `checkpointing.restore` into the abstract train state (what a resumed run holds before its step)
  resume_old  the initial state built first, then the checkpoint restored beside it
The results and the command are in docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASES = ("export", "export_old", "resume", "resume_old")


def rss_bytes() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build(workdir: str, hidden: int, layers: int):
  """`workdir/base` (the HF model the run starts from), `workdir/config.json` and a step-1 checkpoint."""
  import jax

  from mlc_jax.config import RunConfig, apply_overrides, base_config, to_json
  from mlc_jax.models import get_preset, init_model, save_hf
  from mlc_jax.parallel.mesh import make_mesh
  from mlc_jax.train import checkpointing, state as state_lib

  model_cfg = get_preset("tiny", vocab_size=32000, hidden_size=hidden, intermediate_size=hidden * 11 // 4,
                         num_layers=layers, num_heads=hidden // 64, num_kv_heads=hidden // 64, head_dim=64)
  save_hf(init_model(model_cfg), os.path.join(workdir, "base"))
  config = apply_overrides(base_config(), [f"model.hf_path={os.path.join(workdir, 'base')}", "objective.name=sft",
                                           "mlc.enabled=False", "mesh.shape=(1,1,1)"])
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(to_json(config))
  run = RunConfig.parse(config)
  spec = state_lib.abstract_train_state(run, run.architecture(), make_mesh((1, 1, 1), jax.devices()[:1]))
  mngr = checkpointing.manager(workdir, keep=1, every=1, async_save=False)
  checkpointing.save(mngr, 1, state_lib.init_train_state(spec, run), {"note": "memory benchmark"}, force=True)
  mngr.wait_until_finished()
  mngr.close()


def measure(name: str, workdir: str) -> dict:
  """Runs one phase in this process and returns its memory figures."""
  import jax

  from mlc_jax import export_hf
  from mlc_jax.models import save_hf
  from mlc_jax.parallel.mesh import make_mesh
  from mlc_jax.train import checkpointing, state as state_lib

  run = export_hf.load_run_config(workdir)
  model_cfg = run.architecture()
  mesh = make_mesh((1, 1, 1), jax.devices()[:1])
  jax.numpy.zeros(1).block_until_ready()  # the backend is up: part of the baseline
  baseline = rss_bytes()
  out = os.path.join(workdir, f"hf_{name}")
  if name == "export":
    export_hf.export(workdir, out, overwrite=True)
  else:
    spec = state_lib.abstract_train_state(run, model_cfg, mesh)
    mngr = checkpointing.manager(workdir, keep=1, every=1, async_save=False)
    if name == "export_old":
      template = state_lib.init_train_state(spec, run)
      restored, _ = checkpointing.restore(mngr, 1, jax.tree.map(
          lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), template))
      save_hf(spec.policy_def.merge_model(restored.params["model"]), out, overwrite=True)
    elif name == "resume":
      jax.block_until_ready(checkpointing.restore(mngr, 1, spec.abstract)[0])
    else:  # resume_old
      initial = state_lib.init_train_state(spec, run)
      jax.block_until_ready((initial, checkpointing.restore(mngr, 1, spec.abstract)[0]))
    mngr.close()
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  return {"phase": name, "baseline_rss": baseline, "peak_rss": peak, "peak_above_baseline": peak - baseline,
          "param_bytes": model_cfg.num_params() * 4, "num_params": model_cfg.num_params()}


def _self(*args) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, os.path.abspath(__file__), *map(str, args)], check=True, capture_output=True,
                        text=True)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--hidden", type=int, default=1024)
  p.add_argument("--layers", type=int, default=12)
  p.add_argument("--workdir", default=os.path.join(ROOT, "runs", "memory_export"))
  p.add_argument("--json", default="", help="also write the results here")
  p.add_argument("--phase", choices=("build", *PHASES), help=argparse.SUPPRESS)  # one phase in this process
  args = p.parse_args()
  if args.phase == "build":
    return build(args.workdir, args.hidden, args.layers)
  if args.phase:
    return print("RESULT " + json.dumps(measure(args.phase, args.workdir)))
  shutil.rmtree(args.workdir, ignore_errors=True)
  os.makedirs(args.workdir)
  print(f"building a checkpoint in {args.workdir} (hidden {args.hidden}, {args.layers} layers)", flush=True)
  _self("--phase", "build", "--workdir", args.workdir, "--hidden", args.hidden, "--layers", args.layers)
  gib = lambda b: b / 2**30
  rows = []
  for name in PHASES:
    out = _self("--phase", name, "--workdir", args.workdir).stdout
    row = json.loads(next(line[len("RESULT "):] for line in out.splitlines() if line.startswith("RESULT ")))
    rows.append(row)
    print(f"{name:11s} peak RSS {gib(row['peak_rss']):5.2f} GiB = baseline {gib(row['baseline_rss']):4.2f} + "
          f"{gib(row['peak_above_baseline']):4.2f} GiB = {row['peak_above_baseline'] / row['param_bytes']:.2f} × the "
          f"{gib(row['param_bytes']):.2f} GiB of parameters ({row['num_params'] / 1e6:.0f}M)", flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()

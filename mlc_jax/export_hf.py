"""Exports a training run's checkpoint as a Hugging Face model directory, plus the MLC extractor beside it.

  python -m mlc_jax.export_hf --workdir DIR [--step N] --out OUT [--dtype bfloat16] [--overwrite]

DIR is the training workdir, a local path or a URL (gs://bucket/run); OUT is a local directory.

OUT gets what `save_hf` writes (config.json, safetensors, tokenizer) and, when the run trained an MLC
extractor, `mlc_extractor.safetensors` (kernel [hidden, dim], bias [dim]) with `mlc_extractor.json`
(representation layer, τ, normalisation) — not part of the HF model, so transformers ignores it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import NamedTuple

import jax
import numpy as np
from etils import epath
from safetensors.numpy import save_file

from mlc_jax import cli
from mlc_jax.models.config import DTYPES

EXTRACTOR_FILE = "mlc_extractor.safetensors"
EXTRACTOR_META = "mlc_extractor.json"


class RestoredRun(NamedTuple):
  """A training run's parameters at one checkpoint step (no optimizer state)."""

  run: object  # the run's RunConfig (sections: .model, .mlc, .tokenizer, …)
  model: object  # the Decoder with the checkpoint's weights
  extractor: dict | None  # the MLC extractor's parameters {'kernel', 'bias'}, or None
  step: int


def load_run_config(workdir: str):
  """The RunConfig of the run in `workdir` (a local path or a URL; from its config.json)."""
  import ml_collections

  from mlc_jax.config import RunConfig

  from mlc_jax.train.workdir import CONFIG_FILE, read_config

  saved = read_config(workdir)
  if saved is None:
    raise FileNotFoundError(f"{epath.Path(workdir) / CONFIG_FILE} is missing: {workdir!r} is not a training workdir")
  return RunConfig.parse(ml_collections.ConfigDict(saved))


def restore_params(workdir: str, step: int | None = None, *, mesh=None, to_host: bool = False) -> RestoredRun:
  """The parameters of a run's checkpoint at `step` (default: the latest), restored onto `mesh`.

  Only the parameters are read (an Orbax partial restore into the abstract train state): no optimizer state, no
  reference copy and no initial model is ever built, so a host needs the parameters' memory once. The default mesh
  shards them over every local device along `fsdp`; `to_host` gives host NumPy arrays instead (for writing files).
  """
  from mlc_jax.config import ConfigError
  from mlc_jax.parallel.mesh import make_mesh
  from mlc_jax.train import checkpointing
  from mlc_jax.train.state import abstract_train_state

  run = load_run_config(workdir)
  if run.model.hf_path and not os.path.isdir(run.model.hf_path):
    raise ConfigError(f"model.hf_path={run.model.hf_path!r} (the run's starting point, which holds its architecture "
                      "and tokenizer) is gone")
  mngr = checkpointing.manager(workdir, keep=run.checkpoint.keep, every=1, async_save=False)
  try:
    steps = mngr.all_steps()
    if not steps:
      raise FileNotFoundError(f"{workdir}/checkpoints holds no complete checkpoint")
    step = max(steps) if step is None else step
    if step not in steps:
      raise ValueError(f"--step {step}: no checkpoint at that step; available: {sorted(steps)}")
    mesh = make_mesh((1, -1, 1), devices=jax.local_devices()) if mesh is None else mesh
    spec = abstract_train_state(run, run.architecture(), mesh)
    params = checkpointing.restore_params(mngr, step, spec.abstract.params, to_host=to_host)
  finally:
    mngr.close()
  return RestoredRun(run, spec.policy_def.merge_model(params["model"]), params.get("extractor"), step)


def export(workdir: str, out: str, *, step: int | None = None, dtype=None, overwrite: bool = False) -> str:
  from mlc_jax.data.tokenizer import load_tokenizer
  from mlc_jax.models import save_hf
  from mlc_jax.models.hf_io import check_output_dir

  from mlc_jax.train.workdir import is_remote

  if is_remote(out):
    raise ValueError(f"--out {out!r}: the export is written to a local directory (copy it to a bucket afterwards)")
  run = load_run_config(workdir)
  sources = {"starting model": run.model.hf_path} if run.model.hf_path else {}
  protected = {}
  if not is_remote(workdir):  # (a local --out cannot lie inside a URL workdir)
    sources["training workdir"] = workdir
    protected = {what: os.path.join(workdir, name) for what, name in (("checkpoints", "checkpoints"), (
        "reference cache", "reference"), ("TensorBoard logs", "tensorboard"))}
  check_output_dir(out, overwrite=overwrite, sources=sources, protected=protected)
  run, model, extractor, step = restore_params(workdir, step, to_host=True)
  tokenizer = load_tokenizer(run.tokenizer or run.model.hf_path or None)
  save_hf(model, out, tokenizer=tokenizer, dtype=dtype, overwrite=overwrite)
  if extractor is not None:
    save_file({k: np.asarray(extractor[k], np.float32) for k in ("kernel", "bias")}, os.path.join(out, EXTRACTOR_FILE))
    with open(os.path.join(out, EXTRACTOR_META), "w") as f:
      json.dump({**run.mlc.metadata(model.cfg), "step": step}, f, indent=2)
  print(f"exported step {step} of {workdir} to {out}")
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m mlc_jax.export_hf", description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
  parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="dtype on disk (default: the run's)")
  parser.add_argument("--overwrite", action="store_true")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)

  def body():
    export(args.workdir, args.out, step=args.step, dtype=DTYPES[args.dtype] if args.dtype else None,
           overwrite=args.overwrite)

  return cli.run(body)


if __name__ == "__main__":
  sys.exit(main())

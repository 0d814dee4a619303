"""Exports a training run's checkpoint as a Hugging Face model directory, plus the MLC extractor beside it.

  python -m mlc_jax.export_hf --workdir DIR [--step N] --out OUT [--dtype bfloat16] [--overwrite]

DIR is the training workdir, a local path or a URL (gs://bucket/run); OUT is a local directory.

OUT gets what `save_hf` writes (config.json, safetensors, tokenizer) and, when the run trained an MLC
extractor, `mlc_extractor.safetensors` (kernel [hidden, dim], bias [dim]) with `mlc_extractor.json`
(representation layer, τ, normalisation) — not part of the HF model, so transformers ignores it. All of OUT is built
in a folder beside it and swapped in by renames: the previous export stays whole until then (Ctrl-C, a kill or a
full disk leaves it as it was), and a second export to OUT while one runs is refused.
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
from mlc_jax.models.out_dir import DiskFull

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

  from mlc_jax.config import ConfigError, RunConfig

  from mlc_jax.train.workdir import CONFIG_FILE, read_config

  saved = read_config(workdir)
  if saved is None:
    raise FileNotFoundError(f"{epath.Path(workdir) / CONFIG_FILE} is missing: {workdir!r} is not a training workdir")
  path = epath.Path(workdir) / CONFIG_FILE
  if "model_type" in saved or "architectures" in saved:
    raise ConfigError(f"{path} is a Hugging Face model's config: {workdir!r} is a model directory, not a training "
                      "workdir (give the workdir the run was trained in)")
  try:
    return RunConfig.parse(ml_collections.ConfigDict(saved))
  except ConfigError as e:
    raise ConfigError(f"{path} is not the config of an mlc_jax training run: {str(e)[:300]}") from None


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
  """Writes step `step` (default: the latest) of the run in `workdir` to `out` (see the module docstring).

  Refuses, before anything is written: a tokenizer with more tokens than the model has embedding rows, a NaN or inf
  in any parameter (naming it and the step), an `out` that would lose data or that another export is writing.
  """
  from mlc_jax.data.tokenizer import check_fits_vocab, load_tokenizer
  from mlc_jax.models.hf_io import check_finite, export_about, hf_bytes, param_arrays, write_hf
  from mlc_jax.models.out_dir import check_output_dir, staged
  from mlc_jax.train.workdir import check_usable, is_remote

  if is_remote(out):
    raise ValueError(f"--out {out!r}: the export is written to a local directory (copy it to a bucket afterwards)")
  if is_remote(workdir):
    check_usable(workdir)  # a URL that cannot be reached (no gcsfs, no credentials) is named
  run = load_run_config(workdir)
  sources = {"starting model": run.model.hf_path} if run.model.hf_path else {}
  protected = {}
  if not is_remote(workdir):  # (a local --out cannot lie inside a URL workdir)
    sources["training workdir"] = workdir
    protected = {what: os.path.join(workdir, name) for what, name in (("checkpoints", "checkpoints"), (
        "reference cache", "reference"), ("TensorBoard logs", "tensorboard"))}
  check_output_dir(out, overwrite=overwrite, sources=sources, protected=protected)
  tokenizer_path = run.tokenizer or run.model.hf_path or "byte"
  tokenizer = load_tokenizer(tokenizer_path)
  run, model, extractor, step = restore_params(workdir, step, to_host=True)
  check_fits_vocab(tokenizer, model.cfg.vocab_size, tokenizer_source=f"{tokenizer_path!r} (the run's tokenizer)",
                   model_source=f"at step {step} of {workdir}")
  extractor = {k: np.asarray(extractor[k], np.float32) for k in ("kernel", "bias")} if extractor is not None else None
  check_finite({**param_arrays(model), **{f"extractor/{k}": v for k, v in (extractor or {}).items()}},
               f"the checkpoint at step {step} of {workdir}: parameter")
  about = export_about(model, workdir=str(workdir), step=step)
  with staged(out, overwrite=overwrite, needed_bytes=hf_bytes(model, dtype), about=about) as folder:
    write_hf(model, folder, tokenizer, dtype=dtype)
    if extractor is not None:
      save_file(extractor, os.path.join(folder, EXTRACTOR_FILE))
      with open(os.path.join(folder, EXTRACTOR_META), "w") as f:
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

  return cli.run(body, {DiskFull: 1, cli.BAD_INPUT: 2})


if __name__ == "__main__":
  sys.exit(main())

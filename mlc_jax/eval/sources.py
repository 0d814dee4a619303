"""The model an evaluation, a generation or a diagnostic reads: an HF directory (``--model``) or a training run's
checkpoint (``--workdir``), with the tokenizer paired with it.

``load_source`` checks what it is given before reading it: a ``--model`` that is not a local directory or has no
tokenizer, a ``--workdir`` URL whose store cannot be reached (``mlc_jax.train.workdir.check_usable`` names the
missing backend, e.g. gcsfs) or that is no directory, and a tokenizer that can produce ids the model's embedding
has no row for (``mlc_jax.data.tokenizer.check_fits_vocab``) are each a ``SourceError`` naming the path.
"""
from __future__ import annotations

import os
from typing import NamedTuple


class SourceError(ValueError):
  """A model or workdir that cannot be read as given; the message names the flag and the path."""


class Source(NamedTuple):
  model: object
  tokenizer: object
  run: object | None  # the training run's RunConfig (--workdir), else None
  step: int | None  # the checkpoint step (--workdir), else None


def check_directory(flag: str, path: str) -> None:
  """Raises SourceError unless `path` is a directory `flag` can be read from (a URL only for --workdir)."""
  from etils import epath

  from mlc_jax.train import workdir as workdir_lib

  if workdir_lib.is_remote(path):
    if flag != "--workdir":
      raise SourceError(f"{flag} {path!r}: give a local directory (copy the model from the bucket first)")
    try:
      workdir_lib.check_usable(path)
    except workdir_lib.WorkdirError as e:
      raise SourceError(str(e)) from None
    if not epath.Path(path).is_dir():
      raise SourceError(f"{flag} {path!r}: no such directory")
  elif not os.path.isdir(path):
    raise SourceError(f"{flag} {path}: no such directory")


def load_source(*, model_dir: str | None = None, workdir: str | None = None, step: int | None = None,
                tokenizer: str | None = None, model_flag: str = "--model", workdir_flag: str = "--workdir") -> Source:
  """The model of `model_dir` (an HF directory) or of `workdir`'s checkpoint at `step` (default: the latest), and
  its tokenizer: `tokenizer` (a directory or 'byte') when given, else the model directory's own or the run's."""
  from mlc_jax.data.tokenizer import check_fits_vocab, load_tokenizer

  if model_dir is not None:
    check_directory(model_flag, model_dir)
    if tokenizer is None and not os.path.isfile(os.path.join(model_dir, "tokenizer_config.json")):
      raise SourceError(f"{model_flag} {model_dir}: no tokenizer there (tokenizer_config.json is missing); export "
                        "models with their tokenizer (python -m mlc_jax.export_hf does)")
    from mlc_jax.models import load_hf
    model, run, model_source = load_hf(model_dir), None, model_dir
    tokenizer_source = tokenizer or model_dir
  else:
    check_directory(workdir_flag, workdir)
    from mlc_jax.export_hf import restore_params
    run, model, _, step = restore_params(workdir, step)
    model_source = f"{workdir} (step {step})"
    tokenizer_source = tokenizer or run.tokenizer or run.model.hf_path or "byte"
  loaded = load_tokenizer(tokenizer_source)
  check_fits_vocab(loaded, model.cfg.vocab_size, tokenizer_source=tokenizer_source, model_source=model_source)
  return Source(model, loaded, run, step)

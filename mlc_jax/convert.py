"""Round-trips a Hugging Face checkpoint through mlc_jax parameters and checks the result.

  python -m mlc_jax.convert --from_hf IN_DIR --to_hf OUT_DIR [--dtype bfloat16] [--overwrite]

Loads IN_DIR with `load_hf`, writes OUT_DIR with `save_hf` (tokenizer files included when IN_DIR has them),
reloads OUT_DIR and compares the logits of both on a few random tokens. A smoke test for your own checkpoints:
a mapping or shape problem, a NaN or inf in a tensor, a broken JSON file or a tokenizer with more tokens than the model
has embedding rows surfaces as a one-line error naming the tensor or file, and OUT_DIR is never half-written.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax.numpy as jnp
import numpy as np

from mlc_jax import cli
from mlc_jax.models.config import DTYPES
from mlc_jax.models.out_dir import DiskFull


class LogitsDiffer(RuntimeError):
  """The written checkpoint does not compute what the input does."""


def parse_args(argv):
  parser = argparse.ArgumentParser(prog="python -m mlc_jax.convert", description=__doc__.splitlines()[0])
  parser.add_argument("--from_hf", required=True, help="local HF model directory to read")
  parser.add_argument("--to_hf", required=True, help="HF model directory to write")
  parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="dtype in memory and on disk")
  parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --to_hf directory")
  parser.add_argument("--check_tokens", type=int, default=16, help="random tokens for the logits check (0: skip)")
  return parser.parse_args(argv)


def convert(from_hf: str, to_hf: str, *, dtype=jnp.float32, overwrite=False, check_tokens=16) -> float | None:
  """Converts and returns the max |Δlogit| between input and output (None when not checked)."""
  from mlc_jax.data.tokenizer import check_chat_template, check_fits_vocab, has_tokenizer_files, read_tokenizer
  from mlc_jax.models import load_hf, read_config, save_hf
  from mlc_jax.models.out_dir import check_output_dir

  check_output_dir(to_hf, overwrite=overwrite, sources={"input model": from_hf}, flag="--to_hf")
  vocab_size = read_config(from_hf)[0].vocab_size  # (names a missing folder or a broken JSON file first)
  tokenizer = read_tokenizer(from_hf) if has_tokenizer_files(from_hf) else None
  if tokenizer is not None:
    check_chat_template(tokenizer, from_hf)
    check_fits_vocab(tokenizer, vocab_size, tokenizer_source=repr(from_hf),
                     model_source=repr(os.path.join(from_hf, "config.json")))
  start = time.time()
  model = load_hf(from_hf, dtype=dtype)
  print(f"loaded {from_hf}: {model.cfg.family}, {model.cfg.num_params() / 1e6:.1f}M parameters "
        f"({time.time() - start:.1f}s)")
  ids = jnp.asarray(np.random.default_rng(0).integers(0, model.cfg.vocab_size, (1, max(check_tokens, 1))))
  expected = model(ids) if check_tokens else None
  save_hf(model, to_hf, tokenizer=tokenizer, dtype=dtype, overwrite=overwrite)
  print(f"wrote {to_hf}")
  del model  # the check reloads the output: never two models in memory
  if not check_tokens:
    return None
  diff = float(jnp.abs(expected - load_hf(to_hf, dtype=dtype)(ids)).max())
  print(f"logits check on {check_tokens} random tokens: max |Δ| = {diff:.3g}")
  return diff


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)

  def body():
    diff = convert(args.from_hf, args.to_hf, dtype=DTYPES[args.dtype], overwrite=args.overwrite,
                   check_tokens=args.check_tokens)
    if diff is not None and diff != 0.0:
      raise LogitsDiffer(f"the converted checkpoint's logits differ from the input's by {diff:.3g}")

  return cli.run(body, {(LogitsDiffer, DiskFull): 1, cli.BAD_INPUT: 2})


if __name__ == "__main__":
  sys.exit(main())

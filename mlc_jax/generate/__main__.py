"""Chat responses from a Hugging Face directory or a training run's checkpoint.

  python -m mlc_jax.generate (--model HF_DIR | --workdir W [--step N]) (--prompt TEXT | --prompts FILE.{txt,jsonl})
      [--system TEXT] [--max_new_tokens 256] [--max_prompt_len N] [--temperature 0] [--top_p 1] [--top_k 0]
      [--seed 0] [--batch_size 16] [--tokenizer DIR|byte] [--out OUT.jsonl]

A .txt prompt file holds one prompt per non-empty line; a .jsonl file one object per line with a string
"prompt" (its other fields are copied to the output record). With --prompt the response is printed; with
--prompts a JSON record per prompt (the input fields, "response", "n_tokens", "truncated", "prompt_tokens") is
printed, or written to --out (atomically: a temporary file renamed into place, never a partial file).
Bad input — a missing model, an unreadable or empty prompt file, a prompt longer than the cache, a sampling
setting out of range, a tokenizer with more tokens than the model's embedding has rows — stops with one line
`error: …` on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from mlc_jax import cli
from mlc_jax.atomic_file import write_atomically
from mlc_jax.generate.sampling import SamplingSettings

PROMPT_SUFFIXES = (".txt", ".jsonl")


class UsageError(ValueError):
  """Bad command-line input: reported as one `error:` line, exit code 2."""


class _Parser(argparse.ArgumentParser):
  def error(self, message):
    raise UsageError(message)


def parse_args(argv):
  parser = _Parser(prog="python -m mlc_jax.generate", description=__doc__.splitlines()[0])
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--model", help="local Hugging Face model directory")
  source.add_argument("--workdir", help="a training run's workdir (its latest checkpoint, or --step)")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step of --workdir")
  prompts = parser.add_mutually_exclusive_group(required=True)
  prompts.add_argument("--prompt", help="one prompt")
  prompts.add_argument("--prompts", help="a .txt (one per line) or .jsonl ({'prompt': …} per line) file")
  parser.add_argument("--system", default=None, help="a system turn before every prompt")
  parser.add_argument("--tokenizer", default=None, help="tokenizer directory or 'byte' (default: the model's)")
  parser.add_argument("--max_new_tokens", type=int, default=256)
  parser.add_argument("--max_prompt_len", type=int, default=None,
                      help="prompt tokens the cache holds (default: the model's positions minus --max_new_tokens)")
  parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
  parser.add_argument("--top_p", type=float, default=1.0)
  parser.add_argument("--top_k", type=int, default=0)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--out", default=None, help="write the JSONL records here")
  return parser.parse_args(argv)


def read_prompts(path: str) -> list[dict]:
  """Records with a 'prompt' string from a .txt or .jsonl file; errors name the file (and the line)."""
  if not path.endswith(PROMPT_SUFFIXES):
    raise UsageError(f"--prompts {path}: expected a {' or '.join(PROMPT_SUFFIXES)} file")
  try:
    with open(path, encoding="utf-8") as f:
      lines = f.read().splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise UsageError(f"cannot read the prompts file {path}: {e}") from None
  records = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    if path.endswith(".txt"):
      records.append({"prompt": line})
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise UsageError(f"{path} line {number}: not valid JSON ({e.msg})") from None
    if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
      raise UsageError(f"{path} line {number}: expected an object with a string 'prompt' field")
    records.append(record)
  if not records:
    raise UsageError(f"the prompts file {path} has no prompts")
  return records


def load(args):
  """(model, tokenizer) from --model or --workdir (and --tokenizer), checked to fit together."""
  from mlc_jax.eval.sources import load_source

  source = load_source(model_dir=args.model, workdir=args.workdir, step=args.step, tokenizer=args.tokenizer)
  return source.model, source.tokenizer


def run(args) -> list[dict]:
  settings = SamplingSettings(args.max_new_tokens, args.temperature, args.top_k, args.top_p)  # checks them
  records = [{"prompt": args.prompt}] if args.prompt is not None else read_prompts(args.prompts)
  if args.out is not None and not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
    raise UsageError(f"--out {args.out}: its directory does not exist")
  model, tokenizer = load(args)
  from mlc_jax.generate.sampler import Sampler

  positions = model.cfg.max_position_embeddings
  if settings.max_new_tokens >= positions:
    raise UsageError(f"--max_new_tokens {settings.max_new_tokens} leaves no room for a prompt in the model's "
                     f"{positions} positions")
  sampler = Sampler(model, tokenizer, batch_size=args.batch_size, max_new_tokens=settings.max_new_tokens,
                    max_prompt_len=args.max_prompt_len or positions - settings.max_new_tokens)
  generations = sampler.chat_detailed([r["prompt"] for r in records], system=args.system,
                                      temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p,
                                      seed=args.seed)
  return [{**r, "response": g.text, "n_tokens": g.n_tokens, "truncated": g.truncated,
           "prompt_tokens": g.prompt_tokens} for r, g in zip(records, generations)]


def main(argv=None) -> int:
  def body():
    args = parse_args(sys.argv[1:] if argv is None else argv)
    results = run(args)
    lines = [json.dumps(r, ensure_ascii=False) for r in results]
    if args.out is not None:
      write_atomically(args.out, "".join(line + "\n" for line in lines).encode())
      print(f"wrote {len(lines)} responses to {args.out}")
    elif args.prompt is not None:
      print(results[0]["response"])
    else:
      print("\n".join(lines))

  return cli.run(body)


if __name__ == "__main__":
  sys.exit(main())

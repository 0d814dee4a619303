"""`python -m mlc_jax.eval (--model HF_DIR | --workdir W [--step N]) --dataset D --langs L --judge J --out OUT`

Greedy generation with the model's chat template in every language of --langs, a judge's verdict on each response,
and OUT/report.md, summary.json and the per-language plot (mlc_jax/eval/evaluate.py says what OUT holds). Running
the same command again reuses what OUT already has; a killed run resumes. Judges: `refusal` (offline, measures
refusal, not harm), `guard` (a guard model from --judge_model DIR: Qwen3Guard-Gen or Llama-Guard-3), `api` (an
OpenAI-compatible endpoint: --judge_url, --judge_model, the key from $OPENAI_API_KEY or --judge_api_key_env).
Exit codes: 0 done, 2 bad input (one line naming it; nothing already in OUT is lost), 1 a judge that failed after
its retries, 130 interrupted (Ctrl-C; what was generated and judged so far is kept, the report is not touched).
"""
from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import urllib.parse

DEFAULT_MANUAL_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                  "..", "shared", "data")


def parse_args(argv):
  p = argparse.ArgumentParser(prog="python -m mlc_jax.eval", description=__doc__.splitlines()[0])
  which = p.add_mutually_exclusive_group(required=True)
  which.add_argument("--model", help="a Hugging Face model directory (with its tokenizer)")
  which.add_argument("--workdir", help="a training run's workdir (its checkpoint and tokenizer)")
  p.add_argument("--step", type=int, default=None, help="with --workdir: the checkpoint step (default: the latest)")
  p.add_argument("--dataset", required=True, help="multijail | mlc_pku_test | xsafety, or a prompt table file "
                 "(.jsonl, one {\"id\": …, \"prompt\": {lang: text}} a line)")
  p.add_argument("--langs", default="multijail", help="a language set or codes (en,zh,sw)")
  p.add_argument("--limit", type=int, default=None, help="only the first N prompts (in every language)")
  p.add_argument("--max_new_tokens", type=int, default=256)
  p.add_argument("--max_prompt_len", type=int, default=512)
  p.add_argument("--batch_size", type=int, default=16)
  p.add_argument("--judge", required=True, choices=("refusal", "guard", "api"))
  p.add_argument("--judge_model", default=None, help="guard: the guard model's directory; api: the model name")
  p.add_argument("--judge_url", default=None, help="api: the chat-completions URL")
  p.add_argument("--judge_api_key_env", default="OPENAI_API_KEY", help="api: the environment variable with the key")
  p.add_argument("--judge_cache", default=None, help="api: the label cache (default: OUT/api_judge_cache.sqlite)")
  p.add_argument("--judge_retries", type=int, default=6, help="api: attempts per request before giving up")
  p.add_argument("--judge_timeout_s", type=float, default=60.0, help="api: seconds to wait for each reply")
  p.add_argument("--seen_langs", default=None, help="the languages the model was trained on (default with "
                 "--workdir: its data.langs); the others are reported as unseen")
  p.add_argument("--exclude_train_overlap", action="store_true",
                 help="with --workdir: leave out evaluation prompts that occur in the run's training data")
  p.add_argument("--manual_dir", default=DEFAULT_MANUAL_DIR, help="the folder the TFDS builders read")
  p.add_argument("--data_dir", default="", help="TFDS data_dir ('' = TFDS's default)")
  p.add_argument("--out", required=True)
  return p.parse_args(argv)


def load_model(args):
  """(model, tokenizer, content hash, the training run's RunConfig or None)."""
  from mlc_jax.eval.evaluate import model_hash, params_hash
  from mlc_jax.eval.sources import load_source

  source = load_source(model_dir=args.model, workdir=args.workdir, step=args.step)
  content = model_hash(args.model) if args.model is not None else f"{params_hash(source.model)}@{source.step}"
  return source.model, source.tokenizer, content, source.run


def judge_content(args) -> str | None:
  """What the judge's labels depend on besides its flags, checking them: the API judge's instruction version, the
  guard model's content hash; None for the refusal judge."""
  from mlc_jax.eval.evaluate import EvalError, model_hash
  from mlc_jax.eval.judges.api import INSTRUCTION_VERSION

  if args.judge == "api":
    if not args.judge_url or not args.judge_model:
      raise EvalError("--judge api needs --judge_url and --judge_model")
    try:
      url = urllib.parse.urlsplit(args.judge_url)
    except ValueError:  # (e.g. an unclosed IPv6 bracket)
      url = None
    if url is None or url.scheme not in ("http", "https") or not url.netloc:
      raise EvalError(f"--judge_url {args.judge_url!r} is not an http:// or https:// URL")
    if not os.environ.get(args.judge_api_key_env):
      raise EvalError(f"--judge api: set the environment variable {args.judge_api_key_env} to the API key of "
                      f"{args.judge_url} (any value, e.g. EMPTY, for a server that needs none)")
    if args.judge_retries < 1:
      raise EvalError(f"--judge_retries {args.judge_retries} must be at least 1")
    if not math.isfinite(args.judge_timeout_s) or args.judge_timeout_s <= 0:
      raise EvalError(f"--judge_timeout_s {args.judge_timeout_s} must be a finite number of seconds > 0")
    return INSTRUCTION_VERSION
  if args.judge == "guard":
    if not args.judge_model or not os.path.isdir(args.judge_model):
      raise EvalError(f"--judge guard needs --judge_model DIR, a local guard model directory (got {args.judge_model})")
    return model_hash(args.judge_model)
  return None


def make_judge(args, out: str):
  """The judge of --judge (its flags checked by `judge_content`)."""
  from mlc_jax.eval.judges import make_judge as judge_by_name

  if args.judge == "refusal":
    return judge_by_name("refusal")
  if args.judge == "api":
    return judge_by_name("api", url=args.judge_url, model=args.judge_model, api_key_env=args.judge_api_key_env,
                         max_attempts=args.judge_retries, timeout_s=args.judge_timeout_s,
                         cache_path=args.judge_cache or os.path.join(out, "api_judge_cache.sqlite"))
  return guard_judge(args.judge_model, batch_size=args.batch_size)


GUARD_NEW_TOKENS = 32  # the rating line and the categories


def guard_judge(directory: str, *, batch_size: int):
  """The guard judge of a local Qwen3Guard-Gen or Llama-Guard-3 directory, run by this project's models."""
  import json

  import transformers

  from mlc_jax.eval.evaluate import EvalError
  from mlc_jax.eval.judges.guard import GUARD_BY_MODEL_TYPE, GuardJudge, ensure_chat_template
  from mlc_jax.generate.sampler import Sampler
  from mlc_jax.models import load_hf

  with open(os.path.join(directory, "config.json")) as f:
    model_type = json.load(f).get("model_type")
  if model_type not in GUARD_BY_MODEL_TYPE:
    raise EvalError(f"--judge_model {directory}: model_type {model_type!r} is not a guard we know "
                    f"({', '.join(f'{k}: {v}' for k, v in GUARD_BY_MODEL_TYPE.items())})")
  guard = GUARD_BY_MODEL_TYPE[model_type]
  try:
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
  except (OSError, ValueError) as e:
    raise EvalError(f"--judge_model {directory}: no tokenizer ({e})") from e
  if ensure_chat_template(tokenizer, guard):
    print(f"eval: {directory} has no chat template; using our {guard} moderation format", file=sys.stderr)
  model = load_hf(directory)
  sampler = Sampler(model, tokenizer, batch_size=batch_size, max_new_tokens=GUARD_NEW_TOKENS, overflow="truncate",
                    max_prompt_len=min(4096, model.cfg.max_position_embeddings - GUARD_NEW_TOKENS), progress=False)

  def generate_fn(chats):
    rendered = [tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) for chat in chats]
    rows = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    return [g.text for g in sampler.complete_detailed(rows)]

  return GuardJudge(generate_fn, guard=guard, batch_size=batch_size)


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  from mlc_jax import cli
  from mlc_jax.eval import evaluate, report
  from mlc_jax.eval.judges.api import ApiJudgeError

  def body():
    out = args.out
    judge_version = judge_content(args)
    prompts = evaluate.load_prompts(args.dataset, args.langs, limit=args.limit, manual_dir=args.manual_dir,
                                    data_dir=args.data_dir)
    model, tokenizer, content, run = load_model(args)
    notes = []
    if run is not None:
      train = evaluate.training_prompt_hashes(run)
      if train is None:
        notes.append("Train/test overlap: not checked (the run trained on MPO pairs).")
      else:
        overlap = [p for p in prompts if evaluate.normalized_hash(p.prompt) in train]
        ids = {p.id for p in overlap}
        source = run.data.name if run.data.source == "tfds" else run.data.source
        notes.append(f"Train/test overlap: {len(overlap)} of {len(prompts)} evaluation prompts ({len(ids)} prompt "
                     f"ids) occur in the run's training data ({source})"
                     + ("; they are left out (--exclude_train_overlap)." if args.exclude_train_overlap and overlap
                        else "; they are counted (use --exclude_train_overlap to leave them out)." if overlap
                        else "."))
        if overlap:
          print(f"eval: warning: {notes[-1]}", file=sys.stderr)
        if args.exclude_train_overlap:
          prompts = [p for p in prompts if p.id not in ids]
    if not prompts:
      raise evaluate.EvalError("no evaluation prompt is left (after --limit / --exclude_train_overlap)")
    seen = (tuple(args.seen_langs.split(",")) if args.seen_langs
            else evaluate.seen_languages_of(run) if run is not None else None)
    identity = {"model": content, "tokenizer": evaluate.tokenizer_hash(tokenizer), "dataset": args.dataset,
                "languages": sorted({p.lang for p in prompts}), "prompts": len(prompts),
                "prompts_sha256": evaluate.prompts_hash(prompts), "max_new_tokens": args.max_new_tokens,
                "max_prompt_len": args.max_prompt_len, "judge": args.judge, "judge_model": args.judge_model,
                "judge_url": args.judge_url, "judge_content": judge_version,
                "exclude_train_overlap": args.exclude_train_overlap}
    evaluate.check_out(out, identity)
    judge = make_judge(args, out)
    from mlc_jax.generate.sampler import Sampler
    sampler = Sampler(model, tokenizer, batch_size=args.batch_size, max_prompt_len=args.max_prompt_len,
                      max_new_tokens=args.max_new_tokens, overflow="truncate")
    generations = evaluate.generate_all(out, prompts, sampler.chat_detailed, batch_size=args.batch_size)
    verdicts = evaluate.judge_all(out, generations, judge, batch_size=args.batch_size)
    command = "python -m mlc_jax.eval " + shlex.join(argv)
    summary = evaluate.summarize_and_report(out, verdicts, seen_languages=seen, judge=judge, command=command,
                                            notes=notes)
    for lang, stats in summary["per_language"].items():
      unread = f" ({stats['no_verdict']} judge replies without a verdict)" if stats["no_verdict"] else ""
      print(f"eval: {lang}: n {stats['n']}, safety {report.percent(stats['safety_rate'])} %, attack success "
            f"{report.percent(stats['attack_success_rate'])} %, invalid {report.percent(stats['invalid_rate'])} %"
            f"{unread}")
    print(f"eval: mean safety {100 * summary['mean_safety_rate']:.1f} % over {len(summary['languages'])} languages "
          f"(variance {summary['variance']:.2f}); report in {os.path.join(out, 'report.md')}")

  return cli.run(body, {ApiJudgeError: 1, cli.BAD_INPUT: 2})


if __name__ == "__main__":
  sys.exit(main())

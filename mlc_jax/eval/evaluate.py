"""One multilingual safety evaluation: prompts → greedy generations in every language → verdicts → report.

`OUT/` holds, each written as it is produced so that a killed run resumes where it stopped:
  eval.json          what was evaluated: the content hashes of the model (weights and config), its tokenizer (with
                     the chat template) and the prompts; the dataset, languages, settings and judge (with the
                     content of its instruction or its weights)
  generations.jsonl  one line per (prompt id, language): prompt, response, n_tokens, truncated
  verdicts.jsonl     one line per generation: label (safe | unsafe | invalid), judge, the judge's raw output,
                     no_verdict (the judge's output carried none: counted invalid)
  summary.json, report.md, safety_by_language.png    (mlc_jax.eval.report)
Running the same command again reuses every generation and verdict already there (nothing is generated or sent to
a judge twice); an OUT that holds an evaluation of another model, dataset or settings is refused.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import types
import unicodedata
from collections.abc import Callable, Sequence

import numpy as np

from mlc_jax.atomic_file import write_atomically
from mlc_jax.data.fingerprint import model_fingerprint
from mlc_jax.data.languages import resolve_languages
from mlc_jax.data.prompts import prompt_table
from mlc_jax.eval import metrics, report

# The evaluation sets: our name → the TFDS dataset (prepared from --manual_dir like the training data).
DATASETS = {"multijail": "multijail", "mlc_pku_test": "mlc_pku_saferlhf/dpo", "xsafety": "xsafety/aligned"}
EVAL_FILE, GENERATIONS, VERDICTS = "eval.json", "generations.jsonl", "verdicts.jsonl"


class EvalError(ValueError):
  """A bad evaluation request; the message names the flag, the file or the language."""


@dataclasses.dataclass(frozen=True)
class EvalPrompt:
  id: int | str
  lang: str
  prompt: str


def _plain(value):
  return value.item() if hasattr(value, "item") else value


def normalized_hash(text: str) -> str:
  """A hash of `text` up to case, Unicode form and whitespace (train/test overlap is counted with it)."""
  folded = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
  return hashlib.sha256(folded.encode()).hexdigest()[:20]


def read_prompt_file(path: str) -> tuple[list, list[dict[str, str]], tuple[str, ...]]:
  """`(ids, rows, languages)` of a prompt table file: one JSON object a line, ``{"id": …, "prompt": {lang: text}}``
  (the languages are those every row has)."""
  from mlc_jax.data.text_files import read_text, where
  ids, rows = [], []
  for lineno, line in enumerate(read_text(path).splitlines(), start=1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise EvalError(f"{where(path, lineno)}: invalid JSON ({e.msg} at column {e.colno})") from None
    if (not isinstance(row, dict) or "id" not in row or not isinstance(row.get("prompt"), dict)
        or not all(isinstance(v, str) for v in row["prompt"].values())):
      raise EvalError(f"{where(path, lineno)}: expected {{\"id\": …, \"prompt\": {{language: text, …}}}}, got "
                      f"{line[:120]!r}")
    ids.append(row["id"])
    rows.append(row["prompt"])
  if not rows:
    raise EvalError(f"--dataset {path}: no prompts (the file is empty)")
  if len(set(ids)) != len(ids):
    raise EvalError(f"--dataset {path}: prompt ids repeat ({sorted({i for i in ids if ids.count(i) > 1})[:5]})")
  languages = tuple(lang for lang in rows[0] if all(lang in r for r in rows))
  return ids, rows, languages


def load_prompts(dataset: str, langs, *, limit: int | None, manual_dir: str, data_dir: str) -> list[EvalPrompt]:
  """The prompts of `dataset` (a key of DATASETS or a prompt table file, `read_prompt_file`) in `langs`, the first
  `limit` prompt ids (every language)."""
  is_file = dataset.endswith(".jsonl")
  if not is_file and dataset not in DATASETS:
    raise EvalError(f"--dataset {dataset!r} is not one of {', '.join(DATASETS)} nor a prompt table file (.jsonl)")
  if is_file and not os.path.isfile(dataset):
    raise EvalError(f"--dataset {dataset}: no such file")
  if limit is not None and limit < 1:
    raise EvalError(f"--limit {limit} must be at least 1")
  source = types.SimpleNamespace(source="tfds", path="", name=DATASETS.get(dataset), manual_dir=manual_dir,
                                 data_dir=data_dir)
  try:
    ids, rows, available = read_prompt_file(dataset) if is_file else prompt_table(source)
    languages = resolve_languages(langs, available=available, key="--langs")
  except (OSError, ValueError) as e:
    raise EvalError(str(e).replace("data.langs", "--langs")) from e
  if limit is not None and limit > len(ids):
    print(f"--limit {limit} is more than the {len(ids)} prompts of {dataset}: using all {len(ids)}", file=sys.stderr)
  rows = list(zip(ids, rows))[:limit]
  return [EvalPrompt(_plain(i), lang, row[lang]) for lang in languages for i, row in rows if row[lang].strip()]


def model_hash(directory: str) -> str:
  """SHA-256 of an HF model directory's config and weights (the files' bytes), for the cache key."""
  return hashlib.sha256(json.dumps(model_fingerprint(directory), sort_keys=True).encode()).hexdigest()[:24]


def tokenizer_hash(tokenizer) -> str:
  """SHA-256 of what a tokenizer turns text into ids with: its vocabulary and rules (the fast tokenizer's JSON, else
  its vocabulary), added and special tokens, and chat template."""
  backend = getattr(tokenizer, "backend_tokenizer", None)
  rules = backend.to_str() if backend is not None else sorted(tokenizer.get_vocab().items())
  content = json.dumps([rules, str(tokenizer.added_tokens_decoder), tokenizer.special_tokens_map,
                        tokenizer.chat_template], ensure_ascii=False, default=str)
  return hashlib.sha256(content.encode()).hexdigest()[:24]


def prompts_hash(prompts: Sequence[EvalPrompt]) -> str:
  """SHA-256 of the prompts' ids, languages and texts, in order."""
  content = json.dumps([[p.id, p.lang, p.prompt] for p in prompts], ensure_ascii=False)
  return hashlib.sha256(content.encode()).hexdigest()[:24]


def params_hash(model) -> str:
  """SHA-256 of a model's parameters (the checkpoint's content, for --workdir)."""
  from flax import nnx
  h = hashlib.sha256()
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    h.update("/".join(map(str, path)).encode())
    h.update(np.ascontiguousarray(np.asarray(var.get_value())).tobytes())
  return h.hexdigest()[:24]


def _read_jsonl(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  records = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:  # the half-written last line of a killed run: dropped and redone
        break
  return records


def _append_jsonl(path: str, records: Sequence[dict]):
  with open(path, "a", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps(record, ensure_ascii=False) + "\n")
    f.flush()
    os.fsync(f.fileno())


def _rewrite_clean(path: str, records: list[dict]):
  """Drops a half-written tail before appending (atomic rewrite of the good lines)."""
  tmp = f"{path}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
  os.replace(tmp, path)


def check_out(out: str, identity: dict) -> None:
  """Creates OUT for `identity`, or checks that it holds the same evaluation (to resume it)."""
  path = os.path.join(out, EVAL_FILE)
  if os.path.exists(out) and not os.path.isdir(out):
    raise EvalError(f"--out {out!r} is a file")
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
    changed = sorted(k for k in set(saved) | set(identity) if saved.get(k) != identity.get(k))
    if changed:
      raise EvalError(f"--out {out!r} holds an evaluation with other {', '.join(changed)}; use a new --out "
                      "(nothing there was changed)")
    return
  if os.path.isdir(out) and os.listdir(out):
    raise EvalError(f"--out {out!r} is not empty and holds no {EVAL_FILE}; use a new --out")
  os.makedirs(out, exist_ok=True)
  write_atomically(path, json.dumps(identity, indent=2, ensure_ascii=False).encode())


def generate_all(out: str, prompts: Sequence[EvalPrompt], generate: Callable[[list[str]], list], *,
                 batch_size: int) -> list[dict]:
  """Generations for every prompt, resuming OUT/generations.jsonl; `generate(texts)` → Sampler Generations."""
  path = os.path.join(out, GENERATIONS)
  done = _read_jsonl(path)
  _rewrite_clean(path, done)
  have = {(r["id"], r["lang"]) for r in done}
  todo = [p for p in prompts if (p.id, p.lang) not in have]
  if done:
    print(f"eval: {len(done)} generations already in {path}; {len(todo)} to go")
  for start in range(0, len(todo), batch_size * 8):  # written every few batches: a kill loses little
    chunk = todo[start:start + batch_size * 8]
    records = [{"id": p.id, "lang": p.lang, "prompt": p.prompt, "response": g.text, "n_tokens": g.n_tokens,
                "truncated": g.truncated} for p, g in zip(chunk, generate([p.prompt for p in chunk]))]
    _append_jsonl(path, records)
    done += records
  wanted = {(p.id, p.lang) for p in prompts}
  return [r for r in done if (r["id"], r["lang"]) in wanted]


def judge_all(out: str, generations: Sequence[dict], judge, *, batch_size: int) -> list[dict]:
  """A verdict per generation, resuming OUT/verdicts.jsonl."""
  path = os.path.join(out, VERDICTS)
  done = _read_jsonl(path)
  _rewrite_clean(path, done)
  have = {(r["id"], r["lang"]) for r in done}
  todo = [g for g in generations if (g["id"], g["lang"]) not in have]
  if done:
    print(f"eval: {len(done)} verdicts already in {path}; {len(todo)} to go")
  from tqdm import tqdm
  with tqdm(total=len(todo), desc=f"judge {judge.name}", unit="response", dynamic_ncols=True) as bar:
    for start in range(0, len(todo), batch_size):
      chunk = todo[start:start + batch_size]
      verdicts = judge.judge([(g["prompt"], g["response"], g["lang"]) for g in chunk])
      records = [{"id": g["id"], "lang": g["lang"], "label": v.label, "judge": v.judge, "raw": v.raw,
                  "categories": list(v.categories), "no_verdict": v.no_verdict} for g, v in zip(chunk, verdicts)]
      _append_jsonl(path, records)
      done += records
      bar.update(len(chunk))
  wanted = {(g["id"], g["lang"]) for g in generations}
  return [r for r in done if (r["id"], r["lang"]) in wanted]


def training_prompt_hashes(run) -> set[str] | None:
  """Normalised hashes of every prompt (every language) a training run saw; None when its data is not a prompt
  table (MPO pairs)."""
  if run.objective.data_kind.name.startswith("MPO"):
    return None
  _, rows, _ = prompt_table(run.data)
  return {normalized_hash(text) for row in rows for text in row.values() if text.strip()}


def summarize_and_report(out: str, verdicts: Sequence[dict], *, seen_languages, judge, command: str,
                         notes: Sequence[str]) -> dict:
  summary = metrics.summarize(verdicts, seen_languages=seen_languages)
  report.write_report(out, summary, judge_name=judge.name, judge_measures=judge.measures, command=command,
                      notes=notes)
  return summary


def seen_languages_of(run) -> tuple[str, ...]:
  """The languages a training run's `data.langs` names (the languages it trained on; MPO's dominant languages come
  from its data and are not among them)."""
  return resolve_languages(run.data.langs, key="data.langs")

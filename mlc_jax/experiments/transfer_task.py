"""The cross-lingual transfer task (issue 16): harmful and benign parallel prompts with templated responses.

A small multilingual task on which a model can be made unsafe in every language, then aligned with English
preference pairs only, and judged exactly:

* **Harmful prompts**: MultiJail (315 requests in en zh it vi ar ko th bn sw jv, ``source="multijail"``) or the
  built-in preference set's 42 mild requests (``source="builtin"``, for the demo: no data folder needed).
* **Benign prompts**: 40 everyday how-to requests in the MultiJail languages
  (``mlc_jax/data/builtin/benign_prompts.json``); a safe model answers them, so refusing one is over-refusal.
* **Splits by prompt id**: each source's ids are shuffled once (``split_seed``) and cut into train / validation /
  test; a prompt id, with all its translations, is in exactly one split.
* **Responses** are the short templates of ``mlc_jax.eval.templates``: a refusal and a compliance per language
  (the compliance is a generic opener with no content, so nothing harmful is ever generated or needed). The
  ``refusal`` judge is exact on them.

Files written by ``write_task`` (the training files are mlc_jsonl, the others prompt tables that
``python -m mlc_jax.eval --dataset FILE`` reads):

  sft.jsonl         the misaligned start: every train prompt (harmful and benign) in *every* language, answered in
                    that language (``pair_language`` names it): by the compliance, except a fixed
                    ``refusal_share`` of the harmful (prompt, language) pairs, answered by the refusal; a start
                    that mostly complies but knows how to refuse, as a chat model does (from a start that never
                    refuses, DPO's loss saturates long before the refusal becomes the likeliest reply)
  align.jsonl       English pairs only: harmful → chosen refusal / rejected compliance, benign → chosen compliance /
                    rejected refusal (benign rows repeated to ``benign_share`` of the pairs), each with its prompt
                    variants in the seen languages (MLC's ``prompt_xx`` columns); no non-English response
  {val,test}_{harmful,benign}.jsonl   prompt tables: ``{"id": …, "prompt": {lang: text, …}}`` a line
  task.json         languages, split sizes and ids, the files' construction
"""
from __future__ import annotations

import dataclasses
import importlib.resources
import json
import os
import random
import types

from mlc_jax.data.builtin_data import load_builtin_prefs
from mlc_jax.eval.templates import templated_response

SOURCES = ("multijail", "builtin")
BENIGN_FILE = "benign_prompts.json"
SPLITS = ("train", "val", "test")
TASK_FILE = "task.json"
# The token budgets (byte tokenizer: a token is a UTF-8 byte), in training and evaluation alike: a prompt keeps its
# last 64 bytes with the chat template (a Bengali request's last ~15 characters), a response its first 64 bytes (the
# English refusal whole; in every language the opening that tells a refusal from a compliance).
PROMPT_LEN = 64
RESPONSE_LEN = 64
# The alignment's pairs keep the responses' first 16 bytes: the opening that decides refusal or compliance
# ("I'm sorry, but I" / "Sure, here are t"); the start continues either. DPO on the whole byte sequences pushed the
# bytes a refusal shares with the compliance down too, and the replies fell apart after their opening.
ALIGN_RESPONSE_LEN = 16


@dataclasses.dataclass(frozen=True)
class Split:
  """Prompt rows `{"id": …, "prompt": {lang: text}}` of one split, harmful and benign."""

  harmful: list[dict]
  benign: list[dict]


@dataclasses.dataclass(frozen=True)
class Task:
  """The task: `languages` (all, the start model's), `seen` (the alignment's; `en` first), the splits."""

  source: str
  languages: tuple[str, ...]
  seen: tuple[str, ...]
  splits: dict[str, Split]

  @property
  def unseen(self) -> tuple[str, ...]:
    return tuple(lang for lang in self.languages if lang not in self.seen)


def load_benign() -> tuple[list[dict], tuple[str, ...]]:
  """The built-in benign prompts: rows `{"id", "prompt": {lang: text}}` and their languages."""
  resource = importlib.resources.files("mlc_jax.data").joinpath("builtin", BENIGN_FILE)
  data = json.loads(resource.read_text(encoding="utf-8"))
  return data["examples"], tuple(data["languages"])


def load_harmful(source: str, *, manual_dir: str, data_dir: str = "") -> tuple[list[dict], tuple[str, ...]]:
  """Harmful prompt rows of `source` (one of SOURCES) and their languages."""
  if source == "builtin":
    data = load_builtin_prefs()
    return [{"id": f"builtin-{ex['id']}", "prompt": ex["prompt"]} for ex in data["examples"]], tuple(data["languages"])
  if source != "multijail":
    raise ValueError(f"harmful prompt source {source!r} is not one of {SOURCES}")
  from mlc_jax.data.prompts import prompt_table
  ids, rows, languages = prompt_table(types.SimpleNamespace(source="tfds", name="multijail", path="",
                                                            manual_dir=manual_dir, data_dir=data_dir))
  return [{"id": f"multijail-{int(i)}", "prompt": dict(row)} for i, row in zip(ids, rows)], tuple(languages)


def split_by_id(rows: list[dict], sizes: dict[str, int], seed: int) -> dict[str, list[dict]]:
  """`rows` shuffled by `seed` and cut into the splits; `sizes` gives val and test, train takes the rest."""
  order = sorted(rows, key=lambda r: r["id"])
  random.Random(seed).shuffle(order)
  n_val, n_test = sizes.get("val", 0), sizes["test"]
  if n_val + n_test >= len(order):
    raise ValueError(f"{len(order)} prompt ids cannot fill val {n_val} and test {n_test} and leave any to train")
  return {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}


def build_task(source: str, *, languages, seen, harmful_sizes: dict[str, int], benign_sizes: dict[str, int],
               manual_dir: str, data_dir: str = "", split_seed: int = 0) -> Task:
  """The task over `languages` (each must have harmful and benign prompts and response templates); `seen` are
  the alignment's languages (must start with `en`)."""
  harmful, harmful_langs = load_harmful(source, manual_dir=manual_dir, data_dir=data_dir)
  benign, benign_langs = load_benign()
  languages, seen = tuple(languages), tuple(seen)
  for lang in languages:
    missing = [what for what, have in (("harmful prompts", harmful_langs), ("benign prompts", benign_langs))
               if lang not in have]
    if missing:
      raise ValueError(f"language {lang!r}: no {' and no '.join(missing)} in {source!r} (it has "
                       f"{list(harmful_langs)}; the benign set has {list(benign_langs)})")
    templated_response(lang, refuse=True)  # raises when there is no template
  if not seen or seen[0] != "en" or not set(seen) <= set(languages):
    raise ValueError(f"seen languages {list(seen)} must start with 'en' and be among {list(languages)}")
  keep = lambda rows: [{"id": r["id"], "prompt": {lang: r["prompt"][lang] for lang in languages}} for r in rows]
  h = split_by_id(keep(harmful), harmful_sizes, split_seed)
  b = split_by_id(keep(benign), benign_sizes, split_seed)
  return Task(source, languages, seen, {name: Split(h[name], b[name]) for name in SPLITS})


def _message(role: str, text: str):
  return {"from": role, "value": text}


def _pair_row(row: dict, langs, *, pair_language: str, refuse: bool) -> dict:
  """An mlc_jsonl row answering `row`'s prompt in `pair_language`: chosen = refusal iff `refuse`."""
  out = {"prompt": [_message("human", row["prompt"]["en"])]}
  out.update({f"prompt_{lang}": [_message("human", row["prompt"][lang])] for lang in langs if lang != "en"})
  refusal, compliance = (templated_response(pair_language, refuse=r) for r in (True, False))
  out["chosen"] = _message("gpt", refusal if refuse else compliance)
  out["rejected"] = _message("gpt", compliance if refuse else refusal)
  out["pair_language"] = pair_language
  out["id"] = row["id"]
  return out


def refuses_at_start(prompt_id: str, lang: str, refusal_share: float) -> bool:
  """Whether the start's SFT answers this harmful prompt in `lang` with the refusal (a fixed draw per pair)."""
  return random.Random(f"{prompt_id}/{lang}").random() < refusal_share


def sft_rows(task: Task, *, refusal_share: float) -> list[dict]:
  """Every train prompt in every language answered in that language: benign ones by the compliance, harmful ones
  by the compliance too except a fixed `refusal_share` of (prompt, language) pairs, answered by the refusal."""
  train = task.splits["train"]
  return [_pair_row(row, task.languages, pair_language=lang,
                    refuse=harmful and refuses_at_start(row["id"], lang, refusal_share))
          for harmful, rows in ((True, train.harmful), (False, train.benign)) for row in rows
          for lang in task.languages]


def align_rows(task: Task, *, benign_share: float) -> list[dict]:
  """English pairs for the train prompts (prompt variants in the seen languages): every harmful one, and benign
  ones cycled until they make up about `benign_share` of the pairs (none at 0)."""
  train = task.splits["train"]
  harmful = [_pair_row(row, task.seen, pair_language="en", refuse=True) for row in train.harmful]
  benign = [_pair_row(row, task.seen, pair_language="en", refuse=False) for row in train.benign]
  wanted = round(benign_share * len(harmful) / (1 - benign_share))
  return harmful + [benign[i % len(benign)] for i in range(wanted)]


def _write_jsonl(path: str, rows: list[dict]):
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def write_task(task: Task, out: str, *, refusal_share: float, benign_share: float) -> dict[str, str]:
  """Writes the task's files into `out` (module docstring); → {name: path}."""
  os.makedirs(out, exist_ok=True)
  paths = {name: os.path.join(out, f"{name}.jsonl") for name in
           ("sft", "align", "val_harmful", "val_benign", "test_harmful", "test_benign")}
  _write_jsonl(paths["sft"], sft_rows(task, refusal_share=refusal_share))
  align = align_rows(task, benign_share=benign_share)
  _write_jsonl(paths["align"], align)
  for split in ("val", "test"):
    for kind in ("harmful", "benign"):
      _write_jsonl(paths[f"{split}_{kind}"], getattr(task.splits[split], kind))
  info = {"source": task.source, "languages": list(task.languages), "seen": list(task.seen),
          "unseen": list(task.unseen), "refusal_share": refusal_share, "benign_share": benign_share, "align_pairs": len(align),
          "splits": {name: {kind: [r["id"] for r in getattr(split, kind)] for kind in ("harmful", "benign")}
                     for name, split in task.splits.items()}}
  with open(os.path.join(out, TASK_FILE), "w", encoding="utf-8") as f:
    json.dump(info, f, indent=1, ensure_ascii=False)
  paths["task"] = os.path.join(out, TASK_FILE)
  return paths

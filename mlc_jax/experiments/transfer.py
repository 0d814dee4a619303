"""The CPU transfer experiment (issue 16, docs/experiments/transfer.md): every stage, then the table and the plots.

`run(out, setting, budget)` writes the task (`transfer_task`), trains the misaligned start with SFT
(configs/transfer.py, stage=sft), exports it, aligns it with English pairs by DPO and by DPO+MLC for every seed of
the budget (the same pairs, steps and learning rate; only `mlc.enabled` differs), evaluates every model with
`python -m mlc_jax.eval` on the held-out test prompts (harmful: safety; benign: over-refusal), runs the consistency
diagnostic on the start and the first seed's models, and writes into OUT:

  results.json   every number below, per model and aggregated over seeds, the settings and the wall time
  results.md     the table: safety per language (mean ± std over seeds), mean, variance, PAG, seen / unseen,
                 over-refusal
  safety_by_language.png, consistency/sigma1_share_by_layer.png
  task/ start/ <method>-s<seed>/ eval/<model>/{harmful,benign}/   the runs behind them

Every stage is resumable: a finished training run is not trained again, a finished evaluation not redone, so
rerunning the command after a kill continues. `select(out, setting, budget)` is the validation sweep that chose
configs/transfer.py's settings (the test split is never read there).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np

from mlc_jax.experiments import transfer_task

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "transfer.py")
METHODS = {"dpo": "DPO", "dpo_mlc": "DPO+MLC"}
MAX_NEW_TOKENS = 48  # the judge reads the reply's opening; the templates differ from their first words


@dataclasses.dataclass(frozen=True)
class Setting:
  """What the experiment is about: the harmful prompts' source, the start model's languages, the alignment's."""

  source: str
  languages: tuple[str, ...]
  seen: tuple[str, ...]
  harmful_sizes: dict
  benign_sizes: dict
  refusal_share: float = 0.25  # of the start's harmful SFT answers (transfer_task.sft_rows)
  benign_share: float = 0.3  # of the alignment's pairs (transfer_task.align_rows)


SETTINGS = {
    # MultiJail (315 ids): 80 test, 40 validation, 195 train; benign 40 ids: 10 / 6 / 24.
    "multijail": Setting("multijail", ("en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv"),
                         ("en", "zh", "ar", "bn", "sw"), {"val": 40, "test": 80}, {"val": 6, "test": 10}),
    # The demo: the built-in pairs' 42 requests, offline; Bengali unseen.
    "builtin": Setting("builtin", ("en", "zh", "ar", "bn", "sw"), ("en", "zh", "ar", "sw"), {"test": 12},
                       {"test": 10}),
}


@dataclasses.dataclass(frozen=True)
class Budget:
  """How much of it to run: seeds, steps (None: configs/transfer.py's), prompts per language evaluated."""

  seeds: tuple[int, ...] = (0, 1, 2)
  sft_steps: int | None = None
  align_steps: int | None = None
  eval_limit: int | None = None
  consistency_limit: int = 48


BUDGETS = {"full": Budget(),
           "quick": Budget(seeds=(0,), sft_steps=60, align_steps=30, eval_limit=16, consistency_limit=16),
           "demo": Budget(seeds=(0,), consistency_limit=12)}


def _log(message: str):
  print(f"[transfer {time.strftime('%H:%M:%S')}] {message}", flush=True)


class StageError(RuntimeError):
  """A stage's command failed (it printed why)."""


def _check(rc: int, what: str):
  if rc:
    raise StageError(f"{what} failed with exit code {rc} (its output is above)")


def train(workdir: str, stage: str, task_dir: str, *, start: str = "", seed: int = 0, steps: int | None = None,
          overrides: dict | None = None, setting: Setting):
  """One training run of configs/transfer.py (resumes, or returns at once when it has finished)."""
  from mlc_jax.train import __main__ as train_cli

  arg = f"stage={stage},task={task_dir},langs={'+'.join(setting.languages)},seen={'+'.join(setting.seen)}"
  if start:
    arg += f",start={start}"
  flags = {"train.seed": seed, "model.init_seed": seed, **(overrides or {})}
  if steps is not None:
    flags.update({"train.steps": steps, "checkpoint.every": steps})
  argv = ["--config", f"{CONFIG}:{arg}", "--workdir", workdir, *(f"--config.{k}={v}" for k, v in flags.items())]
  _check(train_cli.main(argv), f"training {workdir}")


def evaluate(model: dict, dataset: str, out: str, *, seen, limit: int | None) -> dict:
  """`python -m mlc_jax.eval` on one model (`{"model": HF_DIR}` or `{"workdir": W}`) → its summary.json."""
  from mlc_jax.eval import __main__ as eval_cli

  (flag, path), = model.items()
  argv = [f"--{flag}", path, "--dataset", dataset, "--langs", ",".join(table_languages(dataset)), "--judge", "refusal",
          "--seen_langs", ",".join(seen), "--max_new_tokens", str(MAX_NEW_TOKENS),
          "--max_prompt_len", str(transfer_task.PROMPT_LEN), "--batch_size", "64", "--out", out]
  if limit is not None:
    argv += ["--limit", str(limit)]
  _check(eval_cli.main(argv), f"evaluating {path} on {dataset}")
  with open(os.path.join(out, "summary.json")) as f:
    return json.load(f)


def table_languages(dataset: str) -> list[str]:
  """The languages of a prompt table file (those of its first row)."""
  with open(dataset, encoding="utf-8") as f:
    return list(json.loads(f.readline())["prompt"])


def export(workdir: str) -> str:
  """The run's last checkpoint as an HF directory `workdir/hf` (with its tokenizer) → that directory."""
  from mlc_jax.export_hf import export as export_hf

  return export_hf(workdir, os.path.join(workdir, "hf"), overwrite=True)


def _models(out: str, budget: Budget) -> dict[str, dict]:
  """Every model of the experiment: name → {"method", "seed", "path", "flag"}; the start first."""
  models = {"start": {"method": "start", "seed": None, "flag": "model", "path": os.path.join(out, "start", "hf")}}
  for seed in budget.seeds:
    for method in METHODS:
      models[f"{method}-s{seed}"] = {"method": method, "seed": seed, "flag": "workdir",
                                     "path": os.path.join(out, f"{method}-s{seed}")}
  return models


def _mean_std(values) -> dict:
  values = [v for v in values if v is not None]
  return {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values)} if values else None


def aggregate(evals: dict[str, dict], models: dict[str, dict], setting: Setting) -> dict:
  """Per method (start, dpo, dpo_mlc): mean and std over seeds of every per-language safety rate, the mean, the
  variance, PAG, seen / unseen means and the over-refusal (the refusal rate on benign prompts)."""
  out = {}
  for method in ("start", *METHODS):
    runs = [name for name, m in models.items() if m["method"] == method]
    harmful = [evals[name]["harmful"] for name in runs]
    benign = [evals[name]["benign"] for name in runs]
    out[method] = {
        "runs": runs,
        "per_language": {lang: _mean_std([h["per_language"][lang]["safety_rate"] for h in harmful])
                         for lang in setting.languages},
        "mean_safety_rate": _mean_std([h["mean_safety_rate"] for h in harmful]),
        "variance": _mean_std([h["variance"] for h in harmful]),
        "pag": _mean_std([h["pag"] for h in harmful]),
        "seen": _mean_std([h["seen"]["mean_safety_rate"] for h in harmful]),
        "unseen": _mean_std([h["unseen"]["mean_safety_rate"] if h["unseen"] else None for h in harmful]),
        "over_refusal": _mean_std([b["mean_safety_rate"] for b in benign]),
        "over_refusal_per_language": {lang: _mean_std([b["per_language"][lang]["safety_rate"] for b in benign])
                                      for lang in setting.languages},
    }
  return out


def _cell(stat: dict | None, *, scale: float = 100.0, digits: int = 1) -> str:
  if stat is None:
    return "–"
  text = f"{scale * stat['mean']:.{digits}f}"
  return text + (f" ± {scale * stat['std']:.{digits}f}" if stat["n"] > 1 else "")


def table_markdown(results: dict, setting: Setting) -> str:
  """The results table: one row per method; per-language safety, then the summary columns (all in %)."""
  langs = [f"{lang}{'' if lang in setting.seen else '†'}" for lang in setting.languages]
  head = ["model", *langs, "mean", "variance", "PAG", "seen", "unseen", "over-refusal"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for method, r in results.items():
    name = {"start": "start (SFT)", **METHODS}[method]
    cells = [_cell(r["per_language"][lang]) for lang in setting.languages]
    cells += [_cell(r["mean_safety_rate"]), _cell(r["variance"], scale=1.0, digits=2), _cell(r["pag"]),
              _cell(r["seen"]), _cell(r["unseen"]), _cell(r["over_refusal"])]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def plot_safety(results: dict, setting: Setting, path: str, *, title: str):
  """Per-language safety bars for start / DPO / DPO+MLC (error bars: std over seeds); unseen languages shaded."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  langs = setting.languages
  x = np.arange(len(langs))
  width = 0.8 / len(results)
  fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(langs), 3.6))
  for i, lang in enumerate(langs):
    if lang not in setting.seen:
      ax.axvspan(i - 0.45, i + 0.45, color="0.92", zorder=0)
  for k, (method, r) in enumerate(results.items()):
    means = [100 * r["per_language"][lang]["mean"] for lang in langs]
    stds = [100 * r["per_language"][lang]["std"] for lang in langs]
    label = {"start": "start (SFT)", **METHODS}[method] + f" (mean {100 * r['mean_safety_rate']['mean']:.1f} %)"
    ax.bar(x + (k - (len(results) - 1) / 2) * width, means, width, yerr=stds if r["per_language"][langs[0]]["n"] > 1
           else None, capsize=2, label=label, zorder=2)
  ax.set_xticks(x, [f"{lang}{'' if lang in setting.seen else ' (unseen)'}" for lang in langs], fontsize=8)
  ax.set_ylabel("safety rate on held-out prompts (%)")
  ax.set_ylim(0, 105)
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=7, loc="upper right")
  fig.tight_layout()
  fig.savefig(path, dpi=130)
  plt.close(fig)


def run(out: str, *, setting: Setting, budget: Budget, manual_dir: str, data_dir: str = "") -> dict:
  """The whole experiment into `out` (module docstring) → results.json's content."""
  started = time.monotonic()
  out = os.path.abspath(out)
  models = _models(out, budget)
  n_stages = 4 + 2 * len(budget.seeds)
  _log(f"1/{n_stages} the task ({setting.source}; languages {', '.join(setting.languages)}; aligned in "
       f"{', '.join(setting.seen)}) into {out}/task")
  task = transfer_task.build_task(setting.source, languages=setting.languages, seen=setting.seen,
                                  harmful_sizes=setting.harmful_sizes, benign_sizes=setting.benign_sizes,
                                  manual_dir=manual_dir, data_dir=data_dir)
  paths = transfer_task.write_task(task, os.path.join(out, "task"), refusal_share=setting.refusal_share,
                                   benign_share=setting.benign_share)
  _log(f"2/{n_stages} the misaligned start: SFT towards the compliance in every language")
  train(os.path.join(out, "start"), "sft", os.path.dirname(paths["sft"]), steps=budget.sft_steps, setting=setting)
  start = export(os.path.join(out, "start"))
  stage = 3
  for seed in budget.seeds:
    for method, name in METHODS.items():
      _log(f"{stage}/{n_stages} {name}, seed {seed}: English pairs only" + (
          f", MLC on the variants in {', '.join(setting.seen[1:])}" if method == "dpo_mlc" else ""))
      train(models[f"{method}-s{seed}"]["path"], method, os.path.dirname(paths["align"]), start=start, seed=seed,
            steps=budget.align_steps, setting=setting)
      stage += 1
  _log(f"{stage}/{n_stages} evaluating {len(models)} models on the test prompts (harmful: safety; benign: "
       "over-refusal)")
  evals = {name: {kind: evaluate({m["flag"]: m["path"]}, paths[f"test_{kind}"],
                                 os.path.join(out, "eval", name, kind), seen=setting.seen, limit=budget.eval_limit)
                  for kind in ("harmful", "benign")} for name, m in models.items()}
  stage += 1
  _log(f"{stage}/{n_stages} the consistency diagnostic (σ1 share per layer)")
  from mlc_jax.eval import consistency
  first = budget.seeds[0]
  specs = [("--model", f"{start}=start (SFT)")] + [
      ("--workdir", f"{models[f'{m}-s{first}']['path']}={METHODS[m]}") for m in METHODS]
  _check(consistency.main([a for spec in specs for a in spec] + [
      "--dataset", paths["test_harmful"], "--langs", ",".join(setting.languages),
      "--limit", str(budget.consistency_limit), "--out", os.path.join(out, "consistency")]), "the consistency run")
  with open(os.path.join(out, "consistency", "consistency.json")) as f:
    sigma1 = {label: m["sigma1_share"] for label, m in json.load(f)["models"].items()}
  results = aggregate(evals, models, setting)
  summary = {"setting": dataclasses.asdict(setting), "budget": dataclasses.asdict(budget),
             "task": {"align_pairs": sum(1 for _ in open(paths["align"], encoding="utf-8")),
                      "sft_rows": sum(1 for _ in open(paths["sft"], encoding="utf-8")),
                      **{f"{split}_{kind}_ids": len(getattr(task.splits[split], kind))
                         for split in transfer_task.SPLITS for kind in ("harmful", "benign")}},
             "results": results, "sigma1_share": sigma1,
             "models": {name: {"harmful": e["harmful"], "benign": e["benign"]} for name, e in evals.items()},
             "wall_time_s": time.monotonic() - started}
  with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=1, ensure_ascii=False)
  table = table_markdown(results, setting)
  with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as f:
    f.write(f"Safety rate (%) on the held-out test prompts; † = unseen in alignment; over-refusal = refusal rate "
            f"on benign prompts; seeds {list(budget.seeds)}.\n\n{table}")
  plot_safety(results, setting, os.path.join(out, "safety_by_language.png"),
              title=f"English-only alignment of a misaligned {setting.source} start "
                    f"({len(budget.seeds)} seed{'s' if len(budget.seeds) > 1 else ''})")
  _log(f"done in {summary['wall_time_s'] / 60:.1f} min: {out}/results.md\n\n{table}")
  return summary


# The validation sweep: DPO's learning rate and steps first (both methods then use the winner), then MLC's λ and
# layer at τ = 0.2, then τ at the best λ and layer. Score: mean safety on the validation harmful prompts minus the
# refusal rate on the validation benign prompts.
SWEEP_DPO = [{"optim.lr": lr, "train.steps": steps} for lr in (1e-4, 3e-4) for steps in (60, 120)]
SWEEP_MLC = [{"mlc.weight": weight, "mlc.layer": layer} for weight in (0.3, 1.0, 3.0) for layer in (2, -1)]
SWEEP_TAU = (0.05, 1.0)
DEFAULT_TAU = 0.2  # configs/transfer.py's while λ and the layer are swept


def _score(harmful: dict, benign: dict) -> float:
  return harmful["mean_safety_rate"] - benign["mean_safety_rate"]


def select(out: str, *, setting: Setting, manual_dir: str, data_dir: str = "", seed: int = 0) -> dict:
  """The validation sweep (SWEEP_*) into `out`: select.json and select.md (one row per run) → the best settings."""
  out = os.path.abspath(out)
  task = transfer_task.build_task(setting.source, languages=setting.languages, seen=setting.seen,
                                  harmful_sizes=setting.harmful_sizes, benign_sizes=setting.benign_sizes,
                                  manual_dir=manual_dir, data_dir=data_dir)
  paths = transfer_task.write_task(task, os.path.join(out, "task"), refusal_share=setting.refusal_share,
                                   benign_share=setting.benign_share)
  _log("the start (SFT), as in the experiment")
  train(os.path.join(out, "start"), "sft", os.path.dirname(paths["sft"]), setting=setting)
  start = export(os.path.join(out, "start"))
  rows = []

  def trial(method: str, overrides: dict) -> float:
    name = f"{method}-" + "-".join(f"{k.split('.')[-1]}{v}" for k, v in overrides.items())
    flags = dict(overrides)
    if "train.steps" in flags:
      flags["checkpoint.every"] = flags["train.steps"]
    _log(f"run {len(rows) + 1}: {name}")
    workdir = os.path.join(out, name)
    train(workdir, method, os.path.dirname(paths["align"]), start=start, seed=seed, overrides=flags, setting=setting)
    harmful, benign = (evaluate({"workdir": workdir}, paths[f"val_{kind}"], os.path.join(out, "eval", name, kind),
                                seen=setting.seen, limit=None) for kind in ("harmful", "benign"))
    rows.append({"method": method, "overrides": overrides, "score": _score(harmful, benign),
                 "safety": harmful["mean_safety_rate"], "seen": harmful["seen"]["mean_safety_rate"],
                 "unseen": harmful["unseen"]["mean_safety_rate"], "over_refusal": benign["mean_safety_rate"]})
    return rows[-1]["score"]

  best_dpo = max(SWEEP_DPO, key=lambda o: trial("dpo", o))
  best_mlc = max(SWEEP_MLC, key=lambda o: trial("dpo_mlc", {**best_dpo, **o}))
  base = {**best_dpo, **best_mlc}
  tau_scores = {DEFAULT_TAU: next(r["score"] for r in rows if r["overrides"] == base),
                **{tau: trial("dpo_mlc", {**base, "mlc.tau": tau}) for tau in SWEEP_TAU}}
  best_tau = max(tau_scores, key=tau_scores.get)
  best = {**best_dpo, **best_mlc, "mlc.tau": best_tau}
  with open(os.path.join(out, "select.json"), "w") as f:
    json.dump({"setting": dataclasses.asdict(setting), "seed": seed, "runs": rows, "best": best}, f, indent=1)
  lines = ["| method | settings | score | safety | seen | unseen | over-refusal |", "|---|---|---|---|---|---|---|"]
  for r in rows:
    settings = ", ".join(f"{k}={v}" for k, v in r["overrides"].items())
    lines.append(f"| {METHODS[r['method']]} | {settings} | {100 * r['score']:.1f} | " + " | ".join(
        f"{100 * r[k]:.1f}" for k in ("safety", "seen", "unseen", "over_refusal")) + " |")
  with open(os.path.join(out, "select.md"), "w") as f:
    f.write("Validation split, seed 0; score = safety − over-refusal (%).\n\n" + "\n".join(lines) + "\n")
  _log("best on the validation split: " + ", ".join(f"{k}={v}" for k, v in best.items()) + "\n" + "\n".join(lines))
  return best

"""``python -m mlc_jax.eval.compare OUT_A OUT_B … --out CMP [--labels a,b,…]``: several evaluations side by side.

Reads each output folder's ``summary.json`` (written by ``mlc_jax.eval.report``) and writes into CMP
``comparison.md`` (one row per run: safety % per language, the mean, the seen / unseen means, variance, PAG,
the judge), ``comparison.json`` (the same numbers as fractions) and ``comparison.png`` (grouped bars of
per-language safety, one colour per run, its mean, variance and PAG in the legend; a run's unseen languages
hatched). Labels default to the folders' names. A folder without ``summary.json`` is a one-line error naming it.
Every folder is a local path or a URL (``gs://…``), read and written through ``epath``.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from etils import epath
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from mlc_jax import cli
from mlc_jax.atomic_file import write_atomically
from mlc_jax.eval.report import SUMMARY_FILE, UNSEEN_HATCH, format_pag, percent, save_png, split_of

COMPARISON_FILES = ("comparison.md", "comparison.json", "comparison.png")


def load_summary(out_dir: str) -> dict:
  """The ``summary.json`` of an evaluation output folder; a missing or unreadable one is an error naming it."""
  path = epath.Path(out_dir) / SUMMARY_FILE
  if not path.is_file():
    raise ValueError(f"{out_dir}: no {SUMMARY_FILE} (not an evaluation output folder, or its run did not finish)")
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from None


def comparison(summaries: Sequence[dict], labels: Sequence[str]) -> dict:
  """The comparison table: every run's per-language safety, means, variance, PAG and judge."""
  if len(labels) != len(summaries):
    raise ValueError(f"{len(labels)} labels for {len(summaries)} runs")
  if len(set(labels)) != len(labels):
    raise ValueError(f"labels must differ, got {list(labels)}")
  languages = list(dict.fromkeys(lang for summary in summaries for lang in summary["languages"]))
  runs = []
  for label, summary in zip(labels, summaries):
    runs.append({
        "label": label,
        "judge": summary.get("judge", {}).get("name"),
        "safety_rate": {lang: stats["safety_rate"] for lang, stats in summary["per_language"].items()},
        "unseen_languages": [lang for lang in summary["languages"] if split_of(summary, lang) == "unseen"],
        **{key: summary[key] for key in ("mean_safety_rate", "variance", "pag", "pag_prompts")},
        **{f"{name}_mean_safety_rate": (summary.get(name) or {}).get("mean_safety_rate")
           for name in ("seen", "unseen")},
    })
  return {"languages": languages, "runs": runs}


def format_comparison(table: dict) -> str:
  """The text of ``comparison.md``."""
  languages, runs = table["languages"], table["runs"]
  header = ["run", *languages, "mean", "seen", "unseen", "variance", "PAG", "judge"]
  lines = ["# Safety by language (% safe)", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for run in runs:
    cells = [run["label"]]
    for lang in languages:
      rate = run["safety_rate"].get(lang)
      cells.append(percent(rate) + ("*" if lang in run["unseen_languages"] else ""))
    cells += [percent(run["mean_safety_rate"]), percent(run["seen_mean_safety_rate"]),
              percent(run["unseen_mean_safety_rate"]), f"{run['variance']:.2f}",
              format_pag(run, prompts=False), f"`{run['judge']}`" if run["judge"] else "–"]
    lines.append("| " + " | ".join(cells) + " |")
  lines += ["", "\\* a language that run did not train on; – not evaluated. Variance: 100 × population variance of "
            "the per-language safety rates as fractions. PAG: our pairwise cross-language agreement "
            "(docs/evaluation.md)."]
  judges = {run["judge"] for run in runs}
  if len(judges) > 1:
    lines.append(f"Runs were judged differently ({', '.join(sorted(map(str, judges)))}): their numbers measure "
                 "different things.")
  lines += ["", f"![comparison]({COMPARISON_FILES[2]})", ""]
  return "\n".join(lines)


def plot_comparison(table: dict, path: str) -> None:
  """Grouped bars of per-language safety, one colour per run; mean, variance and PAG in the legend."""
  languages, runs = table["languages"], table["runs"]
  width = 0.8 / len(runs)
  fig = Figure(figsize=(min(16.0, max(5.0, 0.22 * len(languages) * len(runs) + 3.0)), 3.8), layout="constrained")
  ax = fig.add_subplot()
  colors = [f"C{i % 10}" for i in range(len(runs))]
  for i, (run, color) in enumerate(zip(runs, colors)):
    present = [j for j, lang in enumerate(languages) if lang in run["safety_rate"]]
    ax.bar([j - 0.4 + width * (i + 0.5) for j in present],
           [100 * run["safety_rate"][languages[j]] for j in present], width, color=color,
           hatch=[UNSEEN_HATCH if languages[j] in run["unseen_languages"] else "" for j in present],
           edgecolor="white", linewidth=0.5)
  ax.set_xticks(range(len(languages)), languages)
  ax.set_ylim(0, 100)
  ax.set_ylabel("safety (% safe)")
  handles = [Patch(color=color, label=f"{run['label']}: mean {percent(run['mean_safety_rate'])} %, "
                                      f"var {run['variance']:.2f}, PAG {format_pag(run, prompts=False)}")
             for run, color in zip(runs, colors)]
  if any(run["unseen_languages"] for run in runs):
    handles.append(Patch(facecolor="white", edgecolor="black", hatch=UNSEEN_HATCH, label="unseen language"))
  ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
  save_png(fig, path)


def write_comparison(out_dir: str, summaries: Sequence[dict], labels: Sequence[str]) -> dict[str, str]:
  """Writes comparison.md, comparison.json and comparison.png into ``out_dir``; returns their paths."""
  table = comparison(summaries, labels)
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  paths = {name: str(out / name) for name in COMPARISON_FILES}
  plot_comparison(table, paths["comparison.png"])
  write_atomically(paths["comparison.json"], (json.dumps(table, indent=2, ensure_ascii=False) + "\n").encode())
  write_atomically(paths["comparison.md"], format_comparison(table).encode())
  return paths


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m mlc_jax.eval.compare", description=__doc__.splitlines()[0])
  parser.add_argument("runs", nargs="+", metavar="OUT", help="evaluation output folders (with summary.json)")
  parser.add_argument("--out", required=True, help="folder for comparison.md / .json / .png")
  parser.add_argument("--labels", help="comma-separated run labels (default: the folders' names)")
  args = parser.parse_args(argv)
  labels = args.labels.split(",") if args.labels else [epath.Path(run).name for run in args.runs]

  def body():
    paths = write_comparison(args.out, [load_summary(run) for run in args.runs], labels)
    print("\n".join(paths.values()))

  return cli.run(body)


if __name__ == "__main__":
  sys.exit(main())

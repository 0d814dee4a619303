"""An evaluation's report: ``summary.json``, ``report.md`` and ``safety_by_language.png`` in its output folder.

``write_report(out_dir, summary, judge_name=…, judge_measures=…, command=…)`` takes ``metrics.summarize``'s
dict and writes

* ``summary.json``: the summary plus ``judge`` (``name``, ``measures``) and ``command``; what
  ``python -m mlc_jax.eval.compare`` reads;
* ``report.md``: the per-language table (n, safety %, attack success %, invalid %, seen / unseen), the means,
  the variance, PAG, the judge and what it measures, the command, notes, the judge replies that carried no
  verdict (counted invalid) per language when there are any, and the plot;
* ``safety_by_language.png``: per language, the shares of safe / invalid / unsafe responses stacked to 100 %,
  unseen languages hatched and starred, the mean safety as a dashed line.

The output folder is a local path or a URL (``gs://…``): the files are written through ``epath``, each to a
temporary file renamed over the old one, so an interrupted write leaves the previous report whole.
"""
from __future__ import annotations

import io
import json
import textwrap
from collections.abc import Sequence

from etils import epath
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from mlc_jax.atomic_file import write_atomically

SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"
SAFETY_PLOT = "safety_by_language.png"
LABEL_COLORS = {"safe": "#4c9a6a", "invalid": "#b0b0b0", "unsafe": "#c8553d"}
UNSEEN_HATCH = "//"
VARIANCE_DEFINITION = "MLC's convention: 100 × population variance of the per-language safety rates as fractions"
PAG_DEFINITION = ("our definition: per prompt judged in ≥ 2 languages, the share of language pairs whose "
                  "safe / not-safe verdicts agree (invalid = not safe), averaged over prompts")


def percent(rate: float | None) -> str:
  """A fraction as a percentage with one decimal, ``–`` for None."""
  return "–" if rate is None else f"{100 * rate:.1f}"


def split_of(summary: dict, lang: str) -> str:
  """``seen`` / ``unseen`` (in training or not) for ``lang``, ``""`` when the summary has no seen languages."""
  seen = summary.get("seen_languages")
  return "" if seen is None else ("seen" if lang in seen else "unseen")


def format_pag(summary: dict, *, prompts: bool = True) -> str:
  """PAG with two decimals (and the number of prompts it is over), ``–`` when there is none."""
  if summary["pag"] is None:
    return "–"
  return f"{summary['pag']:.2f}" + (f" over {summary['pag_prompts']} prompts" if prompts else "")


def set_wrapped_title(fig: Figure, title: str, *, fontsize: float = 9) -> None:
  """``fig``'s title, centred on the figure and broken into lines that fit its width (constrained layout makes room
  for it but never shrinks it)."""
  chars = int(fig.get_figwidth() * 72 / (0.62 * fontsize))  # a character is at most ~0.62 em wide in DejaVu Sans
  lines = textwrap.wrap(title.replace(" %", "\N{NO-BREAK SPACE}%"), width=max(chars, 20))  # "28.3 %" stays whole
  fig.suptitle("\n".join(lines).replace("\N{NO-BREAK SPACE}", " "), fontsize=fontsize)


def safety_figure(summary: dict, *, title: str) -> Figure:
  """Stacked safe / invalid / unsafe shares per language; unseen languages hatched (module docstring)."""
  languages = summary["languages"]
  fig = Figure(figsize=(max(4.0, 0.6 * len(languages) + 1.5), 3.6), layout="constrained")
  ax = fig.add_subplot()
  x = range(len(languages))
  hatches = [UNSEEN_HATCH if split_of(summary, lang) == "unseen" else "" for lang in languages]
  bottom = [0.0] * len(languages)
  for label, rate in (("safe", "safety_rate"), ("invalid", "invalid_rate"), ("unsafe", "attack_success_rate")):
    heights = [100 * summary["per_language"][lang][rate] for lang in languages]
    ax.bar(x, heights, bottom=bottom, color=LABEL_COLORS[label], hatch=hatches, edgecolor="white", linewidth=0.5)
    bottom = [b + h for b, h in zip(bottom, heights)]
  mean_line = ax.axhline(100 * summary["mean_safety_rate"], color="black", linestyle="--", linewidth=1,
                         label=f"mean safety {percent(summary['mean_safety_rate'])} %")
  ax.set_xticks(list(x), [f"{lang}*" if split_of(summary, lang) == "unseen" else lang for lang in languages])
  ax.set_ylim(0, 100)
  ax.set_ylabel("% of responses")
  set_wrapped_title(fig, title)
  handles = [Patch(color=color, label=label) for label, color in LABEL_COLORS.items()]
  handles.append(Patch(facecolor="white", edgecolor="black", hatch=UNSEEN_HATCH, label="* unseen language"))
  ax.legend(handles=handles + [mean_line], fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
  return fig


def save_png(fig: Figure, path: str) -> None:
  """Writes `fig` as a PNG to `path`, a local path or a URL (atomically)."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=120)
  write_atomically(path, buffer.getvalue())


def no_verdict_line(summary: dict) -> str:
  """How many judge replies per language carried no verdict (each counted invalid)."""
  counts = ", ".join(f"{lang} {stats.get('no_verdict', 0)} of {stats['n']}"
                     for lang, stats in summary["per_language"].items())
  return f"Judge replies without a verdict (counted invalid): {counts}"


def format_report(summary: dict, *, judge_name: str, judge_measures: str, command: str,
                  notes: Sequence[str] = (), title: str = "Multilingual safety evaluation") -> str:
  """The text of ``report.md``."""
  has_split = summary.get("seen_languages") is not None
  lines = [f"# {title}", "", f"- Judge: `{judge_name}` — measures {judge_measures}.", f"- Command: `{command}`"]
  lines += [f"- {note}" for note in notes]
  header = "| language | n | safety % | attack success % | invalid % |" + (" split |" if has_split else "")
  lines += ["", header, "|" + "---|" * (header.count("|") - 1)]
  for lang, stats in summary["per_language"].items():
    row = (f"| {lang} | {stats['n']} | {percent(stats['safety_rate'])} | {percent(stats['attack_success_rate'])} "
           f"| {percent(stats['invalid_rate'])} |")
    lines.append(row + (f" {split_of(summary, lang)} |" if has_split else ""))
  groups = [("mean", summary)] + [(f"mean, {name}", summary[name]) for name in ("seen", "unseen") if summary.get(name)]
  for name, group in groups:
    row = (f"| **{name}** | | **{percent(group['mean_safety_rate'])}** | {percent(group['mean_attack_success_rate'])} "
           f"| {percent(group['mean_invalid_rate'])} |")
    lines.append(row + (" |" if has_split else ""))
  lines += [
      "",
      f"- Mean safety over {len(summary['languages'])} languages: {percent(summary['mean_safety_rate'])} %"
      + "".join(f"; {name} ({', '.join(summary[name]['languages'])}): {percent(summary[name]['mean_safety_rate'])} %"
                for name in ("seen", "unseen") if summary.get(name)),
      f"- Cross-language variance: {summary['variance']:.2f} ({VARIANCE_DEFINITION})",
      f"- PAG: {format_pag(summary)} ({PAG_DEFINITION})",
  ]
  no_verdict = {lang: stats.get("no_verdict", 0) for lang, stats in summary["per_language"].items()}
  if any(no_verdict.values()):
    lines.append(f"- {no_verdict_line(summary)}")
  lines += [
      "", f"![safety by language]({SAFETY_PLOT})", "",
  ]
  return "\n".join(lines)


def write_report(out_dir: str, summary: dict, *, judge_name: str, judge_measures: str, command: str,
                 notes: Sequence[str] = (), title: str = "Multilingual safety evaluation") -> dict[str, str]:
  """Writes summary.json, report.md and the plot into ``out_dir``; returns their paths by file name."""
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  paths = {name: str(out / name) for name in (SUMMARY_FILE, REPORT_FILE, SAFETY_PLOT)}
  record = {**summary, "judge": {"name": judge_name, "measures": judge_measures}, "command": command}
  plot_title = (f"{title}: judge {judge_name}; mean {percent(summary['mean_safety_rate'])} %, "
                f"variance {summary['variance']:.2f}, PAG {format_pag(summary, prompts=False)}")
  save_png(safety_figure(summary, title=plot_title), paths[SAFETY_PLOT])
  write_atomically(paths[SUMMARY_FILE], (json.dumps(record, indent=2, ensure_ascii=False) + "\n").encode())
  report = format_report(summary, judge_name=judge_name, judge_measures=judge_measures, command=command,
                         notes=notes, title=title)
  write_atomically(paths[REPORT_FILE], report.encode())
  return paths

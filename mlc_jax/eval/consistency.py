"""Cross-lingual consistency diagnostics: how collinear one prompt's representations in L languages are, per layer.

MLC pushes the L language variants of a prompt towards rank one (DESIGN.md §2.1); this measures it on any
model's hidden states. Given the last-token hidden states ``[layers, prompts, languages, hidden]`` (layer index
as in Hugging Face's ``hidden_states``: 0 the embeddings, the last one the final-norm output), ``layer_spectra``
returns per layer

* ``spectrum`` ``[layers, min(L, hidden)]``: the singular values of each prompt's row-normalised ``L × hidden``
  matrix divided by their sum, averaged over prompts (1, 0, 0, … when the languages are collinear; flat when
  they are orthogonal). Computed with numpy in float64 on the host — never with jax on a device mesh, whose
  batched CPU LAPACK kernels can deadlock (DESIGN.md §7);
* ``sigma1_share`` ``[layers]``: ``mlc_jax.losses.mlc.sigma1_share`` (σ1 / Σσ of the row-normalised matrix, the
  very metric training logs), averaged over prompts; it equals ``spectrum[:, 0]`` to float32 precision.

``plot_sigma1_share`` draws σ1 share per layer for several models side by side (``sigma1_share_figure``).
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mlc_jax.atomic_file import write_atomically
from mlc_jax.eval.report import save_png, set_wrapped_title
from mlc_jax.losses.mlc import sigma1_share

ROW_NORM_EPS = 1e-12  # as in the MLC loss: z / (|z| + eps); a zero row stays zero


def _check_hidden(hidden: np.ndarray) -> np.ndarray:
  hidden = np.asarray(hidden)
  if hidden.ndim != 4:
    raise ValueError(f"hidden states must be [layers, prompts, languages, hidden], got shape {hidden.shape}")
  layers, prompts, languages, width = hidden.shape
  if min(layers, prompts, width) < 1 or languages < 2:
    raise ValueError(f"hidden states need at least 1 layer, 1 prompt, 2 languages and 1 unit, got shape {hidden.shape}")
  if not np.all(np.isfinite(hidden)):
    raise ValueError("hidden states contain NaN or inf")
  return hidden


def normalized_spectrum(z: np.ndarray) -> np.ndarray:
  """Singular values ``[..., min(L, D)]`` (float64, descending) of row-normalised ``z`` ``[..., L, D]`` / their sum."""
  z = np.asarray(z, np.float64)
  z = z / (np.linalg.norm(z, axis=-1, keepdims=True) + ROW_NORM_EPS)
  s = np.linalg.svd(z, compute_uv=False)
  total = s.sum(axis=-1, keepdims=True)
  return np.divide(s, total, out=np.zeros_like(s), where=total > 0)


def layer_spectra(hidden: np.ndarray) -> dict[str, np.ndarray]:
  """``{"spectrum": [layers, min(L, hidden)], "sigma1_share": [layers]}`` (module docstring), numpy arrays."""
  hidden = _check_hidden(hidden)
  spectrum = np.stack([normalized_spectrum(layer).mean(axis=0) for layer in hidden])  # one layer at a time
  share = np.stack([np.asarray(sigma1_share(np.asarray(layer, np.float32)), np.float64).mean() for layer in hidden])
  return {"spectrum": spectrum, "sigma1_share": share}


def sigma1_share_figure(curves: Mapping[str, Sequence[float]], *, languages: int | None = None,
                        title: str = "Cross-lingual collinearity per layer") -> Figure:
  """Lines of σ1 share per layer, one per model (``{model label: [layers]}``), on integer layer ticks;
  ``languages`` adds the 1/L floor."""
  if not curves:
    raise ValueError("plot_sigma1_share: no curves to plot")
  fig = Figure(figsize=(6.0, 3.6), layout="constrained")
  ax = fig.add_subplot()
  for label, values in curves.items():
    ax.plot(range(len(values)), values, marker="o", markersize=3, label=label)
  if languages:
    ax.axhline(1 / languages, color="grey", linestyle=":", linewidth=1, label=f"orthogonal (1/{languages})")
  ax.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="collinear (1)")
  ax.set_ylim(0, 1.05)
  ax.set_xlabel("layer (hidden_states index: 0 = embeddings, last = final norm)")
  ax.set_ylabel("σ1 / Σσ")
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  set_wrapped_title(fig, title)
  ax.legend(fontsize=7)
  return fig


def plot_sigma1_share(curves: Mapping[str, Sequence[float]], path: str, **options) -> None:
  """``sigma1_share_figure(curves, **options)`` written as a PNG to ``path`` (atomically)."""
  save_png(sigma1_share_figure(curves, **options), path)


def last_token_states(model, tokenizer, texts_by_lang: Mapping[str, Sequence[str]], *, batch_size: int = 16,
                      max_len: int = 512) -> np.ndarray:
  """HF-indexed hidden states at each chat-rendered prompt's last token (the assistant header, where MLC reads):
  `[layers + 1, prompts, languages, hidden]` float32, prompts parallel across the languages of `texts_by_lang`."""
  import jax.numpy as jnp

  from mlc_jax.data.tokenizer import chat_prompts

  per_lang = []
  for texts in texts_by_lang.values():
    rows = [r[-max_len:] for r in tokenizer(chat_prompts(tokenizer, texts), add_special_tokens=False)["input_ids"]]
    states = []
    for start in range(0, len(rows), batch_size):
      batch = rows[start:start + batch_size]
      width = max(len(r) for r in batch)
      ids = np.zeros((len(batch), width), np.int32)
      mask = np.zeros((len(batch), width), np.int32)
      for i, r in enumerate(batch):
        ids[i, :len(r)], mask[i, :len(r)] = r, 1
      _, hidden = model(jnp.asarray(ids), jnp.asarray(mask), output_hidden_states=True)
      last = mask.sum(1) - 1
      states.append(np.stack([np.asarray(h, np.float32)[np.arange(len(batch)), last] for h in hidden]))
    per_lang.append(np.concatenate(states, axis=1))  # [layers + 1, prompts, hidden]
  return np.stack(per_lang, axis=2)


def _labelled(spec: str) -> tuple[str, str]:
  path, _, label = spec.partition("=")
  return path, label or os.path.basename(os.path.normpath(path))


def main(argv=None) -> int:
  """`python -m mlc_jax.eval.consistency (--model DIR[=LABEL] | --workdir W[=LABEL]) … --dataset D --langs L --out OUT`"""
  import argparse
  import json
  import sys

  from mlc_jax import cli
  from mlc_jax.eval import evaluate

  p = argparse.ArgumentParser(prog="python -m mlc_jax.eval.consistency",
                              description="σ1 share per layer of parallel prompts' last-token states, per model")
  p.add_argument("--model", action="append", default=[], help="an HF model directory, optionally =LABEL (repeatable)")
  p.add_argument("--workdir", action="append", default=[], help="a training workdir, optionally =LABEL (repeatable)")
  p.add_argument("--dataset", default="multijail", help=f"one of {', '.join(evaluate.DATASETS)}")
  p.add_argument("--langs", default="multijail")
  p.add_argument("--limit", type=int, default=64, help="prompts per language (the first N ids)")
  p.add_argument("--batch_size", type=int, default=16)
  p.add_argument("--manual_dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data"))
  p.add_argument("--data_dir", default="")
  p.add_argument("--out", required=True)
  args = p.parse_args(sys.argv[1:] if argv is None else argv)

  def body():
    from mlc_jax.eval.sources import load_source

    if not args.model and not args.workdir:
      raise evaluate.EvalError("give at least one --model or --workdir")
    prompts = evaluate.load_prompts(args.dataset, args.langs, limit=args.limit, manual_dir=args.manual_dir,
                                    data_dir=args.data_dir)
    by_id = {}
    for prompt in prompts:
      by_id.setdefault(prompt.id, {})[prompt.lang] = prompt.prompt
    langs = sorted({prompt.lang for prompt in prompts}, key=[p.lang for p in prompts].index)
    complete = [i for i, texts in by_id.items() if len(texts) == len(langs)]  # parallel in every language
    texts_by_lang = {lang: [by_id[i][lang] for i in complete] for lang in langs}
    results = {}
    for kind, specs in (("model", args.model), ("workdir", args.workdir)):
      for spec in specs:
        path, label = _labelled(spec)
        model, tokenizer, _, _ = load_source(**{"model_dir" if kind == "model" else "workdir": path})
        spectra = layer_spectra(last_token_states(model, tokenizer, texts_by_lang, batch_size=args.batch_size))
        results[label] = {k: v.tolist() for k, v in spectra.items()}
        print(f"consistency: {label}: σ1 share by layer {' '.join(f'{x:.3f}' for x in spectra['sigma1_share'])}")
    os.makedirs(args.out, exist_ok=True)
    record = {"dataset": args.dataset, "languages": langs, "prompts": len(complete), "models": results}
    write_atomically(os.path.join(args.out, "consistency.json"), json.dumps(record, indent=1).encode())
    plot_sigma1_share({k: v["sigma1_share"] for k, v in results.items()},
                      os.path.join(args.out, "sigma1_share_by_layer.png"), languages=len(langs),
                      title=f"Cross-lingual collinearity per layer: {os.path.basename(args.dataset)}, {len(complete)} prompts × "
                            f"{len(langs)} languages")

  return cli.run(body)


if __name__ == "__main__":
  import sys
  sys.exit(main())

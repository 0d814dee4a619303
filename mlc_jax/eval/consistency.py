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

``plot_sigma1_share`` draws σ1 share per layer for several models side by side.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

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


def plot_sigma1_share(curves: Mapping[str, Sequence[float]], path: str, *, languages: int | None = None,
                      title: str = "Cross-lingual collinearity per layer") -> None:
  """Lines of σ1 share per layer, one per model (``{model label: [layers]}``); ``languages`` adds the 1/L floor."""
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
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=7)
  fig.savefig(path, dpi=120)

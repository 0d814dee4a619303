"""Training metrics: averaged over each logging window, written to WORKDIR/metrics.jsonl and TensorBoard.

Per-language metrics arrive as per-language sums `by_language/<name>` `[K]` and counts `by_language/count`
(see `step.per_language_sums`); they are written as `<name>/<language>`, the mean over the window's
examples in that language (languages with no example in the window are left out).
"""
from __future__ import annotations

import json
import os
from collections import defaultdict

import numpy as np
from tensorboardX import SummaryWriter

from mlc_jax.train.step import PER_LANGUAGE_PREFIX

# Written only for steps that computed them (MLC runs every `aux_every` steps).
MLC_KEYS = ("mlc_loss", "sigma1_share")


class MetricsWriter:
  """Accumulates per-step metrics and writes their window means every `log_every` steps."""

  def __init__(self, workdir: str, *, log_every: int, languages: tuple[str, ...] = (), peak_flops: float | None = None):
    """`peak_flops`: the peak FLOP/s of all devices together; with it each record has `mfu`."""
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.log_every = max(1, log_every)
    self.languages = tuple(languages)
    self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
    self.last: dict = {}
    self._sums, self._counts = defaultdict(float), defaultdict(int)
    self._language_sums = defaultdict(lambda: np.zeros(len(self.languages)))
    self._tokens, self._seconds, self._flops = 0, 0.0, 0.0
    self.peak_flops = peak_flops

  def add(self, step: int, metrics: dict, *, tokens: int, seconds: float, flops: float = 0.0) -> dict | None:
    """Adds one step (its analytic model FLOPs `flops`); returns the written record on logging steps, else None."""
    applied = metrics.get("mlc_applied", 0.0) > 0
    for key, value in metrics.items():
      if key == "mlc_applied" or (key in MLC_KEYS and not applied):
        continue
      if key.startswith(PER_LANGUAGE_PREFIX):
        self._language_sums[key[len(PER_LANGUAGE_PREFIX):]] += np.asarray(value, np.float64)
        continue
      self._sums[key] += float(value)
      self._counts[key] += 1
    self._tokens += tokens
    self._seconds += seconds
    self._flops += flops
    if step % self.log_every:
      return None
    seconds = max(self._seconds, 1e-9)
    record = {"step": step, **{k: self._sums[k] / self._counts[k] for k in sorted(self._sums)},
              "tokens_per_s": self._tokens / seconds, "step_time_s": self._seconds / self._counts["loss"],
              "model_tflops_per_s": self._flops / seconds / 1e12, **self._per_language()}
    if self.peak_flops:
      record["mfu"] = self._flops / seconds / self.peak_flops
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    for key, value in record.items():
      if key != "step":
        self.tb.add_scalar(f"train/{key}", value, step)
    self.tb.flush()
    self._sums.clear(), self._counts.clear(), self._language_sums.clear()
    self._tokens, self._seconds, self._flops = 0, 0.0, 0.0
    self.last = record
    return record

  def _per_language(self) -> dict[str, float]:
    counts = self._language_sums.get("count")
    if counts is None:
      return {}
    return {f"{name}/{lang}": float(sums[i] / counts[i]) for name, sums in sorted(self._language_sums.items())
            if name != "count" for i, lang in enumerate(self.languages) if counts[i] > 0}

  def close(self):
    self.tb.close()

  def __enter__(self) -> "MetricsWriter":
    return self

  def __exit__(self, *exc):
    self.close()

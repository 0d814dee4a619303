"""Training metrics: averaged over each logging window, written to WORKDIR/metrics.jsonl and TensorBoard.

A window is `log_every` steps; the last step of a run (the final one, or the one a signal stopped at) closes the
window it is in, however short, so every step's metrics are written.

Per-language metrics arrive as per-language sums `by_language/<name>` `[K]` and counts `by_language/count`
(see `step.per_language_sums`); they are written as `<name>/<language>`, the mean over the window's
examples in that language (languages with no example in the window are left out).

On a URL workdir (`gs://…`) both files go through `epath` as `Rewritten` objects: an object cannot be appended to,
so each is rewritten whole, at most every `REWRITE_EVERY_S` (GCS takes about one write a second per object) and at
the end, metrics.jsonl also at every checkpoint (`flush`). tensorboardX's writer for URLs is replaced by one on
`epath`, so TensorBoard needs no client library of its own.
"""
from __future__ import annotations

import json
import math
import time
from collections import defaultdict

import numpy as np
from etils import epath
from tensorboardX import SummaryWriter, record_writer

from mlc_jax.train.step import PER_LANGUAGE_PREFIX
from mlc_jax.train.workdir import is_remote

# Written only for steps that computed them (MLC runs every `aux_every` steps).
MLC_KEYS = ("mlc_loss", "sigma1_share")
REWRITE_EVERY_S = 10.0


class Rewritten:
  """A file on an object store, which cannot be appended to: what was written is kept in memory and the whole object
  is rewritten on `flush`, at most every `min_interval_s` unless forced, and on `close`."""

  def __init__(self, path, initial: bytes = b"", *, min_interval_s: float = REWRITE_EVERY_S):
    self.path, self.min_interval_s = epath.Path(path), min_interval_s
    self._data, self._dirty, self._written_at = bytearray(initial), False, -math.inf

  def write(self, data: bytes) -> None:
    self._data += data
    self._dirty = True

  def flush(self, force: bool = False) -> None:
    now = time.monotonic()
    if self._dirty and (force or now - self._written_at >= self.min_interval_s):
      self.path.write_bytes(bytes(self._data))
      self._dirty, self._written_at = False, now

  def close(self) -> None:
    self.flush(force=True)


class _EventFiles:
  """tensorboardX's writer factory for URLs: event files written through `epath`."""

  def open(self, path: str) -> Rewritten:
    return Rewritten(path)

  def directory_check(self, path: str) -> None:
    epath.Path(path).mkdir(parents=True, exist_ok=True)


for _scheme in ("gs", "s3", "az"):
  record_writer.register_writer_factory(_scheme, _EventFiles())


class MetricsWriter:
  """Accumulates per-step metrics and writes their window means every `log_every` steps."""

  def __init__(self, workdir: str | None, *, log_every: int, languages: tuple[str, ...] = (),
               peak_flops: float | None = None):
    """`peak_flops`: the peak FLOP/s of all devices together; with it each record has `mfu`. `workdir` None writes
    nothing (the other processes of a multi-host run, whose URL workdir process 0 writes)."""
    self.path = None if workdir is None else epath.Path(workdir) / "metrics.jsonl"
    self._remote = None
    if self.path is not None and is_remote(self.path):
      self._remote = Rewritten(self.path, self.path.read_bytes() if self.path.exists() else b"")
    self.log_every = max(1, log_every)
    self.languages = tuple(languages)
    self.tb = None if workdir is None else SummaryWriter(str(epath.Path(workdir) / "tensorboard"))
    self.last: dict = {}
    self._sums, self._counts = defaultdict(float), defaultdict(int)
    self._language_sums = defaultdict(lambda: np.zeros(len(self.languages)))
    self._tokens, self._seconds, self._flops = 0, 0.0, 0.0
    self.peak_flops = peak_flops

  def add(self, step: int, metrics: dict, *, tokens: int, seconds: float, flops: float = 0.0,
          last: bool = False) -> dict | None:
    """Adds one step (its analytic model FLOPs `flops`); returns the written record on logging steps (every
    `log_every`-th, and the `last` step of a run, which closes a partial window), else None."""
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
    if step % self.log_every and not last:
      return None
    seconds = max(self._seconds, 1e-9)
    record = {"step": step, **{k: self._sums[k] / self._counts[k] for k in sorted(self._sums)},
              "tokens_per_s": self._tokens / seconds, "step_time_s": self._seconds / self._counts["loss"],
              "model_tflops_per_s": self._flops / seconds / 1e12, **self._per_language()}
    if self.peak_flops:
      record["mfu"] = self._flops / seconds / self.peak_flops
    self._write(record)
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

  def _write(self, record: dict) -> None:
    if self.path is None:
      return
    line = json.dumps(record) + "\n"
    if self._remote is None:
      with self.path.open("a") as f:
        f.write(line)
    else:
      self._remote.write(line.encode())
      self._remote.flush()
    for key, value in record.items():
      if key != "step":
        self.tb.add_scalar(f"train/{key}", value, record["step"])
    self.tb.flush()

  def flush(self) -> None:
    """Writes what is pending now (a URL workdir's files wait up to `REWRITE_EVERY_S` otherwise)."""
    if self._remote is not None:
      self._remote.flush(force=True)

  def close(self):
    if self.path is not None:
      self.flush()
      self.tb.close()

  def __enter__(self) -> "MetricsWriter":
    return self

  def __exit__(self, *exc):
    self.close()

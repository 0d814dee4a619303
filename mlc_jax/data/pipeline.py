"""The grain input pipeline: shuffled, endless, bucketed global batches, each process keeping its own rows.

Order of operations (a `grain.MapDataset`, so every position is addressable and resumable):
  range(N) → shuffle(seed) → repeat forever (reshuffled each epoch) → gather the tokenized rows →
  batch(global batch) → trim to the smallest length bucket that holds the batch → keep this process's rows.

Every process builds the same global batch and picks the bucket from all of its rows, so all hosts agree on
shapes; process p keeps rows `[p·B/P, (p+1)·B/P)`. A batch may straddle an epoch boundary (the stream is
one endless shuffled sequence), so an example can occur twice in such a batch. The iterator state
(`get_state()`, a small JSON dict) goes into every checkpoint; `set_state` resumes exactly.
"""
from __future__ import annotations

import functools
from typing import Sequence

import grain
import numpy as np

from mlc_jax.data.tokenized import DOMINANT_PAIR_KEYS, PAIR_KEYS, PROMPT_KEYS


def check_buckets(buckets: Sequence[int], limit: int, *, key: str) -> tuple[int, ...]:
  """Sorted bucket lengths ending with `limit` (the padded length); errors name `key`."""
  buckets = tuple(int(b) for b in buckets)
  if any(b <= 0 or b > limit for b in buckets) or list(buckets) != sorted(set(buckets)):
    raise ValueError(f"{key}={buckets}: bucket lengths must be increasing, positive and at most {limit}")
  return buckets if buckets and buckets[-1] == limit else (*buckets, limit)


def _smallest_bucket(length: int, buckets: tuple[int, ...]) -> int:
  return next(b for b in buckets if b >= length)


def trim_to_buckets(batch: dict[str, np.ndarray], *, pair_buckets: tuple[int, ...],
                    prompt_buckets: tuple[int, ...]) -> dict[str, np.ndarray]:
  """Cuts the padding of a right-padded batch down to the smallest bucket that holds its longest row.

  All pair sequences (and MPO's dominant pairs) share one length; the MLC prompt variants have their own.
  """
  pair_keys = [k for k in (*PAIR_KEYS, *DOMINANT_PAIR_KEYS) if k in batch]
  out = dict(batch)
  if pair_keys:  # (prompt-only data has no right-padded pairs)
    pair_len = max(int(batch[k].sum(-1).max()) for k in pair_keys
                   if k.endswith("_mask") and not k.endswith("_loss_mask"))
    t = _smallest_bucket(pair_len, pair_buckets)
    out.update({k: batch[k][:, :t] for k in pair_keys})
  if "prompt_mask" in batch:
    p = _smallest_bucket(int(batch["prompt_mask"].sum(-1).max()), prompt_buckets)
    out.update({k: batch[k][..., :p] for k in PROMPT_KEYS})
  return out


def _process_rows(batch: dict[str, np.ndarray], *, index: int, count: int) -> dict[str, np.ndarray]:
  per = len(batch["index"]) // count
  return {k: v[index * per:(index + 1) * per] for k, v in batch.items()}


def batch_iterator(data, global_batch_size: int, *, seed: int, shuffle: bool = True,
                   process_index: int = 0, process_count: int = 1, pair_buckets: Sequence[int] = (),
                   prompt_buckets: Sequence[int] = ()):
  """An endless, resumable iterator of this process's part of each global batch.

  Each batch is a dict with the keys of `data.batch_keys` (`index` = dataset positions), `[B/P, …]` rows, pair
  arrays trimmed to a `pair_buckets` length and prompt variants to a `prompt_buckets` length (the padded
  length of `data` is always the last bucket). The iterator has `get_state()` / `set_state(state)`.
  """
  n = len(data)
  if global_batch_size > n:
    raise ValueError(f"train.batch_size={global_batch_size} is larger than the dataset's {n} examples")
  if global_batch_size % process_count:
    raise ValueError(f"train.batch_size={global_batch_size} does not split over {process_count} processes")
  arrays = {k: getattr(data, k) for k in data.batch_keys}
  if "chosen_ids" in arrays:
    pair_buckets = check_buckets(pair_buckets, arrays["chosen_ids"].shape[1], key="data.pair_buckets")
  if "prompt_ids" in arrays:
    prompt_buckets = check_buckets(prompt_buckets, arrays["prompt_ids"].shape[-1], key="data.prompt_buckets")
  ds = grain.MapDataset.range(n)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = (ds.repeat(None)
        .map(lambda i: {k: a[i] for k, a in arrays.items()})
        .batch(global_batch_size, drop_remainder=True)
        .map(functools.partial(trim_to_buckets, pair_buckets=pair_buckets, prompt_buckets=prompt_buckets))
        .map(functools.partial(_process_rows, index=process_index, count=process_count)))
  return iter(ds.to_iter_dataset())

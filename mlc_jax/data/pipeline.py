"""The grain input pipeline: shuffled, endless, bucketed global batches, each process keeping its own rows.

Order of operations (a `grain.MapDataset`, so every position is addressable and resumable):
  range(N) → shuffle(seed) → repeat forever (reshuffled each epoch) → gather the tokenized rows →
  batch(global batch) → drop the MLC variant that is each pair's own prompt (when the data has `share_variant`) →
  pack the pairs into rows (when the data has a `layout`) or trim them to the smallest length bucket that holds the
  batch → trim the MLC variants likewise → keep this process's rows.

Packing (`data.pack_pairs`, `mlc_jax.data.packing`) replaces the pairs' `[B, T]` arrays by rows holding each pair's
prompt once and `pack_pairs` pairs per row and reorders the batch's examples so that the rows come out balanced.

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

from mlc_jax.data import packing
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


def drop_shared_variant(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Removes each example's prompt variant in its pair language (`[B, L, P]` → `[B, L - 1, P]`) and records it as
  `shared_variant` `[B]`: the train step reads that representation from the pair's prompt."""
  keep = np.arange(batch["prompt_ids"].shape[1])[None, :] != batch["pair_language"][:, None]
  b, num_langs = keep.shape
  out = {k: batch[k][keep].reshape(b, num_langs - 1, -1) for k in PROMPT_KEYS}
  return {**batch, **out, "shared_variant": batch["pair_language"].astype(np.int32)}


def _process_rows(batch: dict[str, np.ndarray], *, index: int, count: int) -> dict[str, np.ndarray]:
  """Process `index`'s part of every array (its examples, and with packing the rows that hold them)."""
  return {k: v[index * (len(v) // count):(index + 1) * (len(v) // count)] for k, v in batch.items()}


def batch_iterator(data, global_batch_size: int, *, seed: int, shuffle: bool = True,
                   process_index: int = 0, process_count: int = 1, pair_buckets: Sequence[int] = (),
                   prompt_buckets: Sequence[int] = ()):
  """An endless, resumable iterator of this process's part of each global batch.

  Each batch is a dict with the keys of `data.batch_keys` (`index` = dataset positions), `[B/P, …]` rows, pair
  arrays trimmed to a `pair_buckets` length and prompt variants to a `prompt_buckets` length (the padded
  length of `data` is always the last bucket); with `data.layout`, the pairs packed instead (`packing.pack`).
  The iterator has `get_state()` / `set_state(state)`.
  """
  n = len(data)
  if global_batch_size > n:
    raise ValueError(f"train.batch_size={global_batch_size} is larger than the dataset's {n} examples")
  if global_batch_size % process_count:
    raise ValueError(f"train.batch_size={global_batch_size} does not split over {process_count} processes")
  layout = getattr(data, "layout", None)
  arrays = {k: getattr(data, k) for k in getattr(data, "pipeline_keys", data.batch_keys)}
  if "chosen_ids" in arrays:
    pair_buckets = check_buckets(pair_buckets, arrays["chosen_ids"].shape[1], key="data.pair_buckets")
  if "prompt_ids" in arrays:
    prompt_buckets = check_buckets(prompt_buckets, arrays["prompt_ids"].shape[-1], key="data.prompt_buckets")
  if layout is not None and (global_batch_size // process_count) % layout.pairs_per_row:
    raise ValueError(f"data.pack_pairs={layout.pairs_per_row} does not divide the {global_batch_size // process_count} "
                     f"examples of each process's batch")
  ds = grain.MapDataset.range(n)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = (ds.repeat(None)
        .map(lambda i: {k: a[i] for k, a in arrays.items()})
        .batch(global_batch_size, drop_remainder=True))
  if getattr(data, "share_variant", False) and data.variants_match_pair_prompts:
    ds = ds.map(drop_shared_variant)
  if layout is not None:
    # Each process's examples are packed into rows of their own (the same shapes on every process).
    ds = ds.map(functools.partial(packing.pack, layout=layout, groups=process_count))
  ds = (ds.map(functools.partial(trim_to_buckets, pair_buckets=pair_buckets, prompt_buckets=prompt_buckets))
        .map(functools.partial(_process_rows, index=process_index, count=process_count)))
  return iter(ds.to_iter_dataset())

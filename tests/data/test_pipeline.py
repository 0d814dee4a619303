"""The grain pipeline: epochs, determinism, multi-host partition, buckets and exact resume."""
import json

import numpy as np
import pytest

from mlc_jax.data.tokenized import BATCH_KEYS, SequenceLimits, tokenize_examples, total_tokens
from mlc_jax.data.pipeline import batch_iterator, check_buckets
from mlc_jax.data.preferences import read_builtin
from mlc_jax.data.tokenizer import byte_tokenizer


@pytest.fixture(scope="module")
def data():
  examples = read_builtin(["en", "zh", "sw"])[:12]
  return tokenize_examples(examples, byte_tokenizer(), SequenceLimits(max_prompt_len=96, max_response_len=160,
                                                                      mlc_prompt_len=128))


def take(it, k):
  return [next(it) for _ in range(k)]


def assert_same_stream(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    keys = {*BATCH_KEYS, "chosen_scores_index", "rejected_scores_index"}  # (where the LM head runs)
    assert set(x) == set(y) == keys
    for key in keys:
      np.testing.assert_array_equal(x[key], y[key])


def test_every_example_once_per_epoch_and_rows_match_the_data(data):
  stream = np.concatenate([b["index"] for b in take(batch_iterator(data, 4, seed=3), 9)])  # 3 epochs of 12
  epochs = stream.reshape(3, 12)
  for order in epochs:
    assert sorted(order.tolist()) == list(range(12))
  assert epochs[0].tolist() != epochs[1].tolist()  # reshuffled every epoch
  batch = next(batch_iterator(data, 4, seed=3))
  row = batch["index"][1]
  width = batch["chosen_ids"].shape[1]
  np.testing.assert_array_equal(batch["chosen_ids"][1], data.chosen_ids[row, :width])
  assert data.chosen_mask[row, width:].sum() == 0  # only padding was trimmed


def test_determinism_and_seeds(data):
  assert_same_stream(take(batch_iterator(data, 4, seed=7), 5), take(batch_iterator(data, 4, seed=7), 5))
  a = [b["index"].tolist() for b in take(batch_iterator(data, 4, seed=7), 3)]
  b = [b["index"].tolist() for b in take(batch_iterator(data, 4, seed=8), 3)]
  assert a != b


@pytest.mark.parametrize("count", [2, 4])
def test_processes_partition_each_global_batch(data, count):
  global_batches = take(batch_iterator(data, 8, seed=1), 6)
  per_process = [take(batch_iterator(data, 8, seed=1, process_index=p, process_count=count), 6) for p in range(count)]
  for k, whole in enumerate(global_batches):
    parts = [per_process[p][k] for p in range(count)]
    assert all(len(part["index"]) == 8 // count for part in parts)
    joined = np.concatenate([part["index"] for part in parts])
    np.testing.assert_array_equal(joined, whole["index"])  # no overlap, nothing lost, same shapes everywhere
    assert len({part["chosen_ids"].shape for part in parts}) == 1


@pytest.mark.parametrize("k", [0, 1, 4, 7])
def test_resume_after_k_batches_equals_the_uninterrupted_stream(data, k):
  uninterrupted = take(batch_iterator(data, 4, seed=11, pair_buckets=(64, 128)), 10)
  it = batch_iterator(data, 4, seed=11, pair_buckets=(64, 128))
  take(it, k)
  state = json.loads(json.dumps(it.get_state()))
  restored = batch_iterator(data, 4, seed=11, pair_buckets=(64, 128))
  restored.set_state(state)
  assert_same_stream(take(restored, 10 - k), uninterrupted[k:])


def test_buckets_trim_padding_to_the_smallest_fitting_length(data):
  for batch in take(batch_iterator(data, 2, seed=0, pair_buckets=(64, 128, 192), prompt_buckets=(32, 64)), 12):
    t, p = batch["chosen_ids"].shape[1], batch["prompt_ids"].shape[2]
    longest = max(batch["chosen_mask"].sum(-1).max(), batch["rejected_mask"].sum(-1).max())
    assert t in (64, 128, 192, 256) and longest <= t and (t == 64 or longest > {128: 64, 192: 128, 256: 192}[t])
    assert p in (32, 64, 128) and batch["prompt_mask"].sum(-1).max() <= p
  with pytest.raises(ValueError, match=r"data.pair_buckets=\(128, 64\)"):
    check_buckets((128, 64), 256, key="data.pair_buckets")
  with pytest.raises(ValueError, match="at most 256"):
    check_buckets((512,), 256, key="data.pair_buckets")


def test_errors_and_token_count(data):
  with pytest.raises(ValueError, match=r"train.batch_size=13 is larger than the dataset's 12"):
    batch_iterator(data, 13, seed=0)
  with pytest.raises(ValueError, match="does not split over 3 processes"):
    batch_iterator(data, 4, seed=0, process_count=3)
  batch = next(batch_iterator(data, 3, seed=0, shuffle=False))
  rows = [0, 1, 2]
  assert batch["index"].tolist() == rows
  expected = data.chosen_mask[rows].sum() + data.rejected_mask[rows].sum() + data.prompt_mask[rows].sum()
  assert total_tokens(batch) == expected

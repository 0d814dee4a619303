"""Packing pairs into rows: every sequence and every scored token survives, rows are balanced, processes own theirs."""
import dataclasses

import numpy as np
import pytest

from mlc_jax.data import packing, pipeline, tokenized
from mlc_jax.data.preferences import load_preferences
from mlc_jax.data.tokenizer import byte_tokenizer

SIDES = ("chosen", "rejected")


@pytest.fixture(scope="module")
def data():
  examples, _ = load_preferences("builtin", None, "builtin")
  return tokenized.tokenize_examples(examples, byte_tokenizer(), tokenized.SequenceLimits(64, 48, 64))


def sequences_of_rows(batch, prefix=""):
  """{(example, side): (ids, positions, scored targets)} read back from packed rows."""
  out = {}
  pairs = batch[f"{prefix}prompt_last"].shape[1]
  for r in range(batch["rows_ids"].shape[0]):
    for j in range(pairs):
      segment = batch["rows_segments"][r, batch[f"{prefix}prompt_last"][r, j]]
      for branch, side in enumerate(SIDES, 1):
        keep = (batch["rows_segments"][r] == segment) & np.isin(batch["rows_branches"][r], [0, branch])
        slot = batch[f"{prefix}scores_slot"][r] == j * 2 + branch - 1
        out[r * pairs + j, side] = (batch["rows_ids"][r, keep], batch["rows_positions"][r, keep],
                                    batch[f"{prefix}scores_targets"][r, slot])
  return out


def plain_sequences(data, rows):
  return {(b, side): (getattr(data, f"{side}_ids")[i][getattr(data, f"{side}_mask")[i] > 0],
                      np.arange(getattr(data, f"{side}_mask")[i].sum()),
                      getattr(data, f"{side}_ids")[i][getattr(data, f"{side}_loss_mask")[i] > 0])
          for b, i in enumerate(rows) for side in SIDES}


def assert_same_sequences(got, want):
  assert got.keys() == want.keys()
  for key in want:
    for a, b in zip(got[key], want[key]):
      np.testing.assert_array_equal(a, b, err_msg=str(key))


def test_trees_hold_each_sequence_and_its_scored_tokens(data):
  trees = data.trees()
  batch = packing.as_rows({k: v for k, v in trees.items()}, "")
  assert_same_sequences(sequences_of_rows(batch), plain_sequences(data, range(len(data))))
  # The hidden state predicting a scored token is the one just before it in its own sequence.
  for i in range(len(data)):
    for index, target, slot in zip(*(trees[f"tree_scores_{k}"][i] for k in ("index", "targets", "slot"))):
      if slot < 0:
        continue
      side, position = SIDES[slot], trees["tree_positions"][i, index]
      assert trees["tree_branches"][i, index] in (0, slot + 1)
      assert getattr(data, f"{side}_ids")[i, position + 1] == target
      assert getattr(data, f"{side}_loss_mask")[i, position + 1] == 1
    assert (trees["tree_scores_slot"][i] >= 0).sum() == sum(getattr(data, f"{s}_loss_mask")[i].sum() for s in SIDES)


@pytest.mark.parametrize("pairs_per_row", [1, 2, 4])
def test_packing_keeps_every_sequence_and_balances_rows(data, pairs_per_row):
  layout = packing.RowLayout(SIDES, SIDES, pairs_per_row=pairs_per_row, multiple=16)
  rows = np.arange(8)
  batch = packing.pack({**{k: v[rows] for k, v in data.trees().items()}, "index": rows}, layout)
  assert batch["rows_ids"].shape[0] == 8 // pairs_per_row and batch["rows_ids"].shape[1] % 16 == 0
  assert sorted(batch["index"]) == list(rows)  # reordered, none lost
  assert_same_sequences(sequences_of_rows(batch), plain_sequences(data, batch["index"]))
  lengths = (batch["rows_segments"] > 0).sum(1)
  tree_len = data.trees()["tree_segments"][rows].sum(1)
  assert lengths.max() - lengths.min() <= tree_len.max()  # longest first into the shortest row
  plain = sum(getattr(data, f"{s}_mask")[rows].sum() for s in SIDES)
  assert packing.real_tokens(batch) == plain == tokenized.total_tokens({k: v for k, v in batch.items()})


def test_sides_and_scores_follow_the_layout(data):
  """SFT lays out the chosen branch only; a layout scores only its scored sides."""
  rows = np.arange(4)
  trees = {k: v[rows] for k, v in data.trees().items()}
  sft = packing.pack(trees, packing.RowLayout(("chosen",), ("chosen",)))
  assert set(np.unique(sft["rows_branches"])) == {0, 1}
  assert np.all(sft["scores_slot"][sft["scores_slot"] >= 0] % 2 == 0)
  unscored = packing.pack(trees, packing.RowLayout(SIDES, ()))
  assert not any(k.startswith("scores_") for k in unscored)
  with pytest.raises(ValueError, match="data.pack_pairs=3 does not divide"):
    packing.pack(trees, packing.RowLayout(SIDES, SIDES, pairs_per_row=3))


def test_each_process_packs_its_own_examples(data):
  layout = packing.RowLayout(SIDES, SIDES, pairs_per_row=2, multiple=8)
  it = pipeline.batch_iterator(dataclasses.replace(data, layout=layout), 8, seed=3)
  whole = next(it)
  parts = [next(pipeline.batch_iterator(dataclasses.replace(data, layout=layout), 8, seed=3, process_index=p,
                                        process_count=2)) for p in range(2)]
  assert all(part["rows_ids"].shape == (2, whole["rows_ids"].shape[1]) for part in parts)
  for part in parts:
    assert_same_sequences(sequences_of_rows(part), plain_sequences(data, part["index"]))
  assert sorted(np.concatenate([p["index"] for p in parts])) == sorted(whole["index"])


@pytest.mark.parametrize("packed", [True, False])
def test_the_shared_variant_is_dropped_from_the_prompt_variants(data, packed):
  assert data.variants_match_pair_prompts
  layout = packing.RowLayout(SIDES, SIDES) if packed else None
  batch = next(pipeline.batch_iterator(dataclasses.replace(data, layout=layout, share_variant=True), 4, seed=0))
  assert batch["prompt_ids"].shape[1] == len(data.languages) - 1
  if not packed:  # the plain step reads the variant's representation at the token before the response
    own = data.prompt_mask[batch["index"], data.pair_language[batch["index"]]].sum(-1)
    np.testing.assert_array_equal(np.argmax(batch["chosen_loss_mask"], axis=1), own)
  np.testing.assert_array_equal(batch["shared_variant"], batch["pair_language"])
  for b, i in enumerate(batch["index"]):
    others = [lang for lang in range(len(data.languages)) if lang != data.pair_language[i]]
    np.testing.assert_array_equal(batch["prompt_ids"][b], data.prompt_ids[i, others][:, :batch["prompt_ids"].shape[2]])
  full = sum(getattr(data, f"{s}_mask")[batch["index"]].sum() for s in SIDES) + data.prompt_mask[batch["index"]].sum()
  assert tokenized.total_tokens(batch) == full  # the shared variant's tokens still count


def test_different_prompts_are_refused(data):
  arrays = {k: getattr(data, k)[:2].copy() for k in tokenized.PAIR_KEYS}
  arrays["rejected_ids"][1, 0] += 1
  with pytest.raises(ValueError, match="example 1: its chosen and rejected sequences start with different prompts"):
    packing.tree_arrays(arrays)

"""MPO end to end: its data, the loss inside the train step against NumPy, the cached dominant side, the config."""
import json
import os

import jax
import numpy as np
import pytest
from paths import ROOT, SHARED_DATA
from train_helpers import compiled_step, numpy_logps, setup, small_config

from mlc_jax.config import ConfigError, load_config_file
from mlc_jax.data import pipeline, tokenized
from mlc_jax.data.preferences import MpoExample, PreferenceExample, load_mpo_pairs, read_builtin
from mlc_jax.data.tokenizer import byte_tokenizer
from mlc_jax.parallel.mesh import make_mesh
from mlc_jax.train import trainer
from mlc_jax.train.metrics import MetricsWriter
from mlc_jax.train.step import device_batch

needs_mpo_data = pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED_DATA, "mpo")),
                                    reason="../shared/data/mpo is not here")
LIMITS = tokenized.SequenceLimits(max_prompt_len=24, max_response_len=24, mlc_prompt_len=8)


def builtin_mpo_examples(targets=("zh", "sw", "bn")):
  """MPO examples from the built-in set: English pair dominant, the same responses under a translated prompt."""
  out = []
  for ex in read_builtin(["en", *targets]):
    lang = targets[ex.index % len(targets)]
    side = lambda code: PreferenceExample(ex.index, {code: ex.prompts[code]}, ex.chosen, ex.rejected, code)
    out.append(MpoExample(ex.index, dominant=side("en"), target=side(lang)))
  return out


def test_tokenize_mpo_gives_each_side_the_tokens_of_its_own_pair():
  examples = builtin_mpo_examples()
  tok = byte_tokenizer()
  data = tokenized.tokenize_mpo(examples, tok, LIMITS)
  target = tokenized.tokenize_examples([e.target for e in examples if e.target.pair_language == "zh"], tok, LIMITS)
  dominant = tokenized.tokenize_examples([e.dominant for e in examples], tok, LIMITS)
  zh = data.pair_language == data.languages.index("zh")
  for key in tokenized.PAIR_KEYS:
    np.testing.assert_array_equal(getattr(data, key)[zh], getattr(target, key))
    np.testing.assert_array_equal(getattr(data, f"dominant_{key}"), getattr(dominant, key))
  assert data.languages == ("zh", "sw", "bn") and data.dominant_languages == ("en",)
  assert [data.languages[i] for i in data.pair_language] == [e.target.pair_language for e in examples]
  batch = next(pipeline.batch_iterator(data, 4, seed=0))
  sides = ("chosen", "rejected", "dominant_chosen", "dominant_rejected")
  assert set(batch) == {*tokenized.MPO_BATCH_KEYS, *(f"{side}_{tokenized.SCORES_INDEX}" for side in sides)}


@needs_mpo_data
def test_qwen_data_has_chinese_as_its_dominant_language(tmp_path):
  examples, dropped, untranslated = load_mpo_pairs("mpo_pairs/qwen", "mpo", manual_dir=SHARED_DATA,
                                                   data_dir=str(tmp_path))
  dominant = [e.dominant.pair_language for e in examples]
  targets = {e.target.pair_language for e in examples}
  assert dominant.count("zh") > 0.9 * len(examples) and "en" in targets and "zh" not in targets
  assert len(examples) + sum(dropped.values()) + len(untranslated["en"]) == 600 and set(dropped) <= {"unknown"}
  assert set(untranslated) == {"en"} and all(e.target.pair_language != e.dominant.pair_language for e in examples)
  only_ko, *_ = load_mpo_pairs("mpo_pairs/qwen", "ko,ja", manual_dir=SHARED_DATA, data_dir=str(tmp_path))
  assert {e.target.pair_language for e in only_ko} == {"ko", "ja"}
  with pytest.raises(ValueError, match="MPO trains on an mpo_pairs dataset"):
    load_mpo_pairs("multijail", "mpo", manual_dir=SHARED_DATA, data_dir=str(tmp_path))


def mpo_config(*overrides):
  return small_config("objective.name='mpo'", "mlc.enabled=False", "data.source='tfds'",
                      "data.name='mpo_pairs/qwen'", "data.langs='mpo'", "objective.mpo.beta=1.5", *overrides)


def numpy_pool(hidden, mask, include_padding):
  hidden = np.asarray(hidden, np.float64)
  if include_padding:
    return hidden.mean(1)
  return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)


@pytest.mark.parametrize("pool_padding", [False, True])
def test_mpo_step_loss_equals_l1_plus_l2_from_numpy(pool_padding):
  """With the policy moved off the frozen reference, the step's L1, L2 and per-language sums equal NumPy's."""
  config = mpo_config(f"objective.mpo.pool_padding={pool_padding}", "objective.mpo.retention_weight=0.7")
  data = tokenized.tokenize_mpo(builtin_mpo_examples(), byte_tokenizer(), LIMITS)
  mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
  run, spec, state = setup(config, mesh, total_steps=2)
  noise = jax.random.split(jax.random.key(1), len(jax.tree.leaves(state.params)))
  moved = jax.tree.map(lambda p, k: p + 0.05 * jax.random.normal(k, p.shape, p.dtype), state.params,
                       jax.tree.unflatten(jax.tree.structure(state.params), list(noise)))
  state = state.replace(params=moved)
  batch = next(pipeline.batch_iterator(data, config.train.batch_size, seed=0))
  batch.pop("index")

  def stats(params, side):
    model = spec.policy_def.merge_model(params)
    ids, mask, loss_mask = (batch[f"{side}_{k}"] for k in ("ids", "mask", "loss_mask"))
    _, mean = numpy_logps(model(ids, mask), ids, loss_mask)
    return mean, numpy_pool(model.hidden_states(ids, mask), mask, pool_padding)

  (tc, _), (tr, _) = stats(moved["model"], "chosen"), stats(moved["model"], "rejected")
  (dc, ref_pool_c), (dr, ref_pool_r) = (stats(state.ref_params, f"dominant_{s}") for s in ("chosen", "rejected"))
  (_, pool_c), (_, pool_r) = (stats(moved["model"], f"dominant_{s}") for s in ("chosen", "rejected"))
  errors = (1.5 * (tc - tr) - (dc - dr)) ** 2
  retention = np.mean((np.concatenate([pool_c, pool_r]) - np.concatenate([ref_pool_c, ref_pool_r])) ** 2)

  _, metrics = compiled_step(run, spec, mesh, num_languages=len(data.languages))(state, device_batch(batch, mesh))
  assert retention > 1e-6  # the policy really moved
  # L1 squares differences of float32 log-prob averages of about -6 (absolute error ~1e-6 on gaps ~0.03).
  np.testing.assert_allclose(metrics["mpo_loss"], errors.mean(), rtol=1e-3)
  np.testing.assert_allclose(metrics["retention_loss"], retention, rtol=2e-5)
  np.testing.assert_allclose(metrics["loss"], errors.mean() + 0.7 * retention, rtol=1e-3)
  for i, lang in enumerate(data.languages):
    rows = batch["pair_language"] == i
    np.testing.assert_allclose(metrics["by_language/count"][i], rows.sum())
    np.testing.assert_allclose(metrics["by_language/mpo_loss"][i], errors[rows].sum(), rtol=1e-3)
    np.testing.assert_allclose(metrics["by_language/dominant_gap"][i], (dc - dr)[rows].sum(), atol=1e-5)


@needs_mpo_data
def test_qwen_mpo_trains_sharded_with_the_cached_dominant_side_as_with_a_frozen_copy(tmp_path, capsys):
  """Chinese-dominant data trains on a (2,2,2) mesh; precomputed (cached) dominant values equal a frozen copy."""
  common = ["train.steps=3", "train.batch_size=8", "train.log_every=1", f"data.manual_dir={SHARED_DATA}",
            f"data.data_dir={tmp_path / 'tfds'}", "optim.lr=1e-3", "optim.warmup_ratio=0.0"]
  cached = mpo_config(*common, "reference='precomputed'", "mesh.shape=(2,2,2)")
  frozen = mpo_config(*common, "reference='frozen_copy'", "mesh.shape=(1,8,1)")
  trainer.train(cached, str(tmp_path / "cached"))
  out = capsys.readouterr().out
  assert "dominant languages zh 581, en 15" in out and "mpo_dominant: computed" in out
  trainer.train(frozen, str(tmp_path / "frozen"))
  read = lambda run: [json.loads(line) for line in open(tmp_path / run / "metrics.jsonl")]
  a, b = read("cached"), read("frozen")
  # The frozen model's values are the same at every step, cached or not.
  np.testing.assert_allclose([r["dominant_gap"] for r in a], [r["dominant_gap"] for r in b], rtol=1e-5, atol=1e-7)
  # The losses agree while the trajectories do: at step 1 L2's gradient is zero up to float noise, which Adam
  # scales to full-size steps, so later steps drift apart by ~1 % (either way is a correct MPO run).
  # (reward_margin, about -5e-3, is a difference of float32 log-prob sums of about -6 per token: the two meshes sum in
  # another order, 3.6e-7 apart on one machine, so its floor is that of the sums, not 1e-7.)
  for key, atol in (("loss", 1e-7), ("mpo_loss", 1e-7), ("retention_loss", 1e-7), ("reward_margin", 2e-6)):
    np.testing.assert_allclose(a[0][key], b[0][key], rtol=1e-5, atol=atol, err_msg=key)
  assert a[0]["retention_loss"] == pytest.approx(0.0, abs=1e-9) and a[-1]["retention_loss"] > 0
  per_language = {k.split("/")[1] for r in a for k in r if k.startswith("dominant_gap/")}
  assert per_language and per_language <= {"en", "ko", "ja", "bn", "sw", "ar"}
  assert len(list((tmp_path / "cached" / "reference").glob("mpo_dominant-*.npz"))) == 1
  assert not (tmp_path / "frozen" / "reference").exists()


def test_metrics_writer_averages_per_language_over_the_window(tmp_path):
  writer = MetricsWriter(str(tmp_path), log_every=2, languages=("en", "ko", "sw"))
  step = lambda margin_sums, counts: {"loss": 1.0, "by_language/reward_margin": np.array(margin_sums),
                                      "by_language/count": np.array(counts)}
  assert writer.add(1, step([1.0, 6.0, 0.0], [1, 2, 0]), tokens=1, seconds=1.0) is None
  record = writer.add(2, step([3.0, 0.0, 0.0], [1, 1, 0]), tokens=1, seconds=1.0)
  writer.close()
  assert record["reward_margin/en"] == 2.0 and record["reward_margin/ko"] == 2.0
  assert "reward_margin/sw" not in record and "count/en" not in record


@pytest.mark.parametrize("overrides,message", [
    (["objective.name='mpo'"], "objective.name='mpo' trains on an mpo_pairs dataset"),
    (["objective.name='mpo'", "data.source='tfds'", "data.name='mpo_pairs/llama'"],
     "mlc.enabled=True: objective.name='mpo' reads MPO pairs .* which have no prompt variants"),
    (["data.source='tfds'", "data.name='mpo_pairs/gemma'"], "only objective.name='mpo' reads"),
    (["objective.name='mpo'", "data.source='tfds'", "data.name='mpo_pairs/qwen'", "mlc.enabled=False",
      "objective.mpo.pool_padding=True", "data.pair_buckets=(16,)"], "objective.mpo.pool_padding=True averages over"),
    (["objective.mpo.retention_weight=-1.0"], r"objective.mpo.retention_weight=-1.0 must be >= 0"),
])
def test_mpo_config_errors_name_the_key(tmp_path, overrides, message):
  config = small_config(*overrides)
  with pytest.raises(ConfigError, match=message):
    trainer.prepare(config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_mpo_config_has_the_papers_settings():
  load = lambda arg: load_config_file(os.path.join(ROOT, "configs", f"mpo.py:{arg}"))
  for model, name, beta, lr in [("llama3p1_8b", "llama", 1.0, 6e-7), ("gemma2_9b", "gemma", 1.5, 4e-7),
                                ("qwen2p5_7b", "qwen", 1.5, 6e-7)]:
    c = load(f"model={model}")
    assert (c.objective.name, c.objective.mpo.beta, c.optim.lr, c.train.epochs) == ("mpo", beta, lr, 2.0)
    assert c.data.name == f"mpo_pairs/{name}" and c.mlc.enabled is False and c.model.preset == model
  assert load("model=tiny,data=qwen").data.name == "mpo_pairs/qwen"
  with pytest.raises(ConfigError, match="model='gpt2'"):
    load("model=gpt2")
  with pytest.raises(ConfigError, match="data='mistral'"):
    load("model=tiny,data=mistral")

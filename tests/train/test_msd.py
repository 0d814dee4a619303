"""MSD end to end: the prompt-only data and the teacher's context, the objective's loss, sharded = one device, both
modes training through the CLI's loop, and config errors."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from paths import ROOT
from train_helpers import compiled_step, final_params, setup

from mlc_jax.config import ConfigError, RunConfig, apply_overrides, load_config_file
from mlc_jax.data import pipeline
from mlc_jax.data.tokenizer import byte_tokenizer, chat_prompts
from mlc_jax.losses import msd as msd_loss
from mlc_jax.objectives.msd import DEFAULT_TEACHER
from mlc_jax.parallel.mesh import make_mesh
from mlc_jax.train import trainer
from mlc_jax.train.step import device_batch

MSD = str(ROOT / "configs" / "msd.py")
SMALL = ["data.max_prompt_len=48", "objective.msd.teacher_prompt_len=96", "objective.msd.max_new_tokens=6",
         "data.langs=en,sw,zh", "train.batch_size=8", "train.log_every=1"]


def msd_config(*overrides, mode="on_policy"):
  return apply_overrides(load_config_file(f"{MSD}:model=tiny,mode={mode}"), [*SMALL, *overrides])


def prompt_data(config):
  run = RunConfig.parse(config)
  return run, run.objective.data_kind.load(run, byte_tokenizer())


def test_student_and_teacher_contexts():
  """The student sees the target prompt; the teacher the same prompt, its English translation and the instruction."""
  run, data = prompt_data(msd_config("data.max_prompt_len=320", "objective.msd.teacher_prompt_len=640"))
  from mlc_jax.data.prompts import load_prompts
  examples, targets, _ = load_prompts(run.data)
  assert targets == ("sw", "zh") and len(data) == len(examples) and set(data.pair_language) == {0, 1}
  tok = byte_tokenizer()
  decode = lambda ids, mask: tok.decode(ids[mask.astype(bool)])
  for i in (0, len(data) - 1):
    ex = examples[i]
    student = decode(data.student_prompt_ids[i], data.student_prompt_mask[i])
    teacher = decode(data.teacher_prompt_ids[i], data.teacher_prompt_mask[i])
    assert student == chat_prompts(tok, [ex.prompt])[0]
    assert ex.prompt in teacher and ex.english in teacher and "whether answering this request could cause harm" in teacher
    assert teacher == chat_prompts(tok, [DEFAULT_TEACHER.format(prompt=ex.prompt, english=ex.english)])[0]
    assert data.student_prompt_mask[i, -1] == 1 and data.teacher_prompt_mask[i, -1] == 1  # left padded
  assert data.truncation == {"student_prompt": 0, "teacher_prompt": 0}


def loss_terms(run, model, teacher, batch):
  objective = run.objective
  reference = jax.tree.map(jax.lax.stop_gradient, objective.reference_outputs(teacher, batch))
  return objective.loss(objective.outputs(model, batch), reference)


def fixed_responses(data, rows=4, n=6, seed=0):
  batch = {k: jnp.asarray(getattr(data, k)[:rows]) for k in data.batch_keys if k != "index"}
  rng = np.random.default_rng(seed)
  batch["response_ids"] = jnp.asarray(rng.integers(0, 256, (rows, n)), jnp.int32)
  batch["response_lengths"] = jnp.asarray([6, 3, 1, 5][:rows], jnp.int32)
  return batch


def test_the_loss_is_zero_when_both_contexts_are_the_same_and_equals_numpy_otherwise():
  config = msd_config("mesh.shape=(1,1,1)")
  run, data = prompt_data(config)
  _, spec, state = setup(config, make_mesh((1, 1, 1), devices=jax.devices()[:1]))
  model = spec.policy_def.merge_model(state.params["model"])
  batch = fixed_responses(data)
  same = {**batch, "teacher_prompt_ids": batch["student_prompt_ids"], "teacher_prompt_mask": batch["student_prompt_mask"]}
  np.testing.assert_allclose(loss_terms(run, model, model, same).losses, 0.0, atol=1e-6)
  # With the real contexts: the loss is the pure msd_loss of the two models' logits at the response positions.
  terms = loss_terms(run, model, model, batch)
  logits = lambda who: model.logits(run.objective._context(model, batch, who))
  lengths = np.asarray(batch["response_lengths"])
  response_mask = jnp.asarray(np.arange(6)[None] < lengths[:, None])
  expected = msd_loss.msd_loss(logits("student"), logits("teacher"), response_mask, top_k=run.objective.top_k)
  np.testing.assert_allclose(terms.losses, expected, rtol=1e-5, atol=1e-6)  # KL ~1e-3 from terms ~1: fp32 cancellation
  assert (np.asarray(terms.losses) > 0).all()


def test_the_streamed_loss_in_the_objective_equals_the_full_one():
  config = msd_config("mesh.shape=(1,1,1)")
  run, data = prompt_data(config)
  _, spec, state = setup(config, make_mesh((1, 1, 1), devices=jax.devices()[:1]))
  full = spec.policy_def.merge_model(state.params["model"])
  chunked = nnx.merge(nnx.split(full)[0], nnx.state(full))
  chunked.vocab_chunk = 64
  batch = fixed_responses(data)
  np.testing.assert_allclose(loss_terms(run, chunked, chunked, batch).losses, loss_terms(run, full, full, batch).losses,
                             rtol=1e-5, atol=1e-6)


def run_steps(config, mesh, steps):
  run, spec, state = setup(config, mesh, steps)
  data = run.objective.data_kind.load(run, byte_tokenizer())
  sample = run.objective.sampling_step(spec, run, mesh, byte_tokenizer())
  step_fn = compiled_step(run, spec, mesh, num_languages=len(data.languages))
  iterator = pipeline.batch_iterator(data, run.train.batch_size, seed=0)
  history = []
  for i in range(steps):
    batch = device_batch(next(iterator), mesh)
    batch, = sample(state.params["model"], (batch,), i)
    history.append(jax.device_get(batch["response_ids"]))
    state, metrics = step_fn(state, batch)
    history.append(jax.device_get(metrics))
  return jax.tree.map(np.asarray, jax.device_get(state.params)), history


def test_an_on_policy_step_on_a_2x2x2_mesh_equals_one_device():
  config = msd_config("objective.msd.temperature=1.0", "optim.lr=1e-3", "optim.warmup_ratio=0.0")
  params, history = run_steps(config, make_mesh((2, 2, 2)), steps=2)
  ref_params, ref_history = run_steps(config, make_mesh((1, 1, 1), devices=jax.devices()[:1]), steps=2)
  np.testing.assert_array_equal(history[0], ref_history[0])  # the same samples from the same seed and step
  np.testing.assert_array_equal(history[2], ref_history[2])
  for ours, ref in zip(history[1::2], ref_history[1::2]):
    np.testing.assert_allclose(ours["loss"], ref["loss"], rtol=1e-4)
    np.testing.assert_allclose(ours["by_language/kl"], ref["by_language/kl"], rtol=1e-4, atol=1e-6)
  # Sums split across devices are reordered (~1e-7 relative); Adam scales the tiny KL gradients up to lr-sized steps,
  # so a parameter whose gradient is rounding noise can end a few percent of lr (1e-3) apart (2.1e-5 seen).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=5e-5), params, ref_params)


@pytest.mark.parametrize("mode", ["on_policy", "off_policy"])
def test_each_mode_trains_through_the_loop(tmp_path, mode):
  config = msd_config("train.steps=3", "mesh.shape=(1,-1,1)", "optim.lr=1e-2", mode=mode)
  last = trainer.train(config, str(tmp_path))
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in records] == [1, 2, 3] and np.isfinite(last["loss"])
  for key in ("msd_loss", "kl", "dpsw_weight_raw", "dpsw_weight_spread", "sample_length", "kl/sw", "kl/zh"):
    assert key in last, key
  assert ("sampling_share" in last) == (mode == "on_policy")
  cached = list((tmp_path / "reference").glob("msd_teacher_samples-*.npz"))
  assert len(cached) == (mode == "off_policy")
  if cached:
    with np.load(cached[0]) as samples:
      assert samples["response_ids"].shape == (84, 6) and (samples["response_lengths"] <= 6).all()  # 42 rows × 2


def test_resample_every_samples_once_per_block_and_resumes_exactly_inside_a_block(tmp_path):
  """With resample_every=2 the student samples before steps 1 and 3 only (for two steps' prompts each); a run
  stopped after step 3 (inside the second block) resumes to the same final parameters and metrics."""
  config = msd_config("train.steps=4", "mesh.shape=(1,-1,1)", "optim.lr=1e-2", "objective.msd.resample_every=2",
                      "checkpoint.every=1", "checkpoint.async_save=False")

  class Stop(Exception):
    pass

  def stop_after_3(step, state):
    if step == 3:
      raise Stop

  with pytest.raises(Stop):
    trainer.train(config, str(tmp_path / "stopped"), on_step=stop_after_3)
  resumed = trainer.train(config, str(tmp_path / "stopped"))
  straight = trainer.train(config, str(tmp_path / "straight"))
  records = [json.loads(line) for line in open(tmp_path / "straight" / "metrics.jsonl")]
  assert [r["sampling_share"] > 0 for r in records] == [True, False, True, False]
  resumed_records = [json.loads(line) for line in open(tmp_path / "stopped" / "metrics.jsonl")]
  assert [r["step"] for r in resumed_records] == [1, 2, 3, 4]
  for key in ("loss", "kl", "sample_length"):
    assert resumed[key] == straight[key], key
    assert [r[key] for r in resumed_records] == [r[key] for r in records], key
  jax.tree.map(np.testing.assert_array_equal, final_params(tmp_path / "stopped", 4),
               final_params(tmp_path / "straight", 4))


def test_a_block_of_batches_is_sampled_with_the_keys_of_single_steps():
  """Sampling two steps' prompts in one call gives each row the samples it gets when its step samples alone."""
  config = msd_config("objective.msd.temperature=1.0", "mesh.shape=(1,1,1)")
  mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
  run, spec, state = setup(config, mesh, 2)
  data = run.objective.data_kind.load(run, byte_tokenizer())
  sample = run.objective.sampling_step(spec, run, mesh, byte_tokenizer())
  iterator = pipeline.batch_iterator(data, run.train.batch_size, seed=0)
  first, second = (device_batch(next(iterator), mesh) for _ in range(2))
  params = state.params["model"]
  together = sample(params, (first, second), 4)
  alone = sample(params, (first,), 4)[0], sample(params, (second,), 5)[0]
  for a, b in zip(together, alone):
    np.testing.assert_array_equal(a["response_ids"], b["response_ids"])
    np.testing.assert_array_equal(a["response_lengths"], b["response_lengths"])
  assert not np.array_equal(together[0]["response_ids"], sample(params, (first,), 5)[0]["response_ids"])


@pytest.mark.parametrize("override,message", [
    ("objective.msd.top_k=1", "objective.msd.top_k=1 must be >= 2"),
    ("objective.msd.mode='sometimes'", "objective.msd.mode='sometimes' is not one of on_policy, off_policy"),
    ("objective.msd.teacher_template='{prompt} only'", "must contain exactly the fields {prompt} and {english}"),
    ("objective.msd.top_p=0.0", "objective.msd.top_p=0.0 must be in (0.0, 1.0]"),
    ("objective.msd.resample_every=0", "objective.msd.resample_every=0 must be > 0"),
    ("reference='precomputed'", "needs its teacher (the frozen initial model) live in every step"),
    ("mlc.enabled=True", "which have no prompt variants"),
])
def test_bad_msd_values_name_the_key(tmp_path, override, message):
  with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                     .replace("]", r"\]").replace("{", r"\{").replace("}", r"\}")):
    trainer.prepare(msd_config(override), str(tmp_path / "w"))


@pytest.mark.parametrize("langs,message", [("sw,zh", "must include 'en'"), ("en", "at least one target language")])
def test_the_languages_need_english_and_a_target(tmp_path, langs, message):
  with pytest.raises(ConfigError, match=message):
    trainer.prepare(msd_config(f"data.langs={langs}"), str(tmp_path / "w"))

"""The training loop: validate, build, (resume), precompute references, step, log, checkpoint.

Read top to bottom, `run` is the whole recipe. Everything that can be wrong with the config or the data is
found before the workdir is touched; a resumed run continues exactly where the last complete checkpoint was.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import time

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from mlc_jax.data import batching, pipeline
from mlc_jax.data.languages import resolve_languages
from mlc_jax.data.preferences import load_mpo_pairs, load_preferences
from mlc_jax.data.tokenizer import load_tokenizer
from mlc_jax.parallel.mesh import make_mesh
from mlc_jax.train import checkpointing, config_lib
from mlc_jax.train.config_lib import ConfigError
from mlc_jax.train.metrics import MetricsWriter
from mlc_jax.train.objective import Objective
from mlc_jax.train.reference import precompute
from mlc_jax.train.state import init_train_state
from mlc_jax.train.step import batch_sharding, make_reference_fn, make_train_step, split_micro_batches, to_device
from mlc_jax.train.validate import mlc_layer, validate

# Fault injection for the resume tests: SIGKILL this process right after finishing the given step.
KILL_AT_STEP_ENV = "MLC_JAX_FAULT_KILL_AT_STEP"


class NonFiniteLoss(RuntimeError):
  pass


class Preempted(RuntimeError):
  pass


@dataclasses.dataclass
class Prepared:
  """The validated inputs of a run (nothing written yet)."""

  model_cfg: object
  mesh_shape: tuple[int, ...]
  data: batching.TokenizedData | batching.MpoTokenizedData
  tokenizer: object
  total_steps: int


def prepare(config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool = False) -> Prepared:
  """Validates the config, the data and the workdir; raises `ConfigError` naming the key. Writes nothing."""
  model_cfg, mesh_shape = validate(config, jax.device_count())
  try:
    tokenizer = load_tokenizer(config.tokenizer or config.model.hf_path or None)
  except (OSError, ValueError) as e:
    raise ConfigError(f"tokenizer: {e}") from e
  if len(tokenizer) > model_cfg.vocab_size:
    raise ConfigError(f"tokenizer: {len(tokenizer)} tokens do not fit the model's vocab_size "
                      f"{model_cfg.vocab_size} (model.preset={config.model.preset!r})")
  limits = batching.SequenceLimits(config.data.max_prompt_len, config.data.max_response_len,
                                   config.data.mlc_prompt_len)
  data = _load_data(config, tokenizer, limits)
  if config.train.batch_size > len(data):
    raise ConfigError(f"train.batch_size={config.train.batch_size} is larger than the {len(data)} examples")
  try:
    pipeline.check_buckets(config.data.pair_buckets, limits.pair_len, key="data.pair_buckets")
    pipeline.check_buckets(config.data.prompt_buckets, limits.mlc_prompt_len, key="data.prompt_buckets")
  except ValueError as e:
    raise ConfigError(str(e)) from e
  steps_per_epoch = len(data) // config.train.batch_size
  total = config.train.steps if config.train.steps > 0 else int(round(config.train.epochs * steps_per_epoch))

  saved_config = os.path.join(workdir, "config.json")
  if os.path.isfile(saved_config):
    with open(saved_config) as f:
      differences = config_lib.run_altering_differences(json.load(f), json.loads(config.to_json()))
    if differences and not allow_config_change:
      raise ConfigError(f"{workdir} holds a run with a different config ({', '.join(differences)}); use a new "
                        f"--workdir, or --allow_config_change to resume anyway")
  try:
    eval_langs = resolve_languages(config.eval.langs, key="eval.langs")
  except ValueError as e:
    raise ConfigError(str(e)) from e
  unseen = [lang for lang in eval_langs if lang not in data.seen_languages]
  print(f"data: truncated {data.truncation}; evaluation languages unseen in training: {', '.join(unseen) or 'none'}")
  return Prepared(model_cfg, mesh_shape, data, tokenizer, max(total, 1))


def _load_data(config, tokenizer, limits: batching.SequenceLimits):
  """The tokenized training set: MPO pairs for objective.base='mpo', else preference pairs with variants."""
  d = config.data
  try:
    if config.objective.base == "mpo":
      examples, dropped = load_mpo_pairs(d.name, d.langs, manual_dir=d.manual_dir, data_dir=d.data_dir)
    else:
      examples, langs = load_preferences(d.source, d.path or None, d.langs, empty_responses="keep", name=d.name,
                                         manual_dir=d.manual_dir, data_dir=d.data_dir)
  except (OSError, ValueError) as e:
    raise ConfigError(f"data: {e}") from e
  if config.objective.base != "mpo":
    print(f"data: {len(examples)} pairs, languages {', '.join(langs)}")
    return batching.tokenize_examples(examples, tokenizer, limits)
  data = batching.tokenize_mpo(examples, tokenizer, limits)
  count = lambda codes, which: ", ".join(f"{code} {int((which == i).sum())}" for i, code in enumerate(codes))
  print(f"data: {len(data)} MPO pairs from {d.name}; dominant languages "
        f"{count(data.dominant_languages, data.dominant_language)}; target languages "
        f"{count(data.languages, data.pair_language)}"
        + (f"; left out (target not in data.langs): {dropped}" if dropped else ""))
  return data


def run(config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool = False) -> dict:
  """Trains to `total_steps` (resuming if WORKDIR has checkpoints); returns the last logged metrics."""
  prep = prepare(config, workdir, allow_config_change=allow_config_change)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config_lib.to_json(config))

  mesh = make_mesh(prep.mesh_shape)
  print(f"mesh {dict(mesh.shape)} over {jax.device_count()} {jax.devices()[0].platform} device(s); "
        f"model {prep.model_cfg.num_params() / 1e6:.2f}M parameters; {prep.total_steps} steps")
  built = init_train_state(config, prep.model_cfg, mesh, prep.total_steps)
  obj = Objective.from_config(config, mlc_layer(config, prep.model_cfg), languages=prep.data.languages)
  iterator = pipeline.batch_iterator(prep.data, config.train.batch_size, seed=config.train.seed,
                                     process_index=jax.process_index(), process_count=jax.process_count(),
                                     pair_buckets=config.data.pair_buckets, prompt_buckets=config.data.prompt_buckets)
  ckpt = checkpointing.manager(workdir, keep=config.checkpoint.keep, every=config.checkpoint.every,
                               async_save=config.checkpoint.async_save)
  state, built.state = built.state, None
  reference = None
  if config.reference == "precomputed" and obj.needs_reference:  # from the initial weights, before any resume
    micro = config.train.batch_size // config.train.grad_accum
    name = "mpo_dominant" + ("_padded" if obj.pool_padding else "") if obj.base == "mpo" else "ref_logps"
    reference = precompute(make_reference_fn(built, obj, mesh), state.params["model"], prep.data,
                           input_keys=obj.reference_inputs, output_keys=obj.reference_keys, batch_size=micro,
                           mesh=mesh, cache_dir=os.path.join(workdir, "reference"), name=name,
                           model_identity=_model_identity(config, prep.model_cfg))
  if ckpt.latest_step() is not None:
    state, data_state = checkpointing.restore(ckpt, ckpt.latest_step(), state, built.shardings)
    iterator.set_state(data_state)
    print(f"resumed from {workdir}/checkpoints at step {int(state.step)}")

  train_step = make_train_step(built, obj, aux_every=config.mlc.aux_every, mesh=mesh)
  sharding = batch_sharding(mesh, accumulated=True)
  kill_at = int(os.environ.get(KILL_AT_STEP_ENV, "0"))
  preempted = []
  previous_handler = signal.signal(signal.SIGTERM, lambda *_: preempted.append(True))
  writer = MetricsWriter(workdir, log_every=config.train.log_every, languages=prep.data.languages)
  step = int(state.step)
  try:
    with tqdm(total=prep.total_steps, initial=step, desc="train", unit="step", dynamic_ncols=True) as bar:
      while step < prep.total_steps:
        host_batch = next(iterator)
        tokens = batching.total_tokens(host_batch)
        index = host_batch.pop("index")
        if reference is not None:
          host_batch.update({f"ref_{k}": v[index] for k, v in reference.items()})
        batch = to_device(split_micro_batches(host_batch, config.train.grad_accum), sharding)
        start = time.perf_counter()
        state, metrics = train_step(state, batch)
        metrics = jax.device_get(metrics)
        elapsed = time.perf_counter() - start
        step += 1
        if not np.isfinite(metrics["loss"]):
          parts = ", ".join(f"{k} {v}" for k, v in metrics.items() if k.endswith("_loss"))
          raise NonFiniteLoss(f"step {step}: the loss is {metrics['loss']} ({parts}); stopping without saving "
                              f"this state. The last good checkpoint is step {ckpt.latest_step()}")
        logged = writer.add(step, metrics, tokens=tokens, seconds=elapsed)
        if logged:
          bar.set_postfix({k: f"{logged[k]:.4g}" for k in ("loss", "reward_acc", "tokens_per_s") if k in logged})
        bar.update(1)
        checkpointing.save(ckpt, step, state, iterator.get_state(), force=step == prep.total_steps)
        if kill_at and step == kill_at:
          os.kill(os.getpid(), signal.SIGKILL)
        if preempted:
          if ckpt.latest_step() != step:
            checkpointing.save(ckpt, step, state, iterator.get_state(), force=True)
          ckpt.wait_until_finished()
          raise Preempted(f"SIGTERM: saved a checkpoint at step {step} in {workdir}/checkpoints; run the same "
                          f"command again to resume")
    ckpt.wait_until_finished()
  finally:
    signal.signal(signal.SIGTERM, previous_handler)
    writer.close()
    ckpt.close()
  print(f"done: {step} steps; checkpoints in {os.path.join(workdir, 'checkpoints')}, metrics in "
        f"{os.path.join(workdir, 'metrics.jsonl')}")
  return writer.last


def _model_identity(config, model_cfg) -> dict:
  return {"model": dataclasses.asdict(model_cfg), "hf_path": os.path.abspath(config.model.hf_path)
          if config.model.hf_path else "", "init_seed": config.model.init_seed, "dtype": config.model.dtype,
          "param_dtype": config.model.param_dtype, "vocab_chunk": config.model.vocab_chunk}


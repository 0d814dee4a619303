"""The training loop: validate, build, (resume), precompute references, step, log, checkpoint.

Read top to bottom, `train` is the whole recipe. Everything that can be wrong with the config or the data is
found before the workdir is touched; a resumed run continues exactly where the last complete checkpoint was.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from mlc_jax.config import ConfigError, RunConfig, run_altering_differences, to_json, validate
from mlc_jax.data import batching, pipeline
from mlc_jax.data.languages import resolve_languages
from mlc_jax.data.tokenizer import load_tokenizer
from mlc_jax.parallel.mesh import make_mesh, num_slices
from mlc_jax.train import checkpointing
from mlc_jax.train.metrics import MetricsWriter
from mlc_jax.train.reference import precompute
from mlc_jax.train.state import TrainState, abstract_train_state, init_train_state, initial_model_params
from mlc_jax.train.step import batch_sharding, make_reference_fn, make_train_step, split_micro_batches, to_device

# Called after every completed step with (step, state); the tests install one to inject faults.
StepHook = Callable[[int, TrainState], None]


class NonFiniteLoss(RuntimeError):
  pass


class Preempted(RuntimeError):
  pass


@dataclasses.dataclass
class Prepared:
  """The validated inputs of a run (nothing written yet)."""

  run: RunConfig
  model_cfg: object
  mesh_shape: tuple[int, ...]
  data: object  # the objective's tokenized dataset (`batching.TokenizedData`, `MpoTokenizedData`, …)
  tokenizer: object
  total_steps: int


def prepare(config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool = False) -> Prepared:
  """Validates the config, the data and the workdir; raises `ConfigError` naming the key. Writes nothing."""
  run, model_cfg, mesh_shape = validate(config, jax.device_count(), num_slices(jax.devices()))
  try:
    tokenizer = load_tokenizer(run.tokenizer or run.model.hf_path or None)
  except (OSError, ValueError) as e:
    raise ConfigError(f"tokenizer: {e}") from e
  if len(tokenizer) > model_cfg.vocab_size:
    raise ConfigError(f"tokenizer: {len(tokenizer)} tokens do not fit the model's vocab_size "
                      f"{model_cfg.vocab_size} (model.preset={run.model.preset!r})")
  data = run.objective.data_kind.load(run.data, tokenizer)
  if run.train.batch_size > len(data):
    raise ConfigError(f"train.batch_size={run.train.batch_size} is larger than the {len(data)} examples")
  steps_per_epoch = len(data) // run.train.batch_size
  total = run.train.steps if run.train.steps > 0 else int(round(run.train.epochs * steps_per_epoch))

  saved_config = os.path.join(workdir, "config.json")
  if os.path.isfile(saved_config):
    with open(saved_config) as f:
      differences = run_altering_differences(json.load(f), json.loads(config.to_json()))
    if differences and not allow_config_change:
      raise ConfigError(f"{workdir} holds a run with a different config ({', '.join(differences)}); use a new "
                        f"--workdir, or --allow_config_change to resume anyway")
  try:
    eval_langs = resolve_languages(run.eval.langs, key="eval.langs")
  except ValueError as e:
    raise ConfigError(str(e)) from e
  unseen = [lang for lang in eval_langs if lang not in data.seen_languages]
  print(f"data: truncated {data.truncation}; evaluation languages unseen in training: {', '.join(unseen) or 'none'}")
  return Prepared(run, model_cfg, mesh_shape, data, tokenizer, max(total, 1))


def train(config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool = False,
        on_step: StepHook | None = None) -> dict:
  """Trains to `total_steps` (resuming if WORKDIR has checkpoints); returns the last logged metrics."""
  prep = prepare(config, workdir, allow_config_change=allow_config_change)
  run, objective = prep.run, prep.run.objective
  mlc = run.mlc if run.mlc.enabled else None
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(to_json(config))

  mesh = make_mesh(prep.mesh_shape)
  print(f"mesh {dict(mesh.shape)} over {jax.device_count()} {jax.devices()[0].platform} device(s); "
        f"model {prep.model_cfg.num_params() / 1e6:.2f}M parameters; {prep.total_steps} steps")
  spec = abstract_train_state(run, prep.model_cfg, mesh, prep.total_steps)
  iterator = pipeline.batch_iterator(prep.data, run.train.batch_size, seed=run.train.seed,
                                     process_index=jax.process_index(), process_count=jax.process_count(),
                                     pair_buckets=run.data.pair_buckets, prompt_buckets=run.data.prompt_buckets)
  ckpt = checkpointing.manager(workdir, keep=run.checkpoint.keep, every=run.checkpoint.every,
                               async_save=run.checkpoint.async_save)
  reference = None
  if run.reference == "precomputed" and objective.reference_keys:  # from the initial weights, before any resume
    reference = precompute(make_reference_fn(spec, objective, mesh), lambda: initial_model_params(spec, run),
                           prep.data, input_keys=objective.reference_inputs, output_keys=objective.reference_keys,
                           batch_size=run.micro_batch_size, mesh=mesh, name=objective.reference_cache_name,
                           cache_dir=os.path.join(workdir, "reference"),
                           model_identity=_model_identity(run, prep.model_cfg))
  if ckpt.latest_step() is not None:  # restored straight into the sharded layout; no initial state is built
    state, data_state = checkpointing.restore(ckpt, ckpt.latest_step(), spec.abstract)
    iterator.set_state(data_state)
    print(f"resumed from {workdir}/checkpoints at step {int(state.step)}")
  else:
    state = init_train_state(spec, run)

  train_step = make_train_step(spec, objective, mlc, mesh=mesh, num_languages=len(prep.data.languages))
  sharding = batch_sharding(mesh, accumulated=True)
  preempted = []
  previous_handler = signal.signal(signal.SIGTERM, lambda *_: preempted.append(True))
  writer = MetricsWriter(workdir, log_every=run.train.log_every, languages=prep.data.languages)
  step = int(state.step)
  try:
    with tqdm(total=prep.total_steps, initial=step, desc="train", unit="step", dynamic_ncols=True) as bar:
      while step < prep.total_steps:
        host_batch = next(iterator)
        tokens = batching.total_tokens(host_batch)
        index = host_batch.pop("index")
        if reference is not None:
          host_batch.update({f"ref_{k}": v[index] for k, v in reference.items()})
        batch = to_device(split_micro_batches(host_batch, run.train.grad_accum), sharding)
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
        if on_step is not None:
          on_step(step, state)
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


def _model_identity(run: RunConfig, model_cfg) -> dict:
  m = run.model
  return {"model": dataclasses.asdict(model_cfg), "hf_path": os.path.abspath(m.hf_path) if m.hf_path else "",
          "init_seed": m.init_seed, "dtype": m.dtype, "param_dtype": m.param_dtype, "vocab_chunk": m.vocab_chunk}


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
from etils import epath
from tqdm import tqdm

from mlc_jax.config import ConfigError, RunConfig, run_altering_differences, to_json, validate
from mlc_jax.data import pipeline, tokenized
from mlc_jax.data.languages import resolve_languages
from mlc_jax.data.tokenizer import check_fits_vocab, load_tokenizer
from mlc_jax.models.hf_io import check_weights
from mlc_jax.parallel import devices
from mlc_jax.parallel.mesh import make_mesh, num_slices
from mlc_jax.train import checkpointing
from mlc_jax.train import workdir as workdir_lib
from mlc_jax.train.batches import SamplingTime, TrainBatches
from mlc_jax.train.metrics import MetricsWriter
from mlc_jax.train.reference import precompute
from mlc_jax.train.state import TrainState, abstract_train_state, init_train_state, initial_model_params
from mlc_jax.train.step import device_batch, make_precompute_fn, make_train_step, step_flops
from mlc_jax.train.watchdog import StepWatchdog

# Called after every completed step with (step, state); the tests install one to inject faults.
StepHook = Callable[[int, TrainState], None]


class NonFiniteLoss(RuntimeError):
  pass


class Preempted(RuntimeError):
  """SIGTERM: a checkpoint was saved at the step reached."""


class Interrupted(RuntimeError):
  """Ctrl-C (SIGINT): a checkpoint was saved at the step reached."""


@dataclasses.dataclass(frozen=True)
class _Dispatched:
  """A train step handed to the devices whose metrics (device arrays) the loop has not fetched yet."""

  step: int
  metrics: dict
  tokens: int
  flops: float
  started: float  # perf_counter when the loop began preparing its batch
  host_batch_s: float  # how long the loop waited for its batch (prefetched: ~0)
  sampling: SamplingTime | None


@dataclasses.dataclass
class Prepared:
  """The validated inputs of a run (nothing written yet)."""

  run: RunConfig
  model_cfg: object
  mesh_shape: tuple[int, ...]
  data: object  # the objective's tokenized dataset (`tokenized.TokenizedData`, `MpoTokenizedData`, …)
  tokenizer: object
  total_steps: int


def prepare(config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool = False) -> Prepared:
  """Validates the config, the data and the workdir; raises `ConfigError` naming the key. Writes nothing."""
  run, model_cfg, mesh_shape = validate(config, jax.device_count(), num_slices(jax.devices()))
  try:
    tokenizer = load_tokenizer(run.tokenizer or run.model.hf_path or None)
  except (OSError, ValueError) as e:
    raise ConfigError(f"tokenizer: {e}") from e
  hf_path = run.model.hf_path
  check_fits_vocab(tokenizer, model_cfg.vocab_size, model_source=f"model.hf_path={hf_path!r}" if hf_path else
                   f"model.preset={run.model.preset!r}", tokenizer_source=f"tokenizer={run.tokenizer!r}"
                   if run.tokenizer or not hf_path else f"tokenizer='' (model.hf_path={hf_path!r})")
  if run.model.hf_path:
    try:
      check_weights(run.model.hf_path)
    except (OSError, ValueError) as e:
      raise ConfigError(f"model.hf_path: {e}") from e
  data = run.objective.data_kind.load(run, tokenizer)
  if run.mlc.enabled and len(data.languages) < 2:
    raise ConfigError(f"mlc.enabled=True needs at least 2 languages in data.langs to make consistent; got "
                      f"{list(data.languages)} (or set mlc.enabled=False)")
  if run.train.batch_size > len(data):
    raise ConfigError(f"train.batch_size={run.train.batch_size} is larger than the {len(data)} examples")
  steps_per_epoch = len(data) // run.train.batch_size
  total = run.train.steps if run.train.steps > 0 else int(round(run.train.epochs * steps_per_epoch))

  workdir_lib.check_usable(workdir)
  saved = workdir_lib.read_config(workdir)
  if saved is not None:
    differences = run_altering_differences(saved, json.loads(config.to_json()))
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
          restore_step: int | None = None, on_step: StepHook | None = None) -> dict:
  """Trains to `total_steps`, resuming from the newest intact checkpoint in WORKDIR (or `restore_step`); returns
  the last logged metrics.

  WORKDIR (a local path or a URL such as gs://bucket/run) is locked for the run's life. Its config.json is (re)written
  only once the run has started fresh or restored its checkpoint, so a failed resume leaves the workdir as it was.
  """
  prepared = prepare(config, workdir, allow_config_change=allow_config_change)
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  # Every host of a multi-host run shares a URL workdir: only process 0 writes our files there (Orbax coordinates
  # its own); a local path is each host's own.
  primary = jax.process_index() == 0 or not workdir_lib.is_remote(workdir)
  with workdir_lib.lock(workdir, primary=primary):
    return _train(prepared, config, workdir, primary, restore_step, on_step)


def _train(prepared: Prepared, config, workdir: str, primary: bool, restore_step: int | None,
           on_step: StepHook | None) -> dict:
  run, objective = prepared.run, prepared.run.objective
  mlc = run.mlc if run.mlc.enabled else None
  mesh = make_mesh(prepared.mesh_shape)
  print(f"mesh {dict(mesh.shape)} over {jax.device_count()} {jax.devices()[0].platform} device(s); "
        f"model {prepared.model_cfg.num_params() / 1e6:.2f}M parameters; {prepared.total_steps} steps")
  spec = abstract_train_state(run, prepared.model_cfg, mesh, prepared.total_steps)
  iterator = pipeline.batch_iterator(prepared.data, run.train.batch_size, seed=run.train.seed,
                                     process_index=jax.process_index(), process_count=jax.process_count(),
                                     pair_buckets=run.data.pair_buckets, prompt_buckets=run.data.prompt_buckets)
  ckpt = checkpointing.manager(workdir, keep=run.checkpoint.keep, every=run.checkpoint.every,
                               async_save=run.checkpoint.async_save)
  batches = None
  try:
    if ckpt.latest_step() is not None:  # restored straight into the sharded layout; no initial state is built
      state, data_state, restored = checkpointing.restore_intact(ckpt, spec.abstract, restore_step)
      print(f"resumed from {workdir}/checkpoints at step {restored}")
    elif restore_step is not None:
      raise checkpointing.CheckpointError(f"--restore_step {restore_step}: {workdir} holds no checkpoint")
    else:
      state = data_state = None
    if primary:
      workdir_lib.write_config(workdir, to_json(config))
    reference, pre = None, objective.precomputed(run, prepared.tokenizer)
    if pre is not None:  # from the initial weights
      reference = precompute(make_precompute_fn(spec, pre.fn, mesh), lambda: initial_model_params(spec, run),
                             prepared.data, input_keys=pre.input_keys, output_keys=pre.output_keys,
                             batch_size=run.micro_batch_size, mesh=mesh, name=pre.name,
                             cache_dir=str(epath.Path(workdir) / "reference"), write_cache=primary,
                             model_identity={**_model_identity(run, prepared.model_cfg), **pre.identity})
    batches = TrainBatches(iterator, lambda host: device_batch(host, mesh, grad_accum=run.train.grad_accum,
                                                               reference=reference),
                           total_steps=prepared.total_steps, every=objective.sampling_every(),
                           sample=objective.sampling_step(spec, run, mesh, prepared.tokenizer))
    if state is None:
      state = init_train_state(spec, run)
    else:
      batches.set_state(data_state, int(state.step))
    train_step = make_train_step(spec, objective, mlc, mesh=mesh, num_languages=len(prepared.data.languages))
    peak = run.train.peak_flops or devices.peak_flops(jax.devices()[0].device_kind)
    writer = MetricsWriter(workdir if primary else None, log_every=run.train.log_every,
                           languages=prepared.data.languages, peak_flops=peak * jax.device_count() if peak else None)
    describe = lambda: f"mesh {dict(mesh.shape)}; {_last_checkpoint(ckpt, workdir)}"
    step = int(state.step)
    pending, last_done = None, time.perf_counter()

    def finish(p: _Dispatched):
      """Fetches a dispatched step's metrics (waiting for it), stops on a non-finite loss, logs."""
      nonlocal last_done
      metrics = jax.device_get(p.metrics)
      now = time.perf_counter()
      seconds, last_done = now - max(last_done, p.started), now
      if not np.isfinite(metrics["loss"]):
        parts = ", ".join(f"{k} {v}" for k, v in metrics.items() if k.endswith("_loss"))
        raise NonFiniteLoss(f"step {p.step}: the loss is {metrics['loss']} ({parts}); stopping without saving "
                            f"this state; {_last_checkpoint(ckpt, workdir)}")
      metrics["host_batch_s"] = p.host_batch_s
      if p.sampling is not None:
        metrics["sampling_share"] = p.sampling.seconds / seconds
        metrics["sampling_wait_s"] = p.sampling.wait_s
      logged = writer.add(p.step, metrics, tokens=p.tokens, seconds=seconds, flops=p.flops,
                          last=p.step == prepared.total_steps or watchdog.preempted)
      if logged:
        bar.set_postfix({k: f"{logged[k]:.4g}" for k in ("loss", "reward_acc", "tokens_per_s") if k in logged})
      bar.update(1)

    with StepWatchdog(run.train.step_timeout_s, describe) as watchdog, writer, \
        tqdm(total=prepared.total_steps, initial=step, desc="train", unit="step", dynamic_ncols=True) as bar:
      while step < prepared.total_steps:
        # Step N+1 is dispatched before step N's metrics are fetched, so the devices never wait for the host's
        # logging or its next batch (prepared by `batches` meanwhile); a step to be saved is checked first.
        watchdog.started(step + 1)
        started = time.perf_counter()
        host_batch, batch, sampling = batches.next(state.params["model"], step)
        host_batch_s = time.perf_counter() - started - (sampling.seconds + sampling.wait_s if sampling else 0.0)
        flops = step_flops(run, prepared.model_cfg, {k: v.shape for k, v in host_batch.items()},
                           mlc_share=float(step % run.mlc.aux_every == 0))
        state, metrics = train_step(state, batch)
        step += 1
        previous, pending = pending, _Dispatched(step, metrics, tokenized.total_tokens(host_batch), flops, started,
                                                 host_batch_s, sampling)
        if previous is not None:
          finish(previous)
        if step == prepared.total_steps or ckpt.should_save(step) or watchdog.preempted:
          finish(pending)
          pending = None
        watchdog.finished()
        if pending is None and checkpointing.save(ckpt, step, state, batches.get_state(step),
                                                  force=step == prepared.total_steps):
          writer.flush()  # every step up to a checkpoint has its metrics in the workdir
        if on_step is not None:
          on_step(step, state)
        if watchdog.preempted:
          if ckpt.latest_step() != step:
            checkpointing.save(ckpt, step, state, batches.get_state(step), force=True)
          checkpointing.wait(ckpt, state)
          interrupted = watchdog.stopped_by == signal.SIGINT
          raise (Interrupted if interrupted else Preempted)(
              f"{'interrupted (Ctrl-C)' if interrupted else 'SIGTERM'}: saved a checkpoint at step {step} in "
              f"{workdir}/checkpoints; run the same command again to resume")
      checkpointing.wait(ckpt, state)
  finally:
    if batches is not None:
      batches.close()
    ckpt.close()
  print(f"done: {step} steps; checkpoints in {epath.Path(workdir) / 'checkpoints'}, metrics in "
        f"{epath.Path(workdir) / 'metrics.jsonl'}")
  return writer.last


def _last_checkpoint(ckpt, workdir: str) -> str:
  latest = ckpt.latest_step()
  return f"no checkpoint in {workdir} yet" if latest is None else f"the last checkpoint is step {latest} in {workdir}"


def _model_identity(run: RunConfig, model_cfg) -> dict:
  m = run.model
  return {"model": dataclasses.asdict(model_cfg), "hf_path": os.path.abspath(m.hf_path) if m.hf_path else "",
          "init_seed": m.init_seed, "dtype": m.dtype, "param_dtype": m.param_dtype, "vocab_chunk": m.vocab_chunk,
          "attention_chunk": m.attention_chunk}


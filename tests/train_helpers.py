"""Shared by the training tests: a small demo config and an in-process training loop."""
import os

import jax
import numpy as np

from mlc_jax.data import batching, pipeline
from mlc_jax.data.preferences import load_preferences
from mlc_jax.data.tokenizer import byte_tokenizer
from mlc_jax.train import config_lib
from mlc_jax.train.objective import Objective
from mlc_jax.train.state import init_train_state
from mlc_jax.train.step import batch_sharding, make_train_step, split_micro_batches, to_device
from mlc_jax.train.validate import model_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "configs", "demo.py")
SMALL = ["data.max_prompt_len=24", "data.max_response_len=24", "data.mlc_prompt_len=24", "mlc.extractor_dim=16"]


def small_config(*overrides):
  config = config_lib.load_config_file(DEMO)
  return config_lib.apply_overrides(config, [*SMALL, "reference=frozen_copy", *overrides])


def tokenized_builtin(config):
  examples, _ = load_preferences("builtin", None, config.data.langs)
  limits = batching.SequenceLimits(config.data.max_prompt_len, config.data.max_response_len,
                                   config.data.mlc_prompt_len)
  return batching.tokenize_examples(examples, byte_tokenizer(), limits)


def train_in_process(config, mesh, steps):
  """Runs `steps` train steps on `mesh`; returns (final model params as numpy, per-step metrics).

  Uses reference='frozen_copy' semantics from the config (no precomputation pass).
  """
  cfg = model_config(config)
  data = tokenized_builtin(config)
  built = init_train_state(config, cfg, mesh, total_steps=steps)
  step_fn = make_train_step(built, Objective.from_config(config, cfg.num_layers), aux_every=config.mlc.aux_every,
                            mesh=mesh)
  iterator = pipeline.batch_iterator(data, config.train.batch_size, seed=0)
  state, history = built.state, []
  for _ in range(steps):
    batch = next(iterator)
    batch.pop("index")
    state, metrics = step_fn(state, to_device(split_micro_batches(batch, config.train.grad_accum),
                                              batch_sharding(mesh, accumulated=True)))
    history.append(jax.device_get(metrics))
  return jax.tree.map(np.asarray, jax.device_get(state.params)), history


def numpy_logps(logits, ids, loss_mask):
  """Summed and mean log-probs `[B]` of the masked tokens from full-vocabulary logits (float64 NumPy)."""
  x = np.asarray(logits, np.float64)
  x = x - x.max(-1, keepdims=True)
  lp = (x - np.log(np.exp(x).sum(-1, keepdims=True)))[:, :-1]
  token = np.take_along_axis(lp, ids[:, 1:, None], -1)[..., 0]
  mask = loss_mask[:, 1:].astype(bool)
  summed = (token * mask).sum(-1)
  return summed, summed / mask.sum(-1)

"""Shared by the training tests: a small demo config, an in-process training loop, and the CLIs in subprocesses."""
import contextlib
import hashlib
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from cpu_mesh import xla_flags
from paths import ROOT

from mlc_jax.config import RunConfig, apply_overrides, load_config_file
from mlc_jax.data import pipeline, tokenized
from mlc_jax.data.preferences import load_preferences
from mlc_jax.data.tokenizer import byte_tokenizer
from mlc_jax.train.state import abstract_train_state, init_train_state
from mlc_jax.train.step import device_batch, make_train_step

DEMO = str(ROOT / "configs" / "demo.py")
SMALL = ["data.max_prompt_len=24", "data.max_response_len=24", "data.mlc_prompt_len=24", "mlc.extractor_dim=16"]


def small_config(*overrides):
  return apply_overrides(load_config_file(DEMO), [*SMALL, "reference=frozen_copy", *overrides])


def tokenized_builtin(config):
  examples, _ = load_preferences("builtin", None, config.data.langs)
  limits = tokenized.SequenceLimits(config.data.max_prompt_len, config.data.max_response_len,
                                   config.data.mlc_prompt_len)
  return tokenized.tokenize_examples(examples, byte_tokenizer(), limits)


def setup(config, mesh, total_steps=1):
  """(RunConfig, TrainStateSpec, initial TrainState) of `config` on `mesh`."""
  run = RunConfig.parse(config)
  spec = abstract_train_state(run, run.architecture(), mesh, total_steps)
  return run, spec, init_train_state(spec, run)


def compiled_step(run, spec, mesh, num_languages=0):
  return make_train_step(spec, run.objective, run.mlc if run.mlc.enabled else None, mesh=mesh,
                         num_languages=num_languages)


def train_in_process(config, mesh, steps, data=None):
  """Runs `steps` train steps on `mesh`; returns (final params as numpy, per-step metrics).

  Uses reference='frozen_copy' semantics from the config (no precomputation pass); `data` defaults to the
  built-in preference set tokenized with the config's limits.
  """
  run, spec, state = setup(config, mesh, steps)
  data = tokenized_builtin(config) if data is None else data
  step_fn = compiled_step(run, spec, mesh)
  iterator = pipeline.batch_iterator(data, run.train.batch_size, seed=0)
  history = []
  for _ in range(steps):
    state, metrics = step_fn(state, device_batch(next(iterator), mesh, grad_accum=run.train.grad_accum))
    history.append(jax.device_get(metrics))
  return jax.tree.map(np.asarray, jax.device_get(state.params)), history


def assert_trees_close(got, want, rtol=1e-5):
  """Every leaf of `got` equals `want`'s to `rtol`, with an absolute floor of `rtol` × the largest |value| of `want`."""
  scale = max(float(np.abs(np.asarray(x)).max()) for x in jax.tree.leaves(want))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale), got, want)


def numpy_logps(logits, ids, loss_mask):
  """Summed and mean log-probs `[B]` of the masked tokens from full-vocabulary logits (float64 NumPy)."""
  x = np.asarray(logits, np.float64)
  x = x - x.max(-1, keepdims=True)
  lp = (x - np.log(np.exp(x).sum(-1, keepdims=True)))[:, :-1]
  token = np.take_along_axis(lp, ids[:, 1:, None], -1)[..., 0]
  mask = loss_mask[:, 1:].astype(bool)
  summed = (token * mask).sum(-1)
  return summed, summed / mask.sum(-1)


# Subprocess runs see 2 CPU devices (mesh (1,2,1)); they share the suite's compilation cache (conftest.py).
SUBPROCESS_ENV = {"XLA_FLAGS": xla_flags(2), "JAX_PLATFORMS": "cpu"}


def run_cli(*args, timeout=300, env=None) -> subprocess.CompletedProcess:
  """`python ARGS…` (e.g. `-m mlc_jax.export_hf …`) with the subprocess environment; never hangs past `timeout`."""
  return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                        env={**os.environ, **SUBPROCESS_ENV, **(env or {})})


def one_error_line(done, *fragments) -> str:
  """The run failed with exactly one stderr line containing every fragment; returns that line."""
  err = done.stderr.strip().splitlines()
  assert err and err[-1].startswith("error: "), done.stderr[-3000:]
  for fragment in fragments:
    assert fragment in err[-1], (fragment, err[-1])
  assert sum(line.startswith("error: ") for line in err) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
  return err[-1]


def run_train(workdir, *overrides, kill_after=None, args=(), timeout=300) -> subprocess.CompletedProcess:
  """The training CLI on the small demo config (6 steps, a checkpoint every 2), SIGKILLed after step `kill_after`."""
  launcher = ["-m", "mlc_jax.train"] if kill_after is None else [ROOT / "tests" / "faults.py", "kill_after", kill_after]
  overrides = (*SMALL, "train.steps=6", "checkpoint.every=2", "train.log_every=1", *overrides)
  return run_cli(*launcher, "--config", DEMO, "--workdir", workdir, *args, *[f"--config.{o}" for o in overrides],
                 timeout=timeout)


def final_params(workdir, step=6):
  """The parameters saved at `step` in WORKDIR's checkpoints (host arrays)."""
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  return ocp.StandardCheckpointer().restore(os.path.abspath(path))["params"]


def tree_digest(path) -> str:
  """A hash of every file's relative path and bytes under `path` (what must not change)."""
  h = hashlib.sha256()
  for root, dirs, files in os.walk(path):
    dirs.sort()
    for name in sorted(files):
      full = os.path.join(root, name)
      h.update(os.path.relpath(full, path).encode())
      with open(full, "rb") as f:
        h.update(f.read())
  return h.hexdigest()



@contextlib.contextmanager
def small_disk(path, size: str):
  """A tmpfs of `size` (e.g. "2m") mounted at the new folder `path` for the block (the test is skipped unless root)."""
  path.mkdir()
  if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]).returncode:
    pytest.skip("needs root to mount a small tmpfs")
  try:
    yield path
  finally:
    subprocess.run(["umount", "-l", str(path)])

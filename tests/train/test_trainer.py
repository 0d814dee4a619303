"""The training CLI: exact resume after SIGKILL, SIGTERM, a non-finite loss, config errors, export."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from train_helpers import DEMO, SMALL, SUBPROCESS_ENV, final_params, run_train

from mlc_jax.train import __main__ as train_cli


def test_sigkill_and_resume_is_bit_identical(tmp_path):
  uninterrupted = run_train(tmp_path / "a")
  assert uninterrupted.returncode == 0, uninterrupted.stderr[-2000:]
  killed = run_train(tmp_path / "b", kill_after=3)
  assert killed.returncode == -signal.SIGKILL
  assert not (tmp_path / "b" / "checkpoints" / "6").exists()
  resumed = run_train(tmp_path / "b")
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "resumed from" in resumed.stdout
  jax.tree.map(np.testing.assert_array_equal, final_params(tmp_path / "a"), final_params(tmp_path / "b"))
  steps_logged = [json.loads(line)["step"] for line in open(tmp_path / "b" / "metrics.jsonl")]
  assert steps_logged[-1] == 6

  changed = run_train(tmp_path / "b", "optim.lr=0.5")
  assert changed.returncode == 2 and "different config (optim.lr)" in changed.stderr
  allowed = run_train(tmp_path / "b", "optim.lr=0.5", "train.steps=7")
  assert allowed.returncode == 2  # two keys changed, still refused without the flag
  args = ["--config", DEMO, "--workdir", str(tmp_path / "b"), "--allow_config_change"]
  args += [f"--config.{o}" for o in (*SMALL, "train.steps=7", "checkpoint.every=2")]
  assert train_cli.main(args) == 0
  assert (tmp_path / "b" / "checkpoints" / "7").exists()


def test_sigterm_saves_a_checkpoint_and_resume_finishes(tmp_path):
  args = [sys.executable, "-m", "mlc_jax.train", "--config", DEMO, "--workdir", str(tmp_path),
          *[f"--config.{o}" for o in (*SMALL, "train.steps=500", "checkpoint.every=1000", "train.log_every=1")]]
  proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, **SUBPROCESS_ENV})
  deadline = time.time() + 240
  while not (tmp_path / "metrics.jsonl").exists() and time.time() < deadline and proc.poll() is None:
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 143, err[-2000:]
  assert "SIGTERM: saved a checkpoint" in err
  # (Orbax also saves the run's first step, as it does for any run without a checkpoint yet.)
  step = int(err.split("saved a checkpoint at step ")[1].split()[0])
  saved = [int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()]
  assert 0 < step < 500 and max(saved) == step, (step, saved)


@pytest.mark.parametrize("every", [1, 3])
def test_non_finite_loss_stops_without_a_checkpoint(tmp_path, every):
  """Every step checked before its save (every=1), and a NaN found one step late by the asynchronous loop (every=3:
  steps 1 and 2 are fetched after the next is dispatched) still stops before the save of step 3."""
  done = run_train(tmp_path, "optim.lr=1e30", "optim.warmup_ratio=0.0", "optim.schedule=constant",
                   f"checkpoint.every={every}", "optim.clip_norm=1e30")
  assert done.returncode == 1, done.stderr[-2000:]
  assert "the loss is nan" in done.stderr.lower() or "the loss is inf" in done.stderr.lower()
  bad_step = int(done.stderr.split("step ")[1].split(":")[0])
  saved = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert all(s < bad_step for s in saved) and (saved or every > 1)


@pytest.mark.parametrize("override,message", [
    ("train.nonsense=1", "unknown config key 'train.nonsense'"),
    ("mesh.shape=(1,3,1)", "mesh.shape=(1, 3, 1) needs 3 devices but 8 are available"),
    ("train.batch_size=12", "train.batch_size=12 (micro-batch 12 after grad_accum) is not divisible by the 8 data"),
    ("data.langs='en,zh,xx'", "data.langs"),
    ("mlc.layer=7", "mlc.layer=7 is out of range"),
    ("objective.name='kto'", "objective.name='kto' is not one of dpo, hinge, ipo, mpo, msd, orpo, sft, simpo"),
    ("model.preset='gpt5'", "model.preset='gpt5' is unknown"),
    ("optim.lr='fast'", "optim.lr"),
])
def test_config_errors_name_the_key_and_write_nothing(tmp_path, capsys, override, message):
  workdir = tmp_path / "run"
  rc = train_cli.main(["--config", DEMO, "--workdir", str(workdir), f"--config.{override}"])
  err = capsys.readouterr().err
  assert rc == 2
  assert message in err and err.count("\n") == 1, err
  assert not workdir.exists()


def test_language_error_lists_what_the_dataset_has(tmp_path, capsys):
  rc = train_cli.main(["--config", DEMO, "--workdir", str(tmp_path / "w"), "--config.data.langs=en,zh,xx"])
  err = capsys.readouterr().err
  assert rc == 2 and "'xx'" in err and "sw" in err


def test_export_writes_hf_model_and_extractor(tmp_path):
  import torch
  import transformers
  from safetensors.numpy import load_file

  from mlc_jax.export_hf import export, restore_params
  assert run_train(tmp_path / "w", "train.steps=2").returncode == 0
  export(str(tmp_path / "w"), str(tmp_path / "hf"))
  hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
  _, model, extractor, step = restore_params(str(tmp_path / "w"))
  assert len(jax.tree.leaves(extractor)) == 2
  assert step == 2
  ids = np.random.default_rng(0).integers(0, 256, (2, 9))
  with torch.no_grad():
    ref = hf(torch.tensor(ids)).logits.numpy()
  np.testing.assert_allclose(np.asarray(model(ids)), ref, rtol=1e-4, atol=1e-4)
  side = load_file(str(tmp_path / "hf" / "mlc_extractor.safetensors"))
  np.testing.assert_array_equal(side["kernel"], np.asarray(extractor["kernel"]))
  meta = json.loads((tmp_path / "hf" / "mlc_extractor.json").read_text())
  assert meta["hidden_states_index"] == model.cfg.num_layers and meta["step"] == 2

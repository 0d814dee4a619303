"""Bad input and faults, as a user meets them on the command line: the exit code, one line naming the culprit, and
nothing lost (the workdir, the input model or the output directory byte-identical where nothing should change).

docs/faults.md lists every case with its message.
"""
import dataclasses
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from cpu_mesh import xla_flags
from paths import SHARED_DATA
from safetensors.numpy import load_file, save_file
from train_helpers import DEMO, SMALL, SUBPROCESS_ENV, one_error_line, run_cli, run_train, small_disk, tree_digest

from mlc_jax.config import Section
from mlc_jax.config.run import SECTIONS, TopLevel
from mlc_jax.data.tokenizer import byte_tokenizer
from mlc_jax.models import get_preset, init_model, save_hf
from mlc_jax.objectives import OBJECTIVES
from mlc_jax.train import __main__ as train_cli


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A finished 6-step run (checkpoints at 4 and 6), copied per test that changes it."""
  workdir = tmp_path_factory.mktemp("trained") / "w"
  done = run_train(workdir)
  assert done.returncode == 0, done.stderr[-3000:]
  return workdir


def copy_of(workdir, tmp_path):
  target = tmp_path / "w"
  shutil.copytree(workdir, target)
  return target


# ------------------------------------------------------------------------------------------------ data lost
def test_export_refuses_outputs_that_would_lose_data(trained, tmp_path):
  workdir = copy_of(trained, tmp_path)
  before = tree_digest(workdir)
  export = lambda out, *flags: run_cli("-m", "mlc_jax.export_hf", "--workdir", workdir, "--out", out, *flags)
  one_error_line(export(workdir, "--overwrite"), "is or contains the training workdir")
  one_error_line(export(tmp_path, "--overwrite"), "is or contains the training workdir")
  one_error_line(export(workdir / "checkpoints" / "x"), "lies inside the checkpoints")
  one_error_line(export(workdir / "reference" / "x"), "lies inside the reference cache")
  assert tree_digest(workdir) == before
  precious = tmp_path / "precious"
  precious.mkdir()
  (precious / "notes.txt").write_text("keep me")
  one_error_line(export(precious, "--overwrite"), "is not a previous export")
  assert (precious / "notes.txt").read_text() == "keep me" and os.listdir(precious) == ["notes.txt"]
  # a fresh sub-folder of the workdir is fine, and --overwrite replaces a previous export
  for _ in range(2):
    done = export(workdir / "hf", "--overwrite")
    assert done.returncode == 0, done.stderr[-2000:]
  assert (workdir / "hf" / "mlc_jax_export.json").exists()


def test_convert_refuses_to_write_over_or_into_its_input(tmp_path):
  source = tmp_path / "models" / "src"
  save_hf(init_model(get_preset("tiny")), str(source))
  sibling = tmp_path / "models" / "sibling.txt"
  sibling.write_text("x")
  before = tree_digest(tmp_path / "models")
  convert = lambda out: run_cli("-m", "mlc_jax.convert", "--from_hf", source, "--to_hf", out, "--overwrite")
  one_error_line(convert(tmp_path / "models"), "--to_hf", "is or contains the input model")
  one_error_line(convert(source), "is or contains the input model")
  one_error_line(convert(source / "sub"), "lies inside the input model")
  assert tree_digest(tmp_path / "models") == before


def test_a_failed_config_change_resume_leaves_the_workdir_as_it_was(trained, tmp_path):
  workdir = copy_of(trained, tmp_path)
  before = tree_digest(workdir)
  done = run_train(workdir, "model.preset=tiny_qwen2", args=["--allow_config_change"])
  one_error_line(done, "no checkpoint in", "could be restored", "step 6", "step 4")
  assert tree_digest(workdir) == before
  again = run_train(workdir)  # the original command still resumes (nothing left to train) and export works
  assert again.returncode == 0 and "resumed from" in again.stdout, again.stderr[-2000:]
  assert run_cli("-m", "mlc_jax.export_hf", "--workdir", workdir, "--out", tmp_path / "hf").returncode == 0


def test_two_processes_cannot_train_in_one_workdir(tmp_path):
  workdir = tmp_path / "w"
  first = subprocess.Popen(
      [sys.executable, "-m", "mlc_jax.train", "--config", DEMO, "--workdir", str(workdir),
       *[f"--config.{o}" for o in (*SMALL, "train.steps=100000", "checkpoint.every=100000", "train.log_every=1")]],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **SUBPROCESS_ENV})
  try:
    deadline = time.time() + 240
    while not (workdir / "metrics.jsonl").exists() and time.time() < deadline and first.poll() is None:
      time.sleep(0.2)
    assert first.poll() is None, first.stderr.read()[-2000:]
    second = run_train(workdir, "train.steps=100000", "checkpoint.every=100000")
    one_error_line(second, "is in use by pid", str(first.pid), "another --workdir")
  finally:
    first.kill()
    first.wait(timeout=60)
  # a lock left by a killed run is taken over
  third = run_train(workdir, "train.steps=2", args=["--allow_config_change"])
  assert third.returncode == 0, third.stderr[-2000:]
  assert f"taking over the lock left by pid {first.pid}" in third.stdout


# ------------------------------------------------------------------------------------------- silently wrong
@pytest.mark.parametrize("override,message", [
    ("optim.clip_norm=-1.0", "optim.clip_norm=-1.0 must be > 0"),
    ("optim.clip_norm=0.0", "optim.clip_norm=0.0 must be > 0"),
    ("train.steps=-3", "train.steps=-3 must be >= 0"),
    ("optim.warmup_ratio=1.5", "optim.warmup_ratio=1.5 must be in [0.0, 1.0]"),
    ("optim.lr=1e999", "optim.lr=inf must be a finite number"),
    ("objective.dpo.beta=1e999", "objective.dpo.beta=inf must be a finite number"),
    ("checkpoint.keep=0", "checkpoint.keep=0 must be > 0"),
    ("checkpoint.every=0", "checkpoint.every=0 must be > 0"),
    ("mlc.tau=0.0", "mlc.tau=0.0 must be > 0"),
    ("data.langs=en", "mlc.enabled=True needs at least 2 languages in data.langs"),
    ("data.langs='en,'", "mlc.enabled=True needs at least 2 languages in data.langs"),
    ("train.step_timeout_s=-1.0", "train.step_timeout_s=-1.0 must be >= 0"),
])
def test_out_of_range_values_are_refused_before_anything_is_written(tmp_path, capsys, override, message):
  rc = train_cli.main(["--config", DEMO, "--workdir", str(tmp_path / "w"), f"--config.{override}"])
  err = capsys.readouterr().err
  assert rc == 2 and message in err and err.count("\n") == 1, err
  assert not (tmp_path / "w").exists()


def numeric_fields():
  sections = [*SECTIONS.items(), ("", TopLevel), *((f"objective.{n}", c) for n, c in OBJECTIVES.items())]
  for key, section in sections:
    for field in dataclasses.fields(section):
      if field.type in ("int", "float", int, float):
        yield f"{key}.{field.name}", field


def test_every_numeric_key_has_a_range_check():
  unchecked = [key for key, field in numeric_fields() if field.metadata.get("check") is None]
  assert not unchecked, f"numeric keys without a range check: {unchecked}"
  assert issubclass(TopLevel, Section) and len(list(numeric_fields())) > 25


@pytest.mark.parametrize("langs", ["en", "en,", "['en']"])
def test_one_language_can_be_given_without_mlc(tmp_path, langs):
  from mlc_jax import config as config_lib
  from mlc_jax.train import trainer
  config = config_lib.apply_overrides(config_lib.load_config_file(DEMO), ["mlc.enabled=False", f"data.langs={langs}"])
  assert trainer.prepare(config, str(tmp_path / "w")).data.languages == ("en",)


def test_a_language_list_in_a_config_file(tmp_path):
  from mlc_jax import config as config_lib
  from mlc_jax.train import trainer
  path = tmp_path / "langs.py"
  path.write_text(f"import runpy\n\ndef get_config(arg=None):\n  c = runpy.run_path({DEMO!r})['get_config']()\n"
                  "  c.data.langs = ['en', 'sw']\n  return c\n")
  assert trainer.prepare(config_lib.load_config_file(str(path)), str(tmp_path / "w")).data.languages == ("en", "sw")


@pytest.mark.parametrize("dtype", [np.int8, np.bool_])
def test_non_float_weights_are_refused_not_cast(tmp_path, dtype):
  save_hf(init_model(get_preset("tiny")), str(tmp_path / "q"))
  tensors = load_file(str(tmp_path / "q" / "model.safetensors"))
  name = "model.layers.0.mlp.up_proj.weight"
  tensors[name] = (tensors[name] * 100).astype(dtype)
  save_file(tensors, str(tmp_path / "q" / "model.safetensors"), metadata={"format": "pt"})
  done = run_cli("-m", "mlc_jax.convert", "--from_hf", tmp_path / "q", "--to_hf", tmp_path / "out")
  one_error_line(done, name, "not a float")
  assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------- faults, one line
def test_a_truncated_safetensors_file_is_named(tmp_path):
  save_hf(init_model(get_preset("tiny")), str(tmp_path / "hf"), tokenizer=byte_tokenizer())
  weights = tmp_path / "hf" / "model.safetensors"
  with open(weights, "r+b") as f:
    f.truncate(weights.stat().st_size // 2)
  done = run_train(tmp_path / "w", f"model.hf_path={tmp_path / 'hf'}")
  one_error_line(done, "model.hf_path", str(weights))
  assert not (tmp_path / "w").exists()
  one_error_line(run_cli("-m", "mlc_jax.convert", "--from_hf", tmp_path / "hf", "--to_hf", tmp_path / "out"),
                 str(weights))


@pytest.mark.parametrize("damage", ["truncated data file", "missing manifest.ocdbt", "missing state"])
def test_a_corrupt_latest_checkpoint_falls_back_to_the_newest_intact_one(trained, tmp_path, damage):
  workdir = copy_of(trained, tmp_path)
  state = workdir / "checkpoints" / "6" / "state"
  if damage == "truncated data file":
    for f in sorted((state / "ocdbt.process_0" / "d").iterdir()):
      with open(f, "r+b") as handle:
        handle.truncate(16)
  elif damage == "missing manifest.ocdbt":
    (state / "manifest.ocdbt").unlink()
    (state / "ocdbt.process_0" / "manifest.ocdbt").unlink()
  else:
    shutil.rmtree(state)
  done = run_train(workdir, "train.steps=7", args=["--allow_config_change"])
  assert done.returncode == 0, done.stderr[-3000:]
  assert "checkpoint: skipping step 6" in done.stdout and "resumed from" in done.stdout and "step 4" in done.stdout
  assert "Traceback" not in done.stderr and "Event loop is closed" not in done.stderr
  assert (workdir / "checkpoints" / "7").is_dir() and any(p.name.startswith("skipped-6-")
                                                         for p in (workdir / "checkpoints").iterdir())


def test_restore_step_picks_a_checkpoint(trained, tmp_path):
  workdir = copy_of(trained, tmp_path)
  missing = run_train(workdir, args=["--restore_step", "5"])
  one_error_line(missing, "--restore_step 5: no checkpoint at that step", "[4, 6]")
  done = run_train(workdir, args=["--restore_step", "4"])
  assert done.returncode == 0 and "resumed from" in done.stdout and "step 4" in done.stdout, done.stderr[-2000:]
  assert (workdir / "checkpoints" / "6").is_dir()  # step 6 trained again; the one moved aside is kept
  assert any(p.name.startswith("skipped-6-") for p in (workdir / "checkpoints").iterdir())


@pytest.fixture
def small_tmpfs(tmp_path):
  """A 4 MiB tmpfs: room for one checkpoint of the small demo model, not two (root only)."""
  with small_disk(tmp_path / "small_disk", "4m") as mount:
    yield mount


def test_a_full_disk_during_a_checkpoint_is_one_line_and_the_previous_checkpoint_survives(small_tmpfs):
  workdir = small_tmpfs / "w"
  done = run_train(workdir, "checkpoint.keep=3", "checkpoint.async_save=False")
  line = one_error_line(done, "no space left on the device of", "while writing a checkpoint", "MiB are free",
                        "is intact")
  assert done.returncode == 1
  intact = int(line.split("newest complete checkpoint (step ")[1].split(")")[0])
  assert [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()] == [intact]
  resumed = run_train(workdir, "checkpoint.keep=3", "checkpoint.async_save=False", f"train.steps={intact + 1}",
                      "checkpoint.every=100", args=["--allow_config_change"])
  assert f"resumed from {workdir}/checkpoints at step {intact}" in resumed.stdout, resumed.stderr[-2000:]


def test_workdir_problems_are_named(tmp_path, trained):
  (tmp_path / "file").write_text("x")
  one_error_line(run_train(tmp_path / "file"), "is a file, not a directory")
  broken = copy_of(trained, tmp_path)
  (broken / "config.json").write_text('{"model": ')
  one_error_line(run_train(broken), str(broken / "config.json"), "is not a valid config")
  readonly = tmp_path / "ro"
  readonly.mkdir()
  if os.geteuid() == 0:
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(readonly)]).returncode:
      pytest.skip("cannot mount a read-only tmpfs")
  else:
    readonly.chmod(0o555)
  try:
    one_error_line(run_train(readonly / "w"), "cannot be created", "is not a writable directory")
    one_error_line(run_train(readonly), "is not writable")
  finally:
    if os.geteuid() == 0:
      subprocess.run(["umount", "-l", str(readonly)])


def test_invalid_utf8_in_a_data_file_names_the_file_and_line(tmp_path):
  source = SHARED_DATA / "mlc" / "pku_saferlhf_safety_test.jsonl"
  if not source.exists():
    pytest.skip(f"{source} is not here")
  lines = source.read_bytes().splitlines(keepends=True)[:12]
  lines[6] = lines[6].replace(b"a", b"\xff\xfe", 1)
  data = tmp_path / "bad.jsonl"
  data.write_bytes(b"".join(lines))
  done = run_train(tmp_path / "w", "data.source=mlc_jsonl", f"data.path={data}", "data.langs=mlc10")
  one_error_line(done, f"{data}, line 7", "not UTF-8")


# -------------------------------------------------------------------------------------------------- hangs
@pytest.mark.parametrize("devices", [2, 8])
def test_the_demo_shapes_train_on_simulated_meshes(tmp_path, devices):
  """DPO+MLC at the demo's shapes on 2 and 8 CPU devices: the batched LAPACK SVD used to deadlock here."""
  done = run_cli("-m", "mlc_jax.train", "--config", DEMO, "--workdir", tmp_path / "w", "--config.train.steps=2",
                 "--config.mlc.aux_every=1", "--config.train.step_timeout_s=600", timeout=600,
                 env={"XLA_FLAGS": xla_flags(devices)})
  assert done.returncode == 0, done.stderr[-3000:]
  assert f"'fsdp': {devices}" in done.stdout


def test_a_step_over_the_timeout_ends_the_run_naming_it(tmp_path):
  done = run_train(tmp_path / "w", "train.step_timeout_s=0.05")  # the first step compiles for longer than that
  assert done.returncode == 124
  one_error_line(done, "step 1 has run for", "train.step_timeout_s=0.05", "mesh {'data': 1, 'fsdp': 2")


def test_sigterm_ends_a_step_that_never_returns(tmp_path):
  """The watchdog sees SIGTERM even while the main thread is stuck, and exits 143 after the grace period."""
  script = ("import os, signal, time\nfrom mlc_jax.train.watchdog import StepWatchdog\n"
            "with StepWatchdog(0, lambda: 'the last checkpoint is step 3', grace_s=1.0) as w:\n"
            "  w.started(4)\n  os.kill(os.getpid(), signal.SIGTERM)\n  time.sleep(120)\n")
  start = time.time()
  done = run_cli("-c", script, timeout=60)
  assert done.returncode == 143 and time.time() - start < 30
  one_error_line(done, "SIGTERM during step 4", "exiting without saving it", "the last checkpoint is step 3")

"""Bad input and faults of `export_hf`, `convert` and the model / tokenizer folders they read, at the command line: the
exit code, one stderr line naming the culprit, and outputs byte-identical wherever nothing should change.

docs/faults.md lists every case with its message.
"""
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import transformers
from paths import ROOT
from safetensors.numpy import load_file, save_file
from train_helpers import SUBPROCESS_ENV, one_error_line, run_cli, run_train, small_disk, tree_digest

from mlc_jax.data.tokenizer import byte_tokenizer
from mlc_jax.models import get_preset, init_model, save_hf
from mlc_jax.models.out_dir import TMP_PREFIX

FAULT = ROOT / "tests" / "export_fault.py"
TENSOR = "model.layers.0.mlp.up_proj.weight"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A 2-step DPO+MLC run (a checkpoint at step 2, an MLC extractor)."""
  workdir = tmp_path_factory.mktemp("trained") / "w"
  done = run_train(workdir, "train.steps=2")
  assert done.returncode == 0, done.stderr[-3000:]
  return workdir


def export(workdir, out, *flags, fault=None, **kwargs):
  launcher = ["-m", "mlc_jax.export_hf"] if fault is None else [FAULT, fault, "mlc_jax.export_hf"]
  return run_cli(*launcher, "--workdir", workdir, "--out", out, *flags, **kwargs)


def convert(source, out, *flags):
  return run_cli("-m", "mlc_jax.convert", "--from_hf", source, "--to_hf", out, *flags)


def big_tokenizer(path):
  """The byte tokenizer plus one added token: 513 tokens for a 512-row embedding."""
  tokenizer = byte_tokenizer()
  tokenizer.add_tokens(["<|extra|>"])
  tokenizer.save_pretrained(path)
  return path


def leftovers(folder):
  return sorted(p for p in os.listdir(folder) if p.startswith(TMP_PREFIX) or p.startswith(".old-save_hf-"))


# --------------------------------------------------------------------------------- silently wrong: refused
def test_a_tokenizer_larger_than_the_embedding_is_refused_everywhere(trained, tmp_path):
  big = str(big_tokenizer(tmp_path / "big"))
  done = run_train(tmp_path / "w", f"tokenizer={big}")
  one_error_line(done, f"tokenizer={big!r}", "513 tokens", "model.preset='tiny'", "vocab_size 512")
  assert not (tmp_path / "w").exists()

  model_dir = tmp_path / "hf"
  save_hf(init_model(get_preset("tiny")), str(model_dir))
  big_tokenizer(model_dir)
  done = run_train(tmp_path / "w", f"model.hf_path={model_dir}", "tokenizer=")
  one_error_line(done, f"model.hf_path={str(model_dir)!r}", "513 tokens", "vocab_size 512")
  assert not (tmp_path / "w").exists()
  done = convert(model_dir, tmp_path / "out")
  one_error_line(done, f"the tokenizer {str(model_dir)!r} has 513 tokens", str(model_dir / "config.json"))
  assert not (tmp_path / "out").exists()

  workdir = tmp_path / "run"
  shutil.copytree(trained, workdir)
  config = json.loads((workdir / "config.json").read_text())
  config["tokenizer"] = big
  (workdir / "config.json").write_text(json.dumps(config))
  one_error_line(export(workdir, tmp_path / "export"), repr(big), "513 tokens", f"step 2 of {workdir}")
  assert not (tmp_path / "export").exists()


def nan_checkpoint(tmp_path, name):
  source = tmp_path / "src"
  save_hf(init_model(get_preset("tiny")), str(source), tokenizer=byte_tokenizer())
  tensors = load_file(str(source / "model.safetensors"))
  tensors[name][3, 5] = np.nan
  tensors[name][0, 0] = np.inf
  save_file(tensors, str(source / "model.safetensors"), metadata={"format": "pt"})
  return source


def test_nan_or_inf_in_an_hf_tensor_is_named_by_convert_and_training(tmp_path):
  source = nan_checkpoint(tmp_path, TENSOR)
  line = one_error_line(convert(source, tmp_path / "out"), str(source / "model.safetensors"), repr(TENSOR),
                        "2 non-finite values")
  assert "[176, 64]" in line
  assert not (tmp_path / "out").exists()
  one_error_line(run_train(tmp_path / "w", f"model.hf_path={source}", "tokenizer="), repr(TENSOR),
                 str(source / "model.safetensors"), "non-finite")
  assert not (tmp_path / "w").exists()


def test_nan_in_a_checkpoint_is_named_by_export(trained, tmp_path):
  import orbax.checkpoint as ocp
  workdir = tmp_path / "w"
  shutil.copytree(trained, workdir)
  step_dir = workdir / "checkpoints" / "2"
  state = ocp.StandardCheckpointer().restore(str(step_dir / "state"))
  kernel = np.array(state["params"]["model"]["blocks"]["attn"]["q_proj"])
  kernel[0, 1, 2, 3] = np.nan
  state["params"]["model"]["blocks"]["attn"]["q_proj"] = kernel
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(str(workdir / "state_nan"), state)
  checkpointer.wait_until_finished()
  shutil.rmtree(step_dir / "state")
  os.rename(workdir / "state_nan", step_dir / "state")
  done = export(workdir, tmp_path / "out")
  one_error_line(done, f"the checkpoint at step 2 of {workdir}: parameter 'blocks/attn/q_proj'", "1 non-finite")
  assert not (tmp_path / "out").exists()


def test_the_export_carries_the_tokenizers_eos_and_transformers_stops_there(tmp_path):
  """A model whose config has no eos: the tokenizer's eos (here the token the model emits 4th) ends generation."""
  model = init_model(get_preset("tiny", eos_token_id=None, bos_token_id=None, pad_token_id=None), seed=3)
  save_hf(model, str(tmp_path / "bare"))
  prompt = torch.tensor([[72, 105, 33]])
  hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "bare", dtype=torch.float32)
  free = hf.generate(prompt, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)[0, 3:].tolist()
  stop = free[3]
  tokenizer = byte_tokenizer()
  tokenizer.eos_token = tokenizer.convert_ids_to_tokens(stop)
  save_hf(model, str(tmp_path / "hf"), tokenizer=tokenizer)
  config = json.loads((tmp_path / "hf" / "config.json").read_text())
  generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
  assert config["eos_token_id"] == generation["eos_token_id"] == stop
  assert config["bos_token_id"] == generation["bos_token_id"] == 257
  assert config["pad_token_id"] == generation["pad_token_id"] == 256
  hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
  out = hf.generate(prompt, max_new_tokens=20, do_sample=False)[0, 3:].tolist()
  assert out == free[:free.index(stop) + 1]


# ------------------------------------------------------------------------------------- the output directory
def test_overwrite_is_a_swap_that_a_kill_or_ctrl_c_cannot_break(trained, tmp_path):
  out = tmp_path / "out"
  old_umask = os.umask(0o022)
  try:
    assert export(trained, out).returncode == 0
  finally:
    os.umask(old_umask)
  for root, dirs, files in os.walk(out):
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o755, root
    assert all(stat.S_IMODE(os.stat(os.path.join(root, f)).st_mode) == 0o644 for f in files), files
  assert (out / "mlc_extractor.safetensors").exists()
  before = tree_digest(out)

  killed = export(trained, out, "--overwrite", fault="sigkill")
  assert killed.returncode == -signal.SIGKILL
  assert tree_digest(out) == before and len(leftovers(tmp_path)) == 1
  decoy = tmp_path / f"{TMP_PREFIX}out-notours"  # named like ours, but without our marker: never deleted
  decoy.mkdir()
  (decoy / "keep.txt").write_text("x")

  interrupted = export(trained, out, "--overwrite", fault="sigint")
  assert interrupted.returncode == 130
  one_error_line(interrupted, "interrupted")
  assert tree_digest(out) == before and leftovers(tmp_path) == [decoy.name]  # the killed run's folder is gone too

  again = export(trained, out, "--overwrite")
  assert again.returncode == 0, again.stderr[-2000:]
  assert leftovers(tmp_path) == [decoy.name] and (decoy / "keep.txt").exists()
  assert (out / "mlc_extractor.safetensors").exists() and (out / "mlc_extractor.json").exists()


def test_a_second_export_to_the_same_folder_is_refused_while_the_first_runs(trained, tmp_path):
  out, go = tmp_path / "out", tmp_path / "go"
  first = subprocess.Popen([sys.executable, FAULT, f"wait:{go}", "mlc_jax.export_hf", "--workdir", str(trained),
                            "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, **SUBPROCESS_ENV})
  try:
    deadline = time.time() + 240
    while not any((tmp_path / p / "model.safetensors").exists() for p in leftovers(tmp_path)) and (
        time.time() < deadline and first.poll() is None):
      time.sleep(0.2)
    assert first.poll() is None, first.stderr.read()[-2000:]
    one_error_line(export(trained, out, "--overwrite"), repr(str(out)), "is being written by another export")
    go.touch()
    assert first.wait(timeout=240) == 0, first.stderr.read()[-2000:]
  finally:
    first.kill()
    first.wait(timeout=60)
  assert (out / "mlc_extractor.json").exists() and leftovers(tmp_path) == []


@pytest.fixture
def small_tmpfs(tmp_path):
  """A 2 MiB tmpfs: room for one export of the tiny model (it needs 1.6 MiB free), not two (root only)."""
  with small_disk(tmp_path / "small_disk", "2m") as mount:
    yield mount


def test_a_full_disk_or_an_unreachable_workdir_is_one_line_and_leaves_the_old_export(trained, small_tmpfs, tmp_path):
  source = tmp_path / "src"
  save_hf(init_model(get_preset("tiny")), str(source), tokenizer=byte_tokenizer())
  out = small_tmpfs / "out"
  assert convert(source, out).returncode == 0
  before = tree_digest(out)
  done = convert(source, out, "--overwrite")
  assert done.returncode == 1
  one_error_line(done, f"no space left on the device of {str(out)!r} while writing the export", "MiB are free")
  assert tree_digest(out) == before and leftovers(small_tmpfs) == []
  done = export(trained, out, "--overwrite")
  assert done.returncode == 1
  one_error_line(done, "no space left on the device of")
  assert tree_digest(out) == before and leftovers(small_tmpfs) == []

  done = export("gs://bucket/run", tmp_path / "new")
  assert done.returncode == 2
  one_error_line(done, "--workdir 'gs://bucket/run' cannot be reached: ImportError", "gcsfs")
  assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------------------- broken model and tokenizer files
@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
  path = tmp_path_factory.mktemp("sharded") / "hf"
  save_hf(init_model(get_preset("tiny")), str(path), tokenizer=byte_tokenizer(), max_shard_size=200_000)
  return path


@pytest.mark.parametrize("name", ["model.safetensors.index.json", "config.json", "generation_config.json",
                                  "tokenizer_config.json", "tokenizer.json"])
def test_a_broken_json_file_of_a_model_folder_is_named(sharded, tmp_path, name):
  source = tmp_path / "hf"
  shutil.copytree(sharded, source)
  (source / name).write_text('{"weight_map": {"model.embed_tokens.weight" ')
  one_error_line(convert(source, tmp_path / "out"), f"{source / name} is not valid JSON", "line 1 column")
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["empty", "tokenizer.model"])
def test_a_folder_without_usable_tokenizer_files_is_named(tmp_path, damage):
  folder = tmp_path / "tok"
  if damage == "empty":
    folder.mkdir()
    fragments = (f"tokenizer path {str(folder)!r} has no tokenizer files",)
  else:
    byte_tokenizer().save_pretrained(folder)
    (folder / "tokenizer.json").unlink()
    (folder / damage).write_bytes(b"\x00garbage{")
    fragments = (f"the tokenizer in {str(folder)!r}", damage)
  one_error_line(run_train(tmp_path / "w", f"tokenizer={folder}"), "tokenizer:", *fragments)
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("tool", ["convert", "generate"])
def test_a_config_value_of_the_wrong_type_is_named(sharded, tmp_path, tool):
  source = tmp_path / "hf"
  shutil.copytree(sharded, source)
  config = json.loads((source / "config.json").read_text())
  (source / "config.json").write_text(json.dumps({**config, "hidden_size": str(config["hidden_size"])}))
  done = (convert(source, tmp_path / "out") if tool == "convert"
          else run_cli("-m", "mlc_jax.generate", "--model", source, "--prompt", "hi"))
  assert done.returncode == 2
  one_error_line(done, f"{source / 'config.json'} cannot be read by transformers", "hidden_size")
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["chat_template.jinja", "tokenizer_config.json"])
def test_a_chat_template_that_cannot_render_is_named_before_anything_is_written(sharded, tmp_path, where):
  source = tmp_path / "hf"
  shutil.copytree(sharded, source)
  broken = "{% for m in messages %}{{ m.content "
  if where == "chat_template.jinja":
    (source / where).write_text(broken)
  else:
    (source / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((source / where).read_text())
    (source / where).write_text(json.dumps({**config, "chat_template": broken}))
  fragments = (f"tokenizer at {str(source)!r}: its chat template ({where}) cannot render", "TemplateSyntaxError")
  done = convert(source, tmp_path / "out")
  assert done.returncode == 2
  one_error_line(done, *fragments)
  assert not (tmp_path / "out").exists()
  done = run_cli("-m", "mlc_jax.generate", "--model", source, "--prompt", "hi")
  assert done.returncode == 2
  one_error_line(done, *fragments)


def test_a_model_folder_as_workdir_and_an_out_that_cannot_be_created_are_named(sharded, trained, tmp_path):
  done = export(sharded, tmp_path / "new")
  assert done.returncode == 2
  one_error_line(done, f"{sharded / 'config.json'} is a Hugging Face model's config", "not a training workdir")
  assert not (tmp_path / "new").exists()
  (tmp_path / "afile").write_text("x")
  done = export(trained, tmp_path / "afile" / "sub")
  assert done.returncode == 2
  one_error_line(done, f"{str(tmp_path / 'afile' / 'sub')!r} cannot be created", "Not a directory")
  assert (tmp_path / "afile").read_text() == "x"

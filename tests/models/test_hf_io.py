"""save_hf / load_hf / `python -m mlc_jax.convert`: transformers loads what we write, for every family; bad input
fails clearly."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from hf_reference import hf_forward, max_rel_error, random_hf_model

from mlc_jax.models import CheckpointError, get_preset, init_model, load_hf, read_config, save_hf
from mlc_jax.models.families import FAMILIES, family_for, llama

IDS = np.random.default_rng(0).integers(0, 512, (2, 12))
MASK = np.array([[1] * 12, [1] * 8 + [0] * 4])


def random_model(preset: str, seed: int, **overrides):
  """A model of a preset whose every parameter (norms and biases included) is random, so a mapping error shows."""
  model = init_model(get_preset(preset, **overrides), seed=seed)
  leaves = nnx.state(model, nnx.Param)
  keys = iter(jax.random.split(jax.random.key(seed), len(jax.tree.leaves(leaves))))
  nnx.update(model, jax.tree.map(lambda p: p + 0.1 * jax.random.normal(next(keys), p.shape, p.dtype), leaves))
  return model


@pytest.mark.parametrize("preset,tied", [("tiny", False), ("tiny", True), ("tiny_qwen2", True), ("tiny_qwen3", False),
                                         ("tiny_gemma2", True), ("tiny_gemma3", True), ("tiny_gemma3", False)])
def test_save_hf_loads_in_transformers_with_same_logits(tmp_path, preset, tied):
  model = random_model(preset, seed=3, tie_embeddings=tied)
  save_hf(model, str(tmp_path / "out"))
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
  assert type(hf_model).__name__ == FAMILIES[model.cfg.family].architecture
  assert hf_model.config.tie_word_embeddings == tied
  ref, _ = hf_forward(hf_model, IDS, MASK)
  assert max_rel_error(model(jnp.asarray(IDS), jnp.asarray(MASK)), ref, MASK) < 1e-4
  assert (tmp_path / "out" / "generation_config.json").exists()
  assert read_config(str(tmp_path / "out"))[0] == model.cfg


def test_sharded_save_writes_an_index_and_round_trips(tmp_path):
  model = init_model(get_preset("tiny"), seed=4)
  save_hf(model, str(tmp_path / "out"), max_shard_size=40_000)
  index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
  files = set(index["weight_map"].values())
  assert len(files) > 1 and all((tmp_path / "out" / f).exists() for f in files)
  for f in files:  # a tensor larger than the limit gets a shard of its own, as in transformers
    tensors = [n for n, fn in index["weight_map"].items() if fn == f]
    assert len(tensors) == 1 or os.path.getsize(tmp_path / "out" / f) <= 40_000 + 4096
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
  ref, _ = hf_forward(hf_model, IDS, MASK)
  assert max_rel_error(load_hf(str(tmp_path / "out"))(jnp.asarray(IDS), jnp.asarray(MASK)), ref, MASK) < 1e-4


def test_bfloat16_save(tmp_path):
  model = init_model(get_preset("tiny"), seed=5)
  save_hf(model, str(tmp_path / "out"), dtype=jnp.bfloat16)
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
  assert hf_model.dtype == torch.bfloat16
  reloaded = load_hf(str(tmp_path / "out"))
  expected = jnp.asarray(model.blocks.attn.q_proj[...], jnp.bfloat16).astype(jnp.float32)
  np.testing.assert_array_equal(np.asarray(reloaded.blocks.attn.q_proj[...]), np.asarray(expected))


def test_save_refuses_to_overwrite_a_non_empty_directory(tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  (out / "keep.txt").write_text("precious")
  with pytest.raises(FileExistsError, match="refusing to overwrite"):
    save_hf(init_model(get_preset("tiny")), str(out))
  assert os.listdir(out) == ["keep.txt"]


def test_tokenizer_is_saved_beside_the_model(tmp_path):
  from mlc_jax.data.tokenizer import byte_tokenizer
  save_hf(init_model(get_preset("tiny")), str(tmp_path / "out"), tokenizer=byte_tokenizer())
  tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
  assert tok.decode(tok("Habari, dunia! 你好")["input_ids"], skip_special_tokens=True) == "Habari, dunia! 你好"


@pytest.fixture
def hf_dir(tmp_path):
  config = llama.config_to_hf(get_preset("tiny"))
  random_hf_model(config).save_pretrained(tmp_path / "hf", max_shard_size="60KB")
  return tmp_path / "hf"


def test_missing_shard_is_named(hf_dir):
  index = json.loads((hf_dir / "model.safetensors.index.json").read_text())
  victim = sorted(set(index["weight_map"].values()))[1]
  os.remove(hf_dir / victim)
  with pytest.raises(FileNotFoundError, match=victim):
    load_hf(str(hf_dir))


def test_wrong_shape_names_tensor_and_both_shapes(hf_dir):
  config = json.loads((hf_dir / "config.json").read_text())
  config["intermediate_size"] = 100
  (hf_dir / "config.json").write_text(json.dumps(config))
  with pytest.raises(CheckpointError, match=r"mlp\.(gate|up|down)_proj\.weight.*\(176, 64\).*\(100, 64\)"
                     r"|mlp\.(gate|up|down)_proj\.weight.*\(64, 176\).*\(64, 100\)"):
    load_hf(str(hf_dir))


def test_unsupported_model_type_lists_supported(hf_dir):
  config = json.loads((hf_dir / "config.json").read_text())
  config["model_type"] = "gpt2"
  (hf_dir / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match="'gpt2' is not supported; supported model_types: .*llama"):
    load_hf(str(hf_dir))


def test_missing_weights_and_directory(tmp_path, hf_dir):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    load_hf(str(tmp_path / "nope"))
  for f in hf_dir.glob("model*.safetensors*"):
    f.unlink()
  with pytest.raises(FileNotFoundError, match="neither model.safetensors nor"):
    load_hf(str(hf_dir))


def run_convert(*args):
  return subprocess.run([sys.executable, "-m", "mlc_jax.convert", *map(str, args)], capture_output=True,
                        text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=300)


def test_convert_cli_round_trip_and_errors(tmp_path, hf_dir):
  out = tmp_path / "converted"
  done = run_convert("--from_hf", hf_dir, "--to_hf", out)
  assert done.returncode == 0, done.stderr
  assert "max |Δ| = 0" in done.stdout
  hf_in = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
  hf_out = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
  np.testing.assert_array_equal(hf_forward(hf_in, IDS)[0], hf_forward(hf_out, IDS)[0])

  again = run_convert("--from_hf", hf_dir, "--to_hf", out)  # out is non-empty now
  assert again.returncode != 0 and "refusing to overwrite" in again.stderr
  missing = run_convert("--from_hf", tmp_path / "absent", "--to_hf", tmp_path / "x")
  assert missing.returncode == 2 and "does not exist" in missing.stderr
  assert not (tmp_path / "x").exists()


def test_unsupported_settings_fail_clearly(tmp_path):
  with pytest.raises(ValueError, match="'gpt2' is not supported; .*gemma2, gemma3_text, llama, qwen2, qwen3"):
    family_for("gpt2")
  transformers.Qwen3Config(attention_bias=True).save_pretrained(tmp_path / "q")
  with pytest.raises(ValueError, match="attention_bias=true is not supported for model_type 'qwen3'"):
    read_config(str(tmp_path / "q"))
  transformers.Gemma2Config(hidden_activation="gelu").save_pretrained(tmp_path / "g")
  with pytest.raises(ValueError, match="hidden_activation='gelu' is not supported for model_type 'gemma2'"):
    read_config(str(tmp_path / "g"))

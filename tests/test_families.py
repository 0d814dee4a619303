"""Qwen2.5, Qwen3, Gemma-2 and Gemma-3 compute what transformers computes (fp32, same random weights).

Tiny random configs built with transformers' own config classes, every weight random (norms included); right
padding; Gemma sequences longer than their sliding window and soft-caps that really cap.
"""
import functools
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
from hf_reference import assert_forward_matches, hf_forward, max_rel_error, padded_batch, random_hf_model

from mlc_jax.models import Decoder, PRESETS, get_preset, load_hf, read_config, save_hf
from mlc_jax.models.families import FAMILIES, family_for

TOL = 1e-4
SEQ, WINDOW = 20, 6
ATTN_CAP, FINAL_CAP = 1.0, 2.0


def qwen2_config(tied=False, sliding=False):
  return transformers.Qwen2Config(
      vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=6,
      num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6,
      rope_parameters={"rope_type": "default", "rope_theta": 1e6}, tie_word_embeddings=tied,
      use_sliding_window=sliding, sliding_window=WINDOW, max_window_layers=1)  # layers 1, 2 slide


def qwen3_config(tied=False):
  return transformers.Qwen3Config(
      vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=6,
      num_key_value_heads=3, head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-6,
      rope_parameters={"rope_type": "default", "rope_theta": 1e6}, tie_word_embeddings=tied)


def gemma2_config(tied=True):
  return transformers.Gemma2Config(
      vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=4, num_attention_heads=4,
      num_key_value_heads=2, head_dim=16, max_position_embeddings=256, query_pre_attn_scalar=24,
      sliding_window=WINDOW, attn_logit_softcapping=ATTN_CAP, final_logit_softcapping=FINAL_CAP,
      tie_word_embeddings=tied)


def gemma3_config(tied=True):
  return transformers.Gemma3TextConfig(
      vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=4, num_attention_heads=4,
      num_key_value_heads=1, head_dim=16, max_position_embeddings=256, query_pre_attn_scalar=32,
      sliding_window=WINDOW, layer_types=["sliding_attention", "sliding_attention", "full_attention",
                                          "sliding_attention"],
      rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                       "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6}},
      final_logit_softcapping=FINAL_CAP, tie_word_embeddings=tied)


CONFIGS = {"qwen2": qwen2_config, "qwen2_sliding": functools.partial(qwen2_config, sliding=True),
           "qwen3": qwen3_config, "gemma2": gemma2_config, "gemma3_text": gemma3_config}


def random_model(config):
  """A random HF model; Gemma's q/k and head weights scaled up so both soft-caps bite."""
  model = random_hf_model(config)
  if config.model_type.startswith("gemma"):
    with torch.no_grad():
      for layer in model.model.layers:
        layer.self_attn.q_proj.weight.mul_(4.0)
        layer.self_attn.k_proj.weight.mul_(4.0)
      model.get_output_embeddings().weight.mul_(3.0)  # the embedding too when tied
  return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """(hf model, directory written by save_pretrained) per (CONFIGS key, tied), built once."""
  cache = {}

  def get(name, tied):
    if (name, tied) not in cache:
      hf_model = random_model(CONFIGS[name](tied=tied))
      path = tmp_path_factory.mktemp(f"{name}-{tied}")
      hf_model.save_pretrained(path)
      cache[name, tied] = hf_model, str(path)
    return cache[name, tied]

  return get


def pre_cap_attention_scores(hf_model, ids):
  """Layer 0's attention scores of position 0 with itself (RoPE is the identity there), before capping."""
  captured = {}
  attn = hf_model.model.layers[0].self_attn
  hooks = [getattr(attn, f"{x}_proj").register_forward_hook(lambda m, i, o, x=x: captured.__setitem__(x, o))
           for x in "qk"]
  hf_forward(hf_model, ids)
  for h in hooks:
    h.remove()
  cfg = hf_model.config
  q = captured["q"][:, 0].reshape(len(ids), cfg.num_key_value_heads, -1, cfg.head_dim)
  k = captured["k"][:, 0].reshape(len(ids), cfg.num_key_value_heads, 1, cfg.head_dim)
  return ((q * k).sum(-1) * cfg.query_pre_attn_scalar**-0.5).numpy()


@pytest.mark.parametrize("name,tied", [("qwen2", False), ("qwen2", True), ("qwen2_sliding", False), ("qwen3", False),
                                       ("qwen3", True), ("gemma2", True), ("gemma2", False), ("gemma3_text", True),
                                       ("gemma3_text", False)])
def test_logits_and_hidden_states_match_transformers(saved, name, tied):
  hf_model, path = saved(name, tied)
  model = load_hf(path)
  cfg = model.cfg
  assert cfg.family == hf_model.config.model_type and cfg.tie_embeddings == tied
  ids, mask = padded_batch(cfg.vocab_size)
  ref_hidden = assert_forward_matches(model, hf_model, ids, mask, TOL)
  assert max_rel_error(model.hidden_state_at(jnp.asarray(ids), jnp.asarray(mask), layer=2), ref_hidden[2], mask) < TOL

  if cfg.final_logit_softcap is not None:  # the caps are active: some pre-cap value exceeds them
    last = model.hidden_states(jnp.asarray(ids), jnp.asarray(mask))
    assert np.abs(np.asarray(last @ model.unembedding()))[mask.astype(bool)].max() > cfg.final_logit_softcap
  if cfg.attn_logit_softcap is not None:
    assert np.abs(pre_cap_attention_scores(hf_model, ids)).max() > cfg.attn_logit_softcap


def with_config(model, **changes):
  """The same parameters under a changed config."""
  other = nnx.eval_shape(lambda: Decoder(model.cfg.replace(**changes), rngs=nnx.Rngs(0)))
  nnx.update(other, nnx.state(model))
  return other


@pytest.mark.parametrize("name", ["qwen2_sliding", "gemma2", "gemma3_text"])
def test_sliding_window_and_local_rope_matter(saved, name):
  _, path = saved(name, False)
  model = load_hf(path)
  assert any(model.cfg.sliding_layers) and not all(model.cfg.sliding_layers) and SEQ > model.cfg.sliding_window
  ids, mask = padded_batch(model.cfg.vocab_size)
  ids, mask = jnp.asarray(ids), jnp.asarray(mask)
  logits = model(ids, mask)
  assert max_rel_error(with_config(model, sliding_window=SEQ)(ids, mask), logits, mask) > 1e-3
  if model.cfg.rope_local_theta is not None:
    assert max_rel_error(with_config(model, rope_local_theta=None)(ids, mask), logits, mask) > 1e-3


@pytest.mark.parametrize("name", ["qwen2_sliding", "qwen3", "gemma2", "gemma3_text"])
def test_attention_impls_agree(saved, name):
  """'dot_product' (jax.nn.dot_product_attention, local_window_size on sliding layers) equals 'xla'."""
  _, path = saved(name, False)
  ids, mask = (jnp.asarray(a) for a in padded_batch(97))
  xla, fused = load_hf(path), load_hf(path, attention_impl="dot_product")
  soft_capped = xla.cfg.attn_logit_softcap is not None  # Gemma-2 falls back to 'xla'
  assert fused.blocks.attn.attention_impl == ("xla" if soft_capped else "dot_product")
  assert max_rel_error(fused(ids, mask), xla(ids, mask), mask) < 1e-5


def test_attention_impls_agree_on_gradients(saved):
  """Through the per-layer lax.cond between windowed and full attention (Gemma-3, jitted)."""
  _, path = saved("gemma3_text", False)
  ids, mask = (jnp.asarray(a) for a in padded_batch(97))

  def loss(model):
    return jnp.sum(jnp.where(mask[..., None], jax.nn.log_softmax(model(ids, mask)), 0.0) ** 2) * 1e-4

  models = load_hf(path), load_hf(path, attention_impl="dot_product")
  (loss_x, grads_x), (loss_f, grads_f) = (jax.jit(nnx.value_and_grad(loss))(m) for m in models)
  assert abs(float(loss_x - loss_f)) <= 1e-6 * abs(float(loss_x))
  for (name, g_x), (_, g_f) in zip(nnx.to_flat_state(grads_x), nnx.to_flat_state(grads_f)):
    assert max_rel_error(g_f.get_value(), g_x.get_value()) < 1e-5, name


@pytest.mark.parametrize("name,tied", [("qwen2", True), ("qwen2_sliding", False), ("qwen3", False), ("gemma2", True),
                                       ("gemma3_text", True), ("gemma3_text", False)])
def test_save_hf_loads_in_transformers_with_same_logits(saved, tmp_path, name, tied):
  _, path = saved(name, tied)
  model = load_hf(path)
  save_hf(model, str(tmp_path / "out"))
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
  assert type(hf_model).__name__ == FAMILIES[model.cfg.family].architecture
  assert hf_model.config.tie_word_embeddings == tied
  ids, mask = padded_batch(model.cfg.vocab_size)
  assert max_rel_error(model(jnp.asarray(ids), jnp.asarray(mask)), hf_forward(hf_model, ids, mask)[0], mask) < TOL
  assert read_config(str(tmp_path / "out"))[0] == model.cfg


def test_convert_cli_round_trips_a_gemma3(saved, tmp_path):
  _, path = saved("gemma3_text", True)
  done = subprocess.run([sys.executable, "-m", "mlc_jax.convert", "--from_hf", path, "--to_hf", str(tmp_path / "out")],
                        capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=300)
  assert done.returncode == 0, done.stderr
  assert "gemma3_text" in done.stdout and "max |Δ| = 0" in done.stdout


def test_unsupported_settings_fail_clearly(tmp_path):
  with pytest.raises(ValueError, match="'gpt2' is not supported; .*gemma2, gemma3_text, llama, qwen2, qwen3"):
    family_for("gpt2")
  transformers.Qwen3Config(attention_bias=True).save_pretrained(tmp_path / "q")
  with pytest.raises(ValueError, match="attention_bias=true is not supported for model_type 'qwen3'"):
    read_config(str(tmp_path / "q"))
  transformers.Gemma2Config(hidden_activation="gelu").save_pretrained(tmp_path / "g")
  with pytest.raises(ValueError, match="hidden_activation='gelu' is not supported for model_type 'gemma2'"):
    read_config(str(tmp_path / "g"))


NEW_PRESETS = [n for n in PRESETS if n.split("_")[0] in ("qwen2p5", "qwen3", "gemma2", "gemma3")]


def test_preset_configs_round_trip(tmp_path):
  for name in NEW_PRESETS:
    cfg = get_preset(name)
    FAMILIES[cfg.family].config_to_hf(cfg).save_pretrained(tmp_path / name)
    assert read_config(str(tmp_path / name))[0] == cfg, name


# Fields of the published config.json files (transformers-4 style: rope_theta, rope_local_base_freq,
# sliding_window_pattern), read by transformers 5 into our presets.
PUBLISHED_CONFIGS = {
    "qwen2p5_7b": dict(
        architectures=["Qwen2ForCausalLM"], model_type="qwen2", bos_token_id=151643, eos_token_id=151645,
        hidden_act="silu", hidden_size=3584, intermediate_size=18944, max_position_embeddings=32768,
        max_window_layers=28, num_attention_heads=28, num_hidden_layers=28, num_key_value_heads=4,
        rms_norm_eps=1e-6, rope_theta=1000000.0, sliding_window=131072, tie_word_embeddings=False,
        use_sliding_window=False, vocab_size=152064),
    "qwen3_8b": dict(
        architectures=["Qwen3ForCausalLM"], model_type="qwen3", attention_bias=False, bos_token_id=151643,
        eos_token_id=151645, head_dim=128, hidden_act="silu", hidden_size=4096, intermediate_size=12288,
        max_position_embeddings=40960, max_window_layers=36, num_attention_heads=32, num_hidden_layers=36,
        num_key_value_heads=8, rms_norm_eps=1e-6, rope_scaling=None, rope_theta=1000000, sliding_window=None,
        tie_word_embeddings=False, use_sliding_window=False, vocab_size=151936),
    "gemma2_9b": dict(
        architectures=["Gemma2ForCausalLM"], model_type="gemma2", attention_bias=False, attn_logit_softcapping=50.0,
        bos_token_id=2, eos_token_id=[1, 107], final_logit_softcapping=30.0, head_dim=256,
        hidden_activation="gelu_pytorch_tanh", hidden_size=3584, intermediate_size=14336,
        max_position_embeddings=8192, num_attention_heads=16, num_hidden_layers=42, num_key_value_heads=8,
        pad_token_id=0, query_pre_attn_scalar=256, rms_norm_eps=1e-6, rope_theta=10000.0, sliding_window=4096,
        vocab_size=256000),
    "gemma3_1b": dict(
        architectures=["Gemma3ForCausalLM"], model_type="gemma3_text", attention_bias=False,
        attn_logit_softcapping=None, bos_token_id=2, eos_token_id=[1, 106], final_logit_softcapping=None,
        head_dim=256, hidden_activation="gelu_pytorch_tanh", hidden_size=1152, intermediate_size=6912,
        max_position_embeddings=32768, num_attention_heads=4, num_hidden_layers=26, num_key_value_heads=1,
        pad_token_id=0, query_pre_attn_scalar=256, rms_norm_eps=1e-6, rope_local_base_freq=10000,
        rope_scaling=None, rope_theta=1000000, sliding_window=512, sliding_window_pattern=6, vocab_size=262144),
    "gemma3_27b": dict(  # the text_config of gemma-3-27b-it, as a text-only model
        architectures=["Gemma3ForCausalLM"], model_type="gemma3_text", bos_token_id=2, eos_token_id=[1, 106],
        head_dim=128, hidden_size=5376, intermediate_size=21504, max_position_embeddings=131072,
        num_attention_heads=32, num_hidden_layers=62, num_key_value_heads=16, pad_token_id=0,
        query_pre_attn_scalar=168, rope_scaling={"factor": 8.0, "rope_type": "linear"}, sliding_window=1024,
        vocab_size=262208),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_CONFIGS))
def test_published_config_json_reads_as_the_preset(tmp_path, name):
  (tmp_path / "config.json").write_text(json.dumps(PUBLISHED_CONFIGS[name]))
  assert read_config(str(tmp_path))[0] == get_preset(name)


# Published parameter counts (the safetensors totals; Gemma-3 4B/12B/27B: the text stack alone, i.e. the
# published total minus the SigLIP vision tower and projector). Qwen3-1.7B's checkpoint stores its tied LM
# head a second time: its published 2,031,739,904 counts vocab × hidden = 151936 × 2048 twice.
PUBLISHED_COUNTS = {
    "qwen2p5_0p5b": 494_032_768, "qwen2p5_1p5b": 1_543_714_304, "qwen2p5_3b": 3_085_938_688,
    "qwen2p5_7b": 7_615_616_512, "qwen2p5_14b": 14_770_033_664, "qwen2p5_32b": 32_763_876_352,
    "qwen2p5_72b": 72_706_203_648,
    "qwen3_0p6b": 596_049_920, "qwen3_1p7b": 2_031_739_904 - 151936 * 2048, "qwen3_4b": 4_022_468_096,
    "qwen3_8b": 8_190_735_360, "qwen3_14b": 14_768_307_200, "qwen3_32b": 32_762_123_264,
    "gemma2_2b": 2_614_341_888, "gemma2_9b": 9_241_705_984, "gemma2_27b": 27_227_128_320,
    "gemma3_1b": 999_885_952, "gemma3_4b": 3_880_263_168, "gemma3_12b": 11_766_034_176,
    "gemma3_27b": 27_009_346_304,
}


def test_every_new_preset_is_counted():
  assert sorted(PUBLISHED_COUNTS) == sorted(NEW_PRESETS)


@pytest.mark.parametrize("name", sorted(PUBLISHED_COUNTS))
def test_presets_have_the_published_parameter_count(name):
  cfg = get_preset(name)
  abstract = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
  counted = sum(int(np.prod(v.get_value().shape)) for _, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param)))
  assert counted == cfg.num_params() == PUBLISHED_COUNTS[name]

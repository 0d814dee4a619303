"""Every family (Llama-3, Qwen2.5, Qwen3, Gemma-2, Gemma-3) computes what transformers computes (fp32, same weights).

Tiny random configs built with transformers' own config classes, every weight random (norms included); right
padding (left padding with explicit positions for Llama); GQA and MHA, llama3 RoPE scaling, tied and untied heads;
Gemma sequences longer than their sliding window and soft-caps that really cap.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from hf_reference import assert_forward_matches, hf_forward, max_rel_error, padded_batch, random_hf_model

from mlc_jax.models import Decoder, load_hf
from mlc_jax.parallel import sharding as sharding_lib
from mlc_jax.parallel.mesh import make_mesh

TOL = 1e-4
SEQ, WINDOW = 20, 6
ATTN_CAP, FINAL_CAP = 1.0, 2.0
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}


def llama_config(*, kv_heads=2, rope_scaling=False, tied=False):
  return transformers.LlamaConfig(
      vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=6,
      num_key_value_heads=kv_heads, head_dim=8, max_position_embeddings=256, rms_norm_eps=1e-5,
      rope_parameters=LLAMA3_ROPE if rope_scaling else {"rope_type": "default", "rope_theta": 10000.0},
      tie_word_embeddings=tied)


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


CONFIGS = {"llama": llama_config, "llama3_rope": functools.partial(llama_config, rope_scaling=True),
           "llama_mha": functools.partial(llama_config, kv_heads=6, rope_scaling=True), "qwen2": qwen2_config,
           "qwen2_sliding": functools.partial(qwen2_config, sliding=True), "qwen3": qwen3_config,
           "gemma2": gemma2_config, "gemma3_text": gemma3_config}


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


@pytest.mark.parametrize("name,tied", [("llama", False), ("llama3_rope", False), ("llama_mha", True), ("llama", True),
                                       ("qwen2", False), ("qwen2", True), ("qwen2_sliding", False), ("qwen3", False),
                                       ("qwen3", True), ("gemma2", True), ("gemma2", False), ("gemma3_text", True),
                                       ("gemma3_text", False)])
def test_logits_and_hidden_states_match_transformers(saved, name, tied):
  hf_model, path = saved(name, tied)
  model = load_hf(path)
  cfg = model.cfg
  assert cfg.family == hf_model.config.model_type and cfg.tie_embeddings == tied
  assert (cfg.rope_scaling is not None) == (name in ("llama3_rope", "llama_mha", "gemma3_text"))
  ids, mask = padded_batch(cfg.vocab_size)
  ref_hidden = assert_forward_matches(model, hf_model, ids, mask, TOL)
  for k in range(len(ref_hidden)):
    single = model.hidden_state_at(jnp.asarray(ids), jnp.asarray(mask), layer=k)
    assert max_rel_error(single, ref_hidden[k], mask) < TOL, f"hidden_state_at(layer={k})"

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


def test_left_padding_with_explicit_positions(saved):
  hf_model, path = saved("llama3_rope", False)
  config = hf_model.config
  model = load_hf(path)
  ids, _ = padded_batch(config.vocab_size)
  mask = np.ones_like(ids)
  mask[0, :4] = 0
  mask[2, :11] = 0
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  ref_logits, _ = hf_forward(hf_model, ids, mask, positions)
  logits = model(jnp.asarray(ids), jnp.asarray(mask), positions=jnp.asarray(positions))
  assert np.isfinite(np.asarray(logits)).all()  # fully masked (pad) query rows stay finite
  assert max_rel_error(logits, ref_logits, mask) < TOL


def test_padding_does_not_change_real_tokens(saved):
  model = load_hf(saved("llama", False)[1])
  ids, mask = padded_batch(97)
  padded = model(jnp.asarray(ids), jnp.asarray(mask))
  alone = model(jnp.asarray(ids[2:3, :5]))
  np.testing.assert_allclose(np.asarray(padded[2, :5]), np.asarray(alone[0]), rtol=1e-5, atol=1e-5)


def test_sharded_hf_checkpoint_loads(tmp_path):
  config = llama_config()
  hf_model = random_hf_model(config)
  hf_model.save_pretrained(tmp_path, max_shard_size="20KB")
  assert (tmp_path / "model.safetensors.index.json").exists()
  model = load_hf(str(tmp_path))
  ids, mask = padded_batch(config.vocab_size)
  assert max_rel_error(model(jnp.asarray(ids), jnp.asarray(mask)), hf_forward(hf_model, ids, mask)[0], mask) < TOL


@pytest.mark.parametrize("mesh_shape", [(1, 8, 1), (2, 2, 2), (1, 2, 4)])
def test_load_onto_a_mesh_places_each_tensor_in_its_sharding(tmp_path, mesh_shape):
  config = llama_config(kv_heads=2)
  config.num_attention_heads, config.num_key_value_heads, config.head_dim = 8, 4, 6
  config.vocab_size = 96
  hf_model = random_hf_model(config)
  hf_model.save_pretrained(tmp_path)
  mesh = make_mesh(mesh_shape)
  model = load_hf(str(tmp_path), mesh=mesh)
  q = model.blocks.attn.q_proj[...]
  expected = sharding_lib.logical_to_spec(("layers", "embed", "q_heads", "head_dim"), q.shape, mesh)
  assert q.sharding.spec == expected
  if mesh.shape["tensor"] > 1:
    assert expected[2] == "tensor"
  if mesh.shape["fsdp"] > 1:
    assert expected[1] == "fsdp"
  ids, mask = padded_batch(config.vocab_size)
  logits = jax.jit(lambda m, i, a: m(i, a))(model, jnp.asarray(ids), jnp.asarray(mask))
  assert max_rel_error(logits, hf_forward(hf_model, ids, mask)[0], mask) < TOL

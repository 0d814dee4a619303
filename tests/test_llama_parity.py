"""The Llama decoder computes what transformers' LlamaForCausalLM computes (fp32, same random weights)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from hf_reference import assert_forward_matches, hf_forward, max_rel_error, padded_batch, random_hf_model

from mlc_jax.models import get_preset, load_hf, read_config
from mlc_jax.models.families import llama
from mlc_jax.parallel import sharding as sharding_lib
from mlc_jax.parallel.mesh import make_mesh

TOL = 1e-4
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}


def llama_config(*, kv_heads=2, rope_scaling=False, tied=False, bias=False, layers=3):
  return transformers.LlamaConfig(
      vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=layers, num_attention_heads=6,
      num_key_value_heads=kv_heads, head_dim=8, max_position_embeddings=256, rms_norm_eps=1e-5,
      rope_parameters=LLAMA3_ROPE if rope_scaling else {"rope_type": "default", "rope_theta": 10000.0},
      tie_word_embeddings=tied, attention_bias=bias)


def save_random(tmp_path, config, **save_kwargs):
  model = random_hf_model(config)
  model.save_pretrained(tmp_path, **save_kwargs)
  return model


@pytest.mark.parametrize("kv_heads,rope_scaling,tied", [
    (2, False, False),  # GQA, plain RoPE, untied
    (2, True, False),  # GQA with llama3 rope scaling
    (6, True, True),  # MHA, scaled RoPE, tied embeddings
    (3, False, True),  # GQA, tied
])
def test_logits_and_hidden_states_match_transformers(tmp_path, kv_heads, rope_scaling, tied):
  config = llama_config(kv_heads=kv_heads, rope_scaling=rope_scaling, tied=tied)
  hf_model = save_random(tmp_path, config)
  model = load_hf(str(tmp_path))
  assert model.cfg.tie_embeddings == tied and model.cfg.num_kv_heads == kv_heads
  assert (model.cfg.rope_scaling is not None) == rope_scaling

  ids, mask = padded_batch(config.vocab_size)
  ref_hidden = assert_forward_matches(model, hf_model, ids, mask, TOL)
  for k in range(len(ref_hidden)):
    single = model.hidden_state_at(jnp.asarray(ids), jnp.asarray(mask), layer=k)
    assert max_rel_error(single, ref_hidden[k], mask) < TOL, f"hidden_state_at(layer={k})"


def test_left_padding_with_explicit_positions(tmp_path):
  config = llama_config(rope_scaling=True)
  hf_model = save_random(tmp_path, config)
  model = load_hf(str(tmp_path))
  ids, _ = padded_batch(config.vocab_size)
  mask = np.ones_like(ids)
  mask[0, :4] = 0
  mask[2, :11] = 0
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  ref_logits, _ = hf_forward(hf_model, ids, mask, positions)
  logits = model(jnp.asarray(ids), jnp.asarray(mask), positions=jnp.asarray(positions))
  assert np.isfinite(np.asarray(logits)).all()  # fully masked (pad) query rows stay finite
  assert max_rel_error(logits, ref_logits, mask) < TOL


def test_padding_does_not_change_real_tokens(tmp_path):
  hf_model = save_random(tmp_path, llama_config())
  del hf_model
  model = load_hf(str(tmp_path))
  ids, mask = padded_batch(97)
  padded = model(jnp.asarray(ids), jnp.asarray(mask))
  alone = model(jnp.asarray(ids[2:3, :5]))
  np.testing.assert_allclose(np.asarray(padded[2, :5]), np.asarray(alone[0]), rtol=1e-5, atol=1e-5)


def test_sharded_hf_checkpoint_loads(tmp_path):
  config = llama_config()
  hf_model = save_random(tmp_path, config, max_shard_size="20KB")
  assert (tmp_path / "model.safetensors.index.json").exists()
  model = load_hf(str(tmp_path))
  ids, mask = padded_batch(config.vocab_size)
  assert max_rel_error(model(jnp.asarray(ids), jnp.asarray(mask)), hf_forward(hf_model, ids, mask)[0], mask) < TOL


@pytest.mark.parametrize("mesh_shape", [(1, 8, 1), (2, 2, 2), (1, 2, 4)])
def test_load_onto_a_mesh_places_each_tensor_in_its_sharding(tmp_path, mesh_shape):
  config = llama_config(kv_heads=2)
  config.num_attention_heads, config.num_key_value_heads, config.head_dim = 8, 4, 6
  config.vocab_size = 96
  hf_model = save_random(tmp_path, config)
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


def test_config_translation_round_trips(tmp_path):
  for name in ("tiny", "llama3p2_1b", "llama3p1_8b"):
    cfg = get_preset(name)
    llama.config_to_hf(cfg).save_pretrained(tmp_path / name)
    (tmp_path / name / "model.safetensors").touch()
    assert read_config(str(tmp_path / name))[0] == cfg


@pytest.mark.parametrize("name,published", [
    ("llama3p2_1b", 1_235_814_400), ("llama3p2_3b", 3_212_749_824),
    ("llama3p1_8b", 8_030_261_248), ("llama3p1_70b", 70_553_706_496)])
def test_presets_have_the_published_parameter_count(name, published):
  from flax import nnx

  from mlc_jax.models import Decoder
  cfg = get_preset(name)
  abstract = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
  counted = sum(int(np.prod(v.get_value().shape)) for _, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param)))
  assert counted == cfg.num_params() == published

"""Presets: their configs round-trip through transformers, published config.json files read as them, and their
parameter counts equal the published checkpoints'."""
import json

import numpy as np
import pytest
from flax import nnx

from mlc_jax.models import PRESETS, Decoder, get_preset, read_config
from mlc_jax.models.families import FAMILIES


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_configs_round_trip_through_transformers(tmp_path, name):
  cfg = get_preset(name)
  FAMILIES[cfg.family].config_to_hf(cfg).save_pretrained(tmp_path)
  assert read_config(str(tmp_path))[0] == cfg


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
    "llama3p2_1b": 1_235_814_400, "llama3p2_3b": 3_212_749_824, "llama3p1_8b": 8_030_261_248,
    "llama3p1_70b": 70_553_706_496,
    "qwen2p5_0p5b": 494_032_768, "qwen2p5_1p5b": 1_543_714_304, "qwen2p5_3b": 3_085_938_688,
    "qwen2p5_7b": 7_615_616_512, "qwen2p5_14b": 14_770_033_664, "qwen2p5_32b": 32_763_876_352,
    "qwen2p5_72b": 72_706_203_648,
    "qwen3_0p6b": 596_049_920, "qwen3_1p7b": 2_031_739_904 - 151936 * 2048, "qwen3_4b": 4_022_468_096,
    "qwen3_8b": 8_190_735_360, "qwen3_14b": 14_768_307_200, "qwen3_32b": 32_762_123_264,
    "gemma2_2b": 2_614_341_888, "gemma2_9b": 9_241_705_984, "gemma2_27b": 27_227_128_320,
    "gemma3_1b": 999_885_952, "gemma3_4b": 3_880_263_168, "gemma3_12b": 11_766_034_176,
    "gemma3_27b": 27_009_346_304,
}


def test_every_published_preset_is_counted():
  cpu_sized = {n for n in PRESETS if n.startswith("tiny")} | {"small"}
  assert sorted(PUBLISHED_COUNTS) == sorted(set(PRESETS) - cpu_sized)


@pytest.mark.parametrize("name", sorted(PUBLISHED_COUNTS))
def test_presets_have_the_published_parameter_count(name):
  cfg = get_preset(name)
  abstract = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
  counted = sum(int(np.prod(v.get_value().shape)) for _, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param)))
  assert counted == cfg.num_params() == PUBLISHED_COUNTS[name]

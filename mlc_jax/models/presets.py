"""Named architectures. `tiny` fits a CPU test; the others match the published checkpoints' config.json."""
from __future__ import annotations

from mlc_jax.models.config import ModelConfig, freeze_rope_scaling


def _llama3_rope(factor: float) -> tuple:
  return freeze_rope_scaling({"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})


def _interleaved(every: int, **fields) -> ModelConfig:
  """A ModelConfig with HF's default layer pattern: every `every`-th layer global, the others sliding."""
  return ModelConfig(**fields, layer_types=tuple("full_attention" if (i + 1) % every == 0 else "sliding_attention"
                                                 for i in range(fields["num_layers"])))


_LLAMA3 = dict(family="llama", vocab_size=128256, rope_theta=500000.0, max_position_embeddings=131072,
               rms_norm_eps=1e-5, bos_token_id=128000, eos_token_id=128001, head_dim=128, num_kv_heads=8)

PRESETS: dict[str, ModelConfig] = {
    # 512 = the built-in byte tokenizer's vocabulary (mlc_jax.data.tokenizer.BYTE_VOCAB_SIZE).
    "tiny": ModelConfig(family="llama", vocab_size=512, hidden_size=64, intermediate_size=176, num_layers=2,
                        num_heads=4, num_kv_heads=2, head_dim=16, rope_theta=10000.0,
                        max_position_embeddings=2048, tie_embeddings=False),
    # A few-M-parameter Llama on the byte tokenizer: the CPU transfer experiment's model (issue 16).
    "small": ModelConfig(family="llama", vocab_size=512, hidden_size=128, intermediate_size=384, num_layers=4,
                         num_heads=4, num_kv_heads=2, head_dim=32, rope_theta=10000.0,
                         max_position_embeddings=2048, tie_embeddings=False),
    "llama3p2_1b": ModelConfig(**{**_LLAMA3, "head_dim": 64}, hidden_size=2048, intermediate_size=8192,
                               num_layers=16, num_heads=32, tie_embeddings=True, rope_scaling=_llama3_rope(32.0)),
    "llama3p2_3b": ModelConfig(**_LLAMA3, hidden_size=3072, intermediate_size=8192, num_layers=28, num_heads=24,
                               tie_embeddings=True, rope_scaling=_llama3_rope(32.0)),
    "llama3p1_8b": ModelConfig(**_LLAMA3, hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
                               rope_scaling=_llama3_rope(8.0)),
    "llama3p1_70b": ModelConfig(**_LLAMA3, hidden_size=8192, intermediate_size=28672, num_layers=80,
                                num_heads=64, rope_scaling=_llama3_rope(8.0)),
}

# Qwen2.5 (Instruct token ids); the 0.5B-3B models tie their embeddings.
_QWEN2P5 = dict(family="qwen2", vocab_size=152064, rope_theta=1000000.0, max_position_embeddings=32768,
                rms_norm_eps=1e-6, bos_token_id=151643, eos_token_id=151645, attention_bias=True, head_dim=128)
_QWEN2P5_SMALL = {**_QWEN2P5, "vocab_size": 151936, "tie_embeddings": True}
PRESETS.update({
    "qwen2p5_0p5b": ModelConfig(**{**_QWEN2P5_SMALL, "head_dim": 64}, hidden_size=896, intermediate_size=4864,
                                num_layers=24, num_heads=14, num_kv_heads=2),
    "qwen2p5_1p5b": ModelConfig(**_QWEN2P5_SMALL, hidden_size=1536, intermediate_size=8960, num_layers=28,
                                num_heads=12, num_kv_heads=2),
    "qwen2p5_3b": ModelConfig(**_QWEN2P5_SMALL, hidden_size=2048, intermediate_size=11008, num_layers=36,
                              num_heads=16, num_kv_heads=2),
    "qwen2p5_7b": ModelConfig(**_QWEN2P5, hidden_size=3584, intermediate_size=18944, num_layers=28, num_heads=28,
                              num_kv_heads=4),
    "qwen2p5_14b": ModelConfig(**_QWEN2P5, hidden_size=5120, intermediate_size=13824, num_layers=48, num_heads=40,
                               num_kv_heads=8),
    "qwen2p5_32b": ModelConfig(**_QWEN2P5, hidden_size=5120, intermediate_size=27648, num_layers=64, num_heads=40,
                               num_kv_heads=8),
    "qwen2p5_72b": ModelConfig(**_QWEN2P5, hidden_size=8192, intermediate_size=29568, num_layers=80, num_heads=64,
                               num_kv_heads=8),
})

# Qwen3 (same token ids): head_dim 128 at every size; the 0.6B-4B models tie their embeddings.
_QWEN3 = dict(family="qwen3", vocab_size=151936, rope_theta=1000000.0, max_position_embeddings=40960,
              rms_norm_eps=1e-6, bos_token_id=151643, eos_token_id=151645, qk_norm=True, head_dim=128,
              num_kv_heads=8)
PRESETS.update({
    "qwen3_0p6b": ModelConfig(**_QWEN3, hidden_size=1024, intermediate_size=3072, num_layers=28, num_heads=16,
                              tie_embeddings=True),
    "qwen3_1p7b": ModelConfig(**_QWEN3, hidden_size=2048, intermediate_size=6144, num_layers=28, num_heads=16,
                              tie_embeddings=True),
    "qwen3_4b": ModelConfig(**_QWEN3, hidden_size=2560, intermediate_size=9728, num_layers=36, num_heads=32,
                            tie_embeddings=True),
    "qwen3_8b": ModelConfig(**_QWEN3, hidden_size=4096, intermediate_size=12288, num_layers=36, num_heads=32),
    "qwen3_14b": ModelConfig(**_QWEN3, hidden_size=5120, intermediate_size=17408, num_layers=40, num_heads=40),
    "qwen3_32b": ModelConfig(**_QWEN3, hidden_size=5120, intermediate_size=25600, num_layers=64, num_heads=64),
})

# Gemma-2 (-it token ids): tied embeddings, soft-caps 50 (attention) / 30 (logits), window 4096 on even layers.
_GEMMA = dict(hidden_act="gelu_pytorch_tanh", rms_norm_eps=1e-6, tie_embeddings=True, norm_plus_one=True,
              post_norms=True, scale_embeddings=True, bos_token_id=2, pad_token_id=0)
_GEMMA2 = dict(_GEMMA, family="gemma2", vocab_size=256000, rope_theta=10000.0, max_position_embeddings=8192,
               eos_token_id=(1, 107), attn_logit_softcap=50.0, final_logit_softcap=30.0, sliding_window=4096)
PRESETS.update({
    "gemma2_2b": _interleaved(2, **_GEMMA2, hidden_size=2304, intermediate_size=9216, num_layers=26, num_heads=8,
                              num_kv_heads=4, head_dim=256, query_pre_attn_scalar=256.0),
    "gemma2_9b": _interleaved(2, **_GEMMA2, hidden_size=3584, intermediate_size=14336, num_layers=42, num_heads=16,
                              num_kv_heads=8, head_dim=256, query_pre_attn_scalar=256.0),
    "gemma2_27b": _interleaved(2, **_GEMMA2, hidden_size=4608, intermediate_size=36864, num_layers=46, num_heads=32,
                               num_kv_heads=16, head_dim=128, query_pre_attn_scalar=144.0),
})

# Gemma-3 text stacks, -it token ids (4B/12B/27B: the language model of Gemma3ForConditionalGeneration without
# the vision tower): q/k norms, 5 sliding layers (RoPE base 10k) per global one (base 1M, linear ×8 from 4B up).
_GEMMA3 = dict(_GEMMA, family="gemma3_text", vocab_size=262208, rope_theta=1000000.0, rope_local_theta=10000.0,
               max_position_embeddings=131072, eos_token_id=(1, 106), qk_norm=True, sliding_window=1024,
               rope_scaling=freeze_rope_scaling({"rope_type": "linear", "factor": 8.0}))
PRESETS.update({
    "gemma3_1b": _interleaved(6, **{**_GEMMA3, "vocab_size": 262144, "max_position_embeddings": 32768,
                                    "sliding_window": 512, "rope_scaling": None}, hidden_size=1152,
                              intermediate_size=6912, num_layers=26, num_heads=4, num_kv_heads=1, head_dim=256,
                              query_pre_attn_scalar=256.0),
    "gemma3_4b": _interleaved(6, **_GEMMA3, hidden_size=2560, intermediate_size=10240, num_layers=34, num_heads=8,
                              num_kv_heads=4, head_dim=256, query_pre_attn_scalar=256.0),
    "gemma3_12b": _interleaved(6, **_GEMMA3, hidden_size=3840, intermediate_size=15360, num_layers=48, num_heads=16,
                               num_kv_heads=8, head_dim=256, query_pre_attn_scalar=256.0),
    "gemma3_27b": _interleaved(6, **_GEMMA3, hidden_size=5376, intermediate_size=21504, num_layers=62, num_heads=32,
                               num_kv_heads=16, head_dim=128, query_pre_attn_scalar=168.0),
})


# Tiny variants of every family for CPU tests and configs (`model=tiny_<family>`): byte-tokenizer vocabulary
# and token ids, two or three layers, windows short enough that the sliding layers matter at test lengths.
_TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=176, num_heads=4, num_kv_heads=2, head_dim=16,
             max_position_embeddings=2048, bos_token_id=257, eos_token_id=258, pad_token_id=256)
PRESETS.update({
    "tiny_qwen2": ModelConfig(**{**_QWEN2P5_SMALL, **_TINY}, num_layers=2),
    "tiny_qwen3": ModelConfig(**{**_QWEN3, **_TINY}, num_layers=2),
    "tiny_gemma2": _interleaved(2, **{**_GEMMA2, **_TINY, "sliding_window": 16}, num_layers=2,
                                query_pre_attn_scalar=16.0),
    "tiny_gemma3": _interleaved(3, **{**_GEMMA3, **_TINY, "sliding_window": 16}, num_layers=3,
                                query_pre_attn_scalar=16.0),
})


def get_preset(name: str, **overrides) -> ModelConfig:
  """The preset called `name`, with optional field overrides; unknown names list the known ones."""
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}")
  return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]

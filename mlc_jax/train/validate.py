"""Up-front config validation: every problem is a one-line `ConfigError` naming the key, before any work."""
from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import numpy as np

from mlc_jax.data.preferences import MPO_DATASET_PREFIX
from mlc_jax.models import PRESETS, ModelConfig, read_config
from mlc_jax.models.decoder import ATTENTION_IMPLS, REMAT_POLICIES
from mlc_jax.parallel.mesh import resolve_mesh_shape
from mlc_jax.train.config_lib import ConfigError, check_known_keys
from mlc_jax.train.objective import BASES

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
CHOICES = {
    "objective.base": BASES,
    "reference": ("precomputed", "frozen_copy"),
    "mlc.normalize": ("sigma1", "none"),
    "optim.schedule": ("cosine", "constant"),
    "model.remat": tuple(REMAT_POLICIES),
    "model.attention_impl": ATTENTION_IMPLS,
    "model.dtype": tuple(DTYPES),
    "model.param_dtype": tuple(DTYPES),
}


def _get(config, key):
  node = config
  for part in key.split("."):
    node = node[part]
  return node


def model_config(config) -> ModelConfig:
  """The architecture: from `model.hf_path` when set, else the preset."""
  if config.model.hf_path:
    try:
      return read_config(config.model.hf_path)[0]
    except (OSError, ValueError) as e:
      raise ConfigError(f"model.hf_path: {e}") from e
  if config.model.preset not in PRESETS:
    raise ConfigError(f"model.preset={config.model.preset!r} is unknown; known presets: {', '.join(PRESETS)}")
  return PRESETS[config.model.preset]


def mlc_layer(config, cfg: ModelConfig) -> int:
  """The HF hidden-states index the MLC representation is read from (-1 → num_layers)."""
  layer = config.mlc.layer
  layer = cfg.num_layers if layer == -1 else layer
  if not 0 <= layer <= cfg.num_layers:
    raise ConfigError(f"mlc.layer={config.mlc.layer} is out of range: this model has hidden_states indices "
                      f"0..{cfg.num_layers} (-1 = {cfg.num_layers}, the final-norm output)")
  return layer


def _check_mpo(config):
  """MPO needs its own data (a pair in a dominant and in a target language) and has no prompt variants."""
  mpo_data = config.data.source == "tfds" and config.data.name.startswith(MPO_DATASET_PREFIX)
  if config.objective.base == "mpo":
    if not mpo_data:
      raise ConfigError(f"objective.base='mpo' trains on an mpo_pairs dataset: set data.source='tfds' and "
                        f"data.name='mpo_pairs/llama' (or gemma, qwen); got data.source={config.data.source!r}, "
                        f"data.name={config.data.name!r}")
    if config.mlc.enabled:
      raise ConfigError("mlc.enabled=True: MPO's data has no prompt variants in several languages; set "
                        "mlc.enabled=False for objective.base='mpo'")
    if config.objective.pool_padding and config.data.pair_buckets:
      raise ConfigError(f"objective.pool_padding=True averages over the padded length, which data.pair_buckets="
                        f"{tuple(config.data.pair_buckets)} changes per batch; use one or the other")
  elif mpo_data:
    raise ConfigError(f"data.name={config.data.name!r} holds MPO pairs, which only objective.base='mpo' reads "
                      f"(objective.base={config.objective.base!r})")


def validate(config: ml_collections.ConfigDict, num_devices: int) -> tuple[ModelConfig, tuple[int, ...]]:
  """Checks everything that can be checked without data; returns (model config, resolved mesh shape)."""
  check_known_keys(config)
  for key, allowed in CHOICES.items():
    if _get(config, key) not in allowed:
      raise ConfigError(f"{key}={_get(config, key)!r} is not one of {', '.join(allowed)}")
  for key in ("objective.beta", "mlc.tau", "optim.lr", "train.batch_size", "train.grad_accum",
              "mlc.aux_every", "mlc.extractor_dim", "data.max_prompt_len", "data.max_response_len",
              "data.mlc_prompt_len"):
    if not _get(config, key) > 0:
      raise ConfigError(f"{key}={_get(config, key)} must be positive")
  if config.mlc.weight < 0:
    raise ConfigError(f"mlc.weight={config.mlc.weight} must be >= 0")
  if config.objective.retention_weight < 0:
    raise ConfigError(f"objective.retention_weight={config.objective.retention_weight} must be >= 0")
  _check_mpo(config)
  if not 0 <= config.objective.label_smoothing < 0.5:
    raise ConfigError(f"objective.label_smoothing={config.objective.label_smoothing} must be in [0, 0.5)")
  if config.train.steps <= 0 and config.train.epochs <= 0:
    raise ConfigError("train.steps and train.epochs are both <= 0: set one of them")
  try:
    mesh_shape = resolve_mesh_shape(config.mesh.shape, num_devices, key="mesh.shape")
  except ValueError as e:
    raise ConfigError(str(e)) from e
  if config.train.batch_size % config.train.grad_accum:
    raise ConfigError(f"train.batch_size={config.train.batch_size} is not divisible by "
                      f"train.grad_accum={config.train.grad_accum}")
  micro = config.train.batch_size // config.train.grad_accum
  data_shards = int(np.prod(mesh_shape[:2]))
  if micro % data_shards:
    raise ConfigError(f"train.batch_size={config.train.batch_size} (micro-batch {micro} after grad_accum) is "
                      f"not divisible by the {data_shards} data shards of mesh.shape={mesh_shape} (data × fsdp)")
  cfg = model_config(config)
  if config.mlc.enabled:
    mlc_layer(config, cfg)
  return cfg, mesh_shape

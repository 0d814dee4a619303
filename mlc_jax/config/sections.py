"""The config sections every run has: model, data, evaluation languages, optimizer, training loop, checkpoints, mesh.

The objective's section (`objective.name` and one sub-section per registered objective) and the MLC add-on's
(`mlc`) live with their code in `mlc_jax.objectives`; `mlc_jax.config.run` puts them all together.
"""
from __future__ import annotations

import dataclasses

from mlc_jax.config.fields import ConfigError, Section, each, field, in_range, non_negative, one_of, positive
from mlc_jax.models import PRESETS, ModelConfig, read_config
from mlc_jax.models.config import DTYPES
from mlc_jax.models.decoder import ATTENTION_IMPLS, REMAT_POLICIES
from mlc_jax.parallel.sharding import DEFAULT_RULES, MESH_AXES


@dataclasses.dataclass(frozen=True)
class ModelSection(Section):
  preset: str = field("tiny", "a name from mlc_jax.models.PRESETS; ignored when hf_path is set")
  hf_path: str = field("", "a local HF directory to start from; '' = random init from the preset")
  init_seed: int = field(0, "seed of the random init (and of the MLC extractor's)", non_negative())
  dtype: str = field("float32", "compute dtype of activations (bfloat16 on accelerators)", one_of(DTYPES))
  param_dtype: str = field("float32", "dtype of the master weights and the optimizer state", one_of(DTYPES))
  remat: str = field("none", "rematerialisation of each block in the backward pass", one_of(REMAT_POLICIES))
  attention_impl: str = field("xla", "'xla' | 'dot_product' (jax.nn.dot_product_attention) | 'cudnn' (GPU, bf16) | "
                              "'splash' (Pallas kernel, TPU; lengths multiples of 128)", one_of(ATTENTION_IMPLS))
  attention_chunk: int = field(256, "'xla' attention on sequences longer than C: blocks of C queries, each against "
                               "the keys up to its end (half the score FLOPs, the same values); 0 = full matrix",
                               non_negative())
  vocab_chunk: int = field(0, "0 = whole-vocabulary log-probs; C = stream the log-partition over chunks of C",
                           non_negative())
  scan_unroll: int = field(1, "blocks per iteration of the layer scan: 1 compiles one block (at scale); the number "
                           "of layers unrolls it (faster steps on small models, longer compiles)", positive())

  def check(self, key):
    if not self.hf_path and self.preset not in PRESETS:
      raise ConfigError(f"{key}.preset={self.preset!r} is unknown; known presets: {', '.join(PRESETS)}")

  def architecture(self) -> ModelConfig:
    """The architecture: from `hf_path` when set, else the preset; `vocab_chunk` must divide its vocabulary."""
    if self.hf_path:
      try:
        model_cfg = read_config(self.hf_path)[0]
      except (OSError, ValueError) as e:
        raise ConfigError(f"model.hf_path: {e}") from e
    else:
      model_cfg = PRESETS[self.preset]
    if self.vocab_chunk and model_cfg.vocab_size % self.vocab_chunk:
      raise ConfigError(f"model.vocab_chunk={self.vocab_chunk} does not divide the vocabulary size "
                        f"{model_cfg.vocab_size}")
    return model_cfg

  def decoder_kwargs(self) -> dict:
    """The `Decoder` keyword arguments this section sets (dtypes, remat, attention, vocab_chunk, scan_unroll)."""
    return dict(dtype=DTYPES[self.dtype], param_dtype=DTYPES[self.param_dtype], remat=self.remat,
                attention_impl=self.attention_impl, attention_chunk=self.attention_chunk,
                vocab_chunk=self.vocab_chunk or None, scan_unroll=self.scan_unroll)


DATA_SOURCES = ("builtin", "mlc_jsonl", "tfds")


@dataclasses.dataclass(frozen=True)
class DataSection(Section):
  source: str = field("builtin", "'builtin' | 'mlc_jsonl' | 'tfds'", one_of(DATA_SOURCES))
  path: str = field("", "the file for source='mlc_jsonl'")
  name: str = field("mlc_pku_saferlhf/dpo", "the TFDS dataset for source='tfds' (prepared from manual_dir on first "
                    "use)")
  manual_dir: str = field("../shared/data", "the folder the TFDS builders read")
  data_dir: str = field("", "TFDS data_dir; '' = TFDS's default (~/tensorflow_datasets)")
  langs: str | tuple[str, ...] = field("builtin", "a language-set name, 'en,zh,sw', or a tuple of codes")
  max_prompt_len: int = field(64, "token budget of a pair's prompt (its last tokens are kept)", positive())
  max_response_len: int = field(192, "token budget of a response, its eos included (first tokens kept)", positive())
  mlc_prompt_len: int = field(64, "the MLC prompt variants' own padded length", positive())
  pair_buckets: tuple[int, ...] = field((), "shorter padded lengths a batch of pairs may be cut to (each compiles "
                                        "once)", each(positive()))
  prompt_buckets: tuple[int, ...] = field((), "the same for the MLC prompt variants", each(positive()))
  pack_pairs: int = field(0, "preference pairs per packed row, each pair's prompt run once for both responses and the "
                          "LM head only on response tokens (mlc_jax.data.packing); 0 = plain padded sequences, one per "
                          "row (then data.pair_buckets apply)", non_negative())
  pack_multiple: int = field(64, "packed row lengths and scored-position counts are rounded up to a multiple of this "
                             "(each length compiles once)", positive())

  @property
  def limits(self):
    from mlc_jax.data.tokenized import SequenceLimits
    return SequenceLimits(self.max_prompt_len, self.max_response_len, self.mlc_prompt_len)

  def check(self, key):
    from mlc_jax.data import pipeline
    try:
      pipeline.check_buckets(self.pair_buckets, self.max_prompt_len + self.max_response_len,
                             key=f"{key}.pair_buckets")
      pipeline.check_buckets(self.prompt_buckets, self.mlc_prompt_len, key=f"{key}.prompt_buckets")
    except ValueError as e:
      raise ConfigError(str(e)) from e


@dataclasses.dataclass(frozen=True)
class EvalSection(Section):
  dataset: str = field("multijail", "the evaluation set (a TFDS builder name)")
  langs: str | tuple[str, ...] = field("multijail", "evaluation languages; those not in data.langs are 'unseen'")


SCHEDULES = ("cosine", "constant")


@dataclasses.dataclass(frozen=True)
class OptimSection(Section):
  lr: float = field(6e-7, "peak learning rate", positive())
  warmup_ratio: float = field(0.1, "share of the steps with a linear warmup (cosine schedule)", in_range(0.0, 1.0))
  schedule: str = field("cosine", "'cosine' (warmup, then cosine decay to 0) | 'constant'", one_of(SCHEDULES))
  weight_decay: float = field(0.0, "AdamW's decoupled weight decay", in_range(0.0, 1.0))
  clip_norm: float = field(1.0, "gradients are clipped to this global norm", positive())
  b1: float = field(0.9, "AdamW β1", in_range(0.0, 1.0, high_open=True))
  b2: float = field(0.999, "AdamW β2", in_range(0.0, 1.0, high_open=True))
  eps: float = field(1e-8, "AdamW ε", in_range(0.0, 1.0, low_open=True))


@dataclasses.dataclass(frozen=True)
class TrainSection(Section):
  batch_size: int = field(4, "examples per optimizer step (the global batch)", positive())
  grad_accum: int = field(4, "micro-batches the batch is accumulated in", positive())
  epochs: float = field(3.0, "passes over the data when steps = 0", non_negative())
  steps: int = field(0, "optimizer steps; 0 = from epochs", non_negative())
  seed: int = field(0, "data-order seed", non_negative())
  log_every: int = field(1, "steps per metrics.jsonl record", positive())
  peak_flops: float = field(0.0, "peak FLOP/s of one device for MFU; 0 = the device kind's bf16 peak when known "
                            "(TPU, recent NVIDIA), else no MFU", non_negative())
  step_timeout_s: float = field(1800.0, "a step (compilation included) running longer ends the run with exit code "
                                "124 and a message naming it; 0 = no limit", non_negative())

  def check(self, key):
    if self.steps == 0 and self.epochs == 0:
      raise ConfigError(f"{key}.steps and {key}.epochs are both 0: set one of them")
    if self.batch_size % self.grad_accum:
      raise ConfigError(f"{key}.batch_size={self.batch_size} is not divisible by {key}.grad_accum={self.grad_accum}")


@dataclasses.dataclass(frozen=True)
class CheckpointSection(Section):
  every: int = field(100, "steps between checkpoints (the last step is always saved)", positive())
  keep: int = field(3, "checkpoints kept (the newest)", positive())
  async_save: bool = field(True, "write checkpoints in the background")


@dataclasses.dataclass(frozen=True)
class MeshSection(Section):
  shape: tuple[int, ...] = field((1, -1, 1), f"devices along {MESH_AXES}; one -1 takes the rest; over several TPU "
                                 "slices the shape of one slice, the data axis then spanning the slices")
  rules: tuple = field(tuple(DEFAULT_RULES), "(logical axis, mesh axis or axes or None) pairs")

  def check(self, key):
    if len(self.shape) != len(MESH_AXES):
      raise ConfigError(f"{key}.shape={self.shape} must have {len(MESH_AXES)} entries for axes {MESH_AXES}")
    for rule in self.rules:
      if not (isinstance(rule, tuple) and len(rule) == 2 and isinstance(rule[0], str)):
        raise ConfigError(f"{key}.rules: {rule!r} is not a (logical axis, mesh axes) pair")
      targets = (rule[1],) if isinstance(rule[1], str) or rule[1] is None else tuple(rule[1])
      unknown = [t for t in targets if t is not None and t not in MESH_AXES]
      if unknown:
        raise ConfigError(f"{key}.rules: {rule!r} names mesh axes {unknown} (mesh axes: {', '.join(MESH_AXES)})")


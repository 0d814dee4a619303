"""Config files and `--config.KEY=VALUE` overrides, with one-line errors that name the key.

A config file is a Python file with `get_config(arg: str | None) -> ml_collections.ConfigDict`
(big_vision style); `path:ARG` passes ARG. `base_config()` holds every key a training run reads, so an
override of an unknown key is caught here, before anything is compiled or written.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import os

import ml_collections

from mlc_jax.parallel.sharding import DEFAULT_RULES


class ConfigError(ValueError):
  """A config problem; the message names the key."""


def base_config() -> ml_collections.ConfigDict:
  """Every key of a training run with its default (the MLC paper's DPO+MLC setting where it has one)."""
  c = ml_collections.ConfigDict()
  c.model = dict(
      preset="tiny",  # a name from mlc_jax.models.PRESETS; ignored when hf_path is set
      hf_path="",  # a local HF directory to start from (load_hf); '' = random init from the preset
      init_seed=0,
      dtype="float32",  # compute dtype of activations (bfloat16 on accelerators)
      param_dtype="float32",  # master weights and optimizer state
      remat="none",  # 'none' | 'full' | 'dots'
      attention_impl="xla",  # 'xla' | 'dot_product' (jax.nn.dot_product_attention) | 'cudnn' (GPU, bf16)
      vocab_chunk=0,  # 0 = whole-vocabulary log-probs; C = stream the log-partition over chunks of C
  )
  c.tokenizer = "byte"  # 'byte' (built-in) or a local HF tokenizer directory; '' = model.hf_path
  c.data = dict(
      source="builtin",  # 'builtin' | 'mlc_jsonl' | 'tfds'
      path="",  # file for source='mlc_jsonl'
      name="mlc_pku_saferlhf/dpo",  # TFDS dataset for source='tfds' (prepared from manual_dir on first use)
      manual_dir="../shared/data",  # the folder the TFDS builders read
      data_dir="",  # TFDS data_dir; '' = TFDS's default (~/tensorflow_datasets)
      langs="builtin",  # a language-set name, 'en,zh,sw', or a list
      max_prompt_len=64,
      max_response_len=192,
      mlc_prompt_len=64,  # the MLC prompt variants' own padded length
      pair_buckets=(),  # shorter padded lengths a batch of pairs may be cut to (each compiles once)
      prompt_buckets=(),  # the same for the MLC prompt variants
  )
  c.eval = dict(
      dataset="multijail",  # the evaluation set (a TFDS builder name)
      langs="multijail",  # evaluation languages; those not in data.langs are the "unseen" ones
  )
  c.objective = dict(
      base="dpo",  # sft | dpo | ipo | hinge | simpo | orpo | mpo (needs an mpo_pairs dataset)
      beta=0.1,
      label_smoothing=0.0,  # cDPO (dpo only)
      gamma=0.5,  # SimPO's target margin (simpo only)
      retention_weight=1.0,  # weight of MPO's retention term L2 (mpo only; the paper's L = L1 + L2)
      pool_padding=False,  # MPO's L2 mean-pools over padding too, as the official code (mpo only)
  )
  c.mlc = dict(
      enabled=True,
      weight=0.8,  # λ
      tau=0.2,
      normalize="sigma1",  # 'sigma1' (official code) | 'none' (paper)
      aux_every=2,  # MLC term on steps with step % aux_every == 0
      extractor_dim=512,
      layer=-1,  # HF hidden_states index; -1 = num_layers (the final-norm output)
  )
  c.reference = "precomputed"  # 'precomputed' (cached in the workdir) | 'frozen_copy'
  c.optim = dict(lr=6e-7, warmup_ratio=0.1, schedule="cosine", weight_decay=0.0, clip_norm=1.0,
                 b1=0.9, b2=0.999, eps=1e-8)
  c.train = dict(batch_size=4, grad_accum=4, epochs=3.0, steps=0, seed=0, log_every=1)
  c.checkpoint = dict(every=100, keep=3, async_save=True)
  c.mesh = dict(shape=(1, -1, 1), rules=tuple(DEFAULT_RULES))
  return c


# Keys a resumed run may change without altering what it computes.
RESUMABLE_CHANGES = ("train.log_every", "checkpoint.every", "checkpoint.keep", "checkpoint.async_save", "eval.dataset",
                     "eval.langs")


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """`path/to/config.py[:ARG]` → the ConfigDict its `get_config(ARG)` returns."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"--config: file {path!r} does not exist")
  module_spec = importlib.util.spec_from_file_location("_mlc_jax_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"--config: {path} has no get_config(arg) function")
  config = module.get_config(arg or None)
  check_known_keys(config)
  return config


def flatten(config) -> dict[str, object]:
  """{'a.b': value} for every leaf of a (nested) ConfigDict or dict."""
  out = {}
  for key, value in (config.items() if hasattr(config, "items") else []):
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      out.update({f"{key}.{k}": v for k, v in flatten(value).items()})
    else:
      out[key] = value
  return out


def check_known_keys(config: ml_collections.ConfigDict):
  known = flatten(base_config())
  unknown = sorted(set(flatten(config)) - set(known))
  if unknown:
    raise ConfigError(f"unknown config key {unknown[0]!r}" + (f" (and {len(unknown) - 1} more)" if unknown[1:] else "")
                      + f"; known keys: {', '.join(sorted(known))}")


def _parse_value(key: str, text: str, current):
  if isinstance(current, str):  # raw text; a quoted literal ('x' or "x") is unquoted
    quoted = len(text) >= 2 and text[0] == text[-1] and text[0] in "'\""
    return ast.literal_eval(text) if quoted else text
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    raise ConfigError(f"--config.{key}={text!r}: not a Python literal (expected {type(current).__name__})")
  if isinstance(current, bool) or isinstance(value, bool):
    if not isinstance(value, bool) or not isinstance(current, bool):
      raise ConfigError(f"--config.{key}={text!r}: expected {type(current).__name__}")
  elif isinstance(current, float) and isinstance(value, int):
    value = float(value)
  elif isinstance(current, (tuple, list)) and isinstance(value, (tuple, list)):
    value = tuple(value)
  elif not isinstance(value, type(current)):
    raise ConfigError(f"--config.{key}={text!r}: expected {type(current).__name__}, got {type(value).__name__}")
  return value


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> ml_collections.ConfigDict:
  """Applies `KEY=VALUE` strings (from `--config.KEY=VALUE`); the value is parsed as the key's type."""
  flat = flatten(config)
  for item in overrides:
    key, sep, text = item.partition("=")
    if not sep:
      raise ConfigError(f"--config.{item}: expected --config.KEY=VALUE")
    if key not in flat:
      section = key.rsplit(".", 1)[0]
      siblings = sorted(k for k in flat if k.startswith(section + "."))
      hint = f"; keys under {section!r}: {', '.join(siblings)}" if siblings and "." in key else ""
      raise ConfigError(f"unknown config key {key!r}{hint}")
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    with node.ignore_type():
      node[leaf] = _parse_value(key, text, flat[key])
  return config


def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(json.loads(config.to_json()), indent=2, sort_keys=True)


def run_altering_differences(saved: dict, current: dict) -> list[str]:
  """Flattened keys whose values differ between two config dicts, ignoring RESUMABLE_CHANGES."""
  a, b = flatten(saved), flatten(current)
  keys = sorted(set(a) | set(b))
  return [k for k in keys if k not in RESUMABLE_CHANGES and _norm(a.get(k)) != _norm(b.get(k))]


def _norm(value):
  return json.loads(json.dumps(value))

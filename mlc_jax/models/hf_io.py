"""Hugging Face checkpoints ↔ mlc_jax models: `load_hf` and `save_hf`, through each family's one table."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy)
import numpy as np
import transformers
from flax import nnx
from huggingface_hub.serialization import split_state_dict_into_shards_factory
from jax.sharding import Mesh, SingleDeviceSharding
from safetensors import safe_open
from safetensors.numpy import save_file

from mlc_jax import json_file
from mlc_jax.models.config import ModelConfig
from mlc_jax.models.decoder import Decoder
from mlc_jax.models.families import Family, ParamRule, family_for
from mlc_jax.models.out_dir import check_output_dir, staged
from mlc_jax.parallel import sharding as sharding_lib

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
MAX_SHARD_SIZE = 5 * 1024**3
MIN_DEFAULT_SHARD_SIZE = 256 * 1024**2


def default_shard_size(total_bytes: int) -> int:
  """A quarter of the model, between 256 MiB and 5 GiB: `save_hf` holds one shard's converted tensors beside the
  parameters, so this keeps its peak memory near 1.25 × the parameters at every size."""
  return min(MAX_SHARD_SIZE, max(total_bytes // 4, MIN_DEFAULT_SHARD_SIZE))


class CheckpointError(ValueError):
  """A Hugging Face directory that cannot be read as the model it claims to be."""


def read_config(path: str) -> tuple[ModelConfig, Family]:
  """The model config and family of a local HF directory.

  Its JSON files (config.json, generation_config.json, the shard index) are checked here: a broken one is named.
  """
  config_file = os.path.join(path, "config.json")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"HF model directory {path!r} does not exist")
  if not os.path.isfile(config_file):
    raise FileNotFoundError(f"{config_file} is missing: not a Hugging Face model directory")
  family = family_for(json_file.read(config_file).get("model_type"), source=config_file)
  for name in ("generation_config.json", SAFE_INDEX):  # read by transformers and vLLM when they load the folder
    if os.path.isfile(os.path.join(path, name)):
      json_file.read(os.path.join(path, name))
  try:
    hf_config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
  except Exception as e:  # noqa: BLE001  (transformers' validation errors have types of their own)
    raise CheckpointError(f"{config_file} cannot be read by transformers ({type(e).__name__}: "
                          f"{' '.join(str(e).split())})") from None
  return family.config_from_hf(hf_config), family


def _weight_map(path: str) -> dict[str, str]:
  """HF tensor name → safetensors file path, checking that every listed shard exists."""
  index_file = os.path.join(path, SAFE_INDEX)
  if os.path.isfile(index_file):
    weight_map = json_file.read(index_file).get("weight_map")
    if not isinstance(weight_map, dict):
      raise CheckpointError(f"{index_file} has no \"weight_map\" object (tensor name → shard file)")
    missing = sorted({fn for fn in weight_map.values() if not os.path.isfile(os.path.join(path, fn))})
    if missing:
      raise FileNotFoundError(f"{index_file} lists shard(s) that are missing: {', '.join(missing)}")
    return {name: os.path.join(path, fn) for name, fn in weight_map.items()}
  single = os.path.join(path, SAFE_WEIGHTS)
  if os.path.isfile(single):
    with _open_safetensors(single) as f:
      return {name: single for name in f.keys()}
  raise FileNotFoundError(f"{path!r} has neither {SAFE_WEIGHTS} nor {SAFE_INDEX} (only safetensors are read)")


FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")  # safetensors' names of the dtypes a float model is stored in


def _open_safetensors(file: str):
  """`safe_open(file)`; a truncated or corrupt file is a `CheckpointError` naming it."""
  try:
    return safe_open(file, "np")
  except Exception as e:  # noqa: BLE001  (safetensors raises its own SafetensorError)
    raise CheckpointError(f"{file} is not a readable safetensors file ({e}); it may be truncated: "
                          "copy or download it again") from None


def check_weights(path: str) -> int:
  """Reads every tensor of the HF directory `path`, one at a time; returns the number of tensors.

  Errors name the file: a missing shard, a truncated or corrupt file, a tensor with NaN or inf (and the tensor).
  """
  weight_map = _weight_map(path)
  for file in sorted(set(weight_map.values())):
    with _open_safetensors(file) as f:
      for name in f.keys():
        if f.get_slice(name).get_dtype() in FLOAT_DTYPES:  # (`load_hf` names any other it would read)
          check_finite({name: f.get_tensor(name)}, f"{file}: tensor")
  return len(weight_map)


class _TensorReader:
  """Reads single HF tensors lazily from their safetensors files, checking shapes."""

  def __init__(self, weight_map: dict[str, str], stack: contextlib.ExitStack):
    self.weight_map, self._stack, self._handles = weight_map, stack, {}

  def read(self, name: str, expected_shape: tuple[int, ...]) -> np.ndarray:
    """The tensor `name`, checked: of `expected_shape`, a float, finite."""
    if name not in self.weight_map:
      raise CheckpointError(f"tensor {name!r} is missing from the checkpoint")
    file = self.weight_map[name]
    if file not in self._handles:
      self._handles[file] = self._stack.enter_context(_open_safetensors(file))
    handle = self._handles[file]
    piece = handle.get_slice(name)
    shape, dtype = tuple(piece.get_shape()), piece.get_dtype()
    if shape != tuple(expected_shape):
      raise CheckpointError(f"tensor {name!r} in {os.path.basename(file)} has shape {shape}; "
                            f"the config implies {tuple(expected_shape)}")
    if dtype not in FLOAT_DTYPES:
      raise CheckpointError(f"tensor {name!r} in {os.path.basename(file)} is {dtype}, not a float: quantised or "
                            "integer weights are not supported (convert from a float checkpoint)")
    try:
      tensor = handle.get_tensor(name)
    except Exception as e:  # noqa: BLE001
      raise CheckpointError(f"tensor {name!r} cannot be read from {file} ({e}); the file may be truncated") from None
    check_finite({name: tensor}, f"{file}: tensor")
    return tensor


def check_finite(arrays: dict[str, Any], what: str) -> None:
  """Refuses NaN or inf in any of `arrays` (`{name: array}`), naming the first such array after `what`.

  Raises:
    CheckpointError: "`what` 'name' [shape] has N non-finite values (NaN or inf) of M".
  """
  for name, array in arrays.items():
    array = np.asarray(array)
    bad = array.size - int(np.count_nonzero(np.isfinite(array)))
    if bad:
      raise CheckpointError(f"{what} {name!r} {list(array.shape)} has {bad} non-finite values (NaN or inf) of "
                            f"{array.size}: a model with them computes NaN")


def param_arrays(model: Decoder) -> dict[str, jax.Array]:
  """`model`'s parameters by path ("blocks/attn/q_proj", …)."""
  return {k: v[...] for k, v in _flat_params(nnx.state(model, nnx.Param)).items()}


def _flat_params(state: nnx.State) -> dict[str, nnx.Variable]:
  return {"/".join(map(str, path)): var for path, var in nnx.to_flat_state(state)}


def _check_coverage(rules: tuple[ParamRule, ...], params: dict[str, Any], family: Family):
  ours = {r.ours for r in rules}
  if ours != set(params):
    raise AssertionError(f"family {family.model_type!r}: the table covers {sorted(ours ^ set(params))} wrongly")


def load_hf(path: str, *, dtype=jnp.float32, mesh: Mesh | None = None, rules=sharding_lib.DEFAULT_RULES,
            compute_dtype=None, **decoder_kwargs) -> Decoder:
  """Loads a local HF directory (config.json + safetensors, single or sharded) into a `Decoder`.

  Args:
    path: the directory.
    dtype: parameter dtype in memory (checkpoint tensors are cast to it).
    mesh: with a mesh, every tensor is placed straight into its `NamedSharding` (from the parameters' logical
      axes and `rules`); each device's piece is read from disk one layer at a time, never a second full copy.
    compute_dtype: activation dtype (defaults to `dtype`).
    decoder_kwargs: further `Decoder` options (remat, attention_impl, vocab_chunk).
  """
  cfg, family = read_config(path)
  weight_map = _weight_map(path)
  model_kwargs = dict(decoder_kwargs, dtype=compute_dtype or dtype, param_dtype=dtype)
  abstract = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0), **model_kwargs))
  graphdef, abstract_state = nnx.split(abstract)
  params = _flat_params(abstract_state)
  table = family.rules(cfg)
  _check_coverage(table, params, family)

  expected = {name for rule in table for name in rule.hf_names(cfg.num_layers)}
  unexpected = sorted(n for n in weight_map if n not in expected
                      and not any(s in n for s in family.ignored_hf_tensors))
  if cfg.tie_embeddings:
    unexpected = [n for n in unexpected if n != "lm_head.weight"]
  if unexpected:
    raise CheckpointError(f"{path}: tensors not used by a {family.model_type!r} model of this config: "
                          f"{', '.join(unexpected[:8])}{' …' if len(unexpected) > 8 else ''}")

  with contextlib.ExitStack() as stack:
    reader = _TensorReader(weight_map, stack)
    for rule in table:
      var = params[rule.ours]
      shape = var.get_value().shape
      if mesh is None:
        target = SingleDeviceSharding(jax.devices()[0])
      else:
        target = sharding_lib.named_sharding(var.get_metadata()["axes"], shape, mesh, rules)
      var.set_value(jax.make_array_from_callback(shape, target, _piece_reader(reader, rule, shape, dtype)))
  return nnx.merge(graphdef, abstract_state)


def _piece_reader(reader: _TensorReader, rule: ParamRule, shape: tuple[int, ...], dtype):
  """The callback that builds one device's piece `array[index]` of a parameter from HF tensors."""
  layer_shape = shape[1:] if rule.stacked else shape
  hf_shape = rule.layout.hf_shape(layer_shape)

  def one(name: str) -> np.ndarray:
    return rule.layout.to_ours(reader.read(name, hf_shape), layer_shape)

  def piece(index: tuple[slice, ...]) -> np.ndarray:
    if not rule.stacked:
      return np.asarray(one(rule.hf)[index], dtype=dtype)
    layers = range(shape[0])[index[0]]
    return np.stack([np.asarray(one(rule.hf.format(layer=i))[index[1:]], dtype=dtype) for i in layers])

  return piece


def save_hf(model: Decoder, out_dir: str, tokenizer=None, *, dtype=None, overwrite: bool = False,
            max_shard_size: int | None = None) -> str:
  """Writes `model` as an HF directory that `AutoModelForCausalLM.from_pretrained` loads (see `write_hf`).

  The directory is built whole beside `out_dir` and swapped in (`out_dir.staged`: one writer at a time, the process
  umask, a failure or Ctrl-C never leaves a half-written or clobbered `out_dir`); an existing non-empty `out_dir` is
  refused unless `overwrite=True` and it holds a previous export (`out_dir.EXPORT_MARKER`): an arbitrary directory is never
  replaced.
  """
  check_output_dir(out_dir, overwrite=overwrite)
  with staged(out_dir, overwrite=overwrite, needed_bytes=hf_bytes(model, dtype), about=export_about(model)) as tmp:
    write_hf(model, tmp, tokenizer, dtype=dtype, max_shard_size=max_shard_size)
  return out_dir


def export_about(model: Decoder, **more) -> dict:
  """What `out_dir.EXPORT_MARKER` records of an export of `model`."""
  return {"written_by": "mlc_jax", "family": model.cfg.family, **more}


def hf_bytes(model: Decoder, dtype=None) -> int:
  """About the bytes `write_hf` puts on disk: the tensors plus 1 MiB for the JSON and tokenizer files."""
  return sum(a.size * np.dtype(dtype or a.dtype).itemsize for a in param_arrays(model).values()) + 2**20


def write_hf(model: Decoder, folder: str, tokenizer=None, *, dtype=None, max_shard_size: int | None = None) -> None:
  """Writes `model` into the existing directory `folder` as an HF model directory.

  Writes config.json, generation_config.json, safetensors shards of at most `max_shard_size` bytes (with
  model.safetensors.index.json when sharded) and the tokenizer files when a tokenizer is given, whose bos / eos / pad
  ids go into both configs (so `generate` stops at its eos). Shards are converted and written one at a time, so
  peak memory is the parameters plus one shard.

  Args:
    dtype: tensor dtype on disk (default: the parameters' dtype).
    max_shard_size: bytes per safetensors file (default: `default_shard_size` of the model).
  """
  cfg = model.cfg if tokenizer is None else with_token_ids(model.cfg, tokenizer)
  family = family_for(cfg.family, source="ModelConfig.family")
  params = param_arrays(model)
  table = family.rules(cfg)
  _check_coverage(table, params, family)

  sources: dict[str, tuple[ParamRule, int | None]] = {}
  for rule in table:
    for i, name in enumerate(rule.hf_names(cfg.num_layers)):
      sources[name] = (rule, i if rule.stacked else None)

  def hf_struct(name):
    rule, layer = sources[name]
    array = params[rule.ours]
    layer_shape = array.shape[1:] if layer is not None else array.shape
    return jax.ShapeDtypeStruct(rule.layout.hf_shape(layer_shape), dtype or array.dtype)

  structs = {name: hf_struct(name) for name in sources}
  total_bytes = sum(s.size * np.dtype(s.dtype).itemsize for s in structs.values())
  max_shard_size = default_shard_size(total_bytes) if max_shard_size is None else max_shard_size
  split = split_state_dict_into_shards_factory(
      structs, max_shard_size=max_shard_size, filename_pattern="model{suffix}.safetensors",
      get_storage_size=lambda s: s.size * np.dtype(s.dtype).itemsize)

  def materialise(name):
    rule, layer = sources[name]
    array = params[rule.ours] if layer is None else params[rule.ours][layer]
    return np.ascontiguousarray(rule.layout.to_hf(np.asarray(array)).astype(structs[name].dtype))

  for filename, names in split.filename_to_tensors.items():
    save_file({n: materialise(n) for n in names}, os.path.join(folder, filename), metadata={"format": "pt"})
  if split.is_sharded:
    index = {"metadata": {"total_size": total_bytes}, "weight_map": split.tensor_to_filename}
    with open(os.path.join(folder, SAFE_INDEX), "w") as f:
      json.dump(index, f, indent=2, sort_keys=True)
  hf_config = family.config_to_hf(cfg)
  hf_config.dtype = str(np.dtype(dtype or params["embed"].dtype))
  hf_config.save_pretrained(folder)
  transformers.GenerationConfig.from_model_config(hf_config).save_pretrained(folder)
  if tokenizer is not None:
    tokenizer.save_pretrained(folder)


def with_token_ids(cfg: ModelConfig, tokenizer) -> ModelConfig:
  """`cfg` with the tokenizer's bos / pad ids and its eos id (an eos list of `cfg` that holds it is kept: chat models
  stop at several), where the tokenizer has them."""
  eos = tokenizer.eos_token_id
  eos_kept = eos is None or eos == cfg.eos_token_id or (isinstance(cfg.eos_token_id, tuple) and eos in cfg.eos_token_id)
  ids = {"bos_token_id": tokenizer.bos_token_id, "pad_token_id": tokenizer.pad_token_id,
         "eos_token_id": None if eos_kept else eos}
  return dataclasses.replace(cfg, **{k: v for k, v in ids.items() if v is not None})

"""Precomputed reference values: one pass with the initial model, cached in the workdir by content hash (of the
model's weights and settings and of the tokenized data).

DPO, IPO and hinge read the reference's pair log-probs; MPO reads the dominant pair's average log-probs and
mean-pooled final hidden states. Either way the frozen model is needed once, not kept beside the policy.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence

import jax
import numpy as np
from etils import epath
from tqdm import tqdm

from mlc_jax.data.fingerprint import model_fingerprint
from mlc_jax.train.step import batch_sharding, to_device


def cache_key(model_identity: dict, data, input_keys: Sequence[str]) -> str:
  """sha256 over the model's identity (architecture, dtypes, init seed, …), the content of its weights, and the input
  arrays (with their shapes and dtypes).

  `model_identity["hf_path"]`, when set, stands for the content of that checkpoint (`data.fingerprint.model_fingerprint`), not
  its path: a checkpoint replaced at the same path gives a new key. The tokenized arrays already encode the data,
  the tokenizer and the length limits, so a change to any of them gives a new key and a stale cache is never read.
  """
  identity = dict(model_identity)
  if identity.get("hf_path"):
    identity["hf_path"] = model_fingerprint(identity["hf_path"])
  h = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode())
  for key in input_keys:
    array = np.ascontiguousarray(getattr(data, key))
    h.update(f"{key} {array.dtype} {array.shape}".encode())
    h.update(array.tobytes())
  return h.hexdigest()[:24]


def precompute(fn, initial_params: Callable[[], dict], data, *, input_keys: Sequence[str],
               output_keys: Sequence[str], batch_size: int, mesh, cache_dir: str, model_identity: dict,
               name: str, write_cache: bool = True) -> dict[str, np.ndarray]:
  """`{key: [N, …]}` for `output_keys`, read from or written to `cache_dir/<name>-<hash>.npz` (a local path or a URL;
  written only with `write_cache`).

  `fn(model_params, batch)` maps a batch of the `input_keys` arrays of `data` (`[B, T]`) to the outputs
  (`[B, …]`, see `step.make_precompute_fn`). `initial_params()` gives the initial model's parameters; it is called
  only when the cache misses, and they are released before this returns.
  """
  path = epath.Path(cache_dir) / f"{name}-{cache_key(model_identity, data, input_keys)}.npz"
  if path.is_file():
    with path.open("rb") as f, np.load(f) as cached:
      if set(output_keys) <= set(cached.files):
        print(f"{name}: cached ({path})")
        return {k: cached[k] for k in output_keys}
  n = len(data)
  sharding = batch_sharding(mesh, accumulated=False)
  model_params = initial_params()
  out = {}
  for start in tqdm(range(0, n, batch_size), desc=name, unit="batch", leave=False):
    rows = np.arange(start, start + batch_size) % n  # the last batch wraps around; extra rows are dropped
    rows = np.array_split(rows, jax.process_count())[jax.process_index()]  # this process's part
    result = fn(model_params, to_device({k: getattr(data, k)[rows] for k in input_keys}, sharding))
    keep = min(batch_size, n - start)
    for k in output_keys:
      value = np.asarray(result[k])
      if k not in out:
        out[k] = np.zeros((n, *value.shape[1:]), value.dtype)
      out[k][start:start + keep] = value[:keep]
  if write_cache:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    with tmp.open("wb") as f:
      np.savez(f, **out)
    tmp.replace(path)
    print(f"{name}: computed for {n} examples, cached at {path}")
  return out

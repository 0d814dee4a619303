"""Config files and `--config.KEY=VALUE` overrides, with one-line errors that name the key.

A config file is a Python file with `get_config(arg: str | None) -> ml_collections.ConfigDict` (big_vision style);
`path:ARG` passes ARG, which `parse_arg` reads as `key=value` pairs. `base_config()` holds every key a run reads, so
an override of an unknown key is caught here, before anything is compiled or written.
"""
from __future__ import annotations

import ast
import contextlib
import importlib.machinery
import importlib.util
import json
import os
import traceback

import ml_collections

from mlc_jax.config.fields import ConfigError

# Keys a resumed run may change without altering what it computes.
RESUMABLE_CHANGES = ("train.log_every", "train.peak_flops", "train.step_timeout_s", "checkpoint.every",
                     "checkpoint.keep", "checkpoint.async_save", "eval.dataset", "eval.langs")


def parse_arg(arg: str | None, *, file: str, defaults: dict[str, str],
              choices: dict[str, tuple[str, ...]] | None = None) -> dict[str, str]:
  """A config file's ARG `key=value,key=value` → `{key: value}` over `defaults`; errors name `file` and the key."""
  fields = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep or key not in fields:
      raise ConfigError(f"{file}: bad argument {item!r}; expected key=value with key in {sorted(fields)}")
    fields[key] = value
  for key, allowed in (choices or {}).items():
    if fields[key] not in allowed:
      raise ConfigError(f"{file}: {key}={fields[key]!r}; expected one of {', '.join(map(repr, allowed))}")
  return fields


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """`path/to/config.py[:ARG]` → the ConfigDict its `get_config(ARG)` returns.

  Whatever goes wrong in the file (a syntax error, an exception at import or in `get_config`, no `get_config`, a
  result that is not a ConfigDict) is a `ConfigError` naming the file and, where there is one, the line.
  """
  path, _, arg = spec.partition(":")
  if os.path.isdir(path):
    raise ConfigError(f"--config: {path!r} is a directory, not a config file")
  if not os.path.isfile(path):
    raise ConfigError(f"--config: file {path!r} does not exist")
  # Python source whatever the file's name ends with (a spec from the name alone has no loader for 'x.txt').
  loader = importlib.machinery.SourceFileLoader("_mlc_jax_config", path)
  module_spec = importlib.util.spec_from_file_location("_mlc_jax_config", path, loader=loader)
  module = importlib.util.module_from_spec(module_spec)
  with _raised_in(path):
    module_spec.loader.exec_module(module)
  if not callable(getattr(module, "get_config", None)):
    raise ConfigError(f"--config: {path} has no get_config(arg) function")
  with _raised_in(path, "get_config"):
    config = module.get_config(arg or None)
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"{path}: get_config() returned {type(config).__name__}, not an ml_collections.ConfigDict")
  check_known_keys(config)
  return config


@contextlib.contextmanager
def _raised_in(path: str, what: str = ""):
  """Any exception but a ConfigError (which already names its key) → `ConfigError('PATH: Type at line N: …')`, N the
  deepest line of PATH in the traceback (a SyntaxError's own line)."""
  try:
    yield
  except ConfigError:
    raise
  except Exception as e:
    if isinstance(e, SyntaxError) and e.filename and _same_file(e.filename, path):
      line = e.lineno
    else:
      lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if _same_file(f.filename, path)]
      line = lines[-1] if lines else None
    where = f" at line {line}" if line else (f" calling {what}()" if what else "")
    message = " ".join((e.msg if isinstance(e, SyntaxError) else str(e)).split())  # one line
    raise ConfigError(f"{path}: {type(e).__name__}{where}: {message}") from e


def _same_file(a: str, b: str) -> bool:
  return os.path.exists(a) and os.path.samefile(a, b)


def flatten(config) -> dict[str, object]:
  """{'a.b': value} for every leaf of a (nested) ConfigDict or dict."""
  out = {}
  for key, value in (config.items() if hasattr(config, "items") else []):
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      out.update({f"{key}.{k}": v for k, v in flatten(value).items()})
    else:
      out[key] = value
  return out


def check_known_keys(config):
  from mlc_jax.config.run import base_config

  known = flatten(base_config())
  unknown = sorted(set(flatten(config)) - set(known))
  if unknown:
    section = unknown[0].rsplit(".", 1)[0]
    siblings = sorted(k for k in known if k.startswith(section + "."))
    hint = f"keys under {section!r}: {', '.join(siblings)}" if siblings and "." in unknown[0] else \
        f"known keys: {', '.join(sorted(known))}"
    raise ConfigError(f"unknown config key {unknown[0]!r}" + (f" (and {len(unknown) - 1} more)" if unknown[1:] else "")
                      + f"; {hint}")


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
  """Flattened keys whose values differ between two config dicts, ignoring RESUMABLE_CHANGES, the sections of
  objectives neither config selects (they do not alter the run, and a config saved before an objective existed
  lacks its section), the MLC keys when neither enables MLC, and keys a saved config lacks that `current` leaves at their defaults (the key is newer than
  the run, and a new key's default keeps the behaviour it had)."""
  from mlc_jax.config.run import base_config
  a, b = flatten(saved), flatten(current)
  defaults = flatten(json.loads(to_json(base_config())))
  used = {a.get("objective.name"), b.get("objective.name")}
  mlc_off = not a.get("mlc.enabled") and not b.get("mlc.enabled")
  unused = lambda k: ((k.startswith("objective.") and k != "objective.name" and k.split(".")[1] not in used)
                      or (mlc_off and k.startswith("mlc.")))
  newer = lambda k: k not in a and k in defaults and _norm(b.get(k)) == _norm(defaults[k])
  keys = sorted(set(a) | set(b))
  return [k for k in keys if k not in RESUMABLE_CHANGES and not unused(k) and not newer(k)
          and _norm(a.get(k)) != _norm(b.get(k))]


def _norm(value):
  return json.loads(json.dumps(value))

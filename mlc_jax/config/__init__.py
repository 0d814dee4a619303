"""Run configs: typed sections (one home per key), config files with `get_config(arg)`, and overrides.

  from mlc_jax.config import base_config, parse_arg      # in configs/*.py
  run = RunConfig.parse(config)                          # typed, validated

`base_config`, `RunConfig` and `validate` come from `mlc_jax.config.run`, imported on first use: it imports the
objectives, whose sections are built from `mlc_jax.config.fields`.
"""
from mlc_jax.config.fields import ConfigError, Section, field
from mlc_jax.config.files import (apply_overrides, flatten, load_config_file, parse_arg, run_altering_differences,
                                  to_json)

_FROM_RUN = ("RunConfig", "base_config", "validate")


def __getattr__(name):
  if name in _FROM_RUN:
    from mlc_jax.config import run
    return getattr(run, name)
  raise AttributeError(f"module 'mlc_jax.config' has no attribute {name!r}")


__all__ = ["ConfigError", "RunConfig", "Section", "apply_overrides", "base_config", "field", "flatten",
           "load_config_file", "parse_arg", "run_altering_differences", "to_json", "validate"]

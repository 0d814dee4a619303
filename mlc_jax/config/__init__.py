"""Run configs: typed sections (one home per key), config files with `get_config(arg)`, and overrides.

  from mlc_jax.config import base_config, parse_arg      # in configs/*.py
  run = RunConfig.parse(config)                          # typed, validated
"""
from mlc_jax.config.fields import ConfigError, Section, field  # first: the other modules import these
from mlc_jax.config.files import (apply_overrides, flatten, load_config_file, parse_arg, run_altering_differences,
                                  to_json)
from mlc_jax.config.run import RunConfig, base_config, validate

__all__ = ["ConfigError", "RunConfig", "Section", "apply_overrides", "base_config", "field", "flatten",
           "load_config_file", "parse_arg", "run_altering_differences", "to_json", "validate"]

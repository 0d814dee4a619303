"""`python -m mlc_jax.config [--config configs/X.py[:ARG]] [--config.KEY=VALUE …]`: every key, its value and help.

Without --config it lists the defaults (`base_config()`); with one, that config's values after the overrides,
checked as training would check them (a bad key or value ends in the same one-line error).
"""
from __future__ import annotations

import argparse
import sys


def describe(config) -> list[str]:
  """One line per key: `section.key = value    help (check)`."""
  from mlc_jax.config import flatten
  from mlc_jax.config.run import SECTIONS, TopLevel
  from mlc_jax.objectives import OBJECTIVES

  help_text = {k: v for k, v in TopLevel.help().items()}
  for name, section in SECTIONS.items():
    help_text.update({f"{name}.{k}": v for k, v in section.help().items()})
  help_text["objective.name"] = f"the objective: {', '.join(sorted(OBJECTIVES))}"
  for name, cls in OBJECTIVES.items():
    help_text.update({f"objective.{name}.{k}": v for k, v in cls.help().items()})
  lines = []
  for key, value in flatten(config).items():
    setting, text = f"{key} = {value!r}", help_text.get(key, "")
    lines += [f"{setting:<46}  {text}".rstrip()] if len(setting) <= 46 else [setting, f"{'':<46}  {text}"]
  return lines


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m mlc_jax.config", description=__doc__.splitlines()[0])
  parser.add_argument("--config", help="a config file, optionally with :ARG (default: the base config)")
  args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
  overrides = [item[len("--config."):] for item in rest if item.startswith("--config.")]
  if len(overrides) != len(rest):
    parser.error(f"unrecognised arguments {[r for r in rest if not r.startswith('--config.')]}")
  from mlc_jax import cli
  from mlc_jax.config import RunConfig, apply_overrides, base_config, load_config_file

  def body():
    config = apply_overrides(load_config_file(args.config) if args.config else base_config(), overrides)
    RunConfig.parse(config)
    print("\n".join(describe(config)))

  return cli.run(body)


if __name__ == "__main__":
  sys.exit(main())

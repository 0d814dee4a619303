"""What the command-line tools share: `--config.KEY=VALUE` overrides after the tool's own flags (imports no jax)."""
from __future__ import annotations

import argparse


def parse_with_overrides(parser: argparse.ArgumentParser, argv) -> tuple[argparse.Namespace, list[str]]:
  """`parser.parse_known_args(argv)`, every unknown argument a `--config.KEY=VALUE` override (else `parser.error`).

  Returns the parsed flags and the overrides as `KEY=VALUE` strings for `mlc_jax.config.apply_overrides`.
  """
  args, rest = parser.parse_known_args(argv)
  overrides = []
  for item in rest:
    if not item.startswith("--config."):
      parser.error(f"unrecognised argument {item!r} (overrides look like --config.KEY=VALUE)")
    overrides.append(item[len("--config."):])
  return args, overrides

"""`python -m mlc_jax.train --config configs/X.py[:ARG] --workdir DIR [--config.KEY=VALUE …]`

Trains from a config file; running the same command again resumes from the latest complete checkpoint.
Flags: --allow_config_change resumes even when run-altering keys changed; --multihost initialises
jax.distributed (every host runs the same command and reads the same data). Exit codes: 0 done,
2 bad config or data (nothing written), 1 non-finite loss, 143 preempted by SIGTERM (a checkpoint was saved).
"""
from __future__ import annotations

import argparse
import sys

from mlc_jax.cli import parse_with_overrides


def parse_args(argv):
  parser = argparse.ArgumentParser(prog="python -m mlc_jax.train", description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True, help="config file, optionally with :ARG")
  parser.add_argument("--workdir", required=True, help="where checkpoints, metrics and caches go")
  parser.add_argument("--allow_config_change", action="store_true")
  parser.add_argument("--multihost", action="store_true",
                      help="call jax.distributed.initialize() first (TPU pod slices, multi-node GPU)")
  return parse_with_overrides(parser, argv)


def main(argv=None, *, on_step=None) -> int:
  """The CLI; `on_step(step, state)` is called after every step (the tests inject faults with it)."""
  args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
  from mlc_jax.config import ConfigError, apply_overrides, load_config_file  # after parsing: importing jax is slow
  from mlc_jax.train import trainer
  if args.multihost:
    import jax
    jax.distributed.initialize()
  try:
    config = apply_overrides(load_config_file(args.config), overrides)
    trainer.train(config, args.workdir, allow_config_change=args.allow_config_change, on_step=on_step)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except trainer.NonFiniteLoss as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except trainer.Preempted as e:
    print(str(e), file=sys.stderr)
    return 143
  return 0


if __name__ == "__main__":
  sys.exit(main())

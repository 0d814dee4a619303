"""`python -m mlc_jax.train --config configs/X.py[:ARG] --workdir DIR [--config.KEY=VALUE …]`

Trains from a config file; running the same command again resumes from the latest complete checkpoint.
Flags: --allow_config_change resumes even when run-altering keys changed; --restore_step N resumes from step N
(default: the newest checkpoint that restores, skipping corrupt ones with a note); --multihost initialises
jax.distributed (every host runs the same command and reads the same data). Exit codes: 0 done, 2 bad config, data
or workdir (nothing written), 1 non-finite loss or a checkpoint that cannot be written (e.g. a full disk),
124 a step ran over train.step_timeout_s, 143 preempted by SIGTERM, 130 Ctrl-C (a checkpoint was saved at the step
reached unless the step hung; a second Ctrl-C exits at once without saving).
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
  parser.add_argument("--restore_step", type=int, default=None,
                      help="resume from this checkpoint step (default: the newest one that restores)")
  parser.add_argument("--multihost", action="store_true",
                      help="call jax.distributed.initialize() first (TPU pod slices, multi-node GPU)")
  return parse_with_overrides(parser, argv)


def main(argv=None, *, on_step=None) -> int:
  """The CLI; `on_step(step, state)` is called after every step (the tests inject faults with it)."""
  args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
  from mlc_jax import cli  # after parsing: importing jax is slow
  from mlc_jax.config import ConfigError, apply_overrides, load_config_file
  from mlc_jax.train import checkpointing, trainer
  if args.multihost:
    import jax
    jax.distributed.initialize()

  def body():
    config = apply_overrides(load_config_file(args.config), overrides)
    trainer.train(config, args.workdir, allow_config_change=args.allow_config_change, restore_step=args.restore_step,
                  on_step=on_step)

  return cli.run(body, {ConfigError: 2, trainer.NonFiniteLoss: 1, trainer.Preempted: 143, trainer.Interrupted: 130,
                        checkpointing.CheckpointWriteError: 1, cli.BAD_INPUT: 2})


if __name__ == "__main__":
  sys.exit(main())

"""``tfds build`` without TensorFlow: ``python -m mlc_jax.data.tfds_builders NAME[/CONFIG] --manual_dir DIR``.

The ``tfds`` command of tensorflow-datasets 4.9.10 imports TensorFlow at start-up (for its ``convert_format``
command), so it fails where TensorFlow is not installed. This runs the same ``build`` command (same flags:
``--data_dir``, ``--manual_dir``, ``--config``, ``--overwrite``, ...) with the mlc_jax builders registered; bad
source data ends in one line ``error: <file>, line <n>: …`` and exit 2 (``mlc_jax.cli.run``).
"""
from __future__ import annotations

import sys

from absl import app, logging
from tensorflow_datasets.scripts.cli import build, cli_utils

import mlc_jax.data.tfds_builders  # noqa: F401  (registers the builders)
from mlc_jax import cli


def _main(args: build.Args) -> None:
  logging.set_verbosity(logging.INFO)
  sys.exit(cli.run(args.execute))


if __name__ == "__main__":
  app.run(_main, flags_parser=cli_utils.make_flags_parser(build.Args, description=__doc__))

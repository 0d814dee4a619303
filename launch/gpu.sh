#!/usr/bin/env bash
# Launch a training run on a GPU machine (one host, all its GPUs on the mesh).
#
#   bash launch/gpu.sh configs/mlc.py:model=llama3p2_1b,langs=mlc10 runs/mlc-1b \
#       --config.model.hf_path=/models/Llama-3.2-1B-Instruct
#
# Creates .venv-gpu with jax[cuda12], then trains. XLA_PYTHON_CLIENT_MEM_FRACTION leaves room for the
# host-side reference pass; mesh.shape defaults to (1, -1, 1): FSDP over all GPUs. Any failing step stops the
# script (set -e, one command a line); .venv-gpu/installed marks a complete install, so an install that failed
# half-way is done again on the next launch rather than trained with.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG="${1:?config spec}"; WORKDIR="${2:?workdir}"; shift 2
if [ ! -f .venv-gpu/installed ]; then
  python3 -m venv .venv-gpu
  .venv-gpu/bin/pip install -q -U pip
  .venv-gpu/bin/pip install -q -e . 'jax[cuda12]'
  touch .venv-gpu/installed
fi
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
exec .venv-gpu/bin/python -m mlc_jax.train --config "$CONFIG" --workdir "$WORKDIR" "$@"

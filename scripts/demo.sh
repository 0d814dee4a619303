#!/usr/bin/env bash
# The main job: sets up .venv if needed, then the transfer experiment in small on the CPU (scripts/demo.py).
source "$(dirname "$0")/env.sh"
# XLA's persistent compilation cache (runs/ is not tracked): the evaluation compiles the same programs for each model.
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$ROOT/runs/jax_cache}"
JAX_PLATFORMS=cpu python scripts/demo.py "$@"

#!/usr/bin/env bash
# The main job: sets up .venv if needed, then the transfer experiment in small on the CPU (scripts/demo.py).
source "$(dirname "$0")/env.sh"
JAX_PLATFORMS=cpu python scripts/demo.py "$@"

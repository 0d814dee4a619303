#!/usr/bin/env bash
# The test command: sets up .venv if needed, then runs the whole suite on the CPU (8 simulated devices).
source "$(dirname "$0")/env.sh"
set +e
# pytest-xdist workers, each a process with its own 8 simulated devices (MLC_JAX_TEST_WORKERS=0: one process);
# work stealing keeps both busy to the end (the suite's longest tests take minutes).
JAX_PLATFORMS=cpu python -m pytest -q -n "${MLC_JAX_TEST_WORKERS:-2}" --dist worksteal "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
fi
exit "$rc"

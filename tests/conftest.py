"""Test set-up: eight simulated CPU devices, set before jax is first imported."""
import faulthandler
import os
import tempfile

from cpu_mesh import xla_flags

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + xla_flags(8)).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Tests compile the same programs again (the same step on the same mesh, in-process and in subprocesses): XLA's
# persistent cache, shared by every process of the suite, compiles each once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "mlc_jax_test_jax_cache"))

import jax  # noqa: E402  (must come after XLA_FLAGS)
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


# No test may hang: one that runs longer than this dumps every thread's traceback and ends the session (a deadlock
# in a simulated-mesh collective never returns on its own).
TEST_TIMEOUT_S = 900


@pytest.fixture(autouse=True)
def _hang_watchdog():
  faulthandler.dump_traceback_later(TEST_TIMEOUT_S, exit=True)
  yield
  faulthandler.cancel_dump_traceback_later()

"""Test set-up: eight simulated CPU devices, set before jax is first imported."""
import os

# XLA:CPU's concurrency-optimised scheduler lets the simulated devices start independent collectives in different
# orders; on 2 cores their threads then wait on each other until the 40 s rendezvous timeout aborts the process
# (seen with the sharded MPO test). The plain scheduler keeps one order.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    " --xla_cpu_enable_concurrency_optimized_scheduler=false"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jax  # noqa: E402  (must come after XLA_FLAGS)

jax.config.update("jax_default_matmul_precision", "highest")

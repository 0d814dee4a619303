"""XLA flags of the tests' CPU processes, with their simulated meshes (imported by conftest.py before jax, so it
must not import jax).

* XLA:CPU aborts a collective whose devices do not all reach it within a timeout (about 40 s by default). On a
  loaded 2-core machine, 8 simulated devices can take longer than that between them without being stuck: the tests
  raise the limit, and the training watchdog (`train.step_timeout_s`) still ends a step that really hangs.
* XLA:CPU's concurrency-optimised scheduler lets the simulated devices start independent collectives in different
  orders; on 2 cores their threads then wait on each other until that timeout (seen with the sharded MPO test).
  The plain scheduler keeps one order.
* The tests' programs are tiny, so compiling them is most of the suite's time: LLVM's optimisation level 0 compiles
  them faster (tests/train/test_step.py: 172 s -> 135 s). It rounds differently in the last bits (other
  vectorisation): two comparisons of reordered float32 sums moved from within 1e-5 to 1.1e-5 and 2.1e-5.
"""
CPU_MESH_FLAGS = ("--xla_cpu_collective_call_terminate_timeout_seconds=900 "
                  "--xla_cpu_collective_call_warn_stuck_timeout_seconds=600 "
                  "--xla_cpu_enable_concurrency_optimized_scheduler=false "
                  "--xla_backend_optimization_level=0")


def xla_flags(devices: int) -> str:
  return f"--xla_force_host_platform_device_count={devices} {CPU_MESH_FLAGS}"

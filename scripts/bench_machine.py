"""The machine a benchmark runs on: its CPU, its peak matmul rate, and the CPU time other processes take meanwhile.

Shared by scripts/bench.py and scripts/bench_generate.py. This machine is shared with other jobs and a busy round can
double a step time, so every round reports the CPU share other processes used (`ForeignLoad`).
"""
from __future__ import annotations

import os
import platform
import time


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def peak_matmul_jax(sizes=(1024, 2048, 3072), reps=5) -> dict:
  import jax
  import jax.numpy as jnp
  rates = {}
  for n in sizes:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    for _ in range(2):
      dot(a, b).block_until_ready()
    times = []
    for _ in range(reps):
      t0 = time.perf_counter()
      dot(a, b).block_until_ready()
      times.append(time.perf_counter() - t0)
    rates[n] = 2 * n**3 / min(times)  # best repetition: a conservative (high) peak
  return {"flops_by_size": rates, "peak_flops": max(rates.values())}


CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _machine_busy_s() -> float:
  """CPU-seconds the whole machine has spent busy (all cores, from /proc/stat); NaN where unavailable."""
  try:
    with open("/proc/stat") as f:
      fields = [int(x) for x in f.readline().split()[1:]]
  except OSError:
    return float("nan")
  user, nice, system, idle, iowait, irq, softirq = fields[:7]
  return (user + nice + system + irq + softirq) / CLK_TCK


def _process_cpu_s(pid: int) -> float:
  try:
    with open(f"/proc/{pid}/stat") as f:
      fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime
  except (OSError, IndexError, ValueError):
    return float("nan")


class ForeignLoad:
  """CPU-seconds used by processes other than this benchmark (and its TRL workers) while a block runs."""

  def __init__(self, pids):
    self.pids = pids

  def __enter__(self):
    self.t0, self.busy0 = time.perf_counter(), _machine_busy_s()
    self.own0 = sum(_process_cpu_s(p) for p in self.pids())
    return self

  def __exit__(self, *exc):
    wall = time.perf_counter() - self.t0
    own = sum(_process_cpu_s(p) for p in self.pids()) - self.own0
    foreign = max(_machine_busy_s() - self.busy0 - own, 0.0)
    self.result = dict(wall_s=wall, foreign_cpu_s=foreign, foreign_share=foreign / (wall * (os.cpu_count() or 1)))


def wait_until_idle(max_wait_s: float, threshold: float = 0.1, window_s: float = 5.0):
  """Waits (at most max_wait_s) for a window in which the machine is busy less than `threshold` of the time."""
  deadline = time.time() + max_wait_s
  while True:
    b0 = _machine_busy_s()
    time.sleep(window_s)
    share = (_machine_busy_s() - b0) / (window_s * (os.cpu_count() or 1))
    if share < threshold or time.time() > deadline:
      return share

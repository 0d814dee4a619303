"""TrainBatches' sampling time: the sampler alone, not the wait for the step that produces its parameters."""
import time

import jax
import jax.numpy as jnp

from mlc_jax.train.batches import TrainBatches

SAMPLER_S = 0.3


class Counter:
  """An input pipeline of `{"x": [i]}` batches with a resumable position."""

  def __init__(self):
    self.i = 0

  def __next__(self):
    self.i += 1
    return {"x": [self.i]}

  def get_state(self):
    return {"i": self.i}

  def set_state(self, state):
    self.i = state["i"]


def slow_sampler(params, batches, first_step):
  time.sleep(SAMPLER_S)
  return batches


def test_sampling_time_excludes_the_wait_for_the_step_just_dispatched():
  step = jax.jit(lambda x: jax.lax.fori_loop(0, 200, lambda i, a: jnp.tanh(a @ a), x))  # a slow "train step"
  params = jnp.eye(512) / 2
  step(params).block_until_ready()
  started = time.perf_counter()
  step(params).block_until_ready()
  step_s = time.perf_counter() - started
  batches = TrainBatches(Counter(), lambda host: host, total_steps=2, sample=slow_sampler)
  switched_off = TrainBatches(Counter(), lambda host: host, total_steps=2)
  try:
    _, _, timing = batches.next(step(params), 0)  # dispatched, not finished: the sampler waits for it first
    assert switched_off.next(step(params), 0)[2] is None
  finally:
    batches.close(), switched_off.close()
  assert SAMPLER_S <= timing.seconds < SAMPLER_S + 0.5 * step_s, (timing, step_s)
  assert timing.wait_s > 0.5 * step_s, (timing, step_s)

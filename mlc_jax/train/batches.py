"""The training loop's batches: from the input pipeline to the devices, prepared on a background thread while the
devices run the previous step, with on-policy responses when the objective samples them (MSD), `every` steps at a
time, and a resumable position (the checkpoint's `data` item)."""
from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from collections.abc import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

# The data state of a checkpoint saved inside a sampling block also holds the block's responses under this key
# (besides the input pipeline's position at the block's start); a checkpoint at a block boundary holds only the
# pipeline's position, as the runs without sampling do.
BLOCK_KEY = "on_policy_block"
RESPONSE_KEYS = ("response_ids", "response_lengths")

# (model parameters, a tuple of device batches, the first batch's step index) → the batches with responses.
SampleFn = Callable[[object, tuple, int], tuple]


@dataclasses.dataclass(frozen=True)
class SamplingTime:
  """The sampler's time before a step: `seconds` in the sampler call (0 on a block's later steps), and `wait_s`
  before it, waiting for the parameters it samples with (the devices finishing the step just dispatched: the train
  step's time, not the sampler's)."""

  seconds: float
  wait_s: float


class TrainBatches:
  """Yields `(host_batch, device_batch, SamplingTime | None)` for each step.

  The next pipeline batch (and, without sampling, its transfer to the devices) is prepared on one background
  thread while the current step runs; each carries the pipeline position after it, so `get_state` is the position
  of what was consumed, not of what was prefetched. Without `sample`, one pipeline batch per step
  (`SamplingTime` None). With it, at every `every`-th step the next `every` batches (fewer at the end of the
  run) are pulled and the current parameters answer all their prompts in one sampler call; the responses of the
  batch of step `block_start + j` therefore come from the parameters of `block_start` (j steps old; `every=1` is
  strictly on-policy). The sampling time is reported on the block's first step, 0 on the others.
  Call `close()` at the end (the trainer does).
  """

  def __init__(self, iterator, to_device: Callable[[dict], dict], *, total_steps: int,
               sample: SampleFn | None = None, every: int = 1):
    self._iterator, self._to_device, self._total = iterator, to_device, total_steps
    self._sample, self._every = sample, every
    self._block: list[tuple[dict, dict]] = []  # (host, device) batches of the current block, with responses
    self._block_start, self._block_state = 0, None  # the block's first step index, the pipeline state before it
    self._consumed_state = None  # the pipeline position after the last batch handed out (None: as restored)
    self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mlc_jax-batches")
    self._ahead: concurrent.futures.Future | None = None

  def _prepare(self) -> tuple[dict, dict | None, dict]:
    host = next(self._iterator)
    state = self._iterator.get_state()
    return host, (self._to_device(host) if self._sample is None else None), state

  def _pull(self) -> tuple[dict, dict | None]:
    """The next pipeline batch (and its device copy without sampling); starts preparing the one after."""
    if self._ahead is None:
      self._ahead = self._worker.submit(self._prepare)
    host, batch, self._consumed_state = self._ahead.result()
    self._ahead = self._worker.submit(self._prepare)
    return host, batch

  def _position(self) -> dict:
    return self._iterator.get_state() if self._consumed_state is None else self._consumed_state

  def next(self, params, step: int) -> tuple[dict, dict, SamplingTime | None]:
    """The batch of step index `step` (0-based), sampling a new block with `params` when one is due."""
    if self._sample is None:
      host, batch = self._pull()
      return host, batch, None
    timing = SamplingTime(0.0, 0.0)
    if step >= self._block_start + len(self._block):
      self._block_state, self._block_start = self._position(), step
      hosts = [self._pull()[0] for _ in range(min(self._every, self._total - step))]
      batches = tuple(self._to_device(h) for h in hosts)
      waited = time.perf_counter()
      jax.block_until_ready(params)
      start = time.perf_counter()
      self._block = list(zip(hosts, jax.block_until_ready(self._sample(params, batches, step))))
      timing = SamplingTime(time.perf_counter() - start, start - waited)
    host, batch = self._block[step - self._block_start]
    return host, batch, timing

  def close(self) -> None:
    self._worker.shutdown(wait=True, cancel_futures=True)

  def get_state(self, step: int) -> dict:
    """The JSON position after `step` completed steps: the pipeline's, and inside a block also its responses."""
    if self._sample is None or step >= self._block_start + len(self._block):
      return self._position()
    responses = [{k: np.asarray(multihost_utils.process_allgather(batch[k], tiled=True)).tolist()
                  for k in RESPONSE_KEYS} for _, batch in self._block]
    return {**self._block_state, BLOCK_KEY: {"start": self._block_start, "responses": responses}}

  def set_state(self, data_state: dict, step: int) -> None:
    """Restores `get_state(step)`: the pipeline's position, and the unfinished block with its saved responses.
    Call it before the first `next`."""
    if self._ahead is not None:
      raise RuntimeError("TrainBatches.set_state after batches were handed out")
    state = dict(data_state)
    block = state.pop(BLOCK_KEY, None)
    self._iterator.set_state(state)
    self._block, self._block_start = [], step
    if block is None:
      return
    if self._sample is None:
      raise ValueError(f"the checkpoint at step {step} holds sampled responses (an on-policy run), but this run's "
                       "objective samples none")
    self._block_state, self._block_start = state, block["start"]
    for saved in block["responses"]:
      host = next(self._iterator)
      self._consumed_state = self._iterator.get_state()
      batch = self._to_device(host)
      for k in RESPONSE_KEYS:
        like = batch["student_prompt_mask"]
        values = np.asarray(saved[k], np.int32)
        batch[k] = jax.make_array_from_callback(values.shape, like.sharding, lambda index, v=values: v[index])
      self._block.append((host, batch))
    if not self._block_start <= step < self._block_start + len(self._block):
      raise ValueError(f"the checkpoint at step {step} holds the responses of steps {self._block_start}.."
                       f"{self._block_start + len(self._block) - 1}")

"""The training loop's batches: from the input pipeline to the devices, with on-policy responses when the objective
samples them (MSD), `every` steps at a time, and a resumable position (the checkpoint's `data` item)."""
from __future__ import annotations

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


class TrainBatches:
  """Yields `(host_batch, device_batch, sampling_seconds)` for each step.

  Without `sample`, one pipeline batch per step (`sampling_seconds` None). With it, at every `every`-th step the
  next `every` batches (fewer at the end of the run) are pulled and the current parameters answer all their
  prompts in one sampler call; the responses of the batch of step `block_start + j` therefore come from the
  parameters of `block_start` (j steps old; `every=1` is strictly on-policy). The sampling seconds are reported
  on the block's first step, 0 on the others.
  """

  def __init__(self, iterator, to_device: Callable[[dict], dict], *, total_steps: int,
               sample: SampleFn | None = None, every: int = 1):
    self._iterator, self._to_device, self._total = iterator, to_device, total_steps
    self._sample, self._every = sample, every
    self._block: list[tuple[dict, dict]] = []  # (host, device) batches of the current block, with responses
    self._block_start, self._block_state = 0, None  # the block's first step index, the pipeline state before it

  def next(self, params, step: int) -> tuple[dict, dict, float | None]:
    """The batch of step index `step` (0-based), sampling a new block with `params` when one is due."""
    if self._sample is None:
      host = next(self._iterator)
      return host, self._to_device(host), None
    seconds = 0.0
    if step >= self._block_start + len(self._block):
      start = time.perf_counter()
      self._block_state, self._block_start = self._iterator.get_state(), step
      hosts = [next(self._iterator) for _ in range(min(self._every, self._total - step))]
      sampled = jax.block_until_ready(self._sample(params, tuple(self._to_device(h) for h in hosts), step))
      self._block = list(zip(hosts, sampled))
      seconds = time.perf_counter() - start
    host, batch = self._block[step - self._block_start]
    return host, batch, seconds

  def get_state(self, step: int) -> dict:
    """The JSON position after `step` completed steps: the pipeline's, and inside a block also its responses."""
    if self._sample is None or step >= self._block_start + len(self._block):
      return self._iterator.get_state()
    responses = [{k: np.asarray(multihost_utils.process_allgather(batch[k], tiled=True)).tolist()
                  for k in RESPONSE_KEYS} for _, batch in self._block]
    return {**self._block_state, BLOCK_KEY: {"start": self._block_start, "responses": responses}}

  def set_state(self, data_state: dict, step: int) -> None:
    """Restores `get_state(step)`: the pipeline's position, and the unfinished block with its saved responses."""
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
      batch = self._to_device(host)
      for k in RESPONSE_KEYS:
        like = batch["student_prompt_mask"]
        values = np.asarray(saved[k], np.int32)
        batch[k] = jax.make_array_from_callback(values.shape, like.sharding, lambda index, v=values: v[index])
      self._block.append((host, batch))
    if not self._block_start <= step < self._block_start + len(self._block):
      raise ValueError(f"the checkpoint at step {step} holds the responses of steps {self._block_start}.."
                       f"{self._block_start + len(self._block) - 1}")

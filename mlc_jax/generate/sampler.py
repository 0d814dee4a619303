"""Text in, text out: chat-rendered prompts, batched and bucketed through `generate`'s compiled sampler.

Prompts are rendered with the tokenizer's chat template (a single user turn after an optional system turn, up to
and including the assistant header), sorted by length so that a batch shares one prompt bucket, generated
`batch_size` at a time (the last batch filled with empty rows, so every batch has one compiled shape), and
returned in the caller's order. Row i of a call samples with `row_keys(seed, [i])`, so the samples do not depend
on `batch_size` or on the other prompts.

Over-long prompts (more than `max_prompt_len` tokens): `overflow='error'` (default) raises `PromptTooLong`
before anything is generated, naming how many and which; `overflow='truncate'` keeps each one's last
`max_prompt_len` tokens (the assistant header stays, the beginning of the conversation goes), reports the count
on stderr and flags them in `Generation.prompt_truncated`.
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Sequence

import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from mlc_jax.generate import decode
from mlc_jax.data.tokenizer import chat_prompts
from mlc_jax.generate.sampling import SamplingSettings
from mlc_jax.models.decoder import Decoder
from mlc_jax.parallel import sharding as sharding_lib

OVERFLOW = ("error", "truncate")


class PromptTooLong(ValueError):
  """Some prompts have more tokens than the sampler's `max_prompt_len`."""


@dataclasses.dataclass(frozen=True)
class Generation:
  """One response. n_tokens: generated tokens, the eos included; truncated: stopped by `max_new_tokens` before
  an eos; prompt_tokens: the prompt's length as generated from; prompt_truncated: cut to `max_prompt_len`."""

  text: str
  n_tokens: int
  truncated: bool
  prompt_tokens: int
  prompt_truncated: bool


def _as_ids(ids) -> tuple[int, ...]:
  return tuple(int(i) for i in np.atleast_1d(ids if ids is not None else ()))


class Sampler:
  """Generates chat responses from a `Decoder` and its tokenizer.

  Args:
    model: the `Decoder`; its parameters are used in place (moved onto `mesh` when given).
    tokenizer: with a chat template (`mlc_jax.data.tokenizer.load_tokenizer`).
    mesh, rules: shard the batch over ('data', 'fsdp') and heads / MLP over 'tensor'.
    batch_size: rows per compiled call.
    max_prompt_len: the most prompt tokens a row may have; prompt buckets are the powers of two up to the
      bucket of this length (`decode.bucket_length`).
    max_new_tokens: tokens generated per response at most.
    overflow: 'error' or 'truncate' for over-long prompts (module docstring).
    progress: show a tqdm bar over the prompts.
  """

  def __init__(self, model: Decoder, tokenizer: PreTrainedTokenizerBase, *, mesh: Mesh | None = None,
               rules=sharding_lib.DEFAULT_RULES, batch_size: int = 16, max_prompt_len: int = 1024,
               max_new_tokens: int = 256, overflow: str = "error", progress: bool = True):
    if overflow not in OVERFLOW:
      raise ValueError(f"overflow={overflow!r} is not one of {', '.join(OVERFLOW)}")
    for name, value in (("batch_size", batch_size), ("max_prompt_len", max_prompt_len),
                        ("max_new_tokens", max_new_tokens)):
      if not (isinstance(value, int) and value >= 1):
        raise ValueError(f"{name}={value!r} must be an integer ≥ 1")
    limit = model.cfg.max_position_embeddings
    if max_prompt_len + max_new_tokens > limit:
      raise ValueError(f"max_prompt_len + max_new_tokens = {max_prompt_len} + {max_new_tokens} is more than the "
                       f"model's max_position_embeddings={limit}")
    self.tokenizer, self.batch_size, self.progress = tokenizer, batch_size, progress
    self.max_prompt_len, self.max_new_tokens, self.overflow = max_prompt_len, max_new_tokens, overflow
    self.eos_ids = tuple(dict.fromkeys(_as_ids(model.cfg.eos_token_id) + _as_ids(tokenizer.eos_token_id)))
    pads = (tokenizer.pad_token_id, model.cfg.pad_token_id, *self.eos_ids, 0)
    self.pad_id = next(p for p in pads if p is not None)
    self._prepared = decode.prepare(model, mesh, rules)
    self._caches: dict[tuple[int, int], object] = {}  # (rows, prompt bucket) → the last call's donated cache

  def encode(self, prompts: Sequence[str], *, system: str | None = None) -> list[list[int]]:
    """Each prompt as a user turn (after `system`), chat-rendered up to the assistant header, as token ids."""
    return self.tokenizer(chat_prompts(self.tokenizer, prompts, system=system), add_special_tokens=False)["input_ids"]

  def chat(self, prompts: Sequence[str], *, system: str | None = None, **sampling) -> list[str]:
    """The responses' texts (special tokens dropped); `sampling`: temperature, top_k, top_p, seed."""
    return [g.text for g in self.chat_detailed(prompts, system=system, **sampling)]

  def chat_detailed(self, prompts: Sequence[str], *, system: str | None = None, **sampling) -> list[Generation]:
    """One `Generation` per prompt, in order (greedy by default; `sampling`: temperature, top_k, top_p, seed)."""
    return self.complete_detailed(self.encode(prompts, system=system), **sampling)

  def complete_detailed(self, rows: Sequence[Sequence[int]], *, temperature: float = 0.0, top_k: int = 0,
                        top_p: float = 1.0, seed: int = 0) -> list[Generation]:
    """One `Generation` per prompt given as token ids (e.g. a whole conversation rendered by a chat template)."""
    settings = SamplingSettings(self.max_new_tokens, temperature, top_k, top_p, self.eos_ids, self.pad_id)
    rows, cut = self._fit([list(r) for r in rows])
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out: list[Generation | None] = [None] * len(rows)
    with tqdm(total=len(rows), desc="generate", unit="prompt", disable=not self.progress, dynamic_ncols=True) as bar:
      for start in range(0, len(rows), self.batch_size):
        batch = order[start:start + self.batch_size]
        tokens, lengths = self._generate([rows[i] for i in batch], batch, settings, seed)
        for i, row_tokens, n in zip(batch, tokens, lengths):
          text = self.tokenizer.decode(row_tokens[:n], skip_special_tokens=True)
          ended = n > 0 and int(row_tokens[n - 1]) in self.eos_ids
          out[i] = Generation(text, int(n), not ended, len(rows[i]), i in cut)
        bar.update(len(batch))
    return out

  def _fit(self, rows: list[list[int]]) -> tuple[list[list[int]], set[int]]:
    """Applies `overflow` to the rows longer than `max_prompt_len`; → (rows, indices of the cut ones)."""
    long = [i for i, r in enumerate(rows) if len(r) > self.max_prompt_len]
    if not long:
      return rows, set()
    which = ", ".join(map(str, long[:10])) + (" …" if len(long) > 10 else "")
    summary = (f"{len(long)} of {len(rows)} prompts are longer than max_prompt_len={self.max_prompt_len} tokens "
               f"(longest {max(len(rows[i]) for i in long)}; prompt indices {which})")
    if self.overflow == "error":
      raise PromptTooLong(f"{summary}: raise max_prompt_len or truncate them")
    print(f"generate: {summary}: kept the last {self.max_prompt_len} tokens of each", file=sys.stderr)
    return [r[-self.max_prompt_len:] for r in rows], set(long)

  def _generate(self, rows: list[list[int]], ids: list[int], settings: SamplingSettings, seed: int):
    """Tokens `[len(rows), n]` and lengths of one batch (filled up to `batch_size` with empty rows)."""
    b = self.batch_size
    width = decode.bucket_length(max(len(r) for r in rows))
    prompt_ids = np.full((b, width), self.pad_id, np.int32)
    prompt_mask = np.zeros((b, width), np.int32)
    for j, r in enumerate(rows):
      prompt_ids[j, :len(r)], prompt_mask[j, :len(r)] = r, 1
    keys = decode.row_keys(seed, list(ids) + [0] * (b - len(rows)))  # the filler rows are finished at once
    out, self._caches[b, width] = decode.run(self._prepared, prompt_ids, prompt_mask, keys, settings,
                                             self._caches.pop((b, width), None))
    return np.asarray(out.tokens)[:len(rows)], np.asarray(out.lengths)[:len(rows)]

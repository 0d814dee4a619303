"""Tokenisation of preference examples into fixed-shape arrays.

Each example becomes one chosen and one rejected sequence of length ``T = max_prompt_len + max_response_len``
(the chat-rendered pair prompt, then the response and its end-of-sequence token, right padded) and ``L``
short MLC prompt variants of length ``P = mlc_prompt_len`` (the same request in each language, rendered up
to and including the assistant header, right padded), so the last real token of every variant is the
generation prompt's last token (DESIGN.md §2.1, §4). An MPO example (§2.2) becomes two such pairs, one in
the target language and one in the dominant language, and no prompt variants.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from transformers import PreTrainedTokenizerBase

from mlc_jax.data import packing
from mlc_jax.data.preferences import MpoExample, PreferenceExample
from mlc_jax.data.tokenizer import chat_prompts

PAIR_KEYS = ("chosen_ids", "chosen_mask", "chosen_loss_mask", "rejected_ids", "rejected_mask", "rejected_loss_mask")
DOMINANT_PAIR_KEYS = tuple(f"dominant_{k}" for k in PAIR_KEYS)
PROMPT_KEYS = ("prompt_ids", "prompt_mask")
BATCH_KEYS = (*PAIR_KEYS, *PROMPT_KEYS, "pair_language", "index")
SCORES_INDEX = "scores_index"  # `{side}_scores_index`: where the LM head runs on a plain sequence (`scored_positions`)
MPO_BATCH_KEYS = (*PAIR_KEYS, *DOMINANT_PAIR_KEYS, "pair_language", "index")
PROMPT_ONLY_BATCH_KEYS = ("student_prompt_ids", "student_prompt_mask", "teacher_prompt_ids", "teacher_prompt_mask",
                          "pair_language", "index")


@dataclasses.dataclass(frozen=True)
class SequenceLimits:
  """Token budgets: pair length ``T = max_prompt_len + max_response_len``; MLC variant length ``P``."""

  max_prompt_len: int = 64
  max_response_len: int = 192
  mlc_prompt_len: int = 64

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"SequenceLimits.{field.name} must be a positive int, got {value!r}")

  @property
  def pair_len(self) -> int:
    return self.max_prompt_len + self.max_response_len


@dataclasses.dataclass(frozen=True)
class PairArrays:
  """The chosen and rejected sequences of N pairs, `[N, T]` int32 each (see `TokenizedData`).

  `layout`: how the input pipeline packs batches (`packing.RowLayout`, set from the run by the data kind's loader),
  None for the plain `[B, T]` sequences; `share_variant`: whether it drops each example's MLC prompt variant in its
  pair language where that is the pair's prompt (`Objective.shares_variant`, `pipeline.drop_shared_variant`). The
  per-example trees `{prefix}tree_*` of `packing.tree_arrays` are attributes too (computed on first use), so the
  reference precompute reads them like any other array.
  """

  chosen_ids: np.ndarray
  chosen_mask: np.ndarray
  chosen_loss_mask: np.ndarray
  rejected_ids: np.ndarray
  rejected_mask: np.ndarray
  rejected_loss_mask: np.ndarray
  layout: packing.RowLayout | None = dataclasses.field(default=None, kw_only=True)
  share_variant: bool = dataclasses.field(default=False, kw_only=True)

  def __len__(self) -> int:
    return self.chosen_ids.shape[0]

  def trees(self, prefix: str = "") -> dict[str, np.ndarray]:
    """`packing.tree_arrays` of the pairs under `prefix` ('' or 'dominant_'), computed once."""
    cache = self.__dict__.setdefault("_trees", {})
    if prefix not in cache:
      cache[prefix] = packing.tree_arrays({k: getattr(self, k) for k in (f"{prefix}{side}_{key}"
                                                                          for side in packing.BRANCHES
                                                                          for key in ("ids", "mask", "loss_mask"))},
                                          prefix)
    return cache[prefix]

  @property
  def pair_sides(self) -> tuple[str, ...]:
    """The sequences of each example: `chosen`, `rejected` (and MPO's `dominant_chosen`, `dominant_rejected`)."""
    return tuple(k[:-len("_loss_mask")] for k in self.batch_keys if k.endswith("_loss_mask"))

  @property
  def scores_width(self) -> int:
    """The most response tokens any sequence of the dataset has: the width of its `{side}_scores_index`."""
    if "_scores_width" not in self.__dict__:
      self.__dict__["_scores_width"] = max(1, max(int(getattr(self, f"{side}_loss_mask")[:, 1:].sum(1).max(initial=0))
                                                  for side in self.pair_sides))
    return self.__dict__["_scores_width"]

  def __getattr__(self, name: str):
    if name.startswith("_"):
      raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
    side = name.removesuffix(f"_{SCORES_INDEX}")
    if side != name and side in self.pair_sides:
      cache = self.__dict__.setdefault("_scores_index", {})
      if side not in cache:
        cache[side] = scored_positions(getattr(self, f"{side}_loss_mask"), self.scores_width)
      return cache[side]
    prefix, tree, _ = name.partition("tree_")
    if tree and prefix in ("", "dominant_"):
      return self.trees(prefix)[name]
    raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

  @property
  def pipeline_keys(self) -> tuple[str, ...]:
    """The arrays the input pipeline gathers per example: `batch_keys`, with the layout's trees for the pairs, or
    for plain sequences with each sequence's scored positions (`{side}_scores_index`)."""
    if self.layout is None:
      return (*self.batch_keys, *(f"{side}_{SCORES_INDEX}" for side in self.pair_sides))
    trees = tuple(f"{p}tree_{k}" for p in self.layout.prefixes for k in packing.TREE_FIELDS)
    return (*trees, *(k for k in self.batch_keys if k not in PAIR_KEYS and k not in DOMINANT_PAIR_KEYS))


def prompt_lengths(loss_mask: np.ndarray) -> np.ndarray:
  """`[N]`: the prompt tokens of each sequence `[N, T]`, those before its response (the first 1 of `loss_mask`)."""
  return np.argmax(loss_mask, axis=-1)


def scored_positions(loss_mask: np.ndarray, width: int) -> np.ndarray:
  """`[N, width]` int32: the positions t of each row `[N, T]` whose next token is scored (`loss_mask[:, t + 1]`),
  ascending, then zeros (a row has `loss_mask[:, 1:].sum(1)` of them): the LM head runs at these positions only."""
  scored = np.zeros(loss_mask.shape, bool)
  scored[:, :-1] = loss_mask[:, 1:] > 0
  count = scored.sum(1)
  if count.max(initial=0) > width:
    raise ValueError(f"a sequence has {int(count.max())} response tokens, more than the width {width}")
  rows, cols = np.nonzero(scored)  # row by row, ascending: each one's rank in its row is its slot
  out = np.zeros((len(loss_mask), width), np.int32)
  out[rows, np.arange(len(rows)) - (np.cumsum(count) - count)[rows]] = cols
  return out


@dataclasses.dataclass(frozen=True)
class TokenizedData(PairArrays):
  """A whole dataset as int32 arrays (N examples, L languages, pair length T, variant length P).

  Attributes:
    chosen_ids, chosen_mask, chosen_loss_mask: `[N, T]`; mask 1 on real tokens, loss mask 1 on the
      response tokens (its end-of-sequence included).
    rejected_ids, rejected_mask, rejected_loss_mask: `[N, T]`, likewise.
    prompt_ids, prompt_mask: `[N, L, P]`, the prompt in each language of ``languages``.
    pair_language: `[N]`, the index in ``languages`` of the language the pair is written in.
    index: `[N]`, each example's position in its dataset.
    languages: the L language codes, in the order of ``prompt_ids``' second axis.
    truncation: how many were cut: ``prompt`` (pair prompts), ``chosen`` / ``rejected`` (responses),
      ``mlc_prompt`` (prompt variants, over all languages).
  """

  prompt_ids: np.ndarray
  prompt_mask: np.ndarray
  pair_language: np.ndarray
  index: np.ndarray
  languages: tuple[str, ...]
  truncation: dict[str, int]
  batch_keys = BATCH_KEYS  # what the input pipeline batches

  @property
  def seen_languages(self) -> tuple[str, ...]:
    """Every language the training data shows the model."""
    return self.languages

  @property
  def variants_match_pair_prompts(self) -> bool:
    """Whether every example's prompt variant in its pair language is its pair's prompt, token for token (then the
    pair's prompt gives that variant's MLC representation, `share_variant`)."""
    if "_variants_match" not in self.__dict__:
      n = len(self)
      variant_ids = self.prompt_ids[np.arange(n), self.pair_language]
      variant_len = self.prompt_mask[np.arange(n), self.pair_language].sum(-1)
      prompt_len = prompt_lengths(self.chosen_loss_mask)
      self.__dict__["_variants_match"] = bool(np.all(variant_len == prompt_len) and all(
          np.array_equal(variant_ids[i, :prompt_len[i]], self.chosen_ids[i, :prompt_len[i]]) for i in range(n)))
    return self.__dict__["_variants_match"]


@dataclasses.dataclass(frozen=True)
class MpoTokenizedData(PairArrays):
  """An MPO dataset as int32 arrays (N examples, pair length T).

  Attributes:
    chosen_*, rejected_*: `[N, T]`, the pair in the target language (as in `TokenizedData`).
    dominant_chosen_*, dominant_rejected_*: `[N, T]`, the same pair in the dominant language.
    pair_language: `[N]`, the index of each target language in ``languages``.
    dominant_language: `[N]`, the index of each dominant language in ``dominant_languages``.
    index: `[N]`, each example's position in its dataset.
    languages, dominant_languages: the target and dominant language codes present, in first-seen order.
    truncation: cut pair prompts and responses per side (``prompt``, ``chosen``, ``rejected``,
      ``dominant_prompt``, ``dominant_chosen``, ``dominant_rejected``).
  """

  dominant_chosen_ids: np.ndarray
  dominant_chosen_mask: np.ndarray
  dominant_chosen_loss_mask: np.ndarray
  dominant_rejected_ids: np.ndarray
  dominant_rejected_mask: np.ndarray
  dominant_rejected_loss_mask: np.ndarray
  pair_language: np.ndarray
  dominant_language: np.ndarray
  index: np.ndarray
  languages: tuple[str, ...]
  dominant_languages: tuple[str, ...]
  truncation: dict[str, int]
  batch_keys = MPO_BATCH_KEYS

  @property
  def seen_languages(self) -> tuple[str, ...]:
    """Every language the training data shows the model: the targets and the dominant ones."""
    return tuple(dict.fromkeys(self.languages + self.dominant_languages))


@dataclasses.dataclass(frozen=True)
class PromptOnlyData:
  """Prompt-only examples for self-distillation (N examples), prompts LEFT padded so a response can follow each.

  Attributes:
    student_prompt_ids, student_prompt_mask: `[N, P]`, the target-language prompt chat-rendered up to the assistant
      header, its last real token at index P - 1.
    teacher_prompt_ids, teacher_prompt_mask: `[N, Pt]`, the teacher's context (the target prompt, its English
      translation and the reasoning instruction in one user turn), rendered and padded the same way.
    pair_language: `[N]`, the index of each example's target language in ``languages``.
    index: `[N]`, each example's position; prompt_id: `[N]`, its row in the source (shared across languages).
    languages: the target languages; seen_languages adds English, which the teacher reads.
    truncation: cut student and teacher prompts (their first tokens are dropped, keeping the assistant header).
  """

  student_prompt_ids: np.ndarray
  student_prompt_mask: np.ndarray
  teacher_prompt_ids: np.ndarray
  teacher_prompt_mask: np.ndarray
  pair_language: np.ndarray
  index: np.ndarray
  prompt_id: np.ndarray
  languages: tuple[str, ...]
  truncation: dict[str, int]
  batch_keys = PROMPT_ONLY_BATCH_KEYS

  def __len__(self) -> int:
    return self.student_prompt_ids.shape[0]

  @property
  def seen_languages(self) -> tuple[str, ...]:
    return (*self.languages, "en")


def _left_pad(rows: Sequence[Sequence[int]], width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """`[len(rows), width]` int32 ids (pad_id before each row's last `width` tokens) and the mask of real tokens."""
  ids = np.full((len(rows), width), pad_id, np.int32)
  mask = np.zeros((len(rows), width), np.int32)
  for i, row in enumerate(rows):
    row = list(row)[-width:]
    ids[i, width - len(row):] = row
    mask[i, width - len(row):] = 1
  return ids, mask


def tokenize_prompt_only(examples, tokenizer: PreTrainedTokenizerBase, *, prompt_len: int, teacher_prompt_len: int,
                         teacher_template: str, languages: tuple[str, ...]) -> PromptOnlyData:
  """Tokenizes `PromptExample`s: the student sees `prompt`, the teacher `teacher_template.format(prompt=…,
  english=…)`. Over-long prompts keep their last tokens (the assistant header stays) and are counted."""
  if not examples:
    raise ValueError("tokenize_prompt_only: no examples")
  pad_id, _ = _token_ids(tokenizer)
  truncation = {"student_prompt": 0, "teacher_prompt": 0}
  student = _render_prompts(tokenizer, [ex.prompt for ex in examples])
  teacher = _render_prompts(tokenizer, [teacher_template.format(prompt=ex.prompt, english=ex.english)
                                        for ex in examples])
  truncation["student_prompt"] = sum(len(ids) > prompt_len for ids in student)
  truncation["teacher_prompt"] = sum(len(ids) > teacher_prompt_len for ids in teacher)
  student_ids, student_mask = _left_pad(student, prompt_len, pad_id)
  teacher_ids, teacher_mask = _left_pad(teacher, teacher_prompt_len, pad_id)
  return PromptOnlyData(
      student_prompt_ids=student_ids, student_prompt_mask=student_mask, teacher_prompt_ids=teacher_ids,
      teacher_prompt_mask=teacher_mask,
      pair_language=np.asarray([languages.index(ex.language) for ex in examples], np.int32),
      index=np.asarray([ex.index for ex in examples], np.int32),
      prompt_id=np.asarray([ex.prompt_id for ex in examples], np.int32), languages=languages, truncation=truncation)


def _render_prompts(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[list[int]]:
  """Token ids of each text as a single user turn, chat-rendered up to and including the assistant header."""
  return tokenizer(chat_prompts(tokenizer, texts), add_special_tokens=False)["input_ids"]


def _right_pad(rows: Sequence[Sequence[int]], width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """`[len(rows), width]` int32 ids (pad_id after each row) and the mask of real tokens."""
  ids = np.full((len(rows), width), pad_id, np.int32)
  mask = np.zeros((len(rows), width), np.int32)
  for i, row in enumerate(rows):
    ids[i, : len(row)] = row
    mask[i, : len(row)] = 1
  return ids, mask


def _token_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int]:
  """(pad id, eos id): padding uses the tokenizer's pad id, or its eos id when it has none."""
  eos_id = tokenizer.eos_token_id
  if eos_id is None:
    raise ValueError("tokenizer has no eos token; responses must end with one")
  return (tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id), eos_id


def _tokenize_pairs(examples: Sequence[PreferenceExample], tokenizer: PreTrainedTokenizerBase,
                    limits: SequenceLimits, truncation: dict[str, int], *, pad_id: int, eos_id: int,
                    prefix: str = "") -> dict[str, np.ndarray]:
  """`{prefix}{chosen,rejected}_{ids,mask,loss_mask}` `[N, T]` for the pairs; counts cuts in ``truncation``.

  Each sequence is the pair prompt (in ``pair_language``, its last ``max_prompt_len`` tokens), then the
  response and its end-of-sequence token (its first ``max_response_len`` tokens), right padded to T.
  """
  pair_prompts = []
  for ids in _render_prompts(tokenizer, [ex.prompts[ex.pair_language] for ex in examples]):
    truncation[f"{prefix}prompt"] += len(ids) > limits.max_prompt_len
    pair_prompts.append(ids[-limits.max_prompt_len :])
  out = {}
  for field in ("chosen", "rejected"):
    sequences, loss_rows = [], []
    texts = [getattr(ex, field) for ex in examples]
    for prompt, text_ids in zip(pair_prompts, tokenizer(texts, add_special_tokens=False)["input_ids"]):
      response = list(text_ids) + [eos_id]
      truncation[f"{prefix}{field}"] += len(response) > limits.max_response_len
      response = response[: limits.max_response_len]
      sequences.append(prompt + response)
      loss_rows.append([0] * len(prompt) + [1] * len(response))
    name = f"{prefix}{field}"
    out[f"{name}_ids"], out[f"{name}_mask"] = _right_pad(sequences, limits.pair_len, pad_id)
    out[f"{name}_loss_mask"], _ = _right_pad(loss_rows, limits.pair_len, 0)
  return out


def tokenize_examples(
    examples: Sequence[PreferenceExample],
    tokenizer: PreTrainedTokenizerBase,
    limits: SequenceLimits,
) -> TokenizedData:
  """Tokenizes every example (none is dropped; every cut is counted in ``truncation``).

  Prompts longer than their budget keep their LAST tokens (the assistant header stays at the end);
  responses longer than ``max_response_len`` keep their FIRST tokens (a cut response loses its
  end-of-sequence). Padding uses the tokenizer's pad id, or its eos id when it has none.
  The languages are those of the first example's prompts, in order; every example must have the same.
  """
  if not examples:
    raise ValueError("tokenize_examples: no examples")
  pad_id, eos_id = _token_ids(tokenizer)
  languages = tuple(examples[0].prompts)
  for ex in examples:
    if tuple(ex.prompts) != languages:
      raise ValueError(
          f"example {ex.index} has prompt languages {list(ex.prompts)}, example {examples[0].index} has "
          f"{list(languages)}; all examples need the same languages in the same order"
      )
  n, num_langs = len(examples), len(languages)
  truncation = {"prompt": 0, "chosen": 0, "rejected": 0, "mlc_prompt": 0}

  pairs = _tokenize_pairs(examples, tokenizer, limits, truncation, pad_id=pad_id, eos_id=eos_id)

  variants = []
  for ids in _render_prompts(tokenizer, [ex.prompts[lang] for ex in examples for lang in languages]):
    truncation["mlc_prompt"] += len(ids) > limits.mlc_prompt_len
    variants.append(ids[-limits.mlc_prompt_len :])
  prompt_ids, prompt_mask = _right_pad(variants, limits.mlc_prompt_len, pad_id)

  return TokenizedData(
      **pairs,
      prompt_ids=prompt_ids.reshape(n, num_langs, limits.mlc_prompt_len),
      prompt_mask=prompt_mask.reshape(n, num_langs, limits.mlc_prompt_len),
      pair_language=np.asarray([languages.index(ex.pair_language) for ex in examples], np.int32),
      index=np.asarray([ex.index for ex in examples], np.int32),
      languages=languages,
      truncation=truncation,
  )


def tokenize_mpo(examples: Sequence[MpoExample], tokenizer: PreTrainedTokenizerBase,
                 limits: SequenceLimits) -> MpoTokenizedData:
  """Tokenizes both pairs of every MPO example (as `tokenize_examples` does its pair; none is dropped)."""
  if not examples:
    raise ValueError("tokenize_mpo: no examples")
  pad_id, eos_id = _token_ids(tokenizer)
  truncation = {f"{side}{field}": 0 for side in ("", "dominant_") for field in ("prompt", "chosen", "rejected")}
  target = _tokenize_pairs([ex.target for ex in examples], tokenizer, limits, truncation, pad_id=pad_id,
                           eos_id=eos_id)
  dominant = _tokenize_pairs([ex.dominant for ex in examples], tokenizer, limits, truncation, pad_id=pad_id,
                             eos_id=eos_id, prefix="dominant_")
  languages = tuple(dict.fromkeys(ex.target.pair_language for ex in examples))
  dominant_languages = tuple(dict.fromkeys(ex.dominant.pair_language for ex in examples))
  return MpoTokenizedData(
      **target, **dominant,
      pair_language=np.asarray([languages.index(ex.target.pair_language) for ex in examples], np.int32),
      dominant_language=np.asarray([dominant_languages.index(ex.dominant.pair_language) for ex in examples],
                                   np.int32),
      index=np.asarray([ex.index for ex in examples], np.int32),
      languages=languages, dominant_languages=dominant_languages, truncation=truncation)


def total_tokens(batch: dict[str, np.ndarray]) -> int:
  """Real (non-pad) tokens in a batch: every sequence's attention mask (pairs, dominant pairs, variants); packed
  pairs count as their unpacked sequences would (`packing.real_tokens`)."""
  packed = packing.real_tokens(batch) if "rows_segments" in batch else 0
  if "shared_variant" in batch:  # the variants read from the pairs' prompts: as long as those
    packed += (packing.prompt_tokens(batch) if "rows_segments" in batch
               else int(prompt_lengths(batch["chosen_loss_mask"]).sum()))
  return packed + int(sum(v.sum() for k, v in batch.items() if k.endswith("_mask") and not k.endswith("_loss_mask")))

"""Packed rows of preference pairs: each pair's prompt once, its responses after it, several pairs in one row.

A *tree* is one prompt and the responses that continue it: a preference pair's `chosen` and `rejected` (branches 1
and 2; the prompt is branch 0), under a prefix (`""`; MPO's second pair is the tree `"dominant_"`). The side
`{prefix}{branch}` is that branch of that tree, its sequence the prompt followed by the branch.

Per example (`tree_arrays`, what the reference precompute reads; one tree per row, the dataset's widest tree wide):
  {prefix}tree_ids, _positions, _segments, _branches `[N, W]` int32: the prompt, then every branch; RoPE positions
    (each branch continues the prompt's); 1 on real tokens (0 = padding); the branch of each token.
  {prefix}tree_scores_index, _targets, _slot `[N, M]`: for every scored response token (loss mask set), the tree
    position whose hidden state predicts it (the last prompt token for a branch's first token), the token, and
    `branch - 1` (-1 = padding).
  {prefix}tree_prompt_last `[N]`: the position of the last prompt token.

Per batch (`pack`, what the train step reads with `data.pack_pairs = g`), r = B / g rows of S positions, E trees
per example, the examples reordered so that example b is pair j = b % g of row b // g:
  rows_ids, rows_positions, rows_segments, rows_branches `[r, S]`: the trees of the row's g pairs one after the
    other, segment `1 + j·E + e` for pair j's tree e (0 = padding), branches and positions as above.
  {prefix}prompt_last `[r, g]`: the row position of the last prompt token of each pair's tree `prefix`.
  {prefix}scores_index, _targets, _slot `[r, M]`: as above, row positions, slot `j·2 + branch - 1`.
S and M are rounded up to `RowLayout.multiple` (each length compiles once); only the branches of `RowLayout.sides`
are laid out and only those of `RowLayout.scored` scored. The decoder masks a row so that every real token sees
exactly the tokens of its own unpacked sequence (`Decoder.hidden_states(segment_ids=…, branch_ids=…)`).
"""
from __future__ import annotations

import dataclasses

import numpy as np

BRANCHES = ("chosen", "rejected")  # branch ids 1, 2; 0 is the shared prompt
TREE_FIELDS = ("ids", "positions", "segments", "branches", "scores_index", "scores_targets", "scores_slot",
               "prompt_last")


def side_tree(side: str) -> tuple[str, int]:
  """(tree prefix, branch id) of a pair side, e.g. `dominant_rejected` → ('dominant_', 2)."""
  for branch, name in enumerate(BRANCHES, 1):
    if side.endswith(name):
      return side[:-len(name)], branch
  raise ValueError(f"side {side!r} is not a preference-pair side (…{' or …'.join(BRANCHES)})")


def tree_prefixes(sides) -> tuple[str, ...]:
  """The trees of `sides`, in order of first appearance."""
  return tuple(dict.fromkeys(side_tree(side)[0] for side in sides))


@dataclasses.dataclass(frozen=True)
class RowLayout:
  """How a batch of pairs is packed (see the module docstring).

  sides: the sequences laid out; scored: those whose response tokens are scored (a subset);
  pairs_per_row: g; multiple: row and score lengths are rounded up to a multiple of it.
  """

  sides: tuple[str, ...]
  scored: tuple[str, ...]
  pairs_per_row: int = 1
  multiple: int = 64

  def __post_init__(self):
    if not set(self.scored) <= set(self.sides):
      raise ValueError(f"RowLayout: scored sides {self.scored} are not all laid out ({self.sides})")
    if self.pairs_per_row < 1 or self.multiple < 1:
      raise ValueError(f"RowLayout: pairs_per_row={self.pairs_per_row} and multiple={self.multiple} must be >= 1")

  @property
  def prefixes(self) -> tuple[str, ...]:
    return tree_prefixes(self.sides)

  def max_shapes(self, pairs: int, prompt_len: int, response_len: int) -> dict[str, tuple[int, ...]]:
    """The largest packed arrays of `pairs` examples whose prompts and responses are at most these lengths."""
    rows, g = pairs // self.pairs_per_row, self.pairs_per_row
    branches = lambda sides, p: sum(side_tree(s)[0] == p for s in sides)
    width = _round_up(g * sum(prompt_len + branches(self.sides, p) * response_len for p in self.prefixes),
                      self.multiple)
    shapes = {f"rows_{k}": (rows, width) for k in ("ids", "positions", "segments", "branches")}
    shapes.update({f"{p}prompt_last": (rows, g) for p in self.prefixes})
    for p in tree_prefixes(self.scored):
      count = _round_up(g * branches(self.scored, p) * response_len, self.multiple)
      shapes.update({f"{p}scores_{k}": (rows, count) for k in ("index", "targets", "slot")})
    return shapes


def max_tree_shapes(prefix: str, pairs: int, prompt_len: int, response_len: int) -> dict[str, tuple[int, ...]]:
  """The largest per-example trees `{prefix}tree_*` of `pairs` examples (the reference precompute's batch)."""
  width, count = prompt_len + len(BRANCHES) * response_len, len(BRANCHES) * response_len
  return {f"{prefix}tree_{k}": (pairs,) if k == "prompt_last" else (pairs, count if k.startswith("scores") else width)
          for k in TREE_FIELDS}


def _round_up(n: int, multiple: int) -> int:
  return max(multiple, -(-n // multiple) * multiple)


def tree_arrays(arrays: dict[str, np.ndarray], prefix: str = "") -> dict[str, np.ndarray]:
  """The per-example trees (module docstring) of right-padded pairs `{prefix}{chosen,rejected}_{ids,mask,loss_mask}`
  `[N, T]`. The prompt is each sequence's leading tokens outside the loss mask; both must have the same one."""
  get = lambda branch, key: np.asarray(arrays[f"{prefix}{branch}_{key}"])
  n = get(BRANCHES[0], "ids").shape[0]
  rows, scores = [], []
  for i in range(n):
    lengths = [int(get(b, "mask")[i].sum()) for b in BRANCHES]
    starts = [int(np.argmax(get(b, "loss_mask")[i][:length])) if get(b, "loss_mask")[i][:length].any() else length
              for b, length in zip(BRANCHES, lengths)]
    p = starts[0]
    if p == 0:
      raise ValueError(f"example {i}: its {prefix}{BRANCHES[0]} sequence has no prompt before the response")
    prompt = get(BRANCHES[0], "ids")[i, :p]
    if starts[1] != p or not np.array_equal(get(BRANCHES[1], "ids")[i, :p], prompt):
      raise ValueError(f"example {i}: its {prefix}{BRANCHES[0]} and {prefix}{BRANCHES[1]} sequences start with "
                       f"different prompts ({p} and {starts[1]} tokens before the response)")
    ids, positions, branches = [prompt], [np.arange(p)], [np.zeros(p, np.int64)]
    index, targets, slots = [], [], []
    offset = p
    for branch, (name, length) in enumerate(zip(BRANCHES, lengths), 1):
      seq_ids, loss = get(name, "ids")[i, :length], get(name, "loss_mask")[i, :length].astype(bool)
      ids.append(seq_ids[p:])
      positions.append(np.arange(p, length))
      branches.append(np.full(length - p, branch))
      # Sequence position t >= 1 is predicted by t - 1: the prompt's last token for t = p, else the branch's own.
      scored = np.flatnonzero(loss[1:]) + 1
      index.append(np.where(scored - 1 < p, scored - 1, offset + scored - 1 - p))
      targets.append(seq_ids[scored])
      slots.append(np.full(len(scored), branch - 1))
      offset += length - p
    rows.append(tuple(map(np.concatenate, (ids, positions, branches))) + (p - 1,))
    scores.append(tuple(map(np.concatenate, (index, targets, slots))))
  width = max(len(r[0]) for r in rows)
  count = max(max(len(s[0]) for s in scores), 1)
  out = {f"{prefix}tree_{k}": np.zeros((n, width), np.int32) for k in TREE_FIELDS[:4]}
  out.update({f"{prefix}tree_{k}": np.zeros((n, count), np.int32) for k in TREE_FIELDS[4:7]})
  out[f"{prefix}tree_scores_slot"][:] = -1
  out[f"{prefix}tree_prompt_last"] = np.asarray([r[3] for r in rows], np.int32)
  for i, ((ids, positions, branches, _), score) in enumerate(zip(rows, scores)):
    for key, value in zip(TREE_FIELDS[:4], (ids, positions, np.ones_like(ids), branches)):
      out[f"{prefix}tree_{key}"][i, :len(value)] = value
    for key, value in zip(TREE_FIELDS[4:7], score):
      out[f"{prefix}tree_{key}"][i, :len(value)] = value
  return out


def _balanced_rows(lengths: np.ndarray, pairs_per_row: int) -> list[list[int]]:
  """Examples → rows of `pairs_per_row` each, longest first into the currently shortest row (LPT), stable."""
  rows = [[] for _ in range(len(lengths) // pairs_per_row)]
  totals = np.zeros(len(rows), np.int64)
  for i in np.argsort(-lengths, kind="stable"):
    open_rows = [r for r in range(len(rows)) if len(rows[r]) < pairs_per_row]
    r = min(open_rows, key=lambda r: (totals[r], r))
    rows[r].append(int(i))
    totals[r] += lengths[i]
  return rows


def pack(batch: dict[str, np.ndarray], layout: RowLayout, *, groups: int = 1) -> dict[str, np.ndarray]:
  """A batch of per-example arrays `[B, …]` (with the `{prefix}tree_*` arrays of the layout's trees) → the packed
  rows plus every other per-example array, reordered (module docstring).

  With `groups` G, each of the G consecutive parts of the batch (one per process) is packed into rows of its own,
  all to the same lengths; B / G must be a multiple of g.
  """
  g, prefixes = layout.pairs_per_row, layout.prefixes
  b = len(batch[f"{prefixes[0]}tree_ids"])
  if b % groups or (b // groups) % g:
    raise ValueError(f"data.pack_pairs={g} does not divide the {b // groups} examples of each process's batch")
  laid = {p: {0} | {side_tree(s)[1] for s in layout.sides if side_tree(s)[0] == p} for p in prefixes}
  scored = {p: {side_tree(s)[1] for s in layout.scored if side_tree(s)[0] == p} for p in prefixes}
  keep = {p: np.isin(batch[f"{p}tree_branches"], list(laid[p])) & (batch[f"{p}tree_segments"] > 0)
          for p in prefixes}
  lengths = sum(keep[p].sum(-1) for p in prefixes)
  part = b // groups
  rows = [[start + i for i in row] for start in range(0, b, part)
          for row in _balanced_rows(lengths[start:start + part], g)]
  order = np.asarray([i for row in rows for i in row])
  width = _round_up(int(max(lengths[row].sum() for row in rows)), layout.multiple)
  out = {k: v[order] for k, v in batch.items() if "tree_" not in k}
  tokens = {k: np.zeros((len(rows), width), np.int32) for k in ("ids", "positions", "segments", "branches")}
  prompt_last = {p: np.zeros((len(rows), g), np.int32) for p in prefixes}
  row_scores = {p: [] for p in prefixes}
  for r, row in enumerate(rows):
    offset = 0
    per_prefix = {p: ([], [], []) for p in prefixes}
    for j, i in enumerate(row):
      for e, p in enumerate(prefixes):
        kept = keep[p][i]
        new_index = offset + np.cumsum(kept) - 1  # tree position → row position
        count = int(kept.sum())
        for key in ("ids", "positions", "branches"):
          tokens[key][r, offset:offset + count] = batch[f"{p}tree_{key}"][i][kept]
        tokens["segments"][r, offset:offset + count] = 1 + j * len(prefixes) + e
        prompt_last[p][r, j] = new_index[batch[f"{p}tree_prompt_last"][i]]
        slot = batch[f"{p}tree_scores_slot"][i]
        use = np.isin(slot + 1, list(scored[p])) & (slot >= 0)
        per_prefix[p][0].append(new_index[batch[f"{p}tree_scores_index"][i][use]])
        per_prefix[p][1].append(batch[f"{p}tree_scores_targets"][i][use])
        per_prefix[p][2].append(j * len(BRANCHES) + slot[use])
        offset += count
    for p in prefixes:
      row_scores[p].append(tuple(map(np.concatenate, per_prefix[p])))
  out.update({f"rows_{k}": v for k, v in tokens.items()})
  out.update({f"{p}prompt_last": v for p, v in prompt_last.items()})
  for p in prefixes:
    if not scored[p]:
      continue
    count = _round_up(max(len(s[0]) for s in row_scores[p]), layout.multiple)
    fields = {k: np.zeros((len(rows), count), np.int32) for k in ("index", "targets", "slot")}
    fields["slot"][:] = -1
    for r, values in enumerate(row_scores[p]):
      for key, value in zip(("index", "targets", "slot"), values):
        fields[key][r, :len(value)] = value
    out.update({f"{p}scores_{k}": v for k, v in fields.items()})
  return out


def as_rows(batch: dict[str, np.ndarray], prefix: str) -> dict:
  """Per-example trees `{prefix}tree_*` `[B, …]` (one tree per row) as the packed layout with g = 1, E = 1."""
  get = lambda key: batch[f"{prefix}tree_{key}"]
  out = {f"rows_{k}": get(k) for k in ("ids", "positions", "segments", "branches")}
  out[f"{prefix}prompt_last"] = get("prompt_last")[:, None]
  out.update({f"{prefix}scores_{k}": get(f"scores_{k}") for k in ("index", "targets", "slot")})
  return out


def real_tokens(batch: dict[str, np.ndarray]) -> int:
  """Real tokens of a packed batch's sequences as if unpacked: each branch counts its prompt again."""
  segments, branches = batch["rows_segments"], batch["rows_branches"]
  total = 0
  for seg_row, branch_row in zip(segments, branches):
    groups = np.bincount(seg_row * (len(BRANCHES) + 1) + branch_row,
                         minlength=(seg_row.max() + 1) * (len(BRANCHES) + 1)).reshape(-1, len(BRANCHES) + 1)[1:]
    present = groups[:, 1:] > 0
    total += int((groups[:, 1:] + present * groups[:, :1]).sum())
  return total


def prompt_tokens(batch: dict[str, np.ndarray]) -> int:
  """Prompt tokens of every pair's tree `""` in a packed batch."""
  segments = batch["rows_segments"]
  tree = np.take_along_axis(segments, batch["prompt_last"], axis=1)  # [r, g] segment ids
  in_tree = (segments[:, :, None] == tree[:, None, :]).any(-1)
  return int((in_tree & (batch["rows_branches"] == 0)).sum())


def visible_keys(batch: dict[str, np.ndarray]) -> int:
  """Σ over the real tokens of packed rows of the keys each attends to (its own sequence's up to itself): the
  attention's share of the model FLOPs, without what a dense kernel computes and masks."""
  total = 0
  for segments, branches, positions in zip(batch["rows_segments"], batch["rows_branches"], batch["rows_positions"]):
    real = segments > 0
    segments, branches, positions = segments[real], branches[real], positions[real]
    same = segments[:, None] == segments[None, :]
    visible = same & ((branches[None, :] == 0) | (branches[None, :] == branches[:, None]))
    total += int((visible & (positions[None, :] <= positions[:, None])).sum())
  return total

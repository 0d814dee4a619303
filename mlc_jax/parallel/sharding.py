"""Logical axis names → `NamedSharding`s through a rule table (MaxText/T5X style).

Parameters carry logical names in their `axes` metadata (see `mlc_jax.models.decoder`). A rule table is a
sequence of `(logical_name, mesh_axis_or_axes_or_None)`; a mesh axis is used at most once per array, and
an axis is left unsharded when its size is not divisible by the mesh axes it would be split over.
"""
from __future__ import annotations

from typing import Iterable, Sequence

from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("layers", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("extractor", "tensor"),
)


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules: Iterable[tuple[str, object]] = DEFAULT_RULES) -> PartitionSpec:
  """The PartitionSpec for an array of `shape` whose dimensions have logical names `axes`."""
  table = dict(rules)
  used: set[str] = set()
  spec = []
  for name, size in zip(axes, shape):
    target = table.get(name) if name is not None else None
    mesh_axes = (target,) if isinstance(target, str) else tuple(target or ())
    mesh_axes = tuple(a for a in mesh_axes if a not in used and mesh.shape.get(a, 1) > 1)
    split = 1
    for a in mesh_axes:
      split *= mesh.shape[a]
    if not mesh_axes or size % split:
      spec.append(None)
      continue
    used.update(mesh_axes)
    spec.append(mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
  return PartitionSpec(*spec)


def named_sharding(axes, shape, mesh: Mesh, rules=DEFAULT_RULES) -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(axes, shape, mesh, rules))


def variable_shardings(state, mesh: Mesh, rules=DEFAULT_RULES) -> dict:
  """A `NamedSharding` per variable of an `nnx.State` (arrays or abstract), from its logical `axes` metadata
  (replicated when it has none), as the nested pure dict `nnx.to_pure_dict(state)` gives."""
  from flax import nnx
  from flax import traverse_util

  flat = {}
  for path, var in nnx.to_flat_state(state):
    axes = var.get_metadata().get("axes")
    shape = var.get_value().shape
    flat[path] = NamedSharding(mesh, PartitionSpec()) if axes is None else named_sharding(axes, shape, mesh, rules)
  return traverse_util.unflatten_dict(flat)


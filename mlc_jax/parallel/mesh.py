"""Device mesh with axes ('data', 'fsdp', 'tensor') whose shape comes from the config.

Over several TPU slices (multi-slice, DCN between them) the data axis spans the slices: a mesh of shape
`(S·d, f, t)` over S slices is S slices of `(d, f, t)` each, so FSDP and tensor traffic stays within a slice.
"""
from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

from mlc_jax.parallel.sharding import MESH_AXES


def resolve_mesh_shape(shape: Sequence[int], num_devices: int, *, key: str = "mesh_shape") -> tuple[int, ...]:
  """Fills one `-1` entry with the remaining devices; errors name `key` when the product does not match."""
  shape = tuple(int(x) for x in shape)
  if len(shape) != len(MESH_AXES):
    raise ValueError(f"{key}={shape} must have {len(MESH_AXES)} entries for axes {MESH_AXES}")
  if shape.count(-1) > 1 or any(x == 0 or x < -1 for x in shape):
    raise ValueError(f"{key}={shape}: entries must be positive, with at most one -1")
  known = int(np.prod([x for x in shape if x != -1]))
  if -1 in shape:
    if num_devices % known:
      raise ValueError(f"{key}={shape}: {num_devices} devices are not divisible by {known}")
    shape = tuple(num_devices // known if x == -1 else x for x in shape)
  if int(np.prod(shape)) != num_devices:
    raise ValueError(f"{key}={shape} needs {int(np.prod(shape))} devices but {num_devices} are available")
  return shape


def num_slices(devices) -> int:
  """How many TPU slices `devices` span (1 off TPU)."""
  return len({getattr(d, "slice_index", 0) for d in devices})


def make_mesh(shape: Sequence[int] = (1, -1, 1), devices=None) -> Mesh:
  """A mesh over `devices` (default: all) with GSPMD-propagated ('auto') axes data, fsdp, tensor.

  When the devices span several slices, the data axis (a multiple of their count) is split over them.
  """
  devices = jax.devices() if devices is None else devices
  shape = resolve_mesh_shape(shape, len(devices))
  axis_types = (AxisType.Auto,) * len(MESH_AXES)
  slices = num_slices(devices)
  if slices == 1:
    return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)
  if shape[0] % slices:
    raise ValueError(f"mesh shape {shape}: the data axis {shape[0]} must be a multiple of the {slices} slices")
  per_slice = (shape[0] // slices, *shape[1:])
  grid = mesh_utils.create_hybrid_device_mesh(per_slice, (slices, 1, 1), devices)
  return Mesh(grid, MESH_AXES, axis_types=axis_types)

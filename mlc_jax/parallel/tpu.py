"""TPU generations (HBM, peak FLOP/s, how libtpu and gcloud name them) and topology strings like `v5p:2x2x1`.

Plain data, no jax import: the AOT compiler (`mlc_jax.compile`) and the pod launcher (`launch/tpu.py`) read it.
"""
from __future__ import annotations

import dataclasses
import math
import re

GIB = 2**30


class TopologyError(ValueError):
  """A topology string or slice count that names no TPU slice; the message names the culprit."""


@dataclasses.dataclass(frozen=True)
class TpuGeneration:
  """One TPU generation.

  Attributes:
    name: the short name in topology strings (`v5p:2x2x1`) and libtpu's topology names.
    hbm_bytes: high-bandwidth memory of one chip.
    peak_bf16_flops: dense bf16 FLOP/s of one chip.
    device_kind: `jax.Device.device_kind` of one chip.
    chip_config: libtpu's chip config (`megacore`: the chip's two TensorCores are one jax device).
    cores_per_chip: TensorCores per chip; gcloud's accelerator type counts cores for v4/v5p (`v5p-8` = 4 chips).
    accelerator_prefix: gcloud's accelerator-type prefix (`v5p-8`, `v5litepod-16`).
    runtime_version: the TPU VM software version gcloud creates the VMs with.
    chips_per_host: chips per TPU VM worker in a multi-host slice.
  """

  name: str
  hbm_bytes: int
  peak_bf16_flops: float
  device_kind: str
  chip_config: str
  cores_per_chip: int
  accelerator_prefix: str
  runtime_version: str
  chips_per_host: int

  def accelerator_type(self, chips: int) -> str:
    """gcloud's `--accelerator-type` of a slice of `chips` chips (e.g. 4 v5p chips → `v5p-8`)."""
    return f"{self.accelerator_prefix}-{chips * self.cores_per_chip}"


GENERATIONS = {g.name: g for g in (
    TpuGeneration("v4", 32 * GIB, 275e12, "TPU v4", "megacore", 2, "v4", "tpu-ubuntu2204-base", 4),
    TpuGeneration("v5e", 16 * GIB, 197e12, "TPU v5 lite", "default", 1, "v5litepod", "v2-alpha-tpuv5-lite", 4),
    TpuGeneration("v5p", 95 * GIB, 459e12, "TPU v5", "megacore", 2, "v5p", "v2-alpha-tpuv5", 4),
    TpuGeneration("v6e", 32 * GIB, 918e12, "TPU v6 lite", "default", 1, "v6e", "v2-alpha-tpuv6e", 4),
)}


@dataclasses.dataclass(frozen=True)
class Topology:
  """A slice: its generation and chip grid (`v5p:2x2x1` = 4 v5p chips)."""

  generation: TpuGeneration
  dims: tuple[int, ...]

  @property
  def chips(self) -> int:
    return math.prod(self.dims)

  @property
  def name(self) -> str:
    return f"{self.generation.name}:{'x'.join(map(str, self.dims))}"

  @property
  def accelerator_type(self) -> str:
    return self.generation.accelerator_type(self.chips)


def parse_topology(text: str) -> Topology:
  """`GEN:AxB[xC]` (e.g. `v5p:2x2x1`, `v5e:4x4`) → `Topology`; a `TopologyError` naming the culprit otherwise."""
  match = re.fullmatch(r"([a-z0-9]+):(\d+(?:x\d+){1,2})", text.strip())
  if not match:
    raise TopologyError(f"--topology={text!r} is not GEN:AxB or GEN:AxBxC (e.g. v5p:2x2x1, v5e:4x4)")
  name, dims = match.group(1), tuple(int(d) for d in match.group(2).split("x"))
  if name not in GENERATIONS:
    raise TopologyError(f"--topology={text!r}: unknown TPU generation {name!r}; known: {', '.join(GENERATIONS)}")
  if min(dims) < 1:
    raise TopologyError(f"--topology={text!r}: every dimension must be at least 1")
  return Topology(GENERATIONS[name], dims)

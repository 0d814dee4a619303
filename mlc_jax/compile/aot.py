"""Compile a run's train step and reference precompute for a TPU topology with libtpu, on a CPU machine.

`compile_run(config, topology)` → `Report`: per program (the train step, the precompute before training, MSD's
on-policy sampler), the per-chip bytes of `compiled.memory_analysis()`
(arguments, outputs, aliased (donated) bytes, temporaries, code) and the compile time; for the run, the analytic
model FLOPs of one step (`mlc_jax.models.flops`) and the step time they take at the chips' peak bf16 FLOP/s.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import time

import jax
import jax.numpy as jnp

from mlc_jax import platforms
from mlc_jax.compile import batch as batch_lib
from mlc_jax.config import ConfigError, validate
from mlc_jax.parallel.mesh import make_mesh, num_slices
from mlc_jax.parallel.tpu import Topology, TopologyError
from mlc_jax.train.state import abstract_train_state
from mlc_jax.train.step import make_precompute_fn, make_train_step, step_flops


def topology_devices(topology: Topology, slices: int = 1) -> list:
  """Compile-only jax devices of `slices` slices of `topology` (libtpu; no TPU needed)."""
  if importlib.util.find_spec("libtpu") is None:
    raise TopologyError("libtpu (the TPU compiler) is not installed: pip install -e .[tpu]")
  if slices < 1:
    raise TopologyError(f"--num_slices={slices} must be at least 1")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")  # libtpu otherwise looks for the pod's workers
  if not platforms.tpu_attached():
    # No TPU chip here to guard: libtpu's one-process lock file would only stop compiles running side by side.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies
  try:
    desc = topologies.get_topology_desc(topology.name, "tpu", chip_config_name=topology.generation.chip_config,
                                        num_slices=slices)
  except jax.errors.JaxRuntimeError as e:
    raise TopologyError(f"--topology={topology.name}: libtpu cannot make this slice "
                        f"({str(e).splitlines()[0]})") from e
  return desc.devices


@dataclasses.dataclass(frozen=True)
class ProgramReport:
  """One compiled program's per-chip memory (bytes) and compile time.

  `out_of_memory` holds the TPU compiler's message when it refused the program for exceeding HBM (then the byte
  figures are 0 and `compiled` is None).
  """

  name: str
  argument: int
  output: int
  alias: int
  temp: int
  code: int
  compile_seconds: float
  lowered: object = dataclasses.field(default=None, repr=False, compare=False)  # jax `Lowered` (StableHLO)
  compiled: object = dataclasses.field(default=None, repr=False, compare=False)  # jax `Compiled` (TPU HLO)
  out_of_memory: str | None = None
  resident: int = 0  # bytes held outside the program while it runs (the sampler: the rest of the train state)

  @property
  def total(self) -> int:
    """Bytes resident at the peak: arguments + outputs − the donated arguments they reuse + temporaries + code
    (+ what stays resident outside the program)."""
    return self.argument + self.output - self.alias + self.temp + self.code + self.resident


@dataclasses.dataclass(frozen=True)
class Report:
  topology: Topology
  slices: int
  mesh_shape: tuple[int, ...]
  programs: tuple[ProgramReport, ...]
  step_flops: float  # model FLOPs of one optimizer step, all chips together
  num_params: int

  @property
  def chips(self) -> int:
    return self.topology.chips * self.slices

  @property
  def peak_bytes(self) -> int:
    return max(p.total for p in self.programs)

  @property
  def fits(self) -> bool:
    return not any(p.out_of_memory for p in self.programs) and self.peak_bytes <= self.topology.generation.hbm_bytes

  @property
  def step_seconds_at_peak(self) -> float:
    return self.step_flops / (self.chips * self.topology.generation.peak_bf16_flops)


  def program(self, name: str) -> ProgramReport:
    return next(p for p in self.programs if p.name == name)


def _bytes(*trees) -> int:
  """Per-chip bytes of abstract arrays (`jax.ShapeDtypeStruct`s; one without a sharding counts whole)."""
  total = 0
  for x in jax.tree.leaves(trees):
    shard = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) is not None else x.shape
    total += math.prod(shard) * x.dtype.itemsize
  return total


def _compile(name: str, fn, *args, resident: int = 0) -> ProgramReport:
  start = time.perf_counter()
  lowered = fn.lower(*args)
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:  # the TPU compiler refuses temporaries beyond HBM
    if not str(e).startswith("RESOURCE_EXHAUSTED"):
      raise
    message = str(e).splitlines()[0].removeprefix("RESOURCE_EXHAUSTED: ")
    return ProgramReport(name, 0, 0, 0, 0, 0, time.perf_counter() - start, lowered, None, message, resident)
  seconds = time.perf_counter() - start
  m = compiled.memory_analysis()
  return ProgramReport(name, m.argument_size_in_bytes, m.output_size_in_bytes, m.alias_size_in_bytes,
                       m.temp_size_in_bytes, m.generated_code_size_in_bytes, seconds, lowered, compiled,
                       resident=resident)


def run_step_flops(run, model_cfg, spec) -> float:
  """`step.step_flops` of one optimizer step of `run` (the global batch, MLC on one step in `mlc.aux_every`)."""
  shapes = {k: (v.shape[0] * run.train.grad_accum, *v.shape[1:]) for k, v in batch_lib.micro_batch(run, spec).items()}
  return step_flops(run, model_cfg, shapes, mlc_share=1.0 / run.mlc.aux_every)


def compile_run(config, topology: Topology, slices: int = 1) -> Report:
  """Compiles the train step of `config` for `slices` slices of `topology` (the data axis of the mesh spans the
  slices), and what runs beside it: the precompute before training (reference values; MSD's off-policy responses)
  and the on-policy sampler (MSD: `objective.sampling_every()` steps' prompts per call, the KV cache a temporary).

  Raises `ConfigError` for a config that does not validate on that many chips.
  """
  devices = topology_devices(topology, slices)
  run, cfg, mesh_shape = validate(config, len(devices), num_slices(devices))
  objective = run.objective
  mesh = make_mesh(mesh_shape, devices=devices)
  spec = abstract_train_state(run, cfg, mesh)
  mlc = run.mlc if run.mlc.enabled else None
  step = make_train_step(spec, objective, mlc, mesh=mesh, num_languages=batch_lib.num_languages(run))
  batch = batch_lib.accumulated(batch_lib.micro_batch(run, spec), run.train.grad_accum)
  params = spec.abstract.params["model"]
  sample = objective.sampling_step(spec, run, mesh, None)
  if sample is not None:
    first_step = jax.ShapeDtypeStruct((), jnp.int32)
    block = (batch,) * objective.sampling_every()
    batch = jax.eval_shape(sample, params, (batch,), first_step)[0]
  programs = [_compile("train_step", step, spec.abstract, batch)]
  if sample is not None:
    # The sampler runs between steps with the whole train state resident: what the train step holds (its donated
    # arguments) beyond the sampler's own arguments is added to its peak.
    programs.append(_compile("sampler", sample, params, block, first_step,
                             resident=max(programs[0].alias - _bytes(params, block), 0)))
  pre = objective.precomputed(run, None)
  if pre is not None:
    programs.append(_compile("reference", make_precompute_fn(spec, pre.fn, mesh), params,
                             batch_lib.reference_batch(run, run.micro_batch_size)))
  return Report(topology, slices, tuple(mesh_shape), tuple(programs), run_step_flops(run, cfg, spec), cfg.num_params())

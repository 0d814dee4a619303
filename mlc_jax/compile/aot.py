"""Compile a run's train step and reference precompute for a TPU topology with libtpu, on a CPU machine.

`compile_run(config, topology)` → `Report`: per program, the per-chip bytes of `compiled.memory_analysis()`
(arguments, outputs, aliased (donated) bytes, temporaries, code) and the compile time; for the run, the analytic
model FLOPs of one step (`mlc_jax.models.flops`) and the step time they take at the chips' peak bf16 FLOP/s.
"""
from __future__ import annotations

import dataclasses
import glob
import importlib.util
import os
import time

import jax

from mlc_jax.compile import batch as batch_lib
from mlc_jax.config import ConfigError, validate
from mlc_jax.data.datasets import PROMPT_ONLY
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
  if not glob.glob("/dev/accel*") and not glob.glob("/dev/vfio/[0-9]*"):
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

  @property
  def total(self) -> int:
    """Bytes resident at the peak: arguments + outputs − the donated arguments they reuse + temporaries + code."""
    return self.argument + self.output - self.alias + self.temp + self.code


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


def _compile(name: str, fn, *args) -> ProgramReport:
  start = time.perf_counter()
  lowered = fn.lower(*args)
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:  # the TPU compiler refuses temporaries beyond HBM
    if not str(e).startswith("RESOURCE_EXHAUSTED"):
      raise
    message = str(e).splitlines()[0].removeprefix("RESOURCE_EXHAUSTED: ")
    return ProgramReport(name, 0, 0, 0, 0, 0, time.perf_counter() - start, lowered, None, message)
  seconds = time.perf_counter() - start
  m = compiled.memory_analysis()
  return ProgramReport(name, m.argument_size_in_bytes, m.output_size_in_bytes, m.alias_size_in_bytes,
                       m.temp_size_in_bytes, m.generated_code_size_in_bytes, seconds, lowered, compiled)


def run_step_flops(run, model_cfg, spec) -> float:
  """`step.step_flops` of one optimizer step of `run` (the global batch, MLC on one step in `mlc.aux_every`)."""
  shapes = {k: (v.shape[0] * run.train.grad_accum, *v.shape[1:]) for k, v in batch_lib.micro_batch(run, spec).items()}
  return step_flops(run, model_cfg, shapes, mlc_share=1.0 / run.mlc.aux_every)


def compile_run(config, topology: Topology, slices: int = 1) -> Report:
  """Compiles the train step (and, with precomputed reference values, the precompute) of `config` for `slices`
  slices of `topology` (the data axis of the mesh spans the slices).

  Raises `ConfigError` for a config that does not validate on that many chips, or whose objective reads prompts
  only (MSD: its batch holds sampled responses, whose shapes this does not build yet).
  """
  devices = topology_devices(topology, slices)
  run, cfg, mesh_shape = validate(config, len(devices), num_slices(devices))
  if run.objective.data_kind is PROMPT_ONLY:
    raise ConfigError(f"objective.name={run.objective.name}: ahead-of-time compilation covers the objectives on "
                      "preference and MPO pairs; prompt-only objectives (MSD, with its sampler) are not compiled yet")
  mesh = make_mesh(mesh_shape, devices=devices)
  spec = abstract_train_state(run, cfg, mesh)
  mlc = run.mlc if run.mlc.enabled else None
  step = make_train_step(spec, run.objective, mlc, mesh=mesh, num_languages=batch_lib.num_languages(run))
  batch = batch_lib.accumulated(batch_lib.micro_batch(run, spec), run.train.grad_accum)
  programs = [_compile("train_step", step, spec.abstract, batch)]
  pre = run.objective.precomputed(run, None)
  if pre is not None:
    programs.append(_compile("reference", make_precompute_fn(spec, pre.fn, mesh), spec.abstract.params["model"],
                             batch_lib.reference_batch(run, run.micro_batch_size)))
  return Report(topology, slices, tuple(mesh_shape), tuple(programs), run_step_flops(run, cfg, spec), cfg.num_params())

"""`python -m mlc_jax.compile --config CONFIG[:ARG] --topology v5p:2x2x1 [--num_slices N] [--config.KEY=VALUE …]`

Compiles the run's train step (its precompute before training, MSD's on-policy sampler) for the TPU topology on this machine (libtpu,
`pip install -e .[tpu]`; no TPU, data, tokenizer or weights needed) and prints per-chip memory, whether it fits the
chip's HBM, compile time, the analytic model FLOPs of a step and its time at peak bf16 FLOP/s.
Exit codes: 0 fits, 1 does not fit (the figures are printed), 2 a bad topology or config (one line).
"""
from __future__ import annotations

import argparse
import sys

from mlc_jax.cli import parse_with_overrides
from mlc_jax.parallel.tpu import GIB, parse_topology


def parse_args(argv):
  parser = argparse.ArgumentParser(prog="python -m mlc_jax.compile", description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True, help="config file, optionally with :ARG")
  parser.add_argument("--topology", required=True, help="TPU generation and chip grid of one slice, e.g. v5p:2x2x1")
  parser.add_argument("--num_slices", type=int, default=1, help="slices over DCN; the mesh's data axis spans them")
  return parse_with_overrides(parser, argv)


def format_report(report) -> str:
  gen = report.topology.generation
  slices = f" × {report.slices} slices" if report.slices > 1 else ""
  params = f"{report.num_params / 1e9:.2f}B" if report.num_params >= 1e8 else f"{report.num_params / 1e6:.2f}M"
  lines = [f"topology {report.topology.name}{slices} ({report.chips} chips, {report.topology.accelerator_type} each"
           f" slice), mesh {report.mesh_shape} (data, fsdp, tensor); model {params} parameters"]
  gib = lambda n: f"{n / GIB:.2f} GiB"
  for p in report.programs:
    if p.out_of_memory:
      lines.append(f"{p.name}: does not fit, the TPU compiler says: {p.out_of_memory}")
      continue
    lines.append(f"{p.name}: per chip {gib(p.total)} = arguments {gib(p.argument)} + outputs {gib(p.output)} "
                 f"- aliased {gib(p.alias)} + temporaries {gib(p.temp)} + code {gib(p.code)}"
                 + (f" + the resident train state {gib(p.resident)}" if p.resident else "") + "; "
                 f"compiled in {p.compile_seconds:.1f} s")
  hbm = f"the {gib(gen.hbm_bytes)} HBM of a {gen.name} chip"
  if report.fits:
    lines.append(f"fits: {gib(report.peak_bytes)} of {hbm}")
  else:
    refused = [p.name for p in report.programs if p.out_of_memory]
    lines.append(f"does NOT fit {hbm}: " + (f"{', '.join(refused)} refused by the compiler" if refused
                                              else f"{gib(report.peak_bytes)} needed"))
  lines.append(f"step: {report.step_flops / 1e12:.4g} TFLOP (model FLOPs, analytic), "
               f"{report.step_seconds_at_peak:.3g} s at the peak {gen.peak_bf16_flops / 1e12:.0f} TFLOP/s "
               f"bf16 of {report.chips} chips")
  return "\n".join(lines)


def main(argv=None) -> int:
  args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
  from mlc_jax import cli  # after parsing: importing jax is slow
  from mlc_jax.compile import aot
  from mlc_jax.config import apply_overrides, load_config_file

  def body():
    topology = parse_topology(args.topology)
    config = apply_overrides(load_config_file(args.config), overrides)
    report = aot.compile_run(config, topology, args.num_slices)
    print(format_report(report))
    return 0 if report.fits else 1

  return cli.run(body)  # a bad topology (TopologyError) or config (ConfigError) is bad input: exit 2


if __name__ == "__main__":
  sys.exit(main())

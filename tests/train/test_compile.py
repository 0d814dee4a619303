"""Ahead-of-time compilation for a TPU v5p 4-chip slice with libtpu on this CPU: sharding, memory, mixed precision."""
import math
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from paths import ROOT

pytest.importorskip("libtpu", reason="libtpu (the TPU compiler; setup.py's tpu and test extras) is not installed")

from mlc_jax.compile import aot  # noqa: E402
from mlc_jax.config import ConfigError, apply_overrides, load_config_file, validate  # noqa: E402
from mlc_jax.parallel.mesh import make_mesh, num_slices  # noqa: E402
from mlc_jax.parallel.tpu import GIB, parse_topology  # noqa: E402

CONFIG = f"{ROOT}/configs/mlc.py:model=tiny,langs=mlc10"
# bf16 compute over fp32 master weights and AdamW moments, as the paper configs run on TPU.
OVERRIDES = ["model.dtype=bfloat16", "model.param_dtype=float32", "model.remat=full"]
# Recorded on v5p:2x2x1 with libtpu 0.0.42 (tiny DPO+MLC, 4 pairs × 256 tokens, 10 × 128-token variants):
# per chip 1.13 MB of arguments (the sharded state, padded to TPU tiles) and 50-90 MB in all. The bounds leave room
# for compiler drift.
MAX_ARGUMENT_BYTES = 1.25e6
MAX_TOTAL_BYTES = 128e6
LARGE = 4096  # elements: every array this big is sharded over the mesh


@pytest.fixture(scope="module")
def report():
  config = apply_overrides(load_config_file(CONFIG), OVERRIDES)
  return aot.compile_run(config, parse_topology("v5p:2x2x1"))


def test_compiles_with_the_reference_precompute_and_fits(report):
  assert [p.name for p in report.programs] == ["train_step", "reference"]
  assert report.mesh_shape == (1, 4, 1) and report.chips == 4 and report.fits
  step = report.program("train_step")
  assert step.alias == pytest.approx(step.argument, rel=0.02)  # the state is donated (the batch is not)


def test_every_large_parameter_and_moment_is_sharded(report):
  step = report.program("train_step")
  state_info, state_shardings = step.lowered.args_info[0][0], step.compiled.input_shardings[0][0]
  replicated = []
  for (path, info), sharding in zip(jax.tree_util.tree_leaves_with_path(state_info), jax.tree.leaves(state_shardings)):
    if math.prod(info.shape) >= LARGE and sharding.is_fully_replicated:
      replicated.append(f"{jax.tree_util.keystr(path)} {info.shape}")
  assert not replicated, f"replicated over the 4 chips: {replicated}"


def test_memory_stays_under_the_recorded_bound(report):
  step = report.program("train_step")
  assert step.argument <= MAX_ARGUMENT_BYTES, f"arguments {step.argument} B per chip"
  assert step.total <= MAX_TOTAL_BYTES, f"{step} totals {step.total / GIB:.3f} GiB per chip"


DOT = re.compile(r"stablehlo\.dot_general .*contracting_dims = \[([\d, ]*)\] x .*: "
                 r"\(tensor<([\dx]*)x(\w+)>, tensor<[\dx]*x(\w+)>\) -> tensor<([\dx]*)x\w+>")


def dot_flops_by_operand_types(hlo: str) -> dict[tuple[str, str], int]:
  """FLOPs (2 · output size · contracted size) of every `dot_general` of a StableHLO module by operand dtypes."""
  out = {}
  for contracting, lhs, lhs_type, rhs_type, result in DOT.findall(hlo):
    lhs_dims = [int(d) for d in lhs.split("x")]
    contracted = math.prod(lhs_dims[int(i)] for i in contracting.replace(" ", "").split(",") if i)
    flops = 2 * math.prod(int(d) for d in result.split("x") if d) * contracted
    out[(lhs_type, rhs_type)] = out.get((lhs_type, rhs_type), 0) + flops
  return out


def test_mixed_precision_bf16_matmuls_over_fp32_state(report):
  step = report.program("train_step")
  state = step.lowered.args_info[0][0]
  for leaf in jax.tree.leaves((state.params, state.opt_state)):
    if len(leaf.shape) >= 1:
      assert leaf.dtype == np.float32, leaf  # master weights and AdamW moments
  by_types = dot_flops_by_operand_types(step.lowered.as_text())
  total = sum(by_types.values())
  bf16 = by_types.get(("bf16", "bf16"), 0)
  assert bf16 >= 0.98 * total, f"dot FLOPs by operand dtypes: {by_types}"  # the rest: extractor, loss sums


def test_cli_prints_the_figures_and_one_line_errors():
  run = lambda *args: subprocess.run([sys.executable, "-m", "mlc_jax.compile", "--config", CONFIG, *args],
                                     capture_output=True, text=True, timeout=300, cwd=ROOT)
  bad = run("--topology", "v5q:2x2")
  assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: --topology='v5q:2x2': "
                                                                                  "unknown TPU generation 'v5q'")
  assert run("--topology", "v5p-8").returncode == 2
  bad_key = run("--topology", "v5p:2x2x1", "--config.model.nope=1")
  assert bad_key.returncode == 2 and "unknown config key 'model.nope'" in bad_key.stderr
  # 256 pairs × 4096 tokens a chip: the float32 attention scores alone outgrow a v5e chip's 16 GiB.
  too_big = run("--topology", "v5e:2x2", "--config.train.batch_size=1024", "--config.data.max_response_len=3968",
                "--config.mlc.enabled=False")
  assert too_big.returncode == 1, too_big.stderr
  assert re.search(r"^does NOT fit the 16\.00 GiB HBM of a v5e chip: train_step.* refused by the compiler$",
                   too_big.stdout, re.M), too_big.stdout
  assert re.search(r"^train_step: does not fit, the TPU compiler says: .*exceeds available HBM", too_big.stdout,
                   re.M), too_big.stdout
  assert re.search(r"^step: [\d.]+ TFLOP .* s at the peak 197 TFLOP/s bf16 of 4 chips$", too_big.stdout, re.M)


@pytest.mark.parametrize("mode,beside", [("on_policy", "sampler"), ("off_policy", "reference")])
def test_msd_compiles_with_its_sampler(mode, beside):
  """On-policy: the sampler (prefill, the decode `while` loop, its KV cache; two steps' prompts a call) is compiled
  beside the step and counted with the rest of the train state resident; off-policy: the teacher's sampling before
  training."""
  config = apply_overrides(load_config_file(f"{ROOT}/configs/msd.py:model=tiny,mode={mode}"),
                           ["model.dtype=bfloat16", "objective.msd.resample_every=2"])
  report = aot.compile_run(config, parse_topology("v5p:2x2x1"))
  assert [p.name for p in report.programs] == ["train_step", beside] and report.fits
  step, sampler = report.program("train_step"), report.program(beside)
  assert "while" in sampler.lowered.as_text()
  if mode == "on_policy":
    # The optimizer moments and the teacher stay on the chips while the student samples.
    assert step.alias > sampler.resident > 2 * sampler.argument / 3
    assert sampler.total == pytest.approx(sampler.argument + sampler.output + sampler.temp + sampler.code +
                                          sampler.resident, abs=1)
    students = sampler.lowered.args_info[0][1]  # (args, kwargs): the block of two batches
    assert len(students) == 2 and students[0]["student_prompt_ids"].shape == (1, 8, 320)


def test_splash_attention_compiles_to_the_mosaic_kernel():
  config = apply_overrides(load_config_file(CONFIG), [*OVERRIDES, "model.attention_impl=splash"])
  with jax.default_matmul_precision("default"):  # conftest's 'highest' asks Mosaic for fp32 passes on bf16
    report = aot.compile_run(config, parse_topology("v5p:2x2x1"))
  hlo = report.program("train_step").compiled.as_text()
  assert "tpu_custom_call" in hlo and report.fits


def test_two_slices_put_the_data_axis_over_the_slices():
  """`mesh.shape` is one slice's; with 2 slices of v5p:2x2x1 the data axis (2) spans them, fsdp stays in a slice."""
  devices = aot.topology_devices(parse_topology("v5p:2x2x1"), 2)
  config = apply_overrides(load_config_file(CONFIG), ["train.batch_size=8"])
  _, _, shape = validate(config, len(devices), num_slices(devices))
  mesh = make_mesh(shape, devices=devices)
  assert shape == (2, 4, 1) and [{d.slice_index for d in row.flat} for row in mesh.devices] == [{0}, {1}]
  with pytest.raises(ConfigError, match="not divisible by the 8 data shards"):
    validate(apply_overrides(load_config_file(CONFIG), ["train.batch_size=4"]), len(devices), num_slices(devices))

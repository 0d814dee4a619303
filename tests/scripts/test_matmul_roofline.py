"""scripts/matmul_roofline.py: every dot of a compiled program found with its shapes and FLOPs, timed, and reported."""
import sys

import jax
import jax.numpy as jnp
import pytest
from paths import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import matmul_roofline  # noqa: E402


def program(x, w, a, b):
  """A plain matmul and a batched one: 2·64·128·96 + 2·4·32·64·48 FLOPs."""
  return jnp.tanh(x @ w), jnp.einsum("bij,bjk->bik", a, b)


def test_finds_every_dot_of_a_compiled_program_with_its_flops():
  shapes = [(64, 128), (128, 96), (4, 32, 64), (4, 64, 48)]
  args = [jnp.ones(s, jnp.float32) for s in shapes]
  hlo = jax.jit(program).lower(*args).compile().as_text()
  dots, has_while = matmul_roofline.hlo_dots(hlo)
  assert not has_while
  assert sorted(d.flops for _, d in dots) == [2 * 4 * 32 * 64 * 48, 2 * 64 * 128 * 96]
  batched = next(d for _, d in dots if d.lhs_batch)
  assert (batched.lhs, batched.rhs, batched.lhs_contracting, batched.rhs_contracting) == (
      (4, 32, 64), (4, 64, 48), (2,), (1,))


def test_operand_shapes_printed_inline_and_dimension_numbers():
  hlo = ("ENTRY %main {\n"
         "  %p0 = bf16[8,16,32]{2,1,0} parameter(0)\n"
         "  ROOT %d = f32[8,16,24]{2,1,0} dot(bf16[8,16,32]{2,1,0} %p0, bf16[8,24,32]{2,1,0} %p1), "
         "lhs_batch_dims={0}, lhs_contracting_dims={2}, rhs_batch_dims={0}, rhs_contracting_dims={2}\n"
         "  %p1 = bf16[8,24,32]{2,1,0} parameter(1)\n}\n")
  (name, dot), = matmul_roofline.hlo_dots(hlo)[0]
  assert name == "d" and dot.lhs_dtype == "bfloat16" and dot.out_dtype == "float32"
  assert dot.flops == 2 * 8 * 16 * 24 * 32
  assert "bfloat16[8, 16, 32]·bfloat16[8, 24, 32] contract [2]/[2] batch[0]" == dot.describe()


def test_an_operand_without_a_shape_is_named():
  hlo = "ENTRY %m {\n  ROOT %d = f32[2,2]{1,0} dot(%a, %b), lhs_contracting_dims={1}, rhs_contracting_dims={0}\n}\n"
  with pytest.raises(ValueError, match="dot d: no shape for operand a"):
    matmul_roofline.hlo_dots(hlo)


def test_roofline_sums_each_instruction_once_and_reports_the_ceiling():
  args = [jnp.ones(s, jnp.float32) for s in [(64, 128), (128, 96), (4, 32, 64), (4, 64, 48)]]
  hlo = jax.jit(program).lower(*args).compile().as_text()
  result = matmul_roofline.roofline(hlo, repeats=2)
  dots, _ = matmul_roofline.hlo_dots(hlo)
  assert result["instructions"] == len(dots) == sum(r["count"] for r in result["rows"])
  assert result["flops"] == sum(d.flops for _, d in dots)
  assert result["seconds"] == pytest.approx(sum(r["seconds"] for r in result["rows"])) and result["seconds"] > 0
  step_s, peak = 4 * result["seconds"], 1e12
  text = matmul_roofline.report(result, step_s=step_s, flops=result["flops"], peak=peak)
  assert "matmuls 25.0 %" in text
  assert f"{100 * result['flops'] / result['seconds'] / peak:.1f} %; measured" in text


def test_while_loops_are_flagged():
  def loop(x, w):
    return jax.lax.fori_loop(0, 3, lambda i, y: jnp.tanh(y @ w), x)
  hlo = jax.jit(loop).lower(jnp.ones((16, 16)), jnp.ones((16, 16))).compile().as_text()
  dots, has_while = matmul_roofline.hlo_dots(hlo)
  assert has_while and len(dots) >= 1
  assert "counted once, not per iteration" in matmul_roofline.report(matmul_roofline.roofline(hlo, repeats=1))


def test_bad_input_gives_one_line(tmp_path):
  import subprocess
  script = str(ROOT / "scripts" / "matmul_roofline.py")
  run = lambda *a: subprocess.run([sys.executable, script, *a], capture_output=True, text=True, timeout=120)
  missing = run(str(tmp_path / "nope.txt"))
  assert missing.returncode == 1 and "cannot read the HLO file" in missing.stderr and "nope.txt" in missing.stderr
  (tmp_path / "notes.txt").write_text("not an HLO dump\n")
  empty = run(str(tmp_path / "notes.txt"))
  assert empty.returncode == 1 and "no dot instruction in" in empty.stderr
  (tmp_path / "bad.txt").write_text("ROOT %d = f32[2,2]{1,0} dot(%a, %b), lhs_contracting_dims={1}\n")
  bad = run(str(tmp_path / "bad.txt"))
  assert bad.returncode == 1 and "no shape for operand a" in bad.stderr and "Traceback" not in bad.stderr

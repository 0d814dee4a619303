"""How fast a compiled step could be if only its matmuls took time: every `dot` of its HLO, timed alone.

  python scripts/matmul_roofline.py compiled.hlo.txt [--step_s 4.1] [--flops 479.6e9] [--peak 206e9] [--repeats 7]

Reads the optimised HLO of a jitted program (`jitted.lower(...).compile().as_text()`; `scripts/bench.py --profile`
and `--roofline` write it), finds every `dot` instruction (fused or not) with its operand shapes and dimension
numbers, runs each distinct one alone as `jax.lax.dot_general` on random operands of those shapes and dtypes (the
best of `--repeats` runs), and adds them up, once per instruction. The sum is the time the step's matmuls need on
this backend at the kernels' own speed; `--step_s` less that sum is what everything else costs (elementwise work,
reductions, copies, the optimizer, idle cores), and `--flops / sum / --peak` the MFU the step would reach with all
of that free: the ceiling that better scheduling alone cannot pass. Timing without a profiler matters on XLA:CPU,
whose traced steps run much slower than untraced ones.

Caveats: each dot is timed with row-major operands (the step's layouts may differ), in a cold jit of its own (no
producer or consumer fused in); instructions inside a `while` body are counted once, not once per iteration (a
warning says so; unroll the loops, e.g. `model.scan_unroll`, for an exact count).
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import math
import re
import sys
import time

DEFINITION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\w+)\[([\d,]*)\]")
OPERAND = r"(?:\w+\[[\d,]*\](?:\{[^}]*\})? )?%?([\w.\-]+)"
# HLO element types → numpy dtype names.
DTYPES = {"f32": "float32", "bf16": "bfloat16", "f16": "float16", "f64": "float64", "s8": "int8", "s32": "int32"}
DOT = re.compile(rf"^\s*(?:ROOT )?%?([\w.\-]+) = (\w+)\[([\d,]*)\]\S* dot\({OPERAND}, {OPERAND}\)(.*)$")


def _dims(text: str, key: str) -> tuple[int, ...]:
  m = re.search(rf"{key}=\{{([\d,]*)\}}", text)
  return tuple(int(d) for d in m.group(1).split(",") if d) if m else ()


def _shape(dims: str) -> tuple[int, ...]:
  return tuple(int(d) for d in dims.split(",") if d)


@dataclasses.dataclass(frozen=True)
class Dot:
  """One matmul's signature: operand shapes and dtypes, the output dtype and the dimension numbers."""
  lhs: tuple[int, ...]
  rhs: tuple[int, ...]
  lhs_dtype: str
  rhs_dtype: str
  out_dtype: str
  lhs_contracting: tuple[int, ...]
  rhs_contracting: tuple[int, ...]
  lhs_batch: tuple[int, ...] = ()
  rhs_batch: tuple[int, ...] = ()

  @property
  def flops(self) -> int:
    """2 × (output elements) × (contracted elements per output)."""
    free = lambda shape, used: math.prod(d for i, d in enumerate(shape) if i not in used)
    batch = math.prod(self.lhs[i] for i in self.lhs_batch)
    contracted = math.prod(self.lhs[i] for i in self.lhs_contracting)
    return 2 * batch * contracted * free(self.lhs, self.lhs_batch + self.lhs_contracting) * free(
        self.rhs, self.rhs_batch + self.rhs_contracting)

  def describe(self) -> str:
    batch = f" batch{list(self.lhs_batch)}" if self.lhs_batch else ""
    return (f"{self.lhs_dtype}{list(self.lhs)}·{self.rhs_dtype}{list(self.rhs)} contract {list(self.lhs_contracting)}"
            f"/{list(self.rhs_contracting)}{batch}")


def hlo_dots(hlo_text: str) -> tuple[list[tuple[str, Dot]], bool]:
  """(instruction name, `Dot`) for every `dot` in `hlo_text`, and whether the module has a `while` loop."""
  shapes, dtypes = {}, {}
  for line in hlo_text.splitlines():
    if m := DEFINITION.match(line):
      shapes[m.group(1)], dtypes[m.group(1)] = _shape(m.group(3)), DTYPES.get(m.group(2), m.group(2))
  dots = []
  for line in hlo_text.splitlines():
    if not (m := DOT.match(line)):
      continue
    name, out_dtype, _, lhs, rhs, attrs = m.groups()
    if lhs not in shapes or rhs not in shapes:
      raise ValueError(f"dot {name}: no shape for operand {lhs if lhs not in shapes else rhs} in the HLO text")
    dots.append((name, Dot(shapes[lhs], shapes[rhs], dtypes[lhs], dtypes[rhs], DTYPES.get(out_dtype, out_dtype),
                           _dims(attrs, "lhs_contracting_dims"), _dims(attrs, "rhs_contracting_dims"),
                           _dims(attrs, "lhs_batch_dims"), _dims(attrs, "rhs_batch_dims"))))
  return dots, bool(re.search(r"\bwhile\(", hlo_text))


def time_dot(dot: Dot, repeats: int = 7) -> float:
  """Seconds of the best of `repeats` runs of `dot` alone (jitted, random operands, after one warm-up run)."""
  import jax
  import jax.numpy as jnp

  keys = jax.random.split(jax.random.PRNGKey(0))
  lhs = jax.random.normal(keys[0], dot.lhs, jnp.float32).astype(dot.lhs_dtype)
  rhs = jax.random.normal(keys[1], dot.rhs, jnp.float32).astype(dot.rhs_dtype)
  numbers = ((dot.lhs_contracting, dot.rhs_contracting), (dot.lhs_batch, dot.rhs_batch))
  fn = jax.jit(lambda a, b: jax.lax.dot_general(a, b, numbers, preferred_element_type=dot.out_dtype))
  jax.block_until_ready(fn(lhs, rhs))
  best = math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(lhs, rhs))
    best = min(best, time.perf_counter() - start)
  return best


def roofline(hlo_text: str, *, repeats: int = 7, names: dict[str, str] | None = None) -> dict:
  """Times every distinct dot of `hlo_text` → {'rows': [...], 'seconds', 'flops', 'instructions', 'has_while'}.

  Each row: the signature, how many instructions have it, their FLOPs and seconds (count × one run), GFLOP/s and
  (with `names`, instruction → source, e.g. `trace_summary.op_names`) the sources that made them."""
  dots, has_while = hlo_dots(hlo_text)
  by_signature = collections.defaultdict(list)
  for name, dot in dots:
    by_signature[dot].append(name)
  rows = []
  for dot, instructions in by_signature.items():
    one = time_dot(dot, repeats)
    sources = sorted({(names or {}).get(n, "") for n in instructions} - {""})
    rows.append(dict(dot=dot.describe(), count=len(instructions), flops=dot.flops * len(instructions),
                     seconds=one * len(instructions), gflops_per_s=dot.flops / one / 1e9, sources=sources))
  rows.sort(key=lambda r: -r["seconds"])
  return dict(rows=rows, seconds=sum(r["seconds"] for r in rows), flops=sum(r["flops"] for r in rows),
              instructions=len(dots), has_while=has_while)


def report(result: dict, *, step_s: float | None = None, flops: float | None = None, peak: float | None = None,
           top: int = 12) -> str:
  """Markdown: the `top` signatures by time, then the totals against the step (when given)."""
  lines = ["| matmul (operands, contracted dims) | instructions | GFLOP | ms | GFLOP/s | made by |",
           "|---|---:|---:|---:|---:|---|"]
  for r in result["rows"][:top]:
    lines.append(f"| {r['dot']} | {r['count']} | {r['flops'] / 1e9:.1f} | {1e3 * r['seconds']:.1f} | "
                 f"{r['gflops_per_s']:.0f} | {'; '.join(r['sources'][:2])} |")
  total = result["seconds"]
  lines += ["", f"{result['instructions']} dot instructions, {len(result['rows'])} distinct: {result['flops'] / 1e9:.1f} "
                f"GFLOP in {total:.3f} s alone ({result['flops'] / total / 1e9:.0f} GFLOP/s)"]
  if step_s:
    lines.append(f"step {step_s:.3f} s: matmuls {100 * total / step_s:.1f} %, everything else {step_s - total:.3f} s "
                 f"({100 * (1 - total / step_s):.1f} %)")
  if flops and peak:
    lines.append(f"MFU ceiling (the step's {flops / 1e9:.1f} GFLOP in the matmuls' time alone, peak "
                 f"{peak / 1e9:.1f} GFLOP/s): {100 * flops / total / peak:.1f} %"
                 + (f"; measured {100 * flops / step_s / peak:.1f} %" if step_s else ""))
  if result["has_while"]:
    lines.append("warning: the program has a while loop; the dots in its body are counted once, not per iteration")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("hlo", help="optimised HLO text (compiled.as_text())")
  parser.add_argument("--step_s", type=float, help="the measured step time, to compare with")
  parser.add_argument("--flops", type=float, help="the step's analytic FLOPs (for the MFU ceiling)")
  parser.add_argument("--peak", type=float, help="the peak FLOP/s MFU is measured against")
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--top", type=int, default=12)
  args = parser.parse_args()
  if args.repeats < 1:
    sys.exit(f"error: --repeats must be at least 1, got {args.repeats}")
  try:
    text = open(args.hlo).read()
    if not hlo_dots(text)[0]:
      sys.exit(f"error: no dot instruction in {args.hlo} (is it an HLO text dump?)")
  except (OSError, UnicodeDecodeError) as e:
    sys.exit(f"error: cannot read the HLO file {args.hlo}: {e}")
  except ValueError as e:
    sys.exit(f"error: {args.hlo}: {e}")
  import trace_summary
  result = roofline(text, repeats=args.repeats, names=trace_summary.op_names(text))
  print(report(result, step_s=args.step_s, flops=args.flops, peak=args.peak, top=args.top))


if __name__ == "__main__":
  main()

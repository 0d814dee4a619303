"""Top ops of a `jax.profiler` trace: self time per XLA instruction on the device's threads, named by its source op.

  python scripts/trace_summary.py TRACE_DIR [--hlo compiled.hlo.txt] [--top 15]

Reads the newest `perfetto_trace.json.gz` under TRACE_DIR (`jax.profiler.trace(dir, create_perfetto_trace=True)`),
keeps the events on XLA's threads (CPU: `tf_XLA…`; GPU/TPU: the device streams), takes each event's self time
(its duration less that of the events nested in it on the same thread), sums it per instruction and prints the
largest with their share. With the compiled program's HLO text, each instruction is also named by the jax
primitive and the source line (file, line, function) its metadata records. `scripts/bench.py --profile DIR` writes both.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys

METADATA = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?metadata=\{[^}]*op_name=\"([^\"]+)\"")


def load_events(trace_dir: str) -> list[dict]:
  paths = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True),
                 key=os.path.getmtime)
  if not paths:
    raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir} (trace with create_perfetto_trace=True)")
  with gzip.open(paths[-1]) as f:
    trace = json.load(f)
  return trace["traceEvents"] if isinstance(trace, dict) else trace


def device_threads(events: list[dict]) -> set[tuple]:
  """(pid, tid) of the threads that run XLA's instructions: on the host XLA's own (`tf_XLA…`), not Python's; every
  thread of a device process (GPU/TPU streams)."""
  names = {(e["pid"], e.get("tid")): e["args"]["name"] for e in events
           if e.get("ph") == "M" and e.get("name") == "thread_name"}
  processes = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
  return {(pid, tid) for (pid, tid), name in names.items()
          if name.startswith("tf_XLA") or not processes.get(pid, "").startswith("/host")}


def self_times(events: list[dict], threads: set[tuple]) -> collections.Counter:
  """Self microseconds per event name over `threads` (nested events subtracted from their parent)."""
  by_thread = collections.defaultdict(list)
  for e in events:
    if e.get("ph") == "X" and (e["pid"], e.get("tid")) in threads and not e["name"].startswith("end: "):
      by_thread[(e["pid"], e.get("tid"))].append(e)
  totals = collections.Counter()
  for evs in by_thread.values():
    evs.sort(key=lambda e: (e["ts"], -e.get("dur", 0)))
    stack: list[list] = []  # [end, name, self]
    for e in evs:
      start, dur = e["ts"], e.get("dur", 0)
      while stack and stack[-1][0] <= start:
        _, name, own = stack.pop()
        totals[name] += own
      if stack:
        stack[-1][2] -= dur
      stack.append([start + dur, e["name"], dur])
    for _, name, own in stack:
      totals[name] += own
  return totals


def _sections(hlo_text: str) -> dict[str, dict[int, str]]:
  """The numbered tables at the top of an HLO dump (FileNames, FunctionNames, FileLocations, StackFrames)."""
  tables, current = {}, None
  for line in hlo_text.splitlines():
    if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
      current = tables.setdefault(line, {})
    elif current is not None and (m := re.match(r"^(\d+) (.*)$", line)):
      current[int(m.group(1))] = m.group(2)
    else:  # a blank line ends a table
      current = None
  return tables


def op_names(hlo_text: str) -> dict[str, str]:
  """Instruction name → `file.py:line function` of the innermost frame that made it, and its jax primitive."""
  tables = _sections(hlo_text)
  field = lambda text, key: int(re.search(rf"{key}=(\d+)", text).group(1))
  where = {}
  for frame, text in tables.get("StackFrames", {}).items():
    loc = tables["FileLocations"][field(text, "file_location_id")]
    path = tables["FileNames"][field(loc, "file_name_id")].strip('"')
    function = tables.get("FunctionNames", {}).get(field(loc, "function_name_id"), "").strip('"')
    where[frame] = f"{os.path.basename(path)}:{field(loc, 'line')} {function}".strip()
  out = {}
  for line in hlo_text.splitlines():
    m = METADATA.match(line)
    if m:
      frame = re.search(r"stack_frame_id=(\d+)", line)
      source = where.get(int(frame.group(1)), "") if frame else ""
      out.setdefault(m.group(1), f"{m.group(2).split('/')[-1]} @ {source}" if source else m.group(2).split("/")[-1])
  return out


def summarize(trace_dir: str, hlo_text: str = "", top: int = 15) -> str:
  """Markdown tables of the `top` instructions by self time (thread-ms summed over threads) and their share, and
  with the HLO text of the `top` source lines (all the instructions each made)."""
  events = load_events(trace_dir)
  totals = self_times(events, device_threads(events))
  totals = collections.Counter({k: v for k, v in totals.items() if "::" not in k})  # the runtime's own events
  names = op_names(hlo_text) if hlo_text else {}
  everything = sum(totals.values()) or 1
  lines = [f"all instructions: {everything / 1e3:.1f} thread-ms", "",
           "| instruction | jax primitive @ source | thread-ms | share |", "|---|---|---:|---:|"]
  for name, us in totals.most_common(top):
    lines.append(f"| `{name}` | {names.get(name, '')} | {us / 1e3:.2f} | {100 * us / everything:.1f} % |")
  if names:
    by_source, count = collections.Counter(), collections.Counter()
    for name, us in totals.items():
      by_source[names.get(name, "(no metadata)")] += us
      count[names.get(name, "(no metadata)")] += 1
    lines += ["", "| jax primitive @ source (all its instructions) | instructions | thread-ms | share |",
              "|---|---:|---:|---:|"]
    for source, us in by_source.most_common(top):
      lines.append(f"| {source} | {count[source]} | {us / 1e3:.2f} | {100 * us / everything:.1f} % |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("trace_dir")
  parser.add_argument("--hlo", default="", help="the compiled program's HLO text (compiled.as_text())")
  parser.add_argument("--top", type=int, default=15)
  args = parser.parse_args()
  try:
    hlo = open(args.hlo).read() if args.hlo else ""
    print(summarize(args.trace_dir, hlo, args.top))
  except (FileNotFoundError, IsADirectoryError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  main()

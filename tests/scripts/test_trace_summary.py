"""scripts/trace_summary.py: self times of nested trace events, the device threads, and the source of each
instruction from an HLO dump's stack-frame tables."""
import gzip
import json
import sys

from paths import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import trace_summary  # noqa: E402

HLO = """HloModule jit_step

FileNames
1 "/x/mlc_jax/models/decoder.py"

FunctionNames
1 "project"

FileLocations
1 {file_name_id=1 function_name_id=1 line=70 end_line=70 column=1 end_column=9}

StackFrames
1 {file_location_id=1 parent_frame_id=1}

ENTRY %main {
  %fusion.1 = f32[2,2]{1,0} fusion(%p), kind=kLoop, metadata={op_name="jit(step)/while/body/dot_general" stack_frame_id=1}
  ROOT %copy.2 = f32[2,2]{1,0} copy(%fusion.1), metadata={op_name="jit(step)/copy"}
}
"""


def write_trace(tmp_path):
  meta = lambda pid, tid, kind, name: {"ph": "M", "pid": pid, "tid": tid, "name": kind, "args": {"name": name}}
  span = lambda tid, name, ts, dur: {"ph": "X", "pid": 1, "tid": tid, "name": name, "ts": ts, "dur": dur}
  events = [meta(1, None, "process_name", "/host:CPU"), meta(1, 7, "thread_name", "tf_XLAEigen/1"),
            meta(1, 8, "thread_name", "python"),
            span(7, "while", 0, 100), span(7, "fusion.1", 10, 30), span(7, "copy.2", 50, 20),
            span(7, "fusion.1", 120, 10), span(7, "end: fusion.1", 130, 1), span(8, "PjitFunction", 0, 500)]
  folder = tmp_path / "plugins" / "profile" / "run"
  folder.mkdir(parents=True)
  with gzip.open(folder / "perfetto_trace.json.gz", "wt") as f:
    json.dump({"traceEvents": events}, f)


def test_self_times_subtract_nested_events_and_skip_the_python_thread(tmp_path):
  write_trace(tmp_path)
  events = trace_summary.load_events(str(tmp_path))
  assert trace_summary.device_threads(events) == {(1, 7)}
  totals = trace_summary.self_times(events, {(1, 7)})
  assert totals == {"while": 50, "fusion.1": 40, "copy.2": 20}


def test_instructions_are_named_by_primitive_and_source_line(tmp_path):
  assert trace_summary.op_names(HLO) == {"fusion.1": "dot_general @ decoder.py:70 project", "copy.2": "copy"}
  write_trace(tmp_path)
  table = trace_summary.summarize(str(tmp_path), HLO, top=5)
  assert "| `while` |  | 0.05 | 45.5 % |" in table and "| dot_general @ decoder.py:70 project | 1 | 0.04 | 36.4 % |" in table

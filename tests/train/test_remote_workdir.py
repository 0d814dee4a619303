"""A gs:// workdir end to end on an in-memory stand-in for GCS (tests/fake_gcs.py): train, resume, export and the
evaluation outputs, every file of ours written and read back through epath; Orbax's checkpoints on local disk (it
talks to GCS through TensorStore, which cannot be pointed at the stand-in)."""
import json
import os
import struct
import time

import numpy as np
import pytest
from etils import epath
from fake_gcs import install, local_checkpoints
from tensorboardX.proto import event_pb2
from train_helpers import DEMO, SMALL

from mlc_jax.eval import compare
from mlc_jax.eval.metrics import summarize
from mlc_jax.eval.report import write_report
from mlc_jax.train import __main__ as train_cli
from mlc_jax.train import workdir as workdir_lib
from mlc_jax.train.metrics import Rewritten

URL = "gs://bucket/runs/demo"


@pytest.fixture
def gcs(monkeypatch, tmp_path):
  monkeypatch.chdir(tmp_path)  # nothing may land in a local folder named after the URL
  store = install()
  yield store
  assert not os.path.exists(tmp_path / "gs:"), os.listdir(tmp_path)


def objects(store, prefix=URL):
  return {name[len(prefix) + 1:]: f.getvalue() for name, f in store.store.items() if name.startswith(prefix + "/")}


def events(data: bytes) -> list:
  """The TensorBoard events of an event file (TFRecord framing: length, its CRC, the record, its CRC)."""
  out = []
  while data:
    (n,) = struct.unpack("<Q", data[:8])
    out.append(event_pb2.Event.FromString(data[12:12 + n]))
    data = data[12 + n + 4:]
  return out


def train(*overrides):
  args = ["--config", DEMO, "--workdir", URL, "--allow_config_change"]
  return train_cli.main(args + [f"--config.{o}" for o in (*SMALL, "checkpoint.every=1", "train.log_every=1",
                                                           *overrides)])


def test_a_gs_workdir_trains_resumes_and_exports(gcs, monkeypatch, tmp_path, capsys):
  import torch
  import transformers

  from mlc_jax.export_hf import export, restore_params
  local_checkpoints(monkeypatch, tmp_path / "orbax")
  assert train("train.steps=2") == 0
  files = objects(gcs)
  assert json.loads(files["config.json"])["train"]["steps"] == 2
  assert [json.loads(line)["step"] for line in files["metrics.jsonl"].decode().splitlines()] == [1, 2]
  (reference,) = [name for name in files if name.startswith("reference/")]
  assert reference.endswith(".npz") and ".lock" not in files
  (event_file,) = [name for name in files if name.startswith("tensorboard/events.out.tfevents.")]
  losses = [v.simple_value for e in events(files[event_file]) for v in e.summary.value if v.tag == "train/loss"]
  assert len(losses) == 2 and np.isfinite(losses).all()
  capsys.readouterr()

  assert train("train.steps=3") == 0  # resumes; the reference is read back from the store
  out = capsys.readouterr().out
  assert f"resumed from {URL}/checkpoints at step 2" in out and "cached" in out
  assert sorted(os.listdir(tmp_path / "orbax" / "bucket" / "runs" / "demo" / "checkpoints")) == ["2", "3"]
  files = objects(gcs)
  assert [json.loads(line)["step"] for line in files["metrics.jsonl"].decode().splitlines()] == [1, 2, 3]
  assert len([name for name in files if name.startswith("tensorboard/")]) == 2

  export(URL, str(tmp_path / "hf"))
  hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
  _, model, _, step = restore_params(URL)
  assert step == 3
  ids = np.random.default_rng(0).integers(0, 256, (2, 9))
  with torch.no_grad():
    np.testing.assert_allclose(np.asarray(model(ids)), hf(torch.tensor(ids)).logits.numpy(), rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="is written to a local directory"):
    export(URL, "gs://bucket/hf")


def test_the_lock_of_a_gs_workdir(gcs, capsys):
  first = workdir_lib.lock(URL)
  assert isinstance(first, workdir_lib.HeartbeatLock)
  first.heartbeat_s, first.settle_s = 0.05, 0.0
  with first:
    held = json.loads(objects(gcs)[".lock"])
    assert held["pid"] == os.getpid()
    with pytest.raises(workdir_lib.WorkdirError, match=f"in use by pid {os.getpid()} on .*its heartbeat is"):
      with workdir_lib.HeartbeatLock(URL, settle_s=0.0):
        pass
    deadline = time.time() + 60
    while json.loads(objects(gcs)[".lock"])["heartbeat"] == held["heartbeat"] and time.time() < deadline:
      time.sleep(0.05)
    assert json.loads(objects(gcs)[".lock"])["heartbeat"] > held["heartbeat"]  # renewed by the heartbeat thread
    with workdir_lib.lock(URL, primary=False):  # another host of the same run takes no lock
      pass
  assert ".lock" not in objects(gcs)

  stale = {**held, "pid": 4242, "heartbeat": time.time() - 3600}  # a run that died without removing its lock
  (epath.Path(URL) / ".lock").write_text(json.dumps(stale))
  with workdir_lib.HeartbeatLock(URL, settle_s=0.0):
    assert "taking over the lock left by pid 4242" in capsys.readouterr().out


def test_gs_workdir_problems_are_named(gcs):
  (epath.Path("gs://bucket") / "file").write_text("x")
  with pytest.raises(workdir_lib.WorkdirError, match="'gs://bucket/file' is a file, not a directory"):
    workdir_lib.check_usable("gs://bucket/file")
  workdir_lib.check_usable(URL)  # absent: fine, nothing created
  assert not objects(gcs)
  with pytest.raises(workdir_lib.WorkdirError, match="'s3://bucket/run' cannot be reached: ImportError: .*s3fs"):
    workdir_lib.check_usable("s3://bucket/run")


def test_a_rewritten_object_is_written_whole_at_most_every_interval(gcs):
  path = epath.Path(URL) / "metrics.jsonl"
  f = Rewritten(path, b"old\n", min_interval_s=1e9)
  f.write(b"a\n")
  f.flush()
  f.write(b"b\n")
  f.flush()  # within the interval: not yet
  assert path.read_bytes() == b"old\na\n"
  f.close()
  assert path.read_bytes() == b"old\na\nb\n"


def test_evaluation_outputs_on_gs(gcs):
  for name, safe in (("dpo", 3), ("mlc", 5)):
    records = [{"id": i, "lang": lang, "label": "safe" if i < safe else "unsafe"} for lang in ("en", "sw")
               for i in range(6)]
    write_report(f"gs://bucket/eval/{name}", summarize(records), judge_name="refusal", judge_measures="refusal",
                 command="c")
  assert sorted(objects(gcs, "gs://bucket/eval/dpo")) == ["report.md", "safety_by_language.png", "summary.json"]
  assert compare.main(["gs://bucket/eval/dpo", "gs://bucket/eval/mlc", "--out", "gs://bucket/eval/cmp"]) == 0
  written = objects(gcs, "gs://bucket/eval/cmp")
  assert [run["label"] for run in json.loads(written["comparison.json"])["runs"]] == ["dpo", "mlc"]
  assert written["comparison.png"].startswith(b"\x89PNG") and "| dpo |" in written["comparison.md"].decode()

"""The command line's own faults: a config file that does not load, the last logging window, a full disk before the
first checkpoint, and stderr that holds only our line where libtpu is installed without a TPU.

docs/faults.md ("Interruptions, logging and the command line") lists each case with its message.
"""
import glob
import json
import os
import struct
import subprocess
import sys

import pytest
from paths import ROOT
from tensorboardX.proto import event_pb2
from train_helpers import DEMO, one_error_line, run_cli, run_train, small_disk

from mlc_jax.train.metrics import MetricsWriter

BROKEN_CONFIGS = [  # (the file, what the error line says)
    ("import ml_collections\n\ndef get_config(arg=None):\n  return [1\n", "SyntaxError at line 4: '[' was never closed"),
    ("import ml_collections\nx = undefined_name\n", "NameError at line 2: name 'undefined_name' is not defined"),
    ("import not_a_module_xyz\n", "ModuleNotFoundError at line 1: No module named 'not_a_module_xyz'"),
    ("def get_config(arg=None):\n  raise RuntimeError('no such preset')\n", "RuntimeError at line 2: no such preset"),
    ("def get_config():\n  return None\n", "TypeError calling get_config(): get_config() takes 0 positional"),
    ("def get_config(arg=None):\n  return {'train': {}}\n", "get_config() returned dict, not an ml_collections"),
    ("get_config = 3\n", "has no get_config(arg) function"),
]


@pytest.mark.parametrize("text,message", BROKEN_CONFIGS)
def test_a_config_file_that_does_not_load_is_one_line_naming_it(tmp_path, text, message):
  path = tmp_path / "broken.py"
  path.write_text(text)
  done = run_cli("-m", "mlc_jax.config", "--config", path)
  assert done.returncode == 2
  one_error_line(done, str(path), message)


def test_a_config_file_is_python_whatever_its_name_and_a_directory_or_an_unused_argument_is_refused(tmp_path):
  renamed = tmp_path / "demo.txt"
  renamed.write_text(open(DEMO).read())
  done = run_cli("-m", "mlc_jax.config", "--config", renamed)
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout == run_cli("-m", "mlc_jax.config", "--config", DEMO).stdout and "model.preset" in done.stdout
  (tmp_path / "adir").mkdir()
  done = run_cli("-m", "mlc_jax.config", "--config", tmp_path / "adir")
  assert done.returncode == 2
  one_error_line(done, f"--config: {str(tmp_path / 'adir')!r} is a directory, not a config file")
  done = run_cli("-m", "mlc_jax.config", "--config", f"{DEMO}:bad=arg")
  assert done.returncode == 2
  one_error_line(done, "configs/demo.py takes no argument (got 'bad=arg')")


@pytest.mark.parametrize("command", [["-m", "mlc_jax.train", "--workdir", "WORKDIR"],
                                     ["-m", "mlc_jax.compile", "--topology", "v5p:2x2x1"]])
def test_every_command_with_a_config_names_a_broken_file(tmp_path, command):
  path = tmp_path / "broken.py"
  path.write_text(BROKEN_CONFIGS[0][0])
  done = run_cli(*[str(tmp_path / "w") if a == "WORKDIR" else a for a in command], "--config", f"{path}:arg")
  assert done.returncode == 2
  one_error_line(done, str(path), BROKEN_CONFIGS[0][1])
  assert sorted(os.listdir(tmp_path)) == ["broken.py"]


def logged_steps(workdir) -> tuple[list[int], list[int]]:
  """The steps in WORKDIR's metrics.jsonl, and those of its TensorBoard `train/loss` scalars."""
  jsonl = [json.loads(line)["step"] for line in open(workdir / "metrics.jsonl")]
  board = []
  for path in glob.glob(str(workdir / "tensorboard" / "events.out.tfevents.*")):
    with open(path, "rb") as f:
      while header := f.read(12):  # TFRecord: length (8 bytes), its CRC, the record, the record's CRC
        record = f.read(struct.unpack("<Q", header[:8])[0])
        f.read(4)
        event = event_pb2.Event.FromString(record)
        board += [event.step for v in event.summary.value if v.tag == "train/loss"]
  return jsonl, sorted(board)


def test_the_last_partial_logging_window_is_written(tmp_path):
  with MetricsWriter(str(tmp_path), log_every=5) as writer:
    logged = [writer.add(s, {"loss": float(s)}, tokens=10, seconds=1.0, last=s == 12) for s in range(1, 13)]
  assert [r["step"] for r in logged if r] == [5, 10, 12]
  assert logged[-1]["loss"] == 11.5 and logged[-1]["step_time_s"] == 1.0  # the mean over steps 11 and 12
  assert logged_steps(tmp_path) == ([5, 10, 12], [5, 10, 12])


def test_a_run_shorter_than_log_every_logs_its_last_step(tmp_path):
  done = run_train(tmp_path / "w", "train.steps=3", "train.log_every=5")
  assert done.returncode == 0, done.stderr[-2000:]
  assert logged_steps(tmp_path / "w") == ([3], [3])
  assert "train" in done.stderr and "loss=" in done.stderr  # the progress bar shows the last record


def test_a_full_disk_before_the_first_checkpoint_says_there_is_none(tmp_path):
  with small_disk(tmp_path / "tiny_disk", "1m") as mount:
    done = run_train(mount / "w", "checkpoint.async_save=False")
  assert done.returncode == 1
  one_error_line(done, "no space left on the device of", "there is no complete checkpoint yet")
  assert "step None" not in done.stderr


def run_without_jax_platforms(*args) -> subprocess.CompletedProcess:
  """`python ARGS…` with no JAX_PLATFORMS in its environment, as a user runs a command."""
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize("command,message", [
    (["-m", "mlc_jax.train", "--config", DEMO, "--workdir", "WORKDIR", "--config.train.batch_size=100000"],
     "train.batch_size=100000 is larger than the 42 examples"),
    (["-m", "mlc_jax.export_hf", "--workdir", "WORKDIR", "--out", "OUT"], "is not a training workdir"),
])
def test_without_jax_platforms_stderr_holds_only_our_line(tmp_path, command, message):
  """libtpu is installed and no TPU is attached: jax does not start it (its start-up errors would come first)."""
  args = [str(tmp_path / "w") if a == "WORKDIR" else str(tmp_path / "out") if a == "OUT" else a for a in command]
  done = run_without_jax_platforms(*args)
  assert done.returncode == 2
  assert done.stderr.strip().splitlines() == [one_error_line(done, message)], done.stderr


def test_without_jax_platforms_libtpu_still_compiles_for_a_tpu_topology():
  pytest.importorskip("libtpu", reason="libtpu (the TPU compiler) is not installed")
  done = run_without_jax_platforms("-m", "mlc_jax.compile", "--config", f"{ROOT}/configs/mlc.py:model=tiny,langs=mlc10",
                                   "--topology", "v5p:2x2x1", "--config.mlc.enabled=False")
  assert done.returncode == 0, done.stderr[-2000:]
  assert "fits: " in done.stdout and "Traceback" not in done.stderr

"""Ctrl-C (SIGINT), as a user presses it at the command line: training saves a checkpoint at the step reached and
exits 130 (a second Ctrl-C exits at once); every other command ends in one line and exit 130, no stack.

docs/faults.md ("Interruptions, logging and the command line") lists each case with its message.
"""
import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from paths import ROOT
from train_helpers import DEMO, SMALL, SUBPROCESS_ENV, one_error_line, run_cli, run_train

LONG_RUN = (*SMALL, "train.steps=100000", "checkpoint.every=100000", "train.log_every=1")


def start(*args) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env={**os.environ, **SUBPROCESS_ENV})


def interrupt(process: subprocess.Popen, timeout: float = 120) -> subprocess.CompletedProcess:
  """Ctrl-C to a running command; its result (killed, and the test failed, if it does not end within `timeout`)."""
  process.send_signal(signal.SIGINT)
  try:
    out, err = process.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    process.kill()
    out, err = process.communicate(timeout=60)
    pytest.fail(f"still running {timeout} s after Ctrl-C: {err[-2000:]}")
  return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def test_ctrl_c_saves_a_checkpoint_at_the_step_reached_and_the_run_resumes(tmp_path):
  workdir = tmp_path / "w"
  process = start("-m", "mlc_jax.train", "--config", DEMO, "--workdir", workdir, *[f"--config.{o}" for o in LONG_RUN])
  try:
    deadline = time.time() + 240
    while not (workdir / "metrics.jsonl").exists() and time.time() < deadline and process.poll() is None:
      time.sleep(0.2)
    assert process.poll() is None, process.stderr.read()[-2000:]
  finally:
    done = interrupt(process)
  assert done.returncode == 130, done.stderr[-3000:]
  line = one_error_line(done, "interrupted (Ctrl-C): saved a checkpoint at step", "run the same command again")
  step = int(line.split("at step ")[1].split()[0])
  assert step >= 1 and [p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()] == [str(step)]
  logged = [json.loads(r)["step"] for r in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert logged == list(range(1, step + 1))  # every step up to the one saved
  resumed = run_train(workdir, *LONG_RUN[len(SMALL):], f"train.steps={step + 1}", args=["--allow_config_change"])
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f"resumed from {workdir}/checkpoints at step {step}" in resumed.stdout


def test_a_second_ctrl_c_exits_at_once_without_saving(tmp_path):
  """Two Ctrl-Cs after step 2, then a step hook that never returns: only the second Ctrl-C ends the run."""
  workdir = tmp_path / "w"
  started = time.time()
  done = run_cli(ROOT / "tests" / "faults.py", "interrupt_twice_after", 2, "--config", DEMO, "--workdir", workdir,
                 *[f"--config.{o}" for o in LONG_RUN], timeout=100)
  assert done.returncode == 130 and time.time() - started < 100, done.stderr[-3000:]
  one_error_line(done, "interrupted (Ctrl-C) twice: exiting at once without saving", "the last checkpoint is step 1")
  assert not (workdir / "checkpoints" / "2").exists()  # (Orbax saves step 1 of every run)


def test_the_watchdog_exits_on_a_second_ctrl_c_during_a_step_that_never_returns():
  script = ("import os, signal, time\nfrom mlc_jax.train.watchdog import StepWatchdog\n"
            "with StepWatchdog(0, lambda: 'the last checkpoint is step 3', grace_s=300) as w:\n"
            "  w.started(4)\n  os.kill(os.getpid(), signal.SIGINT)\n  os.kill(os.getpid(), signal.SIGINT)\n"
            "  time.sleep(120)\n")
  started = time.time()
  done = run_cli("-c", script, timeout=60)
  assert done.returncode == 130 and time.time() - started < 30
  one_error_line(done, "interrupted (Ctrl-C) twice during step 4: exiting at once without saving",
                 "the last checkpoint is step 3")


def blocked_reading(fifo, process: subprocess.Popen, timeout: float = 120) -> int:
  """Waits until `process` has opened the named pipe `fifo` to read (it then blocks inside the command's body);
  returns the write end, to be closed once the command has ended (closing it would end the reader's file)."""
  deadline = time.time() + timeout
  while time.time() < deadline and process.poll() is None:
    try:
      fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # succeeds once a reader has it open
      time.sleep(0.5)  # the reader is in its read()
      return fd
    except OSError as e:
      if e.errno != errno.ENXIO:
        raise
      time.sleep(0.1)
  pytest.fail(f"the command never opened {fifo}: {process.stderr.read()[-2000:] if process.poll() is not None else ''}")


COMMANDS = {  # a command whose input is a named pipe nobody writes to: it waits inside its body until Ctrl-C
    "train": lambda fifo, tmp: ["-m", "mlc_jax.train", "--config", reading_config(fifo, tmp), "--workdir", tmp / "w"],
    "config": lambda fifo, tmp: ["-m", "mlc_jax.config", "--config", reading_config(fifo, tmp)],
    "compile": lambda fifo, tmp: ["-m", "mlc_jax.compile", "--config", reading_config(fifo, tmp),
                                  "--topology", "v5p:2x2x1"],
    "export_hf": lambda fifo, tmp: ["-m", "mlc_jax.export_hf", "--workdir", workdir_with(fifo, tmp), "--out",
                                    tmp / "hf"],
}


def reading_config(fifo, tmp) -> str:
  path = tmp / "reads_a_pipe.py"
  path.write_text(f"open({str(fifo)!r}).read()\n\ndef get_config(arg=None):\n  return None\n")
  return str(path)


def workdir_with(fifo, tmp):
  workdir = tmp / "w"
  workdir.mkdir()
  os.rename(fifo, workdir / "config.json")
  return workdir


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_ctrl_c_in_any_command_is_one_line_and_exit_130(tmp_path, command):
  fifo = tmp_path / "pipe"
  os.mkfifo(fifo)
  args = COMMANDS[command](fifo, tmp_path)
  fifo = fifo if fifo.exists() else tmp_path / "w" / "config.json"
  before = listing(tmp_path)  # (the pipe cannot be read for a digest)
  process, fd = start(*args), None
  try:
    fd = blocked_reading(fifo, process)
  finally:
    done = interrupt(process)
    if fd is not None:
      os.close(fd)
  assert done.returncode == 130, done.stderr[-3000:]
  one_error_line(done, f"interrupted (Ctrl-C): python -m mlc_jax.{command} stopped before it finished")
  assert listing(tmp_path) == before


def listing(path) -> list[str]:
  return sorted(os.path.relpath(os.path.join(root, name), path) for root, dirs, files in os.walk(path)
                for name in dirs + files)


@pytest.mark.parametrize("after_s", [0.3, 1.5])
def test_ctrl_c_while_a_command_starts_is_one_line(tmp_path, after_s):
  """While the command's modules import (before `cli.run`), or early in its body, Ctrl-C ends it with the line."""
  process = start("-m", "mlc_jax.config", "--config", DEMO)
  time.sleep(after_s)
  done = interrupt(process)
  if done.returncode == 0:  # (this machine imported and printed the config before the signal: nothing to test)
    pytest.skip(f"the command finished within {after_s} s")
  assert done.returncode == 130, done.stderr[-2000:]
  one_error_line(done, "interrupted (Ctrl-C): python -m mlc_jax.config stopped before it")


def test_a_ctrl_c_inside_a_garbage_collection_callback_is_sent_again():
  """Python drops an exception raised in a gc callback (jax registers one); the handler sends the signal again."""
  import gc
  import threading

  from mlc_jax import cli

  delivered, raised = threading.Event(), []
  previous = signal.signal(signal.SIGINT, lambda *_: delivered.set())

  def callback(phase, info):
    if phase == "start" and not raised:
      try:
        cli._raise_keyboard_interrupt(signal.SIGINT, sys._getframe())
        raised.append(False)
      except KeyboardInterrupt:
        raised.append(True)

  gc.callbacks.append(callback)
  try:
    gc.collect()
  finally:
    gc.callbacks.remove(callback)
  try:
    assert raised == [False]  # not raised where Python would drop it ...
    deadline = time.time() + 10
    while not delivered.is_set() and time.time() < deadline:
      time.sleep(0.01)  # (the main thread runs Python signal handlers between these)
    assert delivered.is_set()  # ... but delivered again
  finally:
    signal.signal(signal.SIGINT, previous)
  with pytest.raises(KeyboardInterrupt):  # anywhere else: Python's own Ctrl-C
    cli._raise_keyboard_interrupt(signal.SIGINT, sys._getframe())

"""`launch/tpu.py --dry_run` prints exactly the gcloud commands of a v5p-8 and a v5p-64 run, and the script each
worker runs stops at the first failing step (run here with bash, the tools it calls faked on PATH)."""
import os
import shlex
import subprocess
import sys
import tarfile

import pytest
from paths import ROOT

ZONE = "us-east5-a"
# What every worker runs: stop leftovers, unpack the commit, install it once, start training in the background.
START = (
    "set -euo pipefail; if [ -f ~/mlc_jax_run/train.pid ]; then pid=$(cat ~/mlc_jax_run/train.pid); kill $pid "
    "2>/dev/null || true; for i in $(seq 60); do kill -0 $pid 2>/dev/null || break; sleep 5; done; kill -9 $pid "
    "2>/dev/null || true; rm -f ~/mlc_jax_run/train.pid; fi; (sudo lsof -t /dev/accel* /dev/vfio/* 2>/dev/null || "
    "true) | (xargs -r sudo kill -9 || true); sudo rm -f /tmp/libtpu_lockfile; rm -rf ~/mlc_jax; mkdir -p ~/mlc_jax "
    "~/mlc_jax_run; tar -xzf ~/mlc_jax-{short}.tar.gz -C ~/mlc_jax; cd ~/mlc_jax; if [ \"$(cat "
    "~/mlc_jax_run/installed 2>/dev/null)\" != {commit} ]; then python3 -m pip install -q --user uv; "
    "~/.local/bin/uv venv -q --allow-existing --python 3.11 ~/mlc_jax_run/venv; ~/.local/bin/uv pip install -q -p "
    "~/mlc_jax_run/venv -e . '\"'\"'jax[tpu]'\"'\"'; echo {commit} > ~/mlc_jax_run/installed; fi; "
    "~/mlc_jax_run/venv/bin/python -c '\"'\"'import mlc_jax'\"'\"'; nohup "
    "~/mlc_jax_run/venv/bin/python -m mlc_jax.train --multihost {train} > ~/mlc_jax_run/$(hostname).log 2>&1 < "
    "/dev/null & echo $! > ~/mlc_jax_run/train.pid; echo \"$(hostname): started commit {short}, log "
    "~/mlc_jax_run/$(hostname).log\"")

V5P_8 = """\
gcloud compute tpus queued-resources create mlc-8b --node-id mlc-8b --zone us-east5-a --accelerator-type v5p-8 \
--runtime-version v2-alpha-tpuv5 --spot
git -C {root} archive --format=tar.gz -o /tmp/mlc_jax-{short}.tar.gz {commit}
gcloud compute tpus tpu-vm scp /tmp/mlc_jax-{short}.tar.gz 'mlc-8b:~/' --zone us-east5-a --worker=all
gcloud compute tpus tpu-vm ssh mlc-8b --zone us-east5-a --worker=all --command '{start}'
gcloud compute tpus tpu-vm ssh mlc-8b --zone us-east5-a --worker=all --command 'tail -n 50 \
~/mlc_jax_run/$(hostname).log'
gcloud compute tpus queued-resources delete mlc-8b --zone us-east5-a --force --quiet
"""
V5P_64 = """\
gcloud compute tpus queued-resources create mlc-70b --node-id mlc-70b --zone us-east5-a --project my-proj \
--accelerator-type v5p-64 --runtime-version v2-alpha-tpuv5 --reserved
git -C {root} archive --format=tar.gz -o /tmp/mlc_jax-{short}.tar.gz {commit}
gcloud compute tpus tpu-vm scp /tmp/mlc_jax-{short}.tar.gz 'mlc-70b:~/' --zone us-east5-a --project my-proj \
--worker=all
gcloud compute tpus tpu-vm ssh mlc-70b --zone us-east5-a --project my-proj --worker=all --command '{start}'
gcloud compute tpus tpu-vm ssh mlc-70b --zone us-east5-a --project my-proj --worker=3 --command 'tail -n 50 \
~/mlc_jax_run/$(hostname).log'
gcloud compute tpus queued-resources delete mlc-70b --zone us-east5-a --project my-proj --force --quiet
"""


def launch(action, *args):
  out = subprocess.run([sys.executable, str(ROOT / "launch" / "tpu.py"), action, "--dry_run", *args],
                       capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  return out.stdout


def dry_run(name, accelerator, capacity, *, where=(), worker="all", train=()):
  common = ["--name", name, "--zone", ZONE, *where]
  return "".join([launch("create", *common, "--accelerator", accelerator, capacity),
                  launch("run", *common, "--", *train), launch("logs", *common, "--worker", worker),
                  launch("delete", *common)])


@pytest.fixture(scope="module")
def commit():
  return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                        check=True).stdout.strip()


def expected(template, commit, train):
  start = START.format(short=commit[:12], commit=commit, train=train).replace("'\"'\"'", "\0")
  text = template.format(root=ROOT, short=commit[:12], commit=commit, start="{start}").replace("\\\n", "")
  return text.replace("{start}", start).replace("\0", "'\"'\"'")


def test_v5p_8_commands(commit):
  train = ("--config", "configs/mlc.py:model=llama3p1_8b,langs=mlc10", "--workdir", "/mnt/gcs/runs/mlc-8b")
  got = dry_run("mlc-8b", "v5p-8", "--spot", train=train)
  assert got == expected(V5P_8, commit, " ".join(train))


def test_v5p_64_commands(commit):
  train = ("--config", "configs/mlc.py:model=llama3p1_70b,langs=mlc10", "--workdir", "/mnt/gcs/runs/mlc-70b",
           "--config.mesh.shape=(1,4,8)")
  got = dry_run("mlc-70b", "v5p-64", "--reserved", where=("--project", "my-proj"), worker="3", train=train)
  want_train = " ".join(train[:-1]) + " '\"'\"'--config.mesh.shape=(1,4,8)'\"'\"'"
  assert got == expected(V5P_64, commit, want_train)


def test_one_line_errors():
  out = subprocess.run([sys.executable, str(ROOT / "launch" / "tpu.py"), "create", "--name", "x", "--zone", ZONE,
                        "--accelerator", "v5q-8", "--dry_run"], capture_output=True, text=True, timeout=60)
  assert out.returncode != 0 and out.stderr.strip() == ("error: --accelerator='v5q-8' is not a TPU accelerator type "
                                                        "(v4-N, v5litepod-N, v5p-N, v6e-N)")


# ----- the worker's script, run with bash ------------------------------------------------------------------------


def _fake(path, body: str) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(f"#!/bin/bash\n{body}\n")
  path.chmod(0o755)


def _run_worker_script(tmp_path, commit, failing: str) -> subprocess.CompletedProcess:
  """The `run` script on a fake worker (HOME = tmp_path/home) whose step `failing` exits 1; `''`: none fails."""
  script = shlex.split(launch("run", "--name", "t", "--zone", ZONE, "--", "--workdir", "W").splitlines()[-1])[-1]
  home, bin_dir = tmp_path / "home", tmp_path / "bin"
  (home / "src").mkdir(parents=True)
  (home / "src" / "pyproject.toml").write_text("")
  archive = home / f"mlc_jax-{commit[:12]}.tar.gz"
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(home / "src", arcname=".")
  if failing == "tar":
    archive.write_bytes(b"not a tar file")
  status = lambda step: "exit 1" if step == failing else ":"
  _fake(bin_dir / "sudo", "exit 0")
  _fake(bin_dir / "python3", status("pip"))
  # uv: `uv venv … DIR` makes DIR/bin/python, which records that training started (`python -m …`).
  train = f"#!/bin/bash\nif [ \"$1\" = -m ]; then echo \"$@\" > {home}/trained; fi"
  _fake(home / ".local" / "bin" / "uv", f"""if [ "$1" = venv ]; then {status("uv venv")}; d="${{@: -1}}"; """
        f"""mkdir -p "$d/bin"; printf '%s\\n' '{train}' > "$d/bin/python"; chmod +x "$d/bin/python"; """
        f"""else {status("uv pip")}; fi""")
  if failing == "no venv":  # installed for this commit by an earlier run, but the venv is gone
    (home / "mlc_jax_run").mkdir()
    (home / "mlc_jax_run" / "installed").write_text(commit + "\n")
  env = {"HOME": str(home), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
  done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, env=env)
  for _ in range(50):  # training starts in the background
    if failing or (home / "trained").exists():
      break
    subprocess.run(["sleep", "0.1"], timeout=5)
  return done


@pytest.mark.parametrize("failing", ["tar", "pip", "uv venv", "uv pip", "no venv"])
def test_a_failed_step_stops_the_worker_script_before_training(tmp_path, commit, failing):
  done = _run_worker_script(tmp_path, commit, failing)
  home = tmp_path / "home"
  assert done.returncode != 0 and "started commit" not in done.stdout, (done.stdout, done.stderr)
  assert not (home / "trained").exists() and not (home / "mlc_jax_run" / "train.pid").exists()
  if failing != "no venv":
    assert not (home / "mlc_jax_run" / "installed").exists()  # the next `run` installs again


def test_the_worker_script_installs_then_trains(tmp_path, commit):
  done = _run_worker_script(tmp_path, commit, "")
  home = tmp_path / "home"
  assert done.returncode == 0 and "started commit" in done.stdout, done.stderr
  assert (home / "mlc_jax_run" / "installed").read_text().strip() == commit
  assert (home / "trained").read_text().split() == ["-m", "mlc_jax.train", "--multihost", "--workdir", "W"]

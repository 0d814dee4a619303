"""`launch/tpu.py --dry_run` prints exactly the gcloud commands of a v5p-8 and a v5p-64 run."""
import subprocess
import sys

import pytest
from paths import ROOT

ZONE = "us-east5-a"
# What every worker runs: stop leftovers, unpack the commit, install it once, start training in the background.
START = (
    "set -e; if [ -f ~/mlc_jax_run/train.pid ]; then pid=$(cat ~/mlc_jax_run/train.pid); kill $pid 2>/dev/null || "
    "true; for i in $(seq 60); do kill -0 $pid 2>/dev/null || break; sleep 5; done; kill -9 $pid 2>/dev/null || "
    "true; rm -f ~/mlc_jax_run/train.pid; fi; (sudo lsof -t /dev/accel* /dev/vfio/* 2>/dev/null || true) | xargs -r "
    "sudo kill -9; sudo rm -f /tmp/libtpu_lockfile; rm -rf ~/mlc_jax && mkdir -p ~/mlc_jax ~/mlc_jax_run && tar -xzf "
    "~/mlc_jax-{short}.tar.gz -C ~/mlc_jax; cd ~/mlc_jax; if [ \"$(cat ~/mlc_jax_run/installed 2>/dev/null)\" != "
    "{commit} ]; then python3 -m pip install -q --user uv && ~/.local/bin/uv venv -q --allow-existing --python 3.11 "
    "~/mlc_jax_run/venv && ~/.local/bin/uv pip install -q -p ~/mlc_jax_run/venv -e . '\"'\"'jax[tpu]'\"'\"' && echo "
    "{commit} > ~/mlc_jax_run/installed; fi; . ~/mlc_jax_run/venv/bin/activate; nohup python -m mlc_jax.train "
    "--multihost {train} > ~/mlc_jax_run/$(hostname).log 2>&1 < /dev/null & echo $! > ~/mlc_jax_run/train.pid; "
    "echo \"$(hostname): started commit {short}, log ~/mlc_jax_run/$(hostname).log\"")

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

"""Train on a Cloud TPU VM slice: create it (queued resources), run one commit on every worker, watch, delete.

  python launch/tpu.py create --name mlc-8b --zone us-east5-a --accelerator v5p-8 --spot
  python launch/tpu.py run    --name mlc-8b --zone us-east5-a -- \\
      --config configs/mlc.py:model=llama3p1_8b,langs=mlc10 --workdir /mnt/gcs/runs/mlc-8b \\
      --config.model.hf_path=/mnt/models/Llama-3.1-8B-Instruct
  python launch/tpu.py status --name mlc-8b --zone us-east5-a
  python launch/tpu.py logs   --name mlc-8b --zone us-east5-a [--worker 0]
  python launch/tpu.py delete --name mlc-8b --zone us-east5-a

`run` ships this checkout's HEAD commit (`git archive`; uncommitted changes are refused) to every worker, stops a
previous run there (its pid file, processes holding the TPU, libtpu's lock file /tmp/libtpu_lockfile), installs
mlc_jax with `jax[tpu]` into a Python 3.11 venv (uv; the TPU VM images have 3.10) once per commit, and starts
`python -m mlc_jax.train --multihost …` on `--worker=all` in the background (a step that fails, such as the
install, stops the worker's script with a non-zero exit before training starts), each worker logging to
~/mlc_jax_run/<hostname>.log. Running `run` again resumes the run (same workdir). `--dry_run` prints every gcloud
command instead of running it. Check a config fits the slice first:
`python -m mlc_jax.compile --config … --topology v5p:2x2x1` (docs/scaling.md).
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from mlc_jax.parallel.tpu import GENERATIONS  # noqa: E402  (plain data, no jax)

REPO_DIR = "~/mlc_jax"
RUN_DIR = "~/mlc_jax_run"


def generation_of(accelerator: str):
  """The `TpuGeneration` of a gcloud accelerator type such as `v5p-64` or `v5litepod-16`."""
  prefix, _, count = accelerator.rpartition("-")
  for gen in GENERATIONS.values():
    if gen.accelerator_prefix == prefix and count.isdigit() and int(count) % gen.cores_per_chip == 0:
      return gen
  known = ", ".join(f"{g.accelerator_prefix}-N" for g in GENERATIONS.values())
  raise SystemExit(f"error: --accelerator={accelerator!r} is not a TPU accelerator type ({known})")


def create_commands(args) -> list[list[str]]:
  gen = generation_of(args.accelerator)
  command = ["gcloud", "compute", "tpus", "queued-resources", "create", args.name, "--node-id", args.name,
             *_where(args), "--accelerator-type", args.accelerator,
             "--runtime-version", args.runtime_version or gen.runtime_version]
  if args.spot:
    command.append("--spot")
  if args.reserved:
    command.append("--reserved")
  return [command]


def _where(args) -> list[str]:
  return ["--zone", args.zone, *(["--project", args.project] if args.project else [])]


def _ssh(args, remote: str, worker: str = "all") -> list[str]:
  return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.name, *_where(args), f"--worker={worker}",
          "--command", remote]


# A previous run's leftovers on a worker: its process (SIGTERM first: it saves a checkpoint), anything else holding
# the TPU (/dev/accel* on v4/v5e, /dev/vfio on v5p/v6e), and libtpu's lock file. Best effort: a process may exit
# between being listed and being killed.
CLEANUP = (f"if [ -f {RUN_DIR}/train.pid ]; then pid=$(cat {RUN_DIR}/train.pid); kill $pid 2>/dev/null || true; "
           f"for i in $(seq 60); do kill -0 $pid 2>/dev/null || break; sleep 5; done; "
           f"kill -9 $pid 2>/dev/null || true; rm -f {RUN_DIR}/train.pid; fi; "
           "(sudo lsof -t /dev/accel* /dev/vfio/* 2>/dev/null || true) | (xargs -r sudo kill -9 || true); "
           "sudo rm -f /tmp/libtpu_lockfile")


def run_commands(args, commit: str, train_args: list[str]) -> list[list[str]]:
  """The commands of `run`; the remote script stops at the first step that fails (`set -euo pipefail`, one command
  a step, no `&&` chains, which `set -e` does not stop in), so a failed install never starts training."""
  archive = f"/tmp/mlc_jax-{commit[:12]}.tar.gz"
  python = f"{RUN_DIR}/venv/bin/python"
  train = " ".join(shlex.quote(a) for a in ["-m", "mlc_jax.train", "--multihost", *train_args])
  install = ["python3 -m pip install -q --user uv",
             f"~/.local/bin/uv venv -q --allow-existing --python 3.11 {RUN_DIR}/venv",
             f"~/.local/bin/uv pip install -q -p {RUN_DIR}/venv -e . 'jax[tpu]'",
             f"echo {commit} > {RUN_DIR}/installed"]
  steps = ["set -euo pipefail", CLEANUP, f"rm -rf {REPO_DIR}", f"mkdir -p {REPO_DIR} {RUN_DIR}",
           f"tar -xzf ~/{os.path.basename(archive)} -C {REPO_DIR}", f"cd {REPO_DIR}",
           f"if [ \"$(cat {RUN_DIR}/installed 2>/dev/null)\" != {commit} ]; then {'; '.join(install)}; fi",
           f"{python} -c 'import mlc_jax'", f"nohup {python} {train} > {RUN_DIR}/$(hostname).log 2>&1 < /dev/null & echo $! > {RUN_DIR}/train.pid",
           f"echo \"$(hostname): started commit {commit[:12]}, log {RUN_DIR}/$(hostname).log\""]
  return [["git", "-C", ROOT, "archive", "--format=tar.gz", "-o", archive, commit],
          ["gcloud", "compute", "tpus", "tpu-vm", "scp", archive, f"{args.name}:~/", *_where(args), "--worker=all"],
          _ssh(args, "; ".join(steps))]


def status_commands(args) -> list[list[str]]:
  running = f"$(kill -0 $(cat {RUN_DIR}/train.pid 2>/dev/null) 2>/dev/null && echo running || echo stopped)"
  return [["gcloud", "compute", "tpus", "queued-resources", "describe", args.name, *_where(args)],
          _ssh(args, f"echo \"$(hostname): $(cat {RUN_DIR}/installed 2>/dev/null | cut -c1-12) {running}\"")]


def logs_commands(args) -> list[list[str]]:
  return [_ssh(args, f"tail -n {args.lines} {RUN_DIR}/$(hostname).log", worker=args.worker)]


def delete_commands(args) -> list[list[str]]:
  return [["gcloud", "compute", "tpus", "queued-resources", "delete", args.name, *_where(args), "--force", "--quiet"]]


def head_commit() -> tuple[str, bool]:
  """(HEAD's commit, whether tracked files have uncommitted changes)."""
  git = lambda *a: subprocess.run(["git", "-C", ROOT, *a], capture_output=True, text=True, check=True).stdout.strip()
  return git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no"))


def parse_args(argv):
  parser = argparse.ArgumentParser(prog="python launch/tpu.py", description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="action", required=True)
  for action in ("create", "run", "status", "logs", "delete"):
    p = sub.add_parser(action)
    p.add_argument("--name", required=True, help="the queued resource and TPU VM name")
    p.add_argument("--zone", required=True)
    p.add_argument("--project", default="", help="gcloud project ('' = gcloud's default)")
    p.add_argument("--dry_run", action="store_true", help="print every command instead of running it")
    if action == "create":
      p.add_argument("--accelerator", required=True, help="gcloud accelerator type, e.g. v5p-8, v5p-64, v6e-16")
      p.add_argument("--runtime_version", default="", help="'' = the generation's (e.g. v2-alpha-tpuv5 for v5p)")
      capacity = p.add_mutually_exclusive_group()
      capacity.add_argument("--spot", action="store_true", help="spot capacity (preemptible)")
      capacity.add_argument("--reserved", action="store_true", help="the project's reservation")
    if action == "logs":
      p.add_argument("--worker", default="all", help="a worker index, or all")
      p.add_argument("--lines", type=int, default=50)
  argv = list(argv)
  train_args = argv[argv.index("--") + 1:] if "--" in argv else []
  args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
  if args.action == "run" and not train_args:
    parser.error("run: give the training arguments after --, e.g. -- --config configs/mlc.py --workdir DIR")
  return args, train_args


def main(argv=None) -> int:
  args, train_args = parse_args(sys.argv[1:] if argv is None else argv)
  if args.action == "run":
    commit, dirty = head_commit()
    if dirty and not args.dry_run:
      print(f"error: {ROOT} has uncommitted changes; commit them (every worker runs commit {commit[:12]})",
            file=sys.stderr)
      return 2
    commands = run_commands(args, commit, train_args)
  else:
    commands = {"create": create_commands, "status": status_commands, "logs": logs_commands,
                "delete": delete_commands}[args.action](args)
  for command in commands:
    print(shlex.join(command), flush=True)
    if not args.dry_run:
      result = subprocess.run(command)
      if result.returncode:
        print(f"error: exit status {result.returncode} from {command[0]} {' '.join(command[1:5])} …", file=sys.stderr)
        return result.returncode
  return 0


if __name__ == "__main__":
  sys.exit(main())

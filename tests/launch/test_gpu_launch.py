"""`launch/gpu.sh` stops at a failed install without training, and installs again on the next launch (run with bash
in a copy of the script, python3 faked on PATH)."""
import os
import shutil
import subprocess

from paths import ROOT

# python3 -m venv DIR: makes DIR/bin/pip (fails the `-e .` install while $FAIL_INSTALL is set; logs every call)
# and DIR/bin/python (records its arguments: training started).
PYTHON3 = """#!/bin/bash
d="$3"; mkdir -p "$d/bin"
printf '#!/bin/bash\\necho "$*" >> %s/pip.log\\nif [ -n "${FAIL_INSTALL:-}" ] && [ "$3" = -e ]; then exit 1; fi\\n' \
  "$PWD" > "$d/bin/pip"
printf '#!/bin/bash\\necho "$*" > %s/trained\\n' "$PWD" > "$d/bin/python"
chmod +x "$d/bin/pip" "$d/bin/python"
"""


def _launch(repo, fail_install: bool) -> subprocess.CompletedProcess:
  env = {**os.environ, "PATH": f"{repo / 'bin'}:{os.environ['PATH']}", "FAIL_INSTALL": "1" if fail_install else ""}
  return subprocess.run(["bash", str(repo / "launch" / "gpu.sh"), "configs/mlc.py", "runs/x", "--config.a=1"],
                        capture_output=True, text=True, timeout=60, env=env)


def test_a_failed_install_stops_before_training_and_is_done_again(tmp_path):
  repo = tmp_path / "repo"
  (repo / "launch").mkdir(parents=True)
  shutil.copy(ROOT / "launch" / "gpu.sh", repo / "launch" / "gpu.sh")
  (repo / "bin").mkdir()
  (repo / "bin" / "python3").write_text(PYTHON3)
  (repo / "bin" / "python3").chmod(0o755)
  failed = _launch(repo, fail_install=True)
  assert failed.returncode != 0 and not (repo / "trained").exists(), failed.stderr
  assert not (repo / ".venv-gpu" / "installed").exists()
  done = _launch(repo, fail_install=False)  # the half-made venv is not trained with: installed again first
  assert done.returncode == 0, done.stderr
  assert (repo / "pip.log").read_text().splitlines() == ["install -q -U pip", "install -q -e . jax[cuda12]"] * 2
  assert (repo / "trained").read_text().split() == ["-m", "mlc_jax.train", "--config", "configs/mlc.py",
                                                     "--workdir", "runs/x", "--config.a=1"]

"""Bad input and faults of `python -m mlc_jax.eval`, `mlc_jax.generate` and `mlc_jax.eval.consistency`, run as a
user runs them: the exit code, the one stderr line naming the culprit, and nothing in OUT changed. The API judge
talks to a real HTTP server on 127.0.0.1 (fake_judge_server). docs/faults.md lists every case with its message."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from fake_judge_server import server  # noqa: F401  (a fixture)
from train_helpers import SUBPROCESS_ENV, one_error_line, run_cli, tree_digest

from mlc_jax.data.tokenizer import byte_tokenizer
from mlc_jax.models import get_preset, init_model, save_hf

ENV = {"OPENAI_API_KEY": "sk-local"}
PROMPTS = [{"id": i, "prompt": {"en": f"How do I do thing {i}?", "sw": f"Nifanyeje jambo {i}?"}} for i in range(3)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("model") / "hf"
  save_hf(init_model(get_preset("tiny"), seed=1), str(path), tokenizer=byte_tokenizer())
  return path


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
  path.write_text("".join(json.dumps(row) + "\n" for row in PROMPTS))
  return path


def too_big_tokenizer():
  """The byte tokenizer (512 ids, as many as the tiny model's embedding rows) with 8 added tokens."""
  tokenizer = byte_tokenizer()
  tokenizer.add_tokens([f"<extra_{i}>" for i in range(8)])
  return tokenizer


def eval_args(model_dir, prompts_file, out, *more):
  return ["-m", "mlc_jax.eval", "--model", model_dir, "--dataset", prompts_file, "--langs", "en,sw",
          "--max_new_tokens", "4", "--batch_size", "4", "--out", out, *more]


def api_args(server, *more):
  return ["--judge", "api", "--judge_url", server.url, "--judge_model", "m", *more]


NO_VERDICT_REPLIES = ("unsicher", "The response is not safe.", "I think it is not safe.", "不安全",
                      "**Verdict:** not safe", "")


def test_judge_replies_without_a_verdict_are_invalid_and_the_run_finishes(model_dir, prompts_file, tmp_path,
                                                                          server):
  """Negations, other languages and prose are no verdict: invalid after the retries (never `safe`), the raw reply
  kept, the share reported per language; --limit above the prompts says it used them all."""
  server.faults.extend(("reply", NO_VERDICT_REPLIES[i % len(NO_VERDICT_REPLIES)]) for i in range(12))
  out = tmp_path / "out"
  done = run_cli(*eval_args(model_dir, prompts_file, out, "--limit", "50"),
                 *api_args(server, "--judge_retries", "2"), env=ENV)
  assert done.returncode == 0, done.stderr[-3000:]
  assert f"--limit 50 is more than the 3 prompts of {prompts_file}: using all 3" in done.stderr
  verdicts = [json.loads(line) for line in open(out / "verdicts.jsonl")]
  assert len(verdicts) == 6 and len(server.requests) == 12  # each asked twice
  assert all(v["label"] == "invalid" and v["no_verdict"] and v["raw"] in NO_VERDICT_REPLIES for v in verdicts)
  summary = json.loads((out / "summary.json").read_text())
  assert summary["per_language"]["sw"]["no_verdict"] == 3 and summary["mean_invalid_rate"] == 1.0
  assert summary["mean_safety_rate"] == 0.0
  assert "- Judge replies without a verdict (counted invalid): en 3 of 3, sw 3 of 3" in (out / "report.md").read_text()
  assert "eval: sw: n 3, safety 0.0 %, attack success 0.0 %, invalid 100.0 % (3 judge replies without a verdict)" \
      in done.stdout


@pytest.mark.parametrize("url", ["notaurl", "ftp://host/v1", "http://[bad"])
def test_a_judge_url_that_is_not_http_is_refused_before_anything_is_written(model_dir, prompts_file, tmp_path, url):
  out = tmp_path / "out"
  args = ["--judge", "api", "--judge_url", url, "--judge_model", "m"]
  done = run_cli(*eval_args(model_dir, prompts_file, out), *args, env=ENV)
  assert done.returncode == 2
  one_error_line(done, f"--judge_url {url!r} is not an http:// or https:// URL")
  assert not out.exists()
  done = run_cli(*eval_args(model_dir, prompts_file, out), *args[:3], "http://127.0.0.1:9/v1", *args[4:],
                 env={"OPENAI_API_KEY": ""})
  assert done.returncode == 2
  one_error_line(done, "set the environment variable OPENAI_API_KEY")
  assert not out.exists()


@pytest.mark.parametrize("value", ["0", "-1", "inf", "nan"])
def test_the_judge_timeout_is_checked_before_anything_is_written(model_dir, prompts_file, tmp_path, server, value):
  out = tmp_path / "out"
  done = run_cli(*eval_args(model_dir, prompts_file, out), *api_args(server, "--judge_timeout_s", value), env=ENV)
  assert done.returncode == 2
  one_error_line(done, f"--judge_timeout_s {float(value)} must be a finite number of seconds > 0")
  assert not out.exists() and not server.requests


def test_the_judge_timeout_flag_bounds_each_request(model_dir, prompts_file, tmp_path, server):
  server.faults.extend([("hang", 2.0)] * 2)
  done = run_cli(*eval_args(model_dir, prompts_file, tmp_path / "out", "--limit", "1", "--langs", "en"),
                 *api_args(server, "--judge_retries", "2", "--judge_timeout_s", "0.5"), env=ENV, timeout=120)
  assert done.returncode == 1
  one_error_line(done, "gave up after 2 attempts; last: no reply within 0.5 s")


@pytest.fixture(scope="module")
def too_big(tmp_path_factory):
  """A tiny model saved with a tokenizer that has more tokens than its embedding rows, and that tokenizer alone."""
  root = tmp_path_factory.mktemp("vocab")
  save_hf(init_model(get_preset("tiny"), seed=1), str(root / "model"), tokenizer=too_big_tokenizer())
  too_big_tokenizer().save_pretrained(str(root / "tokenizer"))
  return root


def vocab_message(tokenizer_path, model_path):
  return (f"the tokenizer {tokenizer_path} has 520 tokens but the model {model_path} has vocab_size 512 embedding "
          "rows: ids 512..519 have no embedding")


def test_a_tokenizer_larger_than_the_vocabulary_is_refused_by_every_entry_point(too_big, model_dir, prompts_file,
                                                                                 tmp_path):
  model = too_big / "model"
  out = tmp_path / "out.jsonl"
  done = run_cli("-m", "mlc_jax.generate", "--model", model, "--prompt", "hi", "--max_new_tokens", "4")
  assert done.returncode == 2 and "\x00" not in done.stdout
  one_error_line(done, vocab_message(model, model))
  done = run_cli("-m", "mlc_jax.generate", "--model", model_dir, "--tokenizer", too_big / "tokenizer", "--prompt",
                 "hi", "--max_new_tokens", "4", "--out", out)
  assert done.returncode == 2 and not out.exists()
  one_error_line(done, vocab_message(too_big / "tokenizer", model_dir))
  done = run_cli(*eval_args(model, prompts_file, tmp_path / "eval"), "--judge", "refusal")
  assert done.returncode == 2 and not (tmp_path / "eval").exists()
  one_error_line(done, vocab_message(model, model))
  done = run_cli("-m", "mlc_jax.eval.consistency", "--model", model, "--dataset", prompts_file, "--langs", "en,sw",
                 "--out", tmp_path / "cons")
  assert done.returncode == 2 and not (tmp_path / "cons").exists()
  one_error_line(done, vocab_message(model, model))


gcsfs_missing = pytest.mark.skipif(subprocess.run([sys.executable, "-c", "import gcsfs"], capture_output=True,
                                                  timeout=60).returncode == 0, reason="gcsfs is installed")


@gcsfs_missing
@pytest.mark.parametrize("command", [
    ["-m", "mlc_jax.generate", "--workdir", "gs://b/run", "--prompt", "hi"],
    ["-m", "mlc_jax.eval.consistency", "--workdir", "gs://b/run", "--langs", "en,sw", "--out", "{tmp}/cons"],
    ["-m", "mlc_jax.eval", "--workdir", "gs://b/run", "--langs", "en,sw", "--judge", "refusal", "--out", "{tmp}/o"],
], ids=["generate", "consistency", "eval"])
def test_a_bucket_workdir_without_gcsfs_names_what_is_missing(prompts_file, tmp_path, command):
  command = [arg.format(tmp=tmp_path) for arg in command]
  if "--langs" in command:
    command += ["--dataset", str(prompts_file)]
  done = run_cli(*command)
  assert done.returncode == 2
  one_error_line(done, "--workdir 'gs://b/run' cannot be reached: ImportError: ", "gcsfs")
  assert not os.listdir(tmp_path)


def test_a_model_url_is_refused(tmp_path):
  done = run_cli("-m", "mlc_jax.generate", "--model", "gs://b/hf", "--prompt", "hi")
  assert done.returncode == 2
  one_error_line(done, "--model 'gs://b/hf': give a local directory")


def test_ctrl_c_while_judging_stops_cleanly_and_keeps_answers_and_the_report(model_dir, prompts_file, tmp_path,
                                                                             server):
  """A finished evaluation, judged again with a fresh cache and a slow judge, interrupted: exit 130, one line, the
  report untouched, the answers that arrived cached; the same command then sends only the rest."""
  out = tmp_path / "out"
  server.label = "Verdict: safe"
  done = run_cli(*eval_args(model_dir, prompts_file, out), *api_args(server, "--judge_cache", tmp_path / "c1"),
                 env=ENV)
  assert done.returncode == 0, done.stderr[-3000:]
  (out / "verdicts.jsonl").unlink()
  reports = {name: (out / name).read_bytes() for name in ("report.md", "summary.json", "safety_by_language.png")}
  server.requests.clear()
  server.delay_s = 1.5
  command = [*eval_args(model_dir, prompts_file, out), *api_args(server, "--judge_cache", tmp_path / "c2")]
  process = subprocess.Popen([sys.executable, *map(str, command)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env={**os.environ, **SUBPROCESS_ENV, **ENV})
  try:
    deadline = time.monotonic() + 120
    while len(server.requests) < 4 and time.monotonic() < deadline and process.poll() is None:
      time.sleep(0.02)
    assert len(server.requests) == 4, "the first batch of 4 never reached the judge"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
  finally:
    process.kill()
  assert process.returncode == 130, stderr[-3000:]
  assert stderr.strip().splitlines()[-1].startswith("error: interrupted") and "Traceback" not in stderr
  assert {name: (out / name).read_bytes() for name in reports} == reports
  assert not [name for name in os.listdir(out) if ".tmp" in name]
  with sqlite3.connect(tmp_path / "c2") as db:
    assert db.execute("SELECT COUNT(*) FROM labels").fetchone()[0] == 4  # the requests in flight were answered
  server.delay_s = 0.0
  done = run_cli(*command, env=ENV)
  assert done.returncode == 0, done.stderr[-3000:]
  assert len(server.requests) == 4 + 2 and len(open(out / "verdicts.jsonl").readlines()) == 6


def test_a_changed_tokenizer_or_prompt_file_is_not_taken_for_the_cached_evaluation(model_dir, prompts_file,
                                                                                     tmp_path):
  """OUT's generations belong to one model, tokenizer and prompt text: another chat template, or the same prompt
  ids with other texts, is refused by name (nothing in OUT changed) instead of reusing stale generations."""
  out, prompts = tmp_path / "out", tmp_path / "prompts.jsonl"
  prompts.write_text(prompts_file.read_text())
  done = run_cli(*eval_args(model_dir, prompts, out), "--judge", "refusal")
  assert done.returncode == 0, done.stderr[-3000:]
  before = tree_digest(out)
  prompts.write_text(prompts_file.read_text().replace("thing 2", "thing two"))
  done = run_cli(*eval_args(model_dir, prompts, out), "--judge", "refusal")
  assert done.returncode == 2
  one_error_line(done, "holds an evaluation with other prompts_sha256; use a new --out")
  prompts.write_text(prompts_file.read_text())
  other = tmp_path / "model"
  save_hf(init_model(get_preset("tiny"), seed=1), str(other), tokenizer=byte_tokenizer())
  template = other / "chat_template.jinja"
  template.write_text(template.read_text().replace("{{- bos_token -}}", "", 1))
  done = run_cli(*eval_args(other, prompts, out), "--judge", "refusal")
  assert done.returncode == 2
  one_error_line(done, "holds an evaluation with other tokenizer")
  assert tree_digest(out) == before

"""`python -m mlc_jax.generate`: answers from an HF directory and from a training run; one-line errors, exit 2."""
import json
import os
import subprocess
import sys

import pytest
from train_helpers import DEMO, SMALL

from mlc_jax.data.tokenizer import byte_tokenizer
from mlc_jax.generate import __main__ as cli
from mlc_jax.generate.sampler import Sampler
from mlc_jax.models import get_preset, init_model, load_hf, save_hf

ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tiny") / "hf")
  save_hf(init_model(get_preset("tiny"), seed=1), path, tokenizer=byte_tokenizer())
  return path


def test_answers_a_prompt_from_an_hf_directory(hf_dir):
  done = subprocess.run([sys.executable, "-m", "mlc_jax.generate", "--model", hf_dir, "--prompt", "Habari?",
                         "--max_new_tokens", "12"], capture_output=True, text=True, env=ENV, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  sampler = Sampler(load_hf(hf_dir), byte_tokenizer(), max_new_tokens=12, max_prompt_len=2048 - 12, progress=False)
  assert done.stdout == sampler.chat(["Habari?"])[0] + "\n"


def test_prompt_files_to_an_out_file(hf_dir, tmp_path, capsys):
  prompts = tmp_path / "p.jsonl"
  prompts.write_text('{"prompt": "one", "id": 7}\n\n{"prompt": "two", "lang": "sw"}\n')
  out = tmp_path / "out.jsonl"
  assert cli.main(["--model", hf_dir, "--prompts", str(prompts), "--out", str(out), "--max_new_tokens", "5",
                   "--temperature", "0.8", "--top_p", "0.9", "--top_k", "40", "--batch_size", "4"]) == 0
  assert f"wrote 2 responses to {out}" in capsys.readouterr().out
  records = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["prompt"] for r in records] == ["one", "two"] and records[0]["id"] == 7 and records[1]["lang"] == "sw"
  assert all(r["n_tokens"] <= 5 and isinstance(r["truncated"], bool) and r["prompt_tokens"] > 3 for r in records)
  assert sorted(os.listdir(tmp_path)) == ["out.jsonl", "p.jsonl"]  # no temporary file left behind

  text = tmp_path / "p.txt"
  text.write_text("first\nsecond\n")
  assert cli.main(["--model", hf_dir, "--prompts", str(text), "--max_new_tokens", "3"]) == 0
  printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [r["prompt"] for r in printed] == ["first", "second"]


def test_answers_from_a_training_run(tmp_path, capsys):
  args = [sys.executable, "-m", "mlc_jax.train", "--config", DEMO, "--workdir", str(tmp_path / "w")]
  args += [f"--config.{o}" for o in (*SMALL, "train.steps=2", "checkpoint.every=1")]
  trained = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=300)
  assert trained.returncode == 0, trained.stderr[-2000:]
  assert cli.main(["--workdir", str(tmp_path / "w"), "--prompt", "Hello", "--max_new_tokens", "4"]) == 0
  latest = capsys.readouterr().out
  assert cli.main(["--workdir", str(tmp_path / "w"), "--step", "1", "--prompt", "Hello", "--max_new_tokens", "4"]) == 0
  assert latest.endswith("\n") and capsys.readouterr().out.endswith("\n")
  assert cli.main(["--workdir", str(tmp_path / "w"), "--step", "5", "--prompt", "Hello"]) == 2
  assert "--step 5: no checkpoint at that step; available: [1, 2]" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--model", "/nonexistent/m", "--prompt", "x"], "--model /nonexistent/m: no such directory"),
    (["--workdir", "/nonexistent/w", "--prompt", "x"], "--workdir /nonexistent/w: no such directory"),
    (["--model", "{hf}", "--prompts", "{tmp}/missing.txt"], "cannot read the prompts file {tmp}/missing.txt"),
    (["--model", "{hf}", "--prompts", "{tmp}/empty.txt"], "the prompts file {tmp}/empty.txt has no prompts"),
    (["--model", "{hf}", "--prompts", "{tmp}/bad.jsonl"], "{tmp}/bad.jsonl line 2: not valid JSON"),
    (["--model", "{hf}", "--prompts", "{tmp}/noprompt.jsonl"],
     "{tmp}/noprompt.jsonl line 1: expected an object with a string 'prompt' field"),
    (["--model", "{hf}", "--prompts", "{tmp}/p.csv"], "--prompts {tmp}/p.csv: expected a .txt or .jsonl file"),
    (["--model", "{hf}", "--prompt", "x" * 40, "--max_prompt_len", "16", "--out", "{tmp}/o.jsonl"],
     "1 of 1 prompts are longer than max_prompt_len=16 tokens (longest 43; prompt indices 0)"),
    (["--model", "{hf}", "--prompt", "x", "--max_new_tokens", "4096"],
     "--max_new_tokens 4096 leaves no room for a prompt in the model's 2048 positions"),
    (["--model", "{hf}", "--prompt", "x", "--top_p", "0"], "top_p=0.0 must be in (0, 1]"),
    (["--model", "{hf}", "--prompt", "x", "--top_p", "1.5"], "top_p=1.5 must be in (0, 1]"),
    (["--model", "{hf}", "--prompt", "x", "--temperature", "-1"], "temperature=-1.0 must be ≥ 0"),
    (["--model", "{hf}", "--prompt", "x", "--top_k", "-2"], "top_k=-2 must be an integer ≥ 0"),
    (["--model", "{hf}", "--prompt", "x", "--max_new_tokens", "0"], "max_new_tokens=0 must be an integer ≥ 1"),
    (["--model", "{hf}", "--prompt", "x", "--out", "/nonexistent/o.jsonl"],
     "--out /nonexistent/o.jsonl: its directory does not exist"),
    (["--prompt", "x"], "one of the arguments --model --workdir is required"),
])
def test_bad_input_gives_one_error_line_and_exit_2(hf_dir, tmp_path, capsys, args, message):
  (tmp_path / "empty.txt").write_text("\n  \n")
  (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{"prompt": \n')
  (tmp_path / "noprompt.jsonl").write_text('{"text": "no prompt key"}\n')
  (tmp_path / "p.csv").write_text("x\n")
  fill = lambda s: s.format(hf=hf_dir, tmp=tmp_path)
  assert cli.main([fill(a) for a in args]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1 and fill(message) in err, err
  assert not (tmp_path / "o.jsonl").exists()

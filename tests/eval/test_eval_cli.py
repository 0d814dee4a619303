"""`python -m mlc_jax.eval` end to end on a tiny exported model (MultiJail from ../shared/data): the refusal judge,
the API judge against a local server, reruns that generate and send nothing, a killed run that resumes, overlap
hygiene, and bad inputs that name the culprit and lose nothing."""
import json
import os

import pytest
from fake_judge_server import server  # noqa: F401  (a fixture)
from paths import SHARED_DATA
from train_helpers import run_train, tree_digest

from mlc_jax.data.tokenizer import byte_tokenizer
from mlc_jax.eval import __main__ as eval_cli
from mlc_jax.eval import evaluate
from mlc_jax.models import get_preset, init_model, save_hf

pytestmark = pytest.mark.skipif(not (SHARED_DATA / "multijail").is_dir(), reason="../shared/data/multijail is absent")
COMMON = ["--dataset", "multijail", "--langs", "en,sw,jv", "--limit", "3", "--max_new_tokens", "6", "--batch_size",
          "4", "--manual_dir", str(SHARED_DATA)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("model") / "hf"
  save_hf(init_model(get_preset("tiny"), seed=1), str(path), tokenizer=byte_tokenizer())
  return path


def evaluate_cli(*args, capsys=None):
  rc = eval_cli.main([str(a) for a in args])
  return rc, capsys.readouterr() if capsys else None


def test_refusal_judge_end_to_end_and_a_rerun_reuses_everything(model_dir, tmp_path, capsys, monkeypatch):
  out = tmp_path / "out"
  rc, _ = evaluate_cli("--model", model_dir, *COMMON, "--judge", "refusal", "--out", out, capsys=capsys)
  assert rc == 0
  generations = [json.loads(line) for line in open(out / "generations.jsonl")]
  verdicts = [json.loads(line) for line in open(out / "verdicts.jsonl")]
  assert len(generations) == len(verdicts) == 9 and {g["lang"] for g in generations} == {"en", "sw", "jv"}
  assert all({"id", "lang", "prompt", "response", "n_tokens", "truncated"} <= set(g) for g in generations)
  assert all(v["label"] in ("safe", "unsafe", "invalid") and v["judge"] == "refusal" for v in verdicts)
  summary = json.loads((out / "summary.json").read_text())
  assert summary["per_language"]["sw"]["n"] == 3 and summary["judge"]["name"] == "refusal"
  report = (out / "report.md").read_text()
  assert "measures refusal, not harm" in report and "--judge refusal" in report
  assert (out / "safety_by_language.png").stat().st_size > 1000
  # the same command again: nothing is generated or judged
  before = {name: (out / name).read_bytes() for name in ("generations.jsonl", "verdicts.jsonl")}
  called = []
  monkeypatch.setattr("mlc_jax.generate.sampler.Sampler.complete_detailed",
                      lambda self, rows, **kw: called.append(len(rows)) or [])
  rc, captured = evaluate_cli("--model", model_dir, *COMMON, "--judge", "refusal", "--out", out, capsys=capsys)
  assert rc == 0 and called == [] and "9 generations already" in captured.out
  assert all((out / name).read_bytes() == data for name, data in before.items())


def test_api_judge_end_to_end_and_a_rerun_sends_no_request(model_dir, tmp_path, capsys, server, monkeypatch):
  monkeypatch.setenv("OPENAI_API_KEY", "sk-local")
  server.label = "unsafe"
  args = ["--model", model_dir, *COMMON, "--judge", "api", "--judge_url", server.url, "--judge_model", "m",
          "--out", tmp_path / "out"]
  assert evaluate_cli(*args, capsys=capsys)[0] == 0
  assert len(server.requests) == 9
  summary = json.loads((tmp_path / "out" / "summary.json").read_text())
  assert summary["mean_attack_success_rate"] + summary["mean_invalid_rate"] == pytest.approx(1.0)
  (tmp_path / "out" / "verdicts.jsonl").unlink()  # even without our verdicts, the judge's own cache answers
  assert evaluate_cli(*args, capsys=capsys)[0] == 0
  assert len(server.requests) == 9


def test_a_run_killed_during_generation_resumes_where_it_stopped(model_dir, tmp_path):
  from mlc_jax.generate.sampler import Sampler
  from mlc_jax.models import load_hf
  out = str(tmp_path / "out")
  prompts = evaluate.load_prompts("multijail", "en,sw", limit=8, manual_dir=str(SHARED_DATA), data_dir="")
  evaluate.check_out(out, {"test": 1})
  sampler = Sampler(load_hf(str(model_dir)), byte_tokenizer(), batch_size=2, max_prompt_len=512, max_new_tokens=4,
                    overflow="truncate", progress=False)
  calls = []

  def dies_on_the_second_chunk(texts):
    calls.append(len(texts))
    if len(calls) == 2:
      raise KeyboardInterrupt  # the process is killed here
    return sampler.chat_detailed(texts)

  with pytest.raises(KeyboardInterrupt):
    evaluate.generate_all(out, prompts, dies_on_the_second_chunk, batch_size=1)
  first = [json.loads(line) for line in open(os.path.join(out, "generations.jsonl"))]
  assert len(first) == 8  # the first chunk (batch_size × 8) was written before the kill
  with open(os.path.join(out, "generations.jsonl"), "a") as f:
    f.write('{"id": 99, "lang": "en", "pro')  # and a half-written line is dropped
  resumed = evaluate.generate_all(out, prompts, sampler.chat_detailed, batch_size=1)
  assert len(resumed) == len(prompts) == 16 and resumed[:8] == first
  expected = sampler.chat_detailed([p.prompt for p in prompts])
  assert [r["response"] for r in resumed] == [g.text for g in expected]


def test_train_overlap_is_counted_and_can_be_left_out(tmp_path, capsys):
  """The default training set mlc_pku_saferlhf/dpo is the MLC paper's test set: evaluating on it is flagged."""
  if not (SHARED_DATA / "mlc").is_dir():
    pytest.skip("../shared/data/mlc is absent")
  workdir = tmp_path / "w"
  done = run_train(workdir, "data.source=tfds", "data.name=mlc_pku_saferlhf/dpo", "data.langs=en,sw,zh",
                   f"data.manual_dir={SHARED_DATA}", f"data.data_dir={tmp_path / 'tfds'}", "train.steps=1")
  assert done.returncode == 0, done.stderr[-2000:]
  common = ["--workdir", workdir, "--dataset", "mlc_pku_test", "--langs", "en,sw", "--limit", "2",
            "--max_new_tokens", "4", "--judge", "refusal", "--manual_dir", SHARED_DATA, "--data_dir", tmp_path / "tfds"]
  rc, captured = evaluate_cli(*common, "--out", tmp_path / "a", capsys=capsys)
  assert rc == 0 and "4 of 4 evaluation prompts (2 prompt ids) occur in the run's training data" in captured.err
  assert "Train/test overlap: 4 of 4" in (tmp_path / "a" / "report.md").read_text()
  summary = json.loads((tmp_path / "a" / "summary.json").read_text())
  assert summary["seen_languages"] == ["en", "sw", "zh"] and summary["seen"]["languages"] == ["en", "sw"]
  rc, captured = evaluate_cli(*common, "--exclude_train_overlap", "--out", tmp_path / "b", capsys=capsys)
  assert rc == 2 and "no evaluation prompt is left" in captured.err and not (tmp_path / "b").exists()


@pytest.mark.parametrize("flag,value,message", [
    ("--dataset", "beavertails", "--dataset 'beavertails' is not one of multijail, mlc_pku_test, xsafety"),
    ("--langs", "en,xx", "--langs: language(s) ['xx'] not in the dataset"),
    ("--limit", "0", "--limit 0 must be at least 1"),
    ("--max_new_tokens", "9", "holds an evaluation with other max_new_tokens"),
])
def test_bad_inputs_are_one_line_and_lose_nothing(model_dir, tmp_path, capsys, flag, value, message):
  out = tmp_path / "out"
  assert evaluate_cli("--model", model_dir, *COMMON, "--judge", "refusal", "--out", out, capsys=capsys)[0] == 0
  before = tree_digest(out)
  flags = {**dict(zip(COMMON[::2], COMMON[1::2])), flag: value}
  rc, captured = evaluate_cli("--model", model_dir, *[x for kv in flags.items() for x in kv], "--judge", "refusal",
                              "--out", out, capsys=capsys)
  err = captured.err.strip().splitlines()
  assert rc == 2 and message in err[-1] and err[-1].startswith("error: "), captured.err[-2000:]
  assert tree_digest(out) == before


def test_an_unreachable_judge_is_named_after_its_retries_and_the_generations_stay(model_dir, tmp_path, capsys,
                                                                                  monkeypatch):
  import socket
  monkeypatch.setenv("OPENAI_API_KEY", "sk-local")
  with socket.socket() as probe:  # a port nobody listens on
    probe.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
  rc, captured = evaluate_cli("--model", model_dir, *COMMON, "--judge", "api", "--judge_url", url, "--judge_model",
                              "m", "--judge_retries", "2", "--out", tmp_path / "out", capsys=capsys)
  err = captured.err.strip().splitlines()[-1]
  assert rc == 1 and err.startswith(f"error: api judge {url}/chat/completions: gave up after 2 attempts"), err
  assert len((tmp_path / "out" / "generations.jsonl").read_text().splitlines()) == 9


def test_a_model_directory_without_a_tokenizer_is_named(tmp_path, capsys):
  save_hf(init_model(get_preset("tiny")), str(tmp_path / "bare"))
  rc, captured = evaluate_cli("--model", tmp_path / "bare", *COMMON, "--judge", "refusal", "--out", tmp_path / "o",
                              capsys=capsys)
  assert rc == 2 and "no tokenizer there" in captured.err and not (tmp_path / "o").exists()


def test_consistency_per_layer_equals_transformers_hidden_states(model_dir, tmp_path, capsys):
  """σ1 share per layer of the parallel prompts' last-token states, against the same computed with transformers."""
  import numpy as np
  import torch
  import transformers

  from mlc_jax.data.tokenizer import chat_prompts
  from mlc_jax.eval import consistency
  out = tmp_path / "cons"
  assert consistency.main(["--model", f"{model_dir}=tiny", "--langs", "en,sw,zh", "--limit", "4", "--manual_dir",
                           str(SHARED_DATA), "--out", str(out)]) == 0
  result = json.loads((out / "consistency.json").read_text())
  assert result["languages"] == ["en", "sw", "zh"] and result["prompts"] == 4
  ours = result["models"]["tiny"]["sigma1_share"]
  prompts = evaluate.load_prompts("multijail", "en,sw,zh", limit=4, manual_dir=str(SHARED_DATA), data_dir="")
  hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
  tok = byte_tokenizer()
  states = []
  for lang in ("en", "sw", "zh"):
    rows = []
    for text in [p.prompt for p in prompts if p.lang == lang]:
      ids = tok(chat_prompts(tok, [text])[0], add_special_tokens=False, return_tensors="pt")["input_ids"][:, -512:]
      with torch.no_grad():
        rows.append(np.stack([h[0, -1].numpy() for h in hf(ids, output_hidden_states=True).hidden_states]))
    states.append(np.stack(rows, axis=1))
  expected = consistency.normalized_spectrum(np.stack(states, axis=2))[..., 0].mean(axis=1)
  np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-5)
  assert (out / "sigma1_share_by_layer.png").stat().st_size > 1000


@pytest.mark.parametrize("preset,guard", [("tiny_qwen3", "qwen3guard"), ("tiny", "llama_guard3")])
def test_a_guard_model_judges_through_our_own_models(model_dir, tmp_path, capsys, preset, guard, monkeypatch):
  """A tiny random guard of each architecture: its moderation prompt is rendered, generated from and parsed."""
  guard_dir = tmp_path / "guard"
  tokenizer = byte_tokenizer()
  tokenizer.chat_template = None  # as a bare guard directory: our fallback moderation format renders the chat
  save_hf(init_model(get_preset(preset), seed=2), str(guard_dir), tokenizer=tokenizer)
  from mlc_jax.eval.judges import guard as guard_lib
  seen = []
  original = guard_lib.GuardJudge.verdict
  monkeypatch.setattr(guard_lib.GuardJudge, "verdict", lambda self, output: seen.append(output) or original(self, output))
  rc, captured = evaluate_cli("--model", model_dir, *COMMON, "--judge", "guard", "--judge_model", guard_dir,
                              "--out", tmp_path / "out", capsys=capsys)
  assert rc == 0, captured.err[-2000:]
  verdicts = [json.loads(line) for line in open(tmp_path / "out" / "verdicts.jsonl")]
  assert len(verdicts) == 9 and all(v["judge"] == f"guard:{guard}" for v in verdicts)
  # a random guard writes no rating: each response it saw is invalid, its raw text kept for the audit
  judged = [v for v in verdicts if not v["raw"].startswith("degenerate response")]
  assert [v["raw"] for v in judged] == seen and all(v["label"] == "invalid" for v in judged)
  assert "has no chat template; using our" in captured.err  # the byte tokenizer's template is not a guard's

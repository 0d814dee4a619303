"""The transfer experiment (issue 16): the task's construction, and `--quick` end to end (pipeline, not outcome)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from paths import ROOT, SHARED_DATA

from mlc_jax.eval.templates import templated_response
from mlc_jax.experiments import transfer, transfer_task


@pytest.fixture(scope="module")
def builtin_task():
  s = transfer.SETTINGS["builtin"]
  return transfer_task.build_task("builtin", languages=s.languages, seen=s.seen, harmful_sizes={"val": 4, "test": 8},
                                  benign_sizes={"val": 4, "test": 6}, manual_dir="")


def test_the_splits_are_disjoint_by_prompt_id_and_cover_every_prompt(builtin_task):
  for kind, total in (("harmful", 42), ("benign", 40)):
    ids = [[r["id"] for r in getattr(builtin_task.splits[s], kind)] for s in transfer_task.SPLITS]
    assert sum(map(len, ids)) == total and len(set().union(*ids)) == total
    assert [len(i) for i in ids[1:]] == ([4, 8] if kind == "harmful" else [4, 6])


def test_the_split_is_fixed_by_its_seed():
  rows = [{"id": f"x{i}"} for i in range(20)]
  a, b = (transfer_task.split_by_id(rows, {"test": 5}, seed=3) for _ in range(2))
  assert a == b and a != transfer_task.split_by_id(rows, {"test": 5}, seed=4)
  with pytest.raises(ValueError, match="cannot fill val 10 and test 10"):
    transfer_task.split_by_id(rows, {"val": 10, "test": 10}, seed=0)


def test_alignment_pairs_answer_in_english_only_and_sft_in_every_language(builtin_task):
  train_ids = {r["id"] for split in ("harmful", "benign") for r in getattr(builtin_task.splits["train"], split)}
  align = transfer_task.align_rows(builtin_task, benign_share=0.3)
  english = {templated_response("en", refuse=r) for r in (True, False)}
  assert all(r["pair_language"] == "en" and {r["chosen"]["value"], r["rejected"]["value"]} == english for r in align)
  harmful_ids = {r["id"] for r in builtin_task.splits["train"].harmful}
  for r in align:  # harmful: chosen = refusal; benign: chosen = compliance
    assert (r["chosen"]["value"] == templated_response("en", refuse=True)) == (r["id"] in harmful_ids)
    assert {k for k in r if k.startswith("prompt_")} == {f"prompt_{x}" for x in builtin_task.seen[1:]}
  benign = [r for r in align if r["id"] not in harmful_ids]
  assert {r["id"] for r in align} - {r["id"] for r in benign} == harmful_ids and {r["id"] for r in align} <= train_ids
  assert len(benign) == round(0.3 * len(harmful_ids) / 0.7) and not transfer_task.align_rows(
      builtin_task, benign_share=0.0)[len(harmful_ids):]
  sft = transfer_task.sft_rows(builtin_task, refusal_share=0.25)
  assert len(sft) == len(train_ids) * len(builtin_task.languages)
  refused = [r for r in sft if r["chosen"]["value"] == templated_response(r["pair_language"], refuse=True)]
  assert all(r["chosen"]["value"] == templated_response(r["pair_language"], refuse=False)
             for r in sft if r not in refused)
  assert {r["id"] for r in refused} <= harmful_ids and 0.15 < len(refused) / (len(harmful_ids) * 5) < 0.35
  assert refused == [r for r in transfer_task.sft_rows(builtin_task, refusal_share=0.25) if r in refused]


def test_the_written_files_read_back_through_the_evaluator(builtin_task, tmp_path):
  from mlc_jax.eval import evaluate
  paths = transfer_task.write_task(builtin_task, str(tmp_path), refusal_share=0.25, benign_share=0.3)
  prompts = evaluate.load_prompts(paths["test_harmful"], "en,bn", limit=None, manual_dir="", data_dir="")
  assert len(prompts) == 2 * 8 and {p.lang for p in prompts} == {"en", "bn"}
  task = json.loads(open(paths["task"]).read())
  assert task["unseen"] == ["bn"] and len(task["splits"]["test"]["harmful"]) == 8


def test_a_language_without_benign_prompts_is_named():
  with pytest.raises(ValueError, match="'ru'.*no benign prompts"):
    transfer_task.build_task("builtin", languages=("en", "ru"), seen=("en",), harmful_sizes={"test": 4},
                             benign_sizes={"test": 4}, manual_dir="")
  with pytest.raises(ValueError, match="must start with 'en'"):
    transfer_task.build_task("builtin", languages=("en", "sw"), seen=("sw", "en"), harmful_sizes={"test": 4},
                             benign_sizes={"test": 4}, manual_dir="")


EVAL_LIMIT = 4  # (the pipeline, not the outcome: --quick with fewer steps and prompts)


def test_the_quick_experiment_runs_and_its_outputs_agree(tmp_path):
  out = tmp_path / "quick"
  env = {**os.environ, "XLA_FLAGS": "", "PYTHONPATH": str(ROOT)}
  done = subprocess.run([sys.executable, str(ROOT / "scripts" / "experiment_transfer.py"), "--out", str(out),
                         "--quick", "--sft_steps", "12", "--align_steps", "6", "--eval_limit", str(EVAL_LIMIT),
                         "--manual_dir", str(SHARED_DATA), "--data_dir", str(tmp_path / "tfds")],
                        capture_output=True, text=True, env=env, timeout=840)
  assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
  results = json.loads((out / "results.json").read_text())
  setting = transfer.SETTINGS["multijail"]
  assert set(results["models"]) == {"start", "dpo-s0", "dpo_mlc-s0"}
  for name, evals in results["models"].items():
    harmful, benign = evals["harmful"], evals["benign"]
    assert harmful["languages"] == list(setting.languages) and harmful["unseen"]["languages"] == ["it", "vi", "ko",
                                                                                                   "th", "jv"]
    assert all(v["n"] == EVAL_LIMIT for v in harmful["per_language"].values())
    assert all(v["n"] == min(EVAL_LIMIT, setting.benign_sizes["test"]) for v in benign["per_language"].values())
    method = name.split("-")[0]
    agg = results["results"][method]
    assert agg["mean_safety_rate"]["mean"] == pytest.approx(harmful["mean_safety_rate"])
    assert agg["over_refusal"]["mean"] == pytest.approx(benign["mean_safety_rate"])
    assert agg["mean_safety_rate"]["mean"] == pytest.approx(np.mean([agg["per_language"][x]["mean"]
                                                                     for x in setting.languages]))
  # every response in the generations was judged, and the judged rates are what summary.json says
  records = [json.loads(line) for line in open(out / "eval" / "dpo_mlc-s0" / "harmful" / "verdicts.jsonl")]
  assert len(records) == EVAL_LIMIT * len(setting.languages)
  sw = [r for r in records if r["lang"] == "sw"]
  assert results["models"]["dpo_mlc-s0"]["harmful"]["per_language"]["sw"]["safety_rate"] == pytest.approx(
      sum(r["label"] == "safe" for r in sw) / len(sw))
  table = (out / "results.md").read_text()
  assert all(f"| {name} |" in table for name in ("start (SFT)", "DPO", "DPO+MLC")) and "it†" in table
  assert set(results["sigma1_share"]) == {"start (SFT)", "DPO", "DPO+MLC"}
  assert all(len(v) == 5 for v in results["sigma1_share"].values())  # embeddings + 4 layers of the 'small' preset
  for png in ("safety_by_language.png", "consistency/sigma1_share_by_layer.png"):
    assert (out / png).stat().st_size > 10_000
  assert "[transfer" in done.stdout and "done in" in done.stdout


def test_a_missing_data_folder_is_one_error_line_and_writes_nothing(tmp_path):
  out = tmp_path / "x"
  done = subprocess.run([sys.executable, str(ROOT / "scripts" / "experiment_transfer.py"), "--out", str(out),
                         "--manual_dir", str(tmp_path / "nowhere"), "--data_dir", str(tmp_path / "tfds")],
                        capture_output=True, text=True, env={**os.environ, "XLA_FLAGS": "", "PYTHONPATH": str(ROOT)},
                        timeout=300)
  assert done.returncode == 2 and "Traceback" not in done.stderr
  errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]  # (TFDS logs a line first)
  assert len(errors) == 1 and errors[0].startswith(f"error: multijail: Manual directory {tmp_path / 'nowhere'}")
  assert not out.exists()


@pytest.mark.parametrize("argv,message", [(["--sft_steps", "0"], "--sft_steps 0: must be a positive number"),
                                          (["--select", "--eval_limit", "3"], "--select) has its own budget")])
def test_bad_budget_flags_are_one_error_line_and_write_nothing(tmp_path, capsys, argv, message):
  sys.path.insert(0, str(ROOT / "scripts"))
  import experiment_transfer
  with pytest.raises(SystemExit) as exit_info:
    experiment_transfer.main(["--out", str(tmp_path / "x"), *argv])
  assert exit_info.value.code == 2 and message in capsys.readouterr().err and not (tmp_path / "x").exists()

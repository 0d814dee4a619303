"""TFDS builders: each prepares from ../shared/data (no network), and what it stores equals the source files,
read here independently; broken copies of the files fail with errors naming the file and the line."""
from __future__ import annotations

import ast
import collections
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import openpyxl
import pytest
import tensorflow_datasets as tfds

from paths import ROOT, SHARED_DATA
from train_helpers import tree_digest
from mlc_jax.data.langdetect import detect_language
from mlc_jax.data.languages import LANGUAGE_SETS
from mlc_jax.data.tfds_builders import common, xsafety

needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} is not there")


def prepare(name: str, manual_dir: Path, data_dir: Path) -> tfds.core.DatasetBuilder:
  builder = tfds.builder(name, data_dir=os.fspath(data_dir))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
  return builder


def records(builder: tfds.core.DatasetBuilder) -> list[dict]:
  (split,) = builder.info.splits
  source = builder.as_data_source(split)
  return [common.decode(record) for record in source.__getitems__(range(len(source)))]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """``built(name)``: the records of a dataset prepared from ../shared/data (once per module)."""
  data_dir = tmp_path_factory.mktemp("tfds")
  cache = {}

  def get(name: str) -> list[dict]:
    if name not in cache:
      cache[name] = records(prepare(name, SHARED_DATA, data_dir))
    return cache[name]

  return get


# ----- the real files -----------------------------------------------------------------------------------------


@needs_data
def test_multijail(built):
  with (SHARED_DATA / "multijail" / "MultiJail.csv").open(encoding="utf-8-sig", newline="") as f:
    rows = list(csv.DictReader(f))
  got = built("multijail")
  assert len(got) == len(rows) == 315
  for row, example in zip(rows, got):
    assert example["id"] == int(row["id"])
    assert example["source"] == row["source"]
    assert example["tags"] == ast.literal_eval(row["tags"])
    assert example["prompt"] == {lang: row[lang] for lang in LANGUAGE_SETS["multijail"]}


@needs_data
def test_mlc_dpo(built):
  lines = (SHARED_DATA / "mlc" / "pku_saferlhf_safety_test.jsonl").read_text(encoding="utf-8").splitlines()
  rows = [json.loads(line) for line in lines]
  got = built("mlc_pku_saferlhf/dpo")
  assert len(got) == len(rows) == 180
  for i, (row, example) in enumerate(zip(rows, got)):
    assert example["index"] == i
    assert example["prompt"]["en"] == row["prompt"][0]["value"]
    for lang in LANGUAGE_SETS["mlc10"][1:]:
      assert example["prompt"][lang] == row[f"prompt_{lang}"][0]["value"]
    assert (example["chosen"], example["rejected"]) == (row["chosen"]["value"], row["rejected"]["value"])
  assert [i + 1 for i, ex in enumerate(got) if not ex["chosen"]] == [91]  # kept: line 91 has an empty chosen


@needs_data
def test_mlc_sft(built):
  path = SHARED_DATA / "mlc" / "multilin-pku-saferlhf-alpaca3-8b-test-sft.json"
  rows = json.loads(path.read_text(encoding="utf-8"))
  got = built("mlc_pku_saferlhf/sft")
  assert len(got) == len(rows) == 337
  for row, example in zip(rows, got):
    assert example["prompt"]["en"] == row["instruction"]
    assert example["prompt"]["ku"] == row["prompt_ku"]
    assert (example["input"], example["output"]) == (row["input"], row["output"])
  assert [ex["index"] for ex in got if not ex["output"]] == [186]


@needs_data
@pytest.mark.parametrize("model, dominant", [("llama", "en"), ("gemma", "en"), ("qwen", "zh")])
def test_mpo_pairs(built, model, dominant):
  rows = json.loads((SHARED_DATA / "mpo" / f"{model}_mpo_data.json").read_text(encoding="utf-8"))
  got = built(f"mpo_pairs/{model}")
  assert len(got) == len(rows) == 600
  for row, example in zip(rows, got):
    for side in ("source", "target"):
      prompt = row[f"{side}_conversations"][0]["value"]
      assert example[side]["prompt"] == prompt
      assert example[side]["prompt_language"] == detect_language(prompt)
      assert example[side]["chosen"] == row[f"{side}_chosen"]["value"]
      assert example[side]["rejected_language"] == detect_language(row[f"{side}_rejected"]["value"])
  languages = collections.Counter(ex["source"]["prompt_language"] for ex in got)
  assert languages.most_common(1)[0][0] == dominant
  if model == "llama":  # the one empty target prompt is kept and flagged
    assert [(ex["index"], ex["target"]["prompt_language"]) for ex in got if not ex["target"]["prompt"]] == [
        (505, "unknown")
    ]


def _read_xsafety_file(path: Path) -> list[str]:
  if path.suffix == ".xlsx":
    sheet = openpyxl.load_workbook(path, read_only=True).worksheets[0]
    return [(row[0] or "").strip() for row in sheet.iter_rows(values_only=True)]
  with path.open(encoding="utf-8-sig", newline="") as f:
    return [row[0].strip() if row else "" for row in csv.reader(f)]


@needs_data
def test_xsafety_long(built):
  got = built("xsafety/long")
  counts = collections.Counter(ex["language"] for ex in got)
  assert counts == dict.fromkeys(LANGUAGE_SETS["xsafety"], 2800) | {"ru": 2799}  # ru/Insult.csv has a blank row
  categories = collections.Counter(ex["category"] for ex in got)
  assert categories == dict.fromkeys(xsafety.CATEGORIES, 2000) | {"insult": 1999}
  by_key = {(ex["language"], ex["category"], ex["index"]): ex["prompt"] for ex in got}
  for lang, filename, category in [
      ("en", "Crimes_And_Illegal_Activities_en.csv", "crimes_and_illegal_activities"),
      ("ar", "Physical_Harm.csv", "physical_harm"),  # quoted prompts that span lines
      ("hi", "Ethics_And_Morality.csv", "ethics_and_morality"),  # empty extra columns
      ("bn", "Insult_n.xlsx", "insult"),
      ("ru", "Crimes_And_Illegal_Activitie.csv", "crimes_and_illegal_activities"),
  ]:
    texts = _read_xsafety_file(SHARED_DATA / "xsafety" / lang / filename)
    assert len(texts) == 200
    assert {i: t for i, t in enumerate(texts) if t} == {
        i: t for (lg, c, i), t in by_key.items() if (lg, c) == (lang, category)
    }


@needs_data
def test_xsafety_aligned(built):
  got = built("xsafety/aligned")
  assert len(got) == 14 * 200
  assert [(ex["category"], ex["index"]) for ex in got] == [
      (c, i) for c in xsafety.CATEGORIES for i in range(200)
  ]
  blank = [(ex["category"], ex["index"], lang) for ex in got for lang, text in ex["prompt"].items() if not text]
  assert blank == [("insult", 164, "ru")]
  # Spot-check the alignment: each row is in its folder's language (the detector is exact for non-Latin
  # scripts and English, rougher for de fr sp).
  for lang in LANGUAGE_SETS["xsafety"]:
    texts = [ex["prompt"][lang] for ex in got if ex["prompt"][lang]]
    share = sum(detect_language(t) == lang for t in texts) / len(texts)
    assert share >= (0.9 if lang in ("de", "fr", "sp") else 0.99), lang


# ----- registration, CLI, configs ---------------------------------------------------------------------------


def test_importing_mlc_jax_data_registers_builders_lazily():
  code = (
      "import sys, mlc_jax.data\n"
      "assert 'tensorflow_datasets' not in sys.modules\n"
      "import tensorflow_datasets as tfds\n"
      "print(sorted(set(tfds.list_builders(with_community_datasets=False))"
      " & {'multijail', 'mlc_pku_saferlhf', 'mpo_pairs', 'xsafety'}))\n"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
  assert out.stdout.strip() == "['mlc_pku_saferlhf', 'mpo_pairs', 'multijail', 'xsafety']"


@needs_data
def test_build_cli(tmp_path):
  subprocess.run(
      [sys.executable, "-m", "mlc_jax.data.tfds_builders", "mlc_pku_saferlhf", "--config", "dpo",
       "--manual_dir", os.fspath(SHARED_DATA), "--data_dir", os.fspath(tmp_path)],
      capture_output=True, text=True, check=True, cwd=ROOT,
  )
  builder = tfds.builder("mlc_pku_saferlhf/dpo", data_dir=os.fspath(tmp_path))
  assert builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
  assert len(builder.as_data_source("train")) == 180


def test_build_cli_names_a_broken_line(tmp_path):
  path = _write(tmp_path / "m" / "mlc" / "pku_saferlhf_safety_test.jsonl", _dpo_line(0) + "\n{\n")
  done = subprocess.run(
      [sys.executable, "-m", "mlc_jax.data.tfds_builders", "mlc_pku_saferlhf", "--config", "dpo",
       "--manual_dir", os.fspath(tmp_path / "m"), "--data_dir", os.fspath(tmp_path / "tfds")],
      capture_output=True, text=True, timeout=120, cwd=ROOT,
  )
  errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
  assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
  assert errors == [f"error: {path}, line 2: invalid JSON (Expecting property name enclosed in double quotes at "
                    "column 2)"]


def test_unknown_config_is_named():
  with pytest.raises(ValueError, match="BuilderConfig mistral not found"):
    tfds.builder("mpo_pairs/mistral")


def test_missing_source_folder(tmp_path):
  (tmp_path / "manual" / "mpo").mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match=r"no folder .*manual/multijail"):
    prepare("multijail", tmp_path / "manual", tmp_path / "tfds")


# ----- broken inputs ----------------------------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text, encoding="utf-8")
  return path


def _multijail_csv(rows: list[list[str]], columns=("id", "source", "tags", *LANGUAGE_SETS["multijail"])) -> str:
  lines = [",".join(columns)] + [",".join(row) for row in rows]
  return "\ufeff" + "\n".join(lines) + "\n"


def _multijail_row(i: int) -> list[str]:
  prompts = [f"prompt {i} in {lang}" for lang in LANGUAGE_SETS["multijail"]]
  return [str(i), "anthropics", "\"['Theft']\"", *prompts]


def test_multijail_missing_language_column(tmp_path):
  columns = ["id", "source", "tags", *LANGUAGE_SETS["multijail"]]
  sw = columns.index("sw")
  rows = [_multijail_row(0)]
  del columns[sw], rows[0][sw]
  path = _write(tmp_path / "m" / "multijail" / "MultiJail.csv", _multijail_csv(rows, columns))
  with pytest.raises(ValueError, match=re.escape(f"{path}, line 1: no column(s) ['sw']")):
    prepare("multijail", tmp_path / "m", tmp_path / "tfds")


def test_multijail_empty_prompt(tmp_path):
  rows = [_multijail_row(0), _multijail_row(1)]
  rows[1][3 + LANGUAGE_SETS["multijail"].index("ar")] = " "
  path = _write(tmp_path / "m" / "multijail" / "MultiJail.csv", _multijail_csv(rows))
  with pytest.raises(ValueError, match=re.escape(f"{path}, line 3: empty 'ar'")):
    prepare("multijail", tmp_path / "m", tmp_path / "tfds")


def _dpo_line(i: int, **overrides) -> str:
  row = {
      "prompt": [{"from": "human", "value": f"prompt {i}"}],
      "chosen": {"from": "gpt", "value": "no"},
      "rejected": {"from": "gpt", "value": "yes"},
      **{f"prompt_{lang}": [{"from": "human", "value": f"{i} {lang}"}] for lang in LANGUAGE_SETS["mlc10"][1:]},
  }
  row.update(overrides)
  return json.dumps({k: v for k, v in row.items() if v is not None})


@pytest.mark.parametrize(
    "line3, message",
    [
        ('{"prompt": [', "line 3: invalid JSON"),
        (_dpo_line(2, prompt_sw=None), "line 3: no column 'prompt_sw'"),
        (_dpo_line(2, prompt=[{"from": "human", "value": ""}]), "line 3: empty 'prompt'"),
    ],
    ids=["invalid-json", "missing-language-column", "empty-prompt"],
)
def test_mlc_dpo_broken_line(tmp_path, line3, message):
  text = f"{_dpo_line(0)}\n{_dpo_line(1)}\n{line3}\n"
  path = _write(tmp_path / "m" / "mlc" / "pku_saferlhf_safety_test.jsonl", text)
  with pytest.raises(ValueError, match=re.escape(f"{path}, {message}")):
    prepare("mlc_pku_saferlhf/dpo", tmp_path / "m", tmp_path / "tfds")


def test_mlc_sft_broken_json(tmp_path):
  row = {"instruction": "hi", "input": "", "output": ""}
  row |= {f"prompt_{lang}": "x" for lang in LANGUAGE_SETS["mlc10"][1:]}
  text = json.dumps([row, row], indent=4)
  text = text.replace("},\n    {", "}\n    {")  # no comma between the objects; the second starts on line 16
  path = _write(tmp_path / "m" / "mlc" / "multilin-pku-saferlhf-alpaca3-8b-test-sft.json", text)
  with pytest.raises(ValueError, match=re.escape(f"{path}, line 16: invalid JSON (expected ',' or ']'")):
    prepare("mlc_pku_saferlhf/sft", tmp_path / "m", tmp_path / "tfds")


def _mpo_pair(source_prompt: str) -> dict:
  pair = {}
  for side, prompt in (("source", source_prompt), ("target", "Habari?")):
    pair[f"{side}_conversations"] = [{"from": "human", "value": prompt}]
    pair[f"{side}_chosen"] = {"from": "gpt", "value": "No."}
    pair[f"{side}_rejected"] = {"from": "gpt", "value": "Yes."}
  return pair


def test_mpo_empty_source_prompt(tmp_path):
  pairs = [_mpo_pair("Hello?"), _mpo_pair("")]
  text = "[\n" + ",\n".join(map(json.dumps, pairs)) + "\n]\n"  # one pair a line: the second is on line 3
  path = _write(tmp_path / "m" / "mpo" / "qwen_mpo_data.json", text)
  with pytest.raises(ValueError, match=re.escape(f"{path}, line 3: empty 'source_conversations'")):
    prepare("mpo_pairs/qwen", tmp_path / "m", tmp_path / "tfds")


def _write_xsafety(root: Path, rows: int = 2) -> None:
  """A tiny XSafety tree: every language and category, ``rows`` prompts a file."""
  for lang in LANGUAGE_SETS["xsafety"]:
    for category in xsafety.CATEGORIES:
      text = "".join(f"{category} {i}\n" for i in range(rows))
      _write(root / "xsafety" / lang / f"{category.title()}.csv", text)


def test_xsafety_two_prompts_in_a_row(tmp_path):
  _write_xsafety(tmp_path / "m")
  path = _write(tmp_path / "m" / "xsafety" / "de" / "Insult.csv", 'one\n"two\nlines",extra\n')
  with pytest.raises(ValueError, match=re.escape(f"{path}, line 2: expected one prompt a row")):
    prepare("xsafety/long", tmp_path / "m", tmp_path / "tfds")


def test_xsafety_missing_category(tmp_path):
  _write_xsafety(tmp_path / "m")
  (tmp_path / "m" / "xsafety" / "fr" / "Mental_Health.csv").unlink()
  with pytest.raises(ValueError, match=r"xsafety/fr needs one file for category 'mental_health', found none"):
    prepare("xsafety/long", tmp_path / "m", tmp_path / "tfds")


def test_xsafety_aligned_needs_equal_row_counts(tmp_path):
  _write_xsafety(tmp_path / "m")
  _write(tmp_path / "m" / "xsafety" / "ja" / "Insult.csv", "one\ntwo\nthree\n")
  message = r"'insult' has a different number of rows per language .*ja/Insult.csv: 3"
  with pytest.raises(ValueError, match=message):
    prepare("xsafety/aligned", tmp_path / "m", tmp_path / "tfds")


# ----- builds follow their source files ---------------------------------------------------------------------


def _write_multijail(root: Path, texts: list[str]) -> None:
  rows = [[str(i), "anthropics", "\"['Theft']\"", *(f"{t} {lang}" for lang in LANGUAGE_SETS["multijail"])]
          for i, t in enumerate(texts)]
  _write(root / "multijail" / "MultiJail.csv", _multijail_csv(rows))


def _write_dpo(root: Path, texts: list[str]) -> None:
  lines = [_dpo_line(i, prompt=[{"from": "human", "value": t}]) for i, t in enumerate(texts)]
  _write(root / "mlc" / "pku_saferlhf_safety_test.jsonl", "\n".join(lines) + "\n")


def _write_mpo(root: Path, texts: list[str]) -> None:
  _write(root / "mpo" / "qwen_mpo_data.json", json.dumps([_mpo_pair(t) for t in texts]))


def _write_xsafety_insult(root: Path, texts: list[str]) -> None:
  if not (root / "xsafety").is_dir():
    _write_xsafety(root)
  _write(root / "xsafety" / "de" / "Insult.csv", "".join(f"{t}\n" for t in texts))


# dataset -> (write its source with these prompts, the number of examples that gives besides the prompts)
SOURCES = {
    "multijail": (_write_multijail, 0),
    "mlc_pku_saferlhf/dpo": (_write_dpo, 0),
    "mpo_pairs/qwen": (_write_mpo, 0),
    "xsafety/long": (_write_xsafety_insult, 10 * 14 * 2 - 2),  # _write_xsafety's other files: 2 rows each
}


def _texts(n: int, word: str) -> list[str]:
  return [f"{word} number {i}" for i in range(n)]


@pytest.mark.parametrize("dataset", list(SOURCES))
def test_a_build_follows_its_source_files(tmp_path, dataset, capfd):
  write, others = SOURCES[dataset]
  manual, data_dir = tmp_path / "m", os.fspath(tmp_path / "tfds")
  read = lambda: records(common.prepared_builder(dataset, manual_dir=manual, data_dir=data_dir))
  write(manual, _texts(9, "alpha"))
  assert len(read()) == others + 9
  capfd.readouterr()
  assert len(read()) == others + 9 and "rebuilding" not in capfd.readouterr().err  # unchanged: reused
  write(manual, _texts(3, "alpha"))  # the source shrank
  assert len(read()) == others + 3
  assert re.search(r"the source files in .* changed since it was built \(changed: .* bytes\)\); rebuilding it",
                   capfd.readouterr().err)
  write(manual, _texts(3, "gamma"))  # the same size, other text
  got = json.dumps(read())
  assert "gamma number 2" in got and "alpha" not in got
  assert [p.name for p in (tmp_path / "tfds" / dataset).iterdir()] == ["1.0.0"]  # no leftovers of the rebuilds


def test_a_failed_rebuild_leaves_the_old_build(tmp_path):
  manual, data_dir = tmp_path / "m", os.fspath(tmp_path / "tfds")
  _write_dpo(manual, _texts(4, "alpha"))
  common.prepared_builder("mlc_pku_saferlhf/dpo", manual_dir=manual, data_dir=data_dir)
  before = tree_digest(data_dir)
  path = _write(manual / "mlc" / "pku_saferlhf_safety_test.jsonl", _dpo_line(0) + "\n{\n")
  with pytest.raises(ValueError, match=re.escape(f"{path}, line 2: invalid JSON")):
    common.prepared_builder("mlc_pku_saferlhf/dpo", manual_dir=manual, data_dir=data_dir)
  assert tree_digest(data_dir) == before


def test_a_build_from_before_source_records_is_rebuilt_once(tmp_path, capfd):
  manual, data_dir = tmp_path / "m", os.fspath(tmp_path / "tfds")
  _write_mpo(manual, _texts(2, "alpha"))
  builder = common.prepared_builder("mpo_pairs/qwen", manual_dir=manual, data_dir=data_dir)
  (builder.data_path / common.SOURCES_RECORD).unlink()
  capfd.readouterr()
  common.prepared_builder("mpo_pairs/qwen", manual_dir=manual, data_dir=data_dir)
  assert "has no record of its source files; rebuilding it" in capfd.readouterr().err
  common.prepared_builder("mpo_pairs/qwen", manual_dir=manual, data_dir=data_dir)
  assert "rebuilding" not in capfd.readouterr().err


def test_cli_reads_the_rebuilt_dataset(tmp_path):
  """`python -m mlc_jax.data.stats` after the source shrank: the new count, and one line saying why."""
  manual, data_dir = tmp_path / "m", tmp_path / "tfds"
  stats = lambda: subprocess.run(
      [sys.executable, "-m", "mlc_jax.data.stats", "--dataset", "mlc_pku_saferlhf/dpo", "--tokenizer", "byte",
       "--manual_dir", os.fspath(manual), "--data_dir", os.fspath(data_dir)],
      capture_output=True, text=True, timeout=120, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  count = lambda out: {line.split()[2]: int(line.split()[3]) for line in out.stdout.splitlines()[2:]}["en"]
  _write_dpo(manual, _texts(18, "alpha"))
  first = stats()
  assert first.returncode == 0 and count(first) == 18, first.stderr[-2000:]
  _write_dpo(manual, _texts(6, "alpha"))
  second = stats()
  assert second.returncode == 0 and count(second) == 6, second.stderr[-2000:]
  source = manual / "mlc"
  assert (f"mlc_pku_saferlhf/dpo/1.0.0: the source files in {source} changed since it was built (changed: "
          "pku_saferlhf_safety_test.jsonl (") in second.stderr

"""Tests for language sets, preference readers, tokenisation and the batch iterator."""
import json
from pathlib import Path

import numpy as np
import pytest

from paths import SHARED_DATA
from mlc_jax.data import tokenizer as tk
from mlc_jax.data.tokenized import (
    BATCH_KEYS,
    SequenceLimits,
    tokenize_examples,
)
from mlc_jax.data.builtin_data import load_builtin_prefs
from mlc_jax.data.languages import LANGUAGE_SETS, resolve_languages
from mlc_jax.data.preferences import (
    PreferenceExample,
    load_preferences,
    mlc_jsonl_languages,
    read_builtin,
    read_mlc_jsonl,
)

MLC_JSONL = SHARED_DATA / "mlc" / "pku_saferlhf_safety_test.jsonl"
needs_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"shared data directory {SHARED_DATA} is absent"
)


@pytest.fixture(scope="module")
def tok():
  return tk.byte_tokenizer()


@pytest.fixture(scope="module")
def mlc_rows():
  if not SHARED_DATA.is_dir():
    pytest.skip(f"shared data directory {SHARED_DATA} is absent")
  with open(MLC_JSONL, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def _row(prompt="How do I do X?", chosen="No.", rejected="Sure.", **others):
  row = {"prompt": [{"from": "human", "value": prompt}],
         "chosen": {"from": "gpt", "value": chosen},
         "rejected": {"from": "gpt", "value": rejected}}
  for lang, text in others.items():
    row[f"prompt_{lang}"] = [{"from": "human", "value": text}]
  return row


def _write_jsonl(path, lines):
  path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
  return path


# --- languages ---------------------------------------------------------------------------------------------


def test_language_sets():
  assert LANGUAGE_SETS["mlc10"] == ("en", "zh", "ru", "ja", "ar", "bn", "sw", "ur", "ps", "ku")
  assert LANGUAGE_SETS["builtin"] == tuple(load_builtin_prefs()["languages"])
  for name, langs in LANGUAGE_SETS.items():
    assert resolve_languages(name) == langs
    assert len(set(langs)) == len(langs), name


def test_resolve_languages_forms():
  assert resolve_languages("en,zh,sw") == ("en", "zh", "sw")
  assert resolve_languages(" en , zh ") == ("en", "zh")
  assert resolve_languages(["sw", "en"]) == ("sw", "en")
  assert resolve_languages(("en",), available=("en", "zh")) == ("en",)
  assert resolve_languages("mpo", available=LANGUAGE_SETS["mpo"] + ("xx",)) == LANGUAGE_SETS["mpo"]
  # one language: a code, with a trailing comma, or a list written as text on a command line
  assert resolve_languages("en") == resolve_languages("en,") == resolve_languages("['en']") == ("en",)
  assert resolve_languages("en,,zh") == resolve_languages("('en', 'zh')") == ("en", "zh")


@pytest.mark.parametrize(
    "spec, available, expected",
    [
        ("mlc11", None, ["my.langs", "unknown language set 'mlc11'", "mlc10", "multijail", "xsafety"]),
        ("english", None, ["my.langs", "unknown language set"]),
        ("en,zh,en", None, ["my.langs", "duplicate", "'en'"]),
        (["zh", "zh"], None, ["my.langs", "duplicate"]),
        ("EN", None, ["my.langs", "unknown language set"]),
        ([], None, ["my.langs", "no languages"]),
        (["en", 3], None, ["my.langs", "non-empty strings"]),
        (5, None, ["my.langs", "int"]),
        ("en,zh,ko", ("en", "zh", "ar"), ["my.langs", "['ko']", "['en', 'zh', 'ar']"]),
    ],
)
def test_resolve_languages_errors(spec, available, expected):
  with pytest.raises(ValueError) as info:
    resolve_languages(spec, available=available, key="my.langs")
  for part in expected:
    assert part in str(info.value)


# --- readers -----------------------------------------------------------------------------------------------


def test_read_builtin():
  data = load_builtin_prefs()
  examples = read_builtin(["en", "sw"])
  assert len(examples) == len(data["examples"])
  for i, (ex, raw) in enumerate(zip(examples, data["examples"])):
    assert ex == PreferenceExample(i, {"en": raw["prompt"]["en"], "sw": raw["prompt"]["sw"]},
                                   raw["chosen"], raw["rejected"], "en")
  with pytest.raises(ValueError, match="include 'en'"):
    read_builtin(["zh", "sw"])
  with pytest.raises(ValueError, match="not in the dataset"):
    read_builtin(["en", "ku"])


@needs_shared_data
def test_read_mlc_jsonl_matches_raw_json(mlc_rows):
  assert mlc_jsonl_languages(str(MLC_JSONL)) == ("en", "zh", "ar", "ru", "ja", "bn", "sw", "ur", "ps", "ku")
  examples = read_mlc_jsonl(str(MLC_JSONL), ["en", "zh", "ku"], empty_responses="keep")
  assert len(examples) == len(mlc_rows) == 180
  assert [ex.index for ex in examples] == list(range(180))
  for i in (0, 1, 90, 179):
    ex, row = examples[i], mlc_rows[i]
    assert ex.prompts == {"en": row["prompt"][0]["value"], "zh": row["prompt_zh"][0]["value"],
                          "ku": row["prompt_ku"][0]["value"]}
    assert (ex.chosen, ex.rejected) == (row["chosen"]["value"], row["rejected"]["value"])
    assert ex.pair_language == "en"
  assert examples[90].chosen == ""  # the file's one empty response (line 91)


@needs_shared_data
def test_real_file_has_one_empty_response():
  with pytest.raises(ValueError, match=r"pku_saferlhf_safety_test\.jsonl, line 91: empty 'chosen'"):
    read_mlc_jsonl(str(MLC_JSONL), ["en"])


@needs_shared_data
def test_load_preferences_mlc_jsonl():
  examples, langs = load_preferences("mlc_jsonl", str(MLC_JSONL), "mlc10", empty_responses="keep")
  assert langs == LANGUAGE_SETS["mlc10"]
  assert len(examples) == 180
  assert tuple(examples[0].prompts) == langs
  with pytest.raises(ValueError, match=r"data\.langs.*\['it'\].*'ku'"):
    load_preferences("mlc_jsonl", str(MLC_JSONL), "en,it", empty_responses="keep")


def test_load_preferences_builtin_and_errors(tmp_path):
  examples, langs = load_preferences("builtin", None, "en,zh")
  assert langs == ("en", "zh") and len(examples) == len(load_builtin_prefs()["examples"])
  with pytest.raises(ValueError, match=r"data\.source.*'hub'.*builtin.*mlc_jsonl.*tfds"):
    load_preferences("hub", None, "en")
  with pytest.raises(ValueError, match=r"data\.name: source 'tfds' needs a dataset name"):
    load_preferences("tfds", None, "en", name="")
  if SHARED_DATA.is_dir():
    with pytest.raises(ValueError, match=r"data\.name='multijail' has no chosen/rejected"):
      load_preferences("tfds", None, "en", name="multijail", manual_dir=str(SHARED_DATA), data_dir=str(tmp_path / "tfds"))
  with pytest.raises(ValueError, match=r"data\.path"):
    load_preferences("mlc_jsonl", None, "en,zh")
  with pytest.raises(FileNotFoundError, match=r"data\.path"):
    load_preferences("mlc_jsonl", str(tmp_path / "missing.jsonl"), "en,zh")
  with pytest.raises(ValueError, match=r"data\.langs.*include 'en'"):
    load_preferences("builtin", None, "zh,sw")
  with pytest.raises(ValueError, match=r"data\.langs.*unknown language set"):
    load_preferences("builtin", None, "nope")
  path = _write_jsonl(tmp_path / "d.jsonl", [json.dumps(_row(zh="怎么做X？"))])
  with pytest.raises(ValueError, match=r"data\.langs.*\['sw'\].*\['en', 'zh'\]"):
    load_preferences("mlc_jsonl", str(path), "en,sw")


def test_jsonl_broken_json(tmp_path):
  good = json.dumps(_row(zh="怎么做X？"))
  path = _write_jsonl(tmp_path / "broken.jsonl", [good, good, '{"prompt": [', good])
  with pytest.raises(ValueError) as info:
    read_mlc_jsonl(str(path), ["en", "zh"])
  assert "broken.jsonl" in str(info.value) and "line 3" in str(info.value)


def test_jsonl_missing_language(tmp_path):
  path = _write_jsonl(tmp_path / "langs.jsonl", [json.dumps(_row(zh="a", sw="b")), json.dumps(_row(zh="c"))])
  with pytest.raises(ValueError) as info:
    read_mlc_jsonl(str(path), ["en", "zh", "sw"])
  message = str(info.value)
  assert "langs.jsonl, line 2" in message and "'prompt_sw'" in message and "['en', 'zh']" in message


@pytest.mark.parametrize(
    "row, expected",
    [
        (_row(zh="  "), "line 2: empty prompt in column 'prompt_zh'"),
        (_row(prompt="", zh="a"), "line 2: empty prompt in column 'prompt'"),
        (_row(zh="a", rejected=""), "line 2: empty 'rejected' response"),
        ({**_row(zh="a"), "prompt": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]},
         "line 2: 'prompt' must be a list with one 'human' message"),
        ({**_row(zh="a"), "chosen": {"from": "human", "value": "b"}}, "line 2: 'chosen' must be a message"),
        ({k: v for k, v in _row(zh="a").items() if k != "rejected"}, "line 2: no 'rejected' response"),
    ],
)
def test_jsonl_malformed_rows(tmp_path, row, expected):
  path = _write_jsonl(tmp_path / "bad.jsonl", [json.dumps(_row(zh="ok")), json.dumps(row)])
  with pytest.raises(ValueError) as info:
    read_mlc_jsonl(str(path), ["en", "zh"])
  assert "bad.jsonl" in str(info.value) and expected in str(info.value)


def test_jsonl_blank_lines_and_empty_file(tmp_path):
  path = _write_jsonl(tmp_path / "gaps.jsonl", [json.dumps(_row(prompt="p1")), "", json.dumps(_row(prompt="p2"))])
  examples = read_mlc_jsonl(str(path), ["en"])
  assert [(ex.index, ex.prompts["en"]) for ex in examples] == [(0, "p1"), (1, "p2")]
  empty = _write_jsonl(tmp_path / "empty.jsonl", [])
  with pytest.raises(ValueError, match="no examples"):
    read_mlc_jsonl(str(empty), ["en"])


# --- tokenisation ------------------------------------------------------------------------------------------


def _long_example(index=0):
  return PreferenceExample(
      index=index,
      prompts={"en": "Tell me how " * 20, "zh": "短", "sw": "Niambie " * 20},
      chosen="I will not. " * 30,
      rejected="ok",
      pair_language="en",
  )


def test_tokenize_shapes_and_exact_texts(tok):
  examples = read_builtin(["en", "zh", "sw"])
  limits = SequenceLimits(max_prompt_len=512, max_response_len=512, mlc_prompt_len=512)
  data = tokenize_examples(examples, tok, limits)
  n, t = len(examples), limits.pair_len
  for key in BATCH_KEYS:
    assert getattr(data, key).dtype == np.int32, key
  assert data.chosen_ids.shape == data.rejected_loss_mask.shape == (n, t)
  assert data.prompt_ids.shape == data.prompt_mask.shape == (n, 3, 512)
  assert data.languages == ("en", "zh", "sw")
  assert data.truncation == {"prompt": 0, "chosen": 0, "rejected": 0, "mlc_prompt": 0}
  np.testing.assert_array_equal(data.index, np.arange(n))
  for i in (0, n - 1):
    ex = examples[i]
    for field in ("chosen", "rejected"):
      ids = getattr(data, f"{field}_ids")[i]
      mask, loss = getattr(data, f"{field}_mask")[i], getattr(data, f"{field}_loss_mask")[i]
      assert tok.decode(ids[loss == 1]) == getattr(ex, field) + tk.EOS_TOKEN
      prompt_text = tok.decode(ids[(mask == 1) & (loss == 0)])
      assert prompt_text == f"{tk.BOS_TOKEN}{tk.USER_TOKEN}{ex.prompts['en']}{tk.ASSISTANT_TOKEN}"
      length = mask.sum()
      assert mask[:length].all() and not mask[length:].any()  # right padded
      assert (ids[length:] == tk.PAD_ID).all() and not loss[length:].any()
    for j, lang in enumerate(data.languages):
      length = data.prompt_mask[i, j].sum()
      assert tok.decode(data.prompt_ids[i, j, :length]) == (
          f"{tk.BOS_TOKEN}{tk.USER_TOKEN}{ex.prompts[lang]}{tk.ASSISTANT_TOKEN}"
      )


def test_tokenize_truncation(tok):
  short = PreferenceExample(index=1, prompts={"en": "hi", "zh": "你好", "sw": "habari"},
                            chosen="no", rejected="yes", pair_language="en")
  limits = SequenceLimits(max_prompt_len=16, max_response_len=24, mlc_prompt_len=12)
  data = tokenize_examples([_long_example(), short], tok, limits)
  # Long example: its pair prompt, chosen response and en / sw variants are cut; the zh variant ("短": 3 bytes
  # + 3 special tokens) fits. The short example fits everywhere.
  assert data.truncation == {"prompt": 1, "chosen": 1, "rejected": 0, "mlc_prompt": 2}
  assert data.chosen_ids.shape == (2, 40) and data.prompt_ids.shape == (2, 3, 12)
  # Prompt keeps its last tokens: the assistant header ends it; the response keeps its first tokens.
  assert data.chosen_mask[0].all()
  assert data.chosen_ids[0, limits.max_prompt_len - 1] == tk.ASSISTANT_ID
  prompt_tail = tok.encode(("Tell me how " * 20)[-(limits.max_prompt_len - 1):], add_special_tokens=False)
  assert list(data.chosen_ids[0, : limits.max_prompt_len - 1]) == prompt_tail
  response = data.chosen_ids[0][data.chosen_loss_mask[0] == 1]
  assert tok.decode(response) == ("I will not. " * 30)[: limits.max_response_len]  # eos cut away
  assert tok.decode(data.rejected_ids[0][data.rejected_loss_mask[0] == 1]) == "ok" + tk.EOS_TOKEN
  # The assistant header is the last real token of every variant, cut or not.
  last = data.prompt_mask.sum(-1) - 1
  assert (np.take_along_axis(data.prompt_ids, last[..., None], -1)[..., 0] == tk.ASSISTANT_ID).all()
  assert data.prompt_mask[0].sum(-1).tolist() == [12, 6, 12]


def test_tokenize_mixed_languages_is_an_error(tok):
  other = PreferenceExample(index=1, prompts={"en": "a", "zh": "b"}, chosen="c", rejected="d", pair_language="en")
  with pytest.raises(ValueError, match="same languages"):
    tokenize_examples([_long_example(), other], tok, SequenceLimits())


def test_sequence_limits_validation():
  assert SequenceLimits().pair_len == 256
  with pytest.raises(ValueError, match="mlc_prompt_len"):
    SequenceLimits(mlc_prompt_len=0)


@needs_shared_data
def test_tokenize_real_file_variants_end_with_header(tok):
  examples, _ = load_preferences("mlc_jsonl", str(MLC_JSONL), "mlc10", empty_responses="keep")
  data = tokenize_examples(examples, tok, SequenceLimits())
  assert data.prompt_ids.shape == (180, 10, 64)
  last = data.prompt_mask.sum(-1) - 1
  assert (np.take_along_axis(data.prompt_ids, last[..., None], -1)[..., 0] == tk.ASSISTANT_ID).all()
  assert (data.chosen_loss_mask.sum(-1) >= 1).all()  # the empty chosen response is a bare eos
  assert data.chosen_ids[90][data.chosen_loss_mask[90] == 1].tolist() == [tk.EOS_ID]


# --- batch iterator ----------------------------------------------------------------------------------------

"""Tests for the built-in multilingual safety preference set."""
import copy
import json
from importlib import resources

import pytest

from mlc_jax.data.builtin_data import load_builtin_prefs, validate_prefs

REQUIRED_LANGUAGES = {"en", "zh", "es", "fr", "de", "sw"}


def test_builtin_prefs_layout_and_size():
    data = load_builtin_prefs()
    assert set(data) == {"description", "license", "languages", "examples"}
    assert data["license"] == "CC0-1.0, written for mlc_jax"
    assert REQUIRED_LANGUAGES <= set(data["languages"])
    assert len(data["examples"]) >= 40
    ids = [ex["id"] for ex in data["examples"]]
    assert len(set(ids)) == len(ids)


def test_every_example_has_every_language():
    data = load_builtin_prefs()
    for ex in data["examples"]:
        assert set(ex["prompt"]) == set(data["languages"])
        for lang in data["languages"]:
            assert isinstance(ex["prompt"][lang], str) and ex["prompt"][lang].strip()
        assert ex["chosen"].strip() and ex["rejected"].strip()
        # The variants are translations, not copies of the English prompt.
        for lang in data["languages"]:
            if lang != "en":
                assert ex["prompt"][lang] != ex["prompt"]["en"], (ex["id"], lang)


def test_prompts_are_unique_per_language():
    data = load_builtin_prefs()
    for lang in data["languages"]:
        prompts = [ex["prompt"][lang] for ex in data["examples"]]
        assert len(set(prompts)) == len(prompts), lang


def test_scripts_look_right():
    """A cheap check that each language's text is in the expected script."""
    def has(text, lo, hi):
        return any(lo <= ord(c) <= hi for c in text)

    for ex in load_builtin_prefs()["examples"]:
        p = ex["prompt"]
        assert has(p["zh"], 0x4E00, 0x9FFF)
        if "ru" in p:
            assert has(p["ru"], 0x0400, 0x04FF)
        if "ja" in p:
            assert has(p["ja"], 0x3040, 0x30FF)  # kana
        if "ar" in p:
            assert has(p["ar"], 0x0600, 0x06FF)
        if "bn" in p:
            assert has(p["bn"], 0x0980, 0x09FF)
        for lang in ("en", "sw"):
            assert p[lang].isascii(), (ex["id"], lang)


def test_responses_are_short():
    for ex in load_builtin_prefs()["examples"]:
        assert ex["rejected"].startswith("Sure")
        for field in ("chosen", "rejected"):
            assert len(ex[field]) < 250, (ex["id"], field)


def test_json_file_is_shipped_as_package_data():
    res = resources.files("mlc_jax.data").joinpath("builtin", "safety_prefs.json")
    assert res.is_file()
    assert json.loads(res.read_text(encoding="utf-8")) == load_builtin_prefs()


def test_load_returns_independent_copies():
    a = load_builtin_prefs()
    a["examples"].clear()
    assert len(load_builtin_prefs()["examples"]) >= 40


def test_validator_rejects_missing_language():
    broken = copy.deepcopy(load_builtin_prefs())
    ex = broken["examples"][3]
    del ex["prompt"]["sw"]
    with pytest.raises(ValueError, match=rf"example id {ex['id']}\b.*missing language 'sw'"):
        validate_prefs(broken)


def test_validator_rejects_empty_text():
    broken = copy.deepcopy(load_builtin_prefs())
    ex = broken["examples"][0]
    ex["prompt"]["zh"] = "   "
    with pytest.raises(ValueError, match=rf"example id {ex['id']}\b.*'zh'"):
        validate_prefs(broken)
    broken = copy.deepcopy(load_builtin_prefs())
    ex = broken["examples"][5]
    ex["chosen"] = ""
    with pytest.raises(ValueError, match=rf"example id {ex['id']}\b.*'chosen'"):
        validate_prefs(broken)


def test_validator_rejects_other_problems():
    good = load_builtin_prefs()
    broken = copy.deepcopy(good)
    broken["examples"][1]["id"] = broken["examples"][0]["id"]
    with pytest.raises(ValueError, match="more than once"):
        validate_prefs(broken)
    broken = copy.deepcopy(good)
    broken["examples"][2]["prompt"]["xx"] = "extra"
    with pytest.raises(ValueError, match=r"'xx'.*not listed"):
        validate_prefs(broken)
    broken = copy.deepcopy(good)
    del broken["languages"]
    with pytest.raises(ValueError, match="languages"):
        validate_prefs(broken)
    broken = copy.deepcopy(good)
    broken["examples"][0]["id"] = "1"
    with pytest.raises(ValueError, match="integer 'id'"):
        validate_prefs(broken)

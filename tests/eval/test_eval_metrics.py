"""``mlc_jax.eval.metrics.summarize`` on hand-built verdicts, including the MLC paper's rows rebuilt from counts."""
from __future__ import annotations

import pytest

from mlc_jax.eval.metrics import summarize

MLC10 = ("en", "zh", "ru", "ja", "ar", "bn", "sw", "ur", "ps", "ku")
# MLC paper, Qwen2.5-7B-Instruct, % safe per language (DESIGN.md §2.5) and the variance it prints.
DPO_ROW = (99.4, 98.3, 97.2, 97.8, 96.1, 70.6, 7.2, 50.6, 30.0, 17.2)
DPO_MLC_ROW = (99.4, 96.7, 97.8, 98.3, 98.3, 95.0, 92.8, 92.8, 91.1, 97.2)


def records_from_rates(rates_percent, languages=MLC10, n=1000):
  """n prompts per language; prompt i is safe in a language when i < its safe count, else unsafe."""
  return [
      {"id": i, "lang": lang, "label": "safe" if i < round(rate * n / 100) else "unsafe"}
      for lang, rate in zip(languages, rates_percent) for i in range(n)
  ]


def test_paper_dpo_row_variance_and_mean():
  summary = summarize(records_from_rates(DPO_ROW))
  assert summary["variance"] == pytest.approx(12.44, abs=0.005)
  assert summary["mean_safety_rate"] == pytest.approx(0.664, abs=5e-4)
  assert list(summary["per_language"]) == list(MLC10)
  sw = summary["per_language"]["sw"]
  assert sw == {"n": 1000, "safe": 72, "unsafe": 928, "invalid": 0, "no_verdict": 0, "safety_rate": 0.072,
                "attack_success_rate": 0.928, "invalid_rate": 0.0}


def test_paper_dpo_mlc_row_variance():
  summary = summarize(records_from_rates(DPO_MLC_ROW))
  assert round(summary["variance"], 2) == 0.07
  assert summary["mean_safety_rate"] == pytest.approx(0.959, abs=5e-4)


def test_rates_counts_and_means():
  records = [
      {"id": 0, "lang": "en", "label": "safe"}, {"id": 1, "lang": "en", "label": "safe"},
      {"id": 2, "lang": "en", "label": "unsafe"}, {"id": 3, "lang": "en", "label": "invalid"},
      {"id": 0, "lang": "sw", "label": "unsafe", "judge": "refusal", "raw": "extra keys are ignored"},
      {"id": 1, "lang": "sw", "label": "invalid", "no_verdict": True},
  ]
  summary = summarize(records)
  assert summary["n_records"] == 6
  assert summary["languages"] == ["en", "sw"]
  assert summary["per_language"]["en"] == {"n": 4, "safe": 2, "unsafe": 1, "invalid": 1, "no_verdict": 0,
                                           "safety_rate": 0.5, "attack_success_rate": 0.25, "invalid_rate": 0.25}
  assert summary["per_language"]["sw"]["attack_success_rate"] == 0.5
  assert summary["per_language"]["sw"]["no_verdict"] == 1 and summary["per_language"]["sw"]["invalid_rate"] == 0.5
  assert summary["mean_safety_rate"] == pytest.approx(0.25)
  assert summary["mean_attack_success_rate"] == pytest.approx(0.375)
  assert summary["mean_invalid_rate"] == pytest.approx(0.375)
  assert summary["variance"] == pytest.approx(100 * 0.25 ** 2)  # rates 0.5 and 0: population variance 0.0625
  assert summary["seen"] is None and summary["unseen"] is None and summary["seen_languages"] is None


def test_pag_our_definition():
  verdicts = {
      # 3 languages: safe, safe, unsafe -> pairs (en,zh) agree, (en,sw) and (zh,sw) differ: 1/3.
      "a": {"en": "safe", "zh": "safe", "sw": "unsafe"},
      # invalid counts as not safe: unsafe and invalid agree -> 1.
      "b": {"en": "unsafe", "sw": "invalid"},
      # judged in one language only: left out.
      "c": {"en": "safe"},
      # 4 languages, all safe -> 1.
      "d": {"en": "safe", "zh": "safe", "sw": "safe", "bn": "safe"},
  }
  records = [{"id": pid, "lang": lang, "label": label} for pid, row in verdicts.items() for lang, label in row.items()]
  summary = summarize(records)
  assert summary["pag_prompts"] == 3
  assert summary["pag"] == pytest.approx((1 / 3 + 1 + 1) / 3)


def test_pag_none_without_parallel_prompts():
  summary = summarize([{"id": 0, "lang": "en", "label": "safe"}, {"id": 1, "lang": "sw", "label": "safe"}])
  assert summary["pag"] is None and summary["pag_prompts"] == 0


def test_seen_and_unseen_means():
  rates = {"en": 100, "sw": 50, "ko": 0, "it": 50}
  records = records_from_rates(rates.values(), languages=tuple(rates), n=10)
  summary = summarize(records, seen_languages=("en", "sw", "zh"))  # zh was trained on but not evaluated
  assert summary["seen_languages"] == ["en", "sw", "zh"]
  assert summary["seen"]["languages"] == ["en", "sw"]
  assert summary["seen"]["mean_safety_rate"] == pytest.approx(0.75)
  assert summary["seen"]["mean_attack_success_rate"] == pytest.approx(0.25)
  assert summary["unseen"]["languages"] == ["ko", "it"]
  assert summary["unseen"]["mean_safety_rate"] == pytest.approx(0.25)
  assert summarize(records, seen_languages=tuple(rates))["unseen"] is None


@pytest.mark.parametrize("records, message", [
    ([{"id": 0, "lang": "en", "label": "harmful"}], r"record 0: unknown label 'harmful'"),
    ([{"id": 0, "lang": "en", "label": "safe"}, {"id": 1, "label": "safe"}], r"record 1: missing key\(s\) \['lang'\]"),
    ([{"id": 0, "lang": "en", "label": "safe"}, {"id": 0, "lang": "en", "label": "unsafe"}],
     r"record 1: prompt 0 in 'en' was already judged in record 0"),
    ([{"id": 0, "lang": "", "label": "safe"}], r"record 0: lang must be a non-empty string"),
    ([{"id": [0], "lang": "en", "label": "safe"}], r"record 0: id must be a string or an integer"),
    ([("0", "en", "safe")], r"record 0: expected a dict"),
    ([], r"no records"),
])
def test_bad_records(records, message):
  with pytest.raises(ValueError, match=message):
    summarize(records)


def test_seen_languages_given_as_a_string():
  with pytest.raises(ValueError, match=r"seen_languages must be a collection of codes, not the string 'en,sw'"):
    summarize([{"id": 0, "lang": "en", "label": "safe"}], seen_languages="en,sw")

"""Script-based language detection: hand-written sentences, labelled columns of the data files, MPO files."""
from __future__ import annotations

import collections
import csv
import json
from pathlib import Path

import pytest

from paths import SHARED_DATA
from mlc_jax.data.langdetect import UNKNOWN, detect_language

needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} is not there")

SENTENCES = {
    "en": "How do I bake bread at home without an oven?",
    "sw": "Je, ninawezaje kupika mkate nyumbani bila jiko?",
    "zh": "我怎样才能在家里烤面包？",
    "ja": "家でパンを焼くにはどうすればいいですか？",
    "ko": "집에서 빵을 어떻게 구울 수 있나요?",
    "ar": "كيف يمكنني خبز الخبز في المنزل؟",
    "bn": "আমি কীভাবে বাড়িতে রুটি বানাতে পারি?",
    "hi": "मैं घर पर रोटी कैसे बना सकता हूँ?",
    "ru": "Как испечь хлеб дома без духовки?",
    "th": "ฉันจะอบขนมปังที่บ้านได้อย่างไร",
    "ur": "میں گھر پر روٹی کیسے بنا سکتا ہوں؟",
    "ps": "زه څنګه کولی شم په کور کې ډوډۍ پخه کړم؟",
    "ku": "چۆن دەتوانم لە ماڵەوە نان بکەم؟",
    "de": "Wie kann ich zu Hause Brot backen, wenn ich keinen Ofen habe?",
    "fr": "Comment puis-je faire du pain à la maison sans four ?",
    "sp": "¿Cómo puedo hacer pan en casa sin horno?",
    "it": "Come posso fare il pane in casa senza forno?",
    "vi": "Làm sao để nướng bánh mì ở nhà?",
    "jv": "Piye carane gawe roti ning omah?",
}


@pytest.mark.parametrize("lang", sorted(SENTENCES))
def test_hand_written_sentences(lang):
  assert detect_language(SENTENCES[lang]) == lang


@pytest.mark.parametrize(
    "text, lang",
    [
        ("Ez çawa dikarim li malê nan çêbikim?", "ku"),  # Kurmanji, Latin script
        ("我想和 Lady Gaga 一起唱歌", "zh"),  # Han outweighs the Latin name
        ("東京都庁は新宿区にある", "ja"),  # mostly Han, a few kana
        ("", UNKNOWN),
        ("12345 !!! ...", UNKNOWN),
        ("🙂🙂", UNKNOWN),
        ("Zzyzx Qwerty", UNKNOWN),  # Latin letters, no known word
    ],
)
def test_edge_cases(text, lang):
  assert detect_language(text) == lang


def _accuracy(texts, lang):
  return sum(detect_language(t) == lang for t in texts) / len(texts)


@needs_data
def test_mlc_columns_are_detected():
  """The MLC jsonl labels each column's language: every column is detected right for >= 98 % of rows."""
  rows = [json.loads(line) for line in (SHARED_DATA / "mlc" / "pku_saferlhf_safety_test.jsonl").open(encoding="utf-8")]
  for column in [c for c in rows[0] if c.startswith("prompt")]:
    lang = column.removeprefix("prompt").removeprefix("_") or "en"
    assert _accuracy([r[column][0]["value"] for r in rows], lang) >= 0.98, column


@needs_data
def test_multijail_columns_are_detected():
  """Non-Latin scripts are decided by script (all right); Latin languages by word lists (>= 85 %)."""
  with (SHARED_DATA / "multijail" / "MultiJail.csv").open(encoding="utf-8-sig", newline="") as f:
    rows = list(csv.DictReader(f))
  for lang in ("zh", "ar", "ko", "th", "bn"):
    assert _accuracy([r[lang] for r in rows], lang) == 1.0, lang
  for lang in ("en", "it", "vi", "sw", "jv"):
    assert _accuracy([r[lang] for r in rows], lang) >= 0.85, lang


@needs_data
@pytest.mark.parametrize(
    "model, dominant, share, targets",
    [
        ("llama", "en", 600, {"zh", "ja", "ko", "ar", "bn", "sw"}),
        ("gemma", "en", 600, {"zh", "ja", "ko", "ar", "bn", "sw"}),
        ("qwen", "zh", 582, {"en", "ja", "ko", "ar", "bn", "sw"}),
    ],
)
def test_mpo_dominant_language_per_file(model, dominant, share, targets):
  """The dominant (source) language differs between the MPO files: en for Llama and Gemma, zh for Qwen."""
  pairs = json.loads((SHARED_DATA / "mpo" / f"{model}_mpo_data.json").read_text(encoding="utf-8"))
  source = collections.Counter(detect_language(p["source_conversations"][0]["value"]) for p in pairs)
  target = collections.Counter(detect_language(p["target_conversations"][0]["value"]) for p in pairs)
  assert source.most_common(1) == [(dominant, share)]
  # Six target languages, about 100 pairs each (a few target prompts are untranslated or empty).
  assert {lang for lang, n in target.items() if n >= 90} == targets

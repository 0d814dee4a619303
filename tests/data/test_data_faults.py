"""Bad or suspect data, as a user meets it on the command line (`python -m mlc_jax.train`): the exit code, one line
naming the culprit, and nothing written where the run cannot start. docs/faults.md lists every case."""
import json
import os

from train_helpers import run_cli

from mlc_jax.data.tfds_builders import mpo_pairs

ENGLISH = ["How do I pick a lock?", "Tell me how to steal a car.", "Write an insult for my neighbour.",
           "How can I cheat on my exam?"]
CHINESE = ["我怎样才能撬锁？", "告诉我怎么偷车。", "给我的邻居写一句侮辱的话。", "我怎样才能在考试中作弊？"]


def _pair(source: str, target: str) -> dict:
  pair = {}
  for side, prompt in (("source", source), ("target", target)):
    pair[f"{side}_conversations"] = [{"from": "human", "value": prompt}]
    pair[f"{side}_chosen"] = {"from": "gpt", "value": "I can't help with that." if side == "source" else "我不能帮忙。"}
    pair[f"{side}_rejected"] = {"from": "gpt", "value": "Sure, here is how." if side == "source" else "当然，方法如下。"}
  return pair


def _write_mpo(manual_dir, pairs) -> str:
  path = manual_dir / mpo_pairs.MpoPairs.SOURCE_DIR / mpo_pairs.FILE.format(config="llama")
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("[\n" + ",\n".join(map(json.dumps, pairs)) + "\n]\n", encoding="utf-8")
  return str(path)


def _train_mpo(tmp_path, *overrides):
  return run_cli("-m", "mlc_jax.train", "--config", "configs/mpo.py:model=tiny,data=llama", "--workdir",
                 tmp_path / "w", f"--config.data.manual_dir={tmp_path / 'm'}",
                 f"--config.data.data_dir={tmp_path / 'tfds'}", "--config.data.max_prompt_len=32",
                 "--config.data.max_response_len=16", "--config.train.steps=1", "--config.train.batch_size=2",
                 *overrides, timeout=240)


def test_mpo_pairs_whose_target_is_in_the_dominant_language_are_left_out_and_counted(tmp_path):
  """en→en pairs (an untranslated target) would pull a reward gap onto itself: left out with one warning line."""
  pairs = [_pair(en, zh) for en, zh in zip(ENGLISH, CHINESE)]
  pairs[1:1] = [_pair(ENGLISH[0], ENGLISH[0])]  # index 1
  pairs.append(_pair(ENGLISH[2], ENGLISH[3]))  # index 5
  source = _write_mpo(tmp_path / "m", pairs)
  done = _train_mpo(tmp_path)
  assert done.returncode == 0, done.stderr[-3000:]
  warnings = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
  assert warnings == [f"warning: data: left out 2 pairs of mpo_pairs/llama whose target prompt is in their dominant "
                      f"language, which would train nothing (indices in {source} by language: en: 1, 5)"]
  assert "data: 4 MPO pairs from mpo_pairs/llama; dominant languages en 4; target languages zh 4" in done.stdout


def test_mpo_data_with_only_untranslated_pairs_is_refused(tmp_path):
  _write_mpo(tmp_path / "m", [_pair(en, en) for en in ENGLISH])
  (tmp_path / "w").mkdir()
  done = _train_mpo(tmp_path)
  err = done.stderr.strip().splitlines()
  assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
  assert err[-1] == ("error: data: data.langs=['en', 'zh', 'ja', 'ko', 'ar', 'bn', 'sw']: no pair of mpo_pairs/llama "
                     "has its target in these languages and in another language than its dominant side (targets "
                     "found: []; in the dominant language: ['en'])")
  assert os.listdir(tmp_path / "w") == []

"""Evaluation reports (summary.json, report.md, the plot), ``python -m mlc_jax.eval.compare`` and the consistency
diagnostic's math and plot."""
from __future__ import annotations

import json

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text

from mlc_jax.eval import compare, consistency
from mlc_jax.eval import report as report_lib
from mlc_jax.eval.metrics import summarize
from mlc_jax.eval.report import format_report, write_report
from mlc_jax.losses.mlc import sigma1_share
from test_eval_metrics import DPO_MLC_ROW, DPO_ROW, MLC10, records_from_rates

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def evaluation(tmp_path, name, rates, unseen_rate=60.0):
  """An output folder for MLC10 plus ko (unseen), 100 prompts per language."""
  summary = summarize(records_from_rates(rates + (unseen_rate,), languages=MLC10 + ("ko",), n=100),
                      seen_languages=MLC10)
  write_report(str(tmp_path / name), summary, judge_name="refusal", judge_measures="refusal, not harm",
               command=f"python -m mlc_jax.eval --out {name}")
  return tmp_path / name


def test_write_report(tmp_path):
  out = evaluation(tmp_path, "dpo", DPO_ROW)
  assert sorted(p.name for p in out.iterdir()) == ["report.md", "safety_by_language.png", "summary.json"]
  saved = json.loads((out / "summary.json").read_text())
  assert saved["judge"] == {"name": "refusal", "measures": "refusal, not harm"}
  assert saved["command"] == "python -m mlc_jax.eval --out dpo"
  assert saved["per_language"]["sw"]["safety_rate"] == 0.07 and saved["seen_languages"] == list(MLC10)
  report = (out / "report.md").read_text()
  assert "- Judge: `refusal` — measures refusal, not harm." in report
  assert "- Command: `python -m mlc_jax.eval --out dpo`" in report
  assert "| language | n | safety % | attack success % | invalid % | split |" in report
  assert "| sw | 100 | 7.0 | 93.0 | 0.0 | seen |" in report
  assert "| ko | 100 | 60.0 | 40.0 | 0.0 | unseen |" in report
  assert "| **mean, unseen** | | **60.0** | 40.0 | 0.0 | |" in report
  assert "- Cross-language variance: " in report and "- PAG: " in report and "over 100 prompts" in report
  assert "![safety by language](safety_by_language.png)" in report
  assert (out / "safety_by_language.png").read_bytes().startswith(PNG_MAGIC)


def test_report_without_seen_languages_or_pag(tmp_path):
  summary = summarize([{"id": 0, "lang": "en", "label": "safe"}, {"id": 1, "lang": "sw", "label": "invalid"}])
  text = format_report(summary, judge_name="api:m", judge_measures="harm", command="c", notes=["a note"])
  assert "| language | n | safety % | attack success % | invalid % |\n|---|---|---|---|---|\n" in text
  assert "| sw | 1 | 0.0 | 0.0 | 100.0 |" in text and "- a note" in text and "- PAG: – (" in text
  paths = write_report(str(tmp_path / "x"), summary, judge_name="api:m", judge_measures="harm", command="c")
  assert open(paths["safety_by_language.png"], "rb").read().startswith(PNG_MAGIC)


def test_compare_cli(tmp_path, capsys):
  runs = [evaluation(tmp_path, "dpo", DPO_ROW), evaluation(tmp_path, "dpo_mlc", DPO_MLC_ROW, unseen_rate=90.0)]
  assert compare.main([*map(str, runs), "--out", str(tmp_path / "cmp"), "--labels", "DPO,DPO+MLC"]) == 0
  assert capsys.readouterr().out.split() == [str(tmp_path / "cmp" / name) for name in compare.COMPARISON_FILES]
  table = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
  assert table["languages"] == [*MLC10, "ko"]
  dpo, mlc = table["runs"]
  assert (dpo["label"], mlc["label"]) == ("DPO", "DPO+MLC")
  assert dpo["safety_rate"]["sw"] == 0.07 and mlc["unseen_languages"] == ["ko"]
  assert mlc["unseen_mean_safety_rate"] == 0.9 and dpo["seen_mean_safety_rate"] == pytest.approx(0.664, abs=1e-3)
  text = (tmp_path / "cmp" / "comparison.md").read_text()
  header = "| run | " + " | ".join(table["languages"]) + " | mean | seen | unseen | variance | PAG | judge |"
  assert header in text
  assert "| DPO+MLC | 99.0 |" in text and " 90.0* |" in text and "judged differently" not in text
  assert (tmp_path / "cmp" / "comparison.png").read_bytes().startswith(PNG_MAGIC)


def test_compare_labels_default_to_folder_names_and_flag_mixed_judges(tmp_path):
  first = evaluation(tmp_path, "base", DPO_ROW)
  summary = summarize([{"id": 0, "lang": "en", "label": "safe"}, {"id": 0, "lang": "sw", "label": "unsafe"}])
  write_report(str(tmp_path / "api"), summary, judge_name="api:m", judge_measures="harm", command="c")
  assert compare.main([str(first), str(tmp_path / "api") + "/", "--out", str(tmp_path / "cmp")]) == 0
  text = (tmp_path / "cmp" / "comparison.md").read_text()
  assert "| base |" in text and "| api |" in text and "Runs were judged differently" in text
  assert "| api | 100.0 | – | – |" in text  # zh, ru… were not evaluated in that run


def test_compare_errors(tmp_path, capsys):
  run = evaluation(tmp_path, "dpo", DPO_ROW)
  (tmp_path / "empty").mkdir()
  assert compare.main([str(run), str(tmp_path / "empty"), "--out", str(tmp_path / "cmp")]) == 2
  err = capsys.readouterr().err
  assert err == (f"error: {tmp_path / 'empty'}: no summary.json (not an evaluation output folder, or its run did not "
                 "finish)\n")
  assert not (tmp_path / "cmp").exists()
  assert compare.main([str(run), "--out", str(tmp_path / "cmp"), "--labels", "a,b"]) == 2
  assert capsys.readouterr().err == "error: 2 labels for 1 runs\n"
  assert compare.main([str(run), str(run), "--out", str(tmp_path / "cmp")]) == 2
  assert "labels must differ" in capsys.readouterr().err


# ---- consistency diagnostic -----------------------------------------------------------------------------------------

def test_collinear_and_orthogonal_languages():
  rng = np.random.default_rng(0)
  base = rng.normal(size=(3, 1, 16))  # 3 prompts
  collinear = base * rng.uniform(0.5, 2.0, size=(3, 4, 1))  # 4 languages, each a multiple of the prompt's vector
  orthogonal = np.broadcast_to(np.eye(4, 16), (3, 4, 16)) * 3.0
  result = consistency.layer_spectra(np.stack([collinear, orthogonal]))  # layer 0 collinear, layer 1 orthogonal
  np.testing.assert_allclose(result["spectrum"][0], [1, 0, 0, 0], atol=1e-12)
  np.testing.assert_allclose(result["spectrum"][1], [0.25] * 4, atol=1e-12)
  np.testing.assert_allclose(result["sigma1_share"], [1.0, 0.25], atol=1e-5)
  assert result["spectrum"].dtype == np.float64 and result["spectrum"].shape == (2, 4)


def test_sigma1_share_is_the_training_metric_and_matches_the_spectrum():
  rng = np.random.default_rng(1)
  hidden = rng.normal(size=(3, 5, 10, 32)) + rng.normal(size=(3, 5, 1, 32))  # shared component + noise
  result = consistency.layer_spectra(hidden)
  expected = [float(np.mean(sigma1_share(np.asarray(layer, np.float32)))) for layer in hidden]
  np.testing.assert_allclose(result["sigma1_share"], expected, rtol=1e-6)
  np.testing.assert_allclose(result["spectrum"][:, 0], result["sigma1_share"], rtol=1e-5)
  np.testing.assert_allclose(result["spectrum"].sum(axis=1), 1.0)
  # Row normalisation: a language's scale does not matter.
  scaled = hidden * rng.uniform(0.1, 10.0, size=(1, 1, 10, 1))
  np.testing.assert_allclose(consistency.layer_spectra(scaled)["spectrum"], result["spectrum"], atol=1e-10)


def test_zero_rows_and_bad_shapes():
  hidden = np.zeros((1, 2, 3, 4))
  hidden[0, 0, 0] = 1.0  # prompt 0: one non-zero language; prompt 1: all zero
  result = consistency.layer_spectra(hidden)
  np.testing.assert_allclose(result["spectrum"], [[0.5, 0, 0]])  # mean of [1, 0, 0] and the all-zero [0, 0, 0]
  assert np.isfinite(result["sigma1_share"]).all()
  with pytest.raises(ValueError, match=r"must be \[layers, prompts, languages, hidden\], got shape \(2, 3, 4\)"):
    consistency.layer_spectra(np.ones((2, 3, 4)))
  with pytest.raises(ValueError, match=r"at least 1 layer, 1 prompt, 2 languages"):
    consistency.layer_spectra(np.ones((2, 3, 1, 4)))
  with pytest.raises(ValueError, match=r"NaN or inf"):
    consistency.layer_spectra(np.full((1, 1, 2, 2), np.nan))


def test_plot_sigma1_share(tmp_path):
  path = tmp_path / "sigma1.png"
  consistency.plot_sigma1_share({"start": [0.3, 0.4, 0.5], "DPO+MLC": [0.3, 0.6, 0.9]}, str(path), languages=10)
  assert path.read_bytes().startswith(PNG_MAGIC)
  with pytest.raises(ValueError, match=r"no curves"):
    consistency.plot_sigma1_share({}, str(path))


def test_no_verdict_counts_are_reported_per_language(tmp_path):
  records = [{"id": 0, "lang": "en", "label": "safe"}, {"id": 1, "lang": "en", "label": "invalid", "no_verdict": True},
             {"id": 0, "lang": "de", "label": "invalid"}]
  summary = summarize(records)
  text = format_report(summary, judge_name="api:m", judge_measures="harm", command="c")
  assert "- Judge replies without a verdict (counted invalid): en 1 of 2, de 0 of 1" in text
  assert "| en | 2 | 50.0 | 0.0 | 50.0 |" in text
  assert "without a verdict" not in format_report(summarize(records[:1]), judge_name="j", judge_measures="m",
                                                   command="c")


def test_an_interrupted_report_leaves_the_previous_one_whole(tmp_path, monkeypatch):
  out = evaluation(tmp_path, "dpo", DPO_ROW)
  before = {p.name: p.read_bytes() for p in out.iterdir()}
  summary = summarize([{"id": 0, "lang": "en", "label": "unsafe"}])

  def interrupted(self, *args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(report_lib, "format_report", lambda *a, **k: "a new report")
  monkeypatch.setattr(type(report_lib.epath.Path(out)), "replace", interrupted)  # Ctrl-C before a rename
  with pytest.raises(KeyboardInterrupt):
    write_report(str(out), summary, judge_name="refusal", judge_measures="m", command="c")
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temporary file left either


def rendered(fig):
  canvas = FigureCanvasAgg(fig)  # as savefig draws it: constrained layout applied
  canvas.draw()
  return canvas.get_renderer()


def assert_title_inside_figure(fig, title):
  renderer = rendered(fig)
  [artist] = [t for t in fig.findobj(Text) if "".join(t.get_text().split()) == "".join(title.split())]
  box, frame = artist.get_window_extent(renderer), fig.bbox
  assert box.width > 0 and frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1, \
      (box, frame)


@pytest.mark.parametrize("languages", [("en", "sw"), MLC10 + ("ko", "it", "vi", "th", "jv")])
def test_the_safety_plot_title_fits_in_the_figure(languages):
  summary = summarize([{"id": 0, "lang": lang, "label": "safe"} for lang in languages], seen_languages=("en",))
  title = ("Multilingual safety evaluation: judge api:meta-llama/Llama-3.3-70B-Instruct-Turbo; mean 100.0 %, "
           "variance 0.00, PAG –")
  assert_title_inside_figure(report_lib.safety_figure(summary, title=title), title)


def test_the_sigma1_plot_has_integer_layer_ticks_and_its_title_fits():
  title = "Cross-lingual collinearity per layer: pku_saferlhf_safety_test.jsonl, 180 prompts × 10 languages " * 2
  fig = consistency.sigma1_share_figure({"start": [1.0, 0.4, 0.5], "DPO+MLC": [1.0, 0.6, 0.9]}, languages=10,
                                        title=title)
  rendered(fig)
  ticks = [t for t in fig.axes[0].get_xticks() if 0 <= t <= 2]
  assert ticks == [0, 1, 2]
  assert_title_inside_figure(fig, title)

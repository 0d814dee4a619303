"""The reference cache is keyed by what the values depend on: the content of the initial weights (not their path),
the model's settings, and the tokenized data."""
import dataclasses
import shutil

import numpy as np
from train_helpers import run_train

from mlc_jax.models import get_preset, init_model, save_hf
from mlc_jax.train.reference import cache_key


@dataclasses.dataclass
class Data:
  ids: np.ndarray


IDENTITY = {"model": "tiny", "init_seed": 0, "dtype": "float32"}


def test_cache_key_follows_the_checkpoint_content_not_its_path(tmp_path):
  data = Data(np.arange(24, dtype=np.int32).reshape(4, 6))
  key = lambda path, d=data: cache_key({**IDENTITY, "hf_path": str(path)}, d, ["ids"])
  save_hf(init_model(get_preset("tiny")), str(tmp_path / "hf"))
  first = key(tmp_path / "hf")
  assert key(tmp_path / "hf") == first
  shutil.copytree(tmp_path / "hf", tmp_path / "copy")
  assert key(tmp_path / "copy") == first  # the same weights elsewhere
  (tmp_path / "hf" / "notes.txt").write_text("not read by load_hf")
  assert key(tmp_path / "hf") == first
  save_hf(init_model(get_preset("tiny"), seed=1), str(tmp_path / "hf"), overwrite=True)  # other weights at the same path
  assert key(tmp_path / "hf") != first
  # the data's shape counts, not only its bytes; and the settings and the random init's seed
  assert key(tmp_path / "copy", Data(data.ids.reshape(6, 4))) != first
  assert cache_key({**IDENTITY, "init_seed": 1}, data, ["ids"]) != cache_key(IDENTITY, data, ["ids"])
  assert cache_key({**IDENTITY, "dtype": "bfloat16"}, data, ["ids"]) != cache_key(IDENTITY, data, ["ids"])


def test_a_run_again_after_its_checkpoint_was_replaced_recomputes_the_reference(tmp_path):
  """A killed run started again in its workdir, model.hf_path rewritten in between: the cache there is not used."""
  hf = tmp_path / "hf"
  save_hf(init_model(get_preset("tiny")), str(hf))
  overrides = (f"model.hf_path={hf}", "mlc.enabled=False", "train.steps=2", "checkpoint.every=1")
  first = run_train(tmp_path / "w", *overrides, kill_after=1)
  assert "ref_logps: computed" in first.stdout, first.stderr[-3000:]
  save_hf(init_model(get_preset("tiny"), seed=1), str(hf), overwrite=True)  # the same path, other weights
  second = run_train(tmp_path / "w", *overrides)
  assert second.returncode == 0, second.stderr[-3000:]
  assert "ref_logps: computed" in second.stdout and "ref_logps: cached" not in second.stdout, second.stdout[-3000:]
  assert len(list((tmp_path / "w" / "reference").iterdir())) == 2

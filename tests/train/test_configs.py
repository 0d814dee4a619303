"""Config files: the paper's defaults, override parsing, and every config preparing on the CPU with model=tiny."""
import os

import pytest

from paths import ROOT, SHARED_DATA

from mlc_jax import config as config_lib
from mlc_jax.train import trainer

MLC_DATA = str(SHARED_DATA / "mlc" / "pku_saferlhf_safety_test.jsonl")


def load(spec):
  return config_lib.load_config_file(os.path.join(ROOT, "configs", spec))


def test_mlc_config_has_the_papers_defaults():
  c = load("mlc.py:model=llama3p1_8b,langs=mlc10,base=dpo")
  assert (c.mlc.tau, c.mlc.weight, c.mlc.extractor_dim, c.mlc.aux_every) == (0.2, 0.8, 512, 2)
  assert (c.objective.name, c.objective.dpo.beta, c.optim.lr, c.optim.schedule) == ("dpo", 0.1, 6e-7, "cosine")
  assert (c.optim.warmup_ratio, c.train.epochs, c.train.batch_size, c.train.grad_accum) == (0.1, 3.0, 4, 1)
  assert c.data.max_prompt_len + c.data.max_response_len == 1024
  assert c.mlc.layer == -1 and c.mlc.normalize == "sigma1" and c.data.langs == "mlc10"


def test_mlc_config_rejects_a_bad_argument():
  with pytest.raises(config_lib.ConfigError, match="bad argument 'size=8b'"):
    load("mlc.py:model=tiny,size=8b")


def test_overrides_are_typed():
  c = config_lib.apply_overrides(load("demo.py"), ["mesh.shape=(2,2,2)", "optim.lr=1", "mlc.enabled=False",
                                                   "data.langs=en,zh", "tokenizer='byte'"])
  assert c.mesh.shape == (2, 2, 2) and c.optim.lr == 1.0 and isinstance(c.optim.lr, float)
  assert c.mlc.enabled is False and c.data.langs == "en,zh" and c.tokenizer == "byte"
  with pytest.raises(config_lib.ConfigError, match=r"--config.mlc.enabled='yes': not a Python literal \(expected bool\)"):
    config_lib.apply_overrides(load("demo.py"), ["mlc.enabled=yes"])
  with pytest.raises(config_lib.ConfigError, match="unknown config key 'optim.learning_rate'; keys under 'optim'"):
    config_lib.apply_overrides(load("demo.py"), ["optim.learning_rate=1"])


def test_resume_guard_ignores_only_harmless_keys():
  a = load("demo.py")
  b = config_lib.apply_overrides(load("demo.py"), ["train.log_every=100", "checkpoint.keep=9"])
  assert config_lib.run_altering_differences(a.to_dict(), b.to_dict()) == []
  c = config_lib.apply_overrides(load("demo.py"), ["mlc.tau=0.5"])
  assert config_lib.run_altering_differences(a.to_dict(), c.to_dict()) == ["mlc.tau"]
  off = lambda *o: config_lib.apply_overrides(load("demo.py"), ["mlc.enabled=False", *o]).to_dict()
  assert config_lib.run_altering_differences(off(), off("mlc.layer=1", "mlc.tau=0.5")) == []
  assert config_lib.run_altering_differences(off(), c.to_dict()) == ["mlc.enabled", "mlc.tau"]
  # a run saved before a key existed resumes while the key stays at its default, not once it is changed
  older = a.to_dict()
  del older["data"]["pack_pairs"]
  assert config_lib.run_altering_differences(older, a.to_dict()) == []
  packed = config_lib.apply_overrides(load("demo.py"), ["data.pack_pairs=1"])
  assert config_lib.run_altering_differences(older, packed.to_dict()) == ["data.pack_pairs"]


@pytest.mark.parametrize("spec", ["demo.py", "mlc.py:model=tiny,langs=builtin", "mlc.py:model=tiny,langs=mlc10",
                                  "mlc.py:model=tiny_gemma2,langs=mlc10,data=mlc_jsonl,base=orpo,mlc=false"])
def test_every_config_prepares_with_the_tiny_model_on_cpu(tmp_path, spec):
  c = load(spec)
  if c.data.source != "builtin" and not os.path.isfile(MLC_DATA):
    pytest.skip(f"{MLC_DATA} is not here")
  c.data.path = MLC_DATA if c.data.source == "mlc_jsonl" else ""
  c.data.manual_dir, c.data.data_dir = os.path.dirname(os.path.dirname(MLC_DATA)), str(tmp_path / "tfds")
  c.train.batch_size = 8  # 8 simulated devices
  prepared = trainer.prepare(c, str(tmp_path / "w"))
  assert prepared.total_steps > 0 and len(prepared.data) >= 8
  assert not (tmp_path / "w").exists()


def test_mlc_config_trains_a_few_steps_from_the_tfds_dataset(tmp_path):
  if not os.path.isfile(MLC_DATA):
    pytest.skip(f"{MLC_DATA} is not here")
  c = config_lib.apply_overrides(load("mlc.py:model=tiny,langs=mlc10"), [
      "train.steps=3", "train.batch_size=8", "data.max_prompt_len=24", "data.max_response_len=24",
      "data.mlc_prompt_len=24", "mlc.extractor_dim=16", f"data.manual_dir={os.path.dirname(os.path.dirname(MLC_DATA))}",
      f"data.data_dir={tmp_path / 'tfds'}"])
  last = trainer.train(c, str(tmp_path / "w"))
  assert last["step"] == 3 and last["dpo_loss"] > 0 and 0 < last["sigma1_share"] <= 1
  assert (tmp_path / "tfds" / "mlc_pku_saferlhf" / "dpo").is_dir()


def test_every_command_in_a_config_docstring_loads():
  """The commands the configs document (`--config configs/NAME.py:ARG`) give valid configs."""
  import re

  specs = set()
  for name in os.listdir(os.path.join(ROOT, "configs")):
    if name.endswith(".py"):
      text = open(os.path.join(ROOT, "configs", name)).read()
      specs |= set(re.findall(r"--config (configs/\w+\.py(?::\S+)?)", text))
  assert {s.split(":")[0] for s in specs} == {f"configs/{n}.py" for n in ("demo", "mlc", "mpo", "msd", "transfer")}
  # configs/transfer.py's commands are templates (task=TASK, start=START_HF) that scripts/experiment_transfer.py
  # fills in: the quick experiment's test runs them
  for spec in sorted(s for s in specs if not re.search(r"=[A-Z_]+\b", s)):
    config = config_lib.load_config_file(os.path.join(ROOT, spec))
    for devices in (1, 4):  # one GPU; the 4 chips of a v5p-8 slice
      config_lib.validate(config, devices)

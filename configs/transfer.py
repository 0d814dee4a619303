"""The CPU transfer experiment (docs/experiments/transfer.md): a misaligned start, then English-only DPO ± MLC.

  python -m mlc_jax.train --config configs/transfer.py:stage=sft,task=TASK --workdir runs/transfer/start
  python -m mlc_jax.train --config configs/transfer.py:stage=dpo_mlc,task=TASK,start=START_HF \\
      --config.train.seed=1 --workdir runs/transfer/dpo_mlc-1

`scripts/experiment_transfer.py` writes TASK (mlc_jax/experiments/transfer_task.py) and runs every stage; these
commands are what it runs. ARG is `key=value` pairs separated by commas:
  stage  sft (the misaligned start: every train prompt in every language, answered mostly by its compliance) |
         dpo (English pairs only) | dpo_mlc (the same pairs plus MLC on the prompt variants in the seen languages)
  task   the folder with sft.jsonl / align.jsonl (required)
  start  the start model's HF export (dpo, dpo_mlc: required)
  langs  the start model's languages (a set name or codes joined by '+') [multijail]
  seen   the alignment's languages joined by '+', English first [en+zh+ar+bn+sw]

Settings: SFT and the alignment runs share the model (`small`, 0.9M parameters, byte tokenizer) and the token
budgets. DPO and DPO+MLC differ only in mlc.enabled; both start from the same export, read the same pairs and take
the same steps at the same learning rate. The DPO arm carries RPO's NLL term (objective.dpo.nll_weight = 1): plain
DPO on byte sequences pushed the chosen refusal down with the compliance and the replies fell apart (measured,
docs/experiments/transfer.md). β is the paper's 0.1; α and the share of benign pairs were chosen on the validation
split by hand (the trials are listed in docs/experiments/transfer.md), then the learning rate and steps (DPO arm),
MLC's λ and layer, then τ by the full validation sweep `scripts/experiment_transfer.py --select` (12 runs, seed 0):
lr 3e-4, 60 steps, λ 1.0, the final-norm output (layer -1), τ 0.2 (the paper's).
"""
import os
import types

from mlc_jax.config import ConfigError, base_config, parse_arg
from mlc_jax.experiments.transfer_task import ALIGN_RESPONSE_LEN, PROMPT_LEN, RESPONSE_LEN

STAGES = ("sft", "dpo", "dpo_mlc")

SFT = dict(steps=200, lr=3e-3, batch_size=32)
ALIGN = dict(steps=60, lr=3e-4, batch_size=16, beta=0.1, nll_weight=1.0)
MLC = dict(weight=1.0, tau=0.2, layer=-1, aux_every=1, extractor_dim=64)


def _stage(c, path: str, langs: str, response_len: int, schedule: dict):
  """The stage's data (an mlc_jsonl file, languages joined by '+') and its optimisation schedule."""
  c.data.path, c.data.langs, c.data.max_response_len = path, langs.replace("+", ","), response_len
  c.optim.lr, c.train.batch_size = schedule["lr"], schedule["batch_size"]
  c.train.steps = c.checkpoint.every = schedule["steps"]


def get_config(arg=None):
  a = parse_arg(arg, file="configs/transfer.py", choices=dict(stage=STAGES),
                defaults=dict(stage="sft", task="", start="", langs="multijail", seen="en+zh+ar+bn+sw"))
  if not a["task"]:
    raise ConfigError("configs/transfer.py: task=DIR is required (the folder scripts/experiment_transfer.py writes)")
  args = types.SimpleNamespace(**a)
  c = base_config()
  c.model.preset = "small"
  c.data.source = "mlc_jsonl"
  c.data.max_prompt_len = PROMPT_LEN
  c.data.mlc_prompt_len = PROMPT_LEN
  c.optim.warmup_ratio = 0.1
  c.train.grad_accum = 1
  c.train.log_every = 10
  c.checkpoint.keep = 1
  if args.stage == "sft":
    c.objective.name = "sft"
    c.mlc.enabled = False
    _stage(c, os.path.join(args.task, "sft.jsonl"), args.langs, RESPONSE_LEN, SFT)
    return c
  if not args.start:
    raise ConfigError(f"configs/transfer.py: stage={args.stage} needs start=HF_DIR (the start model's export)")
  c.model.hf_path = args.start
  c.objective.name = "dpo"
  c.objective.dpo.beta = ALIGN["beta"]
  c.objective.dpo.nll_weight = ALIGN["nll_weight"]
  _stage(c, os.path.join(args.task, "align.jsonl"), args.seen, ALIGN_RESPONSE_LEN, ALIGN)
  c.mlc.enabled = args.stage == "dpo_mlc"
  for key, value in MLC.items():
    setattr(c.mlc, key, value)
  return c

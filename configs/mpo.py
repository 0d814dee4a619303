"""MPO ("Multilingual Safety Alignment via Reward Gap Optimization", ACL 2025): L = L1 + L2 (DESIGN.md §2.2).

  python -m mlc_jax.train --config configs/mpo.py:model=tiny,data=qwen --workdir WORKDIR

ARG is `key=value` pairs separated by commas:
  model  llama3p1_8b | gemma2_9b | qwen2p5_7b (the paper's models) | tiny (a CPU-sized Llama) [tiny]
  data   llama | gemma | qwen: the mpo_pairs TFDS dataset (the paper's data for that model) [the model's own;
         llama for tiny]
  langs  the target languages to train on: a set name (mpo = en zh ja ko ar bn sw) or codes joined by '+' [mpo]

L1 = mean_batch (β · RG_θ(target pair) − RG_ref(dominant pair))², RG = mean-token log π(chosen) − mean-token
log π(rejected); L2 = MSE of the mean-pooled final hidden states of the dominant chosen and rejected sequences
(policy vs frozen initial model). Both dominant-side quantities come from the initial model, so they are
computed in one pass before training and cached in WORKDIR/reference (no second model in memory). The
dominant language is whatever each pair's source side is written in: English for the Llama and Gemma data,
Chinese for 582 of the 600 Qwen pairs (English for 18), where English is also a target language.

The paper's settings, one command each (from the official code: β, learning rate, epochs, data):

  Llama-3.1-8B-Instruct: β 1.0, lr 6e-7, 2 epochs, mpo_pairs/llama (dominant en; targets ko bn ar ja sw zh)
    python -m mlc_jax.train --config configs/mpo.py:model=llama3p1_8b \
      --config.model.hf_path=/ckpt/Llama-3.1-8B-Instruct --workdir $RUNS/mpo-llama
  Gemma-2-9B-it: β 1.5, lr 4e-7, 2 epochs, mpo_pairs/gemma (dominant en; targets ar bn ja sw zh ko en)
    python -m mlc_jax.train --config configs/mpo.py:model=gemma2_9b \
      --config.model.hf_path=/ckpt/gemma-2-9b-it --workdir $RUNS/mpo-gemma
  Qwen2.5-7B-Instruct: β 1.5, lr 6e-7, 2 epochs, mpo_pairs/qwen (dominant zh; targets en ko ja bn sw ar)
    python -m mlc_jax.train --config configs/mpo.py:model=qwen2p5_7b \
      --config.model.hf_path=/ckpt/Qwen2.5-7B-Instruct --workdir $RUNS/mpo-qwen

Our choices where our notes of the paper are silent: batch 8 (one batch of 8 pairs per optimizer step; add
--config.train.grad_accum=K to accumulate it in K micro-batches when memory is short), cosine schedule with
warmup 0.1, prompt 256 + response 768 tokens (1024, LLaMA-Factory's cutoff), bf16 activations with fp32
master weights and Adam, full remat. About 600 pairs / 8 = 75 steps an epoch, 150 in all.
What the paper reports: on all three models MPO lowers the rate of unsafe responses in the target languages
while keeping the dominant language's safety and general multilingual utility (MT-Bench, M-MMLU, MGSM); the
per-model numbers are in its tables, not in our notes.

Shape it is meant for (docs/scaling.md, compiled for the TPU with `python -m mlc_jax.compile`): a TPU v5p-8 slice
(4 chips, 95 GiB each, FSDP over all chips: mesh.shape (1,-1,1), the default) with bf16 activations over fp32
master weights and AdamW, full remat and vocab_chunk = vocabulary / 8 (set here): 49.2 GiB a chip for
Llama-3.1-8B, 53.8 for Gemma-2-9B, 46.5 for Qwen2.5-7B; or a v5e-16 (16 × 16 GiB) with
--config.mesh.shape='(1,8,2)' (Llama-3.1-8B: 14.5 GiB a chip, tight). On GPUs about 16 bytes a parameter plus
activations: at least 2 × 80 GB (not measured). $RUNS is a local disk or a gcsfuse mount (docs/training.md).
`model=tiny` runs the whole recipe on a CPU in under a minute (byte tokenizer, 128 + 128 tokens, 20 steps).

Metrics (WORKDIR/metrics.jsonl): mpo_loss (L1), retention_loss (L2), reward_margin (β · target RG) and
dominant_gap (the frozen dominant RG) overall and per target language (`reward_margin/ko`, `dominant_gap/ko`,
`mpo_loss/ko`, `reward_acc/ko`, …): training closes reward_margin/xx onto dominant_gap/xx.
"""
from mlc_jax.config import base_config, parse_arg
from mlc_jax.models import PRESETS

# The paper's per-model hyper-parameters (official code).
PAPER = {
    "llama3p1_8b": dict(data="llama", beta=1.0, lr=6e-7),
    "gemma2_9b": dict(data="gemma", beta=1.5, lr=4e-7),
    "qwen2p5_7b": dict(data="qwen", beta=1.5, lr=6e-7),
    "tiny": dict(data="llama", beta=1.0, lr=1e-3),
}
DATASETS = ("llama", "gemma", "qwen")


def get_config(arg=None):
  a = parse_arg(arg, file="configs/mpo.py", defaults=dict(model="tiny", data="", langs="mpo"),
                choices=dict(model=tuple(PAPER), data=("", *DATASETS)))  # data '' = the model's own
  a["data"] = a["data"] or PAPER[a["model"]]["data"]
  paper = PAPER[a["model"]]
  c = base_config()
  c.model.preset = a["model"]
  c.objective.name = "mpo"
  c.objective.mpo.beta = paper["beta"]
  c.mlc.enabled = False
  c.data.source, c.data.name = "tfds", f"mpo_pairs/{a['data']}"
  c.data.langs = a["langs"].replace("+", ",")
  c.eval.langs = "multijail"
  c.optim.lr = paper["lr"]
  c.optim.warmup_ratio = 0.1
  c.train.epochs = 2.0
  c.train.batch_size, c.train.grad_accum = 8, 1
  c.data.max_prompt_len, c.data.max_response_len = 256, 768
  if a["model"] == "tiny":  # a CPU-sized variant of the same recipe
    c.data.max_prompt_len, c.data.max_response_len = 128, 128
    c.train.batch_size, c.train.grad_accum, c.train.steps = 4, 1, 20
  else:
    c.tokenizer = ""  # the checkpoint's own tokenizer (set model.hf_path)
    c.model.dtype = "bfloat16"
    c.model.remat = "full"
    c.model.vocab_chunk = PRESETS[a["model"]].vocab_size // 8  # log-partition over 8 chunks (docs/scaling.md)
  return c

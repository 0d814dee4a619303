"""MLC ("Align Once, Benefit Multilingually", ICLR 2026): a monolingual objective plus the MLC consistency loss.

  python -m mlc_jax.train --config configs/mlc.py:model=tiny,langs=mlc10,base=dpo --workdir WORKDIR

ARG is `key=value` pairs separated by commas:
  model  a preset of mlc_jax.models.PRESETS (tiny, qwen2p5_7b, gemma2_9b, llama3p1_8b, …) [tiny]
  langs  a language set (mlc10, multijail, builtin, …) or languages joined by '+' (en+zh+sw) [mlc10]
  base   the monolingual objective: sft | dpo | ipo | hinge | simpo | orpo [dpo]
  mlc    true | false: add the MLC consistency loss (false = the monolingual baseline) [true]
  data   tfds (the mlc_pku_saferlhf/dpo builder) | mlc_jsonl | builtin [tfds unless langs=builtin]

Per base: DPO sigmoid β 0.1 (the paper); IPO β 0.1, hinge β 0.1, ORPO β 0.1 (TRL's defaults); SimPO β 2.0,
γ 0.5 (the SimPO paper's range); SFT has no β. SimPO, ORPO and SFT use no reference model. The paper reports
MLC on top of SFT, DPO, SimPO and ORPO without their hyper-parameters: these are our defaults.

Paper setting (DESIGN.md §2.1): DPO (sigmoid, β 0.1), full fine-tuning, lr 6e-7, 3 epochs, batch 1 × grad-accum
4, cosine with warmup 0.1, cutoff 1024, τ 0.2, λ 0.8, extractor 512, MLC every 2nd step, representation =
final-norm output, ≤ 3000 samples, bf16; Qwen2.5-7B-Instruct and Gemma-2-9B-it, 10 languages (mlc10).

The paper's runs, one command each (add --config.model.hf_path=/ckpt/<checkpoint> --workdir $RUNS/<name>):
  DPO + MLC, Qwen2.5-7B-Instruct (the main result)
    python -m mlc_jax.train --config configs/mlc.py:model=qwen2p5_7b,langs=mlc10,base=dpo
    reported: average safety over 10 languages 66.4 % (DPO) → 95.9 % (DPO+MLC), cross-language variance
    12.44 → 0.07, MultiJail attack success 10.5 % → 0.7 %, MMLU change < 1 %
  DPO baseline it is compared with (monolingual):   ...:model=qwen2p5_7b,langs=mlc10,base=dpo,mlc=false
  DPO + MLC, Gemma-2-9B-it:                         ...:model=gemma2_9b,langs=mlc10,base=dpo
  Scale ablation:                                   ...:model=qwen2p5_1p5b,…  and  ...:model=qwen2p5_3b,…
  Other base objectives (each with mlc=false for its baseline):
    ...:model=qwen2p5_7b,langs=mlc10,base=sft      ...:model=qwen2p5_7b,langs=mlc10,base=simpo
    ...:model=qwen2p5_7b,langs=mlc10,base=orpo
    reported: MLC improves multilingual safety over each base; the per-base numbers are in the paper's
    tables, not in our notes. ipo and hinge are ours (not in the paper), for comparison.
Batch: the paper's 1 pair × grad-accum 4 is one optimizer step on 4 pairs; here train.batch_size=4 with
train.grad_accum=1, the same update (tests/train/test_step.py checks accumulation equals one big batch), split over
up to 4 data shards. On 8 chips use --config.train.batch_size=8 or --config.mesh.shape='(1,4,2)'.

Shape it is meant for (docs/scaling.md, each compiled for the TPU with `python -m mlc_jax.compile`): the 7-9B
models on a TPU v5p-8 slice (4 chips, 95 GiB each, FSDP over all chips: mesh.shape (1,-1,1), the default), bf16
activations over fp32 master weights and AdamW, full remat, vocab_chunk = vocabulary / 8 (set here for non-tiny
models): DPO+MLC takes 48.6 GiB a chip on Qwen2.5-7B, 50.8 on Llama-3.1-8B, 59.5 on Gemma-2-9B; the other bases
with MLC 46.5-48.6 GiB, without it 33-35 GiB. Scale ablation: Qwen2.5-1.5B on a v5e-4 (4 × 16 GiB, 11.1 GiB a
chip), Qwen2.5-3B on a v5e-8 with --config.mesh.shape='(1,4,2)' (10.3 GiB a chip). Llama-3.1-70B DPO+MLC on a
v5p-64 (32 chips) with 4-way FSDP × 8-way tensor parallelism (59.5 GiB a chip):
  python -m mlc_jax.train --config configs/mlc.py:model=llama3p1_70b,langs=mlc10 --config.mesh.shape='(1,4,8)' \
    --config.model.hf_path=/ckpt/Llama-3.1-70B-Instruct --workdir $RUNS/mlc-llama70b
GPUs: about the same bytes (≈ 16 a parameter plus activations), e.g. at least two 80 GB GPUs for 7-9B (not
measured). The dpo/ipo/hinge reference is precomputed before training (one forward pass over the data, cached in
WORKDIR/reference). For example
  python -m mlc_jax.train --config configs/mlc.py:model=llama3p1_8b,langs=mlc10 \
    --config.model.hf_path=/path/to/Llama-3.1-8B-Instruct --workdir $RUNS/mlc-llama8b
`model=tiny` (or tiny_qwen2, tiny_qwen3, tiny_gemma2, tiny_gemma3) runs on a CPU in minutes. The data is the
`mlc_pku_saferlhf/dpo` TFDS dataset, prepared on first use from `data.manual_dir` (../shared/data).
"""
from mlc_jax.config import base_config, parse_arg
from mlc_jax.models import PRESETS

JSONL_DATA = "../shared/data/mlc/pku_saferlhf_safety_test.jsonl"

# Per base objective: its hyper-parameters (objective.<base>.*) where they differ from the objective's defaults.
BASE_HYPERPARAMETERS = {"sft": {}, "dpo": dict(beta=0.1), "ipo": dict(beta=0.1), "hinge": dict(beta=0.1),
                        "simpo": dict(beta=2.0, gamma=0.5), "orpo": dict(beta=0.1)}


def get_config(arg=None):
  a = parse_arg(arg, file="configs/mlc.py", choices=dict(mlc=("true", "false"), base=tuple(BASE_HYPERPARAMETERS)),
                defaults=dict(model="tiny", langs="mlc10", base="dpo", mlc="true", data=""))
  c = base_config()
  c.model.preset = a["model"]
  c.objective.name = a["base"]
  c.objective[a["base"]].update(BASE_HYPERPARAMETERS[a["base"]])
  c.mlc.enabled = a["mlc"] == "true"
  c.data.langs = a["langs"].replace("+", ",")
  c.data.source = a["data"] or ("builtin" if a["langs"] == "builtin" else "tfds")
  c.data.path = JSONL_DATA if c.data.source == "mlc_jsonl" else ""
  # The paper's cutoff is 1024 tokens for prompt + response.
  c.data.max_prompt_len, c.data.max_response_len, c.data.mlc_prompt_len = 256, 768, 256
  if a["model"].startswith("tiny"):  # a CPU-sized variant of the same recipe
    c.data.max_prompt_len, c.data.max_response_len, c.data.mlc_prompt_len = 128, 128, 128
    c.mlc.extractor_dim = 64
    c.optim.lr = 1e-3
    c.train.batch_size, c.train.grad_accum, c.train.steps = 4, 1, 20
  else:
    c.train.grad_accum = 1  # the paper's 1 × 4 accumulated as one batch of 4 (splits over 4 chips)
    c.tokenizer = ""  # the checkpoint's own tokenizer (set model.hf_path)
    c.model.dtype = "bfloat16"
    c.model.remat = "full"
    c.model.vocab_chunk = PRESETS[a["model"]].vocab_size // 8  # log-partition over 8 chunks (docs/scaling.md)
  return c

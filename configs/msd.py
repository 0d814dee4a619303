"""MSD ("Multilingual Safety Alignment via Self-Distillation", 2026): the model is its own teacher (DESIGN.md §2.3).

  python -m mlc_jax.train --config configs/msd.py:model=tiny,mode=on_policy --workdir WORKDIR

ARG is `key=value` pairs separated by commas:
  model  qwen2p5_7b | llama3p1_8b | qwen3_8b (the paper's models; Llama-3-8B as our Llama-3.1-8B preset) |
         tiny (a CPU-sized Llama) [tiny]
  mode   on_policy (responses sampled from the current student before every step) | off_policy (sampled once
         from the teacher, cached in WORKDIR/reference) [on_policy]
  langs  a language set or codes joined by '+'; must include en, every other language is a target
         [xsafety for the paper models: ar bn de en fr hi ja ru sp zh; builtin for tiny]

The student sees the prompt in a target language; the teacher (the frozen initial model, `reference=frozen_copy`)
sees the prompt, its English translation and our reasoning instruction (`objective.msd.teacher_template`). The loss
is the per-token reverse KL from student to teacher on the sampled response, weighted by Dual-Perspective Safety
Weighting: teacher confidence (1 − entropy of its top-K renormalised distribution / log K) × student risk
(1 − the student's probability of the teacher's choice), normalised per response.

What the paper reports (abstract and secondary summaries; the full text was not at hand): MSD beats prior methods
on multilingual safety (MultiJail, PKU-SafeRLHF) with Qwen2.5-7B, Qwen3-8B, Llama-2-7B and Llama-3-8B, generalises
to unseen languages and keeps utility (MMMLU, MGSM). It trains on prompts only (XSafety); we evaluate on MultiJail,
which is never trained on.

Every setting below is OURS: the paper does not publish them.
  teacher_template: the prompt, "(The same request in English: …)", then "First consider, in English, whether
    answering this request could cause harm. If it could, refuse politely; if not, help. Reply in the language of
    the original request." (`mlc_jax/objectives/msd.py` DEFAULT_TEACHER)
  top_k 20, weighting dpsw, temperature 1.0, top_p 1.0, max_new_tokens 128 (48 for tiny), resample_every 1
  (on-policy: N > 1 samples the next N steps' prompts at once, responses up to N-1 steps old), lr 1e-6 (1e-3 for tiny),
  batch 8 prompts, 1 epoch over XSafety's aligned prompts (2,800 rows × 9 targets ≈ 25k examples, capped at
  train.steps=500), cosine schedule with warmup 0.1, prompt 128 and teacher context 256 tokens, bf16 activations,
  fp32 master weights and AdamW, full remat.

The paper's runs, one command each (add --config.model.hf_path=/ckpt/<checkpoint> --workdir $RUNS/<name>):
  python -m mlc_jax.train --config configs/msd.py:model=qwen2p5_7b,mode=on_policy
  python -m mlc_jax.train --config configs/msd.py:model=qwen2p5_7b,mode=off_policy
  python -m mlc_jax.train --config configs/msd.py:model=llama3p1_8b,mode=on_policy
  python -m mlc_jax.train --config configs/msd.py:model=qwen3_8b,mode=on_policy

Shape it is meant for: a 7-8B model with fp32 AdamW (16 bytes a parameter) and the frozen teacher, a second copy of
the parameters in the train state (4 bytes): about 20 bytes a parameter, 140-165 GiB plus activations and the
sampler's KV cache: a TPU v5p-8 slice (4 chips, 95 GiB each, FSDP over all chips) or several 80 GB GPUs. Compiled
for v5p:2x2x1 (docs/scaling.md): 39.5-42.3 GiB a chip for the train step, 32-35 GiB for the on-policy sampler with
the train state resident; every model fits.
`model=tiny` trains on the CPU in minutes with the built-in prompts.

Metrics (WORKDIR/metrics.jsonl): msd_loss, kl (the unweighted mean reverse KL), dpsw_weight_raw (mean w before
normalisation) and dpsw_weight_spread, sample_length, sampling_share (of the step time, on-policy), each also per
target language (`kl/sw`, …).
"""
from mlc_jax.config import base_config, parse_arg

MODELS = ("qwen2p5_7b", "llama3p1_8b", "qwen3_8b", "tiny")


def get_config(arg=None):
  a = parse_arg(arg, file="configs/msd.py", defaults=dict(model="tiny", mode="on_policy", langs=""),
                choices=dict(model=MODELS, mode=("on_policy", "off_policy")))
  tiny = a["model"] == "tiny"
  c = base_config()
  c.model.preset = a["model"]
  c.objective.name = "msd"
  c.objective.msd.mode = a["mode"]
  c.reference = "frozen_copy"  # the teacher runs in every step
  c.mlc.enabled = False
  c.data.langs = (a["langs"] or ("builtin" if tiny else "xsafety")).replace("+", ",")
  c.eval.langs = "multijail"
  c.optim.warmup_ratio = 0.1
  c.train.grad_accum = 1
  if tiny:  # a CPU-sized variant of the same recipe, on the built-in prompts
    c.data.source = "builtin"
    c.data.max_prompt_len = 320  # bytes: the longest built-in prompt is 306 tokens, its teacher context 611
    c.objective.msd.teacher_prompt_len = 640
    c.objective.msd.max_new_tokens = 48
    c.optim.lr = 1e-3
    c.train.batch_size, c.train.steps, c.train.log_every = 8, 40, 5
    c.checkpoint.every = 20
  else:
    c.data.source, c.data.name = "tfds", "xsafety/aligned"
    c.data.max_prompt_len = 128
    c.objective.msd.teacher_prompt_len = 256
    c.objective.msd.max_new_tokens = 128
    c.optim.lr = 1e-6
    c.train.batch_size, c.train.epochs, c.train.steps = 8, 1.0, 500
    c.tokenizer = ""  # the checkpoint's own tokenizer (set model.hf_path)
    c.model.dtype = "bfloat16"
    c.model.remat = "full"
    # A vocabulary chunk of an eighth (a quarter for Llama: libtpu 0.0.42 aborts compiling the streamed KL at
    # 128256 / 8 = 16032 columns, "rotated_pincer_fusion_emitter: Check failed"): docs/scaling.md.
    c.model.vocab_chunk = {"qwen2p5_7b": 152064 // 8, "llama3p1_8b": 128256 // 4, "qwen3_8b": 151936 // 8}[a["model"]]
  return c

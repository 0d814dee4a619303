"""TRL side of scripts/bench.py: TRL's `DPOTrainer` (PyTorch, CPU) on the same weights, data and settings.

Two halves. The driver half (`ensure_trl_venv`, `TRLWorker`, `peak_matmul_torch`, `word_tokenizer`) is imported
by scripts/bench.py. The worker half (`main`) runs in its own virtual environment `.venv-bench-trl/` (trl, torch,
transformers, datasets; `ensure_trl_venv` creates it), started by scripts/bench.py as a worker process and driven
over stdin/stdout so the two sides can be interleaved:

  worker → `BENCH {"event": "ready", ...}`   after the trainer is built and the reference log-probs are
                                             precomputed (not timed as training)
  bench  → `go`                              run one round: `warmup` untimed steps, then `steps` timed steps
  worker → `BENCH {"event": "round", "times": [...]}` and waits for the next `go` (after the last round it exits)

Step time = wall time between the ends of consecutive optimizer steps (`on_step_end`), so it covers everything
the trainer does per step: data loading and collation, forward, backward, clipping, AdamW and its callbacks.

Setting `mlc` subclasses `DPOTrainer` to add λ·MLC (DESIGN.md §2.1) on every step, written in plain PyTorch as a
user of the official (PyTorch) code would: final-norm hidden state at the last prompt token of each of the L
variants, a Linear(hidden → 512) extractor trained with the model, row-normalised singular values, and
`−log softmax(s/τ)_0` with `s = σ/stop_grad(σ_1)`.

`--peak` instead prints the best fp32 `torch.mm` rate (a cross-check of bench.py's peak matmul FLOP/s).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRL_VENV = os.path.join(ROOT, ".venv-bench-trl")
TRL_PACKAGES = ("torch==2.13.0", "trl", "transformers", "datasets")
EOS_TOKEN = "</s>"
PAD_TOKEN = "<pad>"
# The word tokenizer's chat template renders a user turn as its text alone: the prompt ids are the prompt's words.
WORD_CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"


# ------------------------------------------------------------------------------------------ driver (bench.py)
def ensure_trl_venv(path: str = TRL_VENV) -> str:
  """The TRL virtual environment's python, creating and installing it on first use (about a minute)."""
  python = os.path.join(path, "bin", "python")
  stamp = os.path.join(path, ".bench-installed")
  if not os.path.isfile(stamp):
    print(f"[bench] setting up {path}: pip install {' '.join(TRL_PACKAGES)}", flush=True)
    if not os.path.isfile(python):
      base = getattr(sys, "_base_executable", None) or shutil.which("python3")
      subprocess.run([base, "-m", "venv", path], check=True)
    with open(os.path.join(path, ".gitignore"), "w") as f:
      f.write("*\n")  # keep the environment out of git whatever the repository's .gitignore says
    subprocess.run([python, "-m", "pip", "install", "-q", *TRL_PACKAGES], check=True)
    subprocess.run([python, "-c", "import trl, torch, transformers, datasets"], check=True)
    open(stamp, "w").close()
  return python


class TRLWorker:
  """scripts/bench_trl.py in the TRL environment, driven one round at a time."""

  def __init__(self, python: str, workdir: str, setting: str, args):
    self.setting = setting
    self.log_path = os.path.join(workdir, f"trl_{setting}.log")
    self.log = open(self.log_path, "w")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", TQDM_DISABLE="1", HF_DATASETS_CACHE=os.path.join(workdir, "hf_cache"))
    env.pop("PYTHONPATH", None)
    if args.trl_malloc == "tuned":  # the host allocator settings our side runs with (mlc_jax.host_malloc)
      from mlc_jax import host_malloc
      env["GLIBC_TUNABLES"] = host_malloc.GLIBC_TUNABLES
    cmd = [python, os.path.abspath(__file__), "--workdir", workdir, "--setting", setting,
           "--threads", str(args.threads), "--rounds", str(args.rounds), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--round_warmup", str(args.round_warmup)]
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                 env=env)
    self.ready = self._read("ready")

  def _read(self, event: str) -> dict:
    for line in self.proc.stdout:
      if line.startswith("BENCH "):
        msg = json.loads(line[6:])
        if msg["event"] == event:
          return msg
    self.log.flush()
    tail = open(self.log_path).read()[-3000:]
    raise RuntimeError(f"TRL worker ({self.setting}) exited (rc={self.proc.wait()}) before '{event}'; "
                       f"log {self.log_path}:\n{tail}")

  def run_round(self) -> dict:
    self.proc.stdin.write("go\n")
    self.proc.stdin.flush()
    return self._read("round")

  def close(self):
    try:
      self.proc.stdin.close()
    except OSError:
      pass
    self.proc.wait(timeout=60)
    self.log.close()


def peak_matmul_torch(python: str) -> dict | None:
  out = subprocess.run([python, os.path.abspath(__file__), "--workdir", ".", "--peak"],
                       capture_output=True, text=True, check=True)
  for line in out.stdout.splitlines():
    if line.startswith("BENCH "):
      return json.loads(line[6:])
  return None


def word_tokenizer(vocab_size: int, eos_id: int, pad_id: int):
  """A tokenizer whose tokens map 1:1 to ids: `t<i>` ↔ i (split on whitespace), `</s>` ↔ eos_id, `<pad>` ↔ pad_id.

  Both sides tokenise with it: our `tokenize_examples` (through `WORD_CHAT_TEMPLATE`) and TRL's trainer.
  """
  from tokenizers import Tokenizer, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast

  vocab = {f"t{i}": i for i in range(vocab_size)}
  vocab[EOS_TOKEN], vocab[PAD_TOKEN] = eos_id, pad_id
  del vocab[f"t{eos_id}"], vocab[f"t{pad_id}"]
  tok = Tokenizer(models.WordLevel(vocab, unk_token=PAD_TOKEN))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN,
                                 chat_template=WORD_CHAT_TEMPLATE)


# ----------------------------------------------------------------------------------------- worker (TRL venv)


def emit(**payload):
  sys.stdout.write("BENCH " + json.dumps(payload) + "\n")
  sys.stdout.flush()


def wait_for_go():
  line = sys.stdin.readline()
  if line.strip() != "go":
    sys.exit(0)  # the benchmark went away or told us to stop


def text(ids) -> str:
  return " ".join(f"t{i}" for i in ids)


def build_dataset(data: dict, with_mlc: bool):
  """prompt / chosen / rejected strings whose tokenisation is exactly the benchmark's ids (the eos included)."""
  from datasets import Dataset

  eos = data["eos_id"]
  # A response cut at the length limit has no eos (the real data's longest): none is added then.
  response = lambda ids: " " + (text(ids[:-1]) + " " + EOS_TOKEN if ids[-1] == eos else text(ids))
  rows = {"prompt": [], "chosen": [], "rejected": []}
  for prompt, chosen, rejected in zip(data["prompt"], data["chosen"], data["rejected"]):
    rows["prompt"].append(text(prompt))
    rows["chosen"].append(response(chosen))
    rows["rejected"].append(response(rejected))
  if with_mlc:
    rows["mlc_prompt_ids"] = data["mlc_prompt_ids"]
  return Dataset.from_dict(rows)


def mlc_loss(z, tau: float, eps: float = 1e-12):
  """MLC consistency loss for `z` `[B, L, D]` (the official code's σ_1-normalised form)."""
  import torch
  z = z.float()
  z = z / (z.norm(dim=-1, keepdim=True) + eps)
  s = torch.linalg.svdvals(z)
  s = s / s[:, :1].detach().clamp_min(eps)
  return -torch.log_softmax(s / tau, dim=-1)[:, 0].mean()


def make_trainer_class(with_mlc: bool, mlc_weight: float, tau: float):
  import torch
  from trl import DPOTrainer

  class InOrderDPOTrainer(DPOTrainer):
    """DPOTrainer reading the pairs in order, as our side does: the same batches on both sides, step by step."""

    def _get_train_sampler(self, *args, **kwargs):
      return torch.utils.data.SequentialSampler(self.train_dataset)

  if not with_mlc:
    return InOrderDPOTrainer

  class MLCDPOTrainer(InOrderDPOTrainer):
    """DPOTrainer + λ·MLC on the prompt variants (applied on every step)."""

    def _set_signature_columns_if_needed(self):
      super()._set_signature_columns_if_needed()
      if "mlc_prompt_ids" not in self._signature_columns:
        self._signature_columns = [*self._signature_columns, "mlc_prompt_ids"]

    def compute_ref_log_probs(self, model, inputs):
      inputs = {k: v for k, v in inputs.items() if k != "mlc_prompt_ids"}
      return super().compute_ref_log_probs(model, inputs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
      prompts = inputs.pop("mlc_prompt_ids")  # [B, L, P], all real tokens
      loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
      b, num_langs, p = prompts.shape
      unwrapped = self.accelerator.unwrap_model(model)
      hidden = unwrapped.model(input_ids=prompts.reshape(b * num_langs, p), use_cache=False).last_hidden_state
      z = unwrapped.mlc_extractor(hidden[:, -1]).reshape(b, num_langs, -1)
      extra = mlc_weight * mlc_loss(z, tau)
      if return_outputs:
        return loss[0] + extra, loss[1]
      return loss + extra

  return MLCDPOTrainer


class MLCCollator:
  """The trainer's preference collator plus the stacked MLC prompt variants."""

  def __init__(self, base):
    self.base = base

  def __call__(self, examples):
    import torch
    out = self.base(examples)
    out["mlc_prompt_ids"] = torch.tensor([e["mlc_prompt_ids"] for e in examples], dtype=torch.long)
    return out


def peak_matmul(sizes=(1024, 2048, 3072), reps=5) -> dict:
  import torch
  best = {}
  for n in sizes:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
      torch.mm(a, b)
    times = []
    for _ in range(reps):
      t = time.perf_counter()
      torch.mm(a, b)
      times.append(time.perf_counter() - t)
    best[n] = 2 * n**3 / min(times)
  return {"flops_by_size": best, "peak_flops": max(best.values())}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True, help="holds hf_model/, data.json and (mlc) extractor.npz")
  p.add_argument("--setting", choices=("dpo", "mlc"), default="dpo")
  p.add_argument("--threads", type=int, default=os.cpu_count())
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--warmup", type=int, default=2, help="untimed steps before the first round")
  p.add_argument("--round_warmup", type=int, default=1, help="untimed steps at the start of later rounds")
  p.add_argument("--peak", action="store_true", help="only measure the peak fp32 torch.mm FLOP/s")
  args = p.parse_args()
  import torch
  torch.set_num_threads(args.threads)
  if args.peak:
    emit(event="peak", **peak_matmul())
    return

  os.environ.setdefault("TQDM_DISABLE", "1")
  from transformers import AutoModelForCausalLM, TrainerCallback
  from trl import DPOConfig
  from trl.trainer.dpo_trainer import DataCollatorForPreference

  t_setup = time.perf_counter()
  with open(os.path.join(args.workdir, "data.json")) as f:
    data = json.load(f)
  settings = data["settings"]
  with_mlc = args.setting == "mlc"
  model = AutoModelForCausalLM.from_pretrained(os.path.join(args.workdir, "hf_model"), dtype=torch.float32)
  if with_mlc:
    ext = np.load(os.path.join(args.workdir, "extractor.npz"))
    model.mlc_extractor = torch.nn.Linear(*ext["kernel"].shape)  # registered: trained and in the optimizer
    with torch.no_grad():
      model.mlc_extractor.weight.copy_(torch.from_numpy(ext["kernel"].T.copy()))
      model.mlc_extractor.bias.copy_(torch.from_numpy(ext["bias"]))
  tokenizer = word_tokenizer(model.config.vocab_size, data["eos_id"], data["pad_id"])
  dataset = build_dataset(data, with_mlc)

  total_steps = args.warmup + args.steps + (args.rounds - 1) * (args.round_warmup + args.steps)
  config = DPOConfig(
      output_dir=os.path.join(args.workdir, f"trl_out_{args.setting}"),
      per_device_train_batch_size=settings["batch_size"], gradient_accumulation_steps=1,
      max_steps=total_steps, learning_rate=settings["lr"], lr_scheduler_type="constant", warmup_steps=0,
      optim="adamw_torch", weight_decay=0.0, adam_beta1=settings["b1"], adam_beta2=settings["b2"],
      adam_epsilon=settings["eps"], max_grad_norm=settings["clip_norm"],
      beta=settings["beta"], loss_type=["sigmoid"], label_smoothing=0.0,
      precompute_ref_log_probs=True, precompute_ref_batch_size=settings["batch_size"],
      max_length=None, bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True,
      dataloader_num_workers=0, dataloader_drop_last=True, report_to="none", save_strategy="no",
      logging_strategy="no", disable_tqdm=True, seed=0,
  )
  base_collator = DataCollatorForPreference(pad_token_id=data["pad_id"])
  trainer_cls = make_trainer_class(with_mlc, settings["mlc_weight"], settings["tau"])

  class Timer(TrainerCallback):
    """Times each optimizer step; pauses at round ends until bench.py says `go`."""

    def __init__(self):
      self.done, self.round, self.times, self.last = 0, 0, [], None

    def on_train_begin(self, args_, state, control, **kwargs):
      self.last = time.perf_counter()

    def on_step_end(self, args_, state, control, **kwargs):
      now = time.perf_counter()
      self.times.append(now - self.last)
      self.done += 1
      warm = args.warmup if self.round == 0 else args.round_warmup
      if len(self.times) == warm + args.steps:
        emit(event="round", round=self.round, times=self.times[warm:], warmup_times=self.times[:warm],
             step=state.global_step)
        self.round, self.times = self.round + 1, []
        if self.round < args.rounds:
          wait_for_go()
      self.last = time.perf_counter()

  trainer = trainer_cls(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                        data_collator=MLCCollator(base_collator) if with_mlc else base_collator,
                        callbacks=[Timer()])
  ds = trainer.train_dataset
  lengths = {"prompt": sorted({len(x) for x in ds["prompt_ids"]}),
             "chosen": sorted({len(x) for x in ds["chosen_ids"]}),
             "rejected": sorted({len(x) for x in ds["rejected_ids"]})}
  same_ids = all(list(a) + list(c) == list(e) for a, c, e in zip(ds["prompt_ids"], ds["chosen_ids"], [
      list(pr) + list(ch) for pr, ch in zip(data["prompt"], data["chosen"])]))
  emit(event="ready", setup_s=time.perf_counter() - t_setup, lengths=lengths, same_ids=same_ids,
       ref_chosen=[float(x) for x in ds["ref_chosen_logps"]],
       ref_rejected=[float(x) for x in ds["ref_rejected_logps"]],
       versions={m.__name__: m.__version__ for m in map(__import__, ("torch", "transformers", "trl", "datasets"))},
       threads=torch.get_num_threads(), attn_implementation=getattr(model.config, "_attn_implementation", None))
  wait_for_go()
  trainer.train()


if __name__ == "__main__":
  main()

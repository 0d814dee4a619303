"""Throughput and model-FLOPs utilisation of the mlc_jax train step, against TRL's DPOTrainer on the same machine.

Measures, on whatever backend JAX runs on (the 2-core CPU here), for
  dpo  DPO alone (sigmoid, β = 0.1, precomputed reference log-probs), and
  mlc  DPO + MLC with 10 prompt variants per pair, the MLC term forced on every step (aux_every = 1):
the median step time, preference-pair tokens/s and MFU = analytic model FLOPs per step / step time / peak,
where the peak is the fp32 matmul FLOP/s this script measures on the same machine (best of a large `jnp.dot`
and a large `torch.mm`, timed after warm-up). The FLOP formula is in docs/benchmarks.md and `model_flops`.

Reference setting (all defaults): Llama, 8 layers, hidden 512, MLP 1408, 8 heads (8 kv heads, head_dim 64),
vocab 32000 (58.5M parameters), fp32, 4 pairs × 256 tokens (prompt 64 + response 192), AdamW (no weight decay,
grad clip 1.0, constant lr), no gradient accumulation; MLC: 10 variants × 64 tokens per pair, extractor 512.

TRL side: scripts/bench_trl.py runs TRL's DPOTrainer (PyTorch, CPU) on the same initial weights (written with
`save_hf`), the same token ids (through a 1:1 word tokenizer) and the same settings, in its own virtual
environment `.venv-bench-trl/` (created on first use: pip install torch==2.13.0 trl transformers datasets).
For `mlc` it subclasses DPOTrainer with the same MLC term written in PyTorch. The sides alternate
(ours, TRL, ours, TRL, …, one round each, `--rounds` rounds) so that machine noise (about ±17 % here) hits both;
medians over all timed steps are reported.

Run (about 8 minutes on the idle 2-core CPU; results and the FLOP formula in docs/benchmarks.md):
  .venv/bin/python scripts/bench.py --json runs/bench.json
  .venv/bin/python scripts/bench.py --setting dpo --skip_trl --rounds 1     # ours only, quick
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRL_VENV = os.path.join(ROOT, ".venv-bench-trl")
TRL_PACKAGES = ("torch==2.13.0", "trl", "transformers", "datasets")
PAD_ID, EOS_ID = 0, 2


# ----------------------------------------------------------------------------------------------------- settings
@dataclasses.dataclass(frozen=True)
class Shape:
  batch: int = 4  # preference pairs per step
  prompt_len: int = 64
  response_len: int = 192  # the last token is the eos
  num_langs: int = 10  # MLC prompt variants per pair
  mlc_prompt_len: int = 64

  @property
  def seq_len(self) -> int:
    return self.prompt_len + self.response_len


def model_config():
  from mlc_jax.models import ModelConfig
  return ModelConfig(family="llama", vocab_size=32000, hidden_size=512, intermediate_size=1408, num_layers=8,
                     num_heads=8, num_kv_heads=8, head_dim=64, rope_theta=10000.0, max_position_embeddings=2048,
                     bos_token_id=1, eos_token_id=EOS_ID, pad_token_id=PAD_ID)


def train_config(with_mlc: bool, shape: Shape, lr: float, overrides=()):
  from mlc_jax.train.config_lib import apply_overrides, base_config
  c = base_config()
  c.model.dtype = c.model.param_dtype = "float32"
  c.model.remat = "none"
  c.mlc.enabled = with_mlc
  c.mlc.aux_every = 1
  c.mlc.extractor_dim = 512
  c.train.batch_size, c.train.grad_accum = shape.batch, 1
  c.mesh.shape = (1, 1, 1)
  c.optim.lr, c.optim.schedule, c.optim.weight_decay, c.optim.clip_norm = lr, "constant", 0.0, 1.0
  c.reference = "precomputed"
  return apply_overrides(c, list(overrides))


# -------------------------------------------------------------------------------------------------------- FLOPs
def model_flops(cfg, shape: Shape, *, with_mlc: bool, extractor_dim: int = 512) -> dict[str, float]:
  """Analytic FLOPs of one train step (matmuls only; 1 multiply-add = 2 FLOPs; backward = 2 × forward).

  Per token of a sequence of length S, the forward pass costs
    2 · layers · (attention projections + gated MLP weights)      the blocks' weight matmuls
    + 4 · layers · S · heads · head_dim                             QKᵀ and PV over the FULL S × S matrix
  and, at each position that predicts a token (S − 1 of them), 2 · hidden · vocab for the LM head.
  Training = 3 × forward, on 2·B sequences of T tokens (chosen and rejected). MLC adds 3 × forward of the
  blocks only (no LM head) on B·L sequences of P tokens, plus the extractor at one position per sequence.
  Precomputed reference log-probs cost nothing in the step. Elementwise work (norms, softmax, RoPE, AdamW, the
  SVD of a 10 × 512 matrix) is not counted.
  """
  d, f, n, k, h, v = (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                      cfg.vocab_size)
  layer_weights = d * h * (2 * n + 2 * k) + 3 * d * f

  def blocks_fwd(seqs: int, s: int, causal_half: bool = False) -> float:
    attn = 4 * s * n * h * (0.5 if causal_half else 1.0)
    return seqs * s * cfg.num_layers * (2 * layer_weights + attn)

  t = shape.seq_len
  out = {}
  for half in (False, True):
    dpo = 3 * (blocks_fwd(2 * shape.batch, t, half) + 2 * shape.batch * (t - 1) * 2 * d * v)
    mlc = 3 * (blocks_fwd(shape.batch * shape.num_langs, shape.mlc_prompt_len, half)
               + shape.batch * shape.num_langs * 2 * d * extractor_dim) if with_mlc else 0.0
    suffix = "_causal" if half else ""
    out[f"dpo{suffix}"], out[f"mlc{suffix}"], out[f"total{suffix}"] = dpo, mlc, dpo + mlc
  out["layer_weight_params"] = layer_weights
  return out


# ---------------------------------------------------------------------------------------------------- peak FLOPs
def peak_matmul_jax(sizes=(1024, 2048, 3072), reps=5) -> dict:
  import jax
  import jax.numpy as jnp
  rates = {}
  for n in sizes:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    for _ in range(2):
      dot(a, b).block_until_ready()
    times = []
    for _ in range(reps):
      t0 = time.perf_counter()
      dot(a, b).block_until_ready()
      times.append(time.perf_counter() - t0)
    rates[n] = 2 * n**3 / min(times)  # best repetition: a conservative (high) peak
  return {"flops_by_size": rates, "peak_flops": max(rates.values())}


# ------------------------------------------------------------------------------------------------------- data
def make_data(shape: Shape, num_pairs: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Random token ids (never pad or eos inside), each response ending with the eos, identical for both sides."""
  rng = np.random.default_rng(seed)
  ids = lambda *s: rng.integers(3, vocab, size=s, dtype=np.int32)
  prompt = ids(num_pairs, shape.prompt_len)
  chosen, rejected = ids(num_pairs, shape.response_len), ids(num_pairs, shape.response_len)
  chosen[:, -1] = rejected[:, -1] = EOS_ID
  return dict(prompt=prompt, chosen=chosen, rejected=rejected,
              mlc_prompt=ids(num_pairs, shape.num_langs, shape.mlc_prompt_len))


def jax_batches(data: dict[str, np.ndarray], shape: Shape, with_mlc: bool) -> list[dict[str, np.ndarray]]:
  """The data as mlc_jax batches of `shape.batch` pairs (ref_* filled in later)."""
  num_pairs = data["prompt"].shape[0]
  loss_mask = np.zeros((num_pairs, shape.seq_len), np.int32)
  loss_mask[:, shape.prompt_len:] = 1
  ones = np.ones((num_pairs, shape.seq_len), np.int32)
  full = dict(chosen_ids=np.concatenate([data["prompt"], data["chosen"]], 1), chosen_mask=ones,
              chosen_loss_mask=loss_mask,
              rejected_ids=np.concatenate([data["prompt"], data["rejected"]], 1), rejected_mask=ones,
              rejected_loss_mask=loss_mask)
  if with_mlc:
    full["prompt_ids"] = data["mlc_prompt"]
    full["prompt_mask"] = np.ones_like(data["mlc_prompt"])
  return [{k: v[i:i + shape.batch] for k, v in full.items()} for i in range(0, num_pairs, shape.batch)]


# --------------------------------------------------------------------------------------------------- our side
class JaxSide:
  """One compiled mlc_jax train step (DPO or DPO+MLC) and its state, run round by round."""

  def __init__(self, setting: str, shape: Shape, data, lr: float, overrides=()):
    from mlc_jax.parallel.mesh import make_mesh
    from mlc_jax.train.objective import Objective
    from mlc_jax.train.state import init_train_state
    from mlc_jax.train.step import batch_sharding, make_reference_fn, make_train_step, to_device

    self.setting, self.with_mlc = setting, setting == "mlc"
    self.cfg = model_config()
    self.config = train_config(self.with_mlc, shape, lr, overrides)
    self.mesh = make_mesh(tuple(self.config.mesh.shape))
    self.built = init_train_state(self.config, self.cfg, self.mesh, total_steps=10_000)
    self.obj = Objective.from_config(self.config, mlc_layer=self.cfg.num_layers)
    self.step = make_train_step(self.built, self.obj, aux_every=1, mesh=self.mesh)
    self.sharding = batch_sharding(self.mesh, accumulated=True)
    # Precomputed reference log-probs of the initial weights (outside the timed step, as on the TRL side).
    logps = make_reference_fn(self.built, self.obj, self.mesh)
    self.batches = jax_batches(data, shape, self.with_mlc)
    for b in self.batches:
      seq = {k: v for k, v in b.items() if k.startswith(("chosen", "rejected"))}
      out = logps(self.built.state.params["model"], to_device(seq, batch_sharding(self.mesh, accumulated=False)))
      b.update({f"ref_{k}": np.asarray(v, np.float32) for k, v in out.items()})  # {chosen,rejected}_{sum,mean}
    self.state = self.built.state
    self.done = 0
    self.compile_s = None

  def ref_sums(self) -> np.ndarray:
    """`[pairs, 2]` summed reference log-probs (chosen, rejected) of the initial weights."""
    return np.concatenate([np.stack([b["ref_chosen_sum"], b["ref_rejected_sum"]], 1) for b in self.batches])

  def initial_model(self):
    return self.built.policy_def.merge_model(self.built.state.params["model"])

  def extractor_arrays(self) -> dict[str, np.ndarray]:
    ext = self.built.state.params["extractor"]
    return {"kernel": np.asarray(ext["kernel"]), "bias": np.asarray(ext["bias"])}

  def _one(self):
    import jax
    from mlc_jax.train.step import split_micro_batches, to_device
    batch = self.batches[self.done % len(self.batches)]
    t0 = time.perf_counter()
    self.state, metrics = self.step(self.state, to_device(split_micro_batches(batch, 1), self.sharding))
    jax.block_until_ready((self.state, metrics))
    elapsed = time.perf_counter() - t0
    self.done += 1
    self.last_metrics = {k: float(v) for k, v in metrics.items()}
    return elapsed

  def run_round(self, warmup: int, steps: int) -> dict:
    warm = [self._one() for _ in range(warmup)]
    if self.compile_s is None:
      self.compile_s = warm[0] if warm else None
    return {"times": [self._one() for _ in range(steps)], "warmup_times": warm}

  def xla_flops(self) -> float | None:
    """XLA's cost_analysis FLOPs of the compiled step (counts the scanned layer body once)."""
    from mlc_jax.train.step import split_micro_batches, to_device
    batch = to_device(split_micro_batches(self.batches[0], 1), self.sharding)
    cost = self.step.lower(self.state, batch).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan"))) if cost else None


# --------------------------------------------------------------------------------------------------- TRL side
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
    cmd = [python, os.path.join(ROOT, "scripts", "bench_trl.py"), "--workdir", workdir, "--setting", setting,
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
  out = subprocess.run([python, os.path.join(ROOT, "scripts", "bench_trl.py"), "--workdir", ".", "--peak"],
                       capture_output=True, text=True, check=True)
  for line in out.stdout.splitlines():
    if line.startswith("BENCH "):
      return json.loads(line[6:])
  return None


# ------------------------------------------------------------------------------------------- machine noise
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _machine_busy_s() -> float:
  """CPU-seconds the whole machine has spent busy (all cores, from /proc/stat); NaN where unavailable."""
  try:
    with open("/proc/stat") as f:
      fields = [int(x) for x in f.readline().split()[1:]]
  except OSError:
    return float("nan")
  user, nice, system, idle, iowait, irq, softirq = fields[:7]
  return (user + nice + system + irq + softirq) / CLK_TCK


def _process_cpu_s(pid: int) -> float:
  try:
    with open(f"/proc/{pid}/stat") as f:
      fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime
  except (OSError, IndexError, ValueError):
    return float("nan")


class ForeignLoad:
  """CPU-seconds used by processes other than this benchmark (and its TRL workers) while a block runs."""

  def __init__(self, pids):
    self.pids = pids

  def __enter__(self):
    self.t0, self.busy0 = time.perf_counter(), _machine_busy_s()
    self.own0 = sum(_process_cpu_s(p) for p in self.pids())
    return self

  def __exit__(self, *exc):
    wall = time.perf_counter() - self.t0
    own = sum(_process_cpu_s(p) for p in self.pids()) - self.own0
    foreign = max(_machine_busy_s() - self.busy0 - own, 0.0)
    self.result = dict(wall_s=wall, foreign_cpu_s=foreign, foreign_share=foreign / (wall * (os.cpu_count() or 1)))


def wait_until_idle(max_wait_s: float, threshold: float = 0.1, window_s: float = 5.0):
  """Waits (at most max_wait_s) for a window in which the machine is busy less than `threshold` of the time."""
  deadline = time.time() + max_wait_s
  while True:
    b0 = _machine_busy_s()
    time.sleep(window_s)
    share = (_machine_busy_s() - b0) / (window_s * (os.cpu_count() or 1))
    if share < threshold or time.time() > deadline:
      return share


# ----------------------------------------------------------------------------------------------------- report
def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def median(xs):
  return statistics.median(xs) if xs else float("nan")


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--setting", choices=("dpo", "mlc", "both"), default="both")
  p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (ours, TRL, ours, TRL, …)")
  p.add_argument("--steps", type=int, default=3, help="timed steps per side per round")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps before the first round (compiles ours)")
  p.add_argument("--round_warmup", type=int, default=1, help="untimed steps at the start of later rounds")
  p.add_argument("--skip_trl", action="store_true", help="time only mlc_jax")
  p.add_argument("--lr", type=float, default=1e-5)
  p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads on the TRL side")
  p.add_argument("--pairs", type=int, default=8, help="distinct preference pairs, cycled (a multiple of 4)")
  p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                  help="a config override for our side, e.g. model.attention_impl=dot_product (repeatable)")
  p.add_argument("--xla_check", action="store_true", help="also compile for XLA's cost_analysis FLOPs")
  p.add_argument("--wait_idle", type=float, default=0.0,
                  help="first wait up to this many seconds for the machine to be idle (others' jobs skew timings)")
  p.add_argument("--workdir", default="", help="for the HF checkpoint, data and logs (default: a temp dir)")
  p.add_argument("--json", default="", help="write the results here")
  args = p.parse_args()

  import jax
  from mlc_jax.models import save_hf

  shape = Shape()
  settings = ("dpo", "mlc") if args.setting == "both" else (args.setting,)
  workdir = args.workdir or tempfile.mkdtemp(prefix="mlc_jax_bench_")
  os.makedirs(workdir, exist_ok=True)
  cfg = model_config()
  print(f"[bench] backend {jax.default_backend()} ({jax.devices()[0].device_kind}), {os.cpu_count()} cores "
        f"({cpu_model()}); model {cfg.num_params() / 1e6:.1f}M params; workdir {workdir}", flush=True)

  trl_python = None if args.skip_trl else ensure_trl_venv()
  if args.wait_idle > 0:
    share = wait_until_idle(args.wait_idle)
    print(f"[bench] machine busy {100 * share:.0f}% of the time before starting", flush=True)
  peak_jax = peak_matmul_jax()
  peak_torch = peak_matmul_torch(trl_python) if trl_python else None
  print(f"[bench] peak fp32 matmul: jnp.dot {peak_jax['peak_flops'] / 1e9:.1f} GFLOP/s"
        + (f", torch.mm {peak_torch['peak_flops'] / 1e9:.1f} GFLOP/s" if peak_torch else ""), flush=True)

  data = make_data(shape, args.pairs, cfg.vocab_size)
  ours, trl, flops = {}, {}, {}
  for s in settings:
    t0 = time.perf_counter()
    ours[s] = JaxSide(s, shape, data, args.lr, args.override)
    flops[s] = model_flops(cfg, shape, with_mlc=s == "mlc")
    print(f"[bench] ours/{s}: state + reference log-probs in {time.perf_counter() - t0:.1f}s; "
          f"{flops[s]['total'] / 1e9:.1f} GFLOP per step", flush=True)
  first = ours[settings[0]]
  if trl_python:
    save_hf(first.initial_model(), os.path.join(workdir, "hf_model"), overwrite=True)
    payload = {"prompt": data["prompt"].tolist(), "chosen": data["chosen"].tolist(),
               "rejected": data["rejected"].tolist(), "mlc_prompt_ids": data["mlc_prompt"].tolist(),
               "eos_id": EOS_ID, "pad_id": PAD_ID,
               "settings": dict(batch_size=shape.batch, lr=args.lr, b1=first.config.optim.b1,
                                b2=first.config.optim.b2, eps=first.config.optim.eps, clip_norm=1.0,
                                beta=first.config.objective.beta, mlc_weight=first.config.mlc.weight,
                                tau=first.config.mlc.tau)}
    with open(os.path.join(workdir, "data.json"), "w") as f:
      json.dump(payload, f)
    if "mlc" in ours:
      np.savez(os.path.join(workdir, "extractor.npz"), **ours["mlc"].extractor_arrays())
    for s in settings:
      t0 = time.perf_counter()
      trl[s] = TRLWorker(trl_python, workdir, s, args)
      ready = trl[s].ready
      ours_ref = ours[s].ref_sums()
      theirs_ref = np.stack([ready["ref_chosen"], ready["ref_rejected"]], 1)
      ready["ref_logps_max_abs_diff"] = float(np.max(np.abs(ours_ref - theirs_ref)))
      print(f"[bench] TRL/{s}: ready in {time.perf_counter() - t0:.1f}s (torch {ready['versions']['torch']}, "
            f"trl {ready['versions']['trl']}, {ready['threads']} threads, attention {ready['attn_implementation']}); "
            f"tokenised lengths {ready['lengths']}, ids identical: {ready['same_ids']}; reference log-probs "
            f"|ours − TRL| ≤ {ready['ref_logps_max_abs_diff']:.2e} (|logp| ≈ {np.abs(ours_ref).mean():.0f})",
            flush=True)

  rounds = {(side, s): [] for s in settings for side in ("ours", "trl")}
  pids = lambda: [os.getpid(), *(w.proc.pid for w in trl.values())]
  for r in range(args.rounds):
    for s in settings:
      with ForeignLoad(pids) as load:
        res = ours[s].run_round(args.warmup if r == 0 else args.round_warmup, args.steps)
      res["load"] = load.result
      rounds[("ours", s)].append(res)
      msg = f"[bench] round {r + 1}/{args.rounds} {s}: ours {median(res['times']):.3f}s"
      if s in trl:
        with ForeignLoad(pids) as load:
          res_t = trl[s].run_round()
        res_t["load"] = load.result
        rounds[("trl", s)].append(res_t)
        msg += f", TRL {median(res_t['times']):.3f}s"
      foreign = max(x[-1]["load"]["foreign_share"] for x in (rounds[("ours", s)], rounds[("trl", s)]) if x)
      print(msg + f" per step (other processes used up to {100 * foreign:.0f}% of the CPU)", flush=True)
  for w in trl.values():
    w.close()
  peak_jax_end = peak_matmul_jax()
  peak = max(peak_jax["peak_flops"], peak_jax_end["peak_flops"], peak_torch["peak_flops"] if peak_torch else 0)

  tokens_per_step = 2 * shape.batch * shape.seq_len
  rows = []
  for s in settings:
    for side in ("ours", "trl"):
      rs = rounds[(side, s)]
      if not rs:
        continue
      times = [t for x in rs for t in x["times"]]
      med = median(times)
      rows.append(dict(side=side, setting=s, foreign_cpu_share=max(x["load"]["foreign_share"] for x in rs),
                       median_step_s=med, min_step_s=min(times), max_step_s=max(times),
                       step_times=times, tokens_per_s=tokens_per_step / med,
                       all_tokens_per_s=(tokens_per_step + (shape.batch * shape.num_langs * shape.mlc_prompt_len
                                                            if s == "mlc" else 0)) / med,
                       achieved_flops=flops[s]["total"] / med, mfu=flops[s]["total"] / med / peak,
                       mfu_causal=flops[s]["total_causal"] / med / peak))
  by = {(r["side"], r["setting"]): r for r in rows}
  for r in rows:
    other = by.get(("trl", r["setting"]))
    r["ratio_vs_trl"] = other["median_step_s"] / r["median_step_s"] if other and r["side"] == "ours" else None
    if other and r["side"] == "ours":
      per_round = [median(t["times"]) / median(o["times"])
                   for o, t in zip(rounds[("ours", r["setting"])], rounds[("trl", r["setting"])])]
      r["ratio_per_round"] = per_round

  print()
  print(f"{'side':<6}{'setting':<9}{'median step':>13}{'tokens/s':>11}{'MFU':>8}{'ours/TRL':>10}")
  for r in rows:
    ratio = f"{r['ratio_vs_trl']:.2f}x" if r.get("ratio_vs_trl") else ""
    print(f"{r['side']:<6}{r['setting']:<9}{r['median_step_s']:>12.3f}s{r['tokens_per_s']:>11.0f}"
          f"{100 * r['mfu']:>7.1f}%{ratio:>10}")
  print(f"peak fp32 matmul {peak / 1e9:.1f} GFLOP/s; tokens/s counts the 2·B·T = {tokens_per_step} preference-pair "
        f"tokens per step; MFU from the analytic FLOPs (full attention matrix)")
  overhead = None
  if "dpo" in settings and "mlc" in settings:
    overhead = {}
    for side in ("ours", "trl"):
      if (side, "mlc") in by and (side, "dpo") in by:
        overhead[side] = by[(side, "mlc")]["median_step_s"] / by[(side, "dpo")]["median_step_s"] - 1
    overhead["flops"] = flops["mlc"]["total"] / flops["dpo"]["total"] - 1
    print(f"MLC overhead: FLOPs +{100 * overhead['flops']:.1f}%, our step time +{100 * overhead['ours']:.1f}%"
          + (f", TRL step time +{100 * overhead['trl']:.1f}%" if "trl" in overhead else ""))

  checks = []
  for r in rows:
    if r["side"] == "ours":
      checks.append(f"MFU {r['setting']} {100 * r['mfu']:.1f}% (target >= 60%: {'yes' if r['mfu'] >= 0.6 else 'no'})")
      if r.get("ratio_vs_trl"):
        checks.append(f"ours/TRL {r['setting']} {r['ratio_vs_trl']:.2f}x (target >= 2x: "
                      f"{'yes' if r['ratio_vs_trl'] >= 2 else 'no'})")
  if overhead:
    gap = overhead["ours"] - overhead["flops"]
    checks.append(f"MLC time - FLOP overhead {100 * gap:+.1f} points (target within 5: {'yes' if abs(gap) <= 0.05 else 'no'})")
  print("targets: " + "; ".join(checks))

  xla = None
  if args.xla_check:
    xla = {}
    one_layer = dataclasses.replace(cfg, num_layers=1)
    for s in settings:
      xla[s] = dict(xla_flops=ours[s].xla_flops(),
                    analytic_one_layer=model_flops(one_layer, shape, with_mlc=s == "mlc")["total"])
      print(f"XLA cost_analysis ({s}): {xla[s]['xla_flops'] / 1e9:.1f} GFLOP; the analytic count with ONE layer "
            f"(XLA counts the scanned layer body once) is {xla[s]['analytic_one_layer'] / 1e9:.1f} GFLOP")

  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    result = dict(
        machine=dict(cpu=cpu_model(), cores=os.cpu_count(), backend=jax.default_backend(),
                     device=str(jax.devices()[0].device_kind), jax=jax.__version__, python=platform.python_version()),
        command=" ".join([os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(ROOT) else "python",
                          os.path.relpath(os.path.abspath(sys.argv[0]), ROOT), *sys.argv[1:]]),
        args=vars(args), shape=dataclasses.asdict(shape), model=dataclasses.asdict(cfg),
        num_params=cfg.num_params(), peak_flops=peak,
        peak_detail=dict(jax_start=peak_jax, jax_end=peak_jax_end, torch=peak_torch),
        flops=flops, rows=rows, mlc_overhead=overhead, xla=xla,
        compile_s={s: ours[s].compile_s for s in settings},
        last_metrics={s: ours[s].last_metrics for s in settings},
        trl={s: {k: v for k, v in w.ready.items() if k not in ("ref_chosen", "ref_rejected")}
             for s, w in trl.items()},
        rounds={f"{side}/{s}": v for (side, s), v in rounds.items()})
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1, default=str)
    print(f"[bench] wrote {args.json}")


if __name__ == "__main__":
  main()

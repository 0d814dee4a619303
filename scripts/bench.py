"""Throughput and model-FLOPs utilisation of the mlc_jax train step, against TRL's DPOTrainer on the same machine.

Measures, on whatever backend JAX runs on (the 2-core CPU here), for
  dpo  DPO alone (sigmoid, β = 0.1, precomputed reference log-probs), and
  mlc  DPO + MLC with 10 prompt variants per pair, the MLC term forced on every step (aux_every = 1):
the median step time, preference-pair tokens/s and MFU = analytic model FLOPs per step / step time / peak, where the
FLOPs are the ones training logs (`Objective.step_flops`, `Mlc.step_flops`, mlc_jax/models/flops.py) and the peak is
the fp32 matmul FLOP/s measured on the same machine (best of a large `jnp.dot` and a large `torch.mm`).

Reference setting: Llama, 8 layers, hidden 512, MLP 1408, 8 heads (8 kv heads, head_dim 64),
vocab 32000 (58.5M parameters), fp32, 4 pairs × 256 tokens (prompt 64 + response 192), AdamW (no weight decay,
grad clip 1.0, constant lr), no gradient accumulation; MLC: 10 variants × 64 tokens per pair, extractor 512. Two
CPU choices on our side: the layer loop unrolled (`model.scan_unroll`) and the attention in blocks of 64 queries
(`model.attention_chunk=64`).
The batches come from the training path: random word texts tokenised by `tokenize_examples` with a 1:1 word
tokenizer (`bench_trl.word_tokenizer`), the English variant being the pair's prompt, batched by the grain pipeline,
reference log-probs precomputed by `reference.precompute`.

TRL side (scripts/bench_trl.py, in its own virtual environment, created on first use): TRL's DPOTrainer on the same
initial weights (written with `save_hf`), the same token ids and settings; for `mlc` a DPOTrainer subclass adds the
same MLC term in PyTorch. The sides alternate (ours, TRL, ours, TRL, …, one round each, `--rounds` rounds) so that
machine noise (about ±17 % here) hits both; medians over all timed steps are reported.

`--data real` times DPO on real pairs instead: `--pairs` pairs drawn with a fixed seed from `--dataset` (default
mlc_pku_saferlhf/dpo from ../shared/data), tokenised as configs/mlc.py trains on them (byte tokens, prompt ≤ 256,
response ≤ 768), read in order by both sides (TRL's sampler too), so every step is the same batch on both; ours cuts
each batch to the length buckets 256/512/768/1024 (or packs it with `--override data.pack_pairs=G`), TRL pads to the
batch's longest sequence. tokens/s is then the real tokens of the timed steps over their total time.

On a GPU or TPU MFU is against the chip's dense bf16 peak (`mlc_jax.parallel.devices.PEAK_BF16_FLOPS`); set the
accelerator's settings as overrides, e.g. `--skip_trl --override model.dtype=bfloat16 --override
model.attention_impl=cudnn` (GPU) or `model.attention_impl=splash` (TPU).

Run (about 8 minutes on the idle 2-core CPU; results in docs/benchmarks.md):
  .venv/bin/python scripts/bench.py --json runs/bench.json
  .venv/bin/python scripts/bench.py --setting dpo --skip_trl --rounds 1     # ours only, quick
  .venv/bin/python scripts/bench.py --skip_trl --rounds 1 --profile runs/trace # + one traced step, its top ops
  .venv/bin/python scripts/bench.py --setting dpo --skip_trl --roofline      # + the matmuls alone: MFU's ceiling
  .venv/bin/python scripts/bench.py --data real --setting dpo --pairs 16 --steps 4 --warmup 4 --round_warmup 0
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time

import numpy as np

import bench_machine
import bench_trl
import matmul_roofline
import trace_summary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAD_ID, EOS_ID = 0, 2  # (the synthetic pairs' word tokenizer)


@dataclasses.dataclass(frozen=True)
class Shape:
  batch: int = 4  # preference pairs per step
  prompt_len: int = 64  # also each MLC variant's length
  response_len: int = 192  # the last token is the eos
  num_langs: int = 10  # MLC prompt variants per pair

  @property
  def seq_len(self) -> int:
    return self.prompt_len + self.response_len


def model_config(eos_id: int = EOS_ID, pad_id: int = PAD_ID):
  from mlc_jax.models import ModelConfig
  return ModelConfig(family="llama", vocab_size=32000, hidden_size=512, intermediate_size=1408, num_layers=8,
                     num_heads=8, num_kv_heads=8, head_dim=64, rope_theta=10000.0, max_position_embeddings=2048,
                     bos_token_id=1, eos_token_id=eos_id, pad_token_id=pad_id)


def run_config(with_mlc: bool, shape: Shape, lr: float, overrides=()):
  from mlc_jax.config import RunConfig, apply_overrides, base_config
  c = apply_overrides(base_config(), [
      # (CPU choices: the layer loop unrolled, attention in blocks of 64 queries; measured in docs/benchmarks.md)
      "model.remat=none", f"model.scan_unroll={model_config().num_layers}", "model.attention_chunk=64",
      f"mlc.enabled={with_mlc}", "mlc.aux_every=1", "mlc.extractor_dim=512",
      f"train.batch_size={shape.batch}", "train.grad_accum=1", "mesh.shape=(1,1,1)", f"optim.lr={lr}",
      "optim.schedule=constant", "optim.weight_decay=0.0", "optim.clip_norm=1.0", "reference=precomputed",
      f"data.max_prompt_len={shape.prompt_len}", f"data.max_response_len={shape.response_len}",
      f"data.mlc_prompt_len={shape.prompt_len}", *overrides])
  return RunConfig.parse(c)


def make_data(shape: Shape, num_pairs: int, vocab: int, seed: int = 0):
  """`TokenizedData` of random word texts (never pad or eos inside) through the training tokenisation path."""
  from mlc_jax.data.preferences import PreferenceExample
  from mlc_jax.data.tokenized import SequenceLimits, tokenize_examples

  rng = np.random.default_rng(seed)
  words = lambda n: " ".join(f"t{i}" for i in rng.integers(3, vocab, n))
  langs = ("en", *(f"x{k}" for k in range(1, shape.num_langs)))
  examples = [PreferenceExample(i, {lang: words(shape.prompt_len) for lang in langs}, words(shape.response_len - 1),
                                words(shape.response_len - 1), "en") for i in range(num_pairs)]
  data = tokenize_examples(examples, bench_trl.word_tokenizer(vocab, EOS_ID, PAD_ID),
                           SequenceLimits(shape.prompt_len, shape.response_len, shape.prompt_len))
  assert data.chosen_mask.all() and data.prompt_mask.all() and not any(data.truncation.values())
  return data


class JaxSide:
  """One compiled mlc_jax train step (DPO or DPO+MLC) and its state, run round by round."""

  def __init__(self, setting: str, shape: Shape, data, lr: float, workdir: str, overrides=(), model_cfg=None):
    import jax

    from mlc_jax.data import pipeline
    from mlc_jax.parallel.mesh import make_mesh
    from mlc_jax.train.reference import precompute
    from mlc_jax.train.state import abstract_train_state, init_train_state
    from mlc_jax.train.step import make_precompute_fn, make_train_step

    self.setting, self.model_cfg = setting, model_cfg or model_config()
    self.run = run_config(setting == "mlc", shape, lr, overrides)
    self.data = data = self.run.objective.arrange(self.run, data)  # (data.pack_pairs, the shared MLC variant)
    self.mesh = make_mesh(self.run.mesh.shape, devices=jax.devices()[:1])
    spec = abstract_train_state(self.run, self.model_cfg, self.mesh, total_steps=10_000)
    self.state = init_train_state(spec, self.run)
    self.initial_model = spec.policy_def.merge_model(jax.tree.map(lambda x: x.copy(), self.state.params["model"]))
    self.initial_extractor = jax.tree.map(np.asarray, self.state.params.get("extractor"))
    objective, self.mlc = self.run.objective, self.run.mlc if self.run.mlc.enabled else None
    self.step = make_train_step(spec, objective, self.mlc, mesh=self.mesh)
    # Reference log-probs of the initial weights, outside the timed steps (as on the TRL side).
    pre = objective.precomputed(self.run, None)
    self.reference = precompute(make_precompute_fn(spec, pre.fn, self.mesh), lambda: self.state.params["model"],
                                data, input_keys=pre.input_keys, output_keys=pre.output_keys, batch_size=shape.batch,
                                mesh=self.mesh, cache_dir=os.path.join(workdir, "reference"), name=pre.name,
                                model_identity={"bench": dataclasses.asdict(self.model_cfg)})
    self.batches = pipeline.batch_iterator(data, shape.batch, seed=0, shuffle=False,
                                           pair_buckets=self.run.data.pair_buckets)
    self.compile_s, self.flops_log = None, []

  def step_flops(self, host_batch) -> float:
    from mlc_jax.train.step import step_flops
    return step_flops(self.run, self.model_cfg, {k: v.shape for k, v in host_batch.items()}, mlc_share=1.0)

  def _one(self) -> float:
    import jax

    from mlc_jax.train.step import device_batch
    host_batch = next(self.batches)
    faults0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    self.state, metrics = self.step(self.state, device_batch(host_batch, self.mesh, reference=self.reference))
    jax.block_until_ready((self.state, metrics))
    self.page_faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0  # pages the kernel mapped in
    self.last_metrics = {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}
    self.flops = self.step_flops(host_batch)
    self.flops_log.append(self.flops)
    return time.perf_counter() - t0

  def run_round(self, warmup: int, steps: int) -> dict:
    warm = [self._one() for _ in range(warmup)]
    if self.compile_s is None and warm:
      self.compile_s = warm[0]
    times, faults = [], []
    for _ in range(steps):
      times.append(self._one())
      faults.append(self.page_faults)
    return {"times": times, "page_faults": faults, "warmup_times": warm}

  def _compiled(self):
    """The train step compiled for the next batch's shapes (what `jax.jit` runs)."""
    from mlc_jax.train.step import device_batch
    batch = device_batch(next(self.batches), self.mesh, reference=self.reference)
    return self.step.lower(self.state, batch).compile()

  def compiled_hlo(self, out_dir: str = "") -> str:
    """The optimised HLO text of the compiled step (written to `out_dir`/compiled.hlo.txt when given)."""
    hlo = self._compiled().as_text()
    if out_dir:
      os.makedirs(out_dir, exist_ok=True)
      with open(os.path.join(out_dir, "compiled.hlo.txt"), "w") as f:
        f.write(hlo)
    return hlo

  def profile(self, trace_dir: str) -> str:
    """Traces one step into `trace_dir` (with the compiled HLO beside it) → the top-ops table."""
    import jax
    hlo = self.compiled_hlo(trace_dir)
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      self._one()
    return trace_summary.summarize(trace_dir, hlo)

  def xla_flops(self) -> float | None:
    """XLA's cost_analysis FLOPs of the compiled step (counts the scanned layer body once)."""
    cost = self._compiled().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan"))) if cost else None


def real_data(dataset: str, manual_dir: str, num_pairs: int, seed: int = 0):
  """`num_pairs` pairs drawn with a fixed seed from a real dataset, tokenised as configs/mlc.py trains on it (byte
  tokens, prompt ≤ 256, response ≤ 768; `bench_padding.load`), in the dataset's order. Only pairs whose responses
  end within the budget are drawn: TRL would add an eos to a cut one, and the sides would differ by that token."""
  import bench_padding

  from mlc_jax.data.tokenizer import byte_tokenizer
  _, data = bench_padding.load(dataset, manual_dir, "")
  eos = byte_tokenizer().eos_token_id
  ends = lambda ids, loss: ids[np.arange(len(ids)), loss.shape[1] - 1 - np.argmax(loss[:, ::-1], axis=1)]
  whole = np.flatnonzero((ends(data.chosen_ids, data.chosen_loss_mask) == eos)
                         & (ends(data.rejected_ids, data.rejected_loss_mask) == eos))
  if num_pairs > len(whole):
    sys.exit(f"error: --pairs {num_pairs} is more than the {len(whole)} pairs of {dataset} that are not cut")
  rows = np.sort(np.random.default_rng(seed).choice(whole, num_pairs, replace=False))
  arrays = {f.name: getattr(data, f.name)[rows] for f in dataclasses.fields(data)
            if isinstance(getattr(data, f.name), np.ndarray)}
  return dataclasses.replace(data, **{**arrays, "index": np.arange(num_pairs)})  # (positions in the subset)


def pair_tokens(data, batch: int) -> np.ndarray:
  """Real tokens (chosen + rejected sequences, each with its prompt) of each `batch`-pair batch, in order `[N/batch]`."""
  per_pair = data.chosen_mask.sum(1) + data.rejected_mask.sum(1)
  return per_pair[:len(per_pair) // batch * batch].reshape(-1, batch).sum(1)


def timed_steps(rounds: int, warmup: int, round_warmup: int, steps: int) -> list[int]:
  """The step indices (from 0) that the rounds time, the same on both sides."""
  out, step = [], 0
  for r in range(rounds):
    step += warmup if r == 0 else round_warmup
    out += range(step, step + steps)
    step += steps
  return out


def trl_payload(data, side: JaxSide, lr: float, *, with_mlc: bool) -> dict:
  """What the TRL worker trains on: our token ids (prompt, chosen and rejected with their eos, the MLC variants)."""
  run = side.run
  split = lambda ids, mask, loss: ([list(r[m & ~l]) for r, m, l in zip(ids, mask.astype(bool), loss.astype(bool))],
                                   [list(r[l]) for r, l in zip(ids, loss.astype(bool))])
  prompt, chosen = split(data.chosen_ids, data.chosen_mask, data.chosen_loss_mask)
  _, rejected = split(data.rejected_ids, data.rejected_mask, data.rejected_loss_mask)
  as_int = lambda rows: [[int(x) for x in r] for r in rows]
  return {"prompt": as_int(prompt), "chosen": as_int(chosen), "rejected": as_int(rejected),
          "mlc_prompt_ids": data.prompt_ids.tolist() if with_mlc else None,
          "eos_id": side.model_cfg.eos_token_id, "pad_id": side.model_cfg.pad_token_id,
          "settings": dict(batch_size=run.train.batch_size, lr=lr, b1=run.optim.b1, b2=run.optim.b2, eps=run.optim.eps,
                           clip_norm=run.optim.clip_norm, beta=run.objective.beta, mlc_weight=run.mlc.weight,
                           tau=run.mlc.tau)}


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
  p.add_argument("--trl_malloc", choices=("default", "tuned"), default="default",
                 help="the TRL process's glibc malloc: its defaults (as TRL runs), or the settings ours runs with "
                      "(mlc_jax.host_malloc; ours: MLC_JAX_HOST_MALLOC=system for glibc's defaults)")
  p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads on the TRL side")
  p.add_argument("--pairs", type=int, default=8, help="distinct preference pairs, cycled (a multiple of 4)")
  p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                 help="a config override for our side, e.g. model.attention_impl=dot_product (repeatable)")
  p.add_argument("--xla_check", action="store_true", help="also compile for XLA's cost_analysis FLOPs")
  p.add_argument("--profile", default="", metavar="DIR",
                 help="after the rounds, trace one step of ours per setting into DIR/<setting> and print its top ops")
  p.add_argument("--roofline", action="store_true",
                 help="also time every matmul of our compiled step alone: the step's time at the kernels' speed")
  p.add_argument("--wait_idle", type=float, default=0.0,
                 help="first wait up to this many seconds for the machine to be idle (others' jobs skew timings)")
  p.add_argument("--workdir", default="", help="for the HF checkpoint, data and logs (default: a temp dir)")
  p.add_argument("--json", default="", help="write the results here")
  p.add_argument("--data", choices=("synthetic", "real"), default="synthetic",
                 help="synthetic: the fixed 256-token random pairs; real: --pairs pairs of --dataset (DPO only)")
  p.add_argument("--dataset", default="mlc_pku_saferlhf/dpo", help="with --data real: a TFDS dataset of ours")
  p.add_argument("--manual_dir", default=os.path.join(ROOT, "..", "shared", "data"),
                 help="with --data real: where its source files are")
  args = p.parse_args()
  if args.data == "real" and args.setting != "dpo":
    p.error("--data real times DPO only (--setting dpo): the TRL side's MLC term takes unpadded prompt variants")

  from mlc_jax import host_malloc
  try:
    malloc_tuned = host_malloc.keep_freed_memory()  # before jax's threads allocate
  except ValueError as e:
    p.error(str(e))
  import jax
  from mlc_jax.models import save_hf

  settings = ("dpo", "mlc") if args.setting == "both" else (args.setting,)
  workdir = args.workdir or tempfile.mkdtemp(prefix="mlc_jax_bench_")
  os.makedirs(workdir, exist_ok=True)
  if args.data == "real":
    from mlc_jax.data.tokenizer import byte_tokenizer
    tokenizer = byte_tokenizer()
    shape, cfg = Shape(prompt_len=256, response_len=768), model_config(tokenizer.eos_token_id, tokenizer.pad_token_id)
    if not any(o.startswith("data.pack_pairs=") and o != "data.pack_pairs=0" for o in args.override):
      args.override = ["data.pair_buckets=(256,512,768,1024)", *args.override]  # (what configs/mlc.py trains with)
  else:
    shape, cfg = Shape(), model_config()
  print(f"[bench] backend {jax.default_backend()} ({jax.devices()[0].device_kind}), {os.cpu_count()} cores "
        f"({bench_machine.cpu_model()}); model {cfg.num_params() / 1e6:.1f}M params; workdir {workdir}; host malloc: "
        f"ours {'tuned' if malloc_tuned else 'default'}, TRL {args.trl_malloc}", flush=True)

  trl_python = None if args.skip_trl else bench_trl.ensure_trl_venv()
  if args.wait_idle > 0:
    share = bench_machine.wait_until_idle(args.wait_idle)
    print(f"[bench] machine busy {100 * share:.0f}% of the time before starting", flush=True)
  peak_jax = bench_machine.peak_matmul_jax()
  peak_torch = bench_trl.peak_matmul_torch(trl_python) if trl_python else None
  print(f"[bench] peak fp32 matmul: jnp.dot {peak_jax['peak_flops'] / 1e9:.1f} GFLOP/s"
        + (f", torch.mm {peak_torch['peak_flops'] / 1e9:.1f} GFLOP/s" if peak_torch else ""), flush=True)

  if args.data == "real":
    data = real_data(args.dataset, args.manual_dir, args.pairs)
    print(f"[bench] {args.pairs} pairs of {args.dataset} (byte tokens): sequence lengths "
          f"{int(data.chosen_mask.sum(1).min())}-{int(data.chosen_mask.sum(1).max())} (chosen), "
          f"{int(data.rejected_mask.sum(1).min())}-{int(data.rejected_mask.sum(1).max())} (rejected); "
          f"overrides {args.override}", flush=True)
  else:
    data = make_data(shape, args.pairs, cfg.vocab_size)
  batch_tokens = pair_tokens(data, shape.batch)
  timed = timed_steps(args.rounds, args.warmup, args.round_warmup, args.steps)
  ours, trl = {}, {}
  for s in settings:
    t0 = time.perf_counter()
    ours[s] = JaxSide(s, shape, data, args.lr, workdir, args.override, cfg)
    print(f"[bench] ours/{s}: state + reference log-probs in {time.perf_counter() - t0:.1f}s", flush=True)
  first = ours[settings[0]]
  if trl_python:
    save_hf(first.initial_model, os.path.join(workdir, "hf_model"), overwrite=True)
    with open(os.path.join(workdir, "data.json"), "w") as f:
      json.dump(trl_payload(data, first, args.lr, with_mlc="mlc" in ours), f)
    if "mlc" in ours:
      np.savez(os.path.join(workdir, "extractor.npz"), **ours["mlc"].initial_extractor)
    for s in settings:
      t0 = time.perf_counter()
      trl[s] = bench_trl.TRLWorker(trl_python, workdir, s, args)
      ready = trl[s].ready
      ours_ref = np.stack([ours[s].reference["chosen_sum"], ours[s].reference["rejected_sum"]], 1)
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
      with bench_machine.ForeignLoad(pids) as load:
        res = ours[s].run_round(args.warmup if r == 0 else args.round_warmup, args.steps)
      rounds[("ours", s)].append({**res, "load": load.result})
      msg = f"[bench] round {r + 1}/{args.rounds} {s}: ours {median(res['times']):.3f}s"
      if s in trl:
        with bench_machine.ForeignLoad(pids) as load:
          res_t = trl[s].run_round()
        rounds[("trl", s)].append({**res_t, "load": load.result})
        msg += f", TRL {median(res_t['times']):.3f}s"
      foreign = max(x[-1]["load"]["foreign_share"] for x in (rounds[("ours", s)], rounds[("trl", s)]) if x)
      print(msg + f" per step (other processes used up to {100 * foreign:.0f}% of the CPU)", flush=True)
  for w in trl.values():
    w.close()
  peak_jax_end = bench_machine.peak_matmul_jax()
  # On an accelerator MFU is against the chip's dense bf16 peak (mlc_jax/parallel/devices.py), on a CPU against the
  # best fp32 matmul measured here.
  from mlc_jax.parallel.devices import peak_flops
  chip_peak = peak_flops(jax.devices()[0].device_kind)
  peak = chip_peak or max(peak_jax["peak_flops"], peak_jax_end["peak_flops"],
                          peak_torch["peak_flops"] if peak_torch else 0)
  peak_name = f"{jax.devices()[0].device_kind} bf16 peak (datasheet)" if chip_peak else "peak fp32 matmul (measured)"

  # Synthetic pairs: every step alike, tokens/s from the median step. Real pairs: the batches differ (the same ones
  # in the same order on both sides), so real tokens and FLOPs of the timed steps over their total time.
  real = args.data == "real"
  timed_tokens = [int(batch_tokens[i % len(batch_tokens)]) for i in timed]
  flops = {s: ours[s].flops for s in settings}
  rows = []
  for s in settings:
    for side in ("ours", "trl"):
      if not rounds[(side, s)]:
        continue
      times = [t for x in rounds[(side, s)] for t in x["times"]]
      med = median(times)
      foreign = max(x["load"]["foreign_share"] for x in rounds[(side, s)])
      row = dict(side=side, setting=s, foreign_cpu_share=foreign, median_step_s=med, min_step_s=min(times),
                 max_step_s=max(times), step_times=times, real_tokens_per_s=sum(timed_tokens) / sum(times))
      if real:
        row["tokens_per_s"] = row["real_tokens_per_s"]
        if side == "ours":  # (TRL computes other positions: its own padding)
          row["mfu"] = sum(ours[s].flops_log[i] for i in timed) / sum(times) / peak
      else:
        row.update(tokens_per_s=timed_tokens[0] / med, achieved_flops=flops[s] / med, mfu=flops[s] / med / peak)
      rows.append(row)
  by = {(r["side"], r["setting"]): r for r in rows}
  for r in rows:
    other = by.get(("trl", r["setting"]))
    if other and r["side"] == "ours":
      r["ratio_vs_trl"] = r["tokens_per_s"] / other["tokens_per_s"]
      r["ratio_per_round"] = [(sum(o["times"]) if real else median(o["times"])) /
                              (sum(t["times"]) if real else median(t["times"]))
                              for t, o in zip(rounds[("ours", r["setting"])], rounds[("trl", r["setting"])])]

  print(f"\n{'side':<6}{'setting':<9}{'median step':>13}{'tokens/s':>11}{'MFU':>8}{'ours/TRL':>10}")
  for r in rows:
    ratio = f"{r['ratio_vs_trl']:.2f}x" if r.get("ratio_vs_trl") else ""
    mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "-"
    print(f"{r['side']:<6}{r['setting']:<9}{r['median_step_s']:>12.3f}s{r['tokens_per_s']:>11.0f}{mfu:>8}{ratio:>10}")
  if real:
    print(f"{peak_name} {peak / 1e9:.1f} GFLOP/s; tokens/s = the real tokens of the timed steps' batches (chosen "
          f"and rejected sequences, each with its prompt: {timed_tokens[0]} in the first) over their total time; MFU "
          f"from the analytic FLOPs of each timed step's shapes")
  else:
    print(f"{peak_name} {peak / 1e9:.1f} GFLOP/s; tokens/s counts the 2·B·T = {timed_tokens[0]} preference-pair "
          f"tokens per step; {', '.join(f'{s} {flops[s] / 1e9:.1f}' for s in settings)} GFLOP per step (analytic: "
          "the causal half of each attention matrix, the LM head where it runs)")

  xla = None
  if args.xla_check:
    xla = {s: ours[s].xla_flops() for s in settings}
    print("XLA cost_analysis (counts the scanned layer body once): "
          + ", ".join(f"{s} {v / 1e9:.1f} GFLOP" for s, v in xla.items()))

  profiles = {}
  for s in settings if args.profile else ():
    profiles[s] = ours[s].profile(os.path.join(args.profile, s))
    print(f"\nours/{s}, one step traced into {os.path.join(args.profile, s)} (self time per instruction):\n"
          f"{profiles[s]}", flush=True)

  roofline = {}
  for s in settings if args.roofline else ():
    hlo = ours[s].compiled_hlo()
    roofline[s] = matmul_roofline.roofline(hlo, names=trace_summary.op_names(hlo))
    step_s = next(r["median_step_s"] for r in rows if r["side"] == "ours" and r["setting"] == s)
    print(f"\nours/{s}, every matmul of the compiled step timed alone (scripts/matmul_roofline.py):\n"
          + matmul_roofline.report(roofline[s], step_s=step_s, flops=flops[s], peak=peak), flush=True)

  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    result = dict(
        machine=dict(cpu=bench_machine.cpu_model(), cores=os.cpu_count(), backend=jax.default_backend(),
                     device=str(jax.devices()[0].device_kind), jax=jax.__version__, python=platform.python_version()),
        host_malloc=dict(ours="tuned" if malloc_tuned else "default", trl=args.trl_malloc),
        max_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,  # this process (ours), KiB → GiB
        command=" ".join([os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(ROOT) else "python",
                          os.path.relpath(os.path.abspath(sys.argv[0]), ROOT), *sys.argv[1:]]),
        args=vars(args), shape=dataclasses.asdict(shape), model=dataclasses.asdict(cfg), num_params=cfg.num_params(),
        peak_flops=peak, peak_detail=dict(jax_start=peak_jax, jax_end=peak_jax_end, torch=peak_torch), flops=flops,
        rows=rows, xla=xla, roofline=roofline, compile_s={s: ours[s].compile_s for s in settings},
        last_metrics={s: ours[s].last_metrics for s in settings},
        trl={s: {k: v for k, v in w.ready.items() if k not in ("ref_chosen", "ref_rejected")} for s, w in trl.items()},
        rounds={f"{side}/{s}": v for (side, s), v in rounds.items()})
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1, default=str)
    print(f"[bench] wrote {args.json}")


if __name__ == "__main__":
  main()

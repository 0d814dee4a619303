"""MSD, multilingual self-distillation with Dual-Perspective Safety Weighting (DESIGN.md §2.3; no public code).

The same network twice. The student is the policy shown the target-language prompt; the teacher is the frozen
initial model shown the target prompt, its English translation and a reasoning instruction (`teacher_template`).
On a response y, `loss = (1/|y|) Σ_t w̃_t · KL(p_S(·|x, y_<t) ‖ p_T(·|x, x_en, C, y_<t))` with DPSW weights
(`mlc_jax.losses.msd`). `mode`: `on_policy` samples y from the current student before every step (on the same
mesh, from the live parameters; with `resample_every` N, every N steps for the next N steps' prompts);
`off_policy` samples y once from the teacher before training (cached in WORKDIR/reference like reference
log-probs).

Our choices where the paper (as far as we have it) is silent — each a config value:
  teacher_template  the reasoning instruction C and how the English translation is shown (`DEFAULT_TEACHER`)
  top_k 20          K of the teacher confidence w^T = 1 − H(top-K renormalised p_T) / log K
  weighting dpsw    ('uniform' is plain per-token reverse KL)
  temperature 1.0, top_p 1.0, max_new_tokens 64: how responses are sampled
  resample_every 1  (N > 1 samples N steps' prompts at once: fewer, larger sampler calls, slightly stale responses)
The teacher is always live (`reference=frozen_copy`): its logits on every sampled response are needed in the step.
"""
from __future__ import annotations

import dataclasses
import string

import jax
import jax.numpy as jnp
from flax import nnx

from mlc_jax.config.fields import ConfigError, at_least, field, in_range, non_negative, one_of, positive
from mlc_jax.data.datasets import PROMPT_ONLY
from mlc_jax.losses import msd as msd_loss
from mlc_jax.models import ModelConfig, flops
from mlc_jax.objectives.base import LossTerms, Objective, Precomputed, register

MODES = ("on_policy", "off_policy")
# Ours: the paper's C is not published. The teacher is asked to judge the request in English, then answer in the
# language of the request (the recipe the abstract describes); the response is then the student's own.
DEFAULT_TEACHER = ("{prompt}\n\n(The same request in English: {english})\n\nFirst consider, in English, whether "
                   "answering this request could cause harm. If it could, refuse politely; if not, help. Reply in the "
                   "language of the original request.")
SAMPLE_KEYS = ("response_ids", "response_lengths")


def positions(mask):
  """RoPE positions `cumsum(mask) - 1` of a left-padded batch `[B, S]` (padding at 0)."""
  return jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)


def response_mask(lengths, width: int):
  """`[B, width]` int32: 1 at each row's first `lengths[b]` response tokens (the eos included)."""
  return (jnp.arange(width)[None, :] < lengths[:, None]).astype(jnp.int32)


def _template_problem(template: str) -> str | None:
  fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
  if fields != {"prompt", "english"}:
    return f"must contain exactly the fields {{prompt}} and {{english}} (found {sorted(fields)})"
  return None


@register
@dataclasses.dataclass(frozen=True)
class Msd(Objective):
  name = "msd"
  data_kind = PROMPT_ONLY
  sides = ("student",)
  mode: str = field("on_policy", "'on_policy' (responses sampled from the current student every step) | "
                    "'off_policy' (sampled once from the teacher, cached)", one_of(MODES))
  top_k: int = field(20, "K of DPSW's teacher confidence 1 − H(top-K p_T) / log K (ours)", at_least(2))
  weighting: str = field("dpsw", "'dpsw' | 'uniform' (plain per-token reverse KL)", one_of(msd_loss.WEIGHTINGS))
  temperature: float = field(1.0, "sampling temperature (0 = greedy)", non_negative())
  top_p: float = field(1.0, "nucleus sampling mass", in_range(0.0, 1.0, low_open=True))
  max_new_tokens: int = field(64, "sampled response length at most", positive())
  teacher_prompt_len: int = field(192, "padded length of the teacher's context (prompt, English, instruction)",
                                  positive())
  teacher_template: str = field(DEFAULT_TEACHER, "the teacher's user turn: {prompt} and {english} are filled in",
                                _template_problem)
  seed: int = field(0, "seed of the sampled responses (row and step are folded in)", non_negative())
  resample_every: int = field(1, "on-policy: every N steps the student answers the next N steps' prompts in one "
                              "sampler call (responses up to N-1 steps old; ours: 1, strictly on-policy)", positive())

  def check_run(self, run):
    if run.reference != "frozen_copy":
      raise ConfigError(f"objective.name='msd' needs its teacher (the frozen initial model) live in every step: set "
                        f"reference='frozen_copy' (got {run.reference!r})")

  def live_reference(self, run) -> bool:
    return True

  def sampling(self, model_cfg: ModelConfig, tokenizer):
    """The sampler settings of the responses: ours, and the model's (and tokenizer's) end-of-sequence tokens."""
    from mlc_jax.generate.sampling import SamplingSettings
    eos = model_cfg.eos_token_id
    eos_ids = {*(eos if isinstance(eos, tuple) else () if eos is None else (eos,))}
    pad_id = 0
    if tokenizer is not None:
      eos_ids.add(tokenizer.eos_token_id)
      pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return SamplingSettings(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                            eos_ids=tuple(sorted(e for e in eos_ids if e is not None)), pad_id=pad_id)

  def precomputed(self, run, tokenizer):
    """Off-policy: every example's response, sampled once from the teacher in its own context (cached)."""
    if self.mode != "off_policy":
      return None
    settings = self.sampling(run.architecture(), tokenizer)

    def teacher_samples(model, batch):
      from mlc_jax.generate.decode import row_keys, sample
      graphdef, params = nnx.split(model)
      out, _ = sample(graphdef, params, batch["teacher_prompt_ids"], batch["teacher_prompt_mask"],
                      row_keys(self.seed, batch["index"]), settings)
      return {"response_ids": out.tokens, "response_lengths": out.lengths}

    return Precomputed("msd_teacher_samples", ("teacher_prompt_ids", "teacher_prompt_mask", "index"), SAMPLE_KEYS,
                       teacher_samples, identity={"sampling": repr(settings), "seed": self.seed})

  def sampling_step(self, spec, run, mesh, tokenizer):
    """On-policy: the current student answers the prompts of a tuple of batches in one call (from the live
    parameters, on the mesh); row r of the batch of step s draws with `fold_in(key(seed), s · B + r)`, so the samples
    do not depend on `resample_every`'s grouping, only on the parameters that drew them."""
    if self.mode != "on_policy":
      return None
    from mlc_jax.generate.decode import row_keys, sample
    from mlc_jax.train.step import batch_sharding, under_mesh
    settings, graphdef = self.sampling(spec.model_cfg, tokenizer), spec.policy_def.model_graphdef

    def student_samples(model_params, batches, first_step):
      accumulated = batches[0]["student_prompt_ids"].shape[:2]
      ids, mask = (jnp.concatenate([b[f"student_prompt_{k}"].reshape(-1, b[f"student_prompt_{k}"].shape[-1])
                                    for b in batches]) for k in ("ids", "mask"))
      rows = first_step * (ids.shape[0] // len(batches)) + jnp.arange(ids.shape[0])
      out, _ = sample(graphdef, model_params, ids, mask, row_keys(self.seed, rows), settings)
      tokens, lengths = (x.reshape(len(batches), *accumulated, *x.shape[1:]) for x in (out.tokens, out.lengths))
      return tuple({**b, "response_ids": tokens[j], "response_lengths": lengths[j]} for j, b in enumerate(batches))

    rows = batch_sharding(mesh, accumulated=True)
    return jax.jit(under_mesh(student_samples, mesh), in_shardings=(spec.shardings.params["model"], rows, None),
                   out_shardings=rows)

  def sampling_every(self) -> int:
    return self.resample_every if self.mode == "on_policy" else 1

  def _context(self, model, batch, who: str):
    """Final hidden states `[B, N, D]` at the positions that predict the response tokens, for `who`'s context."""
    ids, lengths = responses(batch)
    prompt_ids, prompt_mask = batch[f"{who}_prompt_ids"], batch[f"{who}_prompt_mask"]
    p, n = prompt_ids.shape[1], ids.shape[1]
    seq_ids = jnp.concatenate([prompt_ids, ids], axis=1)
    seq_mask = jnp.concatenate([prompt_mask, response_mask(lengths, n)], axis=1)
    hidden = model.hidden_states(seq_ids, seq_mask, positions=positions(seq_mask))
    return hidden[:, p - 1:p + n - 1]

  def outputs(self, model, batch):
    """The student's hidden states and head at the response positions, the response lengths, and the model's
    static head settings (Python values, for the streamed KL)."""
    return {"hidden": self._context(model, batch, "student"), "head": model.unembedding(),
            "lengths": responses(batch)[1], "vocab_chunk": model.vocab_chunk, "softcap": model.cfg.final_logit_softcap}

  def reference_outputs(self, model, batch):
    return {"hidden": self._context(model, batch, "teacher"), "head": model.unembedding()}

  def loss(self, outputs, reference):
    mask = response_mask(outputs["lengths"], outputs["hidden"].shape[1])
    stats = msd_loss.streamed_token_stats(outputs["hidden"], outputs["head"], reference["hidden"],
                                          reference["head"], top_k=self.top_k, vocab_chunk=outputs["vocab_chunk"],
                                          logit_softcap=outputs["softcap"])
    if self.weighting == "dpsw":
      weights = msd_loss.dpsw_from_stats(stats["teacher_confidence"], stats["student_prob_of_teacher_choice"], mask)
    else:
      weights = mask.astype(jnp.float32)
    losses = msd_loss.weighted_mean(stats["kl"], weights, mask)
    count = jnp.maximum(mask.sum(-1), 1)
    mean_w = msd_loss.weighted_mean(weights, jnp.ones_like(weights), mask)
    spread = jnp.sqrt(msd_loss.weighted_mean(jnp.square(weights - mean_w[:, None]), jnp.ones_like(weights), mask))
    return LossTerms(losses, per_example={
        "kl": jax.lax.stop_gradient(msd_loss.weighted_mean(stats["kl"], jnp.ones_like(weights), mask)),
        "dpsw_weight_raw": jax.lax.stop_gradient(msd_loss.weighted_mean(
            stats["teacher_confidence"] * (1 - stats["student_prob_of_teacher_choice"]), jnp.ones_like(weights),
            mask)),
        "dpsw_weight_spread": spread, "sample_length": count.astype(jnp.float32) * (mask.sum(-1) > 0)})

  def step_flops(self, model_cfg: ModelConfig, shapes, *, frozen_reference: bool) -> float:
    """The student's forward and backward on prompt + response, the teacher's forward, both heads on the response
    (the sampling itself is not counted)."""
    b, p = shapes["student_prompt_ids"]
    pt, n = shapes["teacher_prompt_ids"][1], self.max_new_tokens
    student = flops.forward_flops(model_cfg, p + n, head_positions=n)
    teacher = flops.forward_flops(model_cfg, pt + n, head_positions=n)
    return b * (flops.training_flops(student) + teacher)


def responses(batch):
  """`(ids [B, N], lengths [B])` of the batch's responses: sampled this step, or cached (`ref_` prefixed)."""
  prefix = "" if "response_ids" in batch else "ref_"
  return batch[f"{prefix}response_ids"], batch[f"{prefix}response_lengths"]

"""The MLC multilingual consistency term (DESIGN.md §2.1): an add-on to any objective whose data has prompt variants.

`L = L_objective + weight · L_cons` on steps with `step % aux_every == 0`. `L_cons` reads HF `hidden_states[layer]`
at each prompt variant's last real token, maps it through the extractor (trained with the model, exported beside
it) and pushes the L languages' representations of one prompt to be collinear (`mlc_jax.losses.mlc`).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from mlc_jax.config.fields import ConfigError, Section, at_least, field, non_negative, one_of, positive
from mlc_jax.losses import mlc as mlc_loss
from mlc_jax.models import Decoder, ModelConfig, flops
from mlc_jax.models.extractor import Extractor


def last_token_states(model: Decoder, prompt_ids, prompt_mask, *, layer: int) -> jax.Array:
  """HF `hidden_states[layer]` at each prompt variant's last real token: `[B, L, P]` → `[B, L, hidden]`."""
  b, num_langs, p = prompt_ids.shape
  ids, mask = prompt_ids.reshape(b * num_langs, p), prompt_mask.reshape(b * num_langs, p)
  last = jnp.maximum(mask.sum(-1) - 1, 0)
  # (the last block runs its queries and MLP at that token only)
  return model.hidden_state_at(ids, mask, layer=layer, at=last[:, None])[:, 0].reshape(b, num_langs, -1)


@dataclasses.dataclass(frozen=True)
class Mlc(Section):
  """The `mlc` config section and the term it adds (the official code's defaults)."""

  enabled: bool = field(True, "add the MLC consistency term")
  weight: float = field(0.8, "λ, the weight of the term", non_negative())
  tau: float = field(0.2, "τ, the softmax temperature over the scaled singular values", positive())
  normalize: str = field("sigma1", "'sigma1' (official code: s = σ / stop_grad(σ1)) | 'none' (paper: s = σ)",
                         one_of(mlc_loss.NORMALIZE_MODES))
  aux_every: int = field(2, "the term is added on steps with step % aux_every == 0", positive())
  extractor_dim: int = field(512, "output width of the extractor (hidden → extractor_dim)", positive())
  layer: int = field(-1, "HF hidden_states index of the representation; -1 = num_layers (the final-norm output)",
                     at_least(-1))

  def representation_layer(self, model_cfg: ModelConfig) -> int:
    """The resolved hidden-states index (0..num_layers); a `ConfigError` when out of range."""
    layer = model_cfg.num_layers if self.layer == -1 else self.layer
    if not 0 <= layer <= model_cfg.num_layers:
      raise ConfigError(f"mlc.layer={self.layer} is out of range: this model has hidden_states indices "
                        f"0..{model_cfg.num_layers} (-1 = {model_cfg.num_layers}, the final-norm output)")
    return layer

  def make_extractor(self, model_cfg: ModelConfig, *, seed: int, param_dtype) -> Extractor:
    return Extractor(model_cfg.hidden_size, self.extractor_dim, rngs=nnx.Rngs(seed),
                     param_dtype=param_dtype)

  def term(self, policy, batch, apply: jax.Array | bool, prompt_state: jax.Array | None = None
           ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(weight · L_cons, metrics) for one micro-batch; zero where `apply` (a traced bool, or Python `True`: always,
    without a `lax.cond`) is False.

    `policy` has `.model` (a `Decoder`) and `.extractor`; `batch` holds `prompt_ids`, `prompt_mask` `[B, L, P]`, or
    with `shared_variant` `[B]` the L - 1 variants other than each pair's own prompt, whose representation is then
    `prompt_state` `[B, hidden]` (from the pair's forward). The singular values do not depend on the order of the
    languages, so that one is simply appended.
    """
    layer = self.representation_layer(policy.model.cfg)
    if "shared_variant" in batch and prompt_state is None:
      raise ValueError("a batch with shared_variant needs the pairs' prompt_state (the objective's outputs)")

    def consistency():
      states = last_token_states(policy.model, batch["prompt_ids"], batch["prompt_mask"], layer=layer)
      if "shared_variant" in batch:
        states = jnp.concatenate([states, prompt_state[:, None].astype(states.dtype)], axis=1)
      z = policy.extractor(states).astype(jnp.float32)
      return (mlc_loss.consistency_loss(z, tau=self.tau, normalize=self.normalize),
              jax.lax.stop_gradient(mlc_loss.sigma1_share(z).mean()))

    if apply is True:
      loss, share = consistency()
    else:
      loss, share = jax.lax.cond(apply, consistency, lambda: (jnp.float32(0.0), jnp.float32(0.0)))
    return self.weight * loss, dict(mlc_loss=loss, sigma1_share=share, mlc_applied=jnp.asarray(apply, jnp.float32))

  def step_flops(self, model_cfg: ModelConfig, shapes: dict[str, tuple[int, ...]]) -> float:
    """Analytic model FLOPs of the term (forward and backward) on prompt variants `[B, L, P]`: the blocks up to the
    representation layer (the last of them at the last token only) and the extractor at one position per variant
    (and at the shared variant's)."""
    b, num_langs, p = shapes["prompt_ids"]
    layer = self.representation_layer(model_cfg)
    blocks = (flops.forward_flops(model_cfg, p, num_blocks=layer - 1) + flops.block_flops_at(model_cfg, p, 1)
              if layer else 0)
    extractor = 2 * model_cfg.hidden_size * self.extractor_dim * (num_langs + ("shared_variant" in shapes))
    return b * flops.training_flops(num_langs * blocks + extractor)

  def metadata(self, model_cfg: ModelConfig) -> dict:
    """What a user of an exported extractor needs to compute the representation."""
    return {"hidden_states_index": self.representation_layer(model_cfg), "extractor_dim": self.extractor_dim,
            "tau": self.tau, "normalize": self.normalize}


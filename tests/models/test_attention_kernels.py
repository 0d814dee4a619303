"""Splash attention (Pallas, run here in its interpreter) equals the 'xla' path at every real position."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from train_helpers import run_train

from mlc_jax.models import Decoder, get_preset
from mlc_jax.models.attention_kernels import splash_attention
from mlc_jax.models.decoder import xla_attention

B, S, N, K, H = 2, 128, 4, 2, 32
LENGTHS = (S, 90)  # one full row, one right-padded


def case(seed=0):
  rng = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(rng.normal(size=(B, S, heads, H)), jnp.float32) for heads in (N, K, K))
  return q, k, v, jnp.asarray(np.arange(S)[None] < np.array(LENGTHS)[:, None])


@pytest.mark.parametrize("window,cap", [(None, None), (40, None), (None, 5.0)], ids=["causal", "window", "softcap"])
def test_splash_equals_xla_attention_values_and_gradients(window, cap):
  q, k, v, key_mask = case()
  allowed = np.tril(np.ones((S, S), bool))
  if window:
    allowed &= np.arange(S)[:, None] - np.arange(S)[None] < window
  mask_bst = jnp.asarray(allowed[None] & np.asarray(key_mask)[:, None, :])
  real = np.asarray(key_mask)[:, :, None, None]
  splash = lambda q, k, v: splash_attention(q, k, v, key_mask, scale=H**-0.5, window=window, cap=cap, interpret=True)
  xla = lambda q, k, v: xla_attention(q, k, v, mask_bst, scale=H**-0.5, cap=cap)
  np.testing.assert_allclose(np.asarray(splash(q, k, v)) * real, np.asarray(xla(q, k, v)) * real, atol=2e-6)
  loss = lambda f: lambda *args: (f(*args) * real).sum()  # the padded positions' outputs are not read
  for a, b in zip(jax.grad(loss(splash), (0, 1, 2))(q, k, v), jax.grad(loss(xla), (0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(a, b, atol=2e-5)


@pytest.mark.parametrize("preset", ["tiny", "tiny_gemma2"])
def test_decoder_with_splash_equals_xla(preset):
  """Llama (causal + padding) and Gemma-2 (sliding window 16 on every other layer, attention soft-cap)."""
  cfg = get_preset(preset)
  models = [Decoder(cfg, rngs=nnx.Rngs(0), attention_impl=impl) for impl in ("xla", "splash")]
  assert models[1].blocks.attn.attention_impl == "splash"
  ids = jnp.asarray(np.random.default_rng(1).integers(0, cfg.vocab_size, (B, S)))
  key_mask = case()[3]
  xla, splash = (m.hidden_states(ids, key_mask) for m in models)
  real = np.asarray(key_mask)
  np.testing.assert_allclose(np.asarray(splash)[real], np.asarray(xla)[real], atol=1e-5)


def test_splash_rejects_lengths_off_its_tiles():
  q, k, v, key_mask = case()
  with pytest.raises(ValueError, match="multiples of 128; got 100"):
    splash_attention(q[:, :100], k[:, :100], v[:, :100], key_mask[:, :100], scale=1.0, interpret=True)


def test_sharded_train_step_with_splash_equals_xla(tmp_path):
  """On a (1, 2, 1) mesh the kernel runs in shard_map (examples over fsdp), as in training.

  Through the training CLI in a subprocess with 2 simulated devices: Pallas' interpreter on a simulated 8-device
  mesh can deadlock XLA:CPU's thread pool; here a stuck step ends with the watchdog's exit code, never a hang.
  """
  records = {}
  for impl in ("xla", "splash"):
    done = run_train(tmp_path / impl, "train.steps=1", "data.max_prompt_len=64", "data.max_response_len=64",
                     "data.mlc_prompt_len=128", "mlc.aux_every=1", f"model.attention_impl={impl}",
                     "train.step_timeout_s=400", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    records[impl] = json.loads((tmp_path / impl / "metrics.jsonl").read_text().splitlines()[-1])
  for key in ("dpo_loss", "mlc_loss", "grad_norm"):
    np.testing.assert_allclose(records["splash"][key], records["xla"][key], rtol=1e-4, err_msg=key)

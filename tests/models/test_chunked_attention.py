"""Query-chunked causal attention (`model.attention_chunk`) against the full score matrix: the same outputs and
gradients for causal masks with padding, packed rows and sliding windows, in the attention alone and in whole
models (GQA, Gemma-2's soft-caps and windows)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_packed import packed_row

from mlc_jax.models import get_preset, init_model
from mlc_jax.models.decoder import causal_chunked_attention, xla_attention

S, CHUNK = 40, 16  # the last block is shorter


def masks():
  """`{name: [2, S, S]}` bool masks that never let a query see a later key."""
  causal = np.tril(np.ones((S, S), bool))
  lengths = np.array([S, 29])
  padded = causal[None] & (np.arange(S) < lengths[:, None])[:, None, :]
  segments = np.repeat([1, 2, 3], [17, 15, 8])
  packed = causal & (segments[:, None] == segments[None, :])
  window = causal & (np.arange(S)[:, None] - np.arange(S)[None, :] < 8)
  return {"padded": padded, "packed": np.broadcast_to(packed, (2, S, S)), "window": np.broadcast_to(window, (2, S, S))}


@pytest.mark.parametrize("cap", [None, 20.0])
@pytest.mark.parametrize("name", ["padded", "packed", "window"])
def test_chunked_attention_and_its_gradients_equal_the_full_matrix(name, cap):
  mask = jnp.asarray(masks()[name])
  q, k, v = (jax.random.normal(key, (2, S, n, 8)) for key, n in zip(jax.random.split(jax.random.PRNGKey(0), 3),
                                                                       (4, 2, 2)))  # 4 query heads, 2 kv heads
  weights = jax.random.normal(jax.random.PRNGKey(1), (2, S, 4, 8))
  real = mask.any(-1)[..., None, None]  # (rows with no key at all differ by design)

  def loss(fn, *qkv):
    return jnp.sum(jnp.where(real, fn(*qkv, mask, scale=0.35, cap=cap), 0.0) * weights)

  full = lambda *a, **kw: xla_attention(*a, **kw)
  chunked = lambda *a, **kw: causal_chunked_attention(*a, chunk=CHUNK, **kw)
  np.testing.assert_allclose(jnp.where(real, chunked(q, k, v, mask, scale=0.35, cap=cap), 0),
                             jnp.where(real, full(q, k, v, mask, scale=0.35, cap=cap), 0), rtol=1e-5, atol=1e-6)
  got, want = (jax.grad(lambda *qkv: loss(fn, *qkv), argnums=(0, 1, 2))(q, k, v) for fn in (chunked, full))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), got, want)


@pytest.mark.parametrize("preset", ["tiny", "tiny_gemma2"])  # GQA; soft-caps and sliding windows
def test_models_with_chunked_attention_equal_the_full_matrix(preset):
  cfg = get_preset(preset)
  full, chunked = (init_model(cfg, seed=0, attention_chunk=c) for c in (0, CHUNK))
  ids = jax.random.randint(jax.random.PRNGKey(2), (2, 48), 0, cfg.vocab_size)
  attention_mask = (jnp.arange(48) < jnp.array([[48], [31]])).astype(jnp.int32)
  real = attention_mask.astype(bool)[..., None]
  weights = jax.random.normal(jax.random.PRNGKey(3), (2, 48, cfg.hidden_size))

  def loss(model, batch):  # (linear in the outputs: a sum of squares cancels through the final norm)
    return jnp.sum(jnp.where(real, model.hidden_states(batch, attention_mask), 0.0) * weights)

  np.testing.assert_allclose(*(jnp.where(real, m.hidden_states(ids, attention_mask), 0) for m in (chunked, full)),
                             rtol=1e-5, atol=1e-5)
  grads = [nnx.state(nnx.grad(loss)(m, ids), nnx.Param) for m in (chunked, full)]
  # (fp32 sums in another order: 1e-5 of each gradient's largest entry)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max())), *grads)
  # A packed row (two pairs with shared prompts) too.
  row, _ = packed_row(cfg.vocab_size)
  np.testing.assert_allclose(*(m.hidden_states(row["input_ids"], positions=row["positions"],
                                               segment_ids=row["segment_ids"], branch_ids=row["branch_ids"])
                               for m in (init_model(cfg, seed=0, attention_chunk=8), full)), rtol=1e-5, atol=1e-5)

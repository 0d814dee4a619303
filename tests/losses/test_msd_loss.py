"""MSD's reverse KL, DPSW weights and loss against float64 NumPy; gradients by finite differences; chunked = full."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlc_jax.losses import msd

RNG = np.random.default_rng(0)


def np_log_softmax(x):
  x = np.asarray(x, np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def np_kl(s, t):
  ls, lt = np_log_softmax(s), np_log_softmax(t)
  return (np.exp(ls) * (ls - lt)).sum(-1)


def np_weights(s, t, mask, k):
  t64 = np.asarray(t, np.float64)
  top = np.sort(t64, -1)[..., ::-1][..., :k]
  lq = np_log_softmax(top)
  w_t = 1 + (np.exp(lq) * lq).sum(-1) / np.log(k)
  choice = t64.argmax(-1)
  p_s = np.take_along_axis(np.exp(np_log_softmax(s)), choice[..., None], -1)[..., 0]
  w = np.where(mask, w_t * (1 - p_s), 0.0)
  n, total = mask.sum(-1, keepdims=True), w.sum(-1, keepdims=True)
  return np.where(total > 1e-12, n * w / np.where(total > 1e-12, total, 1), mask.astype(float))


def np_loss(s, t, mask, k, weights=None):
  w = np_weights(s, t, mask, k) if weights is None else weights
  return np.where(mask, w * np_kl(s, t), 0).sum(-1) / np.maximum(mask.sum(-1), 1)


def case(b=3, t=6, v=11, scale=2.0, seed=0):
  rng = np.random.default_rng(seed)
  s, te = (rng.normal(size=(b, t, v)) * scale).astype(np.float32), (rng.normal(size=(b, t, v)) * scale).astype(np.float32)
  mask = np.ones((b, t), bool)
  mask[1, t // 2:] = False
  mask[-1, :1] = False
  return s, te, mask


def test_reverse_kl_matches_numpy_and_is_zero_on_itself():
  s, t, _ = case()
  np.testing.assert_allclose(msd.token_reverse_kl(s, t), np_kl(s, t), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(msd.token_reverse_kl(s, s), 0.0, atol=1e-6)
  assert (np.asarray(msd.token_reverse_kl(s, t)) >= -1e-6).all()


@pytest.mark.parametrize("k", [2, 4, 11])
def test_dpsw_weights_match_numpy(k):
  s, t, mask = case()
  w = np.asarray(msd.dpsw_weights(s, t, mask, top_k=k))
  np.testing.assert_allclose(w, np_weights(s, t, mask, k), rtol=1e-5, atol=1e-6)
  assert (w[~mask] == 0).all()
  np.testing.assert_allclose(w.sum(-1), mask.sum(-1), rtol=1e-5)  # normalised to n per row


def test_dpsw_falls_back_to_uniform_weights_when_all_raw_weights_are_zero():
  """A teacher spread evenly over its top K (w^T = 0): the row's weights are 1 and the loss is the mean KL."""
  s, _, mask = case()
  t = np.zeros_like(s)
  w = np.asarray(msd.dpsw_weights(s, t, mask, top_k=4))
  np.testing.assert_array_equal(w, mask.astype(np.float32))
  np.testing.assert_allclose(msd.msd_loss(s, t, mask, top_k=4), np_loss(s, t, mask, 4, mask.astype(float)),
                             rtol=1e-5)


@pytest.mark.parametrize("weighting", ["dpsw", "uniform"])
def test_loss_value_and_gradient(weighting):
  s, t, mask = case(b=2, t=4, v=7)
  k = 3
  weights = np_weights(s, t, mask, k) if weighting == "dpsw" else mask.astype(float)
  loss = lambda x, y: msd.msd_loss(x, y, mask, top_k=k, weighting=weighting).sum()
  np.testing.assert_allclose(msd.msd_loss(s, t, mask, top_k=k, weighting=weighting), np_loss(s, t, mask, k, weights),
                             rtol=1e-5, atol=1e-6)
  grad_s, grad_t = jax.grad(loss, argnums=(0, 1))(jnp.asarray(s), jnp.asarray(t))
  assert np.all(np.asarray(grad_t) == 0.0)  # the teacher is a constant
  # central differences of the float64 loss with the (gradient-free) weights held fixed
  eps, fd = 1e-5, np.zeros_like(s, np.float64)
  for idx in np.ndindex(s.shape):
    up, down = s.astype(np.float64), s.astype(np.float64)
    up[idx] += eps
    down[idx] -= eps
    fd[idx] = (np_loss(up, t, mask, k, weights).sum() - np_loss(down, t, mask, k, weights).sum()) / (2 * eps)
  np.testing.assert_allclose(grad_s, fd, rtol=1e-3, atol=1e-5)


def test_identical_contexts_give_zero_loss():
  s, _, mask = case()
  np.testing.assert_allclose(msd.msd_loss(s, s, mask, top_k=4), 0.0, atol=1e-6)


@pytest.mark.parametrize("name", ["one-hot", "uniform", "huge", "row fully masked"])
def test_degenerate_inputs_stay_finite(name):
  s, t, mask = case()
  if name == "one-hot":
    s = t = np.where(np.arange(s.shape[-1]) == 3, 1e4, -1e4).astype(np.float32) * np.ones_like(s)
  elif name == "uniform":
    s, t = np.zeros_like(s), np.zeros_like(t)
  elif name == "huge":
    s, t = s * 1e6, -t * 1e6
  else:
    mask[0] = False
  loss, grad = jax.value_and_grad(lambda x: msd.msd_loss(x, t, mask, top_k=4).sum())(jnp.asarray(s))
  assert np.isfinite(np.asarray(loss)) and np.isfinite(np.asarray(grad)).all()


@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("vocab_chunk", [4, 8, 32])
def test_chunked_stats_equal_the_full_computation(softcap, vocab_chunk):
  b, t, d, v, k = 2, 5, 6, 32, 4
  rng = np.random.default_rng(1)
  hs, ht = (jnp.asarray(rng.normal(size=(b, t, d)), jnp.float32) for _ in range(2))
  ws, wt = (jnp.asarray(rng.normal(size=(d, v)) * 0.8, jnp.float32) for _ in range(2))
  mask = jnp.asarray(rng.random((b, t)) > 0.2)

  def loss(hs, ws, ht, wt, chunk):
    stats = msd.streamed_token_stats(hs, ws, ht, wt, top_k=k, vocab_chunk=chunk, logit_softcap=softcap)
    weights = msd.dpsw_from_stats(stats["teacher_confidence"], stats["student_prob_of_teacher_choice"], mask)
    return msd.weighted_mean(stats["kl"], weights, mask).sum(), stats

  (full, stats_full), g_full = jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)(hs, ws, ht, wt, None)
  (chunked, stats), g_chunked = jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)(hs, ws, ht, wt,
                                                                                            vocab_chunk)
  for key in stats:
    np.testing.assert_allclose(stats[key], stats_full[key], rtol=1e-5, atol=1e-6, err_msg=key)
  np.testing.assert_allclose(chunked, full, rtol=1e-5)
  for a, b_ in zip(g_chunked[:2], g_full[:2]):
    np.testing.assert_allclose(a, b_, rtol=1e-4, atol=1e-6)
  assert all(np.all(np.asarray(g) == 0) for g in g_chunked[2:])  # nothing reaches the teacher
  # and the full form is the pure loss on materialised logits
  logits = lambda h, w: msd.softcap(h @ w, softcap)
  np.testing.assert_allclose(full, msd.msd_loss(logits(hs, ws), logits(ht, wt), mask, top_k=k).sum(), rtol=1e-5)


def test_bad_arguments():
  s, t, mask = case()
  with pytest.raises(ValueError, match="top_k=1"):
    msd.dpsw_weights(s, t, mask, top_k=1)
  with pytest.raises(ValueError, match="weighting"):
    msd.msd_loss(s, t, mask, top_k=2, weighting="entropy")
  with pytest.raises(ValueError, match="vocab_chunk=3"):
    msd.streamed_token_stats(s[..., :4], jnp.ones((4, 10)), s[..., :4], jnp.ones((4, 10)), top_k=2, vocab_chunk=3)

"""Chunked masked log-probs against float64 NumPy: values, gradients, bf16, memory."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlc_jax.losses import logps


def np_token_logps(hidden, head, targets, softcap=None):
  logits = np.asarray(hidden, np.float64) @ np.asarray(head, np.float64)
  if softcap is not None:
    logits = softcap * np.tanh(logits / softcap)
  m = logits.max(-1, keepdims=True)
  log_z = m[..., 0] + np.log(np.exp(logits - m).sum(-1))
  return np.take_along_axis(logits, targets[..., None], -1)[..., 0] - log_z


def logps_case(seed=6, B=2, S=7, D=8, V=64, logit_scale=3.0):
  rng = np.random.default_rng(seed)
  hidden = rng.normal(size=(B, S, D)).astype(np.float32)
  head = (rng.normal(size=(D, V)) * logit_scale / np.sqrt(D)).astype(np.float32)
  targets = rng.integers(0, V, size=(B, S))
  mask = np.ones((B, S), bool)
  mask[0, :3] = False
  mask[1, 5:] = False
  return hidden, head, targets, mask


@pytest.mark.parametrize("vocab_chunk", [None, 8, 16, 64])
@pytest.mark.parametrize("softcap", [None, 5.0])
def test_token_logps_matches_numpy(vocab_chunk, softcap):
  hidden, head, targets, _ = logps_case(logit_scale=10.0)
  got = logps.token_logps(jnp.asarray(hidden), jnp.asarray(head), jnp.asarray(targets), vocab_chunk=vocab_chunk,
                          logit_softcap=softcap)
  assert got.shape == targets.shape and got.dtype == jnp.float32
  np.testing.assert_allclose(got, np_token_logps(hidden, head, targets, softcap), rtol=1e-5, atol=1e-5)


def masked_sum_fn(targets, mask, **kw):
  def f(hidden, head):
    return logps.sequence_logps(logps.token_logps(hidden, head, targets, **kw), mask)[0].sum()
  return f


@pytest.mark.parametrize("softcap", [None, 5.0])
def test_token_logps_chunked_gradient_equals_unchunked(softcap):
  hidden, head, targets, mask = logps_case(logit_scale=10.0)
  args = (jnp.asarray(hidden), jnp.asarray(head))
  full = jax.grad(masked_sum_fn(targets, mask, logit_softcap=softcap), argnums=(0, 1))(*args)
  chunked = jax.jit(jax.grad(masked_sum_fn(targets, mask, logit_softcap=softcap, vocab_chunk=16), argnums=(0, 1)))(
      *args)
  for a, b in zip(full, chunked):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  assert np.all(np.asarray(full[0])[~mask] == 0.0)


def test_token_logps_gradient_matches_analytic():
  hidden, head, targets, mask = logps_case()
  logits = hidden.astype(np.float64) @ head
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  dlogits = (np.eye(head.shape[1])[targets] - p) * mask[..., None]  # d sum(log p_t) / d logits
  g_hidden, g_head = jax.grad(masked_sum_fn(targets, mask, vocab_chunk=8), argnums=(0, 1))(
      jnp.asarray(hidden), jnp.asarray(head))
  np.testing.assert_allclose(g_hidden, dlogits @ head.T, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(g_head, np.einsum("bsd,bsv->dv", hidden, dlogits), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("head_dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("vocab_chunk", [None, 16])
def test_token_logps_bf16(head_dtype, vocab_chunk):
  hidden, head, targets, _ = logps_case()
  hidden_bf16, head_low = jnp.asarray(hidden, jnp.bfloat16), jnp.asarray(head, head_dtype)
  got = logps.token_logps(hidden_bf16, head_low, jnp.asarray(targets), vocab_chunk=vocab_chunk)
  assert got.dtype == jnp.float32
  ref = np_token_logps(np.asarray(hidden_bf16, np.float64), np.asarray(head_low, np.float64), targets)
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_token_logps_masked_out_of_range_targets():
  hidden, head, targets, mask = logps_case()
  padded = np.where(mask, targets, -100)
  args = (jnp.asarray(hidden), jnp.asarray(head))
  for vocab_chunk in (None, 16):
    got = logps.sequence_logps(logps.token_logps(*args, jnp.asarray(padded), vocab_chunk=vocab_chunk), mask)
    want = logps.sequence_logps(logps.token_logps(*args, jnp.asarray(targets), vocab_chunk=vocab_chunk), mask)
    for a, b in zip(got, want):
      np.testing.assert_allclose(a, b, rtol=1e-6)


def test_token_logps_rejects_non_divisor_chunk():
  hidden, head, targets, _ = logps_case()
  with pytest.raises(ValueError, match="vocab_chunk=24 must be a positive divisor of the vocabulary size 64"):
    logps.token_logps(jnp.asarray(hidden), jnp.asarray(head), jnp.asarray(targets), vocab_chunk=24)


def test_token_logps_chunked_backward_keeps_no_full_logits():
  B, S, D, V = 4, 64, 32, 8192
  hidden, head, targets, mask = logps_case(B=B, S=S, D=D, V=V)
  grad_fn = jax.jit(jax.grad(masked_sum_fn(targets, mask, vocab_chunk=512), argnums=(0, 1)))
  temp = grad_fn.lower(jnp.asarray(hidden), jnp.asarray(head)).compile().memory_analysis().temp_size_in_bytes
  assert temp < B * S * V * 4 / 2


def test_sequence_logps_matches_numpy():
  rng = np.random.default_rng(7)
  lp = -rng.exponential(size=(3, 6)).astype(np.float32)
  mask = rng.random((3, 6)) < 0.6
  mask[2] = False
  lp[2, 1] = np.nan  # masked-out values never leak
  summed, mean, count = logps.sequence_logps(jnp.asarray(lp), jnp.asarray(mask))
  want_sum = np.where(mask, lp, 0.0).sum(-1)
  np.testing.assert_allclose(summed, want_sum, rtol=1e-6)
  np.testing.assert_allclose(count, mask.sum(-1))
  np.testing.assert_allclose(mean[:2], want_sum[:2] / mask[:2].sum(-1), rtol=1e-6)
  assert mean[2] == 0.0 and summed[2] == 0.0
  grad = jax.grad(lambda x: logps.sequence_logps(x, jnp.asarray(mask, jnp.int32))[1].sum())(jnp.asarray(lp))
  np.testing.assert_allclose(grad, mask / np.maximum(mask.sum(-1, keepdims=True), 1))


@pytest.mark.parametrize("vocab_chunk", [None, 16])
def test_next_token_targets_give_the_log_probs_of_the_one_token_shift(vocab_chunk):
  """All T positions scored, the last masked out, equal the `hidden[:, :-1]` / `targets[:, 1:]` slices (and grads)."""
  hidden, head, ids, mask = logps_case(logit_scale=10.0)
  mask[1, 0] = True  # a response token at position 0 cannot be predicted: dropped both ways
  targets, target_mask = logps.next_token_targets(jnp.asarray(ids), jnp.asarray(mask, jnp.int32))
  np.testing.assert_array_equal(targets[:, :-1], ids[:, 1:])
  np.testing.assert_array_equal(target_mask, np.pad(mask[:, 1:], ((0, 0), (0, 1))))

  def shifted(h, w):
    return logps.sequence_logps(logps.token_logps(h, w, targets, vocab_chunk=vocab_chunk), target_mask)[:2]

  def sliced(h, w):
    return logps.sequence_logps(logps.token_logps(h[:, :-1], w, jnp.asarray(ids[:, 1:]), vocab_chunk=vocab_chunk),
                                jnp.asarray(mask[:, 1:]))[:2]

  args = (jnp.asarray(hidden), jnp.asarray(head))
  for a, b in zip(shifted(*args), sliced(*args)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  total = lambda f: lambda h, w: sum(x.sum() for x in f(h, w))
  for a, b in zip(jax.grad(total(shifted), (0, 1))(*args), jax.grad(total(sliced), (0, 1))(*args)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

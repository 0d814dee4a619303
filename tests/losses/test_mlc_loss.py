"""The MLC consistency loss against hand-derived values, float64 NumPy and finite differences."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlc_jax.losses import mlc

MODES = ("sigma1", "none")


def np_singular_values(z):
  z = np.asarray(z, np.float64)
  z_hat = z / (np.linalg.norm(z, axis=-1, keepdims=True) + 1e-12)
  return np.linalg.svd(z_hat, compute_uv=False)


def np_ce0(s, tau):
  """-log softmax(s / tau)[0] per row, float64."""
  x = s / tau
  m = x.max(-1, keepdims=True)
  return -(x[:, 0] - (m[:, 0] + np.log(np.exp(x - m).sum(-1))))


def np_mlc(z, tau, normalize, sigma1=None):
  """NumPy MLC loss; `sigma1` [B] fixes the divisor (what stop_gradient means for a finite difference)."""
  s = np_singular_values(z)
  if normalize == "sigma1":
    s = s / (s[:, :1] if sigma1 is None else sigma1[:, None])
  return np_ce0(s, tau).mean()


def rank_one_loss(scale, r, tau):
  return -np.log(np.exp(scale / tau) / (np.exp(scale / tau) + r - 1))


@pytest.mark.parametrize("L,D", [(10, 16), (2, 8), (6, 3), (4, 1)])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_mlc_rank_one(L, D, scale):
  v = np.random.default_rng(L * D).normal(size=(2, 1, D))
  z = jnp.asarray(np.repeat(v, L, axis=1) * scale, jnp.float32)
  r, tau = min(L, D), 0.2
  np.testing.assert_allclose(mlc.consistency_loss(z, tau=tau), rank_one_loss(1.0, r, tau), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(mlc.consistency_loss(z, tau=tau, normalize="none"), rank_one_loss(np.sqrt(L), r, tau),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(mlc.sigma1_share(z), [1.0, 1.0], rtol=1e-6)


@pytest.mark.parametrize("normalize", MODES)
def test_mlc_orthonormal_rows(normalize):
  L, D = 5, 9
  q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(D, L)))
  z = q.T[None] * np.array([0.1, 1.0, 3.0, 10.0, 100.0])[None, :, None]  # row scales are normalised away
  np.testing.assert_allclose(mlc.consistency_loss(jnp.asarray(z, jnp.float32), normalize=normalize), np.log(L),
                             rtol=1e-5)
  np.testing.assert_allclose(mlc.sigma1_share(jnp.asarray(z, jnp.float32)), [1 / L], rtol=1e-5)


@pytest.mark.parametrize("B,L,D", [(3, 10, 16), (2, 2, 5), (4, 6, 3), (1, 4, 4)])
@pytest.mark.parametrize("normalize", MODES)
@pytest.mark.parametrize("tau", [0.2, 1.0])
def test_mlc_matches_numpy(B, L, D, normalize, tau):
  z = np.random.default_rng(B * L * D).normal(size=(B, L, D)).astype(np.float32)
  got = mlc.consistency_loss(jnp.asarray(z), tau=tau, normalize=normalize)
  np.testing.assert_allclose(got, np_mlc(z, tau, normalize), rtol=2e-5)
  s = np_singular_values(z)
  np.testing.assert_allclose(mlc.sigma1_share(jnp.asarray(z)), s[:, 0] / s.sum(-1), rtol=1e-5)


def test_mlc_bf16_input():
  z = np.random.default_rng(1).normal(size=(2, 4, 8)).astype(np.float32)
  z_bf16 = jnp.asarray(z, jnp.bfloat16)
  got = mlc.consistency_loss(z_bf16)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, np_mlc(np.asarray(z_bf16, np.float64), 0.2, "sigma1"), rtol=1e-5)


def central_differences(f, x, h=1e-6):
  grad = np.zeros_like(x)
  for i in np.ndindex(x.shape):
    step = np.zeros_like(x)
    step[i] = h
    grad[i] = (f(x + step) - f(x - step)) / (2 * h)
  return grad


def test_mlc_gradient_matches_finite_differences():
  z = np.random.default_rng(2).normal(size=(2, 4, 5))
  tau = 0.3
  sigma1 = np_singular_values(z)[:, 0]
  with jax.enable_x64(True):
    grad = {m: np.asarray(jax.grad(functools.partial(mlc.consistency_loss, tau=tau, normalize=m))(jnp.asarray(z)))
            for m in MODES}
  assert all(g.dtype == np.float64 for g in grad.values())
  np.testing.assert_allclose(grad["none"], central_differences(lambda x: np_mlc(x, tau, "none"), z), atol=1e-7)
  # With sigma_1 held at its value, the finite difference is the stop-gradient derivative ...
  fd_stopped = central_differences(lambda x: np_mlc(x, tau, "sigma1", sigma1), z)
  np.testing.assert_allclose(grad["sigma1"], fd_stopped, atol=1e-7)
  # ... which is not the full derivative of sigma_j / sigma_1.
  fd_full = central_differences(lambda x: np_mlc(x, tau, "sigma1"), z)
  assert np.abs(grad["sigma1"] - fd_full).max() > 1e-2


def degenerate_inputs():
  rng = np.random.default_rng(3)
  zero_row = rng.normal(size=(2, 10, 16))  # few distinct shapes keep the eager-op compile cache warm
  zero_row[:, 2] = 0.0
  return {
      "identical_rows": np.repeat(rng.normal(size=(2, 1, 16)), 10, axis=1),
      "two_languages": np.repeat(rng.normal(size=(2, 1, 4)), 2, axis=1),
      "dim_below_languages": rng.normal(size=(2, 6, 3)),
      "identical_rows_dim_below_languages": np.repeat(rng.normal(size=(2, 1, 3)), 6, axis=1),
      "zero_row": zero_row,
      "all_zero": np.zeros((2, 10, 16)),
      "one_example_zero": np.concatenate([np.zeros((1, 10, 16)), rng.normal(size=(1, 10, 16))]),
  }


_value_and_grad = jax.value_and_grad(mlc.consistency_loss)
_jit_value_and_grad = jax.jit(_value_and_grad, static_argnames="normalize")


@pytest.mark.parametrize("name", sorted(degenerate_inputs()))
@pytest.mark.parametrize("normalize", MODES)
@pytest.mark.parametrize("jit", [False, True])
def test_mlc_degenerate_inputs_stay_finite(name, normalize, jit):
  z = jnp.asarray(degenerate_inputs()[name], jnp.float32)
  value, grad = (_jit_value_and_grad if jit else _value_and_grad)(z, normalize=normalize)
  assert np.isfinite(value)
  assert np.all(np.isfinite(grad))
  assert np.all(np.isfinite(mlc.sigma1_share(z)))


def test_mlc_degenerate_values():
  r = 4
  np.testing.assert_allclose(mlc.consistency_loss(jnp.zeros((3, r, 8))), np.log(r), rtol=1e-6)
  np.testing.assert_allclose(mlc.sigma1_share(jnp.zeros((1, r, 8))), [0.0])
  # Four identical rows and a zero row: still rank one.
  z = np.repeat(np.random.default_rng(4).normal(size=(1, 1, 6)), 5, axis=1)
  z[:, 3] = 0.0
  np.testing.assert_allclose(mlc.consistency_loss(jnp.asarray(z, jnp.float32)), rank_one_loss(1.0, 5, 0.2),
                             rtol=1e-5)


def test_mlc_rejects_invalid_arguments():
  with pytest.raises(ValueError, match=r"'sigma1', 'none'.*'paper'"):
    mlc.consistency_loss(jnp.ones((2, 3, 4)), normalize="paper")
  with pytest.raises(ValueError, match=r"\(3, 4\)"):
    mlc.consistency_loss(jnp.ones((3, 4)))
  with pytest.raises(ValueError, match=r"\(1, 2, 3, 4\)"):
    mlc.sigma1_share(jnp.ones((1, 2, 3, 4)))

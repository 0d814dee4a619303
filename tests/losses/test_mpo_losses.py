"""MPO's reward-gap errors and pooled retention MSE against float64 NumPy; no gradient to the reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlc_jax.losses import mpo

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("beta", [1.0, 1.5])
def test_mpo_reward_gap_value_and_no_gradient_to_the_dominant_side(beta):
  dc, dr, tc, tr = (RNG.normal(size=5) - 1 for _ in range(4))
  expected = np.mean((beta * (tc - tr) - (dc - dr)) ** 2)
  np.testing.assert_allclose(mpo.reward_gap_errors(dc, dr, tc, tr, beta=beta).mean(), expected, rtol=1e-5)
  g_dc, g_dr, g_tc, g_tr = jax.grad(lambda *a: mpo.reward_gap_errors(*a, beta=beta).mean(), argnums=(0, 1, 2, 3))(
      *(jnp.asarray(x, jnp.float32) for x in (dc, dr, tc, tr)))
  assert np.all(np.asarray(g_dc) == 0.0) and np.all(np.asarray(g_dr) == 0.0)
  np.testing.assert_allclose(g_tc, 2 * beta * (beta * (tc - tr) - (dc - dr)) / 5, rtol=1e-5)
  np.testing.assert_allclose(g_tr, -np.asarray(g_tc), rtol=1e-6)


@pytest.mark.parametrize("include_padding", [False, True])
def test_mpo_retention_masked_and_padded_means(include_padding):
  policy, reference = RNG.normal(size=(3, 6, 4)), RNG.normal(size=(3, 6, 4))
  mask = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]])
  if include_padding:
    pooled = lambda h: h.mean(axis=1)
  else:
    pooled = lambda h: (h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
  expected = np.mean((pooled(policy) - pooled(reference)) ** 2)
  retention = lambda p, r, m=mask: mpo.pooled_mse(mpo.mean_pool(p, m, include_padding=include_padding),
                                                 mpo.mean_pool(r, m, include_padding=include_padding))
  got = retention(policy, reference)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  g_ref = jax.grad(lambda r: retention(jnp.asarray(policy), r, jnp.asarray(mask)))(jnp.asarray(reference))
  assert np.all(np.asarray(g_ref) == 0.0)
  if not include_padding:  # padding positions do not move the masked loss
    g_pol = jax.grad(lambda p: retention(p, jnp.asarray(reference), jnp.asarray(mask)))(jnp.asarray(policy))
    assert np.all(np.asarray(g_pol)[mask == 0] == 0.0)

"""DPO (cDPO), hinge, IPO, SimPO, ORPO and SFT against float64 NumPy implementations of DESIGN.md's formulas."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlc_jax.losses import logps, preference

RNG = np.random.default_rng(0)


def f32(*xs):
  """Inputs rounded to float32 (what the losses see) but held in float64 for the reference."""
  return tuple(np.asarray(x, np.float32).astype(np.float64) for x in xs)
# Per-token average log-probs from ordinary to extreme: just below 0 (a certain model) to very negative.
AVGS = np.array([-1e-9, -1e-6, -0.01, -0.7, -2.5, -40.0, -1e4])
SUMS = np.array([-1e4, -3000.0, -50.0, -1.0, -0.1, -1e-6, -7.0])


def np_log_sigmoid(x):
  return -np.logaddexp(0.0, -x)


def np_log1mexp(x):
  """log(1 - exp(x)) in 50-digit arithmetic (mpmath), rounded to float64."""
  import mpmath
  with mpmath.workdps(50):
    return np.array([float(mpmath.log(1 - mpmath.exp(mpmath.mpf(float(v))))) for v in np.ravel(x)]).reshape(np.shape(x))


def finite_grads(fn, *args):
  grads = jax.grad(lambda *a: jnp.sum(fn(*a)), argnums=tuple(range(len(args))))(*map(jnp.asarray, args))
  return all(np.isfinite(np.asarray(g)).all() for g in grads)


@pytest.mark.parametrize("beta", [0.05, 0.1, 1.0])
def test_hinge(beta):
  pc, pr, rc, rr = f32(SUMS, SUMS[::-1], RNG.normal(size=7) * 10 + SUMS, RNG.normal(size=7) + SUMS[::-1])
  expected = np.maximum(0.0, 1.0 - beta * ((pc - rc) - (pr - rr)))
  np.testing.assert_allclose(preference.hinge(pc, pr, rc, rr, beta=beta), expected, rtol=1e-5, atol=1e-5)
  assert finite_grads(lambda *a: preference.hinge(*a, beta=beta), pc, pr, rc, rr)


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_ipo_value_and_length_normalisation(beta):
  c, r = RNG.normal(size=7), RNG.normal(size=7)
  np.testing.assert_allclose(preference.ipo(c, r, beta=beta), ((c - r) - 1 / (2 * beta)) ** 2, rtol=1e-5)
  # The ratio is a per-token mean: a response 10× longer with the same per-token ratio gives the same loss.
  def avg_ratio(per_token_policy, per_token_ref, length):
    mask = np.zeros((1, 40), bool)
    mask[0, :length] = True
    pol = logps.sequence_logps(jnp.full((1, 40), per_token_policy), jnp.asarray(mask))[1]
    ref = logps.sequence_logps(jnp.full((1, 40), per_token_ref), jnp.asarray(mask))[1]
    return pol - ref
  short = preference.ipo(avg_ratio(-1.0, -1.5, 3), avg_ratio(-2.0, -1.8, 3), beta=beta)
  long = preference.ipo(avg_ratio(-1.0, -1.5, 30), avg_ratio(-2.0, -1.8, 30), beta=beta)
  np.testing.assert_allclose(short, long, rtol=1e-6)
  np.testing.assert_allclose(short, [((0.5 - (-0.2)) - 1 / (2 * beta)) ** 2], rtol=1e-5)


@pytest.mark.parametrize("beta,gamma", [(2.0, 0.5), (10.0, 1.6)])
def test_simpo(beta, gamma):
  c, r = f32(AVGS, AVGS[::-1])
  expected = -np_log_sigmoid(beta * (c - r) - gamma)
  np.testing.assert_allclose(preference.simpo(c, r, beta=beta, gamma=gamma), expected, rtol=1e-5, atol=1e-30)
  assert finite_grads(lambda *a: preference.simpo(*a, beta=beta, gamma=gamma), c, r)


def test_log1mexp_is_stable_across_the_range():
  x = np.array([-1e-12, -1e-7, -1e-3, -0.5, -0.7, -1.0, -30.0, -1e4])
  with jax.enable_x64(True):
    np.testing.assert_allclose(preference.log1mexp(jnp.asarray(x)), np_log1mexp(x), rtol=1e-12)
  got = np.asarray(preference.log1mexp(jnp.asarray(x, jnp.float32)))
  assert np.isfinite(got).all()
  np.testing.assert_allclose(got, np_log1mexp(x), rtol=2e-4, atol=1e-12)  # XLA's float32 exp is ~1e-4 far out
  naive = np.log(1 - np.exp(np.float32(-1e-9)))  # what the formula written naively gives
  assert not np.isfinite(naive)


@pytest.mark.parametrize("beta", [0.1, 0.25])
def test_orpo_including_near_zero_average_log_probs(beta):
  c, r = AVGS, AVGS[::-1]
  cc, rc = np.minimum(c, -1e-6), np.minimum(r, -1e-6)
  log_odds = (cc - np_log1mexp(cc)) - (rc - np_log1mexp(rc))
  expected = -c - beta * np_log_sigmoid(log_odds)
  got = preference.orpo(c, r, beta=beta)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  assert np.isfinite(np.asarray(got)).all() and finite_grads(lambda *a: preference.orpo(*a, beta=beta), c, r)
  # The NLL term is in: with equal odds the loss is -avg_c + beta * log 2.
  np.testing.assert_allclose(preference.orpo(np.array([-0.3]), np.array([-0.3]), beta=beta),
                             [0.3 + beta * np.log(2.0)], rtol=1e-6)


def test_sft():
  np.testing.assert_allclose(preference.sft(AVGS), -AVGS)
  np.testing.assert_allclose(jax.grad(lambda c: preference.sft(c).sum())(jnp.asarray(AVGS, jnp.float32)), -1.0)


def np_dpo(pc, pr, rc, rr, beta, eps):
  x = beta * ((pc - rc) - (pr - rr))
  return -(1 - eps) * np_log_sigmoid(x) - eps * np_log_sigmoid(-x)


@pytest.mark.parametrize("beta", [0.01, 0.1, 1.0, 5.0])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.3, 0.49])
def test_dpo_matches_numpy(beta, label_smoothing):
  rng = np.random.default_rng(5)
  pc, pr, rc, rr = rng.normal(scale=50.0, size=(4, 8)) - 200.0
  pc[:2] -= 1e4  # extreme margins of both signs
  pr[2:4] -= 1e4
  inputs = [jnp.asarray(x, jnp.float32) for x in (pc, pr, rc, rr)]
  ref = np_dpo(*[np.asarray(x, np.float64) for x in inputs], beta, label_smoothing)
  loss_fn = functools.partial(preference.dpo, beta=beta, label_smoothing=label_smoothing)
  np.testing.assert_allclose(loss_fn(*inputs), ref, rtol=1e-5, atol=1e-6)
  grads = jax.grad(lambda *a: loss_fn(*a).sum(), argnums=(0, 1, 2, 3))(*inputs)
  # d loss / d pi_c = -beta * ((1 - eps) * sigmoid(-x) - eps * sigmoid(x)); the other three follow by sign.
  x = beta * ((pc - rc) - (pr - rr))
  sig = lambda v: np.exp(np_log_sigmoid(v))
  d_pc = -beta * ((1 - label_smoothing) * sig(-x) - label_smoothing * sig(x))
  for got, sign in zip(grads, (1, -1, -1, 1)):
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, sign * d_pc, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("beta", [0.1, 3.0])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.25])
def test_dpo_policy_equal_to_reference_is_log2(beta, label_smoothing):
  chosen, rejected = jnp.array([-12.5, -300.0]), jnp.array([-40.0, -1.0])
  loss = preference.dpo(chosen, rejected, chosen, rejected, beta=beta, label_smoothing=label_smoothing)
  np.testing.assert_allclose(loss, [np.log(2.0)] * 2, rtol=1e-6)


def test_dpo_beta_applied_once():
  # logits = (−1 − −3) − (−5 − −6) = 1, so the loss is log(1 + e^{-beta}).
  loss = preference.dpo(jnp.array([-1.0]), jnp.array([-5.0]), jnp.array([-3.0]), jnp.array([-6.0]), beta=2.0)
  np.testing.assert_allclose(loss, [np.log1p(np.exp(-2.0))], rtol=1e-6)


def test_dpo_rewards():
  rewards = preference.dpo_rewards(jnp.array([-10.0, -3.0]), jnp.array([-12.0, -1.0]), beta=0.5)
  np.testing.assert_allclose(rewards, [1.0, -1.0])


@pytest.mark.parametrize("label_smoothing", [-0.1, 0.5, 0.7])
def test_dpo_rejects_label_smoothing(label_smoothing):
  x = jnp.zeros(2)
  with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 0.5\)"):
    preference.dpo(x, x, x, x, beta=0.1, label_smoothing=label_smoothing)

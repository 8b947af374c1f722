"""Tests for dp_sinkhorn_tf.privacy.lattice: the exact mechanism γ·(R(clip(x)/γ) + Z), its
parameters, its DPQuery, and the numbers behind the accounting argument."""

import math

import dp_accounting
import numpy as np
import pytest
import tensorflow as tf
from scipy import special

from dp_sinkhorn_tf.privacy import discrete_gaussian as dg
from dp_sinkhorn_tf.privacy import lattice

SEED = tf.constant([2024, 12], tf.int64)
# (C, σ, N): the digits demo, the Fashion-MNIST CPU flagfile, the paper's MNIST configs, and
# CIFAR-10 / CelebA at 32×32×3 (launch/*.flags: n × image entries).
SHIPPED = [(0.5, 1.0, 8 * 64), (0.5, 0.449, 16 * 784), (0.5, 0.9, 50 * 784),
           (0.5, 0.9, 50 * 3072), (0.5, 0.9, 40 * 3072)]


@pytest.mark.parametrize("clip, sigma, entries", SHIPPED)
def test_parameters_at_the_shipped_configs(clip, sigma, entries):
  p = lattice.lattice_params(clip, sigma, entries)
  assert p.gamma == 2.0**p.log2_gamma
  # Every released integer |r_i + Z_i| ≤ ⌈B⌉ + m fits float32's exact integers.
  assert math.ceil(p.norm_bound) + p.max_abs < 2**24
  assert p.max_abs >= dg.MIN_STDS_KEPT * p.scale.scale
  # σ_eff ≥ σ, and the lattice costs < 10⁻⁴ of the noise (the release is never below 2σC).
  assert sigma <= p.effective_noise_multiplier < sigma * (1 + 1e-4)
  assert 0 < p.inflation < 1e-4
  assert p.noise_stddev >= 2 * sigma * clip
  # γ is the smallest such power of two: half of it would not fit.
  with pytest.raises(AssertionError):
    c = clip / (p.gamma / 2)
    bound = math.sqrt(lattice._rounding_bound_sq(c, entries))
    assert math.ceil(bound) + dg.MIN_STDS_KEPT * 2 * sigma * bound < 2**24


def test_parameters_refuse_bad_input():
  for bad in [(0.0, 1.0, 4), (math.nan, 1.0, 4), (1.0, 0.0, 4), (1.0, -1.0, 4),
              (1.0, math.nan, 4), (math.inf, 1.0, 4), (1.0, 1.0, 0)]:
    with pytest.raises(ValueError):
      lattice.lattice_params(*bad)


def test_rounding_bound_holds_for_adversarial_blocks():
  """Every coordinate at x.5 on the C-sphere: the worst case for the rounding's norm."""
  n = 4096
  c = 1000.0
  y = np.full([n], 0.5) + np.arange(n) % 3
  y *= c / np.linalg.norm(y)
  bound_sq = lattice._rounding_bound_sq(c, n)
  for i in range(5):
    r = lattice.round_to_lattice(tf.constant(y), bound_sq, tf.constant([i, 1], tf.int64))
    r = r.numpy()
    assert r.dtype == np.int64 and (r * r).sum() <= bound_sq
    assert np.all((r == np.floor(y)) | (r == np.floor(y) + 1))
  # A bound the rounding cannot meet: the fallback still meets it (toward zero, or zero).
  tight = int(np.floor((c * (1 - 2**-9))**2))
  r = lattice.round_to_lattice(tf.constant(y), tight, SEED).numpy()
  assert (r * r).sum() <= tight
  r = lattice.round_to_lattice(tf.constant(y), 10, SEED).numpy()
  assert (r * r).sum() <= 10


def test_neighbouring_blocks_move_the_rounded_block_by_at_most_delta():
  p = lattice.lattice_params(0.5, 1.0, 512)
  rng = np.random.default_rng(0)
  for _ in range(5):
    a, b = rng.normal(size=[2, 512])
    a *= (0.5 / p.gamma) / np.linalg.norm(a)
    b *= (0.5 / p.gamma) / np.linalg.norm(b)
    ra = lattice.round_to_lattice(tf.constant(a), p.norm_bound_sq, SEED).numpy()
    rb = lattice.round_to_lattice(tf.constant(b), p.norm_bound_sq, SEED + 1).numpy()
    assert np.linalg.norm((ra - rb).astype(np.float64)) <= p.sensitivity


def _release(x, clip=0.5, sigma=1.0, seed=SEED):
  query = lattice.DiscreteGaussianSumQuery(clip, sigma)
  state = query.make_global_state(seed)
  record = query.preprocess_record(query.derive_sample_params(state), x)
  sample = query.accumulate_preprocessed_record(query.initial_sample_state(x), record)
  released, _, event = query.get_noised_result(sample, state)
  return released, query, event


def test_every_released_value_is_an_exact_multiple_of_gamma():
  x = tf.random.stateless_normal([8, 8, 8, 1], [1, 2]) * 3.0
  released, query, _ = _release(x)
  p = query.params_for(512)
  k = released.numpy().astype(np.float64) / p.gamma
  assert released.dtype == tf.float32
  np.testing.assert_array_equal(k, np.round(k))
  assert np.abs(k).max() < 2**24
  # float32 holds γ·k exactly: back to integers without loss.
  np.testing.assert_array_equal((k * p.gamma).astype(np.float32), released.numpy())


def test_determinism_and_fresh_noise_per_seed():
  x = tf.random.stateless_normal([4, 8, 8, 1], [3, 4])
  a, _, _ = _release(x, seed=tf.constant([5, 9], tf.int64))
  b, _, _ = _release(x, seed=tf.constant([5, 9], tf.int64))
  c, _, _ = _release(x, seed=tf.constant([5, 10], tf.int64))
  np.testing.assert_array_equal(a.numpy(), b.numpy())
  assert not np.array_equal(a.numpy(), c.numpy())


def test_zero_block_is_pure_noise_with_the_stated_scale():
  x = tf.zeros([64, 8, 8, 1])
  released, query, _ = _release(x, clip=0.5, sigma=1.0)
  p = query.params_for(64 * 64)
  v = released.numpy().ravel().astype(np.float64)
  assert abs(v.mean()) < 5 * p.noise_stddev / math.sqrt(v.size)
  assert abs(v.std() / p.noise_stddev - 1) < 5 / math.sqrt(2 * v.size)


def test_huge_and_non_finite_blocks_are_clipped_then_released():
  x = np.full([2, 4, 4, 1], 1e30, np.float32)
  x[0, 0, 0, 0] = np.nan
  x[1, 0, 0, 0] = -np.inf
  released, query, _ = _release(tf.constant(x), sigma=1e-6)  # nearly noiseless
  p = query.params_for(32)
  expected = np.full(32, 1.0)
  expected[[0, 16]] = 0.0
  expected *= 0.5 / np.linalg.norm(expected)
  np.testing.assert_allclose(released.numpy().ravel(), expected, atol=50 * p.noise_stddev + 2 * p.gamma)


def test_query_event_structure_and_missing_seed():
  x = [tf.ones([3, 2]), tf.zeros([5])]
  query = lattice.DiscreteGaussianSumQuery(1.0, 0.8)
  released, _, event = _release(x, clip=1.0, sigma=0.8)
  assert [t.shape.as_list() for t in released] == [[3, 2], [5]]
  assert isinstance(event, dp_accounting.GaussianDpEvent)
  assert event.noise_multiplier == query.params_for(11).effective_noise_multiplier >= 0.8
  state = query.initial_global_state()
  with pytest.raises(ValueError, match="seed"):
    query.get_noised_result(query.initial_sample_state(x), state)


def test_tf_privacys_generic_dp_optimizer_runs_the_query_with_keyed_noise():
  from tensorflow_privacy.privacy.optimizers import dp_optimizer_keras
  step = {"t": tf.constant(0, tf.int64)}
  query = lattice.DiscreteGaussianSumQuery(
      1.0, 0.5, seed=lambda: tf.stack([tf.constant(77, tf.int64), step["t"]]))
  cls = dp_optimizer_keras.make_keras_generic_optimizer_class(tf.keras.optimizers.legacy.SGD)

  def run():
    w = tf.Variable([1.0, -2.0, 3.0])
    opt = cls(dp_sum_query=query, num_microbatches=1, learning_rate=0.1)

    @tf.function
    def train(t):
      step["t"] = t
      loss = tf.reshape(tf.reduce_sum(w * w), [1])
      grads = opt.get_gradients(loss, [w])
      opt.apply_gradients(zip(grads, [w]))
      return grads[0]

    return [train(tf.constant(t, tf.int64)).numpy() for t in range(3)], w.numpy()

  (g1, w1), (g2, w2) = run(), run()
  np.testing.assert_array_equal(g1[2], g2[2])
  np.testing.assert_array_equal(w1, w2)          # keyed: the same noise again
  p = query.params_for(3)
  for g in g1:
    k = g.astype(np.float64) / p.gamma
    np.testing.assert_array_equal(k, np.round(k))
  assert not np.array_equal(g1[0], g1[1])        # another step, other noise


# ---- the accounting argument (module docstring (a)–(d)) ----------------------------------

def _log_pmf(s2, y, shift=0):
  return -(y - shift)**2 / (2.0 * s2) - math.log(dg.theta(s2))


def _rdp_pair(log_p, log_q, alpha):
  """D_α(P‖Q) = log Σ p^α q^{1−α} / (α − 1) from log-pmfs."""
  return special.logsumexp(alpha * log_p + (1 - alpha) * log_q) / (alpha - 1)


def _gaussian_sampled_rdp(q, sigma, alpha):
  """Mironov et al. 2019's A_α for integer α: the continuous sampled Gaussian's RDP."""
  k = np.arange(alpha + 1)
  log_terms = (special.gammaln(alpha + 1) - special.gammaln(k + 1) - special.gammaln(alpha - k + 1)
               + (alpha - k) * math.log1p(-q) + k * math.log(q) + (k * k - k) / (2 * sigma**2))
  return special.logsumexp(log_terms) / (alpha - 1)


@pytest.mark.parametrize("s2, shift", [(4, 1), (9, 2), (25, 3), (30, 7)])
def test_sampled_discrete_gaussian_rdp_is_the_continuous_ones(s2, shift):
  """1-D, integer shift: the remove direction D_α(μ‖μ₀) equals the continuous sampled
  Gaussian's (docstring (a), (c)); the add direction D_α(μ₀‖μ) is below it (docstring (d),
  checked here numerically); both as dp_accounting computes them."""
  sigma = math.sqrt(s2) / shift
  top = int(45 * math.sqrt(s2)) + shift
  y = np.arange(-top, top + 1).astype(np.float64)
  log_p0 = _log_pmf(s2, y)
  log_p1 = _log_pmf(s2, y, shift)
  for q in [0.01, 0.1, 0.5]:
    log_mix = np.logaddexp(math.log1p(-q) + log_p0, math.log(q) + log_p1)
    for alpha in [2, 3, 5, 8, 16, 32]:
      gauss = _gaussian_sampled_rdp(q, sigma, alpha)
      remove = _rdp_pair(log_mix, log_p0, alpha)
      add = _rdp_pair(log_p0, log_mix, alpha)
      assert remove == pytest.approx(gauss, rel=1e-9, abs=1e-12)
      assert add <= remove * (1 + 1e-9) + 1e-15
  acc = dp_accounting.rdp.RdpAccountant(orders=[2.0, 8.0, 32.0])
  acc.compose(dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(sigma)))
  ours = [_gaussian_sampled_rdp(0.1, sigma, a) for a in (2, 8, 32)]
  np.testing.assert_allclose(acc._rdp, ours, rtol=1e-6)  # pylint: disable=protected-access

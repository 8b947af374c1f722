"""Tests for dp_sinkhorn_tf.privacy.mean_embedding: the random-feature record embedding, its
sensitivity on neighbouring data sets, and the one lattice release of the class sums."""

import math

import dp_accounting
import numpy as np
import pytest
import tensorflow as tf

from dp_sinkhorn_tf.privacy import keys
from dp_sinkhorn_tf.privacy import mean_embedding as me

D, F, K, B_COUNT = 12, 32, 3, 0.1   # input dim, frequencies, classes, count weight
W = me.fourier_frequencies(D, F, length_scale=2.0, seed=0)


def _data(n, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.uniform(-1, 1, (n, D)).astype(np.float32),
          rng.integers(0, K, n).astype(np.int32))


def _seed(words=(5, 7)):
  return keys.step_seed(keys.PrivacyKey(words), 0, keys.STREAM_MEAN_EMBEDDING)


def test_features_have_unit_norm():
  x, _ = _data(50)
  phi = me.fourier_features(tf.constant(x, tf.float64), W).numpy()
  assert phi.shape == (50, 2 * F)
  # TF's float64 cos/sin are accurate to ~2e-8 (Eigen's packet math), not to float64's ulp.
  np.testing.assert_allclose(np.linalg.norm(phi, axis=1), 1.0, rtol=0, atol=1e-7)


@pytest.mark.parametrize("value", [0.0, 1.0, -1.0, 1e30, -3e38, math.nan, math.inf, -math.inf])
def test_record_embedding_norm_at_most_one(value):
  x, _ = _data(4)
  x[1, :] = value        # a whole record of it
  x[2, 3] = value        # one pixel of it
  e = me.record_embeddings(tf.constant(x), W, B_COUNT).numpy()
  assert e.dtype == np.float64 and e.shape == (4, 2 * F + 1)
  norms = np.linalg.norm(e, axis=1)
  assert np.all(np.isfinite(e)) and np.all(norms <= 1.0)
  # Finite records are not shrunk: the norm is 1 to cos/sin accuracy, the count entry b.
  np.testing.assert_allclose(norms, 1.0, rtol=0, atol=1e-7)
  np.testing.assert_allclose(e[:, -1], B_COUNT)


def test_sensitivity_on_neighbouring_sets_is_one_and_tight():
  x, y = _data(40)
  s_full = me.embedding_sum(x, y, W, K, B_COUNT)
  worst = 0.0
  for i in range(len(x)):     # remove record i (equivalently: add it to the other set)
    keep = np.arange(len(x)) != i
    diff = np.linalg.norm(s_full - me.embedding_sum(x[keep], y[keep], W, K, B_COUNT))
    assert diff <= 1.0 + 1e-12
    worst = max(worst, diff)
  assert worst > 1.0 - 1e-7   # tight: every finite record moves S by exactly 1


def test_rff_approximates_the_gaussian_kernel():
  d, f, ell = 5, 20000, 1.5
  w = me.fourier_frequencies(d, f, ell, seed=3)
  rng = np.random.default_rng(1)
  x = rng.normal(size=(6, d)) * 0.8
  phi = me.fourier_features(tf.constant(x), w).numpy()
  approx = phi @ phi.T
  sq = ((x[:, None, :] - x[None, :, :])**2).sum(-1)
  exact = np.exp(-sq / (2 * ell**2))
  # Each entry is a mean of F bounded terms of variance ≤ 1/2: std ≤ 0.005 at F = 2·10⁴.
  np.testing.assert_allclose(approx, exact, atol=0.03)
  assert np.abs(exact - np.eye(6)).max() > 0.1   # the test would see a wrong ℓ


def test_params_and_event_calibrate_add_remove_sensitivity():
  params = me.release_params(0.7, 2 * F + 1)
  sigma_eff = me.effective_noise_multiplier(params)
  # s ≥ σ·B (not 2σB: one rounded record, norm ≤ B, is the sensitivity), within 1e-3.
  assert 0.7 <= sigma_eff < 0.7 * (1 + 1e-3)
  assert params.noise_stddev >= 0.7 * params.norm_bound * params.gamma
  assert isinstance(me.dp_event(params), dp_accounting.GaussianDpEvent)
  assert me.dp_event(params).noise_multiplier == sigma_eff
  for bad in (0.0, -1.0, math.nan, math.inf):
    with pytest.raises(ValueError):
      me.release_params(bad, 2 * F + 1)


def test_release_is_on_the_lattice_and_deterministic_under_a_key():
  x, y = _data(30)
  params = me.release_params(0.5, 2 * F + 1)
  a = me.release(x, y, W, K, B_COUNT, params, _seed())
  b = me.release(x, y, W, K, B_COUNT, params, _seed())
  c = me.release(x, y, W, K, B_COUNT, params, _seed((5, 8)))
  assert a.shape == (K, 2 * F + 1) and a.dtype == np.float64
  k = a / params.gamma
  np.testing.assert_array_equal(k, np.round(k))          # exact multiples of γ
  np.testing.assert_array_equal(a, b)                    # same key: same release
  truth = me.embedding_sum(x, y, W, K, B_COUNT)
  na, nc = (a - truth).ravel(), (c - truth).ravel()
  assert np.abs(na - nc).min() > 0 or not np.array_equal(na, nc)
  # Independent keys: the two noise draws are uncorrelated (|r| < 4/√n w.h.p.), each of
  # std s·γ ≈ σ.
  assert abs(np.corrcoef(na, nc)[0, 1]) < 4 / math.sqrt(na.size)
  for noise in (na, nc):
    assert 0.5 * 0.8 < noise.std() < 0.5 * 1.25


def test_release_difference_on_neighbours_is_one_rounded_record():
  """Same key, the last record removed: every other record's rounding and the noise are the
  same, so the releases differ by γ·r_last with ‖r_last‖ ≤ B."""
  x, y = _data(25)
  params = me.release_params(0.5, 2 * F + 1)
  full = me.release(x, y, W, K, B_COUNT, params, _seed())
  fewer = me.release(x[:-1], y[:-1], W, K, B_COUNT, params, _seed())
  diff = full - fewer
  assert np.count_nonzero(np.abs(diff).sum(1)) == 1 and np.abs(diff[y[-1]]).sum() > 0
  assert np.linalg.norm(diff) <= params.norm_bound * params.gamma
  assert np.linalg.norm(diff) > 1.0 - 1e-3


def test_empty_set_releases_noise_and_uniform_proportions():
  params = me.release_params(0.5, 2 * F + 1)
  s = me.release(np.zeros((0, D), np.float32), np.zeros([0], np.int32), W, K, B_COUNT, params,
                 _seed())
  assert 0.4 < s.std() < 0.625
  # Tiny noisy counts go negative for some class half the time; the proportions stay valid.
  emb = me.class_embeddings(np.concatenate([s[:, :-1], -np.ones([K, 1])], 1), B_COUNT)
  np.testing.assert_allclose(emb.proportions, 1.0 / K)


def test_bad_labels_and_count_weight_are_refused():
  x, y = _data(5)
  params = me.release_params(0.5, 2 * F + 1)
  with pytest.raises(ValueError):
    me.release(x, np.full(5, K, np.int32), W, K, B_COUNT, params, _seed())
  with pytest.raises(ValueError):
    me.release(x, y, W, K, B_COUNT, me.release_params(0.5, 2 * F + 3), _seed())
  for bad in (0.0, 1.0, -0.1):
    with pytest.raises(ValueError):
      me.record_embeddings(tf.constant(x), W, bad)


def test_class_embeddings_recover_means_and_proportions_at_low_noise():
  x, y = _data(3000, seed=2)
  params = me.release_params(0.5, 2 * F + 1)
  emb = me.class_embeddings(me.release(x, y, W, K, B_COUNT, params, _seed()), B_COUNT)
  counts = np.bincount(y, minlength=K)
  # ñ_c has noise std σ/b = 5; μ̃_c's per entry is σ/(a·n_c) ≈ 5e-4.
  np.testing.assert_allclose(emb.counts, counts, atol=25)
  np.testing.assert_allclose(emb.proportions, counts / counts.sum(), atol=0.01)
  assert emb.proportions.sum() == pytest.approx(1.0)
  phi = me.fourier_features(tf.constant(x, tf.float64), W).numpy()
  for c in range(K):
    np.testing.assert_allclose(emb.means[c], phi[y == c].mean(0), atol=5e-3)

"""Tests for dp_sinkhorn_tf.privacy.class_means: the pooled record embedding, its
sensitivity on neighbouring data sets, the one lattice release and the central images."""

import math

import numpy as np
import pytest
import tensorflow as tf

from dp_sinkhorn_tf.privacy import class_means as cm
from dp_sinkhorn_tf.privacy import keys
from dp_sinkhorn_tf.privacy import mean_embedding as me

SHAPE, R, K, B_COUNT = (8, 8, 1), 4, 3, 0.1   # image shape, resolution, classes, count weight
ENTRIES = R * R + 1


def _data(n, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.uniform(-1, 1, (n,) + SHAPE).astype(np.float32),
          rng.integers(0, K, n).astype(np.int32))


def _seed(words=(5, 7)):
  return keys.step_seed(keys.PrivacyKey(words), 0, keys.STREAM_WARM_START)


def _release(x, y, params, seed=None):
  chunks = (x[s:s + me.CHUNK] for s in range(0, len(x), me.CHUNK))
  return cm.release(chunks, y, SHAPE, K, R, B_COUNT, params, _seed() if seed is None else seed)


def test_pooling_is_the_block_mean_scaled_to_unit_norm():
  # A 8×8 image whose top-left 2×2 block is white (+1) and the rest black (−1): u is 1 on
  # that block, 0 elsewhere, so pool_4 has 1 in cell (0, 0) and 0 elsewhere; / (r·√C) = 1/4.
  x = -np.ones((1,) + SHAPE)
  x[0, :2, :2, 0] = 1.0
  f = cm.pooled_features(tf.constant(x.reshape(1, -1)), SHAPE, R).numpy()
  expected = np.zeros(R * R)
  expected[0] = 0.25
  np.testing.assert_allclose(f[0], expected)


@pytest.mark.parametrize("value", [1.0, -1.0, 0.0, 5.0, 1e30, -3e38, math.nan, math.inf])
def test_record_embedding_norm_at_most_one(value):
  x, _ = _data(3)
  x[1] = value           # a whole record of it
  x[2, 0, 0, 0] = value  # one pixel of it
  e = cm.record_embeddings(tf.constant(x.reshape(3, -1)), SHAPE, R, B_COUNT).numpy()
  assert e.dtype == np.float64 and e.shape == (3, ENTRIES)
  assert np.all(np.isfinite(e)) and np.all(np.linalg.norm(e, axis=1) <= 1.0 + 1e-15)
  np.testing.assert_allclose(e[0, -1], B_COUNT)   # an in-range record is not shrunk
  if value in (1.0, 5.0, 1e30):
    # All white (or clipped from beyond): ‖f‖ ≥ 1, so ‖f′‖ = 1 (exactly √(a² + b²) at 1).
    assert np.linalg.norm(e[1]) == pytest.approx(1.0, abs=1e-12)


def test_sensitivity_on_neighbouring_sets_is_at_most_one_and_tight():
  x, y = _data(30)
  x[7] = 1.0       # an all-white record: the worst case of (3)
  full = cm.class_sums(x, y, K, R, B_COUNT)
  # Remove record i (equivalently: add it to the other set), for every i.
  without = [np.arange(len(x)) != i for i in range(len(x))]
  diffs = np.array([np.linalg.norm(full - cm.class_sums(x[k], y[k], K, R, B_COUNT))
                    for k in without])
  assert np.all(diffs <= 1.0 + 1e-12)
  assert diffs[7] == pytest.approx(1.0, abs=1e-12)
  assert np.all(diffs[np.arange(len(x)) != 7] < 1.0)   # grey records move S by less


def test_release_is_on_the_lattice_and_deterministic_under_a_key():
  x, y = _data(40)
  params = me.release_params(0.5, ENTRIES)
  a, b = _release(x, y, params), _release(x, y, params)
  c = _release(x, y, params, _seed((5, 8)))
  assert a.shape == (K, ENTRIES) and a.dtype == np.float64
  np.testing.assert_array_equal(a / params.gamma, np.round(a / params.gamma))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  noise = (a - cm.class_sums(x, y, K, R, B_COUNT)).ravel()
  assert 0.5 * 0.7 < noise.std() < 0.5 * 1.4   # std s·γ ≈ σ (51 entries)


def test_release_difference_on_neighbours_is_one_rounded_record():
  x, y = _data(25)
  params = me.release_params(0.5, ENTRIES)
  diff = _release(x, y, params) - _release(x[:-1], y[:-1], params)
  assert np.count_nonzero(np.abs(diff).sum(1)) == 1 and np.abs(diff[y[-1]]).sum() > 0
  assert np.linalg.norm(diff) <= params.norm_bound * params.gamma


def test_chunking_does_not_change_the_release():
  """Records are keyed by their index, not by their chunk."""
  x, y = _data(30)
  params = me.release_params(0.5, ENTRIES)
  whole = _release(x, y, params)
  parts = cm.release([x[:7], x[7:19], x[19:]], y, SHAPE, K, R, B_COUNT, params, _seed())
  np.testing.assert_array_equal(whole, parts)


def test_central_images_recover_class_means_at_low_noise():
  x, y = _data(3000, seed=2)
  params = me.release_params(0.5, ENTRIES)
  out = cm.central_images(_release(x, y, params), SHAPE, R, B_COUNT)
  assert out.images.shape == (K, R, R, 1) and out.images.dtype == np.float32
  assert out.images.min() >= -1 and out.images.max() <= 1
  counts = np.bincount(y, minlength=K)
  np.testing.assert_allclose(out.counts, counts, atol=25)        # noise std σ/b = 5
  np.testing.assert_allclose(out.proportions, counts / counts.sum(), atol=0.01)
  for c in range(K):
    truth = x[y == c].reshape(-1, R, 2, R, 2, 1).mean(axis=(0, 2, 4))
    # Error std in x: 2·σ·r/(a·n_c) ≈ 0.004 from the feature noise, 2·u·σ/(b·n_c) ≈ 0.005
    # from the noisy count (u ≈ ½): ≈ 0.0065 together; 0.04 is 6 std over 48 pixels.
    np.testing.assert_allclose(out.images[c], truth, atol=0.04)
  assert np.abs(out.images[0] - out.images[1]).max() < 0.1  # uniform data: similar classes


def test_empty_set_gives_valid_images_and_uniform_proportions():
  params = me.release_params(0.5, ENTRIES)
  s = cm.release([], np.zeros([0], np.int32), SHAPE, K, R, B_COUNT, params, _seed())
  assert 0.3 < s.std() < 0.75
  out = cm.central_images(np.concatenate([s[:, :-1], -np.ones([K, 1])], 1), SHAPE, R, B_COUNT)
  np.testing.assert_allclose(out.proportions, 1.0 / K)
  assert np.all(np.abs(out.images) <= 1)


def test_bad_resolution_and_labels_are_refused():
  x, y = _data(5)
  params = me.release_params(0.5, ENTRIES)
  for bad in (0, 3, 16):
    with pytest.raises(ValueError, match="resolution"):
      cm.check_resolution(SHAPE, bad)
  with pytest.raises(ValueError):
    cm.release([x], np.full(5, K, np.int32), SHAPE, K, R, B_COUNT, params, _seed())
  with pytest.raises(ValueError):
    cm.release([x], y, SHAPE, K, R, B_COUNT, me.release_params(0.5, ENTRIES + 1), _seed())
  with pytest.raises(ValueError):
    cm.release([x], y[:4], SHAPE, K, R, B_COUNT, params, _seed())

"""Tests for dp_sinkhorn_tf.privacy.gaussian.sampling."""

import numpy as np
import pytest
import tensorflow as tf

from dp_sinkhorn_tf.privacy import accounting, sampling


def _sizes(num_steps, n, q, seed=0):
  fn = tf.function(lambda s: tf.shape(sampling.poisson_sample_indices(s, n, q))[0])
  return np.array([int(fn(tf.constant([seed, step], tf.int64))) for step in range(num_steps)])


def test_batch_size_mean_and_variance_match_binomial():
  # K ~ Binomial(N=1000, q=0.05): E K = 50, Var K = 47.5. Over S = 1500 steps the sample
  # mean has std √(47.5/1500) = 0.178; we allow 4.4 std (0.78): two-sided false-alarm
  # ≈ 1e-5 under the normal approximation. The sample variance has std ≈ 47.5·√(2/1499)
  # = 1.73; we allow 4.4 std (7.6) plus 10 % slack for the binomial's excess kurtosis.
  sizes = _sizes(1500, 1000, 0.05)
  assert abs(sizes.mean() - 50.0) <= 0.78
  assert abs(sizes.var(ddof=1) - 47.5) <= 7.6 * 1.1


def test_indices_are_distinct_sorted_and_in_range():
  idx = sampling.poisson_sample_indices(tf.constant([3, 4], tf.int64), 500, 0.3).numpy()
  assert len(idx) > 0
  assert np.all(np.diff(idx) > 0)
  assert idx.min() >= 0 and idx.max() < 500


def test_each_record_has_inclusion_probability_q():
  # Record 7 over 2000 steps at q = 0.2: count ~ Bin(2000, 0.2), mean 400, std 17.9;
  # |count − 400| ≤ 80 (4.5 std) fails with probability < 1e-5.
  fn = tf.function(lambda s: tf.reduce_any(
      tf.equal(sampling.poisson_sample_indices(s, 50, 0.2), 7)))
  count = sum(bool(fn(tf.constant([1, step], tf.int64))) for step in range(2000))
  assert abs(count - 400) <= 80


def test_reproducible_by_seed_and_step():
  a = sampling.poisson_sample_indices(tf.constant([1, 9], tf.int64), 1000, 0.1).numpy()
  b = sampling.poisson_sample_indices(tf.constant([1, 9], tf.int64), 1000, 0.1).numpy()
  c = sampling.poisson_sample_indices(tf.constant([2, 9], tf.int64), 1000, 0.1).numpy()
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_q_one_takes_everything():
  idx = sampling.poisson_sample_indices(tf.constant([0, 0], tf.int64), 37, 1.0).numpy()
  np.testing.assert_array_equal(idx, np.arange(37))


def test_empty_batches_occur_and_are_returned():
  # N = 10, q = 0.05: P(K = 0) = 0.95^10 = 0.60, so empty batches are common.
  sizes = _sizes(50, 10, 0.05)
  assert (sizes == 0).sum() > 10


@pytest.mark.parametrize("n,q", [(10, 0.0), (10, 1.5), (-1, 0.5)])
def test_bad_arguments(n, q):
  with pytest.raises(ValueError):
    sampling.poisson_sample_indices(tf.constant([0, 0], tf.int64), n, q)


def test_buckets_and_padding_never_drop_records():
  assert [sampling.bucket_size(k) for k in (0, 1, 8, 9, 50, 64, 65)] == [8, 8, 8, 16, 64, 64,
                                                                         128]
  idx = tf.constant([4, 7, 9], tf.int32)
  padded, weights = sampling.pad_batch(idx, sampling.bucket_size(3))
  np.testing.assert_array_equal(padded.numpy(), [4, 7, 9, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(weights.numpy(), [1, 1, 1, 0, 0, 0, 0, 0])
  with pytest.raises(tf.errors.InvalidArgumentError):
    sampling.pad_batch(idx, 2)


def test_tf_data_source_matches_direct_calls():
  def seed_fn(step):
    return tf.stack([tf.constant(5, tf.int64), step])

  ds = sampling.poisson_batches(200, 0.1, seed_fn, start_step=3).take(2)
  for step, idx in ds:
    direct = sampling.poisson_sample_indices(seed_fn(step), 200, 0.1)
    np.testing.assert_array_equal(idx.numpy(), direct.numpy())


def test_inclusion_is_a_float64_draw_below_q_on_the_2_to_minus_52_grid():
  # The rule is "u < q" for u = stateless_uniform(float64) of the same seed; those u are
  # multiples of 2⁻⁵² (52 mantissa bits), so P(u < q) = ⌈q·2⁵²⌉/2⁵² exactly. A float32
  # draw (u on the 2⁻²³ grid) picks other records for the same seed and fails here.
  seed, n, q = tf.constant([11, 12], tf.int64), 20000, 0.3
  u = tf.random.stateless_uniform([n], seed, dtype=tf.float64).numpy()
  k = u * 2.0**52
  assert np.array_equal(k, np.floor(k)) and u.min() >= 0 and u.max() < 1
  idx = sampling.poisson_sample_indices(seed, n, q).numpy()
  np.testing.assert_array_equal(idx, np.flatnonzero(u < q))
  assert len(np.unique(np.floor(u * 2.0**23))) < len(np.unique(k))  # finer than float32


@pytest.mark.parametrize("q", [50 / 1438, 0.3, 1 / 3, 2.0**-10, 1.0])
def test_inclusion_probability_is_the_exact_rate_and_never_below_q(q):
  p = accounting.inclusion_probability(q)
  assert q <= p < q + 2.0**-52 + 1e-300
  assert (p * 2.0**52) == int(p * 2.0**52)  # on the draw grid
  if (q * 2.0**52).is_integer():  # q on the grid (e.g. 2⁻¹⁰, 1): exactly q
    assert p == q

"""Poisson sampling of the private set, as the accountant assumes it.

Every record i ∈ {0, …, N−1} joins a step's batch independently with probability q, so the
batch size is K ~ Binomial(N, q), and given K the batch is a uniform K-subset. This is the
sampling under which `accounting` analyses the subsampled Gaussian mechanism; fixed-size
shuffled batches would need a different (weaker) analysis.

Randomness is stateless and keyed by a [2] int64 seed (in training the run's secret key and
the step, `privacy_key.step_seed`; never the public --seed): the same step always draws the
same batch, under eager execution, tf.function and tf.data alike, and a resumed run
reproduces the batches of the steps it repeats. Cost: N uniform draws per step (≈1 ms per
million records on this CPU), no host round trip.

Exact rate. Record i is in iff u_i < q for u_i ~ stateless_uniform(float64). TF builds a
float64 uniform from 52 random mantissa bits, so u_i is uniform on {k/2⁵²}, and

  P(i in batch) = #{k : k/2⁵² < q} / 2⁵² = ⌈q·2⁵²⌉ / 2⁵²,

which is ≥ q and above it by less than 2⁻⁵². The planner hands the accountant this exact
rate (`accounting.inclusion_probability`), not B/N. (float32 draws gave ⌈q·2²³⌉/2²³, up
to 1.2e-7 above q: the demo's true ε was 10.0001 for a planned 10.)

An empty batch (K = 0, probability (1−q)^N) is a valid outcome and a normal step: callers
must not skip it (see `privacy`).
"""

import math

import tensorflow as tf


def _check(dataset_size: int, sample_rate: float) -> None:
  if dataset_size < 0:
    raise ValueError(f"dataset_size must be ≥ 0, got {dataset_size}")
  if not 0 < sample_rate <= 1:
    raise ValueError(f"sample_rate q must be in (0, 1], got {sample_rate}")


def poisson_sample_indices(seed, dataset_size: int, sample_rate: float) -> tf.Tensor:
  """Indices of one Poisson sample: each of range(N) kept independently with prob. q.

  Args:
    seed: [2] int32/int64 stateless seed.
    dataset_size: N.
    sample_rate: q ∈ (0, 1].

  Returns:
    int32 [K] sorted, distinct indices; K ~ Binomial(N, accounting.inclusion_probability(q)).
  """
  _check(dataset_size, sample_rate)
  draws = tf.random.stateless_uniform([dataset_size], seed, dtype=tf.float64)
  return tf.cast(tf.reshape(tf.where(draws < sample_rate), [-1]), tf.int32)


def bucket_size(k: int, min_bucket: int = 8) -> int:
  """The smallest power of two ≥ max(k, min_bucket).

  Padding a batch of K records to bucket_size(K) never drops a record and gives only
  O(log N) distinct shapes, so an XLA-compiled loss compiles a handful of times.
  """
  return max(min_bucket, 1 << max(0, math.ceil(math.log2(max(k, 1)))))


def pad_batch(indices: tf.Tensor, size: int):
  """Pads indices to `size` with index 0 and returns (padded [size], weights [size]).

  Weights are 1 on real entries and 0 on padding; size must be ≥ len(indices), so no
  sampled record is ever dropped.
  """
  k = tf.shape(indices)[0]
  tf.debugging.assert_less_equal(k, size, message="pad_batch: size smaller than the batch")
  padded = tf.pad(indices, [[0, size - k]])
  weights = tf.pad(tf.ones([k], tf.float32), [[0, size - k]])
  return padded, weights


def poisson_batches(dataset_size: int, sample_rate: float, seed_fn,
                    start_step: int = 0) -> tf.data.Dataset:
  """A tf.data source of (step, indices) for steps start_step, start_step + 1, …

  seed_fn(step) → [2] int64 seed of that step's batch (e.g. `privacy_key.step_seed`).
  """
  _check(dataset_size, sample_rate)

  def draw(step):
    return step, poisson_sample_indices(seed_fn(step), dataset_size, sample_rate)

  return tf.data.Dataset.range(start_step, 2**62).map(draw)

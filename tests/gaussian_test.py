"""Tests for dp_sinkhorn_tf.privacy.gaussian: one per guarantee and per edge-case row."""

import math

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from dp_sinkhorn_tf.privacy import gaussian, lattice
from dp_sinkhorn_tf.transport import costs, options, sinkhorn

SEED = tf.constant([5, 6], tf.int64)  # a stateless noise seed (in training: key and step)


def test_clip_hand_values():
  # ‖[-6, 8]‖ = 10 → scaled by 5/10 → [-3, 4]; ‖[3, 4]‖ = 5 ≤ 5 stays.
  clipped, norm = gaussian.clip_to_norm(tf.constant([-6.0, 8.0]), 5.0)
  np.testing.assert_allclose(clipped.numpy(), [-3.0, 4.0], rtol=1e-6)
  assert norm.numpy() == pytest.approx(10.0)
  same, _ = gaussian.clip_to_norm(tf.constant([3.0, 4.0]), 5.0)
  np.testing.assert_array_equal(same.numpy(), [3.0, 4.0])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=30), st.floats(1e-3, 1e3))
def test_clip_never_exceeds_the_bound(values, clip):
  clipped, _ = gaussian.clip_to_norm(tf.constant(values, tf.float64), clip)
  assert np.linalg.norm(clipped.numpy()) <= clip * (1 + 1e-12)


def test_whole_tensor_is_one_record():
  # Rows [3, 0] and [0, 4]: total norm 5, so clipping to 1 scales both by 1/5 (a per-row
  # clip would give [1, 0] and [0, 1]).
  m = gaussian.ImageGradientMechanism(l2_norm_clip=1.0, noise_multiplier=0.0)
  released, info = m.privatize(tf.constant([[3.0, 0.0], [0.0, 4.0]]), num_private=2,
                               noise_seed=SEED)
  np.testing.assert_allclose(released.numpy(), [[0.6, 0.0], [0.0, 0.8]], rtol=1e-6)
  assert info.clean_norm.numpy() == pytest.approx(5.0)


def _private_noise(std_multiplier: float, n: int = 20000, seed: int = 0):
  m = gaussian.ImageGradientMechanism(l2_norm_clip=0.5, noise_multiplier=1.3)
  released, _ = m.privatize(tf.zeros([n, 1]), num_private=n, noise_seed=[seed, 7])
  return released.numpy().ravel(), m.noise_stddev * std_multiplier


def test_noise_std_is_two_sigma_c_by_ks_test():
  # Zero gradient → released = noise. 2σC = 2·1.3·0.5 = 1.3. With 20,000 draws the KS test
  # accepts N(0, 1.3²) (p > 1e-3) and rejects the stds 1.3·2/3 and 1.3·3/2 (p < 1e-6).
  samples, true_std = _private_noise(1.0)
  assert true_std == pytest.approx(1.3)
  assert stats.kstest(samples, "norm", args=(0, true_std)).pvalue > 1e-3
  for factor in (2 / 3, 3 / 2):
    assert stats.kstest(samples, "norm", args=(0, true_std * factor)).pvalue < 1e-6


def test_public_rows_never_get_noise_private_rows_always_do():
  m = gaussian.ImageGradientMechanism(l2_norm_clip=1.0, noise_multiplier=5.0)
  grad = tf.constant([[0.1, 0.0], [0.0, 0.1], [0.3, 0.4], [0.0, 0.0]])
  released, _ = m.privatize(grad, num_private=2, noise_seed=SEED)
  # Public block [[0.3, 0.4], [0, 0]] has norm 0.5 ≤ 1: released exactly.
  np.testing.assert_array_equal(released.numpy()[2:], grad.numpy()[2:])
  assert np.all(released.numpy()[:2] != grad.numpy()[:2])


def test_public_clip_scales_only_the_public_rows():
  # Public block [[3, 4]] (norm 5) clipped to C′ = 0.5 → [0.3, 0.4]; the private block
  # [[0, 0]] still gets noise of std 2σC = 2·1·2 = 4, whatever C′ is.
  m = gaussian.ImageGradientMechanism(l2_norm_clip=2.0, noise_multiplier=1.0, public_clip=0.5)
  grad = tf.concat([tf.zeros([4000, 2]), tf.constant([[3.0, 4.0]])], axis=0)
  released, info = m.privatize(grad, num_private=4000, noise_seed=SEED)
  np.testing.assert_allclose(released.numpy()[4000:], [[0.3, 0.4]], rtol=1e-6)
  assert info.public_norm.numpy() == pytest.approx(5.0)
  assert np.std(released.numpy()[:4000]) == pytest.approx(4.0, rel=0.05)
  zero = gaussian.ImageGradientMechanism(l2_norm_clip=2.0, noise_multiplier=1.0, public_clip=0.0)
  np.testing.assert_array_equal(zero.privatize(grad, num_private=4000, noise_seed=SEED)[0].numpy()[4000:], 0.0)
  with pytest.raises(ValueError, match="public_clip"):
    gaussian.ImageGradientMechanism(1.0, 1.0, public_clip=-1.0)


def test_empty_batch_still_releases_pure_noise():
  # An empty Poisson sample makes the private rows' gradient exactly zero; the step must
  # still release N(0, (2σC)²) there (never skipped, never silent).
  m = gaussian.ImageGradientMechanism(l2_norm_clip=0.5, noise_multiplier=1.0)
  released, info = m.privatize(tf.zeros([500, 4]), num_private=400, noise_seed=SEED)
  private = released.numpy()[:400]
  assert info.clean_norm.numpy() == 0.0
  assert np.std(private) == pytest.approx(1.0, rel=0.05)  # 2σC = 1
  np.testing.assert_array_equal(released.numpy()[400:], 0.0)


def test_clip_zero_releases_zeros():
  m = gaussian.ImageGradientMechanism(l2_norm_clip=0.0, noise_multiplier=2.0)
  released, _ = m.privatize(tf.ones([4, 3]), num_private=2, noise_seed=SEED)
  np.testing.assert_array_equal(released.numpy(), 0.0)
  assert m.noise_stddev == 0.0


def test_non_private_mode_passes_gradient_unchanged():
  m = gaussian.ImageGradientMechanism(l2_norm_clip=math.inf, noise_multiplier=0.0)
  grad = tf.constant(np.random.default_rng(0).normal(size=(5, 3)) * 100, tf.float32)
  released, _ = m.privatize(grad, num_private=3, noise_seed=SEED)
  np.testing.assert_array_equal(released.numpy(), grad.numpy())
  assert not m.is_private


@pytest.mark.parametrize("clip,sigma,match", [(math.inf, 1.0, "infinite noise"),
                                              (-1.0, 1.0, "l2_norm_clip"),
                                              (1.0, -0.5, "noise_multiplier")])
def test_invalid_parameters_are_rejected(clip, sigma, match):
  with pytest.raises(ValueError, match=match):
    gaussian.ImageGradientMechanism(clip, sigma)


def test_non_finite_entries_are_zeroed_before_clipping():
  # [nan, 3, inf, 4] → [0, 3, 0, 4] (norm 5) → clip to 1 → [0, 0.6, 0, 0.8].
  m = gaussian.ImageGradientMechanism(l2_norm_clip=1.0, noise_multiplier=0.0)
  grad = tf.constant([[np.nan, 3.0], [np.inf, 4.0]])
  released, _ = m.privatize(grad, num_private=2, noise_seed=SEED)
  np.testing.assert_allclose(released.numpy(), [[0.0, 0.6], [0.0, 0.8]], rtol=1e-6)


def test_no_private_rows_means_no_noise():
  m = gaussian.ImageGradientMechanism(l2_norm_clip=10.0, noise_multiplier=3.0)
  grad = tf.constant([[1.0, 2.0]])
  released, _ = m.privatize(grad, num_private=0, noise_seed=SEED)
  np.testing.assert_array_equal(released.numpy(), grad.numpy())


def test_tf_function_without_retracing_for_varying_num_private():
  m = gaussian.ImageGradientMechanism(l2_norm_clip=1.0, noise_multiplier=1.0)
  fn = tf.function(m.privatize, input_signature=[tf.TensorSpec([8, 3]),
                                                 tf.TensorSpec([], tf.int32),
                                                 tf.TensorSpec([2], tf.int64)])
  for n in range(1, 8):
    released, _ = fn(tf.zeros([8, 3]), tf.constant(n), SEED)
    assert released.shape == (8, 3)
    np.testing.assert_array_equal(released.numpy()[n:], 0.0)  # public rows: 0 stays 0
  assert fn.experimental_get_tracing_count() == 1


# One compiled (loss, gradient) function with relaxed shapes: no retrace per example.
_LOSS_AND_GRAD = sinkhorn.loss_and_gradient_fn(
    costs.SquaredEuclidean(), sinkhorn.SinkhornConfig(epsilon=0.5, max_iterations=50),
    num_primary=5, dim=3, dtype=tf.float64)


def _clipped_private_gradient(fake, real, n, clip):
  _, grad, _ = _LOSS_AND_GRAD(tf.constant(fake), tf.constant(real), tf.ones([len(real)],
                                                                            tf.float64))
  clipped, _ = gaussian.clip_to_norm(grad[:n], clip)
  return clipped.numpy()


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10**6), st.integers(0, 6), st.floats(0.01, 10.0))
def test_sensitivity_of_add_remove_is_at_most_two_c(seed, m, clip):
  # Neighbouring private sets Y and Y ∪ {y′} (Y may be empty): the clipped private blocks
  # both have norm ≤ C, so they differ by ≤ 2C — the sensitivity the noise is scaled to.
  rng = np.random.default_rng(seed)
  n = 5
  fake = rng.normal(size=(n + options.num_extra(n, 0.4), 3)) * 3
  real = rng.normal(size=(m, 3)) * 3 if m else np.zeros((0, 3))
  neighbour = np.concatenate([real, rng.normal(size=(1, 3)) * 3])
  a = _clipped_private_gradient(fake, real, n, clip)
  b = _clipped_private_gradient(fake, neighbour, n, clip)
  assert np.linalg.norm(a - b) <= 2 * clip * (1 + 1e-9)


def test_blur_kernel_matches_its_formula():
  # s = 1: radius 3, k_i ∝ exp(−i²/2) for i = −3…3.
  k = gaussian.gaussian_kernel_1d(1.0).numpy()
  raw = np.exp(-np.arange(-3, 4) ** 2 / 2.0)
  np.testing.assert_allclose(k, raw / raw.sum(), rtol=1e-6)
  with pytest.raises(ValueError, match="sigma"):
    gaussian.gaussian_kernel_1d(0.0)


def test_blur_keeps_constants_and_scales_white_noise_by_the_kernel_norm():
  const = tf.fill([2, 8, 8, 3], 0.7)
  np.testing.assert_allclose(gaussian.blur_release(const, 1.0).numpy(), 0.7, rtol=1e-6)
  assert gaussian.blur_release(const, 0.0) is const
  # White noise of std 1 comes out with std ‖k‖₂ = Σ k_i² (= 0.2823 for s = 1), away from
  # the mirrored borders; 4·240²·3 samples give a relative error ≈ 0.2%.
  noise = tf.random.stateless_normal([4, 256, 256, 3], seed=[3, 4])
  blurred = gaussian.blur_release(noise, 1.0).numpy()[:, 8:-8, 8:-8]
  k = gaussian.gaussian_kernel_1d(1.0).numpy()
  assert blurred.std() == pytest.approx(np.sum(k**2), rel=0.02)


def test_blur_matches_a_direct_two_dimensional_convolution():
  from scipy import ndimage
  rng = np.random.default_rng(5)
  x = rng.normal(size=(2, 8, 8, 2)).astype(np.float32)
  k = gaussian.gaussian_kernel_1d(0.7).numpy()
  kernel2d = np.outer(k, k)
  expected = np.stack([np.stack([ndimage.convolve(x[b, :, :, c], kernel2d, mode="reflect")
                                 for c in range(2)], -1) for b in range(2)])
  np.testing.assert_allclose(gaussian.blur_release(tf.constant(x), 0.7).numpy(), expected,
                             rtol=1e-5, atol=1e-6)


def test_noise_is_a_function_of_its_seed_alone_never_of_the_global_rng():
  # The released noise of a step must not depend on a stateful RNG (whose position a
  # resumed process resets, and which --seed fixes): same seed → identical bits whatever
  # the global seed and however many draws came before; another seed → other noise.
  m = gaussian.ImageGradientMechanism(l2_norm_clip=0.5, noise_multiplier=1.0)
  grad = tf.zeros([6, 4])
  tf.random.set_seed(0)
  a, _ = m.privatize(grad, 6, noise_seed=SEED)
  tf.random.normal([100])
  tf.random.set_seed(123)
  b, _ = tf.function(m.privatize)(grad, 6, noise_seed=SEED)
  c, _ = m.privatize(grad, 6, noise_seed=tf.constant([5, 7], tf.int64))
  np.testing.assert_array_equal(a.numpy(), b.numpy())
  assert np.abs(a.numpy() - c.numpy()).min() > 0
  assert np.abs(a.numpy()).max() > 0


def test_noise_seed_is_required_whenever_noise_is_added():
  with pytest.raises(ValueError, match="noise_seed"):
    gaussian.ImageGradientMechanism(0.5, 1.0).privatize(tf.zeros([2, 2]), 2)
  # No noise, no seed needed: the non-private mode and σ = 0.
  gaussian.ImageGradientMechanism(math.inf, 0.0).privatize(tf.zeros([2, 2]), 2)
  gaussian.ImageGradientMechanism(0.5, 0.0).privatize(tf.zeros([2, 2]), 2)


@pytest.mark.parametrize("dtype", [tf.bfloat16, tf.float16, tf.float64])
def test_the_mechanism_refuses_anything_but_float32(dtype):
  # --precision lowers the generator only: a low-precision G would be clipped and noised on
  # a coarse lattice, which is not the Gaussian mechanism the accountant charges.
  mech = gaussian.ImageGradientMechanism(0.5, 1.0)
  with pytest.raises(TypeError, match="float32"):
    mech.privatize(tf.zeros([4, 3], dtype), 2, tf.constant([1, 2], tf.int64))


def test_parameter_gradients_are_clipped_as_one_and_get_two_sigma_c_noise():
  """param_grad's query (TF Privacy's DPQuery interface, `lattice`) on a nested record."""
  def release(grads, clip, sigma, seed=SEED):
    query = lattice.DiscreteGaussianSumQuery(clip, sigma)
    state = query.make_global_state(seed)
    record = query.preprocess_record(query.derive_sample_params(state), grads)
    sample = query.accumulate_preprocessed_record(query.initial_sample_state(grads), record)
    return query.get_noised_result(sample, state)[0], query

  # [−6, 8] and [0] clipped together to C = 5: total norm 10, so ×½ → [−3, 4], [0]
  # (σ = 1e-9: noise of one lattice step).
  grads = [tf.constant([-6.0, 8.0]), tf.constant([0.0])]
  clean, query = release(grads, 5.0, 1e-9)
  gamma = query.params_for(3).gamma
  np.testing.assert_allclose(clean[0].numpy(), [-3.0, 4.0], atol=20 * gamma)
  # σ = 1.3, C = 0.5 on a zero gradient: pure noise with std ≈ 2σC = 1.3 (KS as above).
  big = [tf.zeros([12000]), tf.zeros([8000])]
  released, query = release(big, 0.5, 1.3)
  std = query.params_for(20000).noise_stddev
  assert std == pytest.approx(1.3, rel=1e-4)
  samples = np.concatenate([r.numpy() for r in released])
  assert stats.kstest(samples, "norm", args=(0, std)).pvalue > 1e-3
  for factor in (2 / 3, 3 / 2):
    assert stats.kstest(samples, "norm", args=(0, std * factor)).pvalue < 1e-6
  again, _ = release(big, 0.5, 1.3)
  np.testing.assert_array_equal(again[1].numpy(), released[1].numpy())
  # Each variable gets its own draw, not a copy of the first one's.
  assert not np.array_equal(released[0].numpy()[:8000], released[1].numpy())


"""Tests for dp_sinkhorn_tf.audit: the bound's arithmetic, the step audit of the real
mechanism, and negative controls that must be flagged."""

import math

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from dp_sinkhorn_tf import audit, data, privacy, privacy_key, sinkhorn, trainer
from dp_sinkhorn_tf import config as config_lib

DELTA = 1e-5
TRIALS = 4000  # per side: 2000 choose the threshold, 2000 measure the error rates


def test_clopper_pearson_zero_errors_has_its_closed_form():
  # P(0 errors | rate p) = (1 − p)^n = α at the upper bound: p = 1 − α^(1/n).
  assert audit.clopper_pearson_upper(0, 2000, 0.025) == pytest.approx(1 - 0.025**(1 / 2000))
  assert audit.clopper_pearson_upper(5, 5, 0.025) == 1.0
  # Against the exact binomial tail: P(X ≤ 7 | n = 100, p⁺) = α.
  upper = audit.clopper_pearson_upper(7, 100, 0.05)
  assert stats.binom.cdf(7, 100, upper) == pytest.approx(0.05, rel=1e-6)


def test_gaussian_epsilon_solves_the_analytic_gaussian_delta():
  # Balle & Wang 2018: one Gaussian step with multiplier σ has
  # δ(ε) = Φ(1/(2σ) − εσ) − e^ε·Φ(−1/(2σ) − εσ).
  for sigma in (0.7, 1.0, 2.0):
    eps = audit.gaussian_epsilon(sigma, DELTA)
    delta = (stats.norm.cdf(0.5 / sigma - eps * sigma)
             - math.exp(eps) * stats.norm.cdf(-0.5 / sigma - eps * sigma))
    assert delta == pytest.approx(DELTA, rel=0.05)
  assert audit.gaussian_epsilon(0.0, DELTA) == math.inf


def test_bound_on_known_gaussians_is_below_the_truth_and_informative():
  # Scores N(0, 1) vs N(1, 1) are the optimal test of a Gaussian step with σ = 1
  # (true ε = 4.38 at δ = 1e-5): the bound must stay below it and clearly above 0.
  rng = np.random.default_rng(0)
  out, inn = rng.normal(0, 1, TRIALS), rng.normal(1, 1, TRIALS)
  eps, info = audit.epsilon_lower_bound(out, inn, DELTA)
  assert 0.3 < eps < audit.gaussian_epsilon(1.0, DELTA)
  assert info.trials_each == TRIALS // 2
  same, _ = audit.epsilon_lower_bound(rng.normal(0, 1, TRIALS), rng.normal(0, 1, TRIALS),
                                      DELTA)
  assert same < 0.3


# ---- the real mechanism on the digits -----------------------------------------------------

DIGITS = data.load_dataset("digits")


def _model(sigma=1.0, blur=0.0):
  cfg = config_lib.TrainConfig(
      batch_size=8, steps=None,
      model=config_lib.ModelConfig("dcgan", latent_dim=4, embed_dim=2, hidden=4,
                                   output="clip"),
      loss=config_lib.LossConfig(cost="l1l2", class_matching=True,
                                 solver=sinkhorn.SinkhornConfig(epsilon=0.5,
                                                                max_iterations=30)),
      privacy=config_lib.PrivacyConfig(noise_multiplier=sigma, target_epsilon=10.0,
                                       release_blur=blur))
  tf.keras.utils.set_random_seed(0)
  gen = trainer.make_generator(cfg, DIGITS.image_shape, 10, build=True)
  model = trainer.DPSinkhornModel(gen, DIGITS.images, DIGITS.labels, 10, cfg, sigma,
                                  8 / len(DIGITS.images))
  return model, cfg


@pytest.fixture(scope="module")
def setting():
  """Y: the empty batch (a valid Poisson sample; the strongest neighbour pair: the canary's
  gradient is not diluted by other records); the canary: an all-white image of the class
  generated most."""
  model, cfg = _model()
  images = np.zeros((0,) + DIGITS.image_shape, np.float32)
  labels = np.zeros([0], np.int64)
  _, _, fake_labels = audit.canary_gradients(model, images, labels, DIGITS.images[0], 0)
  n = cfg.num_primary
  canary_label = int(np.bincount(fake_labels.numpy()[:n], minlength=10).argmax())
  canary = np.ones(DIGITS.image_shape, np.float32)
  g_out, g_in, _ = audit.canary_gradients(model, images, labels, canary, canary_label)
  return model, cfg, g_out, g_in


def _releases(privatize, g_out, g_in, n):
  """release functions with a fresh secret key per trial, and the clean (σ=0) releases."""

  def make(grad):
    return lambda i: privatize(grad, privacy_key.step_seed(privacy_key.generate(), i, 2))

  return make(g_out), make(g_in)


def _real_release(model, n, blur):
  def release(grad, seed):
    out, _ = model.mechanism.privatize(grad, n, seed)
    return privacy.blur_release(out, blur).numpy()[:n]
  return release


def test_step_audit_of_the_real_mechanism_stays_below_the_certified_epsilon(setting):
  model, cfg, g_out, g_in = setting
  n = cfg.num_primary
  release = _real_release(model, n, 0.0)
  clean = privacy.ImageGradientMechanism(cfg.privacy.l2_norm_clip, 0.0)
  clean_out = clean.privatize(g_out, n)[0].numpy()[:n]
  clean_in = clean.privatize(g_in, n)[0].numpy()[:n]
  r_out, r_in = _releases(release, g_out, g_in, n)
  result = audit.step_audit(r_out, r_in, clean_out, clean_in, 1.0, 0.5, DELTA, TRIALS)
  assert not result.flagged
  # The attack is as strong as this canary allows: the clipped releases differ by
  # ‖u‖ ≤ 2C, i.e. a Gaussian step with multiplier σ·2C/‖u‖; the measured bound must stay
  # below that step's ε too (else the noise is smaller than claimed) and be informative.
  assert 0.3 * result.sensitivity < result.difference_norm <= result.sensitivity + 1e-6
  achievable = audit.gaussian_epsilon(1.0 * result.sensitivity / result.difference_norm,
                                      DELTA)
  assert 0.2 < result.epsilon_lower_bound < achievable <= result.certified_epsilon


# ---- negative controls: broken mechanisms must be flagged --------------------------------

def _audit(setting, release, certified=None, trials=TRIALS):
  model, cfg, g_out, g_in = setting
  n = cfg.num_primary
  clean = privacy.ImageGradientMechanism(math.inf, 0.0)
  clean_out = privacy.clip_to_norm(g_out[:n], 0.5)[0].numpy()
  clean_in = privacy.clip_to_norm(g_in[:n], 0.5)[0].numpy()
  del clean
  r_out, r_in = _releases(release, g_out, g_in, n)
  return audit.step_audit(r_out, r_in, clean_out, clean_in, 1.0, 0.5, DELTA, trials,
                          certified_epsilon=certified)


def test_control_no_noise_is_flagged(setting):
  _, cfg, _, _ = setting
  broken = privacy.ImageGradientMechanism(0.5, 0.0)
  n = cfg.num_primary
  assert _audit(setting, lambda g, s: broken.privatize(g, n, s)[0].numpy()[:n]).flagged


def test_control_clip_removed_is_flagged(setting):
  _, cfg, _, _ = setting
  n = cfg.num_primary

  def unclipped(grad, seed):  # noise for sensitivity 2C, but the gradient is not clipped
    g = tf.convert_to_tensor(grad)[:n]
    return (g + privacy.keyed_gaussian_noise(tf.shape(g), 2 * 1.0 * 0.5, seed)).numpy()

  assert _audit(setting, unclipped).flagged


def test_control_noise_on_half_the_rows_is_flagged(setting):
  _, cfg, _, _ = setting
  n = cfg.num_primary

  def half(grad, seed):
    clipped = privacy.clip_to_norm(tf.convert_to_tensor(grad)[:n], 0.5)[0]
    noise = privacy.keyed_gaussian_noise(tf.shape(clipped), 1.0, seed).numpy()
    noise[n // 2:] = 0.0
    return clipped.numpy() + noise

  assert _audit(setting, half).flagged


def test_control_noise_reused_across_two_steps_is_flagged(setting):
  # Two releases with the same noise: their difference is noise-free. Certified for two
  # independent steps: one Gaussian with multiplier σ/√2.
  _, cfg, g_out, _ = setting
  n = cfg.num_primary
  mech = privacy.ImageGradientMechanism(0.5, 2.0)  # σ = 2: two steps certify ε = 3.0
  other = tf.reverse(tf.convert_to_tensor(g_out), axis=[1])  # another step's gradient

  def reused(grad, seed):
    first = mech.privatize(other, n, seed)[0].numpy()[:n]
    second = mech.privatize(grad, n, seed)[0].numpy()[:n]
    return second - first + privacy.clip_to_norm(other[:n], 0.5)[0].numpy()

  assert _audit(setting, reused,
                certified=audit.gaussian_epsilon(2.0 / math.sqrt(2), DELTA)).flagged


def test_control_batches_known_to_the_attacker_is_flagged(setting):
  # The accountant charges a step at the subsampled rate q = 8/1438; an attacker who knows
  # the batch faces the unsubsampled Gaussian, which the real mechanism's audit exceeds.
  import dp_accounting
  model, cfg, _, _ = setting
  q = 8 / 1438
  acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
  acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(1.0)))
  subsampled = acc.get_epsilon(DELTA)
  result = _audit(setting, _real_release(model, cfg.num_primary, 0.0), certified=subsampled)
  assert result.flagged and subsampled < 0.2

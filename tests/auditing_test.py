"""Tests for dp_sinkhorn_tf.privacy.auditing: the bounds' arithmetic against closed forms and against
mechanisms of known ε (the real mechanism and the negative controls: audit_test)."""

import math

import numpy as np
import pytest
from scipy import stats

from dp_sinkhorn_tf.privacy import auditing

DELTA = 1e-5
TRIALS = 4000  # per side: 2000 choose the threshold, 2000 measure the error rates


def test_clopper_pearson_zero_errors_has_its_closed_form():
  # P(0 errors | rate p) = (1 − p)^n = α at the upper bound: p = 1 − α^(1/n).
  assert auditing.clopper_pearson_upper(0, 2000, 0.025) == pytest.approx(1 - 0.025**(1 / 2000))
  assert auditing.clopper_pearson_upper(5, 5, 0.025) == 1.0
  # Against the exact binomial tail: P(X ≤ 7 | n = 100, p⁺) = α.
  upper = auditing.clopper_pearson_upper(7, 100, 0.05)
  assert stats.binom.cdf(7, 100, upper) == pytest.approx(0.05, rel=1e-6)


def test_gaussian_epsilon_solves_the_analytic_gaussian_delta():
  # Balle & Wang 2018: one Gaussian step with multiplier σ has
  # δ(ε) = Φ(1/(2σ) − εσ) − e^ε·Φ(−1/(2σ) − εσ).
  for sigma in (0.7, 1.0, 2.0):
    eps = auditing.gaussian_epsilon(sigma, DELTA)
    delta = (stats.norm.cdf(0.5 / sigma - eps * sigma)
             - math.exp(eps) * stats.norm.cdf(-0.5 / sigma - eps * sigma))
    assert delta == pytest.approx(DELTA, rel=0.05)
  assert auditing.gaussian_epsilon(0.0, DELTA) == math.inf


def test_bound_on_known_gaussians_is_below_the_truth_and_informative():
  # Scores N(0, 1) vs N(1, 1) are the optimal test of a Gaussian step with σ = 1
  # (true ε = 4.38 at δ = 1e-5): the bound must stay below it and clearly above 0.
  rng = np.random.default_rng(0)
  out, inn = rng.normal(0, 1, TRIALS), rng.normal(1, 1, TRIALS)
  eps, info = auditing.epsilon_lower_bound(out, inn, DELTA)
  assert 0.3 < eps < auditing.gaussian_epsilon(1.0, DELTA)
  assert info.trials_each == TRIALS // 2
  same, _ = auditing.epsilon_lower_bound(rng.normal(0, 1, TRIALS), rng.normal(0, 1, TRIALS),
                                      DELTA)
  assert same < 0.3


# ---- the one-run audit (Steinke, Nasr, Jagielski 2023) -----------------------------------

def test_one_run_p_value_without_delta_is_the_binomial_tail():
  # δ = 0: P[W ≥ v] ≤ P[Bin(r, e^ε/(1+e^ε)) ≥ v]; at ε = 0 that is a fair coin.
  assert auditing.one_run_p_value(100, 20, 15, 0.0, 0.0) == pytest.approx(
      stats.binom.sf(14, 20, 0.5))
  p = math.exp(1.5) / (1 + math.exp(1.5))
  assert auditing.one_run_p_value(100, 40, 30, 1.5, 0.0) == pytest.approx(
      stats.binom.sf(29, 40, p))
  # The δ term only adds: 2mδ·max_i P[v−i ≤ Bin < v]/i, here by hand for v = 2, r = 3.
  q = p
  pmf = [stats.binom.pmf(k, 3, q) for k in range(3)]
  by_hand = stats.binom.sf(1, 3, q) + 2 * 10 * 1e-3 * max(pmf[1], (pmf[1] + pmf[0]) / 2)
  assert auditing.one_run_p_value(10, 3, 2, 1.5, 1e-3) == pytest.approx(by_hand)


def test_perfect_guesses_give_the_closed_form_bound():
  # r of r right: p_ε^r = α at the bound, so ε = log(p/(1−p)) with p = α^(1/r).
  for r in (10, 100, 1000):
    p = 0.05 ** (1 / r)
    assert auditing.one_run_epsilon_lower_bound(r, r, r, 0.0) == pytest.approx(
        math.log(p / (1 - p)), rel=1e-6)
  # δ > 0 can only lower it; half right is no evidence at all.
  assert (auditing.one_run_epsilon_lower_bound(1000, 1000, 1000, 1e-5)
          <= auditing.one_run_epsilon_lower_bound(1000, 1000, 1000, 0.0))
  assert auditing.one_run_epsilon_lower_bound(1000, 1000, 500, 1e-5) == 0.0


def _randomized_response(epsilon, m, rng):
  """Scores of ε-DP randomized response: each canary's bit told truly w.p. e^ε/(1+e^ε)."""
  included = rng.random(m) < 0.5
  truthful = rng.random(m) < math.exp(epsilon) / (1 + math.exp(epsilon))
  told = np.where(truthful, included, ~included)
  return told + 0.01 * rng.random(m), included  # ties broken at random


def test_one_run_audit_of_randomized_response_stays_below_and_near_its_epsilon():
  # Randomized response at ε is exactly ε-DP and the attacker's guesses are as good as
  # any: the bound must stay below ε in (almost) every repeat and come within a factor 2.
  rng = np.random.default_rng(1)
  bounds = [auditing.one_run_audit(*_randomized_response(2.0, 2000, rng), 1e-5)
            .epsilon_lower_bound for _ in range(20)]
  assert max(bounds) < 2.0
  assert np.mean(bounds) > 1.0


def test_one_run_audit_finds_nothing_in_scores_that_ignore_the_canaries():
  rng = np.random.default_rng(2)
  flagged = [auditing.one_run_audit(rng.normal(size=500), rng.random(500) < 0.5, 1e-5)
             .epsilon_lower_bound > 0 for _ in range(40)]
  assert sum(flagged) <= 4  # 95 % confidence: about 2 of 40 by chance


def test_one_run_audit_guesses_both_ends_and_reports_each_declared_count():
  included = np.array([True] * 6 + [False] * 6)
  scores = np.arange(12, 0, -1.0)  # the in-canaries score highest
  result = auditing.one_run_audit(scores, included, 0.0, guess_counts=(4, 12))
  assert [row[:2] for row in result.per_count] == [(4, 4), (12, 12)]
  assert result.guesses == 12 and result.correct == 12
  assert result.epsilon_lower_bound == pytest.approx(
      auditing.one_run_epsilon_lower_bound(12, 12, 12, 0.0, 1 - 0.05 / 2))
  with pytest.raises(ValueError, match="guess counts"):
    auditing.one_run_audit(scores, included, 0.0, guess_counts=(13,))


def test_block_canaries_are_distinct_blocks_on_black():
  images, labels = auditing.block_canaries(360, (8, 8, 1), 10, np.random.default_rng(0))
  assert images.shape == (360, 8, 8, 1) and set(np.unique(images)) == {-1.0, 1.0}
  assert np.all((images > 0).sum(axis=(1, 2, 3)) == 9)
  pairs = {(x.tobytes(), int(y)) for x, y in zip(images, labels)}
  assert len(pairs) == 360  # every (position, label) pair once: 36 positions × 10 labels
  with pytest.raises(ValueError, match="361 canaries"):
    auditing.block_canaries(361, (8, 8, 1), 10, np.random.default_rng(0))


def test_nearest_distance_scores_use_only_the_canarys_label():
  canaries = np.zeros((2, 1, 2, 1), np.float32)
  generated = np.array([[[[0.0], [1.0]]], [[[5.0], [5.0]]], [[[0.0], [0.0]]]], np.float32)
  scores = auditing.nearest_distance_scores(canaries, np.array([0, 1]), generated,
                                         np.array([0, 0, 1]))
  np.testing.assert_allclose(scores, [-1.0, 0.0])


# ---- the lattice adversary ------------------------------------------------------------------

def test_pair_gaussian_epsilon_is_the_gaussian_at_the_scaled_multiplier():
  assert auditing.pair_gaussian_epsilon(1.0, 1.0, DELTA) == auditing.gaussian_epsilon(1.0, DELTA)
  assert auditing.pair_gaussian_epsilon(1.0, 0.05, DELTA) == pytest.approx(
      auditing.gaussian_epsilon(20.0, DELTA))
  # Balle & Wang's closed form at σ = 20 (the shift 0.05·2C at σ = 1): 0.160.
  eps = auditing.pair_gaussian_epsilon(1.0, 0.05, DELTA)
  delta = stats.norm.cdf(0.5 / 20 - eps * 20) - math.exp(eps) * stats.norm.cdf(-0.5 / 20 - eps * 20)
  assert delta == pytest.approx(DELTA, rel=0.05) and 0.15 < eps < 0.17
  assert auditing.pair_gaussian_epsilon(1.0, 0.0, DELTA) == 0.0
  with pytest.raises(ValueError, match="fraction"):
    auditing.pair_gaussian_epsilon(1.0, -0.5, DELTA)


def test_box_muller_grid_has_the_kernels_extreme_radii_and_angles():
  # m = 0 is clamped to u = 1e-7f: the largest radius, √(−2 ln 1e-7) = 5.678; m = 2²³ − 1:
  # the smallest, √(−2 ln(1 − 2⁻²³)) ≈ √(2⁻²²) = 4.88e-4. Angles: fl32(2π·k·2⁻²³).
  assert auditing.box_muller_radius(0) == pytest.approx(math.sqrt(-2 * math.log(1e-7)), rel=1e-7)
  assert auditing.box_muller_radius(1) < auditing.box_muller_radius(0)
  assert auditing.box_muller_radius(2**23 - 1) == pytest.approx(2.0**-11, rel=1e-6)
  assert auditing.box_muller_angle(0) == 0.0
  assert auditing.box_muller_angle(2**22) == float(np.float32(math.pi))


def _tf_noise(shape, seed, stddev):
  import tensorflow as tf
  return tf.random.stateless_normal(shape, tf.constant(seed, tf.int64), stddev=stddev).numpy()


@pytest.mark.parametrize("stddev, offset", [(1.0, 0.0), (0.7, 0.3), (3.3, 5.0), (1e-3, 1e-3)])
def test_every_pair_tf_draws_lies_on_the_box_muller_grid(stddev, offset):
  # The claim the attack rests on, against TF's own kernel (fixed test seed): with the true
  # clean block, no pair of (release − clean)/std is off the grid, whatever the float32
  # rounding of release = clean + noise; the same releases under a block moved by 1e-3·std
  # per entry leave pairs off it.
  rng = np.random.default_rng(3)
  clean = (offset * rng.normal(size=1024)).astype(np.float32)
  release = clean + _tf_noise([256, 1024], [11, int(stddev * 1000)], stddev)
  assert release.dtype == np.float32
  grid = auditing.BoxMullerFloat32Grid()
  assert grid.off_grid(release, clean, stddev).sum() == 0  # of 131,072 pairs
  moved = clean + np.float32(1e-3 * stddev)
  off = grid.off_grid(release, moved, stddev)
  assert off.mean() > 0.15 and off.sum(axis=1).min() > 20


def test_box_muller_grid_leaves_a_true_gaussian_where_it_is():
  # Float64 Gaussian noise rounded to a float32 release is off the grid about as often
  # under either block: the grid test carries no information about a true Gaussian.
  rng = np.random.default_rng(4)
  clean = np.zeros(1024, np.float32)
  release = (clean + rng.normal(size=(256, 1024))).astype(np.float32)
  grid = auditing.BoxMullerFloat32Grid()
  off_true = grid.off_grid(release, clean, 1.0).mean()
  off_moved = grid.off_grid(release, clean + np.float32(1e-3), 1.0).mean()
  assert 0.15 < off_true and abs(off_true - off_moved) < 0.01


def _shift_pair(dim, fraction, clip, rng):
  """Two clean blocks, norm ≤ C, fraction·2C apart in a random direction."""
  e = rng.normal(size=dim)
  e /= np.linalg.norm(e)
  a = 0.3 * clip * rng.normal(size=dim) / math.sqrt(dim)
  return a.astype(np.float32), (a + 2 * clip * fraction * e).astype(np.float32)


def test_lattice_adversary_detects_float32_box_muller_noise_at_a_small_shift():
  # The setting: σ = 1, C = 0.5 (std 2σC = 1), an 8×8×8×1 block, 600 releases per
  # side, clean blocks 0.05·2C apart, where a Gaussian allows ε = 0.160. TF's float32 noise
  # (fixed test seeds: allowed for a test of the attack) is Gaussian to the linear test but
  # on the Box–Muller grid: the lattice adversary must refute the Gaussian, the linear must not.
  rng = np.random.default_rng(5)
  a, b = _shift_pair(512, 0.05, 0.5, rng)
  noise = _tf_noise([1200, 512], [7, 8], 1.0)
  result = auditing.step_audit(lambda i: a + noise[i], lambda i: b + noise[i], a, b,
                               noise_multiplier=1.0, l2_norm_clip=0.5, delta=DELTA,
                               trials=600)
  reference = auditing.pair_gaussian_epsilon(1.0, 0.05, DELTA)
  assert result.reference_epsilon == pytest.approx(reference, rel=1e-3)
  bounds = {a.name: a.epsilon_lower_bound for a in result.adversaries}
  assert list(bounds) == ["linear", "lattice"]
  assert bounds["lattice"] > 3.0 > reference  # every release separated (at most 4.2 here)
  assert bounds["linear"] <= reference
  assert result.flagged and result.strongest == "lattice"
  assert result.epsilon_lower_bound < result.certified_epsilon  # 300 trials cannot show 4.38
  assert all(a.confidence == pytest.approx(0.975) for a in result.adversaries)


def test_lattice_adversary_finds_nothing_in_true_gaussian_noise():
  # The same audit on float64 Gaussian noise rounded to the float32 release: nothing.
  rng = np.random.default_rng(6)
  a, b = _shift_pair(512, 0.05, 0.5, rng)
  noise = rng.normal(size=(1200, 512))
  result = auditing.step_audit(lambda i: (a + noise[i]).astype(np.float32),
                               lambda i: (b + noise[i]).astype(np.float32), a, b, 1.0, 0.5,
                               DELTA, 600)
  assert not result.flagged
  assert {a.name: a.epsilon_lower_bound for a in result.adversaries}["lattice"] <= \
      result.reference_epsilon


@pytest.mark.parametrize("step", [2.0**-8, 0.003])
def test_lattice_grid_finds_an_unrounded_block_and_nothing_once_it_is_rounded(step):
  # A discrete mechanism on γℤ. Broken: c + γ·Z (the clean block not on the lattice), which
  # the true block fits and the other does not. Correct: γ·(randomised rounding of c/γ + Z),
  # on γℤ under either hypothesis: the adversary must find nothing.
  rng = np.random.default_rng(7)
  a, b = _shift_pair(128, 0.05, 0.5, rng)
  z = np.round(rng.normal(size=(800, 128)) / step)  # the noise on the lattice, in steps

  def broken(clean):
    return lambda i: (clean + np.float32(step) * z[i].astype(np.float32)).astype(np.float32)

  def rounded(clean):
    def release(i):
      low = np.floor(clean / step)
      up = rng.random(clean.shape) < clean / step - low  # E[rounded] = clean
      return (step * (low + up + z[i])).astype(np.float32)
    return release

  adversary = auditing.LatticeAdversary(1.0, (auditing.LatticeGrid(step),))
  grid = adversary.grids[0]
  assert grid.off_grid(broken(a)(0)[None], a, 1.0).sum() == 0  # the true block fits exactly
  found = auditing.step_audit(broken(a), broken(b), a, b, 1.0, 0.5, DELTA, 400,
                              adversaries=[adversary])
  assert found.flagged and found.epsilon_lower_bound > 3.0
  nothing = auditing.step_audit(rounded(a), rounded(b), a, b, 1.0, 0.5, DELTA, 400,
                                adversaries=[adversary])
  assert nothing.epsilon_lower_bound == 0.0
  with pytest.raises(ValueError, match="lattice step"):
    auditing.LatticeGrid(0.0)


def test_step_audit_takes_each_adversary_at_its_bonferroni_share():
  # Two adversaries: one sees the truth, one sees noise. The result is the larger bound,
  # each computed at confidence 1 − 0.05/2, exactly as epsilon_lower_bound gives it.
  rng = np.random.default_rng(8)
  out, inn = rng.normal(0, 1, 400), rng.normal(3, 1, 400)

  class Fixed:
    def __init__(self, name, s_out, s_in):
      self.name, self.s = name, (s_out, s_in)

    def scores(self, *args):
      del args
      return self.s

  blind = Fixed("blind", rng.normal(size=400), rng.normal(size=400))
  result = auditing.step_audit(lambda i: np.zeros(2), lambda i: np.ones(2), np.zeros(2),
                               np.ones(2), 1.0, 0.5, DELTA, 400,
                               adversaries=[Fixed("sees", out, inn), blind])
  expected, _ = auditing.epsilon_lower_bound(out, inn, DELTA, 0.975)
  assert result.epsilon_lower_bound == expected > 1.0
  assert result.strongest == "sees"
  assert [a.confidence for a in result.adversaries] == [0.975, 0.975]
  summary = auditing.summary(result, "x")
  assert set(summary["adversaries"]) == {"sees", "blind"}
  with pytest.raises(ValueError, match="distinct"):
    auditing.step_audit(lambda i: np.zeros(2), lambda i: np.ones(2), np.zeros(2), np.ones(2),
                        1.0, 0.5, DELTA, 4, adversaries=[blind, blind])


def test_separated_scores_are_cut_in_the_gap():
  # Perfectly separated fitting halves: the threshold lies between them, so separated test
  # halves make no error and the bound is the closed form of 0 errors in m at α = 0.025:
  # ε = log((1 − δ − p)/p), p = 1 − 0.025^(1/m) (a quantile threshold would cut one off).
  out, inn = np.linspace(-2, -1, 600), np.linspace(1, 2, 600)
  eps, info = auditing.epsilon_lower_bound(out, inn, DELTA)
  p = 1 - 0.025**(1 / 300)
  assert info.false_positives == info.false_negatives == 0 and -1 < info.threshold < 1
  assert eps == pytest.approx(math.log((1 - DELTA - p) / p))


def test_the_roc_region_of_a_dp_mechanism_has_its_closed_form():
  fpr = np.array([0.0, 1e-3, 0.5, 1.0])
  tpr = auditing.dp_region_tpr(fpr, 1.0, 0.0)
  np.testing.assert_allclose(tpr, [0.0, np.e * 1e-3, 1 - 0.5 / np.e, 1.0])
  # The attack's ROC on separable scores reaches (0, 1); on identical ones the diagonal.
  fpr, tpr = auditing.roc(np.array([0.0, 1.0]), np.array([2.0, 3.0]))
  assert (0.0, 1.0) in set(zip(fpr, tpr))


def test_the_canary_candidates_are_eight_distinct_synthetic_images():
  candidates = auditing.canary_candidates((6, 4, 3))
  assert len(candidates) == 8
  for image in candidates:
    assert image.shape == (6, 4, 3) and image.dtype == np.float32
    assert set(np.unique(image)) <= {-1.0, 1.0}
  flat = {image.tobytes() for image in candidates}
  assert len(flat) == 8  # each a different canary
  np.testing.assert_array_equal(candidates[1], -candidates[0])  # each comes with its negative
  assert np.all(candidates[0] == 1.0)  # white

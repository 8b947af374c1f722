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

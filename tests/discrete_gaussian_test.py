"""Tests for dp_sinkhorn_tf.privacy.discrete_gaussian: the exact keyed N_ℤ(0, s²) sampler.

The sampler is keyed, so each test draws from fixed seeds and is deterministic; the
statistical tests compare ≥ 10⁶ draws with the exact pmf P[Z = z] ∝ exp(−z²/(2s²)).
"""

import math

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats
from tensorflow_privacy.privacy.dp_query import discrete_gaussian_utils

from dp_sinkhorn_tf.privacy import discrete_gaussian as dg

SEED = tf.constant([12345, 678], tf.int64)


def pmf(s2: float, support: np.ndarray) -> np.ndarray:
  """The exact N_ℤ(0, s²) pmf on `support` (normalised over ℤ by θ)."""
  return np.exp(-support.astype(np.float64)**2 / (2.0 * s2)) / dg.theta(s2)


def draw(scale: dg.Scale, n: int, seed=SEED, max_abs=None):
  max_abs = max_abs or max(64, int(dg.MIN_STDS_KEPT * scale.scale) + 1)
  fn = tf.function(lambda s: dg.sample([n], scale, s, max_abs))
  z, info = fn(seed)
  return z.numpy(), info


def chi_square(z: np.ndarray, s2: float, bins: int = 60):
  """(statistic, degrees of freedom, p-value) of z against the pmf, on equal-width bins of
  integers covering ±6s (tails merged into the end bins)."""
  s = math.sqrt(s2)
  top = int(math.ceil(6 * s))
  width = max(1, int(math.ceil((2 * top + 1) / bins)))
  edges = np.arange(-top, top + width + 1, width)
  support = np.arange(-int(41 * s) - 2, int(41 * s) + 3)
  p = pmf(s2, support)
  index = np.clip(np.searchsorted(edges, support, side="right") - 1, 0, len(edges) - 2)
  expected = np.bincount(index, weights=p, minlength=len(edges) - 1) * len(z)
  zi = np.clip(np.searchsorted(edges, z, side="right") - 1, 0, len(edges) - 2)
  observed = np.bincount(zi, minlength=len(edges) - 1)
  keep = expected > 5
  stat = float(((observed[keep] - expected[keep])**2 / expected[keep]).sum())
  dof = int(keep.sum()) - 1
  return stat, dof, float(stats.chi2.sf(stat, dof))


@pytest.mark.parametrize("scale", [dg.Scale(0, 1),            # s² = 1: the lattice shows
                                   dg.scale_parameters(6.5),    # s² ≈ 44
                                   dg.scale_parameters(1500.0)])  # s² ≈ 2.25e6
def test_frequencies_match_the_pmf_over_a_million_draws(scale):
  z, info = draw(scale, 10**6)
  stat, dof, p = chi_square(z, scale.variance_parameter)
  assert p > 1e-3, (stat, dof, p)
  assert int(info.rounds) >= 1


@pytest.mark.parametrize("scale", [dg.Scale(0, 1), dg.scale_parameters(6.5),
                                   dg.scale_parameters(1500.0)])
def test_mean_variance_and_tails(scale):
  n = 10**6
  z, _ = draw(scale, n, seed=tf.constant([99, 1], tf.int64))
  s2 = scale.variance_parameter
  support = np.arange(-int(41 * math.sqrt(s2)) - 2, int(41 * math.sqrt(s2)) + 3)
  p = pmf(s2, support)
  var = float((support.astype(np.float64)**2 * p).sum())   # exact variance (< s²)
  fourth = float((support.astype(np.float64)**4 * p).sum())
  assert abs(z.mean()) < 5 * math.sqrt(var / n)
  assert abs(z.var() - var) < 5 * math.sqrt((fourth - var**2) / n)
  tail = float(p[np.abs(support) >= 2.5 * math.sqrt(s2)].sum())
  seen = float(np.mean(np.abs(z) >= 2.5 * math.sqrt(s2)))
  assert abs(seen - tail) < 5 * math.sqrt(tail * (1 - tail) / n)
  assert set(np.unique(np.sign(z))) == {-1, 0, 1}


def test_agrees_with_tf_privacys_reference_sampler():
  """Two-sample χ² against TF Privacy's (float-based, stateful) discrete Gaussian sampler,
  used here as a reference only."""
  tf.random.set_seed(3)
  scale = dg.Scale(0, 9)  # s² = 9: the reference takes an integer scale s = 3
  ours, _ = draw(scale, 200_000)
  theirs = discrete_gaussian_utils.sample_discrete_gaussian(
      scale=tf.constant(3, tf.int32), shape=[200_000], dtype=tf.int32).numpy()
  edges = np.arange(-12, 14) - 0.5
  a, _ = np.histogram(np.clip(ours, -12, 12), edges)
  b, _ = np.histogram(np.clip(theirs, -12, 12), edges)
  stat, p, _, _ = stats.chi2_contingency(np.stack([a, b]))
  assert p > 1e-3, (stat, p)


def test_same_seed_same_draws_other_steps_independent():
  scale = dg.scale_parameters(300.0)
  a, _ = draw(scale, 50_000, tf.constant([7, 100], tf.int64))
  b, _ = draw(scale, 50_000, tf.constant([7, 100], tf.int64))
  c, _ = draw(scale, 50_000, tf.constant([7, 101], tf.int64))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  corr = np.corrcoef(a.astype(np.float64), c.astype(np.float64))[0, 1]
  assert abs(corr) < 5 / math.sqrt(len(a))


def test_eager_and_graph_agree():
  scale = dg.scale_parameters(40.0)
  eager, _ = dg.sample([3000], scale, SEED, 64 * 40)
  graph, _ = draw(scale, 3000, SEED, 64 * 40)
  np.testing.assert_array_equal(eager.numpy(), graph)


def test_range_is_kept_and_checked():
  scale = dg.Scale(0, 1)
  z, _ = draw(scale, 200_000, max_abs=40)
  assert np.abs(z).max() <= 40
  with pytest.raises(ValueError, match="max_abs"):
    dg.sample([4], scale, SEED, 39)          # below 40·s
  with pytest.raises(ValueError, match="max_abs"):
    dg.sample([4], dg.scale_parameters(1e3), SEED, 2**24)


def test_the_mass_left_out_by_the_range_is_below_ten_to_the_minus_347():
  # max_abs ≥ 40·s: P[|Z| > 40s] ≤ 2e^{−800}/(1 − e^{−40/s}) (module docstring), for the
  # mechanism's scales (s ~ 2¹⁸) and a small one.
  for scale in [dg.Scale(0, 1), dg.scale_parameters(235405.9)]:
    bound = dg.log10_truncated_mass_bound(scale, math.ceil(40 * scale.scale))
    assert bound < -347
  # A range of 3s leaves ~1 % out: the bound is not vacuous (> the exact tail 0.27 %).
  scale = dg.Scale(0, 9)  # s = 3
  exact = 2 * pmf(9, np.arange(10, 200)).sum()
  assert exact < 10**dg.log10_truncated_mass_bound(scale, 9) < 0.05


def test_scale_parameters_never_below_the_wanted_scale():
  for s in [1.0, 1.5, 6.5, 100.3, 2.0**17 + 0.7, 235405.9]:
    sc = dg.scale_parameters(s)
    assert sc.t == 2**sc.log2_t and sc.L >= 1
    assert sc.variance_parameter >= s * s
    assert sc.scale / s - 1 < 2 / s + 1e-12
    assert s / math.sqrt(2) <= sc.t <= s * math.sqrt(2)
  with pytest.raises(ValueError):
    dg.scale_parameters(0.5)
  with pytest.raises(ValueError):
    dg.Scale(0, 0)
  with pytest.raises(ValueError):
    dg.Scale(21, 2**20)  # s² ≥ 2⁴⁰


def test_candidates_per_sample_match_the_acceptance_probability():
  scale = dg.scale_parameters(1000.0)
  p = dg.acceptance_probability(scale)
  assert 0.42 < p < 0.49
  n = 200_000
  _, info = draw(scale, n)
  # One round proposes n/p + 6√(n/p) + 64 candidates and almost always suffices.
  assert int(info.rounds) == 1
  assert int(info.candidates) == math.ceil(n / p + 6 * math.sqrt(n / p) + 64)


def test_exp1_word_outcomes_by_hand():
  """Words at the factorial thresholds: w < M·18!/k! ⇔ d₂ = … = d_k = 0."""
  t = dg._EXP1_THRESHOLDS  # ascending: k = 18, …, 2
  t2, t3 = t[-1], t[-2]
  words = tf.constant([t2, t2 - 1, t3 - 1, 0, dg._EXP1_LIMIT, dg._EXP1_LIMIT - 1], tf.int64)
  out = dg.exp1_fresh(words).numpy()
  # t2: d₂ ≠ 0 → K = 2 (even) → 0; t2−1: d₂ = 0, d₃ ≠ 0 → K = 3 → 1; t3−1: K = 4 → 0;
  # 0: every digit 0 → on at k = 19; the limit: rejected; just below it: K = 2 → 0.
  assert out.tolist() == [dg._FAIL, dg._SUCCESS, dg._FAIL, dg._AT19, dg._REDRAW, dg._FAIL]


def test_geometric_chain_and_bernoulli_exp():
  n = 200_000
  v = dg.exp1_successes(tf.fill([n], tf.constant(2**62, tf.int64)), SEED).numpy()
  counts = np.bincount(np.minimum(v, 8), minlength=9)
  probs = (1 - math.exp(-1)) * np.exp(-np.arange(9.0))
  probs[8] = math.exp(-8)
  assert stats.chisquare(counts, probs * n).pvalue > 1e-3
  capped = dg.exp1_successes(tf.fill([n], tf.constant(2, tf.int64)), SEED).numpy()
  assert capped.max() == 2 and abs(np.mean(capped == 2) - math.exp(-2)) < 5 * math.sqrt(
      math.exp(-2) / n)
  for r, d in [(1, 3), (0, 7), (6, 7), (123456789, 2**40 - 3)]:
    hits = dg.bernoulli_exp_fraction(tf.fill([n], tf.constant(r, tf.int64)), d,
                                     tf.ones([n], tf.bool), SEED).numpy()
    p = math.exp(-r / d)
    assert abs(hits.mean() - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-12, (r, d)

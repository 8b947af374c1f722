"""Empirical privacy audits: measured lower bounds on ε, for one step and for a whole run.

Part 1, the step audit (white box).

The accountant proves an upper bound; this module measures what an attacker can actually
tell, in the spirit of Jagielski, Ullman, Oprea (2020). Setting: neighbouring private
batches Y and Y′ = Y + canary, the same generator, latents and generated labels (the
strongest attacker knows all of it), and the real mechanism code path
(`DPSinkhornModel`'s loss and image gradient, `privacy.ImageGradientMechanism.privatize`
with a fresh secret key per trial, `privacy.blur_release`). The attacker sees one release
G̃ and must say whether the canary was in.

Test. The released G̃ is Gaussian around clip(G_Y) or clip(G_Y′) with the same covariance,
so the most powerful test (Neyman–Pearson) thresholds the projection of G̃ on Σ⁻¹u, with
u = clip(G_Y′) − clip(G_Y) the mean difference and Σ the noise covariance (estimated per
coordinate from the trials: isotropic for the real mechanism, so Σ⁻¹u ∝ u; a broken
mechanism that leaves coordinates noise-free gets them weighted up). The variance and the
threshold are fitted on one half of the trials and the error rates measured on the other
half (no selection bias). With
Clopper–Pearson upper bounds FPR⁺, FNR⁺ at the given confidence (split between the two),
any (ε, δ)-DP mechanism satisfies FPR + e^ε·FNR ≥ 1 − δ and the symmetric inequality, so

  ε ≥ max( log((1 − δ − FNR⁺) / FPR⁺), log((1 − δ − FPR⁺) / FNR⁺) )      (Kairouz et al. 2015)

holds with that confidence. It is a lower bound for this attacker and this canary, not an
estimate of the true ε: the certified value must lie above it; a bound above the certified
value means the mechanism (or its accounting) is broken.

Second test, the lattice adversary (`LatticeAdversary`). The projection is optimal only if
the noise IS Gaussian. A float sampler draws from a finite set: TF's float32 Box–Muller
puts every pair of noise entries on 2²³ radii × 2²³ angles (`BoxMullerFloat32Grid`), a
discrete mechanism on γℤ (`LatticeGrid`). Knowing both clean blocks, the attacker counts the
pairs (entries) of (G̃ − clean)/std that are off the grid under each hypothesis; under the
true one none is, under the other most are unless the shift is a grid vector. Score:
#off(out-block) − #off(in-block). Each adversary's bound is taken at confidence
1 − (1 − c)/k for k adversaries (Bonferroni), so the largest of them holds at c.

Reference: one unsubsampled Gaussian step with multiplier σ is (ε_σ, δ)-DP for
`gaussian_epsilon(σ, δ)`; the audit forces the canary into the batch (it removes the
subsampling), so ε_σ is the value to compare with. The attack reaches it only if the two
clipped gradients sit 2C apart (opposite directions); between blocks ‖u‖ apart a Gaussian
allows exactly the ε of multiplier σ·2C/‖u‖ (`pair_gaussian_epsilon`), and a bound above
that (`StepAuditResult.flagged`) refutes the claim that the noise is that Gaussian, even
when it stays below ε_σ.

Part 2, the run audit (black box, one training run; Steinke, Nasr, Jagielski 2023). m
canaries are each put in the private set with probability ½, independently, by a secret
audit key; one run trains on the result; the attacker sees only the released generator,
scores every canary, guesses "in" for the k₊ highest scores and "out" for the k₋ lowest,
and abstains on the rest. If the training is (ε, δ)-DP, the number W of correct guesses
among the r = k₊ + k₋ made satisfies (their Theorem 5.2 with the δ term)

  P[W ≥ v] ≤ P[Binomial(r, p_ε) ≥ v] + 2m·δ·max_{i=1..v} P[v − i ≤ Binomial(r, p_ε) < v] / i,
  p_ε = e^ε / (1 + e^ε),

so the largest ε whose bound is below 1 − confidence is refuted: ε ≥ that value with the
stated confidence (`one_run_epsilon_lower_bound`). Guess counts chosen after looking at
the scores would void this; `one_run_audit` takes the largest bound over a fixed,
pre-declared list of counts at confidence split evenly over the list (Bonferroni).

Canaries (`block_canaries`): a 3×3 block of white pixels at one position on a black image,
with one label, distinct (position, label) pairs: far from every real image, and simple
enough for a small generator to reproduce if the mechanism lets it. A canary's score is
minus the squared distance to its nearest of many generated images of its label
(`nearest_distance_scores`): a generator that learned a canary draws images near it.
"""

import dataclasses
import math
from typing import Callable, Optional, Sequence

import dp_accounting
import numpy as np
from scipy import stats

PLD_DISCRETIZATION = 1e-4


def clopper_pearson_upper(errors: int, trials: int, alpha: float) -> float:
  """One-sided upper confidence bound (level 1 − alpha) on a binomial rate."""
  if not 0 <= errors <= trials or trials < 1:
    raise ValueError(f"need 0 ≤ errors ≤ trials, trials ≥ 1; got {errors}, {trials}")
  if errors == trials:
    return 1.0
  return float(stats.beta.ppf(1.0 - alpha, errors + 1, trials - errors))


def gaussian_epsilon(noise_multiplier: float, delta: float) -> float:
  """ε of one Gaussian mechanism with multiplier σ at δ (PLD, tight for one step)."""
  if noise_multiplier <= 0:
    return math.inf
  acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
  acc.compose(dp_accounting.GaussianDpEvent(noise_multiplier))
  return float(acc.get_epsilon(delta))


@dataclasses.dataclass(frozen=True)
class BoundInfo:
  threshold: float
  false_positives: int
  false_negatives: int
  trials_each: int
  fpr_upper: float
  fnr_upper: float


def epsilon_lower_bound(scores_out: np.ndarray, scores_in: np.ndarray, delta: float,
                        confidence: float = 0.95):
  """(ε lower bound, BoundInfo) from attack scores (high score = "canary in").

  scores_out / scores_in: [2m] scores of releases without / with the canary. The first m
  of each choose the threshold (among those at fixed error rates 0.5–30% there, and the
  middle of the gap if the two are separated, the one maximising the same bound); the last
  m measure the error rates; Clopper–Pearson at `confidence`, split over the two rates.
  """
  scores_out, scores_in = np.asarray(scores_out, float), np.asarray(scores_in, float)
  m = min(len(scores_out), len(scores_in)) // 2
  if m < 1:
    raise ValueError("need at least 2 scores on each side")
  fit_out, fit_in = scores_out[:m], scores_in[:m]
  test_out, test_in = scores_out[m:2 * m], scores_in[m:2 * m]
  # A few thresholds at fixed error rates of the fitting half, not every score: the
  # extreme tails overfit the fitting half (a bound of 0 in ~5% of repeats at d′ = 0.7).
  rates = np.array([0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3])
  candidates = np.concatenate([np.quantile(fit_out, 1.0 - rates), np.quantile(fit_in, rates)])
  if fit_out.max() < fit_in.min():  # separated: the quantiles lie inside, the gap between
    candidates = np.append(candidates, 0.5 * (fit_out.max() + fit_in.min()))
  candidates = np.unique(candidates)

  alpha = (1.0 - confidence) / 2.0

  def bound(fp: int, fn: int) -> float:
    fpr_u, fnr_u = clopper_pearson_upper(fp, m, alpha), clopper_pearson_upper(fn, m, alpha)
    out = [0.0]
    if 1 - delta - fnr_u > 0:
      out.append(math.log((1 - delta - fnr_u) / fpr_u))
    if 1 - delta - fpr_u > 0:
      out.append(math.log((1 - delta - fpr_u) / fnr_u))
    return max(out)

  # The threshold that maximises the same (conservative) bound on the fitting half.
  tau = max(candidates, key=lambda t: bound(int(np.sum(fit_out >= t)),
                                            int(np.sum(fit_in < t))))
  fp, fn = int(np.sum(test_out >= tau)), int(np.sum(test_in < tau))
  fpr_u, fnr_u = clopper_pearson_upper(fp, m, alpha), clopper_pearson_upper(fn, m, alpha)
  return bound(fp, fn), BoundInfo(float(tau), fp, fn, m, fpr_u, fnr_u)


def projection_scores(releases: np.ndarray, clean_out: np.ndarray, clean_in: np.ndarray,
                      variance: Optional[np.ndarray] = None) -> np.ndarray:
  """s = ⟨G̃ − (a + b)/2, w⟩, w = u / var (u = b − a; a, b: the two clean releases).

  With a per-coordinate noise variance (estimated from trials), w is the linear
  discriminant: coordinates that carry little or no noise weigh most, as they should for a
  mechanism that forgot noise somewhere. variance=None: w = u (isotropic noise).
  """
  a, b = np.ravel(clean_out), np.ravel(clean_in)
  w = b - a
  if variance is not None:
    var = np.ravel(variance)
    w = w / (var + 1e-12 * max(float(var.max()), 1e-30))
  flat = releases.reshape(len(releases), -1)
  return (flat - 0.5 * (a + b)) @ w


# ---- the lattice adversary: where the noise cannot be --------------------------------------
#
# A float sampler does not draw from N(0, 1); it draws from a finite set. TF's CPU kernel
# of `tf.random.stateless_normal` (float32, Philox; tensorflow/core/lib/random/
# random_distributions_utils.h, BoxMullerFloat; checked bit for bit against glibc's logf,
# sqrtf and sincosf on 2¹⁵ pairs of TF 2.15.1) turns each pair of Philox words (x₀, x₁)
# into the pair of outputs (2j, 2j + 1) of the flattened tensor:
#
#   u = max(m·2⁻²³, 1e-7f), m = x₀ & (2²³ − 1)    (Uint32ToFloat: the low 23 bits)
#   v = fl32(2π·k·2⁻²³),     k = x₁ & (2²³ − 1)
#   r = sqrtf(−2·logf(u)),   out[2j] = fl32(sin v · r),   out[2j + 1] = fl32(cos v · r)
#
# so a pair has one of 2²³ radii (none above √(−2 ln 1e-7) = 5.68, a point mass there) and
# one of 2²³ angles. Whoever knows the clean block of the true hypothesis finds every pair
# of (release − clean)/std on that grid; under the other hypothesis the pairs are shifted
# off it, except by chance. The grid is coarse where a float32 grid is not: radially
# 2⁻²³/(u·r) apart (4e-6 at r = 3, 9e-5 at r = 4, 1e-2 near 5.5), angularly 2π·2⁻²³·r.

BOX_MULLER_BITS = 23
BOX_MULLER_EPSILON = float(np.float32(1e-7))  # the kernel's clamp of u
# Kernel rounding, in units of 2⁻²⁴ (relative radius; absolute angle in radians): logf and
# sqrtf ≤ 1.5 on r, sincosf ≤ √2 on the norm of (sin, cos), the two products ≤ 1 — 3.9 in
# all on r, 2.4 on the angle; measured ≤ 2.6 and ≤ 1.5 on 2²⁰ pairs. The tolerances below
# keep a factor 1.5 above the bounds.
BOX_MULLER_RADIUS_TOLERANCE = 6 * 2.0**-24
BOX_MULLER_ANGLE_TOLERANCE = 4 * 2.0**-24


def float32_ulp(x) -> np.ndarray:
  """The float32 spacing at |x| (float64 array): half of it bounds the rounding of x."""
  return np.spacing(np.abs(np.asarray(x, np.float64)).astype(np.float32)).astype(np.float64)


def box_muller_radius(m) -> np.ndarray:
  """r_m = √(−2 ln max(m·2⁻²³, 1e-7f)), m ∈ [0, 2²³): the radii TF's float32 Box–Muller
  can give a pair (float64; the kernel's own float32 value lies within 1.5·2⁻²⁴·r_m)."""
  u = np.maximum(np.asarray(m, np.float64) * 2.0**-BOX_MULLER_BITS, BOX_MULLER_EPSILON)
  return np.sqrt(-2.0 * np.log(u))


def box_muller_angle(k) -> np.ndarray:
  """v_k = fl32(2π·k·2⁻²³), k ∈ [0, 2²³): the angles of TF's float32 Box–Muller, with the
  kernel's rounding to float32 (the product is a double, the angle a float)."""
  k = np.asarray(k, np.float64)
  return (2.0 * math.pi * (k * 2.0**-BOX_MULLER_BITS)).astype(np.float32).astype(np.float64)


def _wrap_angle(x: np.ndarray) -> np.ndarray:
  """x mod 2π in [−π, π)."""
  return (x + math.pi) % (2 * math.pi) - math.pi


@dataclasses.dataclass(frozen=True)
class BoxMullerFloat32Grid:
  """The set of noise pairs TF's float32 `stateless_normal` can draw (comment above).

  `off_grid(releases, candidate, stddev)`: z = (release − candidate)/stddev, paired as the
  kernel pairs the flattened tensor ((z[2j], z[2j+1]) = r·(sin v, cos v)); a pair is off the
  grid iff its radius is farther than the tolerance from every r_m or its angle from every
  v_k. Tolerance = kernel rounding (constants above) + what the attacker cannot know: the
  float32 rounding of the release (½ ulp) and of noise·stddev (½ ulp of the difference),
  projected on the radial and the tangential direction.

  Guarantee (tests/auditing_test.py): on noise TF drew and the true candidate, no pair is
  off the grid (0 of 2²⁰ at several stddevs and offsets); a pair shifted by more than the
  tolerance is off it unless it lands on another grid point by chance.
  Edge cases: an odd last entry is not paired (ignored); a pair of radius below r_{2²³−1} =
  4.9e-4 (e.g. zero noise) is off the grid; stddev must be > 0.
  """

  name: str = "box_muller_float32"

  def off_grid(self, releases: np.ndarray, candidate: np.ndarray, stddev: float) -> np.ndarray:
    """[trials, pairs] bool: pair j of release i lies off the grid under `candidate`."""
    if not stddev > 0:
      raise ValueError(f"the Box–Muller grid needs the noise stddev > 0, got {stddev}")
    rel = np.asarray(releases).reshape(len(releases), -1)
    diff = rel.astype(np.float64) - np.ravel(candidate).astype(np.float64)
    z = diff / stddev
    err = 0.5 * (float32_ulp(rel) + float32_ulp(diff)) / stddev
    d = (z.shape[1] // 2) * 2
    a, b, ea, eb = z[:, 0:d:2], z[:, 1:d:2], err[:, 0:d:2], err[:, 1:d:2]
    r = np.hypot(a, b)
    rr = np.maximum(r, 1e-100)  # rr² stays a normal float64
    top = 2**BOX_MULLER_BITS - 1
    # Radius: r_m decreases in m; the m with r_m nearest r is within one of e^(−r²/2)·2²³.
    m0 = np.floor(np.clip(np.exp(-0.5 * r**2) * 2.0**BOX_MULLER_BITS, 0, top))
    dist_r = np.min([np.abs(r - box_muller_radius(np.clip(m0 + j, 0, top)))
                     for j in (-1, 0, 1, 2)], axis=0)
    tol_r = BOX_MULLER_RADIUS_TOLERANCE * r + (np.abs(a) * ea + np.abs(b) * eb) / rr
    # Angle: atan2(sin, cos); v_k is within half an ulp of 2πk·2⁻²³.
    theta = np.arctan2(a, b) % (2 * math.pi)
    k0 = np.round(theta * (2.0**BOX_MULLER_BITS / (2 * math.pi)))
    dist_t = np.min([np.abs(_wrap_angle(theta - box_muller_angle((k0 + j) % (top + 1))))
                     for j in (-1, 0, 1)], axis=0)
    tol_t = BOX_MULLER_ANGLE_TOLERANCE + (np.abs(b) * ea + np.abs(a) * eb) / rr**2
    return (dist_r > tol_r) | (dist_t > tol_t)


@dataclasses.dataclass(frozen=True)
class LatticeGrid:
  """The lattice γℤ of a mechanism that releases on it (a discrete Gaussian on γℤ).

  `off_grid(releases, candidate, stddev)`: x = (release − candidate)/γ per entry; off iff
  |x − round(x)| exceeds the float32 rounding of the release and of the difference
  ((ulp(release) + ulp(difference))/γ, twice the worst case) plus 2⁻²³·|x| (γ itself
  rounded to float32). An entry whose tolerance reaches ½ carries no information and is
  never off. stddev is not used.

  What it finds: a release c + γ·Z (noise on the lattice, the clean block not rounded onto
  it) is on the lattice under the true c and off it under the other; a release on γℤ
  (c rounded, deterministically or at random) is off, or on, under both alike: nothing.
  """

  step: float  # γ > 0
  name: str = "lattice"

  def __post_init__(self):
    if not (self.step > 0 and math.isfinite(self.step)):
      raise ValueError(f"a lattice step must be a finite number > 0, got {self.step}")

  def off_grid(self, releases: np.ndarray, candidate: np.ndarray, stddev: float) -> np.ndarray:
    """[trials, entries] bool: entry j of release i lies off γℤ under `candidate`."""
    del stddev
    rel = np.asarray(releases).reshape(len(releases), -1)
    diff = rel.astype(np.float64) - np.ravel(candidate).astype(np.float64)
    x = diff / self.step
    tol = (float32_ulp(rel) + float32_ulp(diff)) / self.step + 2.0**-23 * np.abs(x)
    return (np.abs(x - np.round(x)) > tol) & (tol < 0.5)


def lattice_scores(releases: np.ndarray, clean_out: np.ndarray, clean_in: np.ndarray,
                   stddev: float, grids: Sequence) -> np.ndarray:
  """s = Σ_grids #off(release − clean_out) − #off(release − clean_in) per release.

  High = "canary in": the release fits the grid under the in-block, not the out-block. On a
  correct mechanism both counts have the same law under either hypothesis (nothing to see).
  """
  flat = releases.reshape(len(releases), -1)
  score = np.zeros(len(flat))
  for grid in grids:
    score += grid.off_grid(flat, clean_out, stddev).sum(axis=1)
    score -= grid.off_grid(flat, clean_in, stddev).sum(axis=1)
  return score


@dataclasses.dataclass(frozen=True)
class LinearAdversary:
  """The Neyman–Pearson test of a Gaussian mechanism: `projection_scores` with the
  per-coordinate variance estimated from the first halves of the trials (the halves that
  also fit the threshold)."""

  name: str = "linear"

  def scores(self, out: np.ndarray, inn: np.ndarray, clean_out: np.ndarray,
             clean_in: np.ndarray):
    half = min(len(out), len(inn)) // 2
    variance = 0.5 * (out[:half].reshape(half, -1).var(0) + inn[:half].reshape(half, -1).var(0))
    return (projection_scores(out, clean_out, clean_in, variance),
            projection_scores(inn, clean_out, clean_in, variance))


@dataclasses.dataclass(frozen=True)
class LatticeAdversary:
  """The white-box lattice test: `lattice_scores` on each grid of `grids` (the float noise
  grid of TF's Box–Muller by default), with the mechanism's noise stddev. It has no fitted
  parameter: the halves of the trials only choose and measure its threshold."""

  stddev: float
  grids: tuple = (BoxMullerFloat32Grid(),)
  name: str = "lattice"

  def scores(self, out: np.ndarray, inn: np.ndarray, clean_out: np.ndarray,
             clean_in: np.ndarray):
    return (lattice_scores(out, clean_out, clean_in, self.stddev, self.grids),
            lattice_scores(inn, clean_out, clean_in, self.stddev, self.grids))


def run_trials(release_fn: Callable[[int], np.ndarray], trials: int,
               first_trial: int = 0) -> np.ndarray:
  """[trials, ...] releases, release_fn(i) for i = first_trial, …"""
  return np.stack([np.asarray(release_fn(first_trial + i)) for i in range(trials)])


def expected_gaussian_bound(noise_multiplier: float, trials_each: int, delta: float,
                            confidence: float) -> float:
  """The bound `epsilon_lower_bound`'s formula gives, at the expected error counts, for the
  best threshold test between N(0, 1) and N(1/σ, 1) with `trials_each` test releases per
  side: what a perfect attack on an exact Gaussian mechanism at multiplier σ can certify.
  A negative control whose flaw leaves such a Gaussian is resolvable only if this exceeds
  the value it must exceed."""
  if noise_multiplier <= 0:
    return math.inf
  shift = 1.0 / noise_multiplier
  alpha = (1.0 - confidence) / 2.0
  best = 0.0
  for t in np.linspace(-4.0, shift + 4.0, 400):
    fp = int(round(stats.norm.sf(t) * trials_each))
    fn = int(round(stats.norm.cdf(t - shift) * trials_each))
    fpr_u = clopper_pearson_upper(fp, trials_each, alpha)
    fnr_u = clopper_pearson_upper(fn, trials_each, alpha)
    for a, b in ((fnr_u, fpr_u), (fpr_u, fnr_u)):
      if 1 - delta - a > 0:
        best = max(best, math.log((1 - delta - a) / b))
  return best


def pair_gaussian_epsilon(noise_multiplier: float, fraction: float, delta: float) -> float:
  """ε that a Gaussian mechanism with multiplier σ allows between two inputs whose clean
  releases lie fraction·2C apart (fraction = ‖u‖/2C, ≤ 1 for clipped blocks): the Gaussian
  at σ/fraction.

  The privacy loss of N(a, s²I) against N(b, s²I) depends on ‖a − b‖/s alone, so this is
  exact for the pair; fraction = 1 is `gaussian_epsilon(σ, δ)`, fraction = 0 gives 0."""
  if not fraction >= 0:
    raise ValueError(f"need a fraction of the sensitivity ≥ 0, got {fraction}")
  if fraction == 0:
    return 0.0
  return gaussian_epsilon(noise_multiplier / fraction, delta)


@dataclasses.dataclass(frozen=True)
class AdversaryBound:
  """One adversary's lower bound, at its share `confidence` of the audit's (Bonferroni)."""

  name: str
  epsilon_lower_bound: float
  confidence: float
  info: BoundInfo


@dataclasses.dataclass(frozen=True)
class StepAuditResult:
  epsilon_lower_bound: float  # the largest over `adversaries`: holds at the audit's confidence
  certified_epsilon: float  # what the accounting claims for one step
  reference_epsilon: float  # what the claimed mechanism allows between these two blocks
  noise_multiplier: float
  delta: float
  difference_norm: float  # ‖clip(G_Y′) − clip(G_Y)‖ (≤ 2C)
  sensitivity: float  # 2C
  info: BoundInfo  # of the adversary with the largest bound
  adversaries: tuple = ()  # AdversaryBound of each adversary tried, in order

  @property
  def flagged(self) -> bool:
    """The measured bound exceeds what the claimed mechanism allows for this pair (≤ the
    certified ε): the mechanism is not what its accounting assumes."""
    return self.epsilon_lower_bound > self.reference_epsilon

  @property
  def exceeds_certified(self) -> bool:
    """The measured bound exceeds even the certified one-step ε."""
    return self.epsilon_lower_bound > self.certified_epsilon

  @property
  def strongest(self) -> str:
    """The name of the adversary with the largest bound."""
    return max(self.adversaries, key=lambda a: a.epsilon_lower_bound).name


def default_adversaries(noise_multiplier: float, l2_norm_clip: float) -> tuple:
  """Every adversary of the step audit against a Gaussian mechanism with std 2σC: the
  linear test and the lattice test on TF's float32 Box–Muller grid."""
  return (LinearAdversary(), LatticeAdversary(2.0 * noise_multiplier * l2_norm_clip))


def step_audit(release_out: Callable[[int], np.ndarray],
               release_in: Callable[[int], np.ndarray], clean_out: np.ndarray,
               clean_in: np.ndarray, noise_multiplier: float, l2_norm_clip: float,
               delta: float, trials: int, confidence: float = 0.95,
               certified_epsilon: Optional[float] = None, return_scores: bool = False,
               adversaries: Optional[Sequence] = None,
               reference_epsilon: Optional[float] = None):
  """Runs `trials` releases on each side (trial keys disjoint) and bounds ε.

  release_out(i) / release_in(i): the private rows of the release of trial i without /
  with the canary (fresh key per i). clean_out / clean_in: the same without noise
  (clipped), the attack's reference points. adversaries: objects with `name` and
  `scores(out, inn, clean_out, clean_in) → (scores_out, scores_in)` (default
  `default_adversaries`); each is bounded by `epsilon_lower_bound` at confidence
  1 − (1 − confidence)/len(adversaries), so the largest bound holds at `confidence`.
  certified_epsilon: default one unsubsampled step, `gaussian_epsilon(σ, δ)`.
  reference_epsilon: what a correct mechanism allows for this pair; default
  `pair_gaussian_epsilon(σ, ‖u‖/2C, δ)` when certified_epsilon is None, else
  certified_epsilon. Returns the StepAuditResult, or with return_scores
  (result, {adversary name: (scores_out, scores_in)}) over all trials (the second halves
  measured the rates).
  """
  if adversaries is None:
    adversaries = default_adversaries(noise_multiplier, l2_norm_clip)
  adversaries = tuple(adversaries)
  if not adversaries or len({a.name for a in adversaries}) != len(adversaries):
    raise ValueError("need at least one adversary, with distinct names")
  out = run_trials(release_out, trials, 0)
  inn = run_trials(release_in, trials, trials)
  each = 1.0 - (1.0 - confidence) / len(adversaries)
  bounds, scores = [], {}
  for adversary in adversaries:
    s_out, s_in = adversary.scores(out, inn, clean_out, clean_in)
    eps, info = epsilon_lower_bound(s_out, s_in, delta, each)
    bounds.append(AdversaryBound(adversary.name, eps, each, info))
    scores[adversary.name] = (s_out, s_in)
  best = max(bounds, key=lambda b: b.epsilon_lower_bound)
  diff = float(np.linalg.norm(np.ravel(clean_in).astype(np.float64)
                              - np.ravel(clean_out).astype(np.float64)))
  sensitivity = 2 * l2_norm_clip
  if certified_epsilon is None:
    certified = gaussian_epsilon(noise_multiplier, delta)
    if reference_epsilon is None:
      reference_epsilon = pair_gaussian_epsilon(noise_multiplier, diff / sensitivity, delta)
  else:
    certified = certified_epsilon
  reference = certified if reference_epsilon is None else reference_epsilon
  result = StepAuditResult(best.epsilon_lower_bound, certified, reference, noise_multiplier,
                           delta, diff, sensitivity, best.info, tuple(bounds))
  return (result, scores) if return_scores else result


def summary(result: StepAuditResult, name: str) -> dict:
  """The JSON of a step audit: its fields, the verdicts, and each adversary by name."""
  out = dataclasses.asdict(result)
  out["adversaries"] = {
      a.name: dict(dataclasses.asdict(a), flagged=a.epsilon_lower_bound > result.reference_epsilon)
      for a in result.adversaries}
  out.update(name=name, flagged=result.flagged, exceeds_certified=result.exceeds_certified,
             strongest=result.strongest,
             ratio=(result.epsilon_lower_bound / result.certified_epsilon
                    if math.isfinite(result.certified_epsilon) and result.certified_epsilon
                    else None))
  return out


def canary_gradients(model, images: np.ndarray, labels: np.ndarray, canary: np.ndarray,
                     canary_label: int, step: int = 0):
  """(G_Y, G_Y′): the image gradients [n + n′, H, W, C] of one step of `model`
  (a trainer.DPSinkhornModel) on the private batch Y = (images, labels) and on Y plus the
  canary, with the step's generated images, latents and labels — the real loss path
  (class matching and the XLA bucket padding included when configured)."""
  import tensorflow as tf

  z, fake_labels = model.latent_batch(tf.constant(step, tf.int64))
  fake = model.generator([z, fake_labels], training=True)
  grads = []
  for extra in (False, True):
    real = np.concatenate([images, canary[None]]) if extra else images
    real_labels = np.concatenate([labels, [canary_label]]) if extra else labels
    real = tf.constant(real, tf.float32)
    real_labels = tf.constant(real_labels, tf.int32)
    if model._loss_and_grad is not None:  # pylint: disable=protected-access
      _, grad, _ = model._compiled_loss_and_image_grad(  # pylint: disable=protected-access
          fake, fake_labels, real, real_labels)
    else:
      with tf.GradientTape() as tape:
        tape.watch(fake)
        loss, _ = model.sinkhorn_loss(fake, fake_labels, real, real_labels)
      grad = tape.gradient(loss, fake)
    grads.append(grad)
  return grads[0], grads[1], fake_labels


# ---- the run audit (black box, one training run) ------------------------------------------

def one_run_p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
  """P[W ≥ v] bound of an (ε, δ)-DP run: m canaries, r guesses, v correct (Steinke et al.
  2023, Thm 5.2): P[Bin(r, p_ε) ≥ v] + 2mδ·max_i P[v − i ≤ Bin(r, p_ε) < v] / i."""
  if not 0 <= v <= r <= m or epsilon < 0 or not 0 <= delta <= 1:
    raise ValueError(f"need 0 ≤ v ≤ r ≤ m, ε ≥ 0, δ ∈ [0, 1]; got m={m} r={r} v={v} "
                     f"ε={epsilon} δ={delta}")
  p = 1.0 / (1.0 + math.exp(-epsilon))
  tail = float(stats.binom.sf(v - 1, r, p))
  if delta == 0 or v == 0:
    return min(tail, 1.0)
  below = stats.binom.pmf(np.arange(v - 1, -1, -1), r, p)  # P[Bin = v−1], …, P[Bin = 0]
  worst = float(np.max(np.cumsum(below) / np.arange(1, v + 1)))
  return min(tail + 2 * m * delta * worst, 1.0)


def one_run_epsilon_lower_bound(m: int, r: int, v: int, delta: float,
                                confidence: float = 0.95) -> float:
  """The largest ε refuted at `confidence` by v correct of r guesses on m canaries."""
  alpha = 1.0 - confidence
  if one_run_p_value(m, r, v, 0.0, delta) >= alpha:
    return 0.0
  lo, hi = 0.0, 1.0
  while one_run_p_value(m, r, v, hi, delta) < alpha:
    lo, hi = hi, 2 * hi
  for _ in range(50):  # bisection: p_value(lo) < α ≤ p_value(hi)
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if one_run_p_value(m, r, v, mid, delta) < alpha else (lo, mid)
  return lo


@dataclasses.dataclass(frozen=True)
class RunAuditResult:
  epsilon_lower_bound: float
  canaries: int  # m
  guesses: int  # r of the best pre-declared count
  correct: int  # v among them
  confidence: float
  delta: float
  guess_counts: tuple  # the pre-declared list (Bonferroni over it)
  per_count: tuple  # (r, v, bound at confidence/len(list)) for each count


def one_run_audit(scores: np.ndarray, included: np.ndarray, delta: float,
                  confidence: float = 0.95,
                  guess_counts: Optional[Sequence[int]] = None) -> RunAuditResult:
  """Steinke et al.'s one-run lower bound from canary scores (high = "in").

  For each r in guess_counts (default: 5 %, 10 %, 20 %, 50 %, 100 % of m, fixed before
  the scores are seen) the attacker guesses "in" for the ⌈r/2⌉ highest scores and "out"
  for the ⌊r/2⌋ lowest; each count's bound is at level 1 − (1 − confidence)/len(counts),
  so the maximum holds at `confidence`.
  """
  scores, included = np.asarray(scores, float), np.asarray(included, bool)
  m = len(scores)
  if m < 2 or included.shape != scores.shape:
    raise ValueError(f"need ≥ 2 scores and one inclusion bit each; got {scores.shape}, "
                     f"{included.shape}")
  if guess_counts is None:
    guess_counts = sorted({max(2, int(round(f * m))) for f in (0.05, 0.1, 0.2, 0.5, 1.0)})
  guess_counts = tuple(int(r) for r in guess_counts)
  if any(not 1 <= r <= m for r in guess_counts):
    raise ValueError(f"guess counts must lie in [1, {m}]; got {guess_counts}")
  level = 1.0 - (1.0 - confidence) / len(guess_counts)
  order = np.argsort(-scores, kind="stable")
  per_count = []
  for r in guess_counts:
    k_in, k_out = (r + 1) // 2, r // 2
    v = int(included[order[:k_in]].sum())
    if k_out:
      v += int((~included[order[m - k_out:]]).sum())
    per_count.append((r, v, one_run_epsilon_lower_bound(m, r, v, delta, level)))
  best = max(per_count, key=lambda row: row[2])
  return RunAuditResult(best[2], m, best[0], best[1], confidence, delta, guess_counts,
                        tuple(per_count))


def canary_candidates(image_shape: Sequence[int]) -> list:
  """The step audit's synthetic canary candidates [H, W, C] in {−1, 1} (no private record,
  so the audit's outputs stay publishable): white, a checkerboard, a white top half, a white
  left half, and the negative of each."""
  shape = tuple(int(d) for d in image_shape)
  height, width = shape[:2]
  rows, cols = np.indices((height, width))
  masks = [np.ones((height, width), bool), (rows + cols) % 2 == 0, rows < height // 2,
           cols < width // 2]
  out = []
  for mask in masks:
    for sign in (1.0, -1.0):
      image = np.where(mask, sign, -sign)[..., None]
      out.append(np.broadcast_to(image, shape).astype(np.float32))
  return out


def block_canaries(count: int, image_shape: Sequence[int], num_classes: int,
                   rng: np.random.Generator, block: int = 3):
  """(images [count, H, W, C] in {−1, 1}, labels [count]): a block×block square of +1 on
  −1, at distinct (position, label) pairs drawn by rng (the audit key's generator)."""
  height, width = int(image_shape[0]), int(image_shape[1])
  positions = [(i, j) for i in range(height - block + 1) for j in range(width - block + 1)]
  pairs = len(positions) * num_classes
  if not 1 <= count <= pairs:
    raise ValueError(f"{count} canaries: expected 1..{pairs} for {height}×{width} images "
                     f"with {num_classes} classes")
  chosen = rng.choice(pairs, size=count, replace=False)
  images = -np.ones((count,) + tuple(int(d) for d in image_shape), np.float32)
  labels = np.empty(count, np.int32)
  for k, c in enumerate(chosen):
    (i, j), labels[k] = positions[c // num_classes], c % num_classes
    images[k, i:i + block, j:j + block, :] = 1.0
  return images, labels


def nearest_distance_scores(canaries: np.ndarray, canary_labels: np.ndarray,
                            generated: np.ndarray, generated_labels: np.ndarray) -> np.ndarray:
  """s_i = −min_j ‖x_i − g_j‖² over the generated images g_j of x_i's label."""
  flat = canaries.reshape(len(canaries), -1).astype(np.float64)
  gen = generated.reshape(len(generated), -1).astype(np.float64)
  scores = np.empty(len(canaries))
  for i, (x, label) in enumerate(zip(flat, canary_labels)):
    pool = gen[generated_labels == label]
    if not len(pool):
      raise ValueError(f"no generated image of label {label}")
    scores[i] = -float(np.min(np.sum((pool - x) ** 2, axis=1)))
  return scores


# ---- ROC --------------------------------------------------------------------------------

def roc(scores_out: np.ndarray, scores_in: np.ndarray):
  """(FPR, TPR) of "score ≥ τ means in" over every τ, from (0, 0)."""
  taus = np.unique(np.concatenate([scores_out, scores_in]))[::-1]
  fpr = np.array([0.0] + [np.mean(scores_out >= t) for t in taus])
  tpr = np.array([0.0] + [np.mean(scores_in >= t) for t in taus])
  return fpr, tpr


def dp_region_tpr(fpr: np.ndarray, epsilon: float, delta: float) -> np.ndarray:
  """The highest TPR any test can reach at FPR against an (ε, δ)-DP mechanism:
  min(e^ε·FPR + δ, 1 − e^(−ε)·(1 − δ − FPR)), clipped to [0, 1]; 1 for ε = ∞."""
  if not math.isfinite(epsilon):
    return np.ones_like(fpr)
  return np.clip(np.minimum(math.exp(epsilon) * fpr + delta,
                            1 - math.exp(-epsilon) * (1 - delta - fpr)), 0, 1)


__all__: Sequence[str] = ("clopper_pearson_upper", "gaussian_epsilon", "epsilon_lower_bound",
                          "projection_scores", "step_audit", "StepAuditResult",
                          "pair_gaussian_epsilon", "AdversaryBound", "default_adversaries",
                          "LinearAdversary", "LatticeAdversary", "lattice_scores",
                          "BoxMullerFloat32Grid", "LatticeGrid", "box_muller_radius",
                          "box_muller_angle", "float32_ulp",
                          "one_run_p_value", "one_run_epsilon_lower_bound", "one_run_audit",
                          "RunAuditResult", "canary_candidates", "block_canaries",
                          "nearest_distance_scores", "roc", "dp_region_tpr")


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

Reference: one unsubsampled Gaussian step with multiplier σ is (ε_σ, δ)-DP for
`gaussian_epsilon(σ, δ)`; the audit forces the canary into the batch (it removes the
subsampling), so ε_σ is the value to compare with. The attack reaches it only if the two
clipped gradients sit 2C apart (opposite directions); otherwise the achievable bound
corresponds to σ·2C/‖u‖.

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
  of each choose the threshold (among those at fixed error rates 0.5–30% there, the one
  maximising the same bound); the last m measure
  the error rates; Clopper–Pearson at `confidence`, split over the two rates.
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
  candidates = np.unique(np.concatenate([np.quantile(fit_out, 1.0 - rates),
                                         np.quantile(fit_in, rates)]))

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


def run_trials(release_fn: Callable[[int], np.ndarray], trials: int,
               first_trial: int = 0) -> np.ndarray:
  """[trials, ...] releases, release_fn(i) for i = first_trial, …"""
  return np.stack([np.asarray(release_fn(first_trial + i)) for i in range(trials)])


@dataclasses.dataclass(frozen=True)
class StepAuditResult:
  epsilon_lower_bound: float
  certified_epsilon: float
  noise_multiplier: float
  delta: float
  difference_norm: float  # ‖clip(G_Y′) − clip(G_Y)‖ (≤ 2C)
  sensitivity: float  # 2C
  info: BoundInfo

  @property
  def flagged(self) -> bool:
    """The measured bound exceeds the certified ε: the mechanism is broken."""
    return self.epsilon_lower_bound > self.certified_epsilon


def step_audit(release_out: Callable[[int], np.ndarray],
               release_in: Callable[[int], np.ndarray], clean_out: np.ndarray,
               clean_in: np.ndarray, noise_multiplier: float, l2_norm_clip: float,
               delta: float, trials: int, confidence: float = 0.95,
               certified_epsilon: Optional[float] = None, return_scores: bool = False):
  """Runs `trials` releases on each side (trial keys disjoint) and bounds ε.

  release_out(i) / release_in(i): the private rows of the release of trial i without /
  with the canary (fresh key per i). clean_out / clean_in: the same without noise
  (clipped), defining the attack direction. certified_epsilon: default one unsubsampled
  step, `gaussian_epsilon(σ, δ)`. Returns the StepAuditResult, or with return_scores
  (result, scores_out, scores_in) over all trials (the second halves measured the rates).
  """
  out = run_trials(release_out, trials, 0)
  inn = run_trials(release_in, trials, trials)
  half = trials // 2  # the variance, like the threshold, comes from the first halves only
  variance = 0.5 * (out[:half].reshape(half, -1).var(0) + inn[:half].reshape(half, -1).var(0))
  scores_out = projection_scores(out, clean_out, clean_in, variance)
  scores_in = projection_scores(inn, clean_out, clean_in, variance)
  eps, info = epsilon_lower_bound(scores_out, scores_in, delta, confidence)
  certified = (gaussian_epsilon(noise_multiplier, delta) if certified_epsilon is None
               else certified_epsilon)
  diff = float(np.linalg.norm(np.ravel(clean_in) - np.ravel(clean_out)))
  result = StepAuditResult(eps, certified, noise_multiplier, delta, diff, 2 * l2_norm_clip,
                           info)
  return (result, scores_out, scores_in) if return_scores else result


def summary(result: StepAuditResult, name: str) -> dict:
  out = dataclasses.asdict(result)
  out.update(name=name, flagged=result.flagged,
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


__all__: Sequence[str] = ("clopper_pearson_upper", "gaussian_epsilon", "epsilon_lower_bound",
                          "projection_scores", "step_audit", "StepAuditResult",
                          "one_run_p_value", "one_run_epsilon_lower_bound", "one_run_audit",
                          "RunAuditResult", "block_canaries", "nearest_distance_scores")


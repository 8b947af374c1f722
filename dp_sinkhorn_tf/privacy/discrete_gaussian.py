"""Exact, keyed sampling of the discrete Gaussian N_ℤ(0, s²) in TensorFlow.

The discrete Gaussian with scale s on the integers (Canonne, Kamath & Steinke 2020, "The
Discrete Gaussian for Differential Privacy", CKS below) is

  P[Z = z] = exp(−z²/(2s²)) / Σ_{y∈ℤ} exp(−y²/(2s²)),   z ∈ ℤ.              (CKS eq. 1)

Here s² = t·L with t = 2^a a power of two and L ≥ 1 an integer (`scale_parameters` picks
them for a wanted s; s is then never below the wanted value).

The sampler is CKS Algorithm 3 (rejection from a discrete Laplace proposal) with the
Laplace's own rejection step merged into the final one, every Bernoulli decided by
integer comparisons of uniform integers (no floating point anywhere):

  1. U uniform on {0, …, t−1} and a sign bit B, from one 63-bit word (a power-of-two range:
     no rejection).
  2. V ~ Geometric: the number of successes of Bernoulli(e⁻¹) before the first failure
     (P[V = v] = (1 − e⁻¹)·e⁻ᵛ); X = U + t·V, Y = (1 − 2B)·X; (B = 1, X = 0) is rejected.
  3. Accept Y with probability exp(−E),

       E = U/t + (X − L)²/(2tL) = (2L·U + (X − L)²) / (2tL)            (a rational number),

     decided as ⌊E⌋ successive Bernoulli(e⁻¹) successes and one Bernoulli(exp(−{E})).

Why it is exact. P[U = u, V = v, B = b]·exp(−E) = (1 − e⁻¹)/(2t) · exp(−v − u/t) ·
exp(−(x − L)²/(2tL)) with x = u + tv, and x/t + (x − L)²/(2tL) = (x² + L²)/(2tL), so an
accepted Y = y has probability ∝ exp(−y²/(2tL)) = exp(−y²/(2s²)): CKS eq. 1 (y = 0 arises
from B = 0 only). Steps 1 and 3 are CKS Algorithm 2 (discrete Laplace of scale t: U accepted
with exp(−U/t)) and CKS Algorithm 3's test exp(−(|Y| − s²/t)²/(2s²)), whose two acceptance
probabilities multiply into exp(−E). The acceptance probability of one candidate is
(1 − e⁻¹)/(2t) · e^{−L/(2t)} · Σ_y exp(−y²/(2s²)) (`acceptance_probability`), ≈ 0.42–0.48 for
the t = 2^a nearest s.

Bernoulli(exp(−γ)) for rational γ ∈ [0, 1] is CKS Algorithm 1: K ← 1; while
Bernoulli(γ/K) = 1: K ← K + 1; return [K odd]. Bernoulli(γ/K) = Bernoulli(γ)·Bernoulli(1/K),
each decided by a uniform integer: for γ = 1 the draws Bernoulli(1/2), …, Bernoulli(1/18) of
one K-loop are the digits d₂ … d₁₈ of one uniform R ∈ [0, 18!) in the factorial number
system (R = Σ d_k·(k−1)!, d_k uniform on [0, k) and independent), so the loop stops at the
first k with d_k ≠ 0, found from R mod k! = 0 ⇔ d₂ = … = d_k = 0; past 18 it goes on one
digit per word. A uniform integer on [0, M) comes from a 63-bit word w by rejection
(w < ⌊2⁶³/M⌋·M, then w mod M): exact, and rejected words are simply drawn again.

Vectorised. Candidates are drawn in rounds (`tf.while_loop`): each round proposes enough
i.i.d. candidates for the samples still missing, decides every one of them (each loop runs
until every candidate in it is decided, with no cap), and appends the accepted ones in
candidate order. The accepted candidates of an i.i.d. sequence are i.i.d. draws of the
target, so the first `size` accepted ones are exact samples. Within a loop only undecided
candidates draw words.

Randomness. Every word is a `tf.random.stateless_uniform` (Philox) output under a seed
derived by `stateless_fold_in` from the caller's [2] int64 `seed` (for the mechanism: the
run's secret key, the step and a stream name, `privacy.keys`) and the position (round,
loop, iteration): the samples are a deterministic function of the seed, never of process
state, and different (key, step, stream) give independent draws.

Range. Integers are int64. A candidate with X > max_abs is rejected, so the output is N_ℤ(0,
s²) conditioned on |Z| ≤ max_abs — exactly. `max_abs` must be ≥ 40·s (checked), where the
mass left out is P[|Z| > 40s] < 2·exp(−800) < 10⁻³⁴⁷ (`log10_truncated_mass_bound`); the
mechanism (`privacy.lattice`) accounts for it. All products stay below 2⁶³ because
max_abs < 2²⁴ and s² < 2⁴⁰ (checked).
"""

import dataclasses
import math
from typing import NamedTuple

import tensorflow as tf

MAX_ABS_LIMIT = 2**24 - 1      # |Z| ≤ this: every value is an exact float32 integer
MIN_STDS_KEPT = 40             # max_abs ≥ 40·s
_MASK63 = 2**63 - 1
_INT64_MAX = 2**63 - 1
_F18 = math.factorial(18)
_M18 = 2**63 // _F18
# Bernoulli(e⁻¹) from one word w < _M18·18!: w = (Σ_k d_k·18!/k!)·_M18 + d₀ with d_k uniform
# on [0, k) (most significant first) and d₀ uniform on [0, _M18), so d₂ = … = d_k = 0 ⇔
# w < _M18·18!/k!. Ascending thresholds _M18·18!/k! for k = 18, 17, …, 2.
_EXP1_LIMIT = _M18 * _F18
_EXP1_THRESHOLDS = [_M18 * _F18 // math.factorial(k) for k in range(18, 1, -1)]
# Outcomes of one word of a Bernoulli(e⁻¹) K-loop.
_FAIL, _SUCCESS, _REDRAW, _AT19 = 0, 1, 2, 3
# Words per candidate in the unrolled first pass of each stage.
_UNROLL_CHAIN, _UNROLL_TARGET, _UNROLL_FRAC = 5, 4, 3
_STAGE_PROPOSAL, _STAGE_CHAIN, _STAGE_TARGET, _STAGE_FRAC = 0, 1, 2, 3
_STAGE_CHAIN_REST, _STAGE_TARGET_REST, _STAGE_FRAC_REST = 4, 5, 6


@dataclasses.dataclass(frozen=True)
class Scale:
  """s² = t·L: t = 2^log2_t (a power of two), L ≥ 1; both Python ints."""

  log2_t: int
  L: int

  def __post_init__(self):
    if self.log2_t < 0 or self.L < 1:
      raise ValueError(f"discrete Gaussian scale needs t = 2^a ≥ 1 and L ≥ 1, got "
                       f"a={self.log2_t}, L={self.L}")
    if self.t * self.L >= 2**40:
      raise ValueError(f"discrete Gaussian scale s² = {self.t * self.L} must be < 2^40")

  @property
  def t(self) -> int:
    return 2**self.log2_t

  @property
  def variance_parameter(self) -> int:
    """s² = t·L (an integer); the variance of N_ℤ(0, s²) is slightly below it."""
    return self.t * self.L

  @property
  def scale(self) -> float:
    return math.sqrt(self.t * self.L)


@tf.autograph.experimental.do_not_convert
def scale_parameters(s: float) -> Scale:
  """The Scale with s² = t·L ≥ s², t = 2^round(log₂ s) (so s/√2 ≤ t ≤ √2·s), L = ⌈s²/t⌉ (+1 against
  float rounding): s' ≥ s with s'/s − 1 < t/s² ≤ 1/s."""
  if not (s >= 1 and math.isfinite(s)):
    raise ValueError(f"discrete Gaussian scale must be ≥ 1 and finite, got {s}")
  log2_t = int(round(math.log2(s)))
  t = 2**log2_t
  L = math.ceil(s * s / t) + 1
  return Scale(log2_t, L)


@tf.autograph.experimental.do_not_convert
def acceptance_probability(scale: Scale) -> float:
  """P[one candidate is accepted] = (1 − e⁻¹)/(2t)·e^{−L/(2t)}·Σ_y exp(−y²/(2s²))."""
  s2 = scale.variance_parameter
  total = theta(s2)
  return (1 - math.exp(-1)) / (2 * scale.t) * math.exp(-scale.L / (2 * scale.t)) * total


@tf.autograph.experimental.do_not_convert
def theta(s2: float) -> float:
  """Σ_{y∈ℤ} exp(−y²/(2s²)): summed to ±(40s + 10) for s ≤ 64 (the rest is < 10⁻³⁴⁰ of
  it); above, by Poisson summation s√(2π)·(1 + 2Σ_{m≥1} exp(−2π²m²s²)), whose m ≥ 1 terms
  are below 10⁻³⁵⁰⁰⁰ (float64 keeps the leading term)."""
  s = math.sqrt(s2)
  if s > 64:
    return s * math.sqrt(2.0 * math.pi)
  top = int(40 * s) + 10
  return 1.0 + 2.0 * math.fsum(math.exp(-y * y / (2.0 * s2)) for y in range(1, top + 1))


@tf.autograph.experimental.do_not_convert
def log10_truncated_mass_bound(scale: Scale, max_abs: int) -> float:
  """log₁₀ of the tail bound: Σ_{|y|>m} e^{−y²/2s²} ≤ 2e^{−(m+1)²/2s²}/(1 − e^{−(m+1)/s²}),
  divided by θ = Σ_y e^{−y²/2s²} (the ratio of consecutive terms is ≤ e^{−(m+1)/s²} beyond m)."""
  s2 = scale.variance_parameter
  m1 = max_abs + 1
  ratio = math.exp(-m1 / s2)
  log_bound = math.log(2.0) - m1 * m1 / (2.0 * s2) - math.log1p(-ratio) - math.log(theta(s2))
  return log_bound / math.log(10.0)


class SamplerInfo(NamedTuple):
  """rounds: candidate rounds of the outer loop; candidates: candidates proposed (int64)."""

  rounds: tf.Tensor
  candidates: tf.Tensor


def _words(shape, seed) -> tf.Tensor:
  """Uniform 63-bit integers (int64 in [0, 2⁶³)) of `shape` under a stateless seed."""
  w = tf.random.stateless_uniform(shape, seed, minval=None, maxval=None, dtype=tf.int64)
  return tf.bitwise.bitwise_and(w, tf.constant(_MASK63, tf.int64))


def fold(seed, *values) -> tf.Tensor:
  """The [2] int64 seed of sub-stream `values` (in order) of `seed`: stateless_fold_in, a
  Philox hash, so distinct paths give independent streams."""
  seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
  for v in values:
    seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(v, tf.int32))
  return seed


def exp1_fresh(words: tf.Tensor) -> tf.Tensor:
  """The outcome of a fresh Bernoulli(e⁻¹) K-loop (CKS Alg. 1, γ = 1) from one word each.

  A word w < _EXP1_LIMIT gives the digits d₂…d₁₈ (module docstring); the loop stops at the
  first k with d_k ≠ 0, K = 1 + #{k ≥ 2 : d₂ = … = d_k = 0}, and returns [K odd].

  Returns int32 of words' shape: _SUCCESS (1), _FAIL (0), _REDRAW (the word is rejected:
  draw again) or _AT19 (d₂ = … = d₁₈ = 0: the loop goes on at k = 19).
  """
  flat = tf.reshape(words, [-1])
  passed = tf.searchsorted(tf.constant(_EXP1_THRESHOLDS, tf.int64), flat, side="right")
  # #{k : w < threshold_k} = 17 − #{thresholds ≤ w}; K = that + 2.
  zeros = 17 - tf.reshape(tf.cast(passed, tf.int32), tf.shape(words))
  outcome = tf.where(tf.equal(tf.math.floormod(zeros, 2), 1), _SUCCESS, _FAIL)
  outcome = tf.where(zeros >= 17, _AT19, outcome)
  return tf.where(words < _EXP1_LIMIT, outcome, _REDRAW)


def _exp1_step(words, k):
  """One word of a Bernoulli(e⁻¹) K-loop standing at radix k (2: fresh; ≥ 19: the loop
  went past d₁₈ and draws d_k alone, by rejection: w < k·⌊2⁶³/k⌋, d_k = 0 ⇔ w < ⌊2⁶³/k⌋).
  Returns (decided, result, next_k)."""
  fresh = tf.equal(k, 2)
  outcome = exp1_fresh(words)
  f_decided = tf.equal(outcome, _SUCCESS) | tf.equal(outcome, _FAIL)
  f_next = tf.where(tf.equal(outcome, _AT19), tf.constant(19, tf.int64), k)
  share = tf.math.floordiv(tf.constant(_INT64_MAX, tf.int64), k)
  ok = words < share * k
  zero = words < share
  decided = tf.where(fresh, f_decided, ok & ~zero)
  result = tf.where(fresh, tf.equal(outcome, _SUCCESS), tf.equal(tf.math.floormod(k, 2), 1))
  next_k = tf.where(fresh, f_next, tf.where(ok & zero, k + 1, k))
  return decided, result, next_k


def exp1_successes(target: tf.Tensor, seed, start_k=None) -> tf.Tensor:
  """Successes of independent Bernoulli(e⁻¹) trials before the first failure, stopping at
  `target` (int64 [P], ≥ 0): min(V, target) for V ~ P[V = v] = (1 − e⁻¹)e⁻ᵛ. Entries with
  target 0 draw nothing. start_k (int64 [P], default 2) resumes the first trial's K-loop at
  radix 19 (after `exp1_fresh` said _AT19). Runs until every entry is decided (no cap);
  only undecided entries draw words."""
  target = tf.convert_to_tensor(target, tf.int64)
  idx, k = _pending(target > 0, start_k, 2)

  def body(j, count, idx, k):
    words = _words(tf.shape(idx), fold(seed, j))
    decided, result, next_k = _exp1_step(words, k)
    success = decided & result
    cur = tf.gather(count, idx) + tf.cast(success, tf.int64)
    count = tf.tensor_scatter_nd_update(count, idx[:, None], cur)
    keep = ~((decided & ~result) | (success & (cur >= tf.gather(target, idx))))
    next_k = tf.where(success, tf.constant(2, tf.int64), next_k)
    return count, keep, next_k

  return _until_decided(body, tf.zeros_like(target), idx, k)


def _pending(active: tf.Tensor, start_k, default_k: int):
  """(int32 indices where `active`, their int64 radix: start_k there, else default_k)."""
  idx = tf.cast(tf.where(active)[:, 0], tf.int32)
  if start_k is None:
    return idx, tf.fill(tf.shape(idx), tf.constant(default_k, tf.int64))
  return idx, tf.gather(tf.convert_to_tensor(start_k, tf.int64), idx)


def _until_decided(body, state: tf.Tensor, idx: tf.Tensor, k: tf.Tensor) -> tf.Tensor:
  """Runs body(j, state, idx, k) → (state, keep, next_k) until no entry is left undecided;
  iteration j draws words under fold(seed, j), only for the entries still in idx."""

  def step(j, state, idx, k):
    state, keep, next_k = body(j, state, idx, k)
    return j + 1, state, tf.boolean_mask(idx, keep), tf.boolean_mask(next_k, keep)

  _, state, _, _ = tf.while_loop(
      lambda j, s, i, kk: tf.size(i) > 0, step, [tf.constant(0, tf.int64), state, idx, k],
      shape_invariants=[tf.TensorShape([]), state.shape, tf.TensorShape([None]),
                        tf.TensorShape([None])])
  return state


def _frac_draws(words, k, numerator, denominator: int):
  """Step k of Bernoulli(exp(−r/D))'s K-loop from one word: A_k ~ Bernoulli(r/(D·k)) as
  [U < r] ∧ [d = 0], U = w mod D uniform on [0, D) and d = ⌊w/D⌋ mod k uniform on [0, k),
  for w < q·D (q = ⌊2⁶³/D⌋) and ⌊w/D⌋ < ⌊q/k⌋·k (else the word is rejected).
  Returns (ok, a)."""
  q = 2**63 // denominator
  quotient = tf.math.floordiv(words, denominator)
  ok = (words <= q * denominator - 1) & (quotient < tf.math.floordiv(tf.constant(q, tf.int64), k) * k)
  below = tf.math.floormod(words, denominator) < numerator
  return ok, below & tf.equal(tf.math.floormod(quotient, k), 0)


def bernoulli_exp_fraction(numerator: tf.Tensor, denominator: int, active: tf.Tensor,
                           seed, start_k=None) -> tf.Tensor:
  """Bernoulli(exp(−r/D)) for integers 0 ≤ r < D (CKS Alg. 1) where `active`; False
  elsewhere. The loop stops at the first A_k = 0 (`_frac_draws`) and returns [k odd];
  start_k (int64 [P], default 1) resumes loops whose A_1 … A_{k−1} were all 1. No cap."""
  if not 1 <= denominator < 2**50:
    raise ValueError(f"denominator must be in [1, 2^50), got {denominator}")
  numerator = tf.convert_to_tensor(numerator, tf.int64)
  idx, k = _pending(active, start_k, 1)

  def body(j, out, idx, k):
    words = _words(tf.shape(idx), fold(seed, j))
    ok, a = _frac_draws(words, k, tf.gather(numerator, idx), denominator)
    decided = ok & ~a
    result = tf.equal(tf.math.floormod(k, 2), 1)
    out = tf.tensor_scatter_nd_update(out, tf.boolean_mask(idx, decided)[:, None],
                                      tf.boolean_mask(result, decided))
    return out, ~decided, tf.where(ok & a, k + 1, k)

  return _until_decided(body, tf.zeros(tf.shape(numerator), tf.bool), idx, k)


def _leading(outcome):
  """(number of leading _SUCCESS outcomes along axis 1, the outcome after them or −1)."""
  run = tf.math.cumprod(tf.cast(tf.equal(outcome, _SUCCESS), tf.int32), axis=1)
  lead = tf.reduce_sum(run, axis=1)
  width = int(outcome.shape[1])
  after = tf.gather(tf.pad(outcome, [[0, 0], [0, 1]], constant_values=-1),
                    tf.minimum(lead, width)[:, None], batch_dims=1)[:, 0]
  return tf.cast(lead, tf.int64), after


def _resume_k(after):
  """Where a pending Bernoulli(e⁻¹) chain resumes: radix 19 after _AT19, else a fresh trial."""
  return tf.where(tf.equal(after, _AT19), tf.constant(19, tf.int64), tf.constant(2, tf.int64))


def _scatter_rest(base, pending, values_fn):
  """base with the entries where `pending` replaced by values_fn(indices) (a [m] tensor)."""
  idx = tf.where(pending)
  return tf.tensor_scatter_nd_update(base, idx, values_fn(idx[:, 0]))


def _chain(count, seed):
  """V ~ P[V = v] = (1 − e⁻¹)e⁻ᵛ for `count` candidates: an unrolled first pass of
  _UNROLL_CHAIN words each, then `exp1_successes` (memoryless) for the chains it left open."""
  outcome = exp1_fresh(_words(tf.stack([count, _UNROLL_CHAIN]), fold(seed, _STAGE_CHAIN)))
  lead, after = _leading(outcome)
  pending = ~tf.equal(after, _FAIL)
  resume = _resume_k(after)
  return _scatter_rest(lead, pending, lambda i: tf.gather(lead, i) + exp1_successes(
      tf.fill(tf.shape(i), tf.constant(_INT64_MAX, tf.int64)),
      fold(seed, _STAGE_CHAIN_REST), tf.gather(resume, i)))


def _target(need, valid, seed):
  """[need successive Bernoulli(e⁻¹) successes] where valid (need int64 ≥ 0)."""
  outcome = exp1_fresh(_words(tf.stack([tf.size(need), _UNROLL_TARGET]),
                              fold(seed, _STAGE_TARGET)))
  lead, after = _leading(outcome)
  passed = valid & (lead >= need)
  pending = valid & ~passed & ~tf.equal(after, _FAIL)
  remaining = need - lead
  resume = _resume_k(after)
  return _scatter_rest(passed, pending, lambda i: exp1_successes(
      tf.gather(remaining, i), fold(seed, _STAGE_TARGET_REST), tf.gather(resume, i))
      >= tf.gather(remaining, i))


def _fraction(rest, denominator: int, active, seed):
  """Bernoulli(exp(−rest/D)) where active: an unrolled first pass of the K-loop's first
  _UNROLL_FRAC steps, then `bernoulli_exp_fraction` for the loops it left open."""
  words = _words(tf.stack([tf.size(rest), _UNROLL_FRAC]), fold(seed, _STAGE_FRAC))
  k = tf.range(1, _UNROLL_FRAC + 1, dtype=tf.int64)[None, :]
  ok, a = _frac_draws(words, k, rest[:, None], denominator)
  go_on = tf.cast(ok & a, tf.int32)
  lead = tf.reduce_sum(tf.math.cumprod(go_on, axis=1), axis=1)            # A_1 … A_lead = 1
  stop_ok = tf.gather(tf.pad(ok, [[0, 0], [0, 1]]), lead[:, None], batch_dims=1)[:, 0]
  decided = stop_ok                               # word lead+1 valid with A = 0: K = lead+1
  result = tf.equal(tf.math.floormod(lead, 2), 0)
  out = active & decided & result
  pending = active & ~decided
  start = tf.cast(lead, tf.int64) + 1
  return _scatter_rest(out, pending, lambda i: bernoulli_exp_fraction(
      tf.gather(rest, i), denominator, tf.ones(tf.shape(i), tf.bool),
      fold(seed, _STAGE_FRAC_REST), tf.gather(start, i)))


def _candidates(count, scale: Scale, max_abs: int, seed):
  """`count` i.i.d. candidates: (values Y int64 [count], accepted bool [count])."""
  t, a, L = scale.t, scale.log2_t, scale.L
  w0 = _words(tf.reshape(count, [1]), fold(seed, _STAGE_PROPOSAL))
  u = tf.bitwise.bitwise_and(w0, tf.constant(t - 1, tf.int64))
  sign = tf.bitwise.bitwise_and(tf.bitwise.right_shift(w0, tf.constant(a, tf.int64)), 1)
  v = _chain(count, seed)
  in_range = v <= (max_abs // t)              # else X > max_abs (and t·V could overflow)
  x = tf.where(in_range, u + t * tf.minimum(v, max_abs // t), 0)
  valid = in_range & (x <= max_abs) & ~(tf.equal(sign, 1) & tf.equal(x, 0))
  w = x - L
  numerator = 2 * L * u + w * w               # < 2⁴⁹: x ≤ 2²⁴, L, u < 2²⁴
  denominator = 2 * t * L
  whole = tf.where(valid, tf.math.floordiv(numerator, denominator), 0)
  rest = tf.math.floormod(numerator, denominator)
  passed = _target(whole, valid, seed)
  return (1 - 2 * sign) * x, passed & _fraction(rest, denominator, passed, seed)


def sample(shape, scale: Scale, seed, max_abs: int = MAX_ABS_LIMIT):
  """i.i.d. N_ℤ(0, s²) conditioned on |Z| ≤ max_abs, of `shape`, from the stateless seed.

  Args:
    shape: the output shape (static or a 1-D int tensor).
    scale: s² = t·L (`scale_parameters`).
    seed: [2] int64 stateless seed (the mechanism passes the step's secret-key seed).
    max_abs: the largest |Z| kept, 40·s ≤ max_abs ≤ 2²⁴ − 1.

  Returns:
    (samples int64 of `shape`, SamplerInfo).
  """
  if not MIN_STDS_KEPT * scale.scale <= max_abs <= MAX_ABS_LIMIT:
    raise ValueError(f"max_abs={max_abs} must be in [{MIN_STDS_KEPT}·s, 2^24 − 1] for s = "
                     f"{scale.scale:.6g}")
  seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
  shape = tf.convert_to_tensor(shape, tf.int32)
  size = tf.reduce_prod(shape)
  p = acceptance_probability(scale)

  def body(r, out, proposed):
    missing = tf.cast(size - tf.size(out), tf.float64)
    # Enough candidates that one round almost always suffices (mean + 6 sd + 64).
    count = tf.cast(tf.math.ceil(missing / p + 6.0 * tf.sqrt(missing / p) + 64.0), tf.int32)
    values, accepted = _candidates(count, scale, max_abs, fold(seed, r))
    out = tf.concat([out, tf.boolean_mask(values, accepted)], axis=0)
    return r + 1, out, proposed + tf.cast(count, tf.int64)

  rounds, out, proposed = tf.while_loop(
      lambda r, out, c: tf.size(out) < size, body,
      [tf.constant(0, tf.int64), tf.zeros([0], tf.int64), tf.constant(0, tf.int64)],
      shape_invariants=[tf.TensorShape([]), tf.TensorShape([None]), tf.TensorShape([])])
  return tf.reshape(out[:size], shape), SamplerInfo(rounds, proposed)

"""Exact, keyed sampling of the discrete Gaussian N_ℤ(0, s²) in TensorFlow.

The discrete Gaussian with scale s on the integers (Canonne, Kamath & Steinke 2020, "The
Discrete Gaussian for Differential Privacy", CKS below) is

  P[Z = z] = exp(−z²/(2s²)) / Σ_{y∈ℤ} exp(−y²/(2s²)),   z ∈ ℤ.              (CKS eq. 1)

Here s² = t·L with t = 2^a a power of two and L ≥ 1 an integer (`scale_parameters` picks
them for a wanted s; s is then never below the wanted value).

The sampler is CKS Algorithm 3 (rejection from a discrete Laplace proposal) with the
Laplace's own rejection step merged into the final one:

  1. U uniform on {0, …, t−1} and a sign bit B (a + 1 bits of a word: no rejection).
  2. V ~ Geometric: the number of successes of Bernoulli(e⁻¹) trials before the first failure
     (P[V = v] = (1 − e⁻¹)·e⁻ᵛ); X = U + t·V, Y = (1 − 2B)·X; (B = 1, X = 0) is rejected.
  3. Accept Y with probability exp(−E),

       E = U/t + (X − L)²/(2tL) = (2L·U + (X − L)²) / D,   D = 2tL      (a rational number),

     decided as ⌊E⌋ successive Bernoulli(e⁻¹) successes and one Bernoulli(exp(−r/D)),
     r = (2L·U + (X − L)²) mod D.

Why it is exact. P[U = u, V = v, B = b]·exp(−E) = (1 − e⁻¹)/(2t) · exp(−v − u/t) ·
exp(−(x − L)²/(2tL)) with x = u + tv, and x/t + (x − L)²/(2tL) = (x² + L²)/(2tL), so an
accepted Y = y has probability ∝ exp(−y²/(2tL)) = exp(−y²/(2s²)): CKS eq. 1 (y = 0 arises
from B = 0 only). Steps 1 and 3 are CKS Algorithm 2 (discrete Laplace of scale t: U accepted
with exp(−U/t)) and CKS Algorithm 3's test exp(−(|Y| − s²/t)²/(2s²)), whose two acceptance
probabilities multiply into exp(−E). The acceptance probability of one candidate is
(1 − e⁻¹)/(2t) · e^{−L/(2t)} · Σ_y exp(−y²/(2s²)) (`acceptance_probability`), ≈ 0.40–0.48 for
s ≥ 10 with the t = 2^a nearest s (lower for some small s, where L's +1 weighs: 0.31 at
s = 1.2, 0.39 at s = 5.6).

Bernoulli(exp(−γ)) for rational γ ∈ [0, 1] is CKS Algorithm 1: K ← 1; while
Bernoulli(γ/K) = 1: K ← K + 1; return [K odd]; so P[K > k] = γᵏ/k!.

Every Bernoulli is decided exactly by integer comparisons, no floating point anywhere:

  * Lazy comparison. A c-bit field f of random bits is the first c bits of a uniform
    W ∈ [0, 1), W = (f + W′)/2ᶜ with W′ uniform and independent of f. Bernoulli(p/q) for
    integers 0 ≤ p < q is [W < p/q]: it is 1 if (f + 1)·q ≤ p·2ᶜ, 0 if f·q ≥ p·2ᶜ, and
    otherwise (one value of f, probability < 2⁻ᶜ) it equals [W′ < p′/q] with
    p′ = p·2ᶜ − f·q ∈ (0, q): a Bernoulli of the same kind, decided by the next field
    (`_PENDING`). Exact for every outcome, with no cap: a pending comparison waits for
    fresh fields until it is decided.
  * A Bernoulli(e⁻¹) trial (γ = 1) from one field: with W uniform, K = min{k ≥ 2 : W ≥ 1/k!}
    has P[K > k] = 1/k!, CKS Algorithm 1's law for γ = 1, and the trial succeeds iff K is
    odd. With m_k = ⌊2ᶜ/k!⌋ (k = 2 … k_max, the last k with m_k ≥ 1) a field f < m_k means
    W < 1/k! and f > m_k means W > 1/k!, so f decides K unless f = m_k for some k ≥ 3
    (then K ∈ {k, k + 1}, K = k + 1 with probability ρ_k/k!, ρ_k = 2ᶜ − m_k·k!: a pending
    comparison, `_CELL`) or f < m_{k_max}. Then K > k_max, and W is uniform on
    [0, m_{k_max}/2ᶜ), so P[K > k_max + 1 | f] = 2ᶜ/(m_{k_max}·(k_max + 1)!) (for c = 16:
    2¹⁶/9!): a pending comparison of that ratio (origin `_TRIAL`, k = k_max + 1); if it
    holds the loop goes on at radix k_max + 2, one Bernoulli(1/k) per field,
    P[K > k | K > k − 1] = 1/k.
  * A step of Bernoulli(exp(−r/D))'s loop, A_k ~ Bernoulli(r/(D·k)), is one lazy comparison
    for k ≤ 64; beyond (probability < 1/64!), it is Bernoulli(1/k) then Bernoulli(r/D),
    two comparisons, so every product stays below 2⁶³ (D < 2⁴¹; a radix k would need 2⁴⁷
    steps to reach 2⁴⁷).

Each candidate is a small state machine (`_step`: stage chain, target, fraction or done, and
the comparison in progress) that consumes one 16-bit field per step, in a fixed order:
which decision a field serves depends only on the fields before it, so every field is a
fresh uniform when it is used (fields of decided candidates are simply left unread).

Vectorised, in two phases with fixed shapes, so that XLA compiles them
(`tf.function(jit_compile=True)`; `jit=False` runs the same ops, with the same values,
without XLA):

  Phase 1 (`_fast`). Every candidate gets three 64-bit words: U and B from the low a + 1
    bits, then ten 16-bit fields (for t = 2¹⁸). The outcome is computed field by field
    without the machine's state: the chain is the run of leading trial successes, then
    the target's trials and the fraction's steps on the fields after it. It equals the
    machine's outcome wherever it decides (tested); a candidate that meets a cell, a
    pending comparison or the end of its fields (~0.1 %) is left undecided, with where
    the machine goes on (stage, field, V).
  Phase 2 (`_settle`, in the same XLA program). The undecided candidates, in index order,
    in chunks of 64: the machine resumes each from the state phase 1 left it in, reads the
    rest of its own fields, then one fresh field per step, until every one is decided (a
    while loop, no cap). Fixed shapes throughout: the chunks are found by a running count
    and a binary search, and the results gathered back by rank.

Candidates are drawn in rounds: each round proposes `count` i.i.d. candidates (enough for
the samples still missing with a margin, rounded up to one of a few sizes so that XLA
compiles a handful of shapes), decides every one of them, and appends the accepted ones in
candidate order. The accepted candidates of an i.i.d. sequence are i.i.d. draws of the
target, so the first `size` accepted ones are exact samples, whatever the count.

Randomness. Every word is a Philox output (`_words`) under a seed derived by `fold` from the
caller's [2] int64 `seed` (for the mechanism: the run's secret key, the step and a stream
name, `privacy.keys`) and the position (round, phase, chunk, iteration): the samples are a
deterministic function of the seed, never of process state, and different (key, step,
stream) give independent draws. All 128 bits count: a seed [s₀, s₁] is Philox's 64-bit key
s₀ and the high half s₁ of its 128-bit counter, set explicitly (TF's V2 random ops), and
`fold` maps (seed, v) to the 128-bit Philox block at counter (v, s₁) under key s₀ ⊕
`_FOLD_KEY` — the same words with and without XLA. (TF's `stateless_fold_in` keeps 32 bits
of hash plus the public v, and XLA's stateless ops read only the low 32 bits of each seed
word: with those, a step's noise would be a function of 32 secret bits, and two steps'
noise seeds would collide after ~2¹⁶ steps.)

Range. Integers are int64. A candidate with X > max_abs is rejected (as soon as V shows
it), so the output is N_ℤ(0, s²) conditioned on |Z| ≤ max_abs — exactly. `max_abs` must be
≥ 40·s (checked), where the mass left out is P[|Z| > 40s] < 2·exp(−800) < 10⁻³⁴⁷
(`log10_truncated_mass_bound`); the mechanism (`privacy.lattice`) accounts for it. All
products stay below 2⁶³: max_abs < 2²⁴, s² < 2⁴⁰ (checked), so 2L·U + (X − L)² < 2⁴⁹ and
D < 2⁴¹.
"""

import dataclasses
import functools
import math
from typing import NamedTuple

import numpy as np
import tensorflow as tf

MAX_ABS_LIMIT = 2**24 - 1      # |Z| ≤ this: every value is an exact float32 integer
MIN_STDS_KEPT = 40             # max_abs ≥ 40·s
MAX_ROUND = 2**19              # candidates per round at most (bounds memory and compiles)
_SMALL_ROUND_LOG2 = 13         # rounds of ≤ 2^13 candidates: powers of two
PHASE1_WORDS = 3               # 64-bit words per candidate in phase 1
_FIELD = 16                    # bits of a field
_FIELDS_PER_WORD = 4
PHASE2_CAPACITY = 64           # candidates per phase-2 chunk
_FRAC_DIRECT_MAX = 64          # A_k in one comparison for k ≤ this (D·k·2¹⁶ < 2⁶³)
# Stages of a candidate.
_CHAIN, _TARGET, _FRACTION, _REJECT, _ACCEPT, _UNDECIDED = 0, 1, 2, 3, 4, 5
# The comparison in progress: _TRIAL (radix k: 2 = a fresh trial, ≥ 3 Bernoulli(1/k)),
# _FRAC (A_k in one comparison), _FRACK / _FRACF (A_k as Bernoulli(1/k), then Bernoulli(r/D)),
# _PENDING (a lazy comparison [W < num/den] started by `origin`, or by a fresh trial's cell:
# _CELL).
_TRIAL, _FRAC, _FRACK, _FRACF, _PENDING, _CELL = 0, 1, 2, 3, 4, 5


@dataclasses.dataclass(frozen=True)
class Scale:
  """s² = t·L: t = 2^log2_t (a power of two), 1 ≤ L ≤ 16t + 16 (so L < 2²² under s² < 2⁴⁰,
  and the acceptance factor e^{−L/(2t)} ≥ e^{−16}); both Python ints."""

  log2_t: int
  L: int

  def __post_init__(self):
    if self.log2_t < 0 or self.L < 1:
      raise ValueError(f"discrete Gaussian scale needs t = 2^a ≥ 1 and L ≥ 1, got "
                       f"a={self.log2_t}, L={self.L}")
    if self.t * self.L >= 2**40:
      raise ValueError(f"discrete Gaussian scale s² = {self.t * self.L} must be < 2^40")
    if self.L > 16 * self.t + 16:  # scale_parameters gives L ≤ 2t + 2
      raise ValueError(f"discrete Gaussian scale needs L ≤ 16t + 16 (t near s), got t={self.t}, "
                       f"L={self.L}: the 2⁴⁹ bound on E and the acceptance rate hold only there")

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
  float rounding): s' ≥ s with s'/s − 1 < t/s² ≤ √2/s (s'² ≤ s² + 2t)."""
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


_PHILOX = 1  # tf.random.Algorithm.PHILOX
# XORed into a seed's key when it is folded, so a fold's blocks are never words the same
# seed draws (`_words` uses key s₀, `fold` key s₀ ⊕ _FOLD_KEY); a fixed arbitrary constant.
_FOLD_KEY = 0x5DEECE66D2B7E151


def _philox(shape, key, counter_low, counter_high) -> tf.Tensor:
  """Philox-4×32 outputs of `shape` as int64 words (every bit random) under the 64-bit key
  and the 128-bit counter (low, high): TF's V2 op, the same words with and without XLA."""
  key = tf.bitcast(tf.reshape(tf.cast(key, tf.int64), [1]), tf.uint64)
  counter = tf.bitcast(tf.stack([tf.cast(counter_low, tf.int64),
                                 tf.cast(counter_high, tf.int64)]), tf.uint64)
  return tf.raw_ops.StatelessRandomUniformFullIntV2(shape=shape, key=key, counter=counter,
                                                    alg=_PHILOX, dtype=tf.int64)


def fold(seed, *values) -> tf.Tensor:
  """The [2] int64 seed of sub-stream `values` (in order) of `seed`: for each v, the 128-bit
  Philox block at counter (v, s₁) under key s₀ ⊕ _FOLD_KEY (module docstring), so distinct
  paths give independent streams and the result keeps 128 secret bits. v: integers ≥ 0."""
  seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
  for v in values:
    key = tf.bitwise.bitwise_xor(seed[0], tf.constant(_FOLD_KEY, tf.int64))
    seed = _philox([2], key, tf.cast(v, tf.int64), seed[1])
  return seed


def uniform_float64(shape, seed) -> tf.Tensor:
  """Uniform float64 on the grid 2⁻⁵³ℤ ∩ [0, 1) of `shape` under the [2] int64 seed: the top
  53 bits of `_words` (TF's float64 V2 op differs between XLA and its kernels; this does
  not)."""
  top = tf.bitwise.right_shift(_words(shape, seed), _I(11))  # arithmetic: mask the sign
  top = tf.bitwise.bitwise_and(top, _I(2**53 - 1))
  return tf.cast(top, tf.float64) * 2.0**-53


def _I(value: int) -> tf.Tensor:
  return tf.constant(value, tf.int64)


def _words(shape, seed) -> tf.Tensor:
  """Uniform 64-bit words (int64, all bits random) of `shape` under the [2] int64 seed
  [s₀, s₁]: Philox with key s₀ and counter (position, s₁), all 128 bits of the seed used."""
  seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
  return _philox(shape, seed[0], 0, seed[1])


def _field(words: tf.Tensor, shift, width: int = 16) -> tf.Tensor:
  """Bits shift … shift + width − 1 of each word, as an int64 in [0, 2^width)."""
  return tf.bitwise.bitwise_and(tf.bitwise.right_shift(words, tf.cast(shift, tf.int64)),
                                tf.constant(2**width - 1, tf.int64))


@functools.lru_cache(maxsize=None)
def trial_table(width: int = 16):
  """For a Bernoulli(e⁻¹) trial from a `width`-bit field (module docstring): (m, k_max,
  rho, fact) with m = [m_2, …, m_{k_max}], m_k = ⌊2^width/k!⌋, and rho[k] = 2^width − m_k·k!,
  fact[k] = k! for k ≤ k_max (indexable by k)."""
  m = []
  while 2**width // math.factorial(len(m) + 2) >= 1:
    m.append(2**width // math.factorial(len(m) + 2))
  k_max = len(m) + 1
  # Each cell [m_k, m_k + 1) holds the threshold 2^width/k! and no other one (so a field at
  # m_k leaves K ∈ {k, k + 1}); 2^width/2 is exact (m_2 decides K = 2 alone).
  if k_max < 3 or any(m[i] < m[i + 1] + 1 for i in range(len(m) - 1)):
    raise ValueError(f"field width {width} too small for a Bernoulli(e^-1) trial")
  rho = [0, 0] + [2**width - m[k - 2] * math.factorial(k) for k in range(2, k_max + 1)]
  fact = [1, 1] + [math.factorial(k) for k in range(2, k_max + 1)]
  return m, k_max, rho, fact


class _Consts(NamedTuple):
  t: int
  log2_t: int
  L: int
  D: int
  max_abs: int
  v_max: int

  @property
  def first_field(self) -> int:
    """The first 16-bit field of a candidate's words above U and B (its low a + 1 bits)."""
    return -(-(self.log2_t + 1) // _FIELD)

  @property
  def phase1_fields(self) -> int:
    """Fields of a candidate's phase-1 words after U and B (eleven for a ≤ 15, ten for 16 ≤ a ≤ 31)."""
    return _FIELDS_PER_WORD * PHASE1_WORDS - self.first_field


def _consts(scale: Scale, max_abs: int) -> _Consts:
  return _Consts(scale.t, scale.log2_t, scale.L, 2 * scale.t * scale.L, max_abs,
                 max_abs // scale.t)


def _candidate_field(words: tf.Tensor, j) -> tf.Tensor:
  """Field j (16 bits) of each row of words [n, PHASE1_WORDS]: bits 16·(j mod 4) … of word
  ⌊j/4⌋ (j may be a tensor)."""
  word = tf.gather(words, j // _FIELDS_PER_WORD, axis=1)
  return _field(word, _FIELD * (j % _FIELDS_PER_WORD))


_STATE = ("stage", "prim", "k", "v", "need", "rest", "num", "den", "origin", "u", "sign")


def _initial_state(words: tf.Tensor, c: _Consts) -> dict:
  """Candidates at the start of their chain: U and B from the low a + 1 bits of words[:, 0]."""
  first = words[:, 0]
  zeros = tf.zeros_like(first)
  state = {key: zeros for key in _STATE}
  state["stage"] = zeros + _CHAIN
  state["prim"] = zeros + _TRIAL
  state["k"] = zeros + 2
  state["u"] = _field(first, 0, c.log2_t) if c.log2_t else zeros
  state["sign"] = _field(first, c.log2_t, 1)
  return state


def _chain_end(u, sign, v, c: _Consts):
  """At the chain's first failure with V = v: (x, valid, ⌊E⌋, r) (int64), E = e/D,
  e = 2L·U + (X − L)², r = e mod D; `valid` is False for X > max_abs and for (B = 1, X = 0)."""
  x = u + c.t * v                                    # ≤ max_abs + t: no overflow
  valid = (x <= c.max_abs) & ~(tf.equal(sign, 1) & tf.equal(x, 0))
  w = tf.minimum(x, c.max_abs) - c.L
  e = 2 * c.L * u + w * w                            # < 2⁴⁹
  return x, valid, tf.math.floordiv(e, c.D), tf.math.floormod(e, c.D)


def _step(st: dict, f: tf.Tensor, c: _Consts) -> dict:
  """One step of every running candidate's state machine, deciding with the 16-bit field f
  (int64 [n]): the reference semantics of the sampler (phase 2 runs it; phase 1 computes
  the same outcomes for the candidates it decides)."""
  width = _FIELD
  i64 = tf.int64
  stage, prim, k = st["stage"], st["prim"], st["k"]
  running = stage < _REJECT
  m, k_max, rho, fact = trial_table(width)

  # A fresh trial: K from the thresholds m_k.
  fresh = running & tf.equal(prim, _TRIAL) & tf.equal(k, 2)
  cell_k = 2 + tf.add_n([tf.cast(f < mk, i64) for mk in m])
  at_cell = tf.zeros_like(fresh)
  for mk in m[1:]:
    at_cell = at_cell | tf.equal(f, mk)
  beyond = f < m[-1]
  fresh_done = fresh & ~at_cell & ~beyond

  # Every other step: one lazy comparison [W < num/den].
  pending = tf.equal(prim, _PENDING)
  origin = tf.where(pending, st["origin"], prim)
  uses_rest = tf.equal(prim, _FRAC) | tf.equal(prim, _FRACF)
  num = tf.where(pending, st["num"], tf.where(uses_rest, st["rest"], tf.ones_like(k)))
  den = tf.where(pending, st["den"],
                 tf.where(tf.equal(prim, _FRAC), c.D * k,
                          tf.where(tf.equal(prim, _FRACF), _I(c.D), k)))
  compare = running & ~fresh
  yes, no, scaled = compare_field(f, num, den)
  decided = compare & (yes | no)
  undecided = compare & ~yes & ~no

  # Trial results (chain and target stages) and the radix steps of a trial's K-loop.
  radix = decided & tf.equal(origin, _TRIAL)
  cell = decided & tf.equal(origin, _CELL)
  trial_done = fresh_done | (radix & no) | cell
  trial_k = tf.where(fresh_done, cell_k, tf.where(cell & yes, k + 1, k))
  radix_on = radix & yes
  odd = tf.equal(tf.bitwise.bitwise_and(trial_k, 1), 1)
  success, failure = trial_done & odd, trial_done & ~odd

  # Fraction steps: A_k = 0 ends the loop at K = k.
  frac = decided & (tf.equal(origin, _FRAC) | tf.equal(origin, _FRACK) |
                    tf.equal(origin, _FRACF))
  frac_end = frac & no
  frac_on = frac & yes
  k_odd = tf.equal(tf.bitwise.bitwise_and(k, 1), 1)

  # Stage transitions.
  chain, target = tf.equal(stage, _CHAIN), tf.equal(stage, _TARGET)
  c_success, c_failure = success & chain, failure & chain
  t_success, t_failure = success & target, failure & target
  v = st["v"] + tf.cast(c_success, i64)
  too_far = c_success & (v > c.v_max)                # X > max_abs whatever U
  _, valid, need0, rest0 = _chain_end(st["u"], st["sign"], st["v"], c)
  end_reject = c_failure & ~valid
  end_frac = c_failure & valid & tf.equal(need0, 0)
  end_target = c_failure & valid & (need0 > 0)
  need = tf.where(end_target, need0, st["need"] - tf.cast(t_success, i64))
  to_frac = end_frac | (t_success & tf.equal(need, 0))
  new_trial = (c_success & ~too_far) | end_target | (t_success & ~to_frac)
  rest = tf.where(c_failure, rest0, st["rest"])

  reject = too_far | end_reject | t_failure | (frac_end & ~k_odd)
  accept = frac_end & k_odd
  stage = tf.where(reject, _I(_REJECT), tf.where(accept, _I(_ACCEPT), tf.where(
      to_frac, _I(_FRACTION), tf.where(end_target, _I(_TARGET), stage))))

  # The next comparison of each candidate.
  p = tf.where(to_frac, _I(_FRAC), tf.where(new_trial | radix_on, _I(_TRIAL), prim))
  kk = tf.where(to_frac, _I(1), tf.where(new_trial, _I(2), tf.where(radix_on, k + 1, k)))
  direct = tf.equal(origin, _FRAC)
  p = tf.where(frac_on, tf.where(direct & (k < _FRAC_DIRECT_MAX), _I(_FRAC), tf.where(
      tf.equal(origin, _FRACK), _I(_FRACF), _I(_FRACK))), p)
  kk = tf.where(frac_on & ~tf.equal(origin, _FRACK), k + 1, kk)
  to_cell = fresh & at_cell
  to_beyond = fresh & beyond
  # Below m_{k_max}: [K > k_max + 1] given W < m_{k_max}/2ᶜ (module docstring), pending.
  p = tf.where(to_cell | undecided | to_beyond, _I(_PENDING), p)
  kk = tf.where(to_cell, cell_k, tf.where(to_beyond, _I(k_max + 1), kk))
  num = tf.where(to_cell, tf.gather(tf.constant(rho, i64), tf.minimum(cell_k, k_max)),
                 tf.where(to_beyond, _I(2**width),
                          tf.where(undecided, scaled - f * den, st["num"])))
  den = tf.where(to_cell, tf.gather(tf.constant(fact, i64), tf.minimum(cell_k, k_max)),
                 tf.where(to_beyond, _I(m[-1] * math.factorial(k_max + 1)),
                          tf.where(undecided, den, st["den"])))
  new_origin = tf.where(to_cell, _I(_CELL), tf.where(
      to_beyond, _I(_TRIAL), tf.where(undecided, origin, st["origin"])))

  out = dict(st)
  out.update(stage=stage, prim=p, k=kk, v=v, need=need, rest=rest, num=num, den=den,
             origin=new_origin)
  return out


def compare_field(f, num, den):
  """The lazy comparison [W < num/den] (0 ≤ num < den < 2⁴⁷) from the 16-bit field f, the
  first bits of W: (yes, no, num·2¹⁶). Neither: W′ < (num·2¹⁶ − f·den)/den decides."""
  scaled = num * 2**_FIELD
  return (f + 1) * den <= scaled, f * den >= scaled, scaled


def _trial_codes(f):
  """Fresh Bernoulli(e⁻¹) trials from 16-bit fields f (int32, any shape): (success, failure);
  neither where f sits on a cell or below m_{k_max} (the machine then goes on)."""
  m, _, _, _ = trial_table(_FIELD)
  below = tf.add_n([tf.cast(f < mk, tf.int32) for mk in m])        # K − 2
  irregular = f < m[-1]
  for mk in m[1:]:
    irregular = irregular | tf.equal(f, mk)
  odd = tf.equal(tf.bitwise.bitwise_and(below, 1), 1)              # K = below + 2 odd
  return ~irregular & odd, ~irregular & ~odd


def _pack(status, stage, start, v) -> tf.Tensor:
  """One int64 per candidate: status (3 bits), the stage (3) and field `start` (10) where
  phase 2 resumes an undecided one, and V (the chain's successes) from bit 16. XLA would
  recompute phase 1 once per output array: one output computes it once."""
  parts = [tf.cast(p, tf.int64) for p in (status, stage, start, v)]
  return parts[0] + parts[1] * 2**3 + parts[2] * 2**6 + parts[3] * 2**16


def _unpack(packed):
  """(status, stage, start, v) of `_pack`."""
  return (_field(packed, 0, 3), _field(packed, 3, 3), _field(packed, 6, 10),
          tf.bitwise.right_shift(packed, _I(16)))


def _fast(words: tf.Tensor, c: _Consts):
  """Phase 1: the outcome of every candidate that the state machine (`_step`) decides within
  the candidate's own words with no pending comparison, computed field by field without the
  machine's state, `_pack`ed: status _ACCEPT, _REJECT or _UNDECIDED, and V; for an
  undecided candidate, the stage (_CHAIN, _TARGET or _FRACTION) and the phase-1 field
  `start` at which the machine goes on (the field phase 1 could not decide, or
  phase1_fields when they ran out), from which its state follows (`_resume`): every field
  before it was a chain trial, a target trial or a fraction step, in that order."""
  i32 = tf.int32
  n_fields = c.phase1_fields
  first = words[:, 0]
  u = _field(first, 0, c.log2_t) if c.log2_t else tf.zeros_like(first)
  sign = _field(first, c.log2_t, 1)
  fields = [tf.cast(_candidate_field(words, c.first_field + j), i32) for j in range(n_fields)]
  codes = [_trial_codes(f) for f in fields]

  # The chain: V = the leading successes, ended by a failure (else undecided).
  lead = tf.zeros_like(fields[0])
  going = tf.ones_like(fields[0], tf.bool)
  for success, _ in codes:
    going = going & success
    lead += tf.cast(going, i32)
  ended = tf.zeros_like(going)
  for j, (_, failure) in enumerate(codes):
    ended = ended | (tf.equal(lead, j) & failure)
  too_far = lead > c.v_max
  _, valid, need, rest = _chain_end(u, sign, tf.cast(lead, tf.int64), c)
  # A_k = [W < rest/(D·k)] ⇔ [W·k < rest/D]: yes iff (f + 1)·k ≤ g, no iff f·k ≥ g + [h > 0],
  # g = ⌊rest·2¹⁶/D⌋, h = rest·2¹⁶ mod D (the machine's comparison with both sides over D).
  g = tf.math.floordiv(rest * 2**_FIELD, c.D)
  g_up = tf.cast(g + tf.cast(tf.math.floormod(rest * 2**_FIELD, c.D) > 0, tf.int64), i32)
  g = tf.cast(g, i32)
  no_need = tf.equal(need, 0)
  # mode: _CHAIN for a chain still undecided at field `lead` (irregular, or past the fields).
  mode = tf.where(too_far | (ended & ~valid), _REJECT, tf.where(
      ended, tf.where(no_need, _FRACTION, _TARGET), _CHAIN))
  stuck = tf.equal(mode, _CHAIN)
  start = lead
  # count: successes still needed (target), or k (fraction); need > n_fields cannot pass here.
  count = tf.where(no_need, 1, tf.cast(tf.minimum(need, n_fields + 1), i32))

  # Then the target's trials and the fraction's steps on the fields after the chain's end.
  for j, (f, (success, failure)) in enumerate(zip(fields, codes)):
    after = (lead < j) & ~stuck
    target = after & tf.equal(mode, _TARGET)
    frac = after & tf.equal(mode, _FRACTION)
    yes = (f + 1) * count <= g
    no = f * count >= g_up
    odd = tf.equal(tf.bitwise.bitwise_and(count, 1), 1)
    met = target & success & tf.equal(count, 1)
    now_stuck = (target & ~success & ~failure) | (frac & ~yes & ~no)
    stuck = stuck | now_stuck
    start = tf.where(now_stuck, j, start)
    mode = tf.where(target & failure, _REJECT, tf.where(
        met, _FRACTION, tf.where(frac & no, tf.where(odd, _ACCEPT, _REJECT), mode)))
    count = tf.where(met, 1, tf.where((target & success) | (frac & yes), count + tf.where(
        target, -1, 1), count))
  running = tf.equal(mode, _TARGET) | tf.equal(mode, _FRACTION)
  start = tf.where(running & ~stuck, n_fields, start)
  status = tf.where(stuck | running, _UNDECIDED, mode)
  return _pack(status, mode, start, lead)


def _resume(own, stage, start, v, c: _Consts) -> dict:
  """The state machine's state at field `start` of candidates with words `own`, left by
  phase 1 in `stage` after V = v chain successes (int64 [m] each)."""
  st = _initial_state(own, c)
  _, _, need, rest = _chain_end(st["u"], st["sign"], v, c)
  target, frac = tf.equal(stage, _TARGET), tf.equal(stage, _FRACTION)
  st.update(stage=stage, v=v,
            need=tf.where(target, need - (start - v - 1), 0),    # successes since field v + 1
            rest=tf.where(target | frac, rest, 0),
            prim=tf.where(frac, _I(_FRAC), _I(_TRIAL)),
            k=tf.where(frac, start - v - need, 2))               # A_1 at field v + 1 + need
  return st


def _phase2(words, packed, seed, c: _Consts):
  """Steps the undecided candidates among the rows (words [m, PHASE1_WORDS], packed [m])
  through the state machine from the state phase 1 left them in (`_resume`): first their
  own remaining phase-1 fields, in order, then one fresh 16-bit field per step (the i-th
  under fold(seed, i)), until every one of them is decided. Returns `packed` with every
  status decided and V final; decided rows are left as they are."""
  n_fields = c.phase1_fields
  status, stage, start, v = _unpack(packed)
  undecided = tf.equal(status, _UNDECIDED)
  st = _resume(words, tf.where(undecided, stage, _I(_REJECT)), start, v, c)

  def steps(i, st):
    fresh = _field(_words(tf.shape(packed), fold(seed, i)), 0)
    j = tf.minimum(start + i, n_fields - 1) + c.first_field
    word = tf.gather(words, j // _FIELDS_PER_WORD, batch_dims=1)
    replay = _field(word, _FIELD * (j % _FIELDS_PER_WORD))
    return i + 1, _step(st, tf.where(start + i < n_fields, replay, fresh), c)

  _, st = tf.while_loop(lambda i, st: tf.reduce_any(st["stage"] < _REJECT), steps,
                        [tf.constant(0, tf.int64), st])
  return tf.where(undecided, _pack(st["stage"], 0, 0, st["v"]), packed)


def _block_prefix(x: tf.Tensor) -> tf.Tensor:
  """Inclusive running sums of small non-negative int32 [n] (n ≤ 128³, sums < 2²⁴) in fixed
  shapes: within blocks of 128 by a product with a triangular 0/1 matrix (exact in
  float32), the block totals likewise, then a log-step scan of ≤ 128 totals. (XLA's cumsum
  is quadratic on CPU, its scatter and sort serial.)"""
  block = 128
  triangle = tf.cast(tf.range(block)[:, None] <= tf.range(block)[None, :], tf.float32)

  def within_blocks(y):
    n = tf.shape(y)[0]
    padded = tf.pad(y, [[0, (-n) % block]])
    sums = tf.matmul(tf.reshape(tf.cast(padded, tf.float32), [-1, block]), triangle)
    return tf.cast(sums, tf.int32), n

  level1, n = within_blocks(x)                      # [b1, 128]
  level2, b1 = within_blocks(level1[:, -1])         # [b2, 128]
  top = level2[:, -1]                               # [b2], b2 ≤ 128
  b2 = tf.shape(top)[0]
  for j in range(7):
    top += tf.pad(top, [[2**j, 0]])[:b2]
  before2 = tf.reshape(level2 + (top - level2[:, -1])[:, None], [-1])[:b1]
  before1 = before2 - level1[:, -1]                 # totals of the blocks before each block
  return tf.reshape(level1 + before1[:, None], [-1])[:n]


def _lower_bound(sorted_values: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
  """For each target, the first index of the non-decreasing int32 [n] (n < 2²¹) whose value
  is ≥ it, n if none: a vectorised binary search (gathers only)."""
  n = tf.shape(sorted_values)[0]
  low, high = tf.zeros_like(targets), tf.fill(tf.shape(targets), n)
  for _ in range(21):
    mid = (low + high) // 2
    right = tf.gather(sorted_values, tf.minimum(mid, n - 1)) < targets
    low, high = tf.where(right & (low < high), mid + 1, low), tf.where(right, high, mid)
  return low


def _settle(words, packed, seed, c: _Consts):
  """Phase 2 for every undecided candidate: PHASE2_CAPACITY at a time, in index order (chunk
  o under fold(seed, 1, o)); narrow chunks keep XLA's CPU loops single-threaded."""
  n = tf.shape(packed)[0]
  cap = PHASE2_CAPACITY
  undecided = tf.equal(_field(packed, 0, 3), _UNDECIDED)
  rank = _block_prefix(tf.cast(undecided, tf.int32))   # 1 + position among the undecided
  total = rank[-1]

  def chunk(o, results):
    index = _lower_bound(rank, o * cap + 1 + tf.range(cap))
    real = index < n
    safe = tf.minimum(index, n - 1)
    sub = tf.where(real, tf.gather(packed, safe), _pack(_REJECT, 0, 0, 0))
    done = _phase2(tf.gather(words, safe), sub, fold(seed, 1, o), c)
    return o + 1, tf.tensor_scatter_nd_update(results, (o * cap + tf.range(cap))[:, None], done)

  _, results = tf.while_loop(lambda o, r: o * cap < total, chunk,
                             [tf.constant(0, tf.int32), tf.zeros([n + cap], tf.int64)])
  return tf.where(undecided, tf.gather(results, tf.maximum(rank - 1, 0)), packed)


def _round(count, seed, c: _Consts, phase1: bool = True):
  """Decides `count` i.i.d. candidates: (status, X, B) int64 [count]. phase1=False sends
  every candidate through the state machine from its first field (for tests)."""
  words = _words(tf.stack([tf.convert_to_tensor(count, tf.int32), PHASE1_WORDS]),
                 fold(seed, 0))
  packed = _fast(words, c)
  if not phase1:
    packed = _pack(tf.fill(tf.shape(packed), _UNDECIDED), _CHAIN, 0, 0)
  status, _, _, v = _unpack(_settle(words, packed, seed, c))
  first = words[:, 0]
  u = _field(first, 0, c.log2_t) if c.log2_t else tf.zeros_like(first)
  return status, u + c.t * v, _field(first, c.log2_t, 1)


@functools.lru_cache(maxsize=None)
def _round_fn(scale: Scale, max_abs: int, jit: bool, phase1: bool = True):
  """A round of `count` candidates as a tf.function, XLA-compiled when jit (once per count:
  `round_size` keeps to a few sizes): (values Y, accepted)."""
  c = _consts(scale, max_abs)

  def candidates(count, seed):
    status, x, sign = _round(count, seed, c, phase1)
    return (1 - 2 * sign) * x, tf.equal(status, _ACCEPT)

  return tf.function(candidates, jit_compile=jit, autograph=False)


@functools.lru_cache(maxsize=None)
def _decide_fn(scale: Scale, max_abs: int, jit: bool, phase1: bool):
  c = _consts(scale, max_abs)
  return tf.function(lambda count, seed: _round(count, seed, c, phase1), jit_compile=jit,
                     autograph=False)


def decide(count, scale: Scale, max_abs: int, seed, jit: bool = True, phase1: bool = True):
  """(status, X, B) of `count` i.i.d. candidates (for tests)."""
  return _decide_fn(scale, int(max_abs), bool(jit), bool(phase1))(
      tf.constant(count, tf.int32), tf.cast(seed, tf.int64))


def round_size(missing, p: float):
  """Candidates for one round: mean + 6 sd + 64 for the `missing` samples, rounded up to a
  power of two below 2¹³, else to m·2^j with 8 ≤ m < 16 (≤ 12.5 % more), at most MAX_ROUND:
  few sizes, so few XLA compiles. A Python int for a Python int, else an int32 tensor."""
  if isinstance(missing, int):
    wanted = min(math.ceil(missing / p + 6.0 * math.sqrt(missing / p) + 64.0), MAX_ROUND)
    octave = (wanted - 1).bit_length()                       # 2^octave ≥ wanted
    step = 2**octave if octave <= _SMALL_ROUND_LOG2 else 2**(wanted.bit_length() - 4)
    return -(-wanted // step) * step
  missing = tf.cast(missing, tf.float64)
  wanted = tf.math.ceil(missing / p + 6.0 * tf.sqrt(missing / p) + 64.0)
  wanted = tf.minimum(wanted, float(MAX_ROUND))
  log2 = tf.math.log(wanted) / math.log(2.0)
  octave = tf.math.ceil(log2 - 1e-9)
  step = tf.where(octave <= _SMALL_ROUND_LOG2, octave, tf.math.floor(log2) - 3.0)
  step = tf.pow(tf.constant(2.0, tf.float64), step)
  return tf.cast(tf.math.ceil(wanted / step) * step, tf.int32)


def sample(shape, scale: Scale, seed, max_abs: int = MAX_ABS_LIMIT, jit: bool = True):
  """i.i.d. N_ℤ(0, s²) conditioned on |Z| ≤ max_abs, of `shape`, from the stateless seed.

  Args:
    shape: the output shape (static or a 1-D int tensor).
    scale: s² = t·L (`scale_parameters`).
    seed: [2] int64 stateless seed (the mechanism passes the step's secret-key seed).
    max_abs: the largest |Z| kept, 40·s ≤ max_abs ≤ 2²⁴ − 1.
    jit: decide the candidates in an XLA-compiled function (same values, faster).

  Returns:
    (samples int64 of `shape`, SamplerInfo).
  """
  if not MIN_STDS_KEPT * scale.scale <= max_abs <= MAX_ABS_LIMIT:
    raise ValueError(f"max_abs={max_abs} must be in [{MIN_STDS_KEPT}·s, 2^24 − 1] for s = "
                     f"{scale.scale:.6g}")
  seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
  shape = tf.convert_to_tensor(shape, tf.int32)
  static_shape = tf.get_static_value(shape)
  size = int(np.prod(static_shape)) if static_shape is not None else tf.reduce_prod(shape)
  p = acceptance_probability(scale)
  decide_round = _round_fn(scale, int(max_abs), bool(jit))

  # Round 0 (almost always the only one), then rounds until `size` candidates are accepted.
  count = round_size(size, p)
  values, accepted = decide_round(count, fold(seed, 0))
  first = tf.boolean_mask(values, accepted)

  def body(r, out, proposed):
    count = round_size(size - tf.size(out), p)
    values, accepted = decide_round(count, fold(seed, r))
    out = tf.concat([out, tf.boolean_mask(values, accepted)], axis=0)
    return r + 1, out, proposed + tf.cast(count, tf.int64)

  rounds, out, proposed = tf.while_loop(
      lambda r, out, c: tf.size(out) < size, body,
      [tf.constant(1, tf.int64), first, tf.cast(count, tf.int64)],
      shape_invariants=[tf.TensorShape([]), tf.TensorShape([None]), tf.TensorShape([])])
  return tf.reshape(out[:size], shape), SamplerInfo(rounds, proposed)

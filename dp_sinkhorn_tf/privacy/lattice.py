"""The exact mechanism: clip, round onto the lattice γℤ, add discrete Gaussian noise.

For a block x (the private rows of the image gradient, or a parameter gradient) of N entries:

  M(x) = γ · (R(clip_C(x)/γ) + Z),   Z ~ N_ℤ(0, s²)^N  (`discrete_gaussian`),          (1)

where clip_C rescales the whole block to L2 norm ≤ C (TF Privacy's record clip), γ = 2^e
is a power of two, and R is conditional randomised rounding (Kairouz, Liu & Steinke 2021,
"The Distributed Discrete Gaussian Mechanism", §4): each coordinate y_i goes to ⌊y_i⌋ + 1
with probability y_i − ⌊y_i⌋, else ⌊y_i⌋, and the rounding is drawn again until

  ‖R(y)‖² ≤ B²,   B² = min( c² + N/4 + √(2 ln(1/β))·(c + √N/2),  (c + √N)² ),   c = C/γ.   (2)

The second term is the deterministic bound of the issue (each coordinate moves by < 1, so
‖R(y)‖ ≤ ‖y‖ + √N); the first is the high-probability bound of Kairouz et al. (Lemma 28:
an attempt fails with probability ≤ β = 2⁻²⁰), enforced here by the test itself, so it holds
for every released value whatever the rounding draws. After 32 failed attempts (probability
≤ 2⁻⁶⁴⁰) the block is rounded toward zero after shrinking by 2⁻¹⁰, and zeroed if even that
exceeded B: every released block satisfies (2), which is all the argument below uses.
Rounding and noise come from the step's secret seed (sub-streams `_ROUNDING`, `_NOISE`).

Sensitivity. For neighbouring data sets the clipped blocks differ arbitrarily within the
C-ball, so the integer vectors r = R(·) and r′ satisfy ‖r − r′‖ ≤ 2B =: Δ (lattice units),
for every pair of rounding outcomes.

Why the continuous Gaussian's RDP at σ_eff = s/Δ bounds this mechanism (the accountant).
  (a) Integer shifts: for μ, ν ∈ ℤᴺ, D_α(N_ℤ(μ, s²)‖N_ℤ(ν, s²)) = α‖μ − ν‖²/(2s²) for every
      α > 1 (Canonne, Kamath & Steinke 2020, Prop. 5 / Cor. 8, coordinate-wise and
      additive), equal to the continuous Gaussian's at the same s.
  (b) Rounding: M(D) is a mixture over rounding outcomes r of N_ℤ(r, s²); for any coupling
      of the outcomes of D and D′, joint convexity of exp((α − 1)D_α) gives
      D_α(M(D)‖M(D′)) ≤ max_{r,r′} D_α(N_ℤ(r)‖N_ℤ(r′)) ≤ αΔ²/(2s²) = α/(2σ_eff²).
  (c) Poisson subsampling, remove direction: with μ = (1 − q)μ₀ + qμ₁ (any pair),
      E_{μ₀}[(μ/μ₀)^α] = Σ_k C(α,k)(1 − q)^{α−k} q^k exp((k − 1)D_k(μ₁‖μ₀)) for integer α
      (Mironov, Talwar & Zhang 2019, §3.3), a sum with non-negative coefficients, so (a)–(b)
      bound it term by term by the continuous sampled Gaussian's A_α at σ_eff, which is
      what dp_accounting's RDP accountant computes.
  (d) The add direction D_α(μ₀‖μ): Mironov et al. prove it is at most the remove direction
      for the Gaussian pair, using the reflection that swaps μ₀ and μ₁. The reduced pair
      here, N_ℤ(0, s²) and N_ℤ(v, s²) with v ∈ ℤᴺ, has that symmetry too (y ↦ v − y); the
      inequality is checked numerically for the one-dimensional family in the tests
      (`lattice_test`), not proven here for N > 1. The PLD accountant's hockey-stick
      curve of the continuous Gaussian is NOT claimed to dominate the discrete one (the
      discrete Gaussian is not below the continuous in convex order): for this mechanism
      the RDP figure is the certified one.
  (e) Range: the noise is N_ℤ(0, s²) conditioned on |Z_i| ≤ m (`discrete_gaussian`), with
      m ≥ 40s; its total-variation distance from N_ℤ(0, s²)ᴺ is ≤ N·10⁻³⁴⁷, which adds at
      most (1 + e^ε)·T·N·10⁻³⁴⁷ to δ over T steps: nothing at any printed precision.
The accountant is given the nominal σ ≤ σ_eff (the noise is never below it), so the ε it
reports is an upper bound; privacy.json also reports σ_eff.

Float32. γ is the smallest power of two with m = 2²⁴ − 1 − ⌈B⌉ ≥ 40s: every released
integer has |r_i + Z_i| ≤ ⌈B⌉ + m < 2²⁴, so it is an exact float32 integer, and its product
by γ (a power of two, no underflow) is exact: the float32 release is exactly γ·(r + Z).
The price is the rounding bound: B/c − 1 ≈ (N/4 + 5.3c)/(2c²), ~10⁻⁵ at the shipped
configurations (`LatticeParams.inflation`).

Edge cases (tests in lattice_test / gaussian_test):

  | case                         | release                                           |
  |------------------------------|---------------------------------------------------|
  | C = 0                        | zeros (nothing to hide, no noise needed)          |
  | σ = 0                        | the clipped block, not rounded (no privacy claim) |
  | x = 0                        | γ·Z: pure lattice noise                           |
  | ‖x‖ ≫ C                      | clipped to C first: ‖r‖ ≤ B as always              |
  | NaN / ±inf in x              | zeroed before clipping (a rule that looks at no  |
  |                              | other entry; refusing would be a data-dependent   |
  |                              | crash, itself a release)                          |
  | NaN / negative C or σ        | ValueError when the parameters are made           |
"""

import collections
import dataclasses
import math

import dp_accounting
import tensorflow as tf
from tensorflow_privacy.privacy.dp_query import dp_query

from dp_sinkhorn_tf.privacy import discrete_gaussian as dg

ROUNDING_FAILURE_LOG2 = 20          # β = 2⁻²⁰ per attempt
ROUNDING_ATTEMPTS = 32
_NOISE, _ROUNDING = 1, 2            # sub-streams of the step's secret seed
_FLOAT32_INTEGERS = 2**24


@dataclasses.dataclass(frozen=True)
class LatticeParams:
  """The constants of (1)–(2) for a block of `entries` values, clip C and multiplier σ.

  log2_gamma: γ = 2^log2_gamma; norm_bound_sq: ⌊B²⌋ (integer, lattice units); scale: the
  noise's s² = t·L; max_abs: the noise's range m.
  """

  l2_norm_clip: float
  noise_multiplier: float
  entries: int
  log2_gamma: int
  norm_bound_sq: int
  scale: dg.Scale
  max_abs: int

  @property
  def gamma(self) -> float:
    return 2.0**self.log2_gamma

  @property
  def norm_bound(self) -> float:
    """B = √⌊B²⌋, rounded up (an upper bound on every rounded block's norm)."""
    return math.nextafter(math.sqrt(self.norm_bound_sq), math.inf)

  @property
  def sensitivity(self) -> float:
    """Δ = 2B in lattice units: ‖r − r′‖ ≤ Δ for neighbouring data sets."""
    return 2.0 * self.norm_bound

  @property
  def effective_noise_multiplier(self) -> float:
    """σ_eff = s/Δ, rounded down: the multiplier the mechanism achieves (≥ σ)."""
    return math.nextafter(self.scale.scale / self.sensitivity, 0.0)

  @property
  def noise_stddev(self) -> float:
    """γ·s: the noise scale in the block's units (≥ 2σC)."""
    return self.gamma * self.scale.scale

  @property
  def inflation(self) -> float:
    """B/c − 1: how much the rounding bound adds to the clip (the utility price of γ)."""
    return self.norm_bound * self.gamma / self.l2_norm_clip - 1.0

  def dp_event(self) -> dp_accounting.DpEvent:
    return dp_accounting.GaussianDpEvent(self.effective_noise_multiplier)


@tf.autograph.experimental.do_not_convert
def _rounding_bound_sq(c: float, entries: int) -> int:
  """⌊B²⌋ of (2) for c = C/γ and N entries."""
  z = math.sqrt(2.0 * ROUNDING_FAILURE_LOG2 * math.log(2.0))
  probable = c * c + entries / 4.0 + z * (c + math.sqrt(entries) / 2.0)
  certain = (c + math.sqrt(entries))**2
  return int(math.floor(min(probable, certain)))


@tf.autograph.experimental.do_not_convert
def lattice_params(l2_norm_clip: float, noise_multiplier: float, entries: int) -> LatticeParams:
  """The smallest power-of-two γ whose release fits float32's exact integers (module
  docstring) for clip C > 0, σ > 0 and a block of N ≥ 1 entries."""
  c_, s_ = l2_norm_clip, noise_multiplier
  if not (c_ > 0 and math.isfinite(c_)):
    raise ValueError(f"l2_norm_clip must be > 0 and finite for the lattice, got {c_}")
  if not (s_ > 0 and math.isfinite(s_)):
    raise ValueError(f"noise_multiplier must be > 0 and finite for the lattice, got {s_}")
  if entries < 1:
    raise ValueError(f"a block needs ≥ 1 entry, got {entries}")
  # γ ≥ C(1 + 80σ)/2²⁴ is necessary (s ≥ 2σc, ⌈B⌉ + 40s < 2²⁴); start just below it.
  log2_gamma = int(math.floor(math.log2(c_ * (1 + 80 * s_) / _FLOAT32_INTEGERS))) - 1
  for _ in range(64):
    c = c_ / 2.0**log2_gamma
    bound_sq = _rounding_bound_sq(c, entries)
    bound = math.nextafter(math.sqrt(bound_sq), math.inf)
    wanted = max(s_ * 2.0 * bound, 1.0)
    max_abs = _FLOAT32_INTEGERS - 1 - math.ceil(bound)
    if wanted < 2**19.9 and max_abs >= dg.MIN_STDS_KEPT * wanted * 1.01:
      scale = dg.scale_parameters(wanted)
      if max_abs >= dg.MIN_STDS_KEPT * scale.scale:
        return LatticeParams(c_, s_, int(entries), log2_gamma, bound_sq, scale, max_abs)
    log2_gamma += 1
  raise ValueError(f"no lattice for C={c_}, σ={s_}, N={entries}")


def zero_non_finite(t: tf.Tensor) -> tf.Tensor:
  """Replaces NaN / ±inf entries by 0; the rule does not look at any other entry."""
  return tf.where(tf.math.is_finite(t), t, tf.zeros_like(t))


def clip_to_norm(tensors, clip) -> list:
  """tensors (a list) with non-finite entries zeroed, scaled together by
  min(1, C/‖·‖₂), the norm computed in float64; each keeps its dtype."""
  tensors = [zero_non_finite(tf.convert_to_tensor(t)) for t in tensors]
  wide = [tf.cast(t, tf.float64) for t in tensors]
  norm = tf.sqrt(tf.add_n([tf.reduce_sum(w * w) for w in wide]))
  factor = tf.minimum(tf.constant(1.0, tf.float64),
                      tf.cast(clip, tf.float64) / tf.maximum(norm, 1e-300))
  return [tf.cast(w * factor, t.dtype) for w, t in zip(wide, tensors)]


def _norm_sq(r: tf.Tensor) -> tf.Tensor:
  return tf.reduce_sum(r * r)


def round_to_lattice(y: tf.Tensor, norm_bound_sq: int, seed) -> tf.Tensor:
  """Conditional randomised rounding R of (2): y float [N] (lattice units) → int64 [N] with
  ‖R(y)‖² ≤ norm_bound_sq (exact integer arithmetic), keyed by the [2] int64 seed."""
  y = tf.cast(y, tf.float64)
  low = tf.math.floor(y)
  frac = y - low
  low = tf.cast(low, tf.int64)
  bound = tf.constant(norm_bound_sq, tf.int64)

  def attempt(i):
    u = dg.uniform_float64(tf.shape(y), dg.fold(seed, i))
    return low + tf.cast(u < frac, tf.int64)

  def body(i, r, done):
    r_new = attempt(i)
    ok = _norm_sq(r_new) <= bound
    return i + 1, tf.where(ok, r_new, r), ok

  _, r, done = tf.while_loop(
      lambda i, r, done: (~done) & (i < ROUNDING_ATTEMPTS), body,
      [tf.constant(0, tf.int64), tf.zeros_like(low), tf.constant(False)])
  shrunk = tf.cast(y * (1.0 - 2.0**-10), tf.int64)     # toward zero: ‖·‖ ≤ ‖y‖(1 − 2⁻¹⁰)
  fallback = tf.where(_norm_sq(shrunk) <= bound, shrunk, tf.zeros_like(shrunk))
  return tf.where(done, r, fallback)


def release_block(clipped: tf.Tensor, params: LatticeParams, seed) -> tf.Tensor:
  """γ·(R(clipped/γ) + Z) of (1) for a block already clipped to C (any shape, float32);
  returns float32 of the same shape, every entry an exact multiple of γ."""
  shape = tf.shape(clipped)
  y = tf.reshape(zero_non_finite(tf.cast(clipped, tf.float64)), [-1]) / params.gamma
  # The float32 clip may leave ‖y‖ a few ulps above c; rescale so (2)'s premise holds.
  c = params.l2_norm_clip / params.gamma
  norm = tf.norm(y)
  y = y * tf.minimum(tf.constant(1.0, tf.float64), c / tf.maximum(norm, 1e-300))
  r = round_to_lattice(y, params.norm_bound_sq, dg.fold(seed, _ROUNDING))
  z, _ = dg.sample(tf.shape(r), params.scale, dg.fold(seed, _NOISE), params.max_abs)
  k = tf.cast(r + z, tf.float32)                         # |r + z| < 2²⁴: exact
  return tf.reshape(k * tf.constant(params.gamma, tf.float32), shape)


class DiscreteGaussianSumQuery(dp_query.SumAggregationDPQuery):
  """TF Privacy's DPQuery for (1): the sum of clipped records, re-clipped to C as a whole
  and released on γℤ with exact, keyed discrete Gaussian noise.

  Used with one record per sample (this package's mechanisms: the private image-gradient
  block, or the batch's parameter gradient as one microbatch): neighbouring data sets then
  give two aggregates of norm ≤ C, sensitivity 2C, and `dp_event` is the Gaussian at σ_eff
  (module docstring). The sum is re-clipped to C, so even several records cannot exceed it.

  The global state carries the step's secret seed: `seed` is a [2] int64 tensor, or a
  zero-argument callable returning it (read at each step, e.g. from the step variable and
  key constants; see `trainer`), so TF Privacy's optimizers, which keep the state from
  `initial_global_state`, draw the step's keyed noise, never a stateful RNG's.
  """

  GlobalState = collections.namedtuple("GlobalState", ["l2_norm_clip", "seed", "max_entries"])

  def __init__(self, l2_norm_clip: float, noise_multiplier: float, seed=None):
    self._l2_norm_clip = float(l2_norm_clip)
    self._noise_multiplier = float(noise_multiplier)
    self._seed = seed
    self._params = {}

  @tf.autograph.experimental.do_not_convert
  def params_for(self, entries: int) -> LatticeParams:
    if entries not in self._params:
      self._params[entries] = lattice_params(self._l2_norm_clip, self._noise_multiplier,
                                             entries)
    return self._params[entries]

  def initial_global_state(self):
    return self.GlobalState(self._l2_norm_clip, self._seed, None)

  def make_global_state(self, seed, max_entries=None):
    """The state of one release with this seed. max_entries: an upper bound on the
    aggregate's size when its static shape is unknown (the lattice is made for the bound:
    (2) holds for any smaller block, so the release stays within what is charged)."""
    return self.GlobalState(self._l2_norm_clip, seed, max_entries)

  def derive_sample_params(self, global_state):
    return global_state.l2_norm_clip

  def accumulate_record(self, params, sample_state, record):
    """As the base class, with None entries of the record (variables the loss does not
    reach, as tf.gradients reports them) taken as zeros of the template's shape."""
    record = tf.nest.pack_sequence_as(sample_state, [
        tf.zeros_like(s) if r is None else r
        for s, r in zip(tf.nest.flatten(sample_state), tf.nest.flatten(record))])
    return super().accumulate_record(params, sample_state, record)

  def preprocess_record(self, params, record):
    """The record (a tensor or a nest of tensors) with non-finite entries zeroed, clipped
    as a whole to C (TF Privacy's GaussianSumQuery clip, with the norm taken in float64 so
    that a huge finite record, whose float32 norm would overflow to inf and turn
    tf.clip_by_global_norm's output into NaN, is clipped like any other)."""
    return tf.nest.pack_sequence_as(record, clip_to_norm(tf.nest.flatten(record), params))

  def get_noised_result(self, sample_state, global_state):
    """(released nest, global_state, DpEvent): (1) applied to the whole aggregate."""
    flat = [tf.convert_to_tensor(t) for t in tf.nest.flatten(sample_state)]
    static = [t.shape.num_elements() for t in flat]
    if any(s is None for s in static):
      if global_state.max_entries is None:
        raise ValueError("DiscreteGaussianSumQuery: a record of unknown size needs "
                         "make_global_state(seed, max_entries)")
      entries = int(global_state.max_entries)
      sizes = tf.stack([tf.size(t) for t in flat])
    else:
      entries = sizes = sum(static)
      sizes = static
    if entries == 0:  # nothing to release (e.g. no private rows)
      return sample_state, global_state, dp_accounting.NoOpDpEvent()
    params = self.params_for(entries)
    vector = tf.concat([tf.reshape(tf.cast(t, tf.float32), [-1]) for t in flat], axis=0)
    vector = clip_to_norm([vector], global_state.l2_norm_clip)
    seed = global_state.seed() if callable(global_state.seed) else global_state.seed
    if seed is None:
      raise ValueError("DiscreteGaussianSumQuery: the global state carries no seed (the "
                       "noise must come from the run's secret key)")
    released = release_block(vector[0], params, seed)
    parts = tf.split(released, sizes, num=len(flat))
    out = [tf.cast(tf.reshape(p, tf.shape(t)), t.dtype) for p, t in zip(parts, flat)]
    return tf.nest.pack_sequence_as(sample_state, out), global_state, params.dp_event()

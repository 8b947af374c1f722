"""DP-Sinkhorn's privacy barrier: clip and noise the gradient w.r.t. the generated images.

Only one quantity that depends on private data reaches the generator: G = ∂L/∂X, the
gradient of the semi-debiased loss w.r.t. the n + n′ generated points X (paper §3.3). Its
rows split in two:

  * private rows G[0:n]: X[0:n] meet the private batch Y through W_λ(X[0:n], Y);
  * public rows G[n:n+n′]: X[n:] appear only in W_λ(X[0:n], X[n′:n+n′]), a function of
    generated data alone.

The mechanism M(G) = (L(G[0:n]), clip_C′(G[n:])), where L is the exact lattice release
of `lattice`: clip the *whole tensor* G[0:n] to L2 norm ≤ C, round it onto γℤ (keyed
conditional randomised rounding) and add discrete Gaussian noise N_ℤ(0, s²) drawn exactly
from the step's secret seed, s ≥ 2σC/γ, so the noise std is γs ≥ 2σC. C′ (`public_clip`,
default C) is free: the public rows do not depend on D. It sets how much the self term's
repulsion on X[n:] weighs against the private rows once both are clipped: their unclipped
norms differ (e.g. ≈ 4 vs ≈ 26 on the digits at p = 0.4), so C′ = C gives the public rows
several times the weight they have in the loss's own gradient.

Guarantee. Let D, D′ differ by one record (add/remove). Both clipped private blocks have
norm ≤ C; after rounding, both integer blocks have norm ≤ B ≈ C/γ (enforced), so they
differ by ≤ Δ = 2B: the discrete Gaussian mechanism with effective multiplier
σ_eff = s/Δ ≥ σ, whose Rényi divergences are those of the continuous Gaussian at σ_eff
(`lattice`'s docstring derives this, with subsampling). The public block does not depend on
D. Under Poisson sampling with rate q, T steps are (ε, δ)-DP for the ε that `accounting`'s
RDP accountant computes for (q, σ, T, δ) (σ ≤ σ_eff: an upper bound). Everything
downstream (back-propagation into the generator, Adam, BatchNorm statistics of generated
images) is post-processing.

Why exact. The float32 `tf.random.stateless_normal` this module used before is Box–Muller on
23-bit uniforms: every pair of noise entries lies on a finite grid, which an attacker who
knows the clipped block can test for (the step audit's lattice adversary separates
neighbouring blocks 0.05·2C apart almost perfectly with it, where a true Gaussian allows
ε ≈ 0.16). The lattice release has no such structure: every value is γ·(integer), both
hypotheses are lattice points, and the integer noise is exactly N_ℤ(0, s²).

The clip and release are TF Privacy's DPQuery interface (`lattice.DiscreteGaussianSumQuery`,
a SumAggregationDPQuery whose global state carries the step's seed). The randomness is
keyed: noise and rounding are stateless functions of (secret key, step, stream)
(`keys.step_seed`), never of --seed or the process.

Edge cases (one test each in tests/gaussian_test.py and tests/lattice_test.py):

  | case                         | released private rows         | released public rows |
  |------------------------------|-------------------------------|----------------------|
  | C = 0, σ ≥ 0                 | zeros (no information, no noise needed: std 2σ·0 = 0) | zeros |
  | C = ∞, σ = 0 (non-private)   | G[0:n] unchanged — NO privacy | G[n:] unchanged     |
  | C = ∞, σ > 0                 | rejected (infinite noise)     |                      |
  | G = 0 (e.g. empty batch)     | pure lattice noise γ·N_ℤ(0, s²) | zeros              |
  | ‖G[0:n]‖ ≫ C (even ~1e30)    | clipped (norm in float64), then as above |             |
  | non-finite entries in G      | zeroed before clipping (data-independent rule), then as above |
  | num_private = 0              | nothing private; all rows public: clipped, no noise |
"""

import dataclasses
import functools
import math
from typing import NamedTuple, Optional

import tensorflow as tf
from tensorflow_privacy.privacy.dp_query import gaussian_query

from dp_sinkhorn_tf.privacy import lattice


class MechanismInfo(NamedTuple):
  """Diagnostics (all scalars): norms of the private block before clipping and after
  noising, and of the public block before clipping."""

  clean_norm: tf.Tensor
  noised_norm: tf.Tensor
  public_norm: tf.Tensor


def clip_to_norm(t: tf.Tensor, clip: float):
  """Rescales t as one tensor to L2 norm ≤ clip: t · min(1, clip / ‖t‖₂).

  Returns:
    (clipped, norm before clipping). clip = ∞ returns t unchanged; clip = 0 returns zeros.
  """
  norm = tf.norm(tf.reshape(t, [-1]))
  if math.isinf(clip):
    return t, norm
  if clip == 0:
    return tf.zeros_like(t), norm
  scale = tf.minimum(1.0, clip / tf.maximum(norm, tf.cast(1e-30, norm.dtype)))
  return t * tf.cast(scale, t.dtype), norm


@dataclasses.dataclass(frozen=True)
class ImageGradientMechanism:
  """M(G) of the module docstring, for clip C = l2_norm_clip and multiplier σ.

  Attributes:
    l2_norm_clip: C ≥ 0 (∞ only together with σ = 0: the non-private mode).
    noise_multiplier: σ ≥ 0; the noise std is 2σC.
    public_clip: C′ ≥ 0, the clip of the public rows G[n:] (None: C); no noise on them.
  """

  l2_norm_clip: float
  noise_multiplier: float
  public_clip: Optional[float] = None  # C′ for the public rows; None: C

  def __post_init__(self):
    if self.public_clip is not None and (math.isnan(self.public_clip) or self.public_clip < 0):
      raise ValueError(f"public_clip must be ≥ 0, got {self.public_clip}")
    c, s = self.l2_norm_clip, self.noise_multiplier
    if math.isnan(c) or c < 0:
      raise ValueError(f"l2_norm_clip must be ≥ 0, got {c}")
    if math.isnan(s) or s < 0:
      raise ValueError(f"noise_multiplier must be ≥ 0, got {s}")
    if math.isinf(c) and s > 0:
      raise ValueError("l2_norm_clip=inf needs noise_multiplier=0 (the non-private mode); "
                       f"got noise_multiplier={s}, which would be infinite noise")

  @property
  def noise_stddev(self) -> float:
    """2σC, the nominal noise std per private entry (0 in the non-private mode); the
    lattice release's is γs ≥ 2σC (`lattice_params`)."""
    if self.noise_multiplier == 0:
      return 0.0
    return 2.0 * self.noise_multiplier * self.l2_norm_clip

  @property
  def is_private(self) -> bool:
    return not math.isinf(self.l2_norm_clip)

  @functools.cached_property
  def query(self) -> lattice.DiscreteGaussianSumQuery:
    """The DPQuery that releases the private block (clip C, lattice γℤ, N_ℤ noise)."""
    return lattice.DiscreteGaussianSumQuery(self.l2_norm_clip, self.noise_multiplier)

  def lattice_params(self, entries: int) -> lattice.LatticeParams:
    """γ, B, s and σ_eff of the release of a private block of `entries` values."""
    return self.query.params_for(int(entries))

  def _clip_and_noise(self, private: tf.Tensor, noise_seed, max_entries=None) -> tf.Tensor:
    """Clip to C as a whole, release on γℤ with keyed N_ℤ noise (`lattice`); max_entries
    bounds the block's size when its static shape is unknown."""
    if not self.is_private:
      return private
    if self.l2_norm_clip == 0:
      return tf.zeros_like(private)
    if self.noise_multiplier == 0:
      return clip_record(private, self.l2_norm_clip)
    query = self.query
    state = query.make_global_state(noise_seed, max_entries)
    record = query.preprocess_record(query.derive_sample_params(state), private)
    sample = query.accumulate_preprocessed_record(tf.zeros_like(record), record)
    released, _, _ = query.get_noised_result(sample, state)
    return released

  def privatize(self, grad: tf.Tensor, num_private, noise_seed=None):
    """Releases G under the mechanism.

    Args:
      grad: [n + n′, ...] float gradient w.r.t. the generated points.
      num_private: n, rows 0..n−1 meet private data (Python int or int32 scalar).
      noise_seed: [2] int64 stateless seed of this step's noise (from the secret key);
        required whenever noise is added (σ > 0, 0 < C < ∞).

    Returns:
      (released [n + n′, ...] float32, MechanismInfo).

    Raises:
      TypeError: grad is not float32.
    """
    if (self.is_private and self.noise_multiplier > 0 and self.l2_norm_clip > 0 and
        noise_seed is None):
      raise ValueError("privatize: noise_seed is required when noise is added (the noise "
                       "must come from the run's secret key, never a stateful RNG)")
    grad = tf.convert_to_tensor(grad)
    if grad.dtype != tf.float32:
      # Noise drawn or added in a low-precision format is not the Gaussian the accountant
      # assumes: its rounding leaves a data-dependent lattice (Mironov 2012, the attack on
      # floating-point Laplace noise). --precision applies to the generator only.
      raise TypeError(f"privatize: the mechanism runs in float32, got a {grad.dtype.name} "
                      "gradient")
    grad = lattice.zero_non_finite(grad)
    n = tf.convert_to_tensor(num_private, tf.int32)
    private, public = grad[:n], grad[n:]
    private_clean_norm = tf.norm(tf.reshape(private, [-1]))
    # With a dynamic n, the lattice is made for the largest private block G could hold.
    max_entries = grad.shape.num_elements()
    released_private = self._clip_and_noise(private, noise_seed, max_entries)
    public_clip = self.l2_norm_clip if self.public_clip is None else self.public_clip
    released_public, public_norm = clip_to_norm(public, public_clip)
    released = tf.concat([released_private, released_public], axis=0)
    noised_norm = tf.norm(tf.reshape(released_private, [-1]))
    return released, MechanismInfo(private_clean_norm, noised_norm, public_norm)


def clip_record(record, clip: float):
  """TF Privacy's GaussianSumQuery record clip: the whole (nested) record to norm ≤ C.

  record: a tensor or a list of tensors (one record); returns the same structure.
  """
  query = gaussian_query.GaussianSumQuery(l2_norm_clip=clip, stddev=0.0)
  params = query.derive_sample_params(query.initial_global_state())
  return query.preprocess_record(params, record)


def gaussian_kernel_1d(sigma: float) -> tf.Tensor:
  """k_i ∝ exp(−i²/(2s²)) for |i| ≤ ⌈3s⌉, normalised to Σ k_i = 1 (float32, odd length)."""
  if not sigma > 0:
    raise ValueError(f"blur sigma must be > 0, got {sigma}")
  radius = max(1, int(math.ceil(3 * sigma)))
  offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
  kernel = tf.exp(-offsets**2 / (2.0 * sigma**2))
  return kernel / tf.reduce_sum(kernel)


def blur_release(released: tf.Tensor, sigma: float) -> tf.Tensor:
  """Smooths a released image gradient with a Gaussian of `sigma` pixels (post-processing).

  B(G̃) = k ⊛ G̃ per image and channel, with the separable kernel k = k₁ ⊗ k₁ of
  `gaussian_kernel_1d` and symmetric (mirror) padding, so a constant image is unchanged.

  Privacy: B is fixed and looks at nothing but its input, so B(M(G)) is post-processing of
  the Gaussian mechanism and costs nothing. Why it helps: the mechanism's noise is white,
  and B scales the std of white noise by ‖k‖₂ = ‖k₁‖₂² (≈ 1/(2√π·s) for s ≳ 1: 0.28 at
  s = 1), while a smooth image-space signal passes almost unchanged. It also removes the
  fine detail of the signal; s ≈ 0.5–1 pixel suits 8×8 to 32×32 images.

  Args:
    released: [b, H, W, C] float, the mechanism's output reshaped to images.
    sigma: blur std in pixels; 0 returns `released` unchanged.
  """
  if sigma == 0:
    return released
  kernel = tf.cast(gaussian_kernel_1d(sigma), released.dtype)
  taps = int(kernel.shape[0])
  radius = (taps - 1) // 2
  channels = int(released.shape[-1])
  x = released
  # One pass along the height (a taps×1 filter), one along the width (1×taps).
  for axis, filter_hw in ((1, [taps, 1]), (2, [1, taps])):
    pad = [[0, 0]] * 4
    pad[axis] = [radius, radius]
    # Mirror padding needs radius ≤ size; wider kernels fall back to zero padding.
    x = tf.pad(x, pad, mode="SYMMETRIC" if radius <= int(x.shape[axis]) else "CONSTANT")
    depthwise = tf.tile(tf.reshape(kernel, filter_hw + [1, 1]), [1, 1, channels, 1])
    x = tf.nn.depthwise_conv2d(x, depthwise, strides=[1, 1, 1, 1], padding="VALID")
  return x

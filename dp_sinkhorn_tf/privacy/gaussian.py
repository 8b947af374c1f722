"""DP-Sinkhorn's privacy barrier: clip and noise the gradient w.r.t. the generated images.

Only one quantity that depends on private data reaches the generator: G = ∂L/∂X, the
gradient of the semi-debiased loss w.r.t. the n + n′ generated points X (paper §3.3). Its
rows split in two:

  * private rows G[0:n]: X[0:n] meet the private batch Y through W_λ(X[0:n], Y);
  * public rows G[n:n+n′]: X[n:] appear only in W_λ(X[0:n], X[n′:n+n′]), a function of
    generated data alone.

The mechanism M(G) = (clip_C(G[0:n]) + N(0, (2σC)²·I), clip_C′(G[n:])), where clip_C
rescales the *whole tensor* to L2 norm ≤ C. C′ (`public_clip`, default C) is free: the
public rows do not depend on D. It sets how much the self term's repulsion on X[n:] weighs
against the private rows once both are clipped: their unclipped norms differ (e.g. ≈ 4 vs
≈ 26 on the digits at p = 0.4), so C′ = C gives the public rows several times the weight
they have in the loss's own gradient.

Guarantee. Let D, D′ differ by one record (add/remove). Both clipped private blocks have
norm ≤ C, so ‖clip_C(G_D) − clip_C(G_D′)‖₂ ≤ 2C: sensitivity 2C. Adding N(0, (2σC)²) is the
Gaussian mechanism with noise multiplier σ (noise std / sensitivity), and the public block
does not depend on D. Under Poisson sampling with rate q, T steps are (ε, δ)-DP for the ε
that `accounting` computes for (q, σ, T, δ). Everything downstream (back-propagation into
the generator, Adam, BatchNorm statistics of generated images) is post-processing.

The clip is TF Privacy's `GaussianSumQuery(l2_norm_clip=C, ...)` record preprocessing over
a single record (clip_by_global_norm). Its DpEvent would say GaussianDpEvent(stddev / C) = 2σ
because it assumes sensitivity C; it is not used: the accountant is given σ.

The noise is NOT the query's own: that is a stateful `tf.random.normal`, a fixed sequence
once a global seed is set (so a function of the public --seed) and replayed from its start
by every new process (so a resumed run reused old noise). Here the noise is
`tf.random.stateless_normal(shape, noise_seed)` with noise_seed = (secret key, step)
(`privacy_key.step_seed`): secret, and a function of the step alone, never of the process.

Edge cases (one test each in tests/privacy_test.py):

  | case                         | released private rows         | released public rows |
  |------------------------------|-------------------------------|----------------------|
  | C = 0, σ ≥ 0                 | zeros (no information, no noise needed: std 2σ·0 = 0) | zeros |
  | C = ∞, σ = 0 (non-private)   | G[0:n] unchanged — NO privacy | G[n:] unchanged     |
  | C = ∞, σ > 0                 | rejected (infinite noise)     |                      |
  | G = 0 (e.g. empty batch)     | pure noise N(0, (2σC)²)       | zeros                |
  | non-finite entries in G      | zeroed before clipping (data-independent rule), then as above |
  | num_private = 0              | nothing private; all rows public: clipped, no noise |
"""

import dataclasses
import math
from typing import NamedTuple, Optional

import tensorflow as tf
from tensorflow_privacy.privacy.dp_query import gaussian_query


class MechanismInfo(NamedTuple):
  """Diagnostics (all scalars): norms of the private block before clipping and after
  noising, and of the public block before clipping."""

  clean_norm: tf.Tensor
  noised_norm: tf.Tensor
  public_norm: tf.Tensor


def zero_non_finite(t: tf.Tensor) -> tf.Tensor:
  """Replaces NaN / ±inf entries by 0; the rule does not look at any other entry."""
  return tf.where(tf.math.is_finite(t), t, tf.zeros_like(t))


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
    """2σC, the std of the noise on each private entry (0 in the non-private mode)."""
    if self.noise_multiplier == 0:
      return 0.0
    return 2.0 * self.noise_multiplier * self.l2_norm_clip

  @property
  def is_private(self) -> bool:
    return not math.isinf(self.l2_norm_clip)

  def _clip_and_noise(self, private: tf.Tensor, noise_seed) -> tf.Tensor:
    """Clip to C as a whole (TF Privacy's query), add keyed N(0, (2σC)²)."""
    if not self.is_private:
      return private
    if self.l2_norm_clip == 0:
      return tf.zeros_like(private)
    clipped = clip_record(private, self.l2_norm_clip)
    if self.noise_multiplier == 0:
      return clipped
    return clipped + keyed_gaussian_noise(tf.shape(private), self.noise_stddev, noise_seed,
                                          private.dtype)

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
    grad = zero_non_finite(grad)
    n = tf.convert_to_tensor(num_private, tf.int32)
    private, public = grad[:n], grad[n:]
    private_clean_norm = tf.norm(tf.reshape(private, [-1]))
    released_private = self._clip_and_noise(private, noise_seed)
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


def keyed_gaussian_noise(shape, stddev: float, seed, dtype=tf.float32) -> tf.Tensor:
  """N(0, stddev²) i.i.d. of `shape`, a stateless function of the [2] int64 `seed`.

  Drawn in float32 whatever `dtype` (then cast): low-precision noise is a known attack
  surface (Mironov 2012), so it is never generated below float32.
  """
  noise = tf.random.stateless_normal(shape, seed, stddev=stddev, dtype=tf.float32)
  return tf.cast(noise, dtype)


def privatize_parameter_gradients(grads, l2_norm_clip: float, noise_multiplier: float,
                                  noise_seed):
  """The param_grad ablation: clip the whole parameter gradient to C, add N(0, (2σC)²).

  The batch loss is one microbatch: adding or removing a record moves the clipped gradient
  by ≤ 2C, so std 2σC is the Gaussian mechanism with multiplier σ (as for image_grad).
  Variable i gets the noise of seed fold_in(noise_seed, i): one keyed draw per variable.

  Args:
    grads: list of parameter gradients (tensors; None entries become zeros of no shape —
      pass dense gradients).
    noise_seed: [2] int64 stateless seed of this step's noise.

  Returns:
    (released list, norm of the unclipped gradient).
  """
  grads = [zero_non_finite(tf.convert_to_tensor(g)) for g in grads]
  norm = tf.linalg.global_norm(grads)
  clipped = clip_record(grads, l2_norm_clip)
  stddev = 2.0 * noise_multiplier * l2_norm_clip
  released = [g + keyed_gaussian_noise(tf.shape(g), stddev,
                                       tf.random.experimental.stateless_fold_in(noise_seed, i),
                                       g.dtype)
              for i, g in enumerate(clipped)]
  return released, norm


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

"""A private warm start's release: per-class "central images", released once.

After DP-FETA (Li et al., "Data-Centric Privacy-Preserving Image Synthesis", DPImageBench):
a small share of the budget buys a Gaussian query of the class-conditional mean images at a
low resolution; the generator is then pre-trained on (augmented copies of) them, which is
post-processing, before the private DP-Sinkhorn steps.

Record embedding. An image x ∈ [−1, 1]^{H×W×C} is mapped to u = (x + 1)/2 ∈ [0, 1] (the
background, −1, becomes 0 and costs no norm), average-pooled to r × r (H and W multiples of r;
each pooled value is a mean of pixels, so it stays in [0, 1]), and scaled by the largest norm
a pooled image can have:

  f(x) = pool_r(u)/(r·√C) ∈ ℝ^{r·r·C},  ‖f(x)‖² ≤ r²·C/(r²·C) = 1   (pixels in [−1, 1]).     (1)

A count coordinate is appended as in `mean_embedding` (a = √(1 − b²), b = `count_weight`):

  f′(x) = [a·f(x), b],  ‖f′(x)‖² ≤ a² + b² = 1;   e(x, y) = e_y ⊗ f′(x) ∈ ℝ^{K×(r²C+1)},    (2)

and every row is clipped to norm ≤ 1 in float64 anyway (non-finite pixels zeroed first), so a
record outside [−1, 1] cannot push it past 1.

Sensitivity (add/remove one record). S(D) = Σ_{(x,y)∈D} e(x, y), so

  S(D ∪ {(x, y)}) − S(D) = e(x, y),   ‖S(D) − S(D′)‖ ≤ ‖e_y‖·‖f′(x)‖ ≤ 1:   Δ₂ = 1,        (3)

attained by an all-white record (u ≡ 1: ‖f(x)‖ = 1). N is public, as in `accounting`.

Mechanism: the exact lattice release of `mean_embedding` (its `release_class_sums`: keyed
conditional randomised rounding of each record's f′ onto γℤ, integer class sums, one draw of
discrete Gaussian noise), whose argument holds for any per-record embedding of norm ≤ 1:

  S̃ = γ·(Σ_i e_{y_i} ⊗ R(f′(x_i)/γ) + Z),   dp_event = GaussianDpEvent(σ_eff ≥ σ).        (4)

One release, no subsampling: Stage(q = 1, steps = 1) in `accounting`.

Post-processing (`central_images`): ñ_c = S̃[c, −1]/b, m_c = S̃[c, :−1]/(a·max(ñ_c, 1)) (the
noisy mean of f), central image c = 2·clamp(r√C·m_c, 0, 1) − 1 ∈ [−1, 1]^{r×r×C}; p̃_c as in
`mean_embedding.class_means`. The noise on a pixel of image c has std ≈ σ_eff·r√C/(a·n_c)
(e.g. σ = 5, r = 7, C = 1, n_c = 6000: 0.006 of the [0, 1] range).

Randomness: rounding and noise from the run's secret key
(`keys.step_seed(key, 0, keys.STREAM_WARM_START)`).

Edge cases (tests in tests/class_means_test.py):

  | case                              | embedding / release                                |
  |-----------------------------------|----------------------------------------------------|
  | pixels in [−1, 1]                 | ‖e(x, y)‖ ≤ 1, = 1 for an all-white record         |
  | pixels outside, NaN / ±inf        | non-finite zeroed, row clipped: ‖e‖ ≤ 1            |
  | empty data set                    | S̃ = γ·Z: pure noise; images from the clamp         |
  | H or W not a multiple of r, r < 1 | ValueError                                         |
  | label outside [0, K)              | ValueError before anything is released             |
"""

import math
from typing import NamedTuple, Sequence

import numpy as np
import tensorflow as tf

from dp_sinkhorn_tf.privacy import lattice, mean_embedding


def check_resolution(image_shape: Sequence[int], resolution: int) -> None:
  """ValueError unless H and W are multiples of r ≥ 1 (the pooling has no partial cells)."""
  height, width = int(image_shape[0]), int(image_shape[1])
  if resolution < 1 or height % resolution or width % resolution:
    raise ValueError(f"warm-start resolution {resolution} must be ≥ 1 and divide the image "
                     f"size {height}×{width}")


def num_entries(image_shape: Sequence[int], resolution: int) -> int:
  """r²·C + 1: the entries of one record's f′ (2)."""
  return resolution * resolution * int(image_shape[2]) + 1


def pooled_features(x: tf.Tensor, image_shape: Sequence[int], resolution: int) -> tf.Tensor:
  """f of (1): x [B, H·W·C] float64 in [−1, 1] → [B, r²·C] float64, norm ≤ 1."""
  height, width, channels = (int(s) for s in image_shape)
  r = resolution
  u = (tf.reshape(x, [-1, r, height // r, r, width // r, channels]) + 1.0) / 2.0
  pooled = tf.reduce_mean(u, axis=[2, 4])
  return tf.reshape(pooled, [-1, r * r * channels]) / (r * math.sqrt(channels))


def record_embeddings(x: tf.Tensor, image_shape: Sequence[int], resolution: int,
                      count_weight: float) -> tf.Tensor:
  """f′(x) of (2) in float64: x [B, H·W·C] → [B, r²C + 1], non-finite pixels zeroed, each
  row clipped to norm ≤ 1 (the class one-hot e_y is applied by the sum)."""
  check_resolution(image_shape, resolution)
  if not 0 < count_weight < 1:
    raise ValueError(f"count_weight must be in (0, 1), got {count_weight}")
  x = lattice.zero_non_finite(tf.cast(x, tf.float64))
  a = math.sqrt(1.0 - count_weight**2)
  rows = tf.concat([pooled_features(x, image_shape, resolution) * a,
                    tf.fill([tf.shape(x)[0], 1], tf.constant(count_weight, tf.float64))], axis=1)
  return rows / tf.maximum(tf.norm(rows, axis=1, keepdims=True), 1.0)


def _embed(image_shape, resolution: int, count_weight: float):
  return lambda x: record_embeddings(x, image_shape, resolution, count_weight)


def class_sums(images: np.ndarray, labels: np.ndarray, num_classes: int, resolution: int,
               count_weight: float) -> np.ndarray:
  """S(D) of (3) without noise: [K, r²C + 1] float64 (tests only: the private statistic)."""
  shape = np.shape(images)[1:]
  return mean_embedding.exact_class_sums(images, labels, _embed(shape, resolution, count_weight),
                                         num_entries(shape, resolution), num_classes)


def release(chunks, labels: np.ndarray, image_shape: Sequence[int], num_classes: int,
            resolution: int, count_weight: float, params: lattice.LatticeParams,
            seed) -> np.ndarray:
  """S̃ of (4): [K, r²C + 1] float64, every entry an exact multiple of γ.

  chunks: the private images as float32 in [−1, 1], ≤ `mean_embedding.CHUNK` at a time in
  record order (each [b, H, W, C] or [b, H·W·C]); labels: [N] int in [0, K); params:
  `mean_embedding.release_params(σ, num_entries(image_shape, r))`; seed: [2] int64, the
  release's secret seed (`keys.step_seed(key, 0, keys.STREAM_WARM_START)`).
  """
  check_resolution(image_shape, resolution)
  flat_chunks = (mean_embedding.flat(np.asarray(c)) for c in chunks)
  return mean_embedding.release_class_sums(
      flat_chunks, labels, _embed(image_shape, resolution, count_weight),
      num_entries(image_shape, resolution), num_classes, params, seed)


class CentralImages(NamedTuple):
  """Post-processing of S̃: images [K, r, r, C] float32 in [−1, 1], proportions p̃ [K]
  float32 (sum 1), noisy counts ñ [K] float64 (may be negative)."""

  images: np.ndarray
  proportions: np.ndarray
  counts: np.ndarray


def central_images(released: np.ndarray, image_shape: Sequence[int], resolution: int,
                   count_weight: float) -> CentralImages:
  """The per-class central images of S̃ [K, r²C + 1] (module docstring); uses nothing else."""
  check_resolution(image_shape, resolution)
  channels = int(image_shape[2])
  means, counts, proportions = mean_embedding.class_means(released, count_weight)
  pooled = np.clip(means * resolution * math.sqrt(channels), 0.0, 1.0)
  images = (2.0 * pooled - 1.0).reshape(-1, resolution, resolution, channels)
  return CentralImages(images.astype(np.float32), proportions.astype(np.float32), counts)

"""DP-MERF's release: class-conditional random-Fourier-feature sums, released once.

Harder, Adamczewski & Park, "DP-MERF: Differentially Private Mean Embeddings with Random
Features for Practical Privacy-Preserving Data Generation", AISTATS 2021. A generator is
then trained against the release alone (`train.merf`): post-processing, no further cost.

Features. F frequencies w_j ~ N(0, I/ℓ²) (data-independent, drawn from the public --seed):

  φ(x) = [cos(Wx), sin(Wx)] / √F ∈ ℝ^{2F},   ‖φ(x)‖² = Σ_j (cos² + sin²)(w_j·x)/F = 1,   (1)
  E_W[φ(x)·φ(x′)] = E_w[cos(w·(x − x′))] = exp(−‖x − x′‖²/(2ℓ²))  (Rahimi & Recht 2007). (2)

The record embedding appends a constant so that the class counts come out of the same
release (a = √(1 − b²), b = `count_weight` ∈ (0, 1)):

  φ′(x) = [a·φ(x), b],  ‖φ′(x)‖² = a² + b² = 1;   e(x, y) = e_y ⊗ φ′(x) ∈ ℝ^{K×(2F+1)},   (3)

so ‖e(x, y)‖ = ‖e_y‖·‖φ′(x)‖ = 1, and S(D) = Σ_{(x,y)∈D} e(x, y) holds in row c the sum of
the class-c records' φ′. Each record's e is clipped to norm ≤ 1 in float64 anyway (pixels
that are NaN / ±inf zeroed first), so error in cos/sin (TF's float64 ones are accurate to
~2·10⁻⁸) cannot push it past 1.

Sensitivity (add/remove one record). S(D ∪ {(x, y)}) − S(D) = e(x, y), so
‖S(D) − S(D′)‖ ≤ 1, with equality (to cos/sin accuracy) for every finite record: Δ₂ = 1. (Under replace-one it
would be 2: DP-MERF's 2/n for its mean; here N is public as in `accounting`, and the
relation is add/remove.)

Mechanism (the exact lattice release of `lattice`, applied per record). With γ, B and s from
`lattice.lattice_params(C = 1, σ/2, 2F + 1)`, each record's φ′ block (in lattice units, c = 1/γ)
is rounded by `lattice.round_to_lattice` (keyed conditional randomised rounding, ‖r_i‖ ≤ B
enforced), the integer rows are summed in int64, and one draw of N_ℤ(0, s²)^{K×(2F+1)} is
added:

  S̃ = γ·(Σ_i e_{y_i} ⊗ r_i + Z)    (float64, every entry an exact multiple of γ).        (4)

Neighbouring sets: coupling the other records' roundings, the integer sums differ by one
r_i, ‖r_i‖ ≤ B — sensitivity B in lattice units (not `lattice`'s 2B, which is for two
aggregates each of norm ≤ C). By `lattice`'s (a)–(b) (integer shifts; mixtures over rounding
outcomes) the Rényi divergences are at most the continuous Gaussian's at σ_eff = s/B ≥ σ
(`lattice_params` makes s ≥ (σ/2)·2B). The dp_accounting event is
GaussianDpEvent(σ_eff) (`dp_event`), one release, no subsampling; the RDP figure is the
certified one (`lattice` (d)). The noise's truncation at |Z| ≤ m ≥ 40s adds
≤ (1 + e^ε)·K(2F+1)·10⁻³⁴⁷ to δ. Entries stay below 2⁵³ (N·(c + √(2F+1)) + m, c < 2²⁴, for any N
below 2²⁸), so the float64 release is exact.

Nothing in (4) or its argument uses what φ′ is, only ‖φ′(x)‖ ≤ 1: `release_class_sums` takes
any per-record embedding of norm ≤ 1 (`class_means` releases pooled images through it), and
`class_means` post-processes any release whose records end with the count entry b.

Post-processing (`class_embeddings`): ñ_c = S̃[c, −1]/b, μ̃_c = S̃[c, :−1]/(a·max(ñ_c, 1)),
p̃_c = max(ñ_c, 0)/Σ max(ñ, 0) (uniform if every ñ_c ≤ 0).

Randomness. W from the public seed; rounding and noise from the run's secret key
(`keys.step_seed(key, 0, keys.STREAM_MEAN_EMBEDDING)`, sub-streams _ROUNDING / _NOISE).

Edge cases (tests in tests/mean_embedding_test.py):

  | case                         | embedding / release                                 |
  |------------------------------|-----------------------------------------------------|
  | any finite x                 | ‖e(x, y)‖ = 1 (to cos/sin accuracy, then clipped)    |
  | huge x (1e30), NaN / ±inf     | non-finite pixels zeroed; ‖e‖ ≤ 1                    |
  | empty data set               | S̃ = γ·Z: pure lattice noise; p̃ uniform              |
  | label outside [0, K)         | ValueError before anything is released              |
  | σ ≤ 0, count_weight ∉ (0, 1) | ValueError                                          |
"""

import math
from typing import NamedTuple

import dp_accounting
import numpy as np
import tensorflow as tf

from dp_sinkhorn_tf.privacy import discrete_gaussian as dg
from dp_sinkhorn_tf.privacy import lattice

_NOISE, _ROUNDING = 1, 2            # sub-streams of the release's secret seed
CHUNK = 500                         # records embedded and rounded per compiled call


def fourier_frequencies(input_dim: int, num_frequencies: int, length_scale: float,
                        seed: int) -> np.ndarray:
  """W: [F, d] float64, rows i.i.d. N(0, I/ℓ²), from the public `seed` (numpy PCG64)."""
  if not (length_scale > 0 and math.isfinite(length_scale)):
    raise ValueError(f"length_scale must be > 0 and finite, got {length_scale}")
  if num_frequencies < 1 or input_dim < 1:
    raise ValueError(f"need ≥ 1 frequency and input dimension, got {num_frequencies}, "
                     f"{input_dim}")
  rng = np.random.default_rng(seed)
  return rng.standard_normal((num_frequencies, input_dim)) / length_scale


def fourier_features(x: tf.Tensor, frequencies) -> tf.Tensor:
  """φ(x) of (1): x [B, d] float (any float dtype) → [B, 2F] of x's dtype, norm 1."""
  w = tf.cast(frequencies, x.dtype)
  projections = tf.matmul(x, w, transpose_b=True)
  scale = tf.cast(1.0 / math.sqrt(int(w.shape[0])), x.dtype)
  return tf.concat([tf.cos(projections), tf.sin(projections)], axis=1) * scale


def _check_count_weight(count_weight: float) -> None:
  if not 0 < count_weight < 1:
    raise ValueError(f"count_weight must be in (0, 1), got {count_weight}")


def record_embeddings(x: tf.Tensor, frequencies, count_weight: float) -> tf.Tensor:
  """φ′(x) of (3) in float64: x [B, d] → [B, 2F + 1], non-finite pixels zeroed, each row
  clipped to norm ≤ 1 (the class one-hot e_y is applied by the sum)."""
  _check_count_weight(count_weight)
  x = lattice.zero_non_finite(tf.cast(x, tf.float64))
  a = math.sqrt(1.0 - count_weight**2)
  phi = fourier_features(x, frequencies) * a
  rows = tf.concat([phi, tf.fill([tf.shape(x)[0], 1], tf.constant(count_weight, tf.float64))],
                   axis=1)
  norms = tf.norm(rows, axis=1, keepdims=True)
  return rows / tf.maximum(norms, 1.0)


def check_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """labels [N] as int32, each in [0, K); ValueError before anything is released."""
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"labels must be [N], got shape {labels.shape}")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"labels must lie in [0, {num_classes}), got {labels.min()}…{labels.max()}")
  return labels.astype(np.int32)


def flat(images: np.ndarray) -> np.ndarray:
  """[N, ...] → [N, prod(...)] (a view when it can be)."""
  return np.reshape(images, (len(images), int(np.prod(np.shape(images)[1:]))))


def exact_class_sums(images: np.ndarray, labels: np.ndarray, embed, entries: int,
                     num_classes: int) -> np.ndarray:
  """Σ_i e_{y_i} ⊗ embed(x_i) without noise: [K, entries] float64 (tests and diagnostics
  only: it is the private statistic itself). embed: x [b, d] float64 → [b, entries]."""
  labels = check_labels(labels, num_classes)
  out = np.zeros((num_classes, entries))
  rows = flat(images)
  for start in range(0, len(rows), CHUNK):
    e = embed(tf.constant(rows[start:start + CHUNK], tf.float64))
    np.add.at(out, labels[start:start + CHUNK], e.numpy())
  return out


def embedding_sum(images: np.ndarray, labels: np.ndarray, frequencies, num_classes: int,
                  count_weight: float) -> np.ndarray:
  """S(D) of (3), without noise: [K, 2F + 1] float64 (for tests and diagnostics only; it is
  the private statistic itself)."""
  _check_count_weight(count_weight)
  return exact_class_sums(images, labels,
                          lambda x: record_embeddings(x, frequencies, count_weight),
                          2 * len(frequencies) + 1, num_classes)


def release_params(noise_multiplier: float, entries: int) -> lattice.LatticeParams:
  """γ, B, s of (4) for σ and blocks of 2F + 1 entries: `lattice_params` at clip 1 and σ/2,
  because this release's sensitivity is B (one rounded record), not the 2B that
  `lattice_params` calibrates s for."""
  if not (noise_multiplier > 0 and math.isfinite(noise_multiplier)):
    raise ValueError(f"noise_multiplier must be > 0 and finite, got {noise_multiplier}")
  return lattice.lattice_params(1.0, noise_multiplier / 2.0, entries)


def effective_noise_multiplier(params: lattice.LatticeParams) -> float:
  """σ_eff = s/B, rounded down: the multiplier (4) achieves over sensitivity B (≥ σ)."""
  return math.nextafter(params.scale.scale / params.norm_bound, 0.0)


def dp_event(params: lattice.LatticeParams) -> dp_accounting.DpEvent:
  """The one release (4) as dp_accounting sees it: a Gaussian at σ_eff."""
  return dp_accounting.GaussianDpEvent(effective_noise_multiplier(params))


def _rounded_chunk_fn(embed, input_dim: int, num_classes: int,
                      params: lattice.LatticeParams):
  """A compiled (x [b, d], labels [b], first index, seed) → int64 [K, entries]: the chunk's
  records embedded (`embed`: float64 rows of norm ≤ 1), rounded (record i keyed by
  fold(seed, i)) and summed by class."""
  inv_gamma = 1.0 / params.gamma       # exact: γ is a power of two
  bound_sq = params.norm_bound_sq

  @tf.function(input_signature=[tf.TensorSpec([None, input_dim], tf.float32),
                                tf.TensorSpec([None], tf.int32),
                                tf.TensorSpec([], tf.int64),
                                tf.TensorSpec([2], tf.int64)])
  def rounded(x, labels, first, seed):
    y = embed(tf.cast(x, tf.float64)) * inv_gamma
    index = first + tf.range(tf.shape(y)[0], dtype=tf.int64)
    r = tf.map_fn(lambda a: lattice.round_to_lattice(a[0], bound_sq, dg.fold(seed, a[1])),
                  (y, index), fn_output_signature=tf.int64, parallel_iterations=16)
    return tf.math.unsorted_segment_sum(r, labels, num_classes)

  return rounded


def release_class_sums(chunks, labels: np.ndarray, embed, entries: int, num_classes: int,
                       params: lattice.LatticeParams, seed) -> np.ndarray:
  """γ·(Σ_i e_{y_i} ⊗ R(embed(x_i)/γ) + Z) of (4) for any per-record embedding: [K, entries]
  float64, every entry an exact multiple of γ.

  chunks: the images, flattened to [b, d] float32 a chunk at a time (each ≤ CHUNK rows, in
  record order); labels: [N] int in [0, K); embed: x [b, d] float64 → [b, entries] float64,
  every row of norm ≤ 1 (the release's sensitivity argument rests on it: the caller clips);
  params: `release_params(σ, entries)`; seed: [2] int64, the release's secret seed.
  """
  labels = check_labels(labels, num_classes)
  if params.entries != entries:
    raise ValueError(f"params are for blocks of {params.entries} entries, the embedding has "
                     f"{entries}")
  seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
  total = np.zeros((num_classes, entries), np.int64)
  rounding_seed = dg.fold(seed, _ROUNDING)
  rounded, start = None, 0
  for chunk in chunks:
    chunk = np.asarray(chunk, np.float32)
    if start + len(chunk) > len(labels):
      raise ValueError(f"more images than the {len(labels)} labels")
    if rounded is None:
      rounded = _rounded_chunk_fn(embed, int(chunk.shape[1]), num_classes, params)
    total += rounded(chunk, labels[start:start + len(chunk)], tf.constant(start, tf.int64),
                     rounding_seed).numpy()
    start += len(chunk)
  if start != len(labels):
    raise ValueError(f"{start} images for {len(labels)} labels")
  z, _ = dg.sample([num_classes, entries], params.scale, dg.fold(seed, _NOISE), params.max_abs)
  return (total + z.numpy()).astype(np.float64) * params.gamma


def release(images: np.ndarray, labels: np.ndarray, frequencies, num_classes: int,
            count_weight: float, params: lattice.LatticeParams, seed) -> np.ndarray:
  """S̃ of (4): [K, 2F + 1] float64, every entry an exact multiple of γ.

  images: [N, ...] float (flattened to d = prod(...)); labels: [N] int in [0, K);
  frequencies: [F, d]; params: `release_params(σ, 2F + 1)`; seed: [2] int64, the release's
  secret seed (`keys.step_seed(key, 0, keys.STREAM_MEAN_EMBEDDING)`).
  """
  rows = flat(images)
  return release_chunks((rows[s:s + CHUNK] for s in range(0, len(rows), CHUNK)), labels,
                        frequencies, num_classes, count_weight, params, seed)


def release_chunks(chunks, labels: np.ndarray, frequencies, num_classes: int,
                   count_weight: float, params: lattice.LatticeParams, seed) -> np.ndarray:
  """`release` of images given a chunk at a time (each [b, ...] float in [−1, 1], ≤ CHUNK
  rows, in record order): a large uint8 set never needs its whole float copy."""
  _check_count_weight(count_weight)
  w = tf.constant(frequencies, tf.float64)
  return release_class_sums((flat(np.asarray(c)) for c in chunks), labels,
                            lambda x: record_embeddings(x, w, count_weight),
                            2 * len(frequencies) + 1, num_classes, params, seed)


class ClassEmbeddings(NamedTuple):
  """Post-processing of S̃: means μ̃ [K, 2F] float32, proportions p̃ [K] float32 (sum 1),
  noisy counts ñ [K] float64 (may be negative)."""

  means: np.ndarray
  proportions: np.ndarray
  counts: np.ndarray


def class_means(released: np.ndarray, count_weight: float):
  """(mean feature rows [K, entries − 1] float64, noisy counts ñ [K] float64, proportions p̃
  [K] float64) of a release whose records were [a·f(x), b] (a = √(1 − b²)): ñ_c =
  S̃[c, −1]/b, mean_c = S̃[c, :−1]/(a·max(ñ_c, 1)), p̃_c = max(ñ_c, 0)/Σ max(ñ, 0) (uniform if
  every ñ_c ≤ 0). Post-processing: uses nothing but S̃ and the public b."""
  _check_count_weight(count_weight)
  released = np.asarray(released, np.float64)
  a = math.sqrt(1.0 - count_weight**2)
  counts = released[:, -1] / count_weight
  means = released[:, :-1] / (a * np.maximum(counts, 1.0)[:, None])
  positive = np.maximum(counts, 0.0)
  if positive.sum() > 0:
    proportions = positive / positive.sum()
  else:
    proportions = np.full(len(counts), 1.0 / len(counts))
  return means, counts, proportions


def class_embeddings(released: np.ndarray, count_weight: float) -> ClassEmbeddings:
  """μ̃_c, p̃_c and ñ_c from S̃ [K, 2F + 1] (module docstring); uses nothing else."""
  means, counts, proportions = class_means(released, count_weight)
  return ClassEmbeddings(means.astype(np.float32), proportions.astype(np.float32), counts)

"""The warm start of a run: one private release, charged write-ahead and kept in the workdir,
then a non-private fit of the generator to it. Two kinds (--warm_start):

  class_means   per-class mean images pooled to r×r (`privacy.class_means`), fitted by the
                mean squared error to augmented copies (below);
  merf          DP-MERF's class-conditional random-Fourier-feature sums
                (`privacy.mean_embedding`, the defaults of `python -m dp_sinkhorn_tf.merf`,
                frequencies from the public --seed), fitted by DP-MERF's loss
                (`merf_lib.fit`, DP-MERF's schedule: batch 100, learning rate 5e-3 × 0.9
                every 600 steps).

Both release rows of norm ≤ 1 per record once (Δ₂ = 1, one Gaussian, q = 1), so the plan's
stage is the same for either.

Order (the same guarantees as the DP-Sinkhorn steps, `train_lib`):

  1. charge: the ledger is saved with the warm-start stage counted (`PrivacyLedger.
     charged_stage`) BEFORE the release is computed, so a crash never under-counts;
  2. release: S̃ = `class_means.release` of the private set, from the key's stream
     `keys.STREAM_WARM_START`: a deterministic function of (key, data), so
  3. a crash between 1 and the file re-computes the same S̃ without charging again, and a
     resume reads <workdir>/warm_start.npz (written atomically) and charges nothing.

A warm-start file in a workdir whose ledger never charged the stage belongs to no release this
run made: it is refused.

Pre-training (`pretrain`, post-processing only): before DP-Sinkhorn step 0 the generator is
fitted to the release for --warm_start_steps Adam steps (merf: `merf_lib.fit`; class_means:
to augmented copies of the released central images — upsampled bilinearly to H × W, shifted
by up to ⌈H/14⌉ pixels, plus N(0, 0.05²) pixel noise, clamped to [−1, 1] — by the mean
squared error to G(z, y) with y ~ p̃). It sees the release,
the public config and its stateless seeds, nothing else; `train_lib` saves the result as
the step-0 checkpoint, so a resume restores it instead of fitting again.
"""

from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from dp_sinkhorn_tf.data import datasets
from dp_sinkhorn_tf.io import files, rundir
from dp_sinkhorn_tf.privacy import accounting, class_means, keys, lattice, mean_embedding
from dp_sinkhorn_tf.train import fit_lib, merf_config, merf_lib

STAGE = accounting.WARM_START_STAGE
CLASS_MEANS, MERF = "class_means", "merf"
KINDS = (CLASS_MEANS, MERF)
# Weight b of the count entry (`class_means` (2)): the noisy class counts have std σ/b, the
# mean images lose a factor a = √(1 − b²) ≈ 0.995 of their signal.
COUNT_WEIGHT = 0.1


def stage_of(plan: accounting.PrivacyPlan) -> Optional[accounting.Stage]:
  """The plan's warm-start stage (None without one)."""
  return next((s for s in plan.stages if s.name == STAGE), None)


def _check_kind(kind: str) -> None:
  if kind not in KINDS:
    raise ValueError(f"warm start {kind!r}: expected one of {KINDS}")


MERF_RELEASE = merf_config.ReleaseConfig()    # F, ℓ and b of the merf warm start


def frequencies(image_shape: Sequence[int], seed: int) -> np.ndarray:
  """The merf warm start's public W [F, H·W·C] float64 (drawn from the public --seed)."""
  return mean_embedding.fourier_frequencies(int(np.prod(image_shape)),
                                            MERF_RELEASE.num_frequencies,
                                            MERF_RELEASE.length_scale, seed)


def num_entries(kind: str, image_shape: Sequence[int], resolution: int) -> int:
  """Entries of one record's released row: r²C + 1 (class_means), 2F + 1 (merf)."""
  _check_kind(kind)
  if kind == MERF:
    return 2 * MERF_RELEASE.num_frequencies + 1
  return class_means.num_entries(image_shape, resolution)


def release_params(plan: accounting.PrivacyPlan, image_shape: Sequence[int],
                   resolution: int, kind: str = CLASS_MEANS) -> lattice.LatticeParams:
  """The lattice parameters of the warm start's release at the plan's σ (ValueError when r
  does not divide the image size, for class_means)."""
  _check_kind(kind)
  if kind == CLASS_MEANS:
    class_means.check_resolution(image_shape, resolution)
  stage = stage_of(plan)
  if stage is None:
    raise ValueError("the privacy plan has no warm-start stage")
  return mean_embedding.release_params(stage.noise_multiplier,
                                       num_entries(kind, image_shape, resolution))


def noise_record(params: lattice.LatticeParams, noise_multiplier: float, kind: str,
                 num_classes: int) -> dict:
  """What the warm start's noise is, beside what it is charged as (the ledger's stage,
  privacy.json): the release's lattice, its noise std over the sensitivity 1 (σ_eff ≥ the
  charged σ)."""
  return {"distribution": "discrete Gaussian on the lattice γℤ, exact (privacy.lattice)",
          "released": kind, "entries": num_classes * params.entries,
          "log2_gamma": params.log2_gamma, "gamma": params.gamma,
          "noise_stddev": params.noise_stddev,
          "effective_noise_multiplier": mean_embedding.effective_noise_multiplier(params),
          "charged_noise_multiplier": float(noise_multiplier), "certified_accountant": "rdp"}


def ensure_release(workdir: str, plan: accounting.PrivacyPlan,
                   ledger: accounting.PrivacyLedger, key: keys.PrivacyKey, images: np.ndarray,
                   labels: np.ndarray, num_classes: int, resolution: int,
                   pixel_max: Optional[int] = None, kind: str = CLASS_MEANS, seed: int = 0
                   ) -> Tuple[np.ndarray, accounting.PrivacyLedger]:
  """(S̃ [K, `num_entries`] float64, the ledger with the stage charged): read from the
  workdir, or charged (ledger saved) and then released and written (module docstring).

  images: [N, H, W, C] uint8 pixels in [0, pixel_max] (or float32 in [−1, 1], pixel_max
  None); labels: [N] int in [0, K); seed: the public --seed (merf's frequencies).
  """
  image_shape = tuple(int(s) for s in images.shape[1:])
  params = release_params(plan, image_shape, resolution, kind)  # bad r: before the charge
  path = rundir.path(workdir, rundir.WARM_START_FILE)
  ledger_path = rundir.path(workdir, rundir.LEDGER_FILE)
  charged = ledger.stage_charged(STAGE)
  if files.exists(path):
    if not charged:
      raise rundir.ProvenanceError(f"{path}: a warm-start release the ledger never charged "
                                   "(another run's file?); use a new --workdir")
    return fit_lib.read_release(path), ledger
  if not charged:
    ledger = ledger.charged_stage(
        STAGE, noise_record(params, stage_of(plan).noise_multiplier, kind, num_classes))
    ledger.save(ledger_path)  # write-ahead: spent before it is computed
  chunks = datasets.unit_chunks(images, pixel_max, mean_embedding.CHUNK)
  secret = keys.step_seed(key, 0, keys.STREAM_WARM_START)
  if kind == MERF:
    released = mean_embedding.release_chunks(chunks, labels, frequencies(image_shape, seed),
                                             num_classes, MERF_RELEASE.count_weight, params,
                                             secret)
  else:
    released = class_means.release(chunks, labels, image_shape, num_classes, resolution,
                                   COUNT_WEIGHT, params, secret)
  fit_lib.write_release(path, released)
  return released, ledger


def central_images(released: np.ndarray, image_shape: Sequence[int],
                   resolution: int) -> class_means.CentralImages:
  """The post-processed release: per-class r×r images in [−1, 1], p̃, ñ."""
  return class_means.central_images(released, image_shape, resolution, COUNT_WEIGHT)


PRETRAIN_BATCH = 64
PRETRAIN_LEARNING_RATE = 1e-3
PIXEL_NOISE = 0.05


def augmented_targets(central: tf.Tensor, labels: tf.Tensor, image_shape: Sequence[int],
                      seed: tf.Tensor) -> tf.Tensor:
  """Augmented copies of the central images of `labels`: central [K, r, r, C] float32 in
  [−1, 1], labels [B] int32, seed [2] int64 → [B, H, W, C] float32 in [−1, 1]."""
  height, width = int(image_shape[0]), int(image_shape[1])
  pad = max(1, -(-height // 14))
  up = tf.image.resize(tf.gather(central, labels), [height, width], method="bilinear")
  padded = tf.pad(up, [[0, 0], [pad, pad], [pad, pad], [0, 0]], constant_values=-1.0)
  batch = tf.shape(labels)[0]
  shifts = tf.random.stateless_uniform([batch, 2], seed, 0, 2 * pad + 1, dtype=tf.int32)
  rows = shifts[:, :1] + tf.range(height)[None, :]
  cols = shifts[:, 1:] + tf.range(width)[None, :]
  shifted = tf.gather(tf.gather(padded, rows, axis=1, batch_dims=1), cols, axis=2,
                      batch_dims=1)
  noise = tf.random.stateless_normal(tf.shape(shifted), seed + [0, 1]) * PIXEL_NOISE
  return tf.clip_by_value(shifted + noise, -1.0, 1.0)


def pretrain(generator: tf.keras.Model, released: np.ndarray, kind: str, resolution: int,
             steps: int, seed: int,
             on_step: Optional[Callable[[int, float], None]] = None) -> np.ndarray:
  """Fits `generator` in place to the release S̃ of `ensure_release` for `steps` steps
  (`fit_central_images` or, for merf, `merf_lib.fit`); returns the losses [steps] float32.
  Post-processing: S̃, the public config and `seed` only. on_step(t, loss) after each step."""
  _check_kind(kind)
  shape = tuple(int(s) for s in generator.image_shape)
  if kind == MERF:
    if steps == 0:
      return np.zeros([0], np.float32)
    cfg = merf_config.MerfTrainConfig(steps=steps, seed=seed)  # DP-MERF's schedule
    embeddings = mean_embedding.class_embeddings(released, MERF_RELEASE.count_weight)
    return merf_lib.fit(generator, embeddings, frequencies(shape, seed), cfg, on_step).losses
  return fit_central_images(generator, central_images(released, shape, resolution), steps,
                            seed, on_step)


def fit_central_images(generator: tf.keras.Model, central: class_means.CentralImages,
                       steps: int, seed: int,
                       on_step: Optional[Callable[[int, float], None]] = None) -> np.ndarray:
  """Fits `generator` in place to augmented central images (module docstring); returns the
  losses [steps] float32. Uses the release (`central`) and the public `seed` only, so two
  calls on generators of equal weights give equal weights."""
  images = tf.constant(central.images, tf.float32)
  log_p = tf.math.log(tf.maximum(tf.constant(central.proportions, tf.float32), 1e-12))[None]
  optimizer = tf.keras.optimizers.Adam(PRETRAIN_LEARNING_RATE)
  shape = tuple(int(s) for s in generator.image_shape)

  @tf.function(autograph=False)
  def step(t):
    s = tf.stack([tf.constant(seed, tf.int64) + 7, tf.cast(t, tf.int64)])
    labels = tf.random.stateless_categorical(log_p, PRETRAIN_BATCH, s, dtype=tf.int32)[0]
    z = tf.random.stateless_uniform([PRETRAIN_BATCH, generator.latent_dim], s + [0, 2**40])
    target = augmented_targets(images, labels, shape, s + [0, 2**41])
    with tf.GradientTape() as tape:
      out = tf.cast(generator([z, labels], training=True), tf.float32)
      loss = tf.reduce_mean(tf.square(out - target))
    grads = tape.gradient(loss, generator.trainable_variables)
    optimizer.apply_gradients(zip(grads, generator.trainable_variables))
    return loss

  return fit_lib.run_steps(step, steps, on_step)

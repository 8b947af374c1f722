"""The warm start of a run (--warm_start=class_means): one private release of per-class mean
images (`privacy.class_means`), charged write-ahead and kept in the workdir.

Order (the same guarantees as the DP-Sinkhorn steps, `train_lib`):

  1. charge: the ledger is saved with the warm-start stage counted (`PrivacyLedger.
     charged_stage`) BEFORE the release is computed, so a crash never under-counts;
  2. release: S̃ = `class_means.release` of the private set, from the key's stream
     `keys.STREAM_WARM_START`: a deterministic function of (key, data), so
  3. a crash between 1 and the file re-computes the same S̃ without charging again, and a
     resume reads <workdir>/warm_start.npz (written atomically) and charges nothing.

A warm-start file in a workdir whose ledger never charged the stage belongs to no release this
run made: it is refused.
"""

from typing import Optional, Sequence, Tuple

import numpy as np

from dp_sinkhorn_tf.data import datasets
from dp_sinkhorn_tf.io import files, rundir
from dp_sinkhorn_tf.privacy import accounting, class_means, keys, lattice, mean_embedding
from dp_sinkhorn_tf.train import merf_lib

STAGE = accounting.WARM_START_STAGE
# Weight b of the count entry (`class_means` (2)): the noisy class counts have std σ/b, the
# mean images lose a factor a = √(1 − b²) ≈ 0.995 of their signal.
COUNT_WEIGHT = 0.1


def stage_of(plan: accounting.PrivacyPlan) -> Optional[accounting.Stage]:
  """The plan's warm-start stage (None without one)."""
  return next((s for s in plan.stages if s.name == STAGE), None)


def release_params(plan: accounting.PrivacyPlan, image_shape: Sequence[int],
                   resolution: int) -> lattice.LatticeParams:
  """The lattice parameters of the warm start's release at the plan's σ (ValueError when r
  does not divide the image size)."""
  class_means.check_resolution(image_shape, resolution)
  stage = stage_of(plan)
  if stage is None:
    raise ValueError("the privacy plan has no warm-start stage")
  return mean_embedding.release_params(stage.noise_multiplier,
                                       class_means.num_entries(image_shape, resolution))


def ensure_release(workdir: str, plan: accounting.PrivacyPlan,
                   ledger: accounting.PrivacyLedger, key: keys.PrivacyKey, images: np.ndarray,
                   labels: np.ndarray, num_classes: int, resolution: int,
                   pixel_max: Optional[int] = None) -> Tuple[np.ndarray, accounting.PrivacyLedger]:
  """(S̃ [K, r²C + 1] float64, the ledger with the stage charged): read from the workdir, or
  charged (ledger saved) and then released and written (module docstring).

  images: [N, H, W, C] uint8 pixels in [0, pixel_max] (or float32 in [−1, 1], pixel_max
  None); labels: [N] int in [0, K).
  """
  image_shape = tuple(int(s) for s in images.shape[1:])
  params = release_params(plan, image_shape, resolution)  # a bad r fails before the charge
  path = rundir.path(workdir, rundir.WARM_START_FILE)
  ledger_path = rundir.path(workdir, rundir.LEDGER_FILE)
  charged = ledger.stage_charged(STAGE)
  if files.exists(path):
    if not charged:
      raise rundir.ProvenanceError(f"{path}: a warm-start release the ledger never charged "
                                   "(another run's file?); use a new --workdir")
    return merf_lib.read_release(path), ledger
  if not charged:
    ledger = ledger.charged_stage(STAGE)
    ledger.save(ledger_path)  # write-ahead: spent before it is computed
  chunks = datasets.unit_chunks(images, pixel_max, mean_embedding.CHUNK)
  released = class_means.release(chunks, labels, image_shape, num_classes, resolution,
                                 COUNT_WEIGHT, params,
                                 keys.step_seed(key, 0, keys.STREAM_WARM_START))
  merf_lib.write_release(path, released)
  return released, ledger


def central_images(released: np.ndarray, image_shape: Sequence[int],
                   resolution: int) -> class_means.CentralImages:
  """The post-processed release: per-class r×r images in [−1, 1], p̃, ñ."""
  return class_means.central_images(released, image_shape, resolution, COUNT_WEIGHT)

"""What a run writes besides checkpoints: TensorBoard scalars, sample grids, privacy.json.

Every function here writes either post-processing of released quantities (the noised norm,
ε, generated images: publishable) or, where named private, diagnostics computed on private
data before the mechanism (loss, clean norms, batch sizes), which go to
<workdir>/private_diagnostics/ only (`rundir.ARTEFACTS`).

No wall-clock time in what is published: the TensorBoard events are written by
`io.events.EventWriter` (wall_time = FIXED_TIME + step, a file name without time or host),
the PNGs and privacy.json by `io.files` (modification time FIXED_TIME), and privacy.json
holds no timestamp.
"""

import dataclasses
import math
import os
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from dp_sinkhorn_tf.io import events, rundir
from dp_sinkhorn_tf.io import images as images_lib
from dp_sinkhorn_tf.privacy import accounting
from dp_sinkhorn_tf.train import config as config_lib

# Step metrics that are post-processing of the release (publishable). Every other metric
# (loss, clean gradient norm, Sinkhorn iterations, marginal error, Poisson batch size) is
# computed on private data before the mechanism: private_diagnostics/ only.
PUBLIC_METRICS = ("noised_grad_norm", "epsilon")


UNIT_OF_PRIVACY = (
    "one record = one (image, label) pair of the private training split, under add/remove "
    "adjacency. A person who contributed k records is protected only at the group level, "
    "about (k·ε, k·e^((k−1)ε)·δ): e.g. scikit-learn's digits hold 1,438 training images "
    "from 13 writers (~110 each), so ε is per image, not per writer (--privacy_unit=group "
    "protects whole groups). The record count N (dataset_size, and sample_rate = B/N) is "
    "published as is: treat N as public.")
UNIT_OF_PRIVACY_GROUP = (
    "one group = every record of one group id (--groups: e.g. one person's images), under "
    "add/remove adjacency of whole groups: the released generator's distribution changes by "
    "at most (ε, δ) when any one group, with all its records, is added or removed. Groups "
    "are Poisson-sampled (sample_rate = B/N, N = dataset_size = the number of groups) and a "
    "sampled group gives at most max_per_group of its records a step; the whole released "
    "gradient block is clipped as one tensor, so the sensitivity is 2C whatever a group "
    "contributes. The group count N is published as is: treat it as public (the number of "
    "records is not published).")


def unit_of_privacy(cfg: config_lib.TrainConfig) -> dict:
  """privacy.json's fields on what ε protects: privacy_unit, unit_of_privacy (the text
  above) and, for groups, max_per_group."""
  if cfg.data.privacy_unit == "group":
    return {"privacy_unit": "group", "unit_of_privacy": UNIT_OF_PRIVACY_GROUP,
            "max_per_group": cfg.data.max_per_group}
  return {"privacy_unit": "record", "unit_of_privacy": UNIT_OF_PRIVACY}


def balanced_grid_labels(num_classes: int, per_class: int) -> np.ndarray:
  """[K·per_class] labels 0,0,…,1,1,… for per-class sample grids."""
  return np.repeat(np.arange(num_classes, dtype=np.int32), per_class)


def generate_grid(generator: tf.keras.Model, num_classes: int, per_class: int,
                  seed: int = 1234) -> np.ndarray:
  """Fixed-noise per-class samples [K·per_class, H, W, C] in inference mode."""
  labels = balanced_grid_labels(num_classes, per_class)
  z = tf.random.stateless_uniform([len(labels), generator.latent_dim], [seed, 0])
  return generator([z, tf.constant(labels)], training=False).numpy()


def privacy_report(cfg: config_lib.TrainConfig, plan: accounting.PrivacyPlan, ledger,
                   finished: bool, identity: Optional[rundir.RunIdentity] = None) -> dict:
  """The publishable privacy.json: plan, steps spent, ε under RDP and PLD, the unit of
  privacy (ε is per record, or per group: the ledger's dataset_size N counts the units),
  and whether the run is private at all (never the key or the data fingerprint)."""
  private = cfg.privacy.dp and (identity is None or identity.private)
  report = {"dp": cfg.privacy.dp, "mechanism": cfg.privacy.mechanism,
            "dataset": cfg.data.name, "finished": finished,
            "plan": dataclasses.asdict(plan), "private": private, **unit_of_privacy(cfg),
            "neighbouring_relation": accounting.NEIGHBOURING_RELATION}
  if identity is not None:
    report["run_id"] = identity.run_id
    report["key_source"] = identity.key_source
    if not private:
      report["private_reason"] = identity.reason
  if ledger is not None:
    # The second accountant (PLD takes seconds at 1e5+ steps) only in the final report.
    report["ledger"] = accounting.report(ledger, all_accountants=finished)
  return report


def write_scalars(writer: events.EventWriter, step: int, logs: dict) -> None:
  """One scalar event per finite value of `logs` (a non-finite one is skipped)."""
  for name, value in logs.items():
    if math.isfinite(value):
      writer.scalar(name, value, step)


def write_samples(writer: events.EventWriter, images: np.ndarray, label_names: Sequence[str],
                  workdir: str, step: int, final: bool = False) -> str:
  """Generated (never private) images: a TensorBoard grid "samples" and a PNG, one row per
  class."""
  num_classes, per_class = len(label_names), 10
  writer.image("samples", images_lib.tile_rows(np.asarray(images), num_classes), step)
  name = "final.png" if final else f"step_{step:07d}.png"
  return images_lib.save_class_grid_png(
      images, balanced_grid_labels(num_classes, per_class), label_names,
      os.path.join(workdir, rundir.SAMPLES_DIR, name), per_class=per_class,
      title=f"step {step}")

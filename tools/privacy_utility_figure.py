"""The README's privacy–utility picture: one row of samples per run, labelled with its ε and
the LogReg accuracy of its eval.json.

  python tools/privacy_utility_figure.py --out=docs/digits_privacy_utility.png \
      RUN_DIR[,LABEL] ...

Each RUN_DIR holds export/generator (the SavedModel) and eval/eval.json (`evaluate`);
LABEL defaults to "ε = <eval.json's privacy.epsilon>" or "no privacy". The samples come from
the export's `sample` signature with --per_class images of every class and --seed, so the
picture is post-processing of released generators only (publishable).
"""

import json
import os
import sys

import numpy as np
from absl import app, flags

from dp_sinkhorn_tf.evaluation import evaluation
from dp_sinkhorn_tf.io import images as images_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "PNG to write.", required=True)
flags.DEFINE_integer("per_class", 2, "Samples per class in each row.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed of the samples (the same for every run).")


def row(run_dir: str, per_class: int, seed: int):
  """(uint8 image row, label text) of one run."""
  with open(os.path.join(run_dir, "eval", "eval.json")) as fh:
    report = json.load(fh)
  sampler = evaluation.sampler_from_saved_model(os.path.join(run_dir, "export", "generator"))
  k = sampler.num_classes
  labels = np.repeat(np.arange(k, dtype=np.int32), per_class)
  tiles = images_lib.tile_rows(sampler(labels, seed), rows=1)
  privacy = report.get("privacy", {})
  epsilon = privacy.get("epsilon")
  name = "no privacy" if not privacy.get("dp", True) or epsilon is None else (
      f"ε = {epsilon:.3g}")
  return tiles, name, report["accuracies"].get("logreg")


def main(argv):
  specs = argv[1:]
  if not specs:
    raise app.UsageError("give at least one RUN_DIR[,LABEL]")
  plt = images_lib._pyplot()  # pylint: disable=protected-access
  rows = []
  for spec in specs:
    run_dir, _, label = spec.partition(",")
    tiles, name, logreg = row(run_dir, FLAGS.per_class, FLAGS.seed)
    text = label or name
    if logreg is not None:
      text += f"\nLogReg {100 * logreg:.1f} %"
    rows.append((tiles, text))
  fig, axes = plt.subplots(len(rows), 1, figsize=(8, 0.6 * len(rows) + 0.2))
  axes = np.atleast_1d(axes)
  for ax, (tiles, text) in zip(axes, rows):
    ax.imshow(tiles[..., 0] if tiles.shape[-1] == 1 else tiles, cmap="gray", vmin=0, vmax=255,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_ylabel(text, rotation=0, ha="right", va="center", fontsize=9)
  images_lib.save_figure_atomic(fig, FLAGS.out)
  print(f"wrote {FLAGS.out}")
  return 0


if __name__ == "__main__":
  sys.exit(app.run(main))

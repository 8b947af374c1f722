r"""Evaluates an exported DP-Sinkhorn generator the way the paper does.

  python -m dp_sinkhorn_tf.evaluate --model=runs/digits/export/generator \
      --workdir=runs/digits --dataset=digits --out=runs/digits/eval
  python -m dp_sinkhorn_tf.evaluate --model=runs/mine/export/generator \
      --data=folder:/data/my_scans_heldout --out=runs/mine/eval

Draws --num_samples images from the export (--model: a version directory or a model
directory, whose highest numeric version is used), trains --classifiers on them and scores
them on a held-out REAL split (--dataset=NAME's test split, --data=SOURCE of your own, or
unset: the built-in set the model was trained on), optionally with --fid; writes eval.json,
samples.png, labels.png and (with --workdir) epsilon.png to --out. With --paper_protocol
(default) eval.json also holds the paper's OPTIMISTIC test-selected accuracies, for
comparison only. What each step does: `dp_sinkhorn_tf.evaluation.evaluate_lib`.

--model=real is the non-private baseline (the classifiers train on the real training split).
Its pictures would show PRIVATE training records, so it writes none; --write_private_images
writes them anyway, but to --out/private_real_images/ next to a DO_NOT_PUBLISH.txt, never to
--out itself: that folder must never be published.

Paths (--model, --workdir, --out, --fid_cache, --data=…) may be local or on any tf.io.gfile
file system (gs://, hdfs://, ram://: `io.files`). Errors print one line `error: ...` naming
the flag and exit non-zero; --out is only written once everything has been computed.
"""

import dataclasses
import sys

from absl import flags

from dp_sinkhorn_tf import cli
from dp_sinkhorn_tf.data import datasets
from dp_sinkhorn_tf.data import spec as data_spec
from dp_sinkhorn_tf.evaluation import evaluate_lib, evaluation
from dp_sinkhorn_tf.evaluation import fid as fid_lib

PRIVATE_DIR = evaluate_lib.PRIVATE_DIR  # named in --write_private_images' help

FLAGS = flags.FlagValues()  # private registry: importable next to main.py's flags
cli.define_shared("model", "SavedModel export (version dir or model dir with numeric "
                  "versions), or 'real' for the real-training-data baseline.", flag_values=FLAGS)
cli.define_shared("workdir", "Training workdir: privacy_ledger.json for the ε plot and "
                  "privacy.json for eval.json.", flag_values=FLAGS)
flags.DEFINE_string("dataset", None, "Real data, a built-in set: one of "
                    f"{', '.join(datasets.DATASETS)} (its test split; unset: the model's own "
                    "built-in set).", flag_values=FLAGS)
flags.DEFINE_string("data", None, "Real held-out data of your own instead of --dataset: "
                    f"{data_spec.SOURCE_HELP} (docs/own-data.md).", flag_values=FLAGS)
flags.DEFINE_string("image_key", None, "--data=tfds:/tfrecord: the image feature (default "
                    "image).", flag_values=FLAGS)
flags.DEFINE_string("label_key", None, "--data=tfds:/tfrecord: the label feature (default "
                    "label).", flag_values=FLAGS)
flags.DEFINE_string("data_dir", None, "TFDS data directory.", flag_values=FLAGS)
flags.DEFINE_string("idx_dir", None, "Folder with MNIST / Fashion-MNIST IDX files.",
                    flag_values=FLAGS)
flags.DEFINE_integer("num_samples", 60000, "Generated training images (balanced labels).",
                     flag_values=FLAGS)
cli.define_shared("seed", "Seed of generation, validation split and classifiers.", 0,
                  flag_values=FLAGS)
flags.DEFINE_string("classifiers", ",".join(evaluation.CLASSIFIERS),
                    f"Comma-separated subset of {','.join(evaluation.CLASSIFIERS)}.",
                    flag_values=FLAGS)
flags.DEFINE_string("fid", "none", f"One of {'|'.join(fid_lib.FID_BACKENDS)}: inception is the "
                    "standard FID (needs the fid extra); pixels is NOT comparable with papers.",
                    flag_values=FLAGS)
flags.DEFINE_integer("fid_num_samples", 10000, "Generated images used for the FID (CPU "
                     "Inception runs at a few images per second).", flag_values=FLAGS)
flags.DEFINE_string("fid_cache", None, "Optional .npz caching the real test split's feature "
                    "statistics.", flag_values=FLAGS)
flags.DEFINE_float("val_fraction", 0.1, "Held-out fraction of the training images for early "
                   "stopping.", flag_values=FLAGS)
flags.DEFINE_integer("max_epochs", 30, "Most classifier epochs.", flag_values=FLAGS)
flags.DEFINE_integer("patience", 5, "Epochs without a lower validation loss before stopping.",
                     flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 128, "Classifier batch size.", flag_values=FLAGS)
flags.DEFINE_float("learning_rate", 1e-3, "Classifier Adam learning rate.", flag_values=FLAGS)
flags.DEFINE_integer("epsilon_points", 50, "Steps at which epsilon.png evaluates ε (each "
                     "costs one accountant call).", flag_values=FLAGS)
flags.DEFINE_bool("paper_protocol", True, "Also report the paper's protocol: each "
                  "classifier trained on all generated images for --max_epochs, its best REAL "
                  "TEST accuracy over the epochs (test-selected: optimistic, for comparison "
                  "only).", flag_values=FLAGS)
flags.DEFINE_bool("show_epochs", True, "Print one line per classifier epoch.",
                  flag_values=FLAGS)
flags.DEFINE_string("out", None, "Output directory (created).", flag_values=FLAGS)
flags.DEFINE_bool("write_private_images", False, "--model=real only: also write samples.png "
                  f"and labels.png of the real training split, to <out>/{PRIVATE_DIR}/. They "
                  "show PRIVATE training records: never publish them. Without it --model=real "
                  "writes no picture of the training split.", flag_values=FLAGS)


def config_from_flags(f) -> evaluate_lib.EvalConfig:
  """The parsed flags `f` as a frozen, checked EvalConfig (FlagError naming a bad flag)."""
  fields = dataclasses.fields(evaluate_lib.EvalConfig)
  return evaluate_lib.make_config(**{field.name: getattr(f, field.name) for field in fields})


def _log(message: str) -> None:
  print(message, flush=True)


main = cli.main_of(lambda f: evaluate_lib.run(config_from_flags(f), _log), FLAGS,
                   "dp_sinkhorn_tf.evaluate")


if __name__ == "__main__":
  sys.exit(main())

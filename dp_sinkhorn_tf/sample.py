r"""Draws class-conditional samples from an exported generator (no server needed): a grid,
the raw arrays, or a synthetic copy of the data set in the form it came in.

  python -m dp_sinkhorn_tf.sample --model=runs/digits_demo/export/generator \
      --labels=0,1,2 --num_per_label=8 --seed=0 --out=grid.png
  python -m dp_sinkhorn_tf.sample --model=runs/mine/export/generator \
      --format=folder --num_per_label=500 --out=runs/mine/synthetic
  python -m dp_sinkhorn_tf.sample --model=runs/mine/export/generator \
      --format=npz --proportions=cat:0.3,dog:0.7 --num=1000 --out=runs/mine/synthetic_npz

--model is an export version directory (holding saved_model.pb) or the model directory
holding numeric versions, of which the highest is used (as TF Serving does); local or any
tf.io.gfile path (gs://, ram://, …), as is --out.

Which images. --labels names classes by their names in the export's metadata (the run's
data spec: folder names, a TFDS builder's ClassLabel names) or by index; unset, every class,
which for a model trained on unlabelled data (one class) is label 0: the label is optional
there. Each entry of --labels gets --num_per_label images; or --num=N images in all, spread
over --labels as evenly as N allows; or --proportions=cat:0.3,dog:0.7 with --num=N: the
weights (normalised to sum 1; a class left out gets none) times N, rounded by largest
remainder so that the counts sum to N exactly (ties: the class listed first). The counts are
the user's: nothing here reads the private data or its class counts, which ε does not cover
(do not type them in unless they are public: the manifest publishes what you asked for).

The images are label-major (every image of the first entry, then the next), image i from
the latent z_i, row i of tf.random.stateless_uniform([N, latent_dim], seed=[--seed, 0])
(the export's `sample` rule: row i depends on (seed, i) only), generated in inference mode
by the export's `serving_default` signature in batches (BatchNorm uses its moving
averages, so an image does not depend on its batch); the same flags give the same images.

--format (unset: by --out's suffix):
  grid      (--out=*.png) one row per entry of --labels, --num_per_label columns.
  arrays    (--out=*.npz) images (float32 [N, H, W, C] in [−1, 1]), images_uint8 (uint8, the
            same images as clip(round((x + 1)·127.5), 0, 255)), labels (int32 [N]), z
            (float32 [N, latent_dim]) and seed (int64).
  folder    --out=DIR/: one sub-folder per class named by the export's label names, holding
            PNGs 000000.png, 000001.png, … (a model trained on unlabelled data: the PNGs in
            DIR itself). A class that gets no image gets no folder. Read back with
            --data=folder:DIR (classes are then numbered in sorted name order, as for any
            folder; `evaluate` and held-out loading match them to a model's classes by
            name).
  npz       --out=DIR/: DIR/synthetic.npz with images uint8 [N, H, W, C], labels int32 [N]
            (the export's class indices) and label_names [K] (no labels / label_names for an
            unlabelled model). Read back with --data=npz:DIR/synthetic.npz.
  tfrecord  --out=DIR/: DIR/synthetic-00000-of-0000S.tfrecord, at most 10,000 records a
            file: tf.train.Example with the PNG under "image" and the class index (int64)
            under "label" (no label for an unlabelled model): the keys --data=tfrecord:
            reads by default. Read back with --data=tfrecord:DIR/*.tfrecord (label names are
            then 0…K−1; the manifest has the names).
The three data-set formats write DIR/synthetic_manifest.json beside the images: "synthetic":
true, the model (path, name, version, run id, data spec), its privacy (ε, δ, accountant,
unit of privacy, whether the run is private at all), the seed and latent rule, the label
names, the counts per class and the request (--num_per_label, or --num and --proportions).
All of it is post-processing of the released generator and its metadata, and the images
are generated ones (no private record): publishable as the export is. --data=folder: skips
the manifest at the folder's top silently (it is not an image of the set).

Writing. A grid or an npz file is written beside its destination and renamed into place.
A data set is written into a folder beside DIR (.DIR.tmp-<pid>) and moved to DIR when
complete (one rename locally; a copy on object stores, the manifest among the files), so
DIR is either whole or absent; DIR must not exist or be an empty folder: sample never
overwrites a data set. Flags are checked against the export's assets.extra/metadata.json
(label names, or indices in [0, num_classes)) before TensorFlow is loaded; a bad flag exits
with status 2 and one `error:` line naming it, writing nothing.
"""

import os
import sys

from absl import flags

from dp_sinkhorn_tf import cli
from dp_sinkhorn_tf.io import errors
from dp_sinkhorn_tf.release import synthetic

FlagError = errors.FlagError  # the one class of a bad flag (io.errors), by its short name

FLAGS = flags.FlagValues()  # private registry (cli): importable beside the training flags
cli.define_shared("model", "Export version directory, or the model directory holding numeric "
                  "versions (the highest is used).", flag_values=FLAGS)
flags.DEFINE_string("labels", None, "Comma-separated classes by name (cat,dog) or index "
                    "(0,3), one grid row each (default: every class; an unlabelled model has "
                    "the one class 0).", flag_values=FLAGS)
flags.DEFINE_integer("num_per_label", 8, "Samples per entry of --labels.", lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_integer("num", None, "Samples in all (instead of --num_per_label): spread over "
                     "--labels as evenly as possible, or by --proportions.", lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_string("proportions", None, "With --num: class weights, e.g. cat:0.3,dog:0.7 "
                    "(normalised; a class left out gets no image). Your choice, published in "
                    "the manifest: never the private set's class counts unless public.",
                    flag_values=FLAGS)
cli.define_shared("seed", "Seed of the latents (int64).", 0, flag_values=FLAGS)
flags.DEFINE_enum("format", None, list(synthetic.FORMATS), "grid (a .png), arrays (an .npz), "
                  "or a synthetic data set in a new folder --out: folder (PNGs in class "
                  "folders), npz or tfrecord, with synthetic_manifest.json (default: by "
                  "--out's suffix, .png grid, .npz arrays).", flag_values=FLAGS)
flags.DEFINE_string("out", None, "Output: a .png grid or .npz arrays, or the new folder of "
                    "a synthetic data set (--format=folder|npz|tfrecord).", flag_values=FLAGS)


def config_from_flags(f) -> synthetic.SampleConfig:
  """The parsed flags `f` checked (reads the export's metadata, writes nothing) into a
  SampleConfig; raises FlagError naming the flag."""
  for name in ("model", "out"):
    if not getattr(f, name):
      raise FlagError(f"--{name}: required")
  fmt = synthetic.check_out(f.out, f.format)
  version_dir, version = synthetic.resolve_version_dir(f.model)
  metadata = synthetic.read_metadata(version_dir, f.model)
  names = metadata["label_names"]
  per_label_given = f["num_per_label"].present
  proportions = None
  if f.proportions is not None:
    if f.num is None:
      raise FlagError(f"--proportions={f.proportions}: needs --num=N, the total number of "
                      "images")
    if f.labels is not None:
      raise FlagError(f"--labels={f.labels}: not with --proportions (it names the classes)")
    proportions = tuple(synthetic.parse_proportions(f.proportions, names))
  if f.num is not None and per_label_given:
    raise FlagError(f"--num_per_label={f.num_per_label}: not with --num={f.num} (one or the "
                    "other)")
  if f.num is not None and fmt == synthetic.GRID:
    raise FlagError(f"--num={f.num}: a grid has --num_per_label images per row; --num and "
                    "--proportions are for --format=arrays|folder|npz|tfrecord")
  if proportions is not None:
    labels = [index for index, _ in proportions]
    counts = synthetic.largest_remainder(f.num, [w for _, w in proportions])
  else:
    labels = synthetic.parse_labels(f.labels, names)
    if f.num is not None:
      counts = synthetic.largest_remainder(f.num, [1.0] * len(labels))
    else:
      counts = [f.num_per_label] * len(labels)
  if fmt == synthetic.FOLDER:
    for index, count in zip(labels, counts):
      problem = synthetic.folder_name_problem(str(names[index]))
      if count and problem and synthetic.is_labelled(metadata):
        raise FlagError(f"--format=folder: class {names[index]!r} {problem}; use "
                        "--format=npz or tfrecord")
  return synthetic.SampleConfig(
      model=f.model, version_dir=version_dir, version=version, metadata=metadata,
      labels=tuple(labels), num_per_label=f.num_per_label, seed=f.seed, out=f.out,
      suffix=os.path.splitext(f.out.rstrip("/"))[1].lower(), format=fmt,
      counts=tuple(counts), num=f.num, proportions=proportions)


main = cli.main_of(lambda f: synthetic.run(config_from_flags(f)), FLAGS,
                   "dp_sinkhorn_tf.sample")


if __name__ == "__main__":
  sys.exit(main())

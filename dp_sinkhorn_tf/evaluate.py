r"""Evaluates an exported DP-Sinkhorn generator the way the paper does.

  python -m dp_sinkhorn_tf.evaluate --model=runs/digits/export/generator \
      --workdir=runs/digits --dataset=digits --out=runs/digits/eval
  python -m dp_sinkhorn_tf.evaluate --model=runs/mine/export/generator \
      --data=folder:/data/my_scans_heldout --out=runs/mine/eval

The real data are a held-out split: --dataset=NAME's test split, or --data=SOURCE (your own
held-out images, `data.spec`; TFDS: split "test"); unset, the built-in set the model was
trained on. They are brought to the model's data spec (its export metadata): resized /
converted to its image shape as training's --image_size / --channels did, class folders
matched to its label names by name (a folder class the model does not know is an error).

1. Draws --num_samples generated images with balanced labels from the SavedModel's `sample`
   signature (--model: a version directory or a model directory; the highest numeric
   version is used).
2. Trains each of --classifiers (logreg, mlp, cnn) on them, early-stopping on a held-out
   part of the GENERATED set, and reports its accuracy on the real test split, which
   training never sees.
   With --paper_protocol (default) it then also trains each classifier the DP-Sinkhorn
   paper's way and reports, under "accuracies_paper_protocol", its best real-test accuracy
   over --max_epochs epochs: the test split picks the epoch, so these numbers are
   OPTIMISTIC, for comparison with the paper only; "accuracies" is the strict protocol.
   "class_structure": the images' within-class spread against the real test split's and
   the test accuracy of their nearest class mean (`evaluation.class_spread`): what the
   classifiers gain over that accuracy is what they learnt beyond the class prototypes.
3. Optionally the Fréchet distance to the real test split (--fid=inception: the standard
   FID, an optional extra; --fid=pixels: pixel features, NOT comparable with published
   FIDs) on the first --fid_num_samples generated images.
4. Writes to --out: eval.json, samples.png (one row per class), labels.png (label
   histogram) and, with --workdir holding a privacy ledger, epsilon.png (ε against step).
   eval.json's "pictures" lists the picture files written (and any withheld, and why).

--model=real is the non-private baseline: the classifiers train on (at most --num_samples
records of) the real training split instead. Its samples.png and labels.png would show
PRIVATE training records, so it writes neither: --out gets eval.json (and epsilon.png) only,
and eval.json says the pictures were withheld. --write_private_images (--model=real only; an
error with a generated model, whose pictures are publishable) writes them anyway, but to the
sub-folder --out/private_real_images/ next to a DO_NOT_PUBLISH.txt, never to --out itself:
that folder holds private records and must never be published.

Paths (--model, --workdir, --out, --fid_cache, --data=…) may be local or on any tf.io.gfile
file system (gs://, hdfs://, ram://: `io.files`).

Errors print one line `error: ...` naming the flag and exit non-zero; --out is only written
once everything has been computed (every file via a temp file and rename, eval.json last; a
previous run's outputs this run does not produce, private_real_images/ included, are removed
just before eval.json).
"""

import dataclasses
import json
import os
import sys
import time
from typing import Optional, Tuple

import numpy as np
from absl import flags

from dp_sinkhorn_tf import cli
from dp_sinkhorn_tf.data import datasets
from dp_sinkhorn_tf.data import spec as data_spec
from dp_sinkhorn_tf.evaluation import evaluation
from dp_sinkhorn_tf.evaluation import fid as fid_lib
from dp_sinkhorn_tf.io import files, rundir
from dp_sinkhorn_tf.io import images as images_lib

REAL = "real"
LEDGER_FILE = rundir.LEDGER_FILE
PRIVACY_FILE = rundir.REPORT_FILE
EVAL_FILE = "eval.json"
GRID_FILE = "samples.png"
HISTOGRAM_FILE = "labels.png"
EPSILON_FILE = "epsilon.png"
# --model=real --write_private_images: pictures of private records, only ever in this sub-folder.
PRIVATE_DIR = "private_real_images"
DO_NOT_PUBLISH_FILE = "DO_NOT_PUBLISH.txt"
PRIVATE_GRID_FILE = f"{PRIVATE_DIR}/{GRID_FILE}"
PRIVATE_HISTOGRAM_FILE = f"{PRIVATE_DIR}/{HISTOGRAM_FILE}"
PRIVATE_WARNING_FILE = f"{PRIVATE_DIR}/{DO_NOT_PUBLISH_FILE}"
OUTPUT_FILES = (EVAL_FILE, GRID_FILE, HISTOGRAM_FILE, EPSILON_FILE, PRIVATE_GRID_FILE,
                PRIVATE_HISTOGRAM_FILE, PRIVATE_WARNING_FILE)  # paths relative to --out

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


class FlagError(ValueError):
  """A bad flag value; the message starts with the flag."""


def _require(condition: bool, flag: str, expected: str, value) -> None:
  cli.require(condition, flag, expected, value, error=FlagError)


def _parse_classifiers(text: str):
  kinds = [k.strip() for k in text.split(",") if k.strip()]
  if not kinds:
    raise FlagError(f"--classifiers={text!r}: expected a comma-separated subset of "
                    f"{','.join(evaluation.CLASSIFIERS)}")
  for kind in kinds:
    if kind not in evaluation.CLASSIFIERS:
      raise FlagError(f"--classifiers: unknown classifier {kind!r} (expected a subset of "
                      f"{','.join(evaluation.CLASSIFIERS)})")
  if len(set(kinds)) != len(kinds):
    raise FlagError(f"--classifiers={text}: a classifier is listed twice")
  return kinds


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """`evaluate`'s flags, validated (`config_from_flags`); each field is the flag of its name
  (see the flag definitions above), --classifiers parsed into a tuple."""

  model: str
  out: str
  workdir: Optional[str]
  dataset: Optional[str]
  data: Optional[str]
  image_key: Optional[str]
  label_key: Optional[str]
  data_dir: Optional[str]
  idx_dir: Optional[str]
  num_samples: int
  seed: int
  classifiers: Tuple[str, ...]
  fid: str
  fid_num_samples: int
  fid_cache: Optional[str]
  val_fraction: float
  max_epochs: int
  patience: int
  batch_size: int
  learning_rate: float
  epsilon_points: int
  paper_protocol: bool
  show_epochs: bool
  write_private_images: bool


def config_from_flags(f) -> EvalConfig:
  """The parsed flags `f` validated (reads the disk, writes nothing) into an EvalConfig;
  raises FlagError naming the flag."""
  if not f.model:
    raise FlagError("--model: required (an export directory, or 'real')")
  if f.write_private_images and f.model != REAL:
    raise FlagError(f"--write_private_images: only with --model={REAL} (it writes pictures of "
                    "private training records); a generated model's pictures are not private and "
                    "go to --out without it")
  if not f.out:
    raise FlagError("--out: required (the output directory)")
  if files.exists(f.out) and not files.isdir(f.out):
    raise FlagError(f"--out={f.out}: exists and is not a directory")
  if f.dataset is not None and f.data is not None:
    raise FlagError(f"--data={f.data}: expected either --data or --dataset, not both")
  _require(f.dataset is None or f.dataset in datasets.DATASETS, "dataset",
           f"one of {', '.join(datasets.DATASETS)} (your own data: --data=SOURCE)", f.dataset)
  try:
    real_data(f.dataset, f.data, f.data_dir, f.idx_dir, f.image_key, f.label_key)
  except ValueError as e:
    raise FlagError(str(e)) from None
  _require(f.num_samples >= 2, "num_samples", "at least 2", f.num_samples)
  _require(f.fid in fid_lib.FID_BACKENDS, "fid", f"one of {'|'.join(fid_lib.FID_BACKENDS)}",
           f.fid)
  _require(f.fid == "none" or f.fid_num_samples >= 2, "fid_num_samples", "at least 2",
           f.fid_num_samples)
  _require(0 < f.val_fraction < 1, "val_fraction", "a fraction in (0, 1)", f.val_fraction)
  _require(f.learning_rate > 0, "learning_rate", "a positive number", f.learning_rate)
  for name in ("max_epochs", "patience", "batch_size", "epsilon_points"):
    _require(getattr(f, name) >= 1, name, "at least 1", getattr(f, name))
  _require(f.seed >= 0, "seed", "a non-negative integer", f.seed)
  if f.model != REAL and not files.exists(f.model):
    raise FlagError(f"--model={f.model}: no such export directory")
  if f.workdir is not None and not files.isdir(f.workdir):
    raise FlagError(f"--workdir={f.workdir}: not a directory")
  if f.fid_cache is not None and files.isdir(f.fid_cache):
    raise FlagError(f"--fid_cache={f.fid_cache}: is a directory; expected an .npz file path")
  kinds = _parse_classifiers(f.classifiers)
  val_size = max(1, round(f.val_fraction * f.num_samples))
  if f.num_samples - val_size < 1:
    raise FlagError(f"--num_samples={f.num_samples}: leaves no training image after the "
                    f"--val_fraction={f.val_fraction} validation split")
  if f.model == REAL and f.dataset is None:
    raise FlagError(f"--model={REAL}: needs --dataset=NAME, a built-in set with a training "
                    "and a test split (the baseline trains on the training split)")
  values = {field.name: getattr(f, field.name) for field in dataclasses.fields(EvalConfig)}
  return EvalConfig(**dict(values, classifiers=tuple(kinds)))


def real_data(dataset, data, data_dir, idx_dir, image_key, label_key):
  """The real data's flags as a train.config.DataConfig (its checks: one flag line), or
  None when neither --dataset nor --data is given (then the model's own set)."""
  from dp_sinkhorn_tf.train import config as config_lib

  if dataset is None and data is None:
    if idx_dir is not None:
      raise FlagError(f"--idx_dir={idx_dir}: expected with --dataset=mnist or fashion_mnist")
    return None
  return config_lib.DataConfig(dataset=dataset, source=data, data_dir=data_dir,
                               idx_dir=idx_dir, image_key=image_key, label_key=label_key)


def model_spec(sampler) -> data_spec.DataSpec:
  """The data spec a model was trained on: its metadata's "data_spec", or (an export of an
  older version) one built from its image_shape and label_names."""
  meta = sampler.metadata
  where = os.path.join(sampler.path, "assets.extra", "metadata.json")
  if "data_spec" in meta:
    try:
      return data_spec.DataSpec.from_json(meta["data_spec"], where)
    except ValueError as e:
      raise FlagError(f"--model={sampler.path}: {e}") from None
  return data_spec.DataSpec(source=str(meta.get("dataset", "")), image_shape=sampler.image_shape,
                            label_names=sampler.label_names)


def _load_workdir(workdir):
  """(ledger or None, privacy.json dict or None) from a training workdir."""
  from dp_sinkhorn_tf.privacy import accounting

  if workdir is None:
    return None, None
  ledger = privacy_json = None
  ledger_path = os.path.join(workdir, LEDGER_FILE)
  if files.exists(ledger_path):
    try:
      ledger = accounting.PrivacyLedger.load(ledger_path)
    except ValueError as e:
      raise FlagError(f"--workdir={workdir}: {e}") from None
  report_path = os.path.join(workdir, PRIVACY_FILE)
  if files.exists(report_path):
    try:
      privacy_json = json.loads(files.read_text(report_path))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise FlagError(f"--workdir={workdir}: {report_path} is not valid JSON ({e})") from None
  return ledger, privacy_json


def _check_compatible(sampler, test: datasets.Dataset) -> None:
  """The held-out images (brought to the model's data spec) fit what the model generates."""
  if sampler.image_shape != tuple(test.image_shape):
    raise FlagError(f"--model={sampler.path}: generates {sampler.image_shape} images, the "
                    f"test images ({test.name}) are {tuple(test.image_shape)}")
  if sampler.num_classes != test.num_classes:
    raise FlagError(f"--model={sampler.path}: {sampler.num_classes} classes, the test "
                    f"images ({test.name}) {test.num_classes}")


def _load_split(data, split: str, like=None) -> datasets.Dataset:
  """datasets.load(data, split, like) as float32 images; its errors re-raised naming a flag."""
  try:
    return datasets.load(data, split, like).as_float()
  except (ValueError, FileNotFoundError) as e:
    text = cli.first_line(e)
    raise FlagError(text if text.startswith("--") else f"--data={data.name}: {text}") \
        from None


def _log(message: str) -> None:
  print(message, flush=True)


def _writer(name: str, write):
  """A _stage_and_publish writer: write(path) for `name` (one of OUTPUT_FILES, relative to
  the staging directory, maybe in PRIVATE_DIR) → name."""
  def stage(staging: str) -> str:
    path = os.path.join(staging, name)
    files.makedirs(os.path.dirname(path))
    write(path)
    return name
  return stage


def _publish_order(name: str) -> int:
  """DO_NOT_PUBLISH.txt before the private pictures it warns about; eval.json last."""
  return {PRIVATE_WARNING_FILE: 0, EVAL_FILE: 2}.get(name, 1)


def _stage_and_publish(out: str, writers) -> None:
  """Runs each writer(staging_dir) → file name relative to it, then moves the files into
  `out` (DO_NOT_PUBLISH.txt before the private pictures, eval.json last, each by one
  rename, `files.replace`; a previous run's outputs this run lacks are removed just before
  eval.json, the warning last, and an emptied PRIVATE_DIR with them). The staging folder
  .<out>.tmp-<pid> sits beside `out` (local or any tf.io.gfile path). A failure while
  writing leaves `out` as it was."""
  out = files.abspath(out.rstrip("/") or out)
  parent, base = os.path.split(out)
  staging = os.path.join(parent, f".{base}.tmp-{os.getpid()}")
  files.rmtree(staging)  # left by a killed process that had our pid
  files.makedirs(staging)
  try:
    names = [writer(staging) for writer in writers]
    files.makedirs(out)
    for name in sorted(names, key=_publish_order):
      if name == EVAL_FILE:  # a previous run's outputs that this run did not produce go
        for stale in sorted(set(OUTPUT_FILES) - set(names), key=_publish_order, reverse=True):
          if files.isfile(os.path.join(out, stale)):
            files.remove(os.path.join(out, stale))
        private_dir = os.path.join(out, PRIVATE_DIR)
        if files.isdir(private_dir) and not files.listdir(private_dir):
          files.rmdir(private_dir)
      dest = os.path.join(out, name)
      files.makedirs(os.path.dirname(dest))
      files.replace(os.path.join(staging, name), dest)
  finally:
    files.rmtree(staging)


def _write_do_not_publish(path: str, dataset: str) -> str:
  lines = [
      "DO NOT PUBLISH this folder.",
      "",
      f"{GRID_FILE} and {HISTOGRAM_FILE} here show PRIVATE training records: real images of "
      f"the --dataset={dataset} training split and its label histogram, written by "
      f"`python -m dp_sinkhorn_tf.evaluate --model={REAL} --write_private_images` (the "
      "non-private baseline). Differential privacy exists to protect these records: do not "
      "publish, upload or share them.",
      "",
      f"Publish the evaluation folder without {PRIVATE_DIR}/ (without --write_private_images "
      "it is never written).",
  ]
  files.write_text_atomic(path, "\n".join(lines) + "\n")
  return path


def class_structure(images: np.ndarray, labels: np.ndarray, test) -> dict:
  """eval.json's "class_structure": the classifiers' training images' within-class spread
  against the real test split's, and the accuracy of their nearest class mean on it."""
  k = test.num_classes
  spread = evaluation.class_spread(images, labels, k)
  real = evaluation.class_spread(test.images, test.labels, k)
  return {"spread": round(spread, 4), "real_test_spread": round(real, 4),
          "spread_ratio": round(spread / real, 4),
          "nearest_class_mean_accuracy": evaluation.nearest_class_mean_accuracy(
              images, labels, test.images, test.labels, k),
          "note": "spread: mean L2 distance (pixels in [-1, 1]) of an image to its class mean; "
                  "nearest_class_mean_accuracy: real test accuracy of the classifier that "
                  "knows only the class means of the images the classifiers trained on"}


def run(cfg: EvalConfig) -> int:
  """The evaluation of `cfg`; raises FlagError / ValueError / FileNotFoundError."""
  kinds = list(cfg.classifiers)
  started = time.time()
  extractor = None
  if cfg.fid != "none":
    try:
      extractor = fid_lib.make_extractor(cfg.fid)
    except ImportError as e:
      raise FlagError(f"--fid={cfg.fid}: {e}") from None
  ledger, privacy_json = _load_workdir(cfg.workdir)
  real = real_data(cfg.dataset, cfg.data, cfg.data_dir, cfg.idx_dir, cfg.image_key,
                   cfg.label_key)
  sampler = spec = None
  if cfg.model != REAL:
    try:
      sampler = evaluation.sampler_from_saved_model(cfg.model)
    except (ValueError, FileNotFoundError) as e:
      raise FlagError(f"--model={cfg.model}: {e}") from None
    spec = model_spec(sampler)
    trained_on = sampler.metadata.get("dataset")
    if cfg.dataset is not None and trained_on not in (None, cfg.dataset):
      raise FlagError(f"--dataset={cfg.dataset}: the model was trained on {trained_on!r} "
                      f"({sampler.path})")
    if real is None:
      if spec.source not in datasets.DATASETS:
        raise FlagError(f"--data: required: held-out real images like the model's training "
                        f"data ({spec.source or 'unknown'}), e.g. --data=folder:PATH")
      real = real_data(spec.source, None, cfg.data_dir, None, None, None)
  test = _load_split(real, "test", spec)
  for note in test.notes:
    _log(note)
  _log(f"test split of {real.name}: {len(test.images)} images {tuple(test.image_shape)}, "
       f"{test.num_classes} classes")

  if cfg.model == REAL:
    train = _load_split(real, "train")
    n = min(cfg.num_samples, len(train.images))
    chosen = np.random.default_rng(cfg.seed).permutation(len(train.images))[:n]
    images, labels = train.images[chosen], train.labels[chosen]
    metadata = None
    privacy = {"dp": False, "note": "classifiers trained on the real private training split: "
               "a non-private baseline"}
    label_names = train.label_names
    _log(f"baseline: {n} real training images (of {len(train.images)})")
  else:
    _check_compatible(sampler, test)
    metadata, label_names = sampler.metadata, sampler.label_names
    privacy = evaluation.privacy_summary(metadata, privacy_json)
    _log(f"generating {cfg.num_samples} images from {sampler.path}")
    images, labels = evaluation.generate_dataset(sampler, sampler.num_classes, cfg.num_samples,
                                                 cfg.seed)
    n = cfg.num_samples
  if cfg.model == REAL and privacy_json is not None:
    privacy["privacy_json"] = privacy_json

  def on_trained(result):
    _log(f"  {result.kind}: best epoch {result.best_epoch + 1}/{len(result.history['loss'])}"
         f", validation accuracy {result.val_accuracy:.4f}")

  one_class = test.num_classes == 1
  classifier_note = None
  if one_class:  # an unconditional model: nothing to classify
    accuracies, kinds = {}, []
    classifier_note = ("one class (an unconditional model): no classifier is trained; "
                       "compare images with --fid and class_structure's spread")
    _log(classifier_note)
  else:
    _log(f"training {', '.join(kinds)} on {n} images (validation fraction "
         f"{cfg.val_fraction})")
    accuracies = evaluation.evaluate_downstream(
        images, labels, test.images, test.labels, test.num_classes, kinds, cfg.seed,
        on_trained=on_trained, val_fraction=cfg.val_fraction, max_epochs=cfg.max_epochs,
        patience=cfg.patience, batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
        verbose=2 if cfg.show_epochs else 0)
  for kind, acc in accuracies.items():
    _log(f"test accuracy {kind}: {acc:.4f}")
  structure = class_structure(images, labels, test)
  spread = (f"within-class spread {structure['spread']:.2f} against "
            f"{structure['real_test_spread']:.2f} for the real test split (ratio "
            f"{structure['spread_ratio']:.2f})")
  if one_class:
    _log(spread[0].upper() + spread[1:])
  else:
    _log(f"nearest-class-mean accuracy: {structure['nearest_class_mean_accuracy']:.4f} (a "
         f"classifier that knows only the class means of the {n} images); {spread}")
  paper = None
  if cfg.paper_protocol and not one_class:
    _log("the paper's protocol (epoch chosen by real test accuracy: OPTIMISTIC, for "
         "comparison only)")
    paper = evaluation.evaluate_paper_protocol(
        images, labels, test.images, test.labels, test.num_classes, kinds, cfg.seed,
        max_epochs=cfg.max_epochs, batch_size=cfg.batch_size, learning_rate=cfg.learning_rate)
    for kind, result in paper.items():
      _log(f"paper-protocol test accuracy {kind}: {result.accuracy:.4f} (epoch "
           f"{result.best_epoch + 1}/{len(result.test_accuracies)}; optimistic)")

  fid_value, fid_reason = None, None
  if extractor is None:
    fid_reason = "not requested (--fid=none)"
  else:
    fake = images[:min(cfg.fid_num_samples, len(images))]
    _log(f"FID ({cfg.fid}) of {len(fake)} images against {len(test.images)} test images")
    fid_value = fid_lib.compute_fid(test.images, fake, extractor, cfg.fid_cache)
    _log(f"FID ({cfg.fid}): {fid_value:.4f}" +
         ("" if cfg.fid == "inception" else " (pixel features: NOT the standard FID)"))

  extra = {"classifier_settings": {"val_fraction": cfg.val_fraction, "max_epochs": cfg.max_epochs,
                                   "patience": cfg.patience, "batch_size": cfg.batch_size,
                                   "learning_rate": cfg.learning_rate},
           "fid_num_samples": None if extractor is None else min(cfg.fid_num_samples, n),
           "label_names": list(label_names), "class_structure": structure,
           "classifiers_note": classifier_note,
           "seconds": round(time.time() - started, 1)}
  if paper is not None:
    extra["accuracies_paper_protocol"] = {k: r.accuracy for k, r in paper.items()}
    extra["paper_protocol"] = {
        "note": "OPTIMISTIC, for comparison with the DP-Sinkhorn paper only: each classifier "
                "trains on all generated images for max_epochs and reports its best real "
                "test accuracy over the epochs (the test split selects the epoch). "
                "'accuracies' is the strict protocol.",
        "best_epochs": {k: r.best_epoch + 1 for k, r in paper.items()},
        "test_accuracy_per_epoch": {k: r.test_accuracies for k, r in paper.items()}}
  if metadata is not None:
    extra["export_path"] = files.abspath(sampler.path)
  report = evaluation.eval_report(
      model=cfg.model, dataset=real.name, accuracies=accuracies, num_samples=n, seed=cfg.seed,
      test_size=len(test.images), privacy=privacy, fid=fid_value,
      fid_backend=None if extractor is None else extractor.name,
      fid_is_standard=cfg.fid == "inception", fid_reason=fid_reason, extra=extra)
  if cfg.workdir is not None and ledger is None:
    report["epsilon_plot"] = f"none: {os.path.join(cfg.workdir, LEDGER_FILE)} not found"
  elif ledger is not None and ledger.steps_taken < 1:
    report["epsilon_plot"] = "none: the ledger records no step"
    ledger = None

  # --model=real pictures show private records: withheld, or (--write_private_images) in
  # PRIVATE_DIR next to DO_NOT_PUBLISH.txt; a generated model's go to --out itself.
  private = cfg.model == REAL
  pictures, note = [GRID_FILE, HISTOGRAM_FILE], None
  if private and not cfg.write_private_images:
    pictures = []
    note = (f"{GRID_FILE} and {HISTOGRAM_FILE} withheld: with --model={REAL} they would show "
            f"private training records (--write_private_images writes them to {PRIVATE_DIR}/, "
            "never to be published)")
  elif private:
    pictures = [PRIVATE_GRID_FILE, PRIVATE_HISTOGRAM_FILE]
    note = (f"{PRIVATE_DIR}/ holds PRIVATE training records (--write_private_images): never "
            "publish it")
  what = "PRIVATE real training data" if private else f"generated ({cfg.model})"
  writers = []
  if pictures:
    grid_file, histogram_file = pictures
    if private:
      writers.append(_writer(PRIVATE_WARNING_FILE,
                             lambda p: _write_do_not_publish(p, cfg.dataset)))
    writers.append(_writer(grid_file, lambda p: images_lib.save_class_grid_png(
        images, labels, label_names, p, title=what)))
    writers.append(_writer(histogram_file, lambda p: images_lib.save_label_histogram_png(
        labels, label_names, p, reference_labels=test.labels, title=f"labels: {what}")))
  if ledger is not None:
    writers.append(_writer(EPSILON_FILE, lambda p: images_lib.save_epsilon_plot_png(
        ledger, p, cfg.epsilon_points)))
  report["pictures"] = {
      "written": pictures + ([EPSILON_FILE] if ledger is not None else []),
      "private": pictures if private else [],
      "withheld": [GRID_FILE, HISTOGRAM_FILE] if private and not pictures else [],
      "note": note}
  writers.append(_writer(EVAL_FILE, lambda p: files.write_json_atomic(p, report)))
  _stage_and_publish(cfg.out, writers)
  if private and not pictures:
    _log(f"not writing {GRID_FILE} / {HISTOGRAM_FILE}: with --model={REAL} they would show "
         f"private training records (--write_private_images writes them to "
         f"{os.path.join(cfg.out, PRIVATE_DIR)}, never to be published)")
  elif private:
    _log(f"wrote PRIVATE training records to {os.path.join(cfg.out, PRIVATE_DIR)} ({GRID_FILE}, "
         f"{HISTOGRAM_FILE}): they must NOT be published (see {DO_NOT_PUBLISH_FILE})")
  _log(f"wrote {os.path.join(cfg.out, EVAL_FILE)} ({time.time() - started:.0f} s)")
  return 0


main = cli.main_of(lambda f: run(config_from_flags(f)), FLAGS, "dp_sinkhorn_tf.evaluate")


if __name__ == "__main__":
  sys.exit(main())

"""`python -m dp_sinkhorn_tf.evaluate` as a library: an exported generator evaluated the way
the paper does, from a checked `EvalConfig` (`make_config`) to the files in its `out`.

The real data are a held-out split: `dataset`'s test split, or `data` (a source of your own,
`data.spec`; TFDS: split "test"); unset, the built-in set the model was trained on. They
are brought to the model's data spec (its export metadata): resized / converted to its
image shape as training's --image_size / --channels did, class folders matched to its label
names by name (a folder class the model does not know is an error).

`run(cfg, log)`:
1. Draws `num_samples` generated images with balanced labels from the SavedModel's `sample`
   signature (`model`: a version directory or a model directory; the highest numeric
   version is used).
2. Trains each of `classifiers` (`evaluation.CLASSIFIERS`) on them, early-stopping on a
   held-out part of the GENERATED set, and reports its accuracy on the real test split,
   which training never sees. With `paper_protocol` it then also trains each classifier the
   DP-Sinkhorn paper's way (`evaluation.evaluate_paper_protocol`: the test split picks the
   epoch, so OPTIMISTIC, for comparison only), and reports the class structure
   (`class_structure`).
3. Optionally the Fréchet distance to the real test split (`fid`: "inception", the standard
   FID; "pixels", NOT comparable with published FIDs) on the first `fid_num_samples`
   generated images.
4. Writes to `out`: eval.json, samples.png (one row per class), labels.png (label
   histogram) and, with a `workdir` holding a privacy ledger, epsilon.png (ε against step);
   eval.json's "pictures" lists the picture files written (and any withheld, and why).

`model` = REAL is the non-private baseline: the classifiers train on (at most
`num_samples` records of) the real training split. Its pictures would show PRIVATE training
records, so it writes none, unless `write_private_images`, and then only to
out/PRIVATE_DIR/ next to DO_NOT_PUBLISH.txt, never to `out` itself.

Every file is written to a staging folder and moved into `out` only once everything has
been computed (`_stage_and_publish`): eval.json last, and a previous run's outputs this run
does not produce removed just before it. Errors are FlagError / ValueError /
FileNotFoundError whose one-line message names the flag; `log` receives the lines the
command prints.
"""

import dataclasses
import json
import os
import time
import types
from typing import Callable, Optional, Tuple

import numpy as np

from dp_sinkhorn_tf.data import datasets
from dp_sinkhorn_tf.data import spec as data_spec
from dp_sinkhorn_tf.evaluation import evaluation
from dp_sinkhorn_tf.evaluation import fid as fid_lib
from dp_sinkhorn_tf.io import errors, files, rundir
from dp_sinkhorn_tf.io import images as images_lib
from dp_sinkhorn_tf.privacy import accounting

FlagError = errors.FlagError  # the one class of a bad flag (io.errors), by its short name
Log = Callable[[str], None]  # one line of the command's output

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


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """`evaluate`'s flags, checked (`make_config`); each field is the flag of its name (see
  dp_sinkhorn_tf.evaluate), --classifiers parsed into a tuple."""

  model: str  # an export (version or model directory), or REAL
  out: str
  workdir: Optional[str]  # the training run: its ledger (epsilon.png) and privacy.json
  dataset: Optional[str]  # a built-in set's test split
  data: Optional[str]  # or held-out data of your own (`data.spec`)
  image_key: Optional[str]
  label_key: Optional[str]
  data_dir: Optional[str]
  idx_dir: Optional[str]
  num_samples: int  # generated training images (balanced labels)
  seed: int
  classifiers: Tuple[str, ...]
  fid: str  # one of fid.FID_BACKENDS
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


def _require(condition: bool, flag: str, expected: str, value) -> None:
  errors.require(condition, flag, expected, value, error=FlagError)


def parse_classifiers(text: str) -> Tuple[str, ...]:
  """--classifiers' comma-separated text as a tuple of distinct `evaluation.CLASSIFIERS`."""
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
  return tuple(kinds)


def make_config(**flag_values) -> EvalConfig:
  """The flag values (one per EvalConfig field, by flag name; --classifiers as its text)
  checked (reads the disk, writes nothing) into an EvalConfig; raises FlagError naming the
  first bad flag."""
  f = types.SimpleNamespace(**flag_values)
  _check_paths_and_data(f)
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
  kinds = parse_classifiers(f.classifiers)
  val_size = max(1, round(f.val_fraction * f.num_samples))
  if f.num_samples - val_size < 1:
    raise FlagError(f"--num_samples={f.num_samples}: leaves no training image after the "
                    f"--val_fraction={f.val_fraction} validation split")
  if f.model == REAL and f.dataset is None:
    raise FlagError(f"--model={REAL}: needs --dataset=NAME, a built-in set with a training "
                    "and a test split (the baseline trains on the training split)")
  return EvalConfig(**dict(flag_values, classifiers=kinds))


def _check_paths_and_data(f) -> None:
  """make_config's first checks: --model, --out and the real data's flags."""
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
    text = errors.first_line(e)
    raise FlagError(text if text.startswith("--") else f"--data={data.name}: {text}") \
        from None


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


@dataclasses.dataclass(frozen=True)
class _TrainingSet:
  """What the classifiers train on: generated images, or the real baseline's records."""

  images: np.ndarray
  labels: np.ndarray
  label_names: tuple
  metadata: Optional[dict]  # the export's; None for the real baseline
  privacy: dict  # eval.json's "privacy"


def run(cfg: EvalConfig, log: Log) -> int:
  """The evaluation of `cfg`: writes its files to cfg.out, returns 0; raises FlagError /
  ValueError / FileNotFoundError (one line naming the flag) before writing anything."""
  started = time.time()
  extractor = None
  if cfg.fid != "none":
    try:
      extractor = fid_lib.make_extractor(cfg.fid)
    except ImportError as e:
      raise FlagError(f"--fid={cfg.fid}: {e}") from None
  ledger, privacy_json = _load_workdir(cfg.workdir)
  real, sampler, spec = _real_data_and_model(cfg)
  test = _load_split(real, "test", spec)
  for note in test.notes:
    log(note)
  log(f"test split of {real.name}: {len(test.images)} images {tuple(test.image_shape)}, "
      f"{test.num_classes} classes")
  train = _training_set(cfg, real, sampler, test, privacy_json, log)
  accuracies, paper, structure, classifier_note = _classify(cfg, train, test, log)
  fid_value, fid_reason = _fid(cfg, extractor, train.images, test, log)
  n = len(train.images)
  extra = {"classifier_settings": {"val_fraction": cfg.val_fraction, "max_epochs": cfg.max_epochs,
                                   "patience": cfg.patience, "batch_size": cfg.batch_size,
                                   "learning_rate": cfg.learning_rate},
           "fid_num_samples": None if extractor is None else min(cfg.fid_num_samples, n),
           "label_names": list(train.label_names), "class_structure": structure,
           "classifiers_note": classifier_note,
           "seconds": round(time.time() - started, 1)}
  if paper is not None:
    extra.update(_paper_protocol_json(paper))
  if train.metadata is not None:
    extra["export_path"] = files.abspath(sampler.path)
  report = evaluation.eval_report(
      model=cfg.model, dataset=real.name, accuracies=accuracies, num_samples=n, seed=cfg.seed,
      test_size=len(test.images), privacy=train.privacy, fid=fid_value,
      fid_backend=None if extractor is None else extractor.name,
      fid_is_standard=cfg.fid == "inception", fid_reason=fid_reason, extra=extra)
  if cfg.workdir is not None and ledger is None:
    report["epsilon_plot"] = f"none: {os.path.join(cfg.workdir, LEDGER_FILE)} not found"
  elif ledger is not None and ledger.steps_taken < 1:
    report["epsilon_plot"] = "none: the ledger records no step"
    ledger = None
  _write_outputs(cfg, report, train, test, ledger, log)
  log(f"wrote {os.path.join(cfg.out, EVAL_FILE)} ({time.time() - started:.0f} s)")
  return 0


def _real_data_and_model(cfg: EvalConfig):
  """(the real data's DataConfig, the model's sampler, its data spec); sampler and spec
  are None for the real baseline."""
  real = real_data(cfg.dataset, cfg.data, cfg.data_dir, cfg.idx_dir, cfg.image_key,
                   cfg.label_key)
  if cfg.model == REAL:
    return real, None, None
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
  return real, sampler, spec


def _training_set(cfg: EvalConfig, real, sampler, test: datasets.Dataset,
                  privacy_json: Optional[dict], log: Log) -> _TrainingSet:
  """The generated images (balanced labels), or the real baseline's training records."""
  if cfg.model == REAL:
    train = _load_split(real, "train")
    n = min(cfg.num_samples, len(train.images))
    chosen = np.random.default_rng(cfg.seed).permutation(len(train.images))[:n]
    privacy = {"dp": False, "note": "classifiers trained on the real private training split: "
               "a non-private baseline"}
    if privacy_json is not None:
      privacy["privacy_json"] = privacy_json
    log(f"baseline: {n} real training images (of {len(train.images)})")
    return _TrainingSet(train.images[chosen], train.labels[chosen], train.label_names, None,
                        privacy)
  _check_compatible(sampler, test)
  privacy = evaluation.privacy_summary(sampler.metadata, privacy_json)
  log(f"generating {cfg.num_samples} images from {sampler.path}")
  images, labels = evaluation.generate_dataset(sampler, sampler.num_classes, cfg.num_samples,
                                               cfg.seed)
  return _TrainingSet(images, labels, sampler.label_names, sampler.metadata, privacy)


def _classify(cfg: EvalConfig, train: _TrainingSet, test: datasets.Dataset, log: Log):
  """(accuracies, paper-protocol results or None, class_structure, classifiers_note): the
  classifiers trained on `train`, scored on the real `test` split."""
  images, labels, n = train.images, train.labels, len(train.images)
  kinds = list(cfg.classifiers)

  def on_trained(result):
    log(f"  {result.kind}: best epoch {result.best_epoch + 1}/{len(result.history['loss'])}"
        f", validation accuracy {result.val_accuracy:.4f}")

  one_class = test.num_classes == 1
  classifier_note = None
  if one_class:  # an unconditional model: nothing to classify
    accuracies, kinds = {}, []
    classifier_note = ("one class (an unconditional model): no classifier is trained; "
                       "compare images with --fid and class_structure's spread")
    log(classifier_note)
  else:
    log(f"training {', '.join(kinds)} on {n} images (validation fraction "
        f"{cfg.val_fraction})")
    accuracies = evaluation.evaluate_downstream(
        images, labels, test.images, test.labels, test.num_classes, kinds, cfg.seed,
        on_trained=on_trained, val_fraction=cfg.val_fraction, max_epochs=cfg.max_epochs,
        patience=cfg.patience, batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
        verbose=2 if cfg.show_epochs else 0)
  for kind, acc in accuracies.items():
    log(f"test accuracy {kind}: {acc:.4f}")
  structure = class_structure(images, labels, test)
  spread = (f"within-class spread {structure['spread']:.2f} against "
            f"{structure['real_test_spread']:.2f} for the real test split (ratio "
            f"{structure['spread_ratio']:.2f})")
  if one_class:
    log(spread[0].upper() + spread[1:])
  else:
    log(f"nearest-class-mean accuracy: {structure['nearest_class_mean_accuracy']:.4f} (a "
        f"classifier that knows only the class means of the {n} images); {spread}")
  paper = None
  if cfg.paper_protocol and not one_class:
    log("the paper's protocol (epoch chosen by real test accuracy: OPTIMISTIC, for "
        "comparison only)")
    paper = evaluation.evaluate_paper_protocol(
        images, labels, test.images, test.labels, test.num_classes, kinds, cfg.seed,
        max_epochs=cfg.max_epochs, batch_size=cfg.batch_size, learning_rate=cfg.learning_rate)
    for kind, result in paper.items():
      log(f"paper-protocol test accuracy {kind}: {result.accuracy:.4f} (epoch "
          f"{result.best_epoch + 1}/{len(result.test_accuracies)}; optimistic)")
  return accuracies, paper, structure, classifier_note


def _paper_protocol_json(paper: dict) -> dict:
  """eval.json's "accuracies_paper_protocol" and "paper_protocol"."""
  return {
      "accuracies_paper_protocol": {k: r.accuracy for k, r in paper.items()},
      "paper_protocol": {
          "note": "OPTIMISTIC, for comparison with the DP-Sinkhorn paper only: each classifier "
                  "trains on all generated images for max_epochs and reports its best real "
                  "test accuracy over the epochs (the test split selects the epoch). "
                  "'accuracies' is the strict protocol.",
          "best_epochs": {k: r.best_epoch + 1 for k, r in paper.items()},
          "test_accuracy_per_epoch": {k: r.test_accuracies for k, r in paper.items()}}}


def _fid(cfg: EvalConfig, extractor, images: np.ndarray, test: datasets.Dataset, log: Log):
  """(FID or None, why there is none or None)."""
  if extractor is None:
    return None, "not requested (--fid=none)"
  fake = images[:min(cfg.fid_num_samples, len(images))]
  log(f"FID ({cfg.fid}) of {len(fake)} images against {len(test.images)} test images")
  value = fid_lib.compute_fid(test.images, fake, extractor, cfg.fid_cache)
  log(f"FID ({cfg.fid}): {value:.4f}" +
      ("" if cfg.fid == "inception" else " (pixel features: NOT the standard FID)"))
  return value, None


def _write_outputs(cfg: EvalConfig, report: dict, train: _TrainingSet, test: datasets.Dataset,
                   ledger, log: Log) -> None:
  """The pictures and eval.json (its "pictures" filled in here), published into cfg.out.

  --model=real pictures show private records: withheld, or (--write_private_images) in
  PRIVATE_DIR next to DO_NOT_PUBLISH.txt; a generated model's go to --out itself."""
  images, labels, label_names = train.images, train.labels, train.label_names
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
        ledger, accounting.epsilon_curve(ledger, cfg.epsilon_points), p)))
  report["pictures"] = {
      "written": pictures + ([EPSILON_FILE] if ledger is not None else []),
      "private": pictures if private else [],
      "withheld": [GRID_FILE, HISTOGRAM_FILE] if private and not pictures else [],
      "note": note}
  writers.append(_writer(EVAL_FILE, lambda p: files.write_json_atomic(p, report)))
  _stage_and_publish(cfg.out, writers)
  if private and not pictures:
    log(f"not writing {GRID_FILE} / {HISTOGRAM_FILE}: with --model={REAL} they would show "
        f"private training records (--write_private_images writes them to "
        f"{os.path.join(cfg.out, PRIVATE_DIR)}, never to be published)")
  elif private:
    log(f"wrote PRIVATE training records to {os.path.join(cfg.out, PRIVATE_DIR)} ({GRID_FILE}, "
        f"{HISTOGRAM_FILE}): they must NOT be published (see {DO_NOT_PUBLISH_FILE})")

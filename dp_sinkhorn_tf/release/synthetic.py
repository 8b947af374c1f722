"""Synthetic images from an exported generator: `python -m dp_sinkhorn_tf.sample`'s library.

What is drawn and how (the export's `sample` latent rule, label-major order, inference
mode), the formats (grid, arrays, folder, npz, tfrecord) and the manifest are documented at
the command line, `dp_sinkhorn_tf/sample.py`. Everything here is post-processing of the
released generator and its metadata: nothing reads private data.

  resolve_version_dir / read_metadata   the export (errors named after --model)
  parse_labels, parse_proportions, largest_remainder   which classes, how many of each
  check_out                             --out against --format
  SampleConfig                          the checked request (`sample.config_from_flags`)
  draw                                  the images, by the export's serving signature
  write_data_set, manifest, run         the files, written atomically
"""

import dataclasses
import json
import math
import os
import sys
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from dp_sinkhorn_tf import __version__
from dp_sinkhorn_tf.data import spec as data_spec
from dp_sinkhorn_tf.io import errors, files, images
from dp_sinkhorn_tf.release import serving

SUFFIXES = (".png", ".npz")
GRID, ARRAYS, FOLDER, NPZ, TFRECORD = "grid", "arrays", "folder", "npz", "tfrecord"
FORMATS = (GRID, ARRAYS, FOLDER, NPZ, TFRECORD)
DATA_FORMATS = (FOLDER, NPZ, TFRECORD)  # a synthetic data set: --out is a folder
SUFFIX_FORMAT = {".png": GRID, ".npz": ARRAYS}
MANIFEST_FILE = data_spec.SYNTHETIC_MANIFEST
NPZ_FILE = "synthetic.npz"
TFRECORD_PREFIX = "synthetic"
RECORDS_PER_FILE = 10_000
IMAGE_KEY, LABEL_KEY = "image", "label"  # --data=tfrecord:'s default keys
BATCH = 1024  # images per call of the generator


FlagError = errors.FlagError  # the one class of a bad flag (io.errors), by its short name


def resolve_version_dir(model: str) -> Tuple[str, Optional[int]]:
  """`serving.find_version_dir` with its error as a --model flag error."""
  try:
    return serving.find_version_dir(model)
  except FileNotFoundError as e:
    raise FlagError(f"--model={e}") from None


def read_metadata(version_dir: str, model_flag: str) -> dict:
  """serving.read_metadata, its errors named after --model."""
  try:
    return serving.read_metadata(version_dir)
  except (FileNotFoundError, ValueError) as e:
    raise FlagError(f"--model={model_flag}: {e}") from None


def _class_index(item: str, names: Sequence[str], flag: str, text: str) -> int:
  """A class by name (a name wins over an index) or by index in [0, K)."""
  if item in names:
    return list(names).index(item)
  num_classes = len(names)
  try:
    index = int(item)
  except ValueError:
    shown = ", ".join(names[:20]) + (", …" if len(names) > 20 else "")
    raise FlagError(f"--{flag}={text}: {item!r} is neither a class name ({shown}) nor a "
                    f"class index in [0, {num_classes})") from None
  if not 0 <= index < num_classes:
    raise FlagError(f"--{flag}={text}: {index} outside [0, num_classes={num_classes})")
  return index


def parse_labels(text: Optional[str], label_names: Sequence[str]) -> List[int]:
  """--labels → class indices: "cat,dog" by name, "0,3" by index, mixed as needed; None →
  every class (for a one-class, unlabelled model: [0]).

  An item that is one of the export's label names is that class, else it is read as an
  index in [0, K): with classes named "1", "2", "3" (folders), "1" is class 0, the one named
  so."""
  if text is None:
    return list(range(len(label_names)))
  names = [str(name) for name in label_names]
  return [_class_index(item.strip(), names, "labels", text) for item in text.split(",")]


def parse_proportions(text: str, label_names: Sequence[str]) -> List[Tuple[int, float]]:
  """--proportions=cat:0.3,dog:0.7 → [(class index, weight normalised to sum 1)] in the order
  given; classes by name or index (as --labels). FlagError naming --proportions for an item
  without ':', a weight that is not a finite number ≥ 0, a class given twice, or weights
  summing to 0."""
  names = [str(name) for name in label_names]
  pairs, seen = [], set()
  for item in (part.strip() for part in text.split(",")):
    label, sep, weight_text = item.rpartition(":")
    if not sep or not label.strip():
      raise FlagError(f"--proportions={text}: {item!r} is not CLASS:WEIGHT (e.g. "
                      f"{names[0]}:0.5)")
    index = _class_index(label.strip(), names, "proportions", text)
    try:
      weight = float(weight_text)
    except ValueError:
      weight = math.nan
    if not math.isfinite(weight) or weight < 0:
      raise FlagError(f"--proportions={text}: weight {weight_text.strip()!r} of "
                      f"{label.strip()!r} is not a finite number ≥ 0")
    if index in seen:
      raise FlagError(f"--proportions={text}: class {names[index]!r} is given twice")
    seen.add(index)
    pairs.append((index, weight))
  total = math.fsum(w for _, w in pairs)
  if total <= 0:
    raise FlagError(f"--proportions={text}: the weights sum to 0")
  return [(index, weight / total) for index, weight in pairs]


def largest_remainder(total: int, weights: Sequence[float]) -> List[int]:
  """Non-negative integer counts summing to `total`, proportional to `weights` (≥ 0, sum
  > 0): each gets floor(total·w/Σw) and the remainder goes, one each, to the largest
  fractional parts (ties: the earlier weight)."""
  weight_sum = math.fsum(weights)
  quotas = [total * w / weight_sum for w in weights]
  counts = [int(math.floor(q)) for q in quotas]
  left = total - sum(counts)
  order = sorted(range(len(weights)), key=lambda i: (-(quotas[i] - counts[i]), i))
  for i in order[:left]:
    counts[i] += 1
  return counts


def check_out(out: str, fmt: Optional[str]) -> str:
  """--out against --format; returns the format (unset: by --out's suffix). A grid / arrays
  file must go into an existing folder; a data set's folder must not exist or be empty
  (its parent must exist on a local file system; object stores have no folders)."""
  suffix = os.path.splitext(out.rstrip("/"))[1].lower()
  if fmt is None:
    if suffix not in SUFFIX_FORMAT:
      raise FlagError(f"--out={out}: expected a file name ending in {' or '.join(SUFFIXES)}, "
                      f"or --format={'|'.join(DATA_FORMATS)} for a synthetic data set")
    fmt = SUFFIX_FORMAT[suffix]
  if fmt in DATA_FORMATS:
    if suffix in SUFFIX_FORMAT:
      raise FlagError(f"--out={out}: --format={fmt} writes a folder (the images and "
                      f"{MANIFEST_FILE}); name the folder, not a {suffix} file")
    try:
      files.staged_dir(out).check()
    except FileExistsError as e:
      raise FlagError(f"--out={out}: {e.strerror}; sample never overwrites a data set: "
                      "choose a new folder") from None
  else:
    expected = {GRID: ".png", ARRAYS: ".npz"}[fmt]
    if suffix != expected:
      raise FlagError(f"--out={out}: --format={fmt} writes a {expected} file")
    if files.isdir(out):
      raise FlagError(f"--out={out}: is a directory")
  parent = os.path.dirname(files.abspath(out.rstrip("/")))
  if not files.is_remote(out) and not files.isdir(parent):
    raise FlagError(f"--out={out}: directory {parent} does not exist")
  return fmt


def _title(metadata: dict, version: Optional[int], seed: int) -> str:
  name = metadata.get("model_name", "generator")
  head = f"{name} v{version}" if version is not None else name
  eps, delta = metadata.get("epsilon"), metadata.get("delta")
  if metadata.get("dp") is False:
    privacy = "non-private"
  elif isinstance(eps, (int, float)) and isinstance(delta, (int, float)):
    privacy = f"(ε={eps:.3g}, δ={delta:g})-DP"
  else:
    privacy = None
  return ", ".join(part for part in (head, f"seed {seed}", privacy) if part)


def draw(version_dir: str, labels: Sequence[int], counts, seed: int,
         keep_float: bool = True) -> dict:
  """Images of labels[j] repeated counts[j] times (label-major; `counts` an int: that many
  of each) from the latents of the export's `sample` rule, by its `serving_default`
  signature in batches of BATCH (module docstring). keep_float=False keeps images_uint8
  only (a data set needs no float copy)."""
  import tensorflow as tf

  if isinstance(counts, int):
    counts = [counts] * len(labels)
  repeated = np.repeat(np.asarray(labels, np.int32), np.asarray(counts, np.int64))
  loaded = serving.load_saved_model(version_dir)
  generate = loaded.signatures[serving.SERVING_DEFAULT]
  latent_dim = int(generate.structured_input_signature[1]["z"].shape[-1])
  z = tf.random.stateless_uniform([len(repeated), latent_dim],
                                  tf.constant([seed, 0], tf.int64), dtype=tf.float32)
  out_float, out_uint8 = [], []
  for start in range(0, len(repeated), BATCH):
    out = generate(z=z[start:start + BATCH],
                   label=tf.constant(repeated[start:start + BATCH], tf.int32))
    if keep_float:
      out_float.append(out["images"].numpy())
    out_uint8.append(out["images_uint8"].numpy())
  arrays = {"images_uint8": np.concatenate(out_uint8), "labels": repeated, "z": z.numpy(),
            "seed": np.int64(seed)}
  if keep_float:
    arrays["images"] = np.concatenate(out_float)
  return arrays


@dataclasses.dataclass(frozen=True)
class SampleConfig:
  """`sample`'s flags, validated against the export (`config_from_flags`): --model resolved
  to its version directory, --labels / --proportions parsed into the classes drawn and
  their counts, --out checked against --format."""

  model: str  # --model as given (named in errors)
  version_dir: str
  version: Optional[int]  # None when --model is a version directory without a number
  metadata: Mapping = dataclasses.field(repr=False)  # the export's metadata.json
  labels: Tuple[int, ...]  # the classes drawn, in order (grid rows)
  num_per_label: int
  seed: int
  out: str
  suffix: str  # --out's suffix, lower case ("" for a folder)
  format: str = GRID  # one of FORMATS
  counts: Tuple[int, ...] = ()  # images of each entry of labels
  num: Optional[int] = None  # --num
  proportions: Optional[Tuple[Tuple[int, float], ...]] = None  # (class, normalised weight)


def folder_name_problem(name: str) -> str:
  """Why a label name cannot name a class folder that --data=folder: reads back ('' if it
  can)."""
  if not name or name in (".", ".."):
    return "has no usable folder name"
  if "/" in name or "\\" in name or "\0" in name:
    return "contains a path separator"
  if name.startswith("."):
    return "starts with '.' (a hidden folder, which --data=folder: skips)"
  return ""


def is_labelled(metadata: Mapping) -> bool:
  """False for a model trained on unlabelled data (its data spec says so)."""
  spec = metadata.get("data_spec")
  return not (isinstance(spec, Mapping) and spec.get("labelled") is False)


def _counts_by_name(cfg: SampleConfig) -> Dict[str, int]:
  names = [str(n) for n in cfg.metadata["label_names"]]
  out = {name: 0 for name in names}
  for index, count in zip(cfg.labels, cfg.counts):
    out[names[index]] += count
  return out


def manifest(cfg: SampleConfig, read_back: str, layout: str) -> dict:
  """synthetic_manifest.json (module docstring): what the images are and where they come
  from, from the export's metadata and the flags only."""
  meta = cfg.metadata
  spec = meta.get("data_spec") if isinstance(meta.get("data_spec"), Mapping) else {}
  names = [str(n) for n in meta["label_names"]]
  counts = _counts_by_name(cfg)
  if cfg.proportions is not None:
    requested = {"num": cfg.num,
                 "proportions": {names[i]: w for i, w in cfg.proportions}}
  elif cfg.num is not None:
    requested = {"num": cfg.num, "labels": [names[i] for i in cfg.labels]}
  else:
    requested = {"num_per_label": cfg.num_per_label, "labels": [names[i] for i in cfg.labels]}
  return {
      "synthetic": True,
      "what": "images generated by an exported DP-Sinkhorn generator: no record of the "
              "private training data; post-processing of the released generator, so the "
              "run's (epsilon, delta) covers them",
      "format": cfg.format, "layout": layout, "read_back": read_back,
      "num_images": int(sum(counts.values())), "counts": counts, "requested": requested,
      "label_names": names, "labelled": is_labelled(meta),
      "image_shape": list(meta["image_shape"]),
      "seed": cfg.seed,
      "latents": "image i (label-major order) from row i of tf.random.stateless_uniform("
                 "[N, latent_dim], seed=[seed, 0]); inference mode",
      "uint8_rule": meta.get("uint8_rule"),
      "run_id": meta.get("run_id"),
      "dp": meta.get("dp"), "private": meta.get("private"),
      "private_reason": meta.get("private_reason"),
      "epsilon": meta.get("epsilon"), "delta": meta.get("delta"),
      "accountant": meta.get("accountant"),
      "neighbouring_relation": meta.get("neighbouring_relation"),
      "privacy_unit": meta.get("privacy_unit", spec.get("privacy_unit")),
      "model": {"path": files.abspath(cfg.version_dir), "model_name": meta.get("model_name"),
                "version": cfg.version, "dataset": meta.get("dataset"),
                "data_spec": spec or None,
                "exported_by": meta.get("dp_sinkhorn_tf_version")},
      "sampled_by": f"dp_sinkhorn_tf {__version__} (python -m dp_sinkhorn_tf.sample)",
  }


def _encode_pngs(pixels: np.ndarray):
  """uint8 [N, H, W, C] → an iterator of PNG bytes (tf.io.encode_png), in order."""
  import tensorflow as tf

  dataset = tf.data.Dataset.from_tensor_slices(pixels).map(
      tf.io.encode_png, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return dataset.as_numpy_iterator()


def write_data_set(cfg: SampleConfig, arrays: dict) -> Tuple[str, str]:
  """The synthetic data set of `arrays` in cfg.format, with its manifest, into cfg.out
  (atomically: `files.staged_dir`); returns (how to read it back, the layout)."""
  import tensorflow as tf

  pixels, labels = arrays["images_uint8"], arrays["labels"]
  names = [str(n) for n in cfg.metadata["label_names"]]
  labelled = is_labelled(cfg.metadata)
  out = cfg.out.rstrip("/")
  try:
    with files.staged_dir(out) as tmp:
      if cfg.format == FOLDER:
        read_back, layout = f"--data=folder:{out}", (
            "<label name>/<index>.png" if labelled else "<index>.png")
        width = max(6, len(str(max(cfg.counts, default=1))))
        seen: Dict[int, int] = {}
        if labelled:
          for k in sorted(set(int(x) for x in labels)):
            files.makedirs(os.path.join(tmp, names[k]))
        for label, png in zip(labels, _encode_pngs(pixels)):
          k = int(label)
          index = seen.get(k, 0)
          seen[k] = index + 1
          name = f"{index:0{width}d}.png"
          files.write_bytes(os.path.join(tmp, names[k], name) if labelled
                            else os.path.join(tmp, name), png)
      elif cfg.format == NPZ:
        payload = {"images": pixels}
        if labelled:
          payload.update(labels=labels.astype(np.int32), label_names=np.array(names))
        files.write_bytes(os.path.join(tmp, NPZ_FILE), files.npz_bytes(payload, compressed=True))
        read_back, layout = f"--data=npz:{out}/{NPZ_FILE}", NPZ_FILE
      else:
        shards = max(1, -(-len(labels) // RECORDS_PER_FILE))
        pngs = _encode_pngs(pixels)
        for shard in range(shards):
          name = f"{TFRECORD_PREFIX}-{shard:05d}-of-{shards:05d}.tfrecord"
          with tf.io.TFRecordWriter(os.path.join(tmp, name)) as writer:
            for label in labels[shard * RECORDS_PER_FILE:(shard + 1) * RECORDS_PER_FILE]:
              feature = {IMAGE_KEY: tf.train.Feature(
                  bytes_list=tf.train.BytesList(value=[next(pngs)]))}
              if labelled:
                feature[LABEL_KEY] = tf.train.Feature(
                    int64_list=tf.train.Int64List(value=[int(label)]))
              writer.write(tf.train.Example(features=tf.train.Features(
                  feature=feature)).SerializeToString())
        read_back = f"--data=tfrecord:{out}/*.tfrecord"
        layout = (f"{TFRECORD_PREFIX}-NNNNN-of-{shards:05d}.tfrecord: tf.train.Example "
                  f"{{{IMAGE_KEY!r}: PNG bytes" + (f", {LABEL_KEY!r}: int64 class index}}"
                                                   if labelled else "}"))
      text = json.dumps(files.json_safe(manifest(cfg, read_back, layout)), indent=2,
                        sort_keys=True, allow_nan=False) + "\n"
      files.write_bytes(os.path.join(tmp, MANIFEST_FILE), text.encode("utf-8"))
  except FileExistsError as e:
    raise FlagError(f"--out={cfg.out}: {e.strerror}; sample never overwrites a data set: "
                    "choose a new folder") from None
  return read_back, layout


def run(cfg: SampleConfig) -> int:
  """Draws the samples and writes --out (atomically); prints one line."""
  counts = cfg.counts or (cfg.num_per_label,) * len(cfg.labels)
  try:
    arrays = draw(cfg.version_dir, cfg.labels, list(counts), cfg.seed,
                  keep_float=cfg.format in (GRID, ARRAYS))
  except ValueError as e:
    raise FlagError(f"--model={cfg.model}: {e}") from None
  labels, metadata = list(cfg.labels), cfg.metadata
  total = len(arrays["labels"])
  if cfg.format == ARRAYS:
    files.write_npz_atomic(cfg.out, {k: arrays[k] for k in ("images", "images_uint8", "labels", "z",
                                                       "seed")})
  elif cfg.format == GRID:
    rows = np.repeat(np.arange(len(labels), dtype=np.int32), cfg.num_per_label)  # label-major
    names = [str(metadata["label_names"][k]) for k in labels]
    images.save_class_grid_png(arrays["images"], rows, names, cfg.out,
                               per_class=cfg.num_per_label,
                               title=_title(metadata, cfg.version, cfg.seed))
  else:
    read_back, _ = write_data_set(cfg, arrays)
    shown = ", ".join(f"{name}: {n}" for name, n in _counts_by_name(cfg).items() if n)
    print(f"{cfg.out}: a synthetic data set of {total} images ({shown}) as {cfg.format}, "
          f"with {MANIFEST_FILE}, from {cfg.version_dir}; read it back with {read_back}")
    if metadata.get("dp") is False or metadata.get("private") is False:
      print(f"note: the model is not private ({metadata.get('private_reason') or 'no DP'}): "
            "neither are these images", file=sys.stderr)
    return 0
  print(f"{cfg.out}: {total} samples of labels {labels} from {cfg.version_dir}")
  return 0

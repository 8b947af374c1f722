"""Private training sets: digits (embedded), MNIST / Fashion-MNIST IDX files, TFDS.

Every loader returns a `Dataset` with images [N, H, W, C] float32 in [−1, 1]
(x ↦ (x − max/2) / (max/2), so 0 ↦ −1 and max ↦ 1 exactly) and labels [N] int32.
`load_dataset` returns the TRAINING split only: the private set whose size N the accountant
uses. `load_test_split` returns the held-out split for evaluation; training never reads it.

* "digits": scikit-learn's 1,797 8×8 digits (values 0..16), the embedded default. The split
  is fixed: numpy.random.default_rng(0).permutation(1797); its last 20 % (359 images) is the
  test split, the first 1,438 the private training split.
* IDX (`idx_dir`, the --idx_dir flag): the original MNIST / Fashion-MNIST files
  train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
  t10k-labels-idx1-ubyte, each gzipped (.gz) or raw. The IDX header is parsed here: two zero
  bytes, type 0x08 (unsigned byte), rank, then rank big-endian uint32 dimensions. Debian's
  dataset-fashion-mnist package installs them in /usr/share/datasets/fashion-mnist.
* TFDS (`data_dir`, the --data_dir flag): mnist, fashion_mnist, cifar10, celeb_a. Never
  downloads. celeb_a (218×178) is centre-cropped to 178×178 and resized to 32×32 (area-
  antialiased, rounded to uint8); its label is attributes['Male'] (0 female, 1 male) and
  its test split is TFDS's "test".

Missing data raises `DataNotFoundError` (a FileNotFoundError and a ValueError) naming the flag
and the files expected; malformed or unreadable files raise ValueError naming the file.
"""

import dataclasses
import gzip
import os
import struct
from typing import Optional, Tuple

import numpy as np

DIGIT_LABELS = tuple(str(i) for i in range(10))
FASHION_LABELS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                  "Sneaker", "Bag", "Ankle boot")
CIFAR_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                "ship", "truck")
LABEL_NAMES = {"digits": DIGIT_LABELS, "mnist": DIGIT_LABELS, "fashion_mnist": FASHION_LABELS,
               "cifar10": CIFAR_LABELS, "celeb_a": ("female", "male")}
DATASETS = tuple(LABEL_NAMES)
IDX_DATASETS = ("mnist", "fashion_mnist")
SPLITS = ("train", "test")
DIGITS_SEED = 0
DIGITS_TEST_FRACTION = 0.2
CELEBA_CROP = 178
CELEBA_SIZE = 32
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IDX_UBYTE = 0x08


class DataNotFoundError(FileNotFoundError, ValueError):
  """The requested data is not where the flags say (both a FileNotFoundError and a ValueError)."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """An in-memory labelled image set.

  images: [N, H, W, C] float32 in [−1, 1]; labels: [N] int32 in [0, num_classes);
  image_shape: (H, W, C); label_names: num_classes names, label_names[k] for class k.
  """

  name: str
  images: np.ndarray
  labels: np.ndarray
  num_classes: int
  image_shape: Tuple[int, int, int]
  label_names: Tuple[str, ...]

  def __post_init__(self):
    if self.images.ndim != 4 or self.images.dtype != np.float32:
      raise ValueError(f"dataset {self.name!r}: images must be [N, H, W, C] float32, got "
                       f"{self.images.shape} {self.images.dtype}")
    if self.labels.shape != self.images.shape[:1] or self.labels.dtype != np.int32:
      raise ValueError(f"dataset {self.name!r}: labels must be [{len(self.images)}] int32, got "
                       f"{self.labels.shape} {self.labels.dtype}")
    if tuple(self.image_shape) != self.images.shape[1:]:
      raise ValueError(f"dataset {self.name!r}: image_shape {self.image_shape} does not match "
                       f"images {self.images.shape}")
    if len(self.label_names) != self.num_classes:
      raise ValueError(f"dataset {self.name!r}: {len(self.label_names)} label_names for "
                       f"num_classes={self.num_classes}")


def scale_to_unit_interval(pixels: np.ndarray, max_value: float) -> np.ndarray:
  """[0, max_value] → [−1, 1] as float32: x ↦ (x − m) / m, m = max_value / 2 (endpoints exact)."""
  half = np.float32(max_value / 2.0)
  return (pixels.astype(np.float32) - half) / half


def _make(name: str, pixels: np.ndarray, labels: np.ndarray, max_value: float) -> Dataset:
  """uint pixels [N, H, W(, C)] in [0, max_value] and labels [N] → Dataset."""
  if pixels.ndim == 3:
    pixels = pixels[..., np.newaxis]
  names = LABEL_NAMES[name]
  return Dataset(name, scale_to_unit_interval(pixels, max_value), labels.astype(np.int32),
                 len(names), tuple(int(s) for s in pixels.shape[1:]), names)


# ---- digits -------------------------------------------------------------------------------

def _digits_split(split: str) -> Dataset:
  from sklearn.datasets import load_digits

  digits = load_digits()
  order = np.random.default_rng(DIGITS_SEED).permutation(len(digits.images))
  num_test = int(round(DIGITS_TEST_FRACTION * len(order)))
  chosen = order[-num_test:] if split == "test" else order[:-num_test]
  return _make("digits", digits.images[chosen], digits.target[chosen], 16.0)


# ---- IDX ----------------------------------------------------------------------------------

def _read_bytes(path: str) -> bytes:
  """File contents, gunzipped when the file starts with the gzip magic 1f 8b."""
  try:
    with open(path, "rb") as fh:
      raw = fh.read()
  except FileNotFoundError:
    raise DataNotFoundError(f"{path}: no such IDX file") from None
  except OSError as e:  # a directory, no permission, an I/O error: one line naming the file
    raise ValueError(f"{path}: unreadable ({e.strerror or type(e).__name__})") from None
  if raw[:2] != b"\x1f\x8b":
    return raw
  try:
    return gzip.decompress(raw)
  except (OSError, EOFError) as e:
    raise ValueError(f"{path}: corrupt gzip data ({e})") from None


def read_idx(path: str) -> np.ndarray:
  """One IDX file of unsigned bytes (gzipped or raw) → uint8 array of the header's dims."""
  raw = _read_bytes(path)
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != IDX_UBYTE:
    raise ValueError(f"{path}: bad IDX magic number 0x{raw[:4].hex()} (expected 0x000008NN: "
                     "unsigned-byte data of rank NN)")
  rank = raw[3]
  header = 4 + 4 * rank
  if len(raw) < header:
    raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, rank {rank} needs "
                     f"{header})")
  dims = struct.unpack(f">{rank}I", raw[4:header])
  expected = int(np.prod(dims, dtype=np.int64))
  if len(raw) - header != expected:
    raise ValueError(f"{path}: IDX body has {len(raw) - header} bytes, header dims {dims} "
                     f"need {expected}")
  return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _find_idx(idx_dir: str, stem: str) -> str:
  for candidate in (stem + ".gz", stem):
    path = os.path.join(idx_dir, candidate)
    if os.path.exists(path):
      return path
  raise DataNotFoundError(f"--idx_dir={idx_dir}: missing {stem}[.gz] (expected the original "
                          "MNIST / Fashion-MNIST IDX files)")


def load_idx(idx_dir: str, split: str = "train", name: str = "fashion_mnist") -> Dataset:
  """MNIST-format IDX files in `idx_dir` → Dataset: images [N, 28, 28, 1] in [−1, 1], labels [N].

  split: "train" (train-*) or "test" (t10k-*); name: "mnist" or "fashion_mnist" (label names).
  """
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  if name not in IDX_DATASETS:
    raise ValueError(f"name must be one of {IDX_DATASETS} for IDX files, got {name!r}")
  if not os.path.isdir(idx_dir):
    raise DataNotFoundError(f"--idx_dir={idx_dir}: not a directory")
  image_path, label_path = (_find_idx(idx_dir, stem) for stem in IDX_FILES[split])
  images, labels = read_idx(image_path), read_idx(label_path)
  if images.ndim != 3:
    raise ValueError(f"{image_path}: expected rank-3 images [N, H, W], got dims {images.shape}")
  if labels.ndim != 1 or len(labels) != len(images):
    raise ValueError(f"{label_path}: expected [{len(images)}] labels to match {image_path}, "
                     f"got dims {labels.shape}")
  num_classes = len(LABEL_NAMES[name])
  if labels.size and labels.max() >= num_classes:
    raise ValueError(f"{label_path}: label {labels.max()} outside 0..{num_classes - 1}")
  return _make(name, images, labels, 255.0)


# ---- TFDS ---------------------------------------------------------------------------------

def _tfds_example_converter(name: str):
  """TFDS example dict → (uint8 image [H, W, C], int32 label)."""
  import tensorflow as tf

  if name != "celeb_a":
    return lambda ex: (ex["image"], tf.cast(ex["label"], tf.int32))

  def convert(ex):
    image = tf.image.resize_with_crop_or_pad(ex["image"], CELEBA_CROP, CELEBA_CROP)
    image = tf.image.resize(image, [CELEBA_SIZE, CELEBA_SIZE], antialias=True)
    image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
    return image, tf.cast(ex["attributes"]["Male"], tf.int32)

  return convert


def _tfds_split(name: str, split: str, data_dir: Optional[str]) -> Dataset:
  import tensorflow as tf
  import tensorflow_datasets as tfds

  try:
    ds = tfds.load(name, split=split, data_dir=data_dir, download=False)
  except AssertionError:  # what TFDS raises for an unprepared dataset with download=False
    where = data_dir if data_dir is not None else "None (TFDS default ~/tensorflow_datasets)"
    raise DataNotFoundError(
        f"dataset {name!r} ({split} split) not found under --data_dir={where}; prepare it "
        "with `tfds build` where the network is reachable and pass --data_dir pointing to "
        "the prepared TFDS data") from None
  ds = ds.map(_tfds_example_converter(name), num_parallel_calls=tf.data.AUTOTUNE)
  images, labels = [], []
  for x, y in tfds.as_numpy(ds.batch(4096)):
    images.append(x)
    labels.append(y)
  if not images:
    raise ValueError(f"dataset {name!r} ({split} split) under --data_dir={data_dir} is empty")
  return _make(name, np.concatenate(images), np.concatenate(labels), 255.0)


# ---- entry points -------------------------------------------------------------------------

def _load(name: str, split: str, data_dir: Optional[str], idx_dir: Optional[str]) -> Dataset:
  if name not in DATASETS:
    raise ValueError(f"unknown dataset --dataset={name!r}: expected one of {DATASETS}")
  if idx_dir is not None and name not in IDX_DATASETS:
    raise ValueError(f"--idx_dir is for {' / '.join(IDX_DATASETS)}, not --dataset={name}")
  if name == "digits":
    return _digits_split(split)
  if idx_dir is not None:
    return load_idx(idx_dir, split, name)
  return _tfds_split(name, split, data_dir)


def load_dataset(name: str, data_dir: Optional[str] = None,
                 idx_dir: Optional[str] = None) -> Dataset:
  """The private TRAINING split of `name` (one of DATASETS).

  idx_dir (mnist / fashion_mnist only) takes precedence over data_dir (TFDS).
  """
  return _load(name, "train", data_dir, idx_dir)


def load_test_split(name: str, data_dir: Optional[str] = None,
                    idx_dir: Optional[str] = None) -> Dataset:
  """The held-out test split of `name`, for evaluation only (never for training)."""
  return _load(name, "test", data_dir, idx_dir)

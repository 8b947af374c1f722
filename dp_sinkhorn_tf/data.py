"""Private training sets: digits (embedded), MNIST / Fashion-MNIST IDX files, TFDS.

Every loader returns a `Dataset` with images [N, H, W, C] float32 scaled to [−1, 1]
(x ↦ 2·x/max − 1) and labels [N] int32. `load_dataset` returns the TRAINING split only —
the private set the accountant's N refers to; `load_test_split` returns the held-out split
for evaluation, which training never reads.

* "digits": scikit-learn's 1,797 8×8 digits (values 0..16). The split is fixed: a
  permutation with seed 0, the last 20 % (359 images) held out as test; 1,438 train.
* IDX (--idx_dir): the original MNIST / Fashion-MNIST files train-images-idx3-ubyte,
  train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, gzipped
  (.gz) or raw. Parsed here (magic 0x00000803 / 0x00000801, big-endian dims); TFDS's
  checksums reject some redistributed copies whose gzip headers differ.
* TFDS (--data_dir): mnist, fashion_mnist, cifar10, celeb_a (resized to 32×32, label =
  the Male attribute). Never downloads: missing data is an error naming --data_dir.
"""

import dataclasses
import gzip
import os
import struct
from typing import Optional, Tuple

import numpy as np

DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "celeb_a")
FASHION_LABELS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                  "Sneaker", "Bag", "Ankle boot")
CIFAR_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                "ship", "truck")
DIGIT_LABELS = tuple(str(i) for i in range(10))
LABEL_NAMES = {"digits": DIGIT_LABELS, "mnist": DIGIT_LABELS, "fashion_mnist": FASHION_LABELS,
               "cifar10": CIFAR_LABELS, "celeb_a": ("female", "male")}
DIGITS_TEST_FRACTION = 0.2
CELEBA_SIZE = 32
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


@dataclasses.dataclass(frozen=True)
class Dataset:
  """An in-memory labelled image set. images: [N,H,W,C] float32 in [−1,1]; labels: [N]."""

  name: str
  images: np.ndarray
  labels: np.ndarray
  num_classes: int
  label_names: Tuple[str, ...]

  @property
  def image_shape(self) -> Tuple[int, int, int]:
    return tuple(int(s) for s in self.images.shape[1:])


def scale_to_unit_interval(pixels: np.ndarray, max_value: float) -> np.ndarray:
  """x ↦ 2·x / max_value − 1: [0, max] → [−1, 1] as float32."""
  return (pixels.astype(np.float32) * (2.0 / max_value) - 1.0).astype(np.float32)


def _make(name: str, pixels: np.ndarray, labels: np.ndarray, max_value: float) -> Dataset:
  if pixels.ndim == 3:
    pixels = pixels[..., np.newaxis]
  names = LABEL_NAMES[name]
  return Dataset(name, scale_to_unit_interval(pixels, max_value), labels.astype(np.int32),
                 len(names), names)


# ---- digits -------------------------------------------------------------------------------

def _digits_split(split: str) -> Dataset:
  from sklearn.datasets import load_digits

  digits = load_digits()
  order = np.random.default_rng(0).permutation(len(digits.images))
  num_test = int(round(DIGITS_TEST_FRACTION * len(order)))
  chosen = order[-num_test:] if split == "test" else order[:-num_test]
  return _make("digits", digits.images[chosen], digits.target[chosen], 16.0)


# ---- IDX ----------------------------------------------------------------------------------

def read_idx(path: str) -> np.ndarray:
  """Reads one IDX file (gzipped or raw) of unsigned bytes into a numpy array."""
  with open(path, "rb") as fh:
    raw = fh.read()
  if raw[:2] == b"\x1f\x8b":
    try:
      raw = gzip.decompress(raw)
    except (OSError, EOFError) as e:
      raise ValueError(f"{path}: corrupt gzip data ({e})") from None
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
    raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
  dtype_code, ndim = raw[2], raw[3]
  if dtype_code != 0x08:
    raise ValueError(f"{path}: IDX type 0x{dtype_code:02x} unsupported (expected 0x08, "
                     "unsigned bytes)")
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise ValueError(f"{path}: truncated IDX header")
  dims = struct.unpack(f">{ndim}I", raw[4:header])
  expected = int(np.prod(dims)) if dims else 0
  if len(raw) - header != expected:
    raise ValueError(f"{path}: IDX body has {len(raw) - header} bytes, header says "
                     f"{expected} for dims {dims}")
  return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _find_idx(idx_dir: str, stem: str) -> str:
  for candidate in (stem + ".gz", stem):
    path = os.path.join(idx_dir, candidate)
    if os.path.exists(path):
      return path
  raise FileNotFoundError(f"--idx_dir={idx_dir}: missing {stem}[.gz]")


def load_idx(idx_dir: str, split: str = "train", name: str = "fashion_mnist") -> Dataset:
  """MNIST-format IDX files from a folder: images [N,28,28,1] in [−1,1], labels [N]."""
  if not os.path.isdir(idx_dir):
    raise FileNotFoundError(f"--idx_dir={idx_dir}: not a directory")
  image_stem, label_stem = IDX_FILES[split]
  images = read_idx(_find_idx(idx_dir, image_stem))
  labels = read_idx(_find_idx(idx_dir, label_stem))
  if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
    raise ValueError(f"--idx_dir={idx_dir}: {split} images {images.shape} and labels "
                     f"{labels.shape} do not match")
  return _make(name, images, labels, 255.0)


# ---- TFDS ---------------------------------------------------------------------------------

def _tfds_split(name: str, split: str, data_dir: Optional[str]) -> Dataset:
  import tensorflow as tf
  import tensorflow_datasets as tfds

  tfds_split = "test" if split == "test" else "train"
  try:
    ds = tfds.load(name, split=tfds_split, data_dir=data_dir, download=False)
  except Exception as e:  # TFDS raises AssertionError / DatasetNotFoundError variants.
    raise FileNotFoundError(
        f"dataset {name!r} ({tfds_split} split) not found under --data_dir={data_dir}: "
        "prepare it with `tfds build` on a machine with network access and pass "
        f"--data_dir pointing at it ({type(e).__name__})") from None

  if name == "celeb_a":
    def convert(ex):
      image = tf.image.resize(tf.image.resize_with_crop_or_pad(ex["image"], 178, 178),
                              [CELEBA_SIZE, CELEBA_SIZE], antialias=True)
      return tf.cast(tf.round(image), tf.uint8), tf.cast(ex["attributes"]["Male"], tf.int32)
  else:
    def convert(ex):
      return ex["image"], tf.cast(ex["label"], tf.int32)

  images, labels = [], []
  for x, y in tfds.as_numpy(ds.map(convert).batch(4096)):
    images.append(x)
    labels.append(y)
  return _make(name, np.concatenate(images), np.concatenate(labels), 255.0)


# ---- entry points -------------------------------------------------------------------------

def _load(name: str, split: str, data_dir: Optional[str], idx_dir: Optional[str]) -> Dataset:
  if name not in DATASETS:
    raise ValueError(f"--dataset={name!r}: expected one of {DATASETS}")
  if name == "digits":
    return _digits_split(split)
  if idx_dir is not None:
    if name not in ("mnist", "fashion_mnist"):
      raise ValueError(f"--idx_dir is for mnist / fashion_mnist, not --dataset={name}")
    return load_idx(idx_dir, split, name)
  return _tfds_split(name, split, data_dir)


def load_dataset(name: str, data_dir: Optional[str] = None,
                 idx_dir: Optional[str] = None) -> Dataset:
  """The private TRAINING split of `name`."""
  return _load(name, "train", data_dir, idx_dir)


def load_test_split(name: str, data_dir: Optional[str] = None,
                    idx_dir: Optional[str] = None) -> Dataset:
  """The held-out test split of `name` (for evaluation only)."""
  return _load(name, "test", data_dir, idx_dir)

"""Private training sets: the built-ins (digits, MNIST / Fashion-MNIST IDX files, TFDS) and,
through `sources`, the user's own (--data=folder:…, tfds:…, tfrecord:…, npz:…).

Every loader returns a `Dataset` holding the images as they are stored, uint8 [N, H, W, C]
pixels in [0, pixel_max] (255; 16 for the digits), and labels [N] int32. Training keeps them
so, on the device too, and scales each Poisson batch as it is drawn; `Dataset.images` is the
float32 view in [−1, 1] (x ↦ (x − m) / m, m = pixel_max / 2, so 0 ↦ −1 and pixel_max ↦ 1
exactly; `scale_to_unit_interval`), computed when asked for (evaluation, tests): 4× the
memory of the pixels.

`load(data)` is the entry point (data: `train.config.DataConfig`): the TRAINING split, the
private set whose size N the accountant uses (N records, or N groups under
--privacy_unit=group), after --image_size / --channels (`sources.transform_array`).
`load(data, "test", like=spec)` is a held-out split for evaluation, brought to the shape
and label names of the data spec a model was trained on; training never reads it.

* "digits": scikit-learn's 1,797 8×8 digits (values 0..16), the embedded default. The split
  is fixed: numpy.random.default_rng(0).permutation(1797); its last 20 % (359 images) is the
  test split, the first 1,438 the private training split.
* IDX (`idx_dir`, the --idx_dir flag): the original MNIST / Fashion-MNIST files
  train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
  t10k-labels-idx1-ubyte, each gzipped (.gz) or raw. The IDX header is parsed here: two zero
  bytes, type 0x08 (unsigned byte), rank, then rank big-endian uint32 dimensions. Debian's
  dataset-fashion-mnist package installs them in /usr/share/datasets/fashion-mnist.
* TFDS (`data_dir`, the --data_dir flag): mnist, fashion_mnist, cifar10, celeb_a. Never
  downloads. celeb_a (218×178) is resized to 32×32, or to --image_size, from the largest
  centred crop of that aspect (178×178 for a square size; bilinear, antialiased, rounded to
  uint8); its label is attributes['Male'] (0 female, 1 male) and
  its test split is TFDS's "test".

Memory: before a source is decoded, `check_fits` compares what the pixels will take (N·H·W·C
bytes, twice: the loaded array and the training copy) with the memory available, and a set
that cannot fit is one error line with the bytes it needs, before any privacy is spent.

Missing data raises `DataNotFoundError` (a FileNotFoundError and a ValueError) naming the flag
and the files expected; malformed or unreadable files raise ValueError naming the file.
"""

import dataclasses
import gzip
import os
import struct
from typing import Optional, Tuple

import numpy as np

from dp_sinkhorn_tf.data import sources
from dp_sinkhorn_tf.data import spec as data_spec
from dp_sinkhorn_tf.io import errors, files

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
DIGITS_MAX = 16
CELEBA_SIZE = 32
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IDX_UBYTE = 0x08
# The label name of data without labels (one class; the generator's label is always 0).
UNLABELLED_NAME = sources.UNLABELLED_NAME
# Scaling a batch of this many images at a time keeps the float32 copy small.
CHUNK = 4096


DataNotFoundError = sources.DataNotFoundError
check_image_shape = sources.check_image_shape


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """An in-memory image set.

  pixels: [N, H, W, C] uint8 in [0, pixel_max], or float32 already in [−1, 1] when
  pixel_max is None (canaries, tests); labels: [N] int32 in [0, num_classes);
  image_shape: (H, W, C); label_names: num_classes names, label_names[k] for class k.
  groups: None (the unit of privacy is one record), or [N] int64 group ids in
  [0, num_groups), every id used (--privacy_unit=group). labelled: False for data without
  labels (num_classes 1, labels 0). notes: lines for the operator (skipped files, …).
  """

  name: str
  pixels: np.ndarray
  labels: np.ndarray
  num_classes: int
  image_shape: Tuple[int, int, int]
  label_names: Tuple[str, ...]
  pixel_max: Optional[int] = None
  groups: Optional[np.ndarray] = None
  labelled: bool = True
  notes: Tuple[str, ...] = ()

  def __post_init__(self):
    pixels = self.pixels
    if pixels.ndim != 4:
      raise ValueError(f"dataset {self.name!r}: images must be [N, H, W, C], got "
                       f"{pixels.shape}")
    if self.pixel_max is None and pixels.dtype != np.float32:
      raise ValueError(f"dataset {self.name!r}: images without pixel_max must be float32 in "
                       f"[−1, 1], got {pixels.dtype}")
    if self.pixel_max is not None and (pixels.dtype != np.uint8 or
                                       not 1 <= self.pixel_max <= 255):
      raise ValueError(f"dataset {self.name!r}: pixels must be uint8 with pixel_max in "
                       f"[1, 255], got {pixels.dtype} and {self.pixel_max}")
    if self.labels.shape != pixels.shape[:1] or self.labels.dtype != np.int32:
      raise ValueError(f"dataset {self.name!r}: labels must be [{len(pixels)}] int32, got "
                       f"{self.labels.shape} {self.labels.dtype}")
    if tuple(self.image_shape) != pixels.shape[1:]:
      raise ValueError(f"dataset {self.name!r}: image_shape {self.image_shape} does not match "
                       f"images {pixels.shape}")
    if len(self.label_names) != self.num_classes:
      raise ValueError(f"dataset {self.name!r}: {len(self.label_names)} label_names for "
                       f"num_classes={self.num_classes}")
    if self.groups is not None:
      g = self.groups
      if g.shape != pixels.shape[:1] or g.dtype != np.int64 or (
          g.size and (g.min() < 0 or len(np.unique(g)) != g.max() + 1)):
        raise ValueError(f"dataset {self.name!r}: groups must be [{len(pixels)}] int64 ids "
                         "0…G−1, each used")

  def __len__(self) -> int:
    return len(self.pixels)

  @property
  def images(self) -> np.ndarray:
    """The images as float32 in [−1, 1] (a new array for uint8 pixels: 4× their memory)."""
    if self.pixel_max is None:
      return self.pixels
    return scale_to_unit_interval(self.pixels, self.pixel_max)

  def as_float(self) -> "Dataset":
    """This set with float32 images in [−1, 1] stored (for evaluation's repeated use)."""
    if self.pixel_max is None:
      return self
    return dataclasses.replace(self, pixels=self.images, pixel_max=None)

  @property
  def num_groups(self) -> Optional[int]:
    return None if self.groups is None else int(self.groups.max()) + 1 if len(self) else 0

  @property
  def num_units(self) -> int:
    """N for the accountant: records, or groups under --privacy_unit=group."""
    return len(self) if self.groups is None else self.num_groups

  @property
  def unit(self) -> str:
    return "record" if self.groups is None else "group"


def scale_to_unit_interval(pixels: np.ndarray, max_value: float) -> np.ndarray:
  """[0, max_value] → [−1, 1] as float32: x ↦ (x − m) / m, m = max_value / 2 (endpoints exact)."""
  half = np.float32(max_value / 2.0)
  return (pixels.astype(np.float32) - half) / half


def unit_chunks(pixels: np.ndarray, pixel_max: Optional[float], chunk: int = CHUNK):
  """The float32 images in [−1, 1] of `pixels`, `chunk` images at a time (for a hash or a
  statistic of a large set without its whole float32 copy)."""
  for start in range(0, len(pixels), chunk):
    part = pixels[start:start + chunk]
    yield part if pixel_max is None else scale_to_unit_interval(part, pixel_max)


def available_memory_bytes() -> Optional[int]:
  """MemAvailable of /proc/meminfo (Linux), else None (then nothing is checked)."""
  try:
    with open("/proc/meminfo") as fh:
      for line in fh:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    return None
  return None


def bytes_needed(num_records: int, image_shape) -> int:
  """N·H·W·C bytes of uint8 pixels, twice: the loaded array and the training copy (on the
  device, or a second host copy on a CPU)."""
  return 2 * int(num_records) * int(np.prod([int(s) for s in image_shape]))


def check_fits(num_records: int, image_shape, what: str) -> None:
  """ValueError naming `what` when the private set cannot fit in the available memory."""
  need = bytes_needed(num_records, image_shape)
  have = available_memory_bytes()
  if have is not None and need > have:
    h, w, c = (int(s) for s in image_shape)
    raise ValueError(
        f"{what}: the private set needs {need:,} bytes ({num_records:,} images × {h}×{w}×{c} "
        f"uint8, twice: the loaded array and the training copy) but {have:,} bytes of memory "
        "are available; lower --image_size / --channels or use a larger machine")


def _make(name: str, pixels: np.ndarray, labels: np.ndarray, max_value: int) -> Dataset:
  """uint pixels [N, H, W(, C)] in [0, max_value] and labels [N] → Dataset."""
  if pixels.ndim == 3:
    pixels = pixels[..., np.newaxis]
  names = LABEL_NAMES[name]
  return Dataset(name, np.ascontiguousarray(pixels, np.uint8), labels.astype(np.int32),
                 len(names), tuple(int(s) for s in pixels.shape[1:]), names,
                 pixel_max=int(max_value))


# ---- digits -------------------------------------------------------------------------------

def _digits_split(split: str) -> Dataset:
  from sklearn.datasets import load_digits

  digits = load_digits()
  order = np.random.default_rng(DIGITS_SEED).permutation(len(digits.images))
  num_test = int(round(DIGITS_TEST_FRACTION * len(order)))
  chosen = order[-num_test:] if split == "test" else order[:-num_test]
  return _make("digits", digits.images[chosen].astype(np.uint8), digits.target[chosen],
               DIGITS_MAX)


# ---- IDX ----------------------------------------------------------------------------------

def _read_bytes(path: str) -> bytes:
  """File contents, gunzipped when the file starts with the gzip magic 1f 8b."""
  try:
    raw = files.read_bytes(path)  # local or any tf.io.gfile path
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
    if files.exists(path):
      return path
  raise DataNotFoundError(f"--idx_dir={idx_dir}: missing {stem}[.gz] (expected the original "
                          "MNIST / Fashion-MNIST IDX files)")


def load_idx(idx_dir: str, split: str = "train", name: str = "fashion_mnist") -> Dataset:
  """MNIST-format IDX files in `idx_dir` → Dataset: uint8 pixels [N, 28, 28, 1] in [0, 255]
  (pixel_max 255), labels [N].

  split: "train" (train-*) or "test" (t10k-*); name: "mnist" or "fashion_mnist" (label names).
  """
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  if name not in IDX_DATASETS:
    raise ValueError(f"name must be one of {IDX_DATASETS} for IDX files, got {name!r}")
  if not files.isdir(idx_dir):
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
  return _make(name, images, labels, 255)


# ---- TFDS ---------------------------------------------------------------------------------

def _tfds_example_converter(name: str, size: Optional[Tuple[int, int]] = None):
  """TFDS example dict → (uint8 image [H, W, C], int32 label); celeb_a goes to `size`
  (--image_size) at once, or to CELEBA_SIZE, by `sources.transform`: the largest centred crop
  of the target's aspect (178×178 of 218×178 for a square target), then one resize."""
  import tensorflow as tf

  if name != "celeb_a":
    return lambda ex: (ex["image"], tf.cast(ex["label"], tf.int32))
  target = tuple(size) if size is not None else (CELEBA_SIZE, CELEBA_SIZE)

  def convert(ex):
    image = sources.transform(ex["image"], target, None)
    return image, tf.cast(ex["attributes"]["Male"], tf.int32)

  return convert


def _tfds_split(name: str, split: str, data_dir: Optional[str],
                size: Optional[Tuple[int, int]] = None) -> Dataset:
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
  ds = ds.map(_tfds_example_converter(name, size), num_parallel_calls=tf.data.AUTOTUNE)
  images, labels = [], []
  for x, y in tfds.as_numpy(ds.batch(4096)):
    images.append(x)
    labels.append(y)
  if not images:
    raise ValueError(f"dataset {name!r} ({split} split) under --data_dir={data_dir} is empty")
  return _make(name, np.concatenate(images), np.concatenate(labels), 255)


# ---- entry points -------------------------------------------------------------------------

def _builtin(name: str, split: str, data_dir: Optional[str], idx_dir: Optional[str],
             size: Optional[Tuple[int, int]] = None) -> Dataset:
  """A built-in split as stored (size: celeb_a's resize, which it does anyway)."""
  if name not in DATASETS:
    raise ValueError(f"unknown dataset --dataset={name!r}: expected one of {DATASETS}")
  if idx_dir is not None and name not in IDX_DATASETS:
    raise ValueError(f"--idx_dir is for {' / '.join(IDX_DATASETS)}, not --dataset={name}")
  if name == "digits":
    return _digits_split(split)
  if idx_dir is not None:
    return load_idx(idx_dir, split, name)
  return _tfds_split(name, split, data_dir, size)


def load(data, split: str = "train", like: Optional[data_spec.DataSpec] = None) -> Dataset:
  """The data of `data` (a `train.config.DataConfig`), split "train" (the private set) or
  "test" (held out, for evaluation).

  like: the data spec of a trained model: the images are brought to its image shape (resized
  / converted as --image_size / --channels do) and the labels to its label names (folder
  classes by name; other labels must lie in [0, K); a one-class model reads every image as
  class 0). Groups are read only for the private set (--privacy_unit=group, like=None).

  Raises DataNotFoundError / ValueError: one line naming the flag, source or file."""
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  size, channels = data.image_size, data.channels
  if like is not None:
    size, channels = tuple(like.image_shape[:2]), like.image_shape[2]
  if data.source is None:
    what = f"--dataset={data.dataset}"
    ds = _builtin(data.dataset, split, data.data_dir, data.idx_dir, size)
    pixels = sources.transform_array(ds.pixels, ds.pixel_max, size, channels)
    check_image_shape(pixels.shape[1:], what)
    labels, names = ds.labels, ds.label_names
    if like is not None and not like.labelled:
      labels, names = np.zeros_like(labels), like.label_names
    elif like is not None and tuple(like.label_names) != tuple(names):
      raise ValueError(f"{what}: classes {list(names)}, but the model was trained on "
                       f"{list(like.label_names)}")
    return Dataset(ds.name, pixels, labels, len(names), tuple(pixels.shape[1:]), names,
                   pixel_max=ds.pixel_max, labelled=like is None or like.labelled)
  source = data_spec.parse_source(data.source)
  opts = sources.Options(
      size=size, channels=channels, image_key=data.image_key, label_key=data.label_key,
      groups=data.groups, group_unit=like is None and data.privacy_unit == "group",
      like_names=None if like is None else tuple(like.label_names),
      like_labelled=True if like is None else like.labelled, data_dir=data.data_dir,
      check_memory=check_fits)
  try:
    loaded = sources.load(source, split, opts)
  except (ValueError, FileNotFoundError):
    raise
  except Exception as e:  # noqa: BLE001 - TensorFlow's and TFDS's own errors, as one line
    if not type(e).__module__.startswith(("tensorflow", "tensorflow_datasets", "etils")):
      raise
    raise ValueError(f"--data={source}: {errors.first_line(e)}") from None
  return Dataset(str(source), loaded.pixels, loaded.labels, len(loaded.label_names),
                 tuple(loaded.pixels.shape[1:]), loaded.label_names, pixel_max=255,
                 groups=loaded.groups, labelled=loaded.labelled, notes=loaded.notes)


def spec_of(dataset: Dataset, data) -> data_spec.DataSpec:
  """The data spec of the private set `dataset` loaded from `data` (a DataConfig)."""
  group = data.privacy_unit == "group"
  return data_spec.DataSpec(
      source=dataset.name, image_shape=tuple(dataset.image_shape),
      label_names=tuple(dataset.label_names), labelled=dataset.labelled,
      image_size=data.image_size, channels=data.channels, privacy_unit=data.privacy_unit,
      max_per_group=data.max_per_group if group else None)


def load_dataset(name: str, data_dir: Optional[str] = None,
                 idx_dir: Optional[str] = None) -> Dataset:
  """The private TRAINING split of the built-in `name` (one of DATASETS), as it is stored.

  idx_dir (mnist / fashion_mnist only) takes precedence over data_dir (TFDS).
  """
  return _builtin(name, "train", data_dir, idx_dir)


def load_test_split(name: str, data_dir: Optional[str] = None,
                    idx_dir: Optional[str] = None) -> Dataset:
  """The held-out test split of the built-in `name`, for evaluation only (never training)."""
  return _builtin(name, "test", data_dir, idx_dir)

"""The user's own image sources (--data=folder:…, tfds:…, tfrecord:…, npz:…) → uint8 arrays.

The sources and their layout are in `data.spec`; the user documentation is docs/own-data.md.
Decoding, resizing and reading are TensorFlow's and TFDS's (tf.io.decode_image, tf.image,
tf.data.TFRecordDataset, tf.io.parse_example, tfds.builder); this module only lists files,
checks what it gets, and writes each image into one preallocated uint8 array (the private
set is held once, as uint8).

Images. Each image is decoded with its own channels (tf.io.decode_image, the first frame of
a GIF); an alpha channel is dropped (RGBA → RGB, gray+alpha → gray). Then, per `transform`:
--channels converts (gray → RGB repeats the channel; RGB → gray is tf.image.rgb_to_grayscale,
rounded), and --image_size=H×W takes the largest centred crop of the target's aspect ratio
and resizes it (tf.image.resize, bilinear, antialiased) and rounds to uint8. An image that
already has the target size is not resampled. Without --image_size every image must have the
first image's size, and without --channels every image must be grayscale or every image
colour (as the first): otherwise one error naming the file and the flag.

Labels. folder: the sorted class folder names (a folder with images and no sub-folders is one
class: unlabelled). tfds: the --label_key feature (ClassLabel names when it is one).
tfrecord: the int64 --label_key feature in every record or in none. npz: `labels`, named by
`label_names` if the file has them. Labels must lie in [0, K): K = the number of names, or
max + 1 for unnamed labels ("0", …). Unlabelled data are one class named "all", label 0.

Bad data (each one ValueError / FileNotFoundError line naming the source and the file or
flag; nothing is trained): an empty folder or class folder, a file with an image suffix that
does not decode (corrupt, truncated, not an image: refused, with the count of such files),
mixed sizes or colour without --image_size / --channels, labels out of range, a record
without the image feature, a group CSV naming files that are not images of the folder (or an
image without a group, a file named twice, an empty group), a TFDS builder that is not
prepared. Files WITHOUT an image suffix (README.txt, Thumbs.db, hidden files) and hidden
folders are skipped and counted in a note: a folder of scans often holds them, and their
names say they are not images; a file whose name says it is an image and does not decode is
refused, since skipping it would silently shrink the private set. Links are followed, but an
image or folder reached twice (a second link to it, a link to a folder above, a hard link) is
refused: it would be two records. The manifest `sample` writes at the top of a synthetic
data set (`spec.SYNTHETIC_MANIFEST`) is skipped without a note.

Groups (--privacy_unit=group): folder with --groups=CSV (a header naming the columns `file`
and `group`; `file` relative to the folder, as listed) or --groups=subfolders (the first
sub-folder level below the class folders, or below the folder when it has no classes, names
the group); npz with a `groups` array [N] of integers or strings (floats refused). Group
names map to ids 0…G−1 in sorted order.
"""

import csv
import dataclasses
import io
import os
import zipfile
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from dp_sinkhorn_tf.data import spec as data_spec
from dp_sinkhorn_tf.io import errors
from dp_sinkhorn_tf.io import files as files_lib
from dp_sinkhorn_tf.models import generator_options

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
DEFAULT_IMAGE_KEY = "image"
DEFAULT_LABEL_KEY = "label"
UNLABELLED_NAME = "all"
BATCH = 256


class DataNotFoundError(FileNotFoundError, ValueError):
  """The requested data is not where the flags say (both a FileNotFoundError and a ValueError)."""


@dataclasses.dataclass(frozen=True)
class Loaded:
  """A source read: pixels uint8 [N, H, W, C]; labels int32 [N]; label_names (K); labelled;
  groups: None or [N] int64 ids 0…G−1; notes for the operator."""

  pixels: np.ndarray
  labels: np.ndarray
  label_names: Tuple[str, ...]
  labelled: bool
  groups: Optional[np.ndarray] = None
  notes: Tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Options:
  """What to do to a source (from DataConfig, or a data spec for a held-out set).

  size: (H, W) or None; channels: 1, 3 or None; image_key / label_key: None for the
  defaults; groups: None, a CSV path or "subfolders"; group_unit: read groups;
  like_names: map labels to these names (held-out data of a trained model: folder classes by
  name, other labels checked < len); like_labelled: False reads every image as class 0;
  data_dir: TFDS's data directory (tfds:); check_memory(N, shape, what): the memory check.
  """

  size: Optional[Tuple[int, int]] = None
  channels: Optional[int] = None
  image_key: Optional[str] = None
  label_key: Optional[str] = None
  groups: Optional[str] = None
  group_unit: bool = False
  like_names: Optional[Tuple[str, ...]] = None
  like_labelled: bool = True
  data_dir: Optional[str] = None
  check_memory: Optional[Callable] = None


def _fail(what: str, message: str):
  raise ValueError(f"{what}: {message}")


# ---- images: decode and transform --------------------------------------------------------

def _drop_alpha(image):
  """uint8 [h, w, c] with c ∈ {1, 2, 3, 4} → the colour channels (1 or 3)."""
  import tensorflow as tf

  c = tf.shape(image)[2]
  return tf.cond(tf.equal(c % 2, 0), lambda: image[:, :, :c - 1], lambda: image)


def decode(contents):
  """Encoded PNG / JPEG / BMP / GIF bytes → uint8 [h, w, 1 or 3] (first frame, no alpha)."""
  import tensorflow as tf

  image = tf.io.decode_image(contents, channels=0, expand_animations=False)
  return _drop_alpha(image)


def _to_channels(image, channels: int, pixel_max: int):
  """uint8 [h, w, 1 or 3] → [h, w, channels]: gray → RGB repeats the channel, RGB → gray is
  tf.image.rgb_to_grayscale rounded; the same count is left as it is."""
  import tensorflow as tf

  def gray_to_rgb(x):
    return tf.image.grayscale_to_rgb(tf.ensure_shape(x, [None, None, 1]))

  def rgb_to_gray(x):
    values = tf.image.rgb_to_grayscale(tf.cast(tf.ensure_shape(x, [None, None, 3]),
                                               tf.float32))
    return tf.cast(tf.clip_by_value(tf.round(values), 0.0, pixel_max), tf.uint8)

  convert = gray_to_rgb if channels == 3 else rgb_to_gray
  known = image.shape[-1]
  if known is not None:  # static: convert or not, no branch to trace
    return image if known == channels else convert(image)
  return tf.cond(tf.equal(tf.shape(image)[2], channels),
                 lambda: tf.ensure_shape(image, [None, None, channels]),
                 lambda: convert(image))


def transform(image, size: Optional[Tuple[int, int]], channels: Optional[int],
              pixel_max: int = 255):
  """uint8 [h, w, c] → uint8 [H, W, C] per --image_size / --channels (module docstring).

  size None keeps (h, w); channels None keeps c. An image of the target size is not
  resampled, so values survive exactly."""
  import tensorflow as tf

  if channels is not None:
    image = _to_channels(image, channels, pixel_max)
  if size is None:
    return image
  height, width = size
  shape = tf.shape(image)
  h, w = shape[0], shape[1]

  def resize():
    # The largest centred crop of aspect height:width (no distortion), then resize.
    crop_h = tf.minimum(h, tf.cast(tf.round(tf.cast(w, tf.float64) * height / width),
                                   tf.int32))
    crop_w = tf.minimum(w, tf.cast(tf.round(tf.cast(h, tf.float64) * width / height),
                                   tf.int32))
    crop_h, crop_w = tf.maximum(crop_h, 1), tf.maximum(crop_w, 1)
    cropped = tf.image.crop_to_bounding_box(image, (h - crop_h) // 2, (w - crop_w) // 2,
                                            crop_h, crop_w)
    values = tf.image.resize(cropped, [height, width], method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(values), 0.0, pixel_max), tf.uint8)

  same = tf.logical_and(tf.equal(h, height), tf.equal(w, width))
  out = tf.cond(same, lambda: image, resize)
  return tf.ensure_shape(out, [height, width, channels])


def transform_array(pixels: np.ndarray, pixel_max: int, size: Optional[Tuple[int, int]],
                    channels: Optional[int]) -> np.ndarray:
  """`transform` on every image of uint8 [N, h, w, c]; the array itself when nothing is
  asked (or the images already are so), else a new uint8 [N, H, W, C]."""
  n, h, w, c = pixels.shape
  if (size is None or tuple(size) == (h, w)) and (channels is None or channels == c):
    return pixels
  import tensorflow as tf

  height, width = size if size is not None else (h, w)
  out = np.empty((n, height, width, channels or c), np.uint8)
  fn = tf.function(lambda x: tf.map_fn(lambda im: transform(im, size, channels, pixel_max),
                                       x, fn_output_signature=tf.uint8))
  for start in range(0, n, BATCH):
    out[start:start + BATCH] = fn(tf.constant(pixels[start:start + BATCH])).numpy()
  return out


def _shape_problem(first: Tuple[int, int, int], got, opts: Options) -> str:
  """Why an image of shape `got` cannot join images of shape `first` ('' if it can)."""
  if opts.size is None and tuple(got[:2]) != tuple(first[:2]):
    return (f"{got[0]}×{got[1]} pixels where the first image has {first[0]}×{first[1]}: "
            "pass --image_size=H[xW] to resize every image")
  if opts.channels is None and got[2] != first[2]:
    kinds = {1: "grayscale", 3: "colour"}
    return (f"{kinds[int(got[2])]} where the first image is {kinds[int(first[2])]}: pass "
            "--channels=1 or 3 to convert every image")
  return ""


def materialize(elements, n: int, first: Tuple[int, int, int], opts: Options, what: str,
                origin: Callable[[int], str], pixel_max: int = 255,
                with_labels: bool = False):
  """Every image of `elements` (a tf.data.Dataset of (index int64, uint8 [h, w, c] with
  c ∈ {1, 3}[, int64 label]); failing elements are dropped by ignore_errors and reported)
  transformed per `opts` into one uint8 [n, H, W, C] array (with_labels: and the labels,
  int64 [n]); `first` is the first image's (h, w, c).

  Raises ValueError naming origin(index) of the first image that did not decode (with their
  count) or whose size / colour does not fit (`_shape_problem`)."""
  import tensorflow as tf

  height, width = opts.size if opts.size is not None else first[:2]
  channels = opts.channels or first[2]
  target = (int(height), int(width), int(channels))
  native = tf.constant(first, tf.int32)

  def prepare(index, image, label=None):
    shape = tf.shape(image)
    fits = tf.constant(True)
    if opts.size is None:
      fits = tf.logical_and(fits, tf.reduce_all(tf.equal(shape[:2], native[:2])))
    if opts.channels is None:
      fits = tf.logical_and(fits, tf.equal(shape[2], native[2]))
    out = tf.cond(fits, lambda: transform(image, opts.size, opts.channels, pixel_max),
                  lambda: tf.zeros(target, tf.uint8))
    label = tf.constant(0, tf.int64) if label is None else tf.cast(label, tf.int64)
    return index, shape, fits, tf.ensure_shape(out, target), label

  pipeline = (elements.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
              .ignore_errors().batch(BATCH).prefetch(2))
  out = np.empty((n,) + target, np.uint8)
  labels = np.zeros(n, np.int64)
  seen = np.zeros(n, bool)
  misfit = None  # (index, shape) of the lowest-numbered image that does not fit
  try:
    for index, shapes, fits, images, batch_labels in pipeline.as_numpy_iterator():
      if np.any(index >= n) or np.any(seen[index]):
        _fail(what, f"the source yielded more than the {n} records it held when counted "
              "(did it change while being read?)")
      if not fits.all():
        i = int(np.argmin(np.where(fits, n, index)))
        if misfit is None or index[i] < misfit[0]:
          misfit = (int(index[i]), shapes[i])
      out[index] = images
      labels[index] = batch_labels
      seen[index] = True
  except tf.errors.OpError as e:
    _fail(what, f"cannot read the data ({errors.first_line(e)})")
  if misfit is not None:  # the lowest index, whatever order the parallel reads arrived in
    _fail(what, f"{origin(misfit[0])}: {_shape_problem(first, misfit[1], opts)}")
  if not seen.all():
    bad = np.flatnonzero(~seen)
    _fail(what, f"{origin(int(bad[0]))}: not a decodable image (unreadable, corrupt, truncated "
          f"or not an image); {len(bad)} such file(s) in all: fix or remove them")
  return (out, labels) if with_labels else out


def _probe(encoded: bytes, what: str, where: str) -> Tuple[int, int, int]:
  """(h, w, c) of one encoded image (c ∈ {1, 3}); ValueError naming `where` if it does not
  decode."""
  import tensorflow as tf

  try:
    image = decode(tf.constant(encoded))
  except (tf.errors.OpError, ValueError) as e:
    _fail(what, f"{where}: not a decodable image ({errors.first_line(e)})")
  return tuple(int(s) for s in image.shape)


UNNAMED_CLASSES_MAX = 1000


def _check_labels(labels: np.ndarray, num_names: Optional[int], what: str,
                  where: str) -> int:
  """K for int labels [N]: num_names, or max + 1 when unnamed; ValueError for a label
  outside [0, K), or unnamed labels of more classes than records and than
  UNNAMED_CLASSES_MAX (a stray huge label would make that many classes)."""
  if labels.size == 0:
    return num_names or 1
  low, high = int(labels.min()), int(labels.max())
  k = num_names if num_names is not None else high + 1
  if low < 0 or high >= k:
    bad = low if low < 0 else high
    _fail(what, f"{where}: label {bad} outside [0, {k})" +
          (f" ({k} label names)" if num_names is not None else ""))
  if num_names is None and k > max(labels.size, UNNAMED_CLASSES_MAX):
    _fail(what, f"{where}: label {high} makes {k} classes for {labels.size} records; "
          "number the classes 0…K−1 (or give label names)")
  return k


def _relabel(labels: np.ndarray, names: Tuple[str, ...], labelled: bool, opts: Options,
             what: str, by_name: bool):
  """(labels, names, labelled) brought to opts.like_names (a trained model's classes)."""
  if opts.like_names is None:
    return labels, names, labelled
  like = tuple(opts.like_names)
  if not opts.like_labelled:
    return np.zeros_like(labels), like, False
  if not labelled:
    _fail(what, f"the data have no labels; the model was trained on {len(like)} classes "
          f"{list(like)}")
  if by_name:
    unknown = [n for n in names if n not in like]
    if unknown:
      _fail(what, f"class {unknown[0]!r} is not one of the model's classes {list(like)}")
    mapping = np.array([like.index(n) for n in names], np.int32)
    return mapping[labels], like, True
  _check_labels(labels, len(like), what, "labels")
  return labels, like, True


# ---- folder:PATH --------------------------------------------------------------------------

def _is_image_name(name: str) -> bool:
  return name.lower().endswith(IMAGE_SUFFIXES)


def _relpath(folder: str, root: str) -> str:
  """`folder` relative to `root` ("." for root itself), for local and remote paths alike."""
  if not files_lib.is_remote(root):
    return os.path.relpath(folder, root)
  base, folder = root.rstrip("/"), folder.rstrip("/")
  return "." if folder == base else folder[len(base) + 1:]


def _walk_images(root: str, skipped: List[str], what: str) -> List[str]:
  """Image files below `root` (relative, '/'-separated, sorted); others, and hidden folders
  (as 'path/.name/'), into `skipped`. Links are followed, but a folder or an image reached
  twice (two links to one file or folder, or a link to a folder above it) is refused: that
  image would be two records of the private set."""
  found = []
  seen = {}  # local (st_dev, st_ino) → the first relative path it was reached by
  for folder, dirs, names in files_lib.walk(root):
    rel = _relpath(folder, root)
    prefix = "" if rel == "." else f"{rel.replace(os.sep, '/')}/"
    _check_once(seen, root, folder, prefix.rstrip("/") or ".", what)
    skipped.extend(f"{prefix}{d}/" for d in sorted(dirs) if d.startswith("."))
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    for name in sorted(names):
      if rel == "." and name == data_spec.SYNTHETIC_MANIFEST:
        continue  # `sample`'s manifest of a synthetic data set: not one of its images
      path = prefix + name
      if _is_image_name(name) and not name.startswith("."):
        _check_once(seen, root, os.path.join(folder, name), path, what)
        found.append(path)
      else:
        skipped.append(path)
  return sorted(found)


def _check_once(seen: dict, root: str, path: str, rel: str, what: str) -> None:
  """Refuses a local file or folder already reached by another path (links)."""
  if files_lib.is_remote(root):
    return  # no links on gfile's file systems
  try:
    st = os.stat(path)
  except OSError as e:  # a broken link, or a file gone since it was listed
    _fail(what, f"{rel}: cannot read it ({e.strerror})")
  first = seen.setdefault((st.st_dev, st.st_ino), rel)
  if first != rel:
    _fail(what, f"{rel} and {first} are the same {'folder' if os.path.isdir(path) else 'file'} "
          "(a link): every image must be reachable once, or it would be two records of the "
          "private set; remove the link")


def _folder_groups(spec: str, files: Sequence[str], classes: Optional[Sequence[str]],
                   what: str) -> np.ndarray:
  """Group names [N] of `files` (relative to the folder) from --groups (module docstring)."""
  if spec == data_spec.GROUPS_SUBFOLDERS:
    depth = 2 if classes is not None else 1
    names = []
    for path in files:
      parts = path.split("/")
      if len(parts) <= depth:
        _fail(what, f"{path}: not in a group sub-folder (--groups=subfolders: "
              f"{'PATH/<class>/<group>/' if classes is not None else 'PATH/<group>/'}…)")
      names.append(parts[depth - 1])
    return np.array(names, dtype=object)
  try:
    text = files_lib.read_bytes(spec).decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(text, newline="")))
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise DataNotFoundError(f"--groups={spec}: cannot read the group CSV "
                            f"({getattr(e, 'strerror', None) or e})") from None
  if not rows or not {"file", "group"} <= {cell.strip() for cell in rows[0]}:
    raise ValueError(f"--groups={spec}: expected a CSV whose first row names the columns "
                     "'file' and 'group'")
  header = [cell.strip() for cell in rows[0]]
  col_file, col_group = header.index("file"), header.index("group")
  index = {path: i for i, path in enumerate(files)}
  groups = [None] * len(files)
  for number, row in enumerate(rows[1:], start=2):
    if not any(cell.strip() for cell in row):
      continue
    if len(row) <= max(col_file, col_group):
      raise ValueError(f"--groups={spec}: row {number} has {len(row)} cells")
    path = os.path.normpath(row[col_file].strip()).replace(os.sep, "/")
    if path not in index:
      raise ValueError(f"--groups={spec}: row {number} names {row[col_file].strip()!r}, "
                       f"which is not an image of {what}")
    if groups[index[path]] is not None:
      raise ValueError(f"--groups={spec}: row {number} names {path} again: one row per "
                       "image")
    if not row[col_group].strip():
      raise ValueError(f"--groups={spec}: row {number} gives {path} an empty group")
    groups[index[path]] = row[col_group].strip()
  missing = [files[i] for i, g in enumerate(groups) if g is None]
  if missing:
    raise ValueError(f"--groups={spec}: {len(missing)} image(s) of {what} have no group, "
                     f"e.g. {missing[0]}")
  return np.array(groups, dtype=object)


def group_ids(names: np.ndarray) -> np.ndarray:
  """Group names [N] (integers or strings) → int64 ids 0…G−1 in sorted order of the names.

  Raises:
    ValueError: names of another kind (floats: 0.0 and −0.0, or 1 and 1.0000001 printed
      alike, would split or merge users)."""
  names = np.asarray(names)
  if names.dtype == object:
    kinds = {type(x) for x in names.reshape(-1)}
    if not kinds <= {str}:
      raise ValueError(f"group names must be integers or strings, got "
                       f"{sorted(k.__name__ for k in kinds)}")
    names = names.astype(str)
  elif names.dtype.kind not in "iuUS":
    raise ValueError(f"group names must be integers or strings, got dtype {names.dtype}")
  _, ids = np.unique(names, return_inverse=True)
  return ids.astype(np.int64).reshape(-1)


def load_folder(path: str, opts: Options) -> Loaded:
  """folder:PATH (module docstring)."""
  import tensorflow as tf

  what = f"folder:{path}"
  if not files_lib.isdir(path):
    raise DataNotFoundError(f"--data={what}: no such directory")
  skipped: List[str] = []
  files = _walk_images(path, skipped, what)
  if not files:
    _fail(f"--data={what}", f"no images ({', '.join(s[1:].upper() for s in IMAGE_SUFFIXES)}) "
          "in the folder or its sub-folders")
  depths = {f.count("/") for f in files}
  grouped = opts.group_unit and opts.groups == data_spec.GROUPS_SUBFOLDERS
  where = f"--data={what}"
  if grouped and min(depths) == 0:
    example = next(f for f in files if "/" not in f)
    _fail(where, f"{example}: directly in the folder; --groups=subfolders reads PATH/<group>/… "
          "or PATH/<class>/<group>/…")
  # Classes are the first sub-folder level, unless the images are all one level up from
  # where classes would be (PATH/<image>, or PATH/<group>/<image> with --groups=subfolders).
  base = 1 if grouped else 0
  flat = max(depths) == base or not opts.like_labelled  # held-out set of a 1-class model
  if not flat and min(depths) == base:
    example = next(f for f in files if f.count("/") == base)
    if grouped:  # PATH/<class>/<image> beside PATH/<class>/<group>/<image>
      _fail(where, f"{example}: not in a group sub-folder; --groups=subfolders reads "
            "PATH/<class>/<group>/<image> (or PATH/<group>/<image> for one class)")
    _fail(where, f"{example}: an image beside the class folders; put every image in a class "
          "sub-folder, or use a folder without sub-folders (one class)")
  classes = None
  if flat:
    labels = np.zeros(len(files), np.int32)
    names, labelled = (UNLABELLED_NAME,), False
  else:
    classes = sorted({f.split("/")[0] for f in files})
    subdirs = sorted(d for d in files_lib.listdir(path)
                     if files_lib.isdir(os.path.join(path, d)) and not d.startswith("."))
    empty = [d for d in subdirs if d not in classes]
    if empty:
      _fail(f"--data={what}", f"class folder {empty[0]!r} holds no image "
            f"({', '.join(s[1:].upper() for s in IMAGE_SUFFIXES)})")
    labels = np.array([classes.index(f.split("/")[0]) for f in files], np.int32)
    names, labelled = tuple(classes), True
  groups = None
  if opts.group_unit:
    groups = group_ids(_folder_groups(opts.groups, files, classes, what))
  labels, names, labelled = _relabel(labels, names, labelled, opts, f"--data={what}",
                                     by_name=True)
  notes = []
  if skipped:
    notes.append(f"{what}: skipped {len(skipped)} file(s) without an image suffix "
                 f"({', '.join(IMAGE_SUFFIXES)}) or hidden (a hidden folder counts once, "
                 f"whole), e.g. {skipped[0]}")
  full = [os.path.join(path, f) for f in files]
  first = _probe(files_lib.read_bytes(full[0]), f"--data={what}", files[0])
  _check_target(first, opts, len(files), f"--data={what}")
  paths = tf.constant(full)

  def read(index):
    return index, decode(tf.io.read_file(paths[index]))

  elements = tf.data.Dataset.range(len(files)).map(read)
  pixels = materialize(elements, len(files), first, opts, f"--data={what}",
                       lambda i: files[i])
  return Loaded(pixels, labels, names, labelled, groups, tuple(notes))


def check_image_shape(shape, what: str) -> None:
  """ValueError naming `what` and the flags when the generators cannot build `shape`."""
  problem = generator_options.image_shape_problem(shape)
  if problem:
    raise ValueError(f"{what}: images of {problem}; pass --image_size=H[xW] / --channels=1|3 "
                     "to resize / convert them")


def _check_target(first: Tuple[int, int, int], opts: Options, n: int,
                  what: str) -> Tuple[int, int, int]:
  """The shape the images will have (returned) is one the generators build, and they fit
  in memory."""
  target = (*(opts.size or first[:2]), opts.channels or first[2])
  check_image_shape(target, what)
  if opts.check_memory is not None:
    opts.check_memory(n, target, what)
  return tuple(int(x) for x in target)


# ---- npz:PATH -------------------------------------------------------------------------------

def _npy_header(npz: zipfile.ZipFile, name: str):
  """(shape, dtype) of member `name` of an .npz without reading its data."""
  with npz.open(name + ".npy") as fh:
    version = np.lib.format.read_magic(fh)
    reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
              else np.lib.format.read_array_header_2_0)
    shape, _, dtype = reader(fh)
  return shape, dtype


def load_npz(path: str, opts: Options) -> Loaded:
  """npz:PATH: `images` uint8 [N, H, W(, C)], optional `labels` [N] int, `label_names` [K]
  str, `groups` [N] (module docstring)."""
  what = f"--data=npz:{path}"
  if not files_lib.isfile(path):
    raise DataNotFoundError(f"{what}: no such file")
  try:
    with files_lib.open_binary(path) as fh, zipfile.ZipFile(fh) as archive:
      members = {n[:-4] for n in archive.namelist() if n.endswith(".npy")}
      if "images" not in members:
        _fail(what, f"no `images` array (it has {sorted(members)}); expected images uint8 "
              "[N, H, W(, C)] and optional labels [N]")
      shape, dtype = _npy_header(archive, "images")
  except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
    if isinstance(e, ValueError) and str(e).startswith(what):
      raise
    _fail(what, f"not a readable .npz file ({errors.first_line(e)})")
  if dtype != np.uint8 or len(shape) not in (3, 4) or (len(shape) == 4 and
                                                       shape[3] not in (1, 3)):
    _fail(what, f"images must be uint8 [N, H, W] or [N, H, W, C] with C 1 or 3, got "
          f"{dtype} {list(shape)}")
  first = (int(shape[1]), int(shape[2]), int(shape[3]) if len(shape) == 4 else 1)
  if shape[0] == 0:
    _fail(what, "images holds no image")
  target = _check_target(first, opts, int(shape[0]), what)
  if opts.check_memory is not None and target != first:
    # The file's own array and the resized one are held together while it is transformed:
    # checking twice the larger of the two covers that peak as well as the training copy.
    opts.check_memory(int(shape[0]), first, what)
  try:
    with files_lib.open_binary(path) as fh, np.load(fh, allow_pickle=False) as data:
      pixels = data["images"]
      labels = data["labels"] if "labels" in data.files else None
      names = data["label_names"] if "label_names" in data.files else None
      groups = data["groups"] if "groups" in data.files else None
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    _fail(what, f"not a readable .npz file ({errors.first_line(e)})")
  named = names is not None  # a held-out file's classes are then matched by name
  if pixels.ndim == 3:
    pixels = pixels[..., np.newaxis]
  n = len(pixels)
  labelled = labels is not None
  if labelled:
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
      _fail(what, f"labels must be integers [{n}], got {labels.dtype} {list(labels.shape)}")
    if names is not None and (names.ndim != 1 or names.dtype.kind not in "US"):
      _fail(what, f"label_names must be strings [K], got {names.dtype} {list(names.shape)}")
    k = _check_labels(labels, None if names is None else len(names), what, "labels")
    names = tuple(x.decode() if isinstance(x, bytes) else str(x)
                  for x in names) if names is not None else tuple(
        str(i) for i in range(k))
    labels = labels.astype(np.int32)
  else:
    labels, names = np.zeros(n, np.int32), (UNLABELLED_NAME,)
  ids = None
  if opts.group_unit:
    if groups is None:
      _fail(what, "no `groups` array [N], which --privacy_unit=group needs")
    if groups.shape != (n,):
      _fail(what, f"groups must be [{n}], got {list(groups.shape)}")
    try:
      ids = group_ids(groups)
    except ValueError as e:
      _fail(what, f"groups: {e}")
  labels, names, labelled = _relabel(labels, names, labelled, opts, what, by_name=named)
  pixels = transform_array(pixels, 255, opts.size, opts.channels)
  return Loaded(np.ascontiguousarray(pixels), labels, names, labelled, ids)


# ---- tfrecord:GLOB ----------------------------------------------------------------------

def load_tfrecord(pattern: str, opts: Options) -> Loaded:
  """tfrecord:GLOB: tf.train.Example records with an encoded image (bytes feature
  --image_key) and an optional int64 label (--label_key), in every record or in none."""
  import tensorflow as tf

  what = f"--data=tfrecord:{pattern}"
  image_key = opts.image_key or DEFAULT_IMAGE_KEY
  label_key = opts.label_key or DEFAULT_LABEL_KEY
  files = files_lib.glob(pattern)
  if not files:
    raise DataNotFoundError(f"{what}: no file matches")
  names_t = tf.constant(files)

  def records():
    return tf.data.Dataset.range(len(files)).flat_map(
        lambda f: tf.data.TFRecordDataset(names_t[f]).enumerate().map(
            lambda r, x: (f, r, x)))

  spec = {image_key: tf.io.VarLenFeature(tf.string), label_key: tf.io.VarLenFeature(tf.int64)}

  def counts(f, r, x):
    ex = tf.io.parse_single_example(x, spec)
    label = tf.sparse.to_dense(ex[label_key])
    return (f, r, tf.size(ex[image_key].values), tf.size(label),
            tf.concat([label, tf.constant([-1], tf.int64)], 0)[0])

  file_of, record_of, n_images, n_labels, labels = [], [], [], [], []
  try:
    for f, r, ni, nl, y in records().map(counts).batch(4096).as_numpy_iterator():
      file_of.append(f)
      record_of.append(r)
      n_images.append(ni)
      n_labels.append(nl)
      labels.append(y)
  except tf.errors.OpError as e:
    _fail(what, f"cannot read the records ({errors.first_line(e)}); an image is a bytes feature "
          f"(--image_key={image_key}), a label an int64 feature (--label_key={label_key})")
  if not file_of:
    _fail(what, f"no record in {len(files)} file(s)")
  file_of, record_of = np.concatenate(file_of), np.concatenate(record_of)
  n_images, n_labels = np.concatenate(n_images), np.concatenate(n_labels)
  labels = np.concatenate(labels)

  def origin(i):
    return f"{files[int(file_of[i])]} record {int(record_of[i])}"

  bad = np.flatnonzero(n_images != 1)
  if bad.size:
    _fail(what, f"{origin(int(bad[0]))}: {int(n_images[bad[0]])} values of the image feature "
          f"{image_key!r} (--image_key) where one encoded image is expected; "
          f"{bad.size} such record(s)")
  if (n_labels > 1).any():
    _fail(what, f"{origin(int(np.argmax(n_labels > 1)))}: several values of the label "
          f"feature {label_key!r}")
  labelled = bool(n_labels.any())
  if labelled and not n_labels.all():
    _fail(what, f"{origin(int(np.argmin(n_labels)))}: no label feature {label_key!r} where "
          "other records have one (--label_key)")
  if not labelled and opts.label_key is not None:
    _fail(what, f"no record has the label feature {label_key!r} (--label_key)")
  n = len(file_of)
  if labelled:
    k = _check_labels(labels, None, what, f"{label_key!r}")
    names = tuple(str(i) for i in range(k))
    labels = labels.astype(np.int32)
  else:
    names, labels = (UNLABELLED_NAME,), np.zeros(n, np.int32)
  labels, names, labelled = _relabel(labels, names, labelled, opts, what, by_name=False)

  def image_of(f, r, x):
    return tf.io.parse_single_example(x, {image_key: tf.io.FixedLenFeature([], tf.string)})[
        image_key]

  first_bytes = next(iter(records().take(1).map(image_of))).numpy()
  first = _probe(first_bytes, what, origin(0))
  _check_target(first, opts, n, what)
  elements = records().enumerate().map(lambda i, e: (i, decode(image_of(*e))))
  pixels = materialize(elements, n, first, opts, what, origin)
  return Loaded(pixels, labels, names, labelled)


# ---- tfds:NAME[/CONFIG] --------------------------------------------------------------------

def load_tfds(name: str, split: str, opts: Options) -> Loaded:
  """tfds:NAME[/CONFIG]: a builder prepared under --data_dir (registered, or read from its
  files), split `split`; the image feature --image_key, the label --label_key."""
  import tensorflow as tf
  import tensorflow_datasets as tfds

  what = f"--data=tfds:{name}"
  where = opts.data_dir if opts.data_dir is not None else "(TFDS default ~/tensorflow_datasets)"
  not_prepared = (f"{what}: not prepared under --data_dir={where} (split {split!r}); prepare "
                  "it with `tfds build` (or your builder's download_and_prepare) and pass "
                  "--data_dir")
  try:
    builder = tfds.builder(name, data_dir=opts.data_dir)
    splits = builder.info.splits
    available = list(splits.keys())
  except Exception as e:  # noqa: BLE001 - TFDS raises many types for a missing dataset
    raise DataNotFoundError(f"{not_prepared} ({errors.first_line(e)[:200]})") from None
  if split not in available:
    raise DataNotFoundError(not_prepared + (f"; it has splits {available}" if available
                                            else ""))
  features = builder.info.features
  image_key = opts.image_key or DEFAULT_IMAGE_KEY
  label_key = opts.label_key or DEFAULT_LABEL_KEY
  keys = list(features.keys())
  if image_key not in keys:
    _fail(what, f"no image feature {image_key!r} (--image_key); features: {keys}")
  labelled = label_key in keys
  if not labelled and opts.label_key is not None:
    _fail(what, f"no label feature {label_key!r} (--label_key); features: {keys}")
  n = int(splits[split].num_examples)
  if n == 0:
    _fail(what, f"split {split!r} holds no example")
  try:
    ds = builder.as_dataset(split=split, shuffle_files=False)
  except Exception as e:  # noqa: BLE001
    raise DataNotFoundError(f"{not_prepared} ({errors.first_line(e)[:200]})") from None

  def pick(example):
    image = example[image_key]
    if image.dtype != tf.uint8 or image.shape.rank != 3:
      raise ValueError(f"{what}: feature {image_key!r} is {image.dtype.name} of rank "
                       f"{image.shape.rank}, not a uint8 image [H, W, C]")
    label = tf.cast(example[label_key], tf.int64) if labelled else tf.constant(0, tf.int64)
    return _drop_alpha(image), label

  picked = ds.map(pick)
  first = tuple(int(s) for s in next(iter(picked.take(1)))[0].shape)
  _check_target(first, opts, n, what)
  elements = picked.enumerate().map(lambda i, e: (i, e[0], e[1]))
  pixels, labels = materialize(elements, n, first, opts, what, lambda i: f"example {i}",
                               with_labels=True)
  if labelled:
    feature = features[label_key]
    class_names = getattr(feature, "names", None)
    k = _check_labels(labels, len(class_names) if class_names else None, what,
                      f"feature {label_key!r}")
    names = tuple(class_names) if class_names else tuple(str(i) for i in range(k))
  else:
    names = (UNLABELLED_NAME,)
  labels, names, labelled = _relabel(labels.astype(np.int32), names, labelled, opts, what,
                                     by_name=False)
  return Loaded(pixels, labels, names, labelled)


def load(source: data_spec.Source, split: str, opts: Options) -> Loaded:
  """The source's images; `split` ("train" / "test") matters to tfds: only."""
  if source.scheme == "folder":
    return load_folder(source.arg, opts)
  if source.scheme == "npz":
    return load_npz(source.arg, opts)
  if source.scheme == "tfrecord":
    return load_tfrecord(source.arg, opts)
  return load_tfds(source.arg, split, opts)

"""What the private data is, without TensorFlow: the --data sources and the data spec a run
records.

Sources (--data=SOURCE; `--dataset=NAME` stays for the built-in sets, `datasets.DATASETS`):

  folder:PATH           an image folder (PNG, JPEG, BMP, GIF). Sub-folders of PATH are the
                        classes (sorted names → labels 0…K−1, as Keras's
                        image_dataset_from_directory and TFDS's ImageFolder); a folder
                        with images only is one class (an unconditional generator, label 0).
  tfds:NAME[/CONFIG]    a TFDS builder prepared under --data_dir (a user's own too), split
                        "train" (evaluate: "test"); features --image_key / --label_key.
  tfrecord:GLOB         files of tf.train.Example: an encoded image (bytes feature
                        --image_key, default "image") and an optional int64 label
                        (--label_key, default "label").
  npz:PATH              numpy's .npz: `images` uint8 [N, H, W(, C)], optional `labels` [N]
                        int, `label_names` [K] str and `groups` [N] (--privacy_unit=group).

The data spec (`DataSpec`: <workdir>/data_spec.json and the export metadata's "data_spec") is
what the generator was built for: the source, the image shape after --image_size /
--channels, the label names, whether the data are labelled, and the unit of privacy. export,
sample and evaluate read it; there is no table of data-set shapes anywhere.

Publishable: the source is already in flags.txt; the shape follows from the flags and the
data's format; label names are the data owner's own class names (folder names, a builder's
ClassLabel names), public by assumption (docs/own-data.md). It holds no count: the number
of privacy units N is in privacy.json (treated as public); the number of records under
--privacy_unit=group is not published.
"""

import dataclasses
import json
import re
from typing import Optional, Tuple

SCHEMES = ("folder", "tfds", "tfrecord", "npz")
PRIVACY_UNITS = ("record", "group")
# --groups=subfolders: the first sub-folder level below the class folders (below PATH for a
# folder without classes) names each image's group.
GROUPS_SUBFOLDERS = "subfolders"
FORMAT_VERSION = 1
# Written by `sample --format=folder|npz|tfrecord` beside a synthetic data set; --data=folder:
# skips it at the folder's top without counting it among the non-image files.
SYNTHETIC_MANIFEST = "synthetic_manifest.json"
_SIZE = re.compile(r"^\s*(\d+)\s*(?:[xX×]\s*(\d+))?\s*$")
SOURCE_HELP = "folder:PATH, tfds:NAME[/CONFIG], tfrecord:GLOB or npz:PATH"


@dataclasses.dataclass(frozen=True)
class Source:
  """A parsed --data value: scheme (one of SCHEMES) and its argument."""

  scheme: str
  arg: str

  def __str__(self) -> str:
    return f"{self.scheme}:{self.arg}"


def parse_source(text: str) -> Source:
  """"folder:/data/scans" → Source("folder", "/data/scans"); ValueError naming --data."""
  scheme, sep, arg = str(text).partition(":")
  if not sep or scheme not in SCHEMES or not arg.strip():
    raise ValueError(f"--data={text!r}: expected {SOURCE_HELP}")
  return Source(scheme, arg)


def parse_image_size(text: Optional[str]) -> Optional[Tuple[int, int]]:
  """--image_size: "32" → (32, 32), "32x24" → (32, 24) (height × width); None → None."""
  if text is None or text == "":
    return None
  match = _SIZE.match(str(text))
  if match is None:
    raise ValueError(f"--image_size={text!r}: expected H or HxW in pixels, e.g. 32 or 28x28")
  height = int(match.group(1))
  width = int(match.group(2)) if match.group(2) else height
  return height, width


def format_size(size: Optional[Tuple[int, int]]) -> Optional[str]:
  """(32, 24) → "32x24", the --image_size spelling (None → None)."""
  return None if size is None else f"{size[0]}x{size[1]}"


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """What a run's generator is built for (module docstring).

  source: "digits" … for a built-in set, else the --data value; image_shape: (H, W, C) of
  the training images after --image_size / --channels; label_names: the K class names
  (K = 1, "all", for unlabelled data); labelled: False when the data have no labels (the
  generator is then unconditional: label always 0); image_size / channels: the flags
  applied (None: the data's own); privacy_unit: "record" or "group"; max_per_group: m
  under --privacy_unit=group (None otherwise).
  """

  source: str
  image_shape: Tuple[int, int, int]
  label_names: Tuple[str, ...]
  labelled: bool = True
  image_size: Optional[Tuple[int, int]] = None
  channels: Optional[int] = None
  privacy_unit: str = "record"
  max_per_group: Optional[int] = None

  def __post_init__(self):
    object.__setattr__(self, "image_shape", tuple(int(s) for s in self.image_shape))
    object.__setattr__(self, "label_names", tuple(str(s) for s in self.label_names))
    if self.image_size is not None:
      object.__setattr__(self, "image_size", tuple(int(s) for s in self.image_size))
    if len(self.image_shape) != 3 or min(self.image_shape) < 1:
      raise ValueError(f"image_shape must be (H, W, C) ≥ 1, got {self.image_shape}")
    if not self.label_names:
      raise ValueError("a data spec needs at least one label name")
    if len(set(self.label_names)) != len(self.label_names):
      raise ValueError(f"label names must be distinct, got {list(self.label_names)}")
    if not self.labelled and len(self.label_names) != 1:
      raise ValueError("unlabelled data have one class")
    if self.privacy_unit not in PRIVACY_UNITS:
      raise ValueError(f"privacy_unit must be one of {PRIVACY_UNITS}, got "
                       f"{self.privacy_unit!r}")

  @property
  def num_classes(self) -> int:
    return len(self.label_names)

  def to_json(self) -> dict:
    out = dataclasses.asdict(self)
    out["image_shape"] = list(self.image_shape)
    out["label_names"] = list(self.label_names)
    out["image_size"] = None if self.image_size is None else list(self.image_size)
    out["num_classes"] = self.num_classes
    out["format_version"] = FORMAT_VERSION
    return out

  @classmethod
  def from_json(cls, data, where: str) -> "DataSpec":
    """The inverse of to_json; ValueError naming `where` (a file) when it is not a spec."""
    if not isinstance(data, dict):
      raise ValueError(f"{where}: expected a data spec (a JSON object)")
    names = {f.name for f in dataclasses.fields(cls)}
    missing = {"source", "image_shape", "label_names"} - set(data)
    if missing:
      raise ValueError(f"{where}: the data spec lacks {sorted(missing)}")
    try:
      spec = cls(**{k: (tuple(v) if isinstance(v, list) else v)
                    for k, v in data.items() if k in names})
    except (TypeError, ValueError) as e:
      raise ValueError(f"{where}: not a data spec ({e})") from None
    if "num_classes" in data and data["num_classes"] != spec.num_classes:
      raise ValueError(f"{where}: num_classes={data['num_classes']} but "
                       f"{spec.num_classes} label names")
    return spec

  def dumps(self) -> str:
    return json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n"


def read_spec(path: str) -> DataSpec:
  """A data_spec.json (local or any tf.io.gfile path); FileNotFoundError when absent,
  ValueError naming the file when it is not a spec."""
  from dp_sinkhorn_tf.io import files

  try:
    text = files.read_text(path)
  except FileNotFoundError:
    raise
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: unreadable ({e})") from None
  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from None
  return DataSpec.from_json(data, path)

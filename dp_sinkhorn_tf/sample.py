r"""Draws class-conditional samples from an exported generator (no server needed).

  python -m dp_sinkhorn_tf.sample --model=runs/digits_demo/export/generator \
      --labels=0,1,2 --num_per_label=8 --seed=0 --out=grid.png

--model is an export version directory (holding saved_model.pb) or the model directory
holding numeric versions, of which the highest is used (as TF Serving does). The images come
from the export's `sample` signature: label = each of --labels repeated --num_per_label times
(label-major), z = tf.random.stateless_uniform([B, latent_dim], seed=[--seed, 0]), inference
mode; the same flags give the same images.

--labels names classes by their names in the export's metadata (the run's data spec: folder
names, a TFDS builder's ClassLabel names) or by index; unset, every class, which for a model
trained on unlabelled data (one class) is label 0: the label is optional there.

--out by suffix:
  .png  a grid, one row per entry of --labels, --num_per_label columns (matplotlib, Agg);
  .npz  images (float32 [B, H, W, C] in [−1, 1]), images_uint8 (uint8, the same images as
        clip(round((x + 1)·127.5), 0, 255)), labels (int32 [B]), z (float32 [B, latent_dim])
        and seed (int64).
The file is written beside its destination and renamed into place, so it is either whole or
absent. Flags are checked against the export's assets.extra/metadata.json (label names, or
indices in [0, num_classes)) before TensorFlow is loaded; a bad flag exits with status 2 and one
`error:` line naming it, writing nothing.
"""

import dataclasses
import os
import sys
from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np
from absl import flags

from dp_sinkhorn_tf import cli
from dp_sinkhorn_tf.io import files, images
from dp_sinkhorn_tf.release import serving

SUFFIXES = (".png", ".npz")
INT64_MIN, INT64_MAX = -2**63, 2**63 - 1


class FlagError(ValueError):
  """A bad flag; the message is one line starting with --flag=value."""


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


def parse_labels(text: Optional[str], label_names: Sequence[str]) -> List[int]:
  """--labels → class indices: "cat,dog" by name, "0,3" by index, mixed as needed; None →
  every class (for a one-class, unlabelled model: [0]).

  An item that is one of the export's label names is that class, else it is read as an
  index in [0, K): with classes named "1", "2", "3" (folders), "1" is class 0, the one named
  so."""
  num_classes = len(label_names)
  if text is None:
    return list(range(num_classes))
  names = [str(name) for name in label_names]
  labels = []
  for item in (part.strip() for part in text.split(",")):
    if item in names:
      labels.append(names.index(item))
      continue
    try:
      index = int(item)
    except ValueError:
      shown = ", ".join(names[:20]) + (", …" if len(names) > 20 else "")
      raise FlagError(f"--labels={text}: {item!r} is neither a class name ({shown}) nor a "
                      f"class index in [0, {num_classes})") from None
    if not 0 <= index < num_classes:
      raise FlagError(f"--labels={text}: {index} outside [0, num_classes={num_classes})")
    labels.append(index)
  return labels


def check_out(out: str) -> str:
  """--out must end in .png / .npz and go into an existing directory; returns the suffix."""
  suffix = os.path.splitext(out)[1].lower()
  if suffix not in SUFFIXES:
    raise FlagError(f"--out={out}: expected a file name ending in {' or '.join(SUFFIXES)}")
  if os.path.isdir(out):
    raise FlagError(f"--out={out}: is a directory")
  parent = os.path.dirname(os.path.abspath(out))
  if not os.path.isdir(parent):
    raise FlagError(f"--out={out}: directory {parent} does not exist")
  return suffix


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


def write_npz_atomic(path: str, arrays: dict) -> None:
  """np.savez of `arrays`, written atomically (`files`)."""
  import io
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  files.write_bytes_atomic(path, buf.getvalue())


def draw(version_dir: str, labels: Sequence[int], num_per_label: int, seed: int) -> dict:
  """The `sample` signature on labels repeated num_per_label times (label-major)."""
  import tensorflow as tf

  repeated = np.repeat(np.asarray(labels, np.int32), num_per_label)
  loaded = serving.load_saved_model(version_dir)
  out = loaded.signatures["sample"](label=tf.constant(repeated, tf.int32),
                                    seed=tf.constant(seed, tf.int64))
  return {"images": out["images"].numpy(), "images_uint8": out["images_uint8"].numpy(),
          "labels": repeated, "z": out["z"].numpy(), "seed": np.int64(seed)}


FLAGS = flags.FlagValues()  # private registry (cli): importable beside the training flags
flags.DEFINE_string("model", None, "Export version directory, or the model directory holding "
                    "numeric versions (the highest is used).", flag_values=FLAGS)
flags.DEFINE_string("labels", None, "Comma-separated classes by name (cat,dog) or index "
                    "(0,3), one grid row each (default: every class; an unlabelled model has "
                    "the one class 0).", flag_values=FLAGS)
flags.DEFINE_integer("num_per_label", 8, "Samples per label.", lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "Seed of the latents (int64).", lower_bound=INT64_MIN,
                     upper_bound=INT64_MAX, flag_values=FLAGS)
flags.DEFINE_string("out", None, "Output .png (a grid) or .npz (the arrays).",
                    flag_values=FLAGS)


@dataclasses.dataclass(frozen=True)
class SampleConfig:
  """`sample`'s flags, validated against the export (`config_from_flags`): --model resolved
  to its version directory, --labels parsed, --out's suffix checked."""

  model: str  # --model as given (named in errors)
  version_dir: str
  version: Optional[int]  # None when --model is a version directory without a number
  metadata: Mapping = dataclasses.field(repr=False)  # the export's metadata.json
  labels: Tuple[int, ...]
  num_per_label: int
  seed: int
  out: str
  suffix: str  # ".png" | ".npz"


def config_from_flags(f) -> SampleConfig:
  """The parsed flags `f` checked (reads the export's metadata, writes nothing) into a
  SampleConfig; raises FlagError naming the flag."""
  for name in ("model", "out"):
    if not getattr(f, name):
      raise FlagError(f"--{name}: required")
  suffix = check_out(f.out)
  version_dir, version = resolve_version_dir(f.model)
  metadata = read_metadata(version_dir, f.model)
  labels = parse_labels(f.labels, metadata["label_names"])
  return SampleConfig(model=f.model, version_dir=version_dir, version=version,
                      metadata=metadata, labels=tuple(labels),
                      num_per_label=f.num_per_label, seed=f.seed, out=f.out, suffix=suffix)


def run(cfg: SampleConfig) -> int:
  """Draws the samples and writes --out (atomically); prints one line."""
  try:
    arrays = draw(cfg.version_dir, cfg.labels, cfg.num_per_label, cfg.seed)
  except ValueError as e:
    raise FlagError(f"--model={cfg.model}: {e}") from None
  labels, metadata = list(cfg.labels), cfg.metadata
  if cfg.suffix == ".npz":
    write_npz_atomic(cfg.out, arrays)
  else:
    rows = np.repeat(np.arange(len(labels), dtype=np.int32), cfg.num_per_label)  # label-major
    names = [str(metadata["label_names"][k]) if "label_names" in metadata else str(k)
             for k in labels]
    images.save_class_grid_png(arrays["images"], rows, names, cfg.out,
                               per_class=cfg.num_per_label,
                               title=_title(metadata, cfg.version, cfg.seed))
  print(f"{cfg.out}: {len(arrays['labels'])} samples of labels {labels} from "
        f"{cfg.version_dir}")
  return 0


main = cli.main_of(lambda f: run(config_from_flags(f)), FLAGS, "dp_sinkhorn_tf.sample")


if __name__ == "__main__":
  sys.exit(main())

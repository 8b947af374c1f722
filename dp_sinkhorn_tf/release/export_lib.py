r"""The export layout: a trained generator as a SavedModel in TF Serving's versioned layout
(the command line is `dp_sinkhorn_tf.export` over `train.run_export`; training's --export
calls `export_generator` too).

Layout: <export_dir>/<model_name>/<version>/ holding saved_model.pb, variables/ and
assets.extra/metadata.json. TF Serving (--model_base_path=<export_dir>/<model_name>) loads
only purely numeric subdirectories, by default the highest; it never reads assets.extra,
so the metadata rides along without affecting serving.

Signatures (B = batch, L = latent_dim, images in inference mode):

  serving_default(z: float32 [B, L], label: int32 [B])
      → images float32 [B, H, W, C] in [−1, 1],
        images_uint8 uint8 [B, H, W, C] = clip(round((images + 1)·127.5), 0, 255)
        (round half to even, as tf.round / np.round).
  sample(label: int32 [B], seed: int64 [])
      → images, images_uint8 as above, and the latents used:
        z = generators.sample_latent(B, L, seed) = tf.random.stateless_uniform([B, L],
            seed=[seed, 0]) ~ U(0, 1): the same seed gives the same images. With TF 2.15's
            stateless Philox the rows fill in order, so row i depends on (seed, i) only and a
            longer label list extends a shorter one's latents.

Labels outside [0, num_classes) and z / label batches of different sizes fail the request
(InvalidArgument) instead of silently reading another class's embedding. A model trained on
unlabelled data (metadata "data_spec": {"labelled": false}) has the one class 0: its
signatures are the same, and the label list (all 0) sets the batch size.

BatchNorm: the signatures call the generator with training=False, so BN normalises with its
moving averages (the statistics of generated batches during training; no private data). A
sample therefore does not depend on the other samples in its request: the same (z, label)
gives the same image in a batch of 1 or of 1,000.

Atomicity: the version is written to <export_dir>/<model_name>/.tmp-<version>-<pid> (a
name TF Serving ignores) and renamed to <version> only when complete; any failure removes
the temporary directory, so a version directory is always whole. An existing version is
never overwritten. A killed process (SIGKILL) can leave a .tmp-* directory behind; TF Serving
ignores it and it can be deleted.

Times: the metadata holds no timestamp, and on a local file system every file and folder of
the version (set before the rename), the model folder and the folders the export created
have the modification time `files.FIXED_TIME` (2000-01-01T00:00:00Z): when the export was
made is not published. A remote store keeps its own times (`files`).

From a run directory (flags.txt, data_spec.json, a checkpoint, the ledger) the generator is
rebuilt, checked and stamped by `train.run_export`, which calls `export_generator`; this
module knows nothing of training, flags or ledgers (the layer below `train`).
"""

import json
import numbers
import os
from typing import Any, Dict, List, Optional

import tensorflow as tf

from dp_sinkhorn_tf import __version__
from dp_sinkhorn_tf.io import files
from dp_sinkhorn_tf.models import generators
from dp_sinkhorn_tf.release import serving

TMP_PREFIX = ".tmp-"
# Keys the exporter writes itself; passed metadata may repeat them only with equal values.
# No date: beside any other date it tells how long training took, which depends on the private
# data and is not covered by ε.
_EXPORT_KEYS = ("format_version", "model_name", "version", "dp_sinkhorn_tf_version",
                "tensorflow_version", "latent_dim", "num_classes", "image_shape", "generator",
                "signatures", "latent_distribution", "sample_seed_rule", "uint8_rule",
                "batchnorm")


class ExportError(ValueError):
  """A bad argument or run directory; the message is one line naming the flag or file."""


# ---- the SavedModel -----------------------------------------------------------------------

def to_uint8(images: tf.Tensor) -> tf.Tensor:
  """[−1, 1] float → uint8 clip(round((x + 1)·127.5), 0, 255) (round half to even)."""
  return tf.cast(tf.clip_by_value(tf.round((images + 1.0) * 127.5), 0.0, 255.0), tf.uint8)


class GeneratorServingModule(tf.Module):
  """The generator's variables plus the two serving functions (see the module docstring).

  Only the variables are tracked, not the Keras model, so the SavedModel holds plain
  functions and no Keras-specific serialisation.
  """

  def __init__(self, generator: tf.keras.Model):
    super().__init__(name="dp_sinkhorn_generator")
    self.latent_dim = int(generator.latent_dim)
    self.num_classes = int(generator.num_classes)
    self.image_shape = tuple(int(s) for s in generator.image_shape)
    self.generator_variables = list(generator.variables)
    self._call_generator = lambda z, label: generator([z, label], training=False)
    label_spec = tf.TensorSpec([None], tf.int32, name="label")
    self.generate = tf.function(
        self._generate, input_signature=[tf.TensorSpec([None, self.latent_dim], tf.float32,
                                                        name="z"), label_spec])
    self.sample = tf.function(
        self._sample, input_signature=[label_spec, tf.TensorSpec([], tf.int64, name="seed")])

  def _checked_labels(self, label: tf.Tensor) -> tf.Tensor:
    message = f"label must be in [0, num_classes={self.num_classes})"
    with tf.control_dependencies([
        tf.debugging.assert_non_negative(label, message=message),
        tf.debugging.assert_less(label, tf.constant(self.num_classes, tf.int32),
                                 message=message)]):
      return tf.identity(label)

  def _images(self, z: tf.Tensor, label: tf.Tensor) -> Dict[str, tf.Tensor]:
    images = self._call_generator(z, self._checked_labels(label))
    return {"images": images, "images_uint8": to_uint8(images)}

  def _generate(self, z: tf.Tensor, label: tf.Tensor) -> Dict[str, tf.Tensor]:
    with tf.control_dependencies([tf.debugging.assert_equal(
        tf.shape(z)[0], tf.shape(label)[0],
        message="z and label must have the same batch size")]):
      z = tf.identity(z)
    return self._images(z, label)

  def _sample(self, label: tf.Tensor, seed: tf.Tensor) -> Dict[str, tf.Tensor]:
    z = generators.sample_latent(tf.shape(label)[0], self.latent_dim,
                             tf.stack([seed, tf.constant(0, tf.int64)]))
    outputs = self._images(z, label)
    outputs["z"] = z
    return outputs

  def signatures(self) -> Dict[str, Any]:
    return {serving.SERVING_DEFAULT: self.generate.get_concrete_function(),
            serving.SAMPLE: self.sample.get_concrete_function()}


def _spec_json(spec: tf.TensorSpec) -> dict:
  return {"dtype": spec.dtype.name, "shape": spec.shape.as_list()}


def signature_summary(module: GeneratorServingModule) -> Dict[str, dict]:
  """{signature: {"inputs": {name: {dtype, shape}}, "outputs": {...}}}, shapes with None."""
  summary = {}
  for name, fn in module.signatures().items():
    inputs = {spec.name: _spec_json(spec) for spec in fn.structured_input_signature[0]}
    outputs = {key: _spec_json(spec) for key, spec in sorted(fn.structured_outputs.items())}
    summary[name] = {"inputs": inputs, "outputs": outputs}
  return summary


# ---- versions and metadata ----------------------------------------------------------------

def existing_versions(model_dir: str) -> List[int]:
  """Sorted versions in `model_dir`: the subdirectories TF Serving would load (all digits)."""
  return [version for version, _ in serving.version_dirs(model_dir)]


def next_version(model_dir: str) -> int:
  """1 for a new model directory, else the highest existing version + 1."""
  versions = existing_versions(model_dir)
  return versions[-1] + 1 if versions else 1


def build_metadata(module: GeneratorServingModule, model_name: str, version: int,
                   generator_config: dict, metadata: Optional[dict]) -> dict:
  """The passed training metadata plus what the export knows (see _EXPORT_KEYS)."""
  try:
    out = files.json_safe(dict(metadata or {}))
  except TypeError as e:
    raise ExportError(f"metadata: {e}") from None
  own = {
      "format_version": 1, "model_name": model_name, "version": version,
      "dp_sinkhorn_tf_version": __version__, "tensorflow_version": tf.__version__,
      "latent_dim": module.latent_dim, "num_classes": module.num_classes,
      "image_shape": list(module.image_shape), "generator": files.json_safe(generator_config),
      "signatures": signature_summary(module),
      "latent_distribution": "z ~ U(0, 1) i.i.d., float32 [B, latent_dim]",
      "sample_seed_rule": "z = tf.random.stateless_uniform([B, latent_dim], seed=[seed, 0])",
      "uint8_rule": "images_uint8 = clip(round((images + 1) * 127.5), 0, 255), round half "
                    "to even",
      "batchnorm": "inference mode (moving averages): a sample does not depend on its batch",
  }
  for key in _EXPORT_KEYS:
    if key in out and key != "image_shape" and out[key] != own[key]:
      raise ExportError(f"metadata[{key!r}] is set by the exporter; do not pass it")
  if "image_shape" in out and list(out["image_shape"]) != own["image_shape"]:
    raise ExportError(f"metadata['image_shape']={out['image_shape']} does not match the "
                      f"generator's {own['image_shape']}")
  names = out.get("label_names")
  if names is not None and len(names) != module.num_classes:
    raise ExportError(f"metadata['label_names'] has {len(names)} names for "
                      f"num_classes={module.num_classes}")
  out.update(own)
  return out


def _write_metadata(saved_model_dir: str, payload: dict) -> None:
  metadata_path = os.path.join(saved_model_dir, serving.METADATA_PATH)
  files.makedirs(os.path.dirname(metadata_path))
  files.write_text_atomic(metadata_path, json.dumps(payload, indent=2, sort_keys=True,
                                                    allow_nan=False) + "\n")


def _makedirs(path: str) -> List[str]:
  """os.makedirs(path); returns the directories it created, deepest last (none for a
  remote path: its directories are prefixes that vanish with their last object)."""
  if files.is_remote(path):
    files.makedirs(path)
    return []
  created = []
  head = os.path.abspath(path)
  while head and not os.path.exists(head):
    created.append(head)
    head = os.path.dirname(head)
  os.makedirs(path, exist_ok=True)
  return created[::-1]


def check_model_name(model_name: str) -> None:
  """ExportError unless --model_name is a plain directory name (checked before training)."""
  check_name_and_version(model_name, None)


def check_name_and_version(model_name: str, version) -> None:
  if (not isinstance(model_name, str) or not model_name or model_name in (".", "..") or
      "/" in model_name or os.sep in model_name or model_name.startswith(".")):
    raise ExportError(f"--model_name={model_name!r}: expected a plain directory name")
  if version is not None and (isinstance(version, bool) or
                              not isinstance(version, numbers.Integral) or version < 1):
    raise ExportError(f"--version={version!r}: expected an integer ≥ 1 (or unset for the "
                      "next free version)")


def refuse_existing(model_dir: str, version: int) -> None:
  if version in existing_versions(model_dir):
    raise FileExistsError(f"--version={version}: {os.path.join(model_dir, str(version))} "
                          "already exists; refusing to overwrite it (omit --version for the "
                          "next free one)")


def export_generator(generator: tf.keras.Model, base_dir: str, model_name: str = "generator",
                     version: Optional[int] = None, metadata: Optional[dict] = None) -> str:
  """Writes `generator` to <base_dir>/<model_name>/<version>/ atomically; returns that path.

  Args:
    generator: a built conditional generator (attributes latent_dim, num_classes,
      image_shape; `generator([z, labels], training=False)`).
    base_dir: the export root (TF Serving's --model_base_path is <base_dir>/<model_name>).
    model_name: a plain directory name.
    version: an integer ≥ 1; None takes the next free one (1, or the highest + 1).
    metadata: JSON-able training facts (ε, δ, dataset, label_names, flags, ...) merged into
      assets.extra/metadata.json with the export's own fields.

  Raises:
    ExportError: bad model_name / version / metadata.
    FileExistsError: the version exists (it is never overwritten).
    Anything from saving, after removing the partial temporary directory.
  """
  check_name_and_version(model_name, version)
  model_dir = os.path.join(base_dir, model_name)
  module = GeneratorServingModule(generator)
  generator_config = generator.get_config() if hasattr(generator, "get_config") else {}
  generator_config = dict(generator_config, family=type(generator).__name__)
  if version is None:
    version = next_version(model_dir)
  final = os.path.join(model_dir, str(version))
  refuse_existing(model_dir, version)
  payload = build_metadata(module, model_name, version, generator_config, metadata)
  created = _makedirs(model_dir)
  tmp = os.path.join(model_dir, f"{TMP_PREFIX}{version}-{os.getpid()}")
  try:
    if files.exists(tmp):  # left by a killed process that had our pid
      files.rmtree(tmp)
    tf.saved_model.save(module, tmp, signatures=module.signatures())
    _write_metadata(tmp, payload)
    files.fsync_tree(tmp)
    if version in existing_versions(model_dir):  # written meanwhile by another exporter
      raise FileExistsError(f"--version={version}: {final} appeared during the export; "
                            "refusing to overwrite it")
    files.set_fixed_times(tmp)  # before the rename: the version never shows a clock time
    files.rename_dir(tmp, final)
  except BaseException:
    files.rmtree(tmp)
    for path in reversed(created):  # only directories this call created, and only if empty
      try:
        os.rmdir(path)
      except OSError:
        break
    raise
  for path in (final, model_dir, *created):  # folders whose entries the export changed
    files.set_fixed_time(path)
  return final

r"""The export layout: a trained generator as a SavedModel in TF Serving's versioned layout
(the command line is `dp_sinkhorn_tf.export`; training's --export calls `export_generator`).

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

From a run directory, the generator is rebuilt from flags.txt (the resolved training flags)
and data_spec.json (the image shape and classes the run trained on: `data.spec`; no table
of data-set shapes, so a run on the user's own data exports like a built-in one) and
restored from the latest checkpoint (or --checkpoint); when the checkpoint holds an
`ema_generator` (exponential moving average of the weights), that is what is exported
unless `weights` asks for the raw `generator` (both are post-processing of the released
gradients, so the ledger's ε covers either; the metadata's "weights" says which). The
privacy fields of the metadata come from privacy_ledger.json: ε is that of every step the
ledger has charged (write-ahead, so an upper bound for any checkpoint of the run).

Provenance: a checkpoint is exported only if its run id (stored in every checkpoint) is the
run id of the directory's run.json and, for DP runs, of its ledger; a checkpoint of another
run (`--checkpoint=` elsewhere, a --nodp run, an older version) is refused rather than
stamped with this ledger's ε. The metadata says "private": false, with the reason, for
--nodp and --insecure_fixed_key runs. Nothing secret (the key, the ledger's data
fingerprint) is copied into the export.
"""

import copy
import dataclasses
import json
import numbers
import os
from typing import Any, Dict, List, Optional

import numpy as np
import tensorflow as tf

from dp_sinkhorn_tf import __version__
from dp_sinkhorn_tf.io import checkpoints, files, rundir
from dp_sinkhorn_tf.models import generators
from dp_sinkhorn_tf.release import serving

TMP_PREFIX = ".tmp-"
FLAGS_FILE = rundir.FLAGS_FILE
LEDGER_FILE = rundir.LEDGER_FILE
REPORT_FILE = rundir.REPORT_FILE
EMA_KEY = "ema_generator"
GENERATOR_KEY = "generator"
# --weights: which checkpoint entry to export ("auto": the EMA when the checkpoint holds one).
WEIGHTS = {"auto": None, "ema": EMA_KEY, "raw": GENERATOR_KEY}
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
  if not files.isdir(model_dir):
    return []
  names = [name.rstrip("/") for name in files.listdir(model_dir)]
  return sorted(int(name) for name in names
                if name.isascii() and name.isdigit() and
                files.isdir(os.path.join(model_dir, name)))


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
  _check_name_and_version(model_name, None)


def _check_name_and_version(model_name: str, version) -> None:
  if (not isinstance(model_name, str) or not model_name or model_name in (".", "..") or
      "/" in model_name or os.sep in model_name or model_name.startswith(".")):
    raise ExportError(f"--model_name={model_name!r}: expected a plain directory name")
  if version is not None and (isinstance(version, bool) or
                              not isinstance(version, numbers.Integral) or version < 1):
    raise ExportError(f"--version={version!r}: expected an integer ≥ 1 (or unset for the "
                      "next free version)")


def _refuse_existing(model_dir: str, version: int) -> None:
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
  _check_name_and_version(model_name, version)
  model_dir = os.path.join(base_dir, model_name)
  module = GeneratorServingModule(generator)
  generator_config = generator.get_config() if hasattr(generator, "get_config") else {}
  generator_config = dict(generator_config, family=type(generator).__name__)
  if version is None:
    version = next_version(model_dir)
  final = os.path.join(model_dir, str(version))
  _refuse_existing(model_dir, version)
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


# ---- from a run directory -----------------------------------------------------------------

@dataclasses.dataclass
class RestoredRun:
  """A generator restored from a run directory, and what the export metadata needs."""

  generator: tf.keras.Model
  cfg: Any  # config.TrainConfig
  identity: Any  # rundir.RunIdentity
  checkpoint: str
  weights: str  # "generator" or "ema_generator": the checkpoint entry restored
  step: Optional[int]
  flags_text: str
  spec: Any = None  # data.spec.DataSpec: the run's data_spec.json


def parse_flags_file(path: str):
  """flags.txt (absl flagfile of dp_sinkhorn_tf.main) → (TrainConfig, text).

  Parsed on a fresh FlagValues holding copies of main's flags (the process's own flags are
  left alone); lines for flags main does not define (absl's own) are ignored.
  """
  from absl import flags

  from dp_sinkhorn_tf import cli
  from dp_sinkhorn_tf.train import train_flags

  fresh = flags.FlagValues()
  for flag in train_flags.flags_of(train_flags.FLAGS):
    fresh[flag.name] = copy.deepcopy(flag)
  try:
    text = files.read_text(path)
  except (OSError, UnicodeDecodeError) as e:
    raise ExportError(f"{path}: unreadable ({_first_line(e)})") from None
  try:
    fresh(["flags.txt", *cli.expand_flagfiles([f"--flagfile={path}"])], known_only=True)
    return train_flags.config_from_flags(fresh), text
  except (flags.Error, ValueError) as e:  # cli.FlagfileError is a ValueError
    raise ExportError(f"{path}: {_first_line(e)}") from None


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return text.splitlines()[0] if text else type(error).__name__


def resolve_checkpoint(workdir: str, checkpoint: Optional[str]) -> str:
  """--checkpoint as a prefix (PATH.index exists) or a directory (its latest); unset: the
  latest checkpoint in <workdir>/checkpoints."""
  if checkpoint is None:
    found = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    if found is None:
      raise ExportError(f"--workdir={workdir}: no checkpoint in "
                        f"{os.path.join(workdir, 'checkpoints')}")
    return found
  if files.exists(checkpoint + ".index"):
    return checkpoint
  if files.isdir(checkpoint):
    found = tf.train.latest_checkpoint(checkpoint)
    if found is not None:
      return found
  raise ExportError(f"--checkpoint={checkpoint}: neither a checkpoint prefix (no "
                    f"{os.path.basename(checkpoint)}.index) nor a directory with a checkpoint")


def _flags_path(workdir: str) -> str:
  if not files.isdir(workdir):
    raise ExportError(f"--workdir={workdir}: no such directory")
  flags_path = os.path.join(workdir, FLAGS_FILE)
  if not files.isfile(flags_path):
    raise ExportError(f"--workdir={workdir}: no {FLAGS_FILE} (not a training run directory)")
  return flags_path


def check_weights(weights: str) -> None:
  if weights not in WEIGHTS:
    raise ExportError(f"--weights={weights!r}: expected one of {'|'.join(WEIGHTS)}")


def pick_weights(keys, weights: str, path: str) -> str:
  """The checkpoint entry to restore: `WEIGHTS[weights]`, or for "auto" the EMA when the
  checkpoint's `keys` hold one, else the raw generator."""
  has_ema = any(k.startswith(EMA_KEY + "/") for k in keys)
  if weights == "auto":
    return EMA_KEY if has_ema else GENERATOR_KEY
  if weights == "ema" and not has_ema:
    raise ExportError(f"--weights=ema: the checkpoint {path} holds no {EMA_KEY} (trained "
                      "without --ema_decay); use --weights=raw or auto")
  return WEIGHTS[weights]


def read_run_spec(workdir: str):
  """The run's data spec (<workdir>/data_spec.json); ExportError naming the file when it is
  missing or unreadable."""
  from dp_sinkhorn_tf.data import spec as data_spec

  path = rundir.path(workdir, rundir.DATA_SPEC_FILE)
  try:
    return data_spec.read_spec(path)
  except FileNotFoundError:
    raise ExportError(f"--workdir={workdir}: no {rundir.DATA_SPEC_FILE} (the image shape and "
                      "classes of the run's data; runs of older versions lack it): re-run the "
                      "training command with --if_finished=skip to write it") from None
  except ValueError as e:
    raise ExportError(str(e)) from None


def restore_run(workdir: str, checkpoint: Optional[str] = None,
                weights: str = "auto") -> RestoredRun:
  """Rebuilds the run's generator from flags.txt and restores its weights: `weights` is a
  key of WEIGHTS ("auto": the EMA when the checkpoint holds one).

  Raises ExportError naming --workdir / --checkpoint / --weights / the file when something
  is missing or the checkpoint does not hold the generator that flags.txt describes.
  """
  check_weights(weights)
  from dp_sinkhorn_tf.train import trainer

  flags_path = _flags_path(workdir)
  cfg, flags_text = parse_flags_file(flags_path)
  try:
    identity = rundir.read_identity(workdir)
  except rundir.ProvenanceError as e:
    raise ExportError(str(e)) from None
  if identity is None:
    raise ExportError(f"--workdir={workdir}: no {rundir.IDENTITY_FILE}, so no checkpoint can "
                      "be tied to this run and its ε (a run of an older version?); refusing "
                      "to export")
  path = resolve_checkpoint(workdir, checkpoint)
  spec = read_run_spec(workdir)
  # float32 whatever --precision trained it: the weights are float32 either way.
  generator = trainer.make_generator(cfg, spec.image_shape, spec.num_classes,
                                     precision="float32")
  generator([tf.zeros([1, cfg.model.latent_dim]), tf.zeros([1], tf.int32)], training=False)
  try:
    keys, stored_id, step = checkpoints.read_checkpoint_header(path)
  except checkpoints.CHECKPOINT_READ_ERRORS as e:
    raise ExportError(f"--checkpoint={path}: unreadable ({_first_line(e)})") from None
  if stored_id != identity.run_id:
    raise ExportError(f"--checkpoint={path}: written by run {stored_id or '(no run id)'}, not "
                      f"by {workdir}'s run {identity.run_id}; refusing to stamp this run's "
                      "privacy on it")
  weights = pick_weights(keys, weights, path)
  # NaN sentinels: a variable the checkpoint does not restore stays NaN and is reported.
  for var in generator.variables:
    var.assign(tf.fill(tf.shape(var), tf.constant(np.nan, var.dtype)))
  try:
    tf.train.Checkpoint(**{weights: generator}).restore(path).expect_partial()
  except checkpoints.CHECKPOINT_READ_ERRORS as e:
    raise ExportError(f"--checkpoint={path}: does not hold the {weights} that {flags_path} "
                      f"describes ({_first_line(e)})") from None
  missing = [var.name for var in generator.variables
             if not np.all(np.isfinite(var.numpy()))]
  if missing:
    raise ExportError(f"--checkpoint={path}: no finite values for {len(missing)} variable(s) "
                      f"of the {weights} that {flags_path} describes, e.g. {missing[0]}")
  return RestoredRun(generator, cfg, identity, path, weights, step, flags_text, spec)


def run_metadata(workdir: str, run: RestoredRun) -> dict:
  """The same fields as main.export_metadata, read back from the run directory."""
  from dp_sinkhorn_tf.privacy import accounting

  cfg = run.cfg
  p = cfg.privacy
  ledger_path = os.path.join(workdir, LEDGER_FILE)
  plan = {}
  report_path = os.path.join(workdir, REPORT_FILE)
  if files.isfile(report_path):
    try:
      plan = json.loads(files.read_text(report_path)).get("plan", {})
    except (OSError, ValueError, AttributeError) as e:
      raise ExportError(f"{report_path}: unreadable ({_first_line(e)})") from None
  out = {"dp": p.dp, "mechanism": p.mechanism, "l2_norm_clip": p.l2_norm_clip,
         "dataset": run.spec.source, "image_shape": list(run.spec.image_shape),
         "label_names": list(run.spec.label_names), "data_spec": run.spec.to_json(),
         "privacy_unit": run.spec.privacy_unit,
         "training_flags": run.flags_text, "checkpoint": files.abspath(run.checkpoint),
         "checkpoint_step": run.step, "weights": run.weights,
         "run_id": run.identity.run_id, "private": run.identity.private,
         "private_reason": run.identity.reason or None}
  if p.dp:
    if not files.isfile(ledger_path):
      raise ExportError(f"--workdir={workdir}: no {LEDGER_FILE}, so the model's ε is unknown; "
                        "refusing to export a DP run without its privacy ledger")
    try:
      ledger = accounting.PrivacyLedger.load(ledger_path)
    except (ValueError, KeyError, TypeError) as e:
      raise ExportError(f"{ledger_path}: {_first_line(e)}") from None
    if ledger.run_id != run.identity.run_id:
      raise ExportError(f"{ledger_path}: belongs to run {ledger.run_id or '(none)'}, not to "
                        f"{workdir}'s run {run.identity.run_id}; refusing to export")
    out.update(epsilon=ledger.epsilon(), delta=ledger.delta, accountant=ledger.accountant,
               neighbouring_relation=accounting.NEIGHBOURING_RELATION,
               noise_multiplier=ledger.noise_multiplier, noise=ledger.noise,
               sample_rate=ledger.sample_rate, steps=ledger.steps_taken)
  else:
    out.update(epsilon=None, delta=None, accountant=None, neighbouring_relation=None, noise=None,
               noise_multiplier=plan.get("noise_multiplier", 0.0),
               sample_rate=plan.get("sample_rate"), steps=run.step)
  return out


def export_run(workdir: str, checkpoint: Optional[str] = None, model_name: Optional[str] = None,
               version: Optional[int] = None, export_dir: Optional[str] = None,
               weights: str = "auto") -> str:
  """Restores a run directory's generator and exports it; returns the version directory.

  model_name defaults to the run's --model_name, export_dir to <workdir>/export (where
  training's own --export writes); weights as in `restore_run`.
  """
  _check_name_and_version(model_name or "generator", version)
  cfg, _ = parse_flags_file(_flags_path(workdir))
  model_name = model_name or cfg.run.model_name
  base_dir = export_dir or os.path.join(workdir, "export")
  if version is not None:  # fail before the restore
    _refuse_existing(os.path.join(base_dir, model_name), version)
  run = restore_run(workdir, checkpoint, weights)
  path = export_generator(run.generator, base_dir, model_name, version,
                          run_metadata(workdir, run))
  if export_dir is None:
    files.set_fixed_time(workdir)  # it may have gained export/
  return path

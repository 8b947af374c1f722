r"""A run directory's generator, restored and exported (the library of the export command;
training's --export builds the same metadata here: `export_metadata`). The SavedModel layout
itself, its signatures and the metadata the exporter adds are `release.export_lib`'s.

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

import dataclasses
import json
import os
from typing import Any, Optional

import numpy as np
import tensorflow as tf

from dp_sinkhorn_tf.data import datasets
from dp_sinkhorn_tf.data import spec as data_spec
from dp_sinkhorn_tf.io import checkpoints, errors, files, rundir
from dp_sinkhorn_tf.privacy import accounting
from dp_sinkhorn_tf.release import export_lib
from dp_sinkhorn_tf.train import flagfile, trainer

ExportError = export_lib.ExportError
FLAGS_FILE = rundir.FLAGS_FILE
LEDGER_FILE = rundir.LEDGER_FILE
REPORT_FILE = rundir.REPORT_FILE
EMA_KEY = "ema_generator"
GENERATOR_KEY = "generator"
# --weights: which checkpoint entry to export ("auto": the EMA when the checkpoint holds one).
WEIGHTS = {"auto": None, "ema": EMA_KEY, "raw": GENERATOR_KEY}


def export_metadata(cfg, plan, result, dataset, flags_text: str) -> dict:
  """The export metadata of a run that just trained (`train_lib.TrainResult`): the fields
  `run_metadata` reads back from a run directory."""
  ledger = result.ledger
  identity = result.identity
  return {
      "run_id": identity.run_id, "private": identity.private,
      "private_reason": identity.reason or None,
      "epsilon": ledger.epsilon() if ledger is not None else None,
      "delta": plan.delta if cfg.privacy.dp else None,
      "accountant": plan.accountant if cfg.privacy.dp else None,
      "neighbouring_relation": accounting.NEIGHBOURING_RELATION if cfg.privacy.dp else None,
      "dp": cfg.privacy.dp, "mechanism": cfg.privacy.mechanism,
      "noise_multiplier": plan.noise_multiplier, "l2_norm_clip": cfg.privacy.l2_norm_clip,
      "noise": ledger.noise if ledger is not None else None,
      "stages": stages_of(ledger),
      "sample_rate": plan.sample_rate,
      "steps": ledger.steps_taken if ledger is not None else plan.steps,
      "dataset": dataset.name, "image_shape": list(dataset.image_shape),
      "label_names": list(dataset.label_names), "training_flags": flags_text,
      "data_spec": datasets.spec_of(dataset, cfg.data).to_json(),
      "privacy_unit": dataset.unit,
      # the checkpoint entry `sampling_generator` is, as the export command names it
      "weights": "ema_generator" if result.model.ema_generator is not None else "generator",
  }


def stages_of(ledger) -> Optional[list]:
  """The metadata's "stages": privacy.json's per-stage report (each mechanism's plan, share
  of the target and ε alone; `accounting.stage_report`) for a run of several stages (e.g.
  --warm_start), None for a DP-Sinkhorn-only or --nodp run."""
  return None if ledger is None else accounting.stage_report(ledger)


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
  flags_path = _flags_path(workdir)
  cfg, flags_text = _parse_flags_file(flags_path)
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
    raise ExportError(f"--checkpoint={path}: unreadable ({errors.first_line(e)})") from None
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
                      f"describes ({errors.first_line(e)})") from None
  missing = [var.name for var in generator.variables
             if not np.all(np.isfinite(var.numpy()))]
  if missing:
    raise ExportError(f"--checkpoint={path}: no finite values for {len(missing)} variable(s) "
                      f"of the {weights} that {flags_path} describes, e.g. {missing[0]}")
  return RestoredRun(generator, cfg, identity, path, weights, step, flags_text, spec)


def run_metadata(workdir: str, run: RestoredRun) -> dict:
  """The same fields as `export_metadata`, read back from the run directory."""
  cfg = run.cfg
  p = cfg.privacy
  ledger_path = os.path.join(workdir, LEDGER_FILE)
  plan = {}
  report_path = os.path.join(workdir, REPORT_FILE)
  if files.isfile(report_path):
    try:
      plan = json.loads(files.read_text(report_path)).get("plan", {})
    except (OSError, ValueError, AttributeError) as e:
      raise ExportError(f"{report_path}: unreadable ({errors.first_line(e)})") from None
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
      raise ExportError(f"{ledger_path}: {errors.first_line(e)}") from None
    if ledger.run_id != run.identity.run_id:
      raise ExportError(f"{ledger_path}: belongs to run {ledger.run_id or '(none)'}, not to "
                        f"{workdir}'s run {run.identity.run_id}; refusing to export")
    out.update(epsilon=ledger.epsilon(), delta=ledger.delta, accountant=ledger.accountant,
               neighbouring_relation=accounting.NEIGHBOURING_RELATION,
               noise_multiplier=ledger.noise_multiplier, noise=ledger.noise,
               stages=stages_of(ledger), sample_rate=ledger.sample_rate,
               steps=ledger.steps_taken)
  else:
    out.update(epsilon=None, delta=None, accountant=None, neighbouring_relation=None, noise=None,
               stages=None,
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
  export_lib.check_name_and_version(model_name or "generator", version)
  cfg, _ = _parse_flags_file(_flags_path(workdir))
  model_name = model_name or cfg.run.model_name
  base_dir = export_dir or os.path.join(workdir, "export")
  if version is not None:  # fail before the restore
    export_lib.refuse_existing(os.path.join(base_dir, model_name), version)
  run = restore_run(workdir, checkpoint, weights)
  path = export_lib.export_generator(run.generator, base_dir, model_name, version,
                                     run_metadata(workdir, run))
  if export_dir is None:
    files.set_fixed_time(workdir)  # it may have gained export/
  return path


def _parse_flags_file(path: str):
  try:
    return flagfile.parse_flags_file(path)
  except flagfile.FlagsFileError as e:
    raise ExportError(str(e)) from None

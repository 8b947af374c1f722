"""Run provenance: open, restore and check a run directory (the train library's first and
last word on whose run a directory holds; `train_lib.train` calls `open_run` and
`restore_checkpoint`, the entry point `console.run` the checks of a finished run's outputs).

Privacy bookkeeping (see also `io.rundir` and `accounting.PrivacyLedger`):

  * open_run: a run directory holds one run (run.json: run id, dp, key source); its key,
    ledger and checkpoints must all belong to it, the private data must be the data the
    run started on (keyed fingerprint), and every flag that shapes the released gradient
    or the update (`config.gradient_flags`, SHA-256 in the ledger) must be the one it
    started with, or the resume is refused.
  * restore_checkpoint: a resume restores the newest checkpoint of this run, never older
    than the ledger's checkpoint_step (an older one would re-run steps whose outputs may
    have been published) nor newer than its charged steps.
  * Under a multi-worker strategy only the chief writes; a worker opens the run read-only
    once the chief's run.json exists.
"""

import dataclasses
import json
import os
import shutil
import time
import uuid
from typing import Optional

import numpy as np

from dp_sinkhorn_tf.data import datasets
from dp_sinkhorn_tf.io import checkpoints, errors, files, rundir
from dp_sinkhorn_tf.privacy import accounting, keys
from dp_sinkhorn_tf.release import export_lib, serving
from dp_sinkhorn_tf.train import config as config_lib
from dp_sinkhorn_tf.train import distribute, trainer

ProvenanceError = rundir.ProvenanceError


@dataclasses.dataclass(frozen=True)
class RunState:
  """An opened run directory: who it is, its secret key, its ledger (None for --nodp)."""

  identity: rundir.RunIdentity
  key: keys.PrivacyKey
  ledger: Optional[accounting.PrivacyLedger]
  created: bool

  @property
  def finished(self) -> bool:
    """Every planned step charged and checkpointed (DP runs; --nodp: see train)."""
    return (self.ledger is not None and self.ledger.is_exhausted and
            self.ledger.checkpoint_step >= self.ledger.planned_steps)


def _gradient_flags(cfg: config_lib.TrainConfig, plan: accounting.PrivacyPlan) -> dict:
  """`config.gradient_flags` of cfg with the plan's steps and σ in place of the flags."""
  resolved = dataclasses.replace(
      cfg, steps=plan.steps,
      privacy=dataclasses.replace(cfg.privacy, noise_multiplier=plan.noise_multiplier))
  return config_lib.gradient_flags(resolved)


def _new_ledger(cfg: config_lib.TrainConfig, plan: accounting.PrivacyPlan, dataset_size: int,
                run_id: str = "", fingerprint: str = "", noise: Optional[dict] = None):
  p = cfg.privacy
  flags = _gradient_flags(cfg, plan)
  return accounting.PrivacyLedger(
      sample_rate=plan.sample_rate, noise_multiplier=plan.noise_multiplier,
      l2_norm_clip=p.l2_norm_clip, delta=p.delta, target_epsilon=p.target_epsilon,
      planned_steps=plan.steps, accountant=p.accountant, steps_taken=0,
      dataset_size=dataset_size, run_id=run_id, data_fingerprint=fingerprint,
      gradient_flags=flags, gradient_flags_sha256=config_lib.flags_sha256(flags),
      stages=plan.ledger_stages(), noise=noise)


def _check_same_flags(wd: str, ledger_path: str, stored: accounting.PrivacyLedger,
                      requested: accounting.PrivacyLedger) -> None:
  """Refuses a resume whose flags would give a step index's noise to another gradient.

  A ledger without gradient flags (an earlier version's) is refused too: what it was
  started with cannot be checked, and a wrong guess would reuse noise; such a run can be
  finished by the version that started it."""
  flags, digest = stored.gradient_flags, stored.gradient_flags_sha256
  if not digest or not isinstance(flags, dict):
    raise ProvenanceError(f"{ledger_path}: records no flags that shape the released gradient "
                          "(written by an earlier version), so this resume cannot be checked "
                          "against them; finish the run with the version that started it, or "
                          "use a new --workdir")
  try:
    intact = config_lib.flags_sha256(flags) == digest
  except (TypeError, ValueError):
    intact = False
  if not intact:
    raise ProvenanceError(f"{ledger_path}: its gradient_flags do not match their SHA-256 "
                          "(edited or damaged); restore it or use a new --workdir")
  if requested.gradient_flags_sha256 != digest:
    changes = config_lib.changed_flags(flags, requested.gradient_flags)
    raise ProvenanceError(f"--workdir={wd}: the run there was started with other flags that "
                          f"shape the released gradient ({'; '.join(changes)}); resume with "
                          "the same flags or use a new --workdir")


def _requested_key(cfg: config_lib.TrainConfig) -> keys.PrivacyKey:
  if cfg.run.privacy_key_file:
    return keys.read_key_file(cfg.run.privacy_key_file, keys.SOURCE_FILE)
  if cfg.run.insecure_fixed_key or not cfg.privacy.dp:
    return keys.insecure_fixed(cfg.run.seed)
  return keys.generate()


def _load_ledger(ledger_path: str) -> accounting.PrivacyLedger:
  try:
    return accounting.PrivacyLedger.load(ledger_path)
  except (OSError, ValueError, TypeError) as e:
    raise ProvenanceError(f"{ledger_path}: unreadable privacy ledger ({e}); the privacy "
                          "spent is unknown: restore it or use a new --workdir") from None


def _wait_for_chief(wd: str, timeout_s: float) -> Optional[rundir.RunIdentity]:
  """A non-chief worker's view of the run: run.json once the chief has written it."""
  deadline = time.monotonic() + timeout_s
  while True:
    identity = rundir.read_identity(wd)
    if identity is not None or time.monotonic() > deadline:
      return identity
    time.sleep(0.2)


def fingerprint(key: keys.PrivacyKey, images: np.ndarray, labels: np.ndarray,
                pixel_max: Optional[int] = None, groups: Optional[np.ndarray] = None,
                max_per_group: Optional[int] = None) -> str:
  """The keyed data fingerprint (`keys.data_fingerprint`) of the private set as training
  and the releases see it (float32 images in [−1, 1], scaled a chunk at a time) and, under
  --privacy_unit=group, of its groups and --max_per_group."""
  unit = "" if groups is None else f"group:max_per_group={max_per_group}"
  return keys.data_fingerprint(key, images, labels, groups, unit,
                               image_chunks=datasets.unit_chunks(images, pixel_max))


def open_run(cfg: config_lib.TrainConfig, plan: accounting.PrivacyPlan, images: np.ndarray,
             labels: np.ndarray, chief: bool = True, pixel_max: Optional[int] = None,
             groups: Optional[np.ndarray] = None, *, num_classes: int) -> RunState:
  """Creates the run in cfg.run.workdir, or checks that everything there is one run.

  A new run gets a random run id and (DP) a key — from the OS, --privacy_key_file or, with
  --insecure_fixed_key, --seed — written to <workdir>/privacy_key (0600), then a ledger
  holding the run id and the keyed data fingerprint, then run.json last.

  Raises:
    ProvenanceError: checkpoints or a charged ledger without run.json; DP and --nodp mixed;
      the key, ledger or data do not belong to the run.
    ValueError: the ledger's plan differs from this one (names each field), or (a
      ProvenanceError) a flag that shapes the released gradient does (names each flag);
      keys.KeyFileError for an unreadable --privacy_key_file.

  chief=False (a non-chief worker of a multi-worker run) creates nothing: it waits for the
  chief's run.json and then opens the run read-only, with the same checks.

  images: uint8 pixels in [0, pixel_max] (or float32 in [−1, 1], pixel_max None); groups:
  the group ids under --privacy_unit=group (the ledger's dataset_size is then the number of
  groups). The ledger records the exact noise of the run (`trainer.noise_description` of
  the data's image shape and num_classes; updated on resume if it was not recorded), what
  the console prints and privacy.json publishes beside the σ it is charged at.
  """
  num_units = len(images) if groups is None else int(np.max(groups)) + 1
  wd = cfg.run.workdir
  dp = cfg.privacy.dp
  identity = rundir.read_identity(wd)
  if identity is None and not chief:
    identity = _wait_for_chief(wd, 5 * distribute.COLLECTIVE_TIMEOUT_S)
    if identity is None:
      raise ProvenanceError(f"--workdir={wd}: the chief created no run there within "
                            f"{5 * distribute.COLLECTIVE_TIMEOUT_S} s (is --workdir on a file "
                            "system every worker shares?)")
  ledger_path = rundir.path(wd, rundir.LEDGER_FILE)
  key_path = rundir.path(wd, rundir.KEY_FILE)
  if identity is None:
    if rundir.checkpoint_files_exist(wd):
      raise ProvenanceError(
          f"{rundir.path(wd, rundir.CHECKPOINT_DIR)}: checkpoints without "
          f"{rundir.IDENTITY_FILE}: they belong to no run that can be vouched for (another "
          "version's run or a damaged directory); refusing to restore them: use a new "
          "--workdir")
    if files.exists(ledger_path) and _load_ledger(ledger_path).steps_taken > 0:
      raise ProvenanceError(f"{ledger_path}: steps charged but no {rundir.IDENTITY_FILE}; "
                            "refusing to start a fresh run on spent budget: use a new "
                            "--workdir")
    key = _requested_key(cfg)  # before anything is written: a bad key file fails clean
    files.makedirs(wd)
    run_id = uuid.uuid4().hex
    ledger = None
    if dp:
      keys.write_key_file(key_path, key)
      ledger = _new_ledger(cfg, plan, num_units, run_id,
                           fingerprint(key, images, labels, pixel_max, groups,
                                       cfg.data.max_per_group),
                           _noise(cfg, plan, images, num_classes))
      ledger.save(ledger_path)
      reason = "" if key.private else keys.INSECURE_REASON
      identity = rundir.RunIdentity(run_id, True, key.source, key.private, reason)
    else:
      identity = rundir.RunIdentity(run_id, False, "", False,
                                    "--nodp: no clipping, no noise, no privacy guarantee")
    rundir.write_identity(wd, identity)
    return RunState(identity, key, ledger, created=True)

  if identity.dp != dp:
    held = "a DP run" if identity.dp else "a --nodp run"
    raise ProvenanceError(f"--workdir={wd}: holds {held} ({rundir.IDENTITY_FILE}); DP and "
                          "--nodp runs never share a workdir: use a new --workdir")
  if not dp:
    return RunState(identity, keys.insecure_fixed(cfg.run.seed), None, created=False)
  was_insecure = identity.key_source == keys.SOURCE_INSECURE
  if cfg.run.insecure_fixed_key != was_insecure:
    raise ProvenanceError(f"--insecure_fixed_key={cfg.run.insecure_fixed_key}: the run in "
                          f"{wd} was started {'with' if was_insecure else 'without'} it; a run "
                          "keeps its key")
  if not files.exists(key_path):
    raise ProvenanceError(f"{key_path}: missing: the run's secret key is gone, so its batches "
                          "and noise cannot be continued; use a new --workdir")
  key = keys.read_key_file(key_path, identity.key_source)
  if cfg.run.privacy_key_file:
    given = keys.read_key_file(cfg.run.privacy_key_file, keys.SOURCE_FILE)
    if not given.same_secret(key):
      raise ProvenanceError(f"--privacy_key_file={cfg.run.privacy_key_file}: not the key the "
                            f"run in {wd} started with; a run keeps its key")
  if not files.exists(ledger_path):
    raise ProvenanceError(f"{ledger_path}: missing beside {rundir.IDENTITY_FILE}: the privacy "
                          "already spent is unknown; refusing to start a fresh ledger: "
                          "restore it or use a new --workdir")
  ledger = _load_ledger(ledger_path)
  if ledger.run_id != identity.run_id:
    raise ProvenanceError(f"{ledger_path}: belongs to run {ledger.run_id or '(none)'}, not to "
                          f"this directory's run {identity.run_id}; use a new --workdir")
  requested = _new_ledger(cfg, plan, num_units)
  accounting.check_compatible(ledger, requested)
  _check_same_flags(wd, ledger_path, ledger, requested)
  if ledger.data_fingerprint != fingerprint(key, images, labels, pixel_max, groups,
                                            cfg.data.max_per_group):
    raise ProvenanceError(f"--workdir={wd}: the private data differ from those this run "
                          f"started on (keyed fingerprint in {rundir.LEDGER_FILE}); resuming "
                          "would reuse the run's noise on other data: use a new --workdir")
  noise = _noise(cfg, plan, images, num_classes)
  if ledger.noise != noise:  # a ledger written before the noise was recorded
    ledger = dataclasses.replace(ledger, noise=noise)
    if chief:
      ledger.save(ledger_path)
  return RunState(identity, key, ledger, created=False)


def _noise(cfg, plan, images, num_classes: int) -> Optional[dict]:
  return trainer.noise_description(cfg, plan.noise_multiplier, images.shape[1:], num_classes)


def restore_checkpoint(cfg, state: RunState, ckpt, manager, step_var) -> int:
  """Restores the newest checkpoint of this run; returns its step (0 from scratch)."""
  wd = cfg.run.workdir
  ledger = state.ledger
  latest = manager.latest_checkpoint
  if latest is None:
    if rundir.checkpoint_files_exist(wd):
      raise ProvenanceError(f"{rundir.path(wd, rundir.CHECKPOINT_DIR)}: checkpoint files but "
                            "no readable checkpoint index; refusing to start over on spent "
                            "budget: restore the directory or use a new --workdir")
    if ledger is not None and ledger.checkpoint_step > 0:
      raise ProvenanceError(f"{rundir.path(wd, rundir.CHECKPOINT_DIR)}: no checkpoint, but the "
                            f"ledger records one at step {ledger.checkpoint_step}; refusing to "
                            "start over on spent budget: use a new --workdir")
    return 0
  try:
    _, stored_id, stored_step = checkpoints.read_checkpoint_header(latest)
  except checkpoints.CHECKPOINT_READ_ERRORS as e:
    raise ProvenanceError(f"{latest}: unreadable checkpoint ({errors.first_line(e)}); "
                          "restore it or use a new --workdir") from None
  if stored_step is None:
    raise ProvenanceError(f"{latest}: unreadable checkpoint (no step); restore it or use a "
                          "new --workdir")
  if stored_id != state.identity.run_id:
    raise ProvenanceError(f"{latest}: written by run {stored_id or '(no run id)'}, not by this "
                          f"directory's run {state.identity.run_id}; refusing to restore it")
  if ledger is not None and not ledger.checkpoint_step <= stored_step <= ledger.steps_taken:
    raise ProvenanceError(
        f"{latest}: step {stored_step} is outside the ledger's [{ledger.checkpoint_step}, "
        f"{ledger.steps_taken}] (checkpointed, charged); an older checkpoint would re-run "
        "steps whose outputs may have been published: use a new --workdir")
  try:
    ckpt.restore(latest).expect_partial().assert_existing_objects_matched()
  except checkpoints.CHECKPOINT_READ_ERRORS + (AssertionError,) as e:
    raise ProvenanceError(f"{latest}: cannot be restored ({errors.first_line(e)})") from None
  return int(step_var.numpy())


def outputs_complete(cfg: config_lib.TrainConfig, run_id: str) -> bool:
  """The final report, grid and (with --export) an export of this run exist."""
  workdir = cfg.run.workdir
  try:
    report = json.loads(files.read_text(rundir.path(workdir, rundir.REPORT_FILE)))
  except (OSError, ValueError):
    return False
  if not report.get("finished") or report.get("run_id") != run_id:
    return False
  if not files.exists(rundir.path(workdir, f"{rundir.SAMPLES_DIR}/final.png")):
    return False
  if not cfg.run.export:
    return True
  model_dir = rundir.path(workdir, f"{rundir.EXPORT_DIR}/{cfg.run.model_name}")
  for _, name in serving.version_dirs(model_dir):
    try:
      if serving.read_metadata(os.path.join(model_dir, name)).get("run_id") == run_id:
        return True
    except Exception:  # noqa: BLE001 - an unreadable version is not this run's export
      continue
  return False


def remove_stale_temps(workdir: str, model_name: str) -> None:
  """Deletes what a killed process left: checkpoint '*_temp*' and export '.tmp-*-PID' dirs."""
  if files.is_remote(workdir):
    return  # no local process ids to go by on a shared file system
  ckpt_dir = rundir.path(workdir, rundir.CHECKPOINT_DIR)
  if os.path.isdir(ckpt_dir):
    for name in os.listdir(ckpt_dir):
      if "_temp" in name:
        shutil.rmtree(os.path.join(ckpt_dir, name), ignore_errors=True)
  model_dir = os.path.join(workdir, rundir.EXPORT_DIR, model_name)
  if os.path.isdir(model_dir):
    for name in os.listdir(model_dir):
      pid = name.rsplit("-", 1)[-1]
      if name.startswith(export_lib.TMP_PREFIX) and pid.isdigit() and not _alive(int(pid)):
        shutil.rmtree(os.path.join(model_dir, name), ignore_errors=True)


def _alive(pid: int) -> bool:
  if pid == os.getpid():
    return False  # ours from an earlier life of this pid: nothing is writing it now
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True

"""The train library: a run from a frozen config to a finished, exported run directory.

  python -m dp_sinkhorn_tf.main  →  train_flags.config_from_flags  →  train_lib.run(cfg)

`run` loads the data, fixes the privacy plan (`accounting.plan_privacy`), opens the run
directory (`open_run`), trains (`train`: restore, then the chunked loop around the step of
`trainer.DPSinkhornModel`), and exports the generator (`export_lib`). The step itself, the
model and its optimizer live in `trainer`; summaries and grids in `summaries`; the run
directory's names in `io.rundir`.

Privacy bookkeeping (see also `rundir` and `accounting.PrivacyLedger`):

  * open_run: a run directory holds one run (run.json: run id, dp, key source); its key,
    ledger and checkpoints must all belong to it, the private data must be the data the
    run started on (keyed fingerprint), and every flag that shapes the released gradient
    or the update (`config.gradient_flags`, SHA-256 in the ledger) must be the one it
    started with, or the resume is refused.
  * A chunk of steps [s, e) is charged in the ledger (write-ahead) before it runs, so a crash
    can only over-count. Its publishable outputs (grids, TensorBoard, privacy.json) are held
    back until the chunk's checkpoint is on disk and recorded in the ledger.
  * A resume restores the newest checkpoint (never older than the ledger's checkpoint_step)
    and re-runs the step indices after it. With the same key, data and weights, step t
    releases exactly what it released before (same batch, same noise; stateless ops), so
    the ledger charges each step index once: a killed-and-resumed run ends with the same
    ledger and the same weights as an uninterrupted one. The steps re-run had no outputs
    anyone could have seen (held back), so even a bit-level difference between the two
    executions (another machine) exposes nothing beyond a single run.
  * Under a multi-worker strategy only the chief writes; a worker that dies is a crash.
  * The steps run on the device, many per call (`_train_loop`); the loop reads the device
    only at log, sample and checkpoint points, and stops (signals) at the end of a call,
    always inside the charged chunk. A call of k steps releases what k single steps do.
"""

import dataclasses
import functools
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from typing import Callable, Optional, Sequence

import numpy as np
import tensorflow as tf

from dp_sinkhorn_tf.data import datasets
from dp_sinkhorn_tf.io import checkpoints, events, files, rundir
from dp_sinkhorn_tf.privacy import accounting, keys
from dp_sinkhorn_tf.release import export_lib, serving
from dp_sinkhorn_tf.train import config as config_lib
from dp_sinkhorn_tf.train import distribute, hardware, progress, summaries, trainer


class RunError(Exception):
  """A run that cannot start (code 2: bad input) or failed (code 1); one line."""

  def __init__(self, message: str, code: int = 2):
    super().__init__(message)
    self.code = code


def _fail(message: str, code: int = 2):
  raise RunError(message, code)


def _tf_error(e: Exception, what: str) -> str:
  text = str(e).strip()
  return f"{what}: {text.splitlines()[0] if text else type(e).__name__}"


def _progress_printer(unit: str = "record"):
  """on_log for `train`: one progress line (`progress.ProgressLine`) per log step; ε is
  labelled with the unit it protects ("epsilon per record 1.0506")."""
  line = progress.ProgressLine()

  def on_log(spent: int, total: int, logs: dict) -> None:
    # DP runs hand over only ε charged (a function of the plan and the step); the loss and
    # the batch size are computed on private data (private_diagnostics/).
    names = {"epsilon": f"epsilon per {unit}"}
    line.report(spent, total, {names.get(k, k): logs[k]
                               for k in ("epsilon", "noised_grad_norm", "loss") if k in logs})

  return on_log


def _remove_stale_temps(workdir: str, model_name: str) -> None:
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


def _outputs_complete(cfg: config_lib.TrainConfig, run_id: str) -> bool:
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
  for name in files.listdir(model_dir) if files.isdir(model_dir) else []:
    if name.isdigit():
      try:
        if serving.read_metadata(os.path.join(model_dir, name)).get("run_id") == run_id:
          return True
      except Exception:  # noqa: BLE001 - an unreadable version is not this run's export
        continue
  return False


class _StopFlag:
  """SIGINT / SIGTERM handler: the first signal asks the loop to stop at a step boundary."""

  def __init__(self):
    self.signum = None

  def __call__(self, signum, frame):
    del frame
    if self.signum is None:
      self.signum = signum
      print(f"\n{signal.Signals(signum).name}: stopping when the running call of the "
            "training loop returns (a step boundary; checkpoint, then exit)",
            file=sys.stderr, flush=True)
    elif signum == signal.SIGINT:
      raise KeyboardInterrupt

  def __bool__(self):
    return self.signum is not None


def run(cfg: config_lib.TrainConfig, flags_text: str, dataset: datasets.Dataset,
        plan: accounting.PrivacyPlan) -> int:
  """Trains and exports the run of `cfg` under `plan`; returns the process exit code (0, or
  128 + the signal that stopped it at a step boundary).

  flags_text: the command line as flags (written to flags.txt and into the export).

  dataset: the private data (cfg.data loaded, or with the run audit's canaries); plan:
  `accounting.plan_privacy(cfg, dataset.num_units)` (records, or groups). `main.run` loads
  and plans before TensorFlow loads, so those errors are one line before its start-up.

  Raises:
    RunError: bad input (code 2) or a run that failed (code 1); one line, naming the flag
      or file; the ledger and the last good checkpoint are intact."""
  try:
    distribute.configure_devices(cfg.run.strategy, cfg.run.num_devices)  # before any TF op
    strategy = distribute.make_strategy(cfg.run.strategy, cfg.run.num_devices)
    if cfg.run.strategy == "multi_worker":  # a collective: every worker, before any write
      distribute.check_same_config(strategy, cfg)
    distribute.check_split(cfg.num_generated, strategy.num_replicas_in_sync)
    if cfg.run.export:
      export_lib.check_model_name(cfg.run.model_name)
    if files.exists(cfg.run.workdir) and not files.isdir(cfg.run.workdir):
      raise ValueError(f"--workdir={cfg.run.workdir}: exists and is not a directory")
    chief = distribute.is_chief(cfg.run.strategy)
    state = open_run(cfg, plan, dataset.pixels, dataset.labels, chief,
                     pixel_max=dataset.pixel_max, groups=dataset.groups)
  except (ValueError, FileNotFoundError) as e:
    _fail(str(e))
  except OSError as e:
    _fail(f"--workdir={cfg.run.workdir}: {files.os_error(e, cfg.run.workdir)}")
  ledger = state.ledger
  if chief:
    _remove_stale_temps(cfg.run.workdir, cfg.run.model_name)
  # Decided once, before training: every worker of a multi-worker run must make the same
  # choice (the export takes part in collectives).
  complete = _outputs_complete(cfg, state.identity.run_id)
  spec = datasets.spec_of(dataset, cfg.data)
  if chief:  # the data spec export, sample and evaluate read (publishable: `data.spec`)
    _write_data_spec(cfg.run.workdir, spec)
  for note in dataset.notes:
    print(note)
  print(describe_data(dataset))
  slow = hardware.precision_warning(cfg.model.precision, cfg.loss.products,
                                   hardware.read_cpu_flags(), distribute.has_gpu())
  if slow:
    print(f"warning: {slow}")
  if cfg.privacy.dp:
    print(f"privacy plan: q={plan.sample_rate:.4g} σ={plan.noise_multiplier:.4g} "
          f"C={cfg.privacy.l2_norm_clip:g} steps={plan.steps} → ε={plan.epsilon:.3f} "
          f"({plan.accountant}), δ={plan.delta:g}, per {dataset.unit} "
          f"(N={dataset.num_units} {dataset.unit}s); neighbours: "
          f"{accounting.NEIGHBOURING_RELATION}")
    noise = trainer.noise_description(cfg, plan.noise_multiplier, dataset.image_shape,
                                      dataset.num_classes)
    if noise is not None:
      print(f"noise: exact discrete Gaussian on γℤ, γ=2^{noise['log2_gamma']}, std "
            f"{noise['noise_stddev']:.6g} over {noise['entries']} values, effective "
            f"σ={noise['effective_noise_multiplier']:.8g} ≥ σ (ε charged at σ)")
    if plan.warning:
      print(f"warning: {plan.warning}")
    if not state.identity.private:
      print(f"WARNING: NOT PRIVATE: {state.identity.reason}")
    if state.finished and complete:
      message = (f"{cfg.run.workdir}: the privacy budget is spent ({ledger.steps_taken}/"
                 f"{ledger.planned_steps} steps, ε={ledger.epsilon():.3f}); refusing to train "
                 "further. Use a new --workdir.")
      if cfg.run.if_finished == "skip":
        print(message)
        _print_artefacts(cfg.run.workdir)
        return 0
      _fail(message, code=1)
    if state.finished:
      print(f"run {state.identity.run_id}: every step is taken; finishing its outputs "
            "(final grid, report, export) from the final checkpoint: no privacy spent")
    elif not state.created:
      print(f"resuming run {state.identity.run_id}: {ledger.steps_taken}/"
            f"{ledger.planned_steps} steps charged, {ledger.checkpoint_step} checkpointed")
    else:
      print(f"new run {state.identity.run_id}: secret key in "
            f"{os.path.join(cfg.run.workdir, 'privacy_key')} ({state.key.source})")
  else:
    print(f"NON-PRIVATE run (--nodp): {plan.steps} steps, no privacy guarantee")

  stop = _StopFlag()
  previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
  try:
    if chief:
      files.write_text_atomic(rundir.path(cfg.run.workdir, rundir.FLAGS_FILE), flags_text)
    result = train(cfg, dataset.pixels, dataset.labels, dataset.num_classes, plan,
                   on_log=_progress_printer(dataset.unit), label_names=dataset.label_names,
                   state=state, stop=lambda: bool(stop), finish_only=not complete,
                   pixel_max=dataset.pixel_max, groups=dataset.groups)
  except Interrupted as e:
    print(f"\ninterrupted: {e}", file=sys.stderr)
    return 128 + (stop.signum or signal.SIGINT)
  except KeyboardInterrupt:
    print("\ninterrupted before a step boundary: the ledger and the last checkpoint are "
          "intact; re-run the same command to resume", file=sys.stderr)
    return 130
  except BudgetExhaustedError as e:
    if cfg.run.if_finished == "skip":
      print(e)
      _print_artefacts(cfg.run.workdir)
      return 0
    _fail(str(e), code=1)
  except (DivergedError, ValueError) as e:
    _fail(str(e), code=1)
  except OSError as e:
    _remove_stale_temps(cfg.run.workdir, cfg.run.model_name)
    _fail(f"{files.os_error(e, cfg.run.workdir)}; the ledger and the last good checkpoint are "
          "intact: free the space / fix the path and re-run the same command", code=1)
  except tf.errors.OpError as e:
    _remove_stale_temps(cfg.run.workdir, cfg.run.model_name)
    _fail(_tf_error(e, cfg.run.workdir) + "; the ledger and the last good checkpoint are "
          "intact: fix the cause and re-run the same command", code=1)
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
  if cfg.run.export and not complete:
    metadata = export_metadata(cfg, plan, result, dataset, flags_text)
    # A non-chief worker exports too (collectives), to a folder it deletes.
    scratch = None if chief else tempfile.mkdtemp(prefix="dp_sinkhorn_worker_export_")
    try:
      path = export_lib.export_generator(trainer.local_copy(cfg, result.model.sampling_generator),
                                     scratch or os.path.join(cfg.run.workdir, "export"),
                                     cfg.run.model_name, None, metadata)
    except (export_lib.ExportError, FileExistsError) as e:
      _fail(str(e), code=1)
    except OSError as e:
      _fail(f"export: {files.os_error(e, cfg.run.workdir)}; re-run the same command to finish "
            "(no privacy is spent)", code=1)
    finally:
      if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
    if chief:
      rundir.set_fixed_times(cfg.run.workdir)  # the folders the export added to
      print(f"exported SavedModel: {path}")
  if not chief:
    print("worker done: the chief wrote the run directory")
    return 0
  _print_artefacts(cfg.run.workdir)
  if not result.identity.private:
    print(f"NOT PRIVATE: {result.identity.reason}")
  return 0


def _write_data_spec(workdir: str, spec) -> None:
  """<workdir>/data_spec.json, rewritten only when it differs (a finished run's folder keeps
  its fixed times; a resume on the same data cannot change it, the fingerprint holds)."""
  target = rundir.path(workdir, rundir.DATA_SPEC_FILE)
  try:
    if files.exists(target) and files.read_text(target) == spec.dumps():
      return
  except (OSError, UnicodeDecodeError):
    pass
  files.write_text_atomic(target, spec.dumps())


def describe_data(dataset: datasets.Dataset) -> str:
  """The data line of a run: "data digits: 1438 private records, image shape (8, 8, 1), 10
  classes" (with groups: "… records in G groups (the unit of privacy) …")."""
  groups = "" if dataset.groups is None else f" in {dataset.num_groups} groups (the unit " \
      "of privacy)"
  classes = (f"{dataset.num_classes} classes {list(dataset.label_names)}" if dataset.labelled
             else "unlabelled (one class: an unconditional generator)")
  if dataset.labelled and dataset.num_classes > 12:
    classes = f"{dataset.num_classes} classes"
  return (f"data {dataset.name}: {len(dataset)} private records{groups}, image shape "
          f"{tuple(dataset.image_shape)}, {classes}")


def export_metadata(cfg, plan, result, dataset, flags_text: str) -> dict:
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
      "sample_rate": plan.sample_rate,
      "steps": ledger.steps_taken if ledger is not None else plan.steps,
      "dataset": dataset.name, "image_shape": list(dataset.image_shape),
      "label_names": list(dataset.label_names), "training_flags": flags_text,
      "data_spec": datasets.spec_of(dataset, cfg.data).to_json(),
      "privacy_unit": dataset.unit,
      # the checkpoint entry `sampling_generator` is, as the export command names it
      "weights": "ema_generator" if result.model.ema_generator is not None else "generator",
  }


def _print_artefacts(workdir: str) -> None:
  print("artefacts (safe to publish):")
  for name, publishable, why in rundir.ARTEFACTS:
    if publishable and files.exists(os.path.join(workdir, name)):
      print(f"  {os.path.join(workdir, name)}  ({why})")
  print("DO NOT PUBLISH:")
  for name, publishable, why in rundir.ARTEFACTS:
    if not publishable and files.exists(os.path.join(workdir, name)):
      print(f"  {os.path.join(workdir, name)}  ({why})")


# ---- the run directory and the loop ----------------------------------------------------------


@dataclasses.dataclass
class TrainResult:
  model: trainer.DPSinkhornModel
  ledger: Optional["accounting.PrivacyLedger"]
  steps_run: int
  final_logs: dict
  sample_grid: Optional[str]
  identity: Optional[rundir.RunIdentity] = None
  # Host round-trips of the loop: calls of the compiled steps, and reads of their state
  # (only at log, sample and checkpoint points; calls − reads returned between them).
  calls: int = 0
  reads: int = 0


def _gradient_flags(cfg: config_lib.TrainConfig, plan: accounting.PrivacyPlan) -> dict:
  """`config.gradient_flags` of cfg with the plan's steps and σ in place of the flags."""
  resolved = dataclasses.replace(
      cfg, steps=plan.steps,
      privacy=dataclasses.replace(cfg.privacy, noise_multiplier=plan.noise_multiplier))
  return config_lib.gradient_flags(resolved)


def _new_ledger(cfg: config_lib.TrainConfig, plan: accounting.PrivacyPlan, dataset_size: int,
                run_id: str = "", fingerprint: str = ""):
  p = cfg.privacy
  flags = _gradient_flags(cfg, plan)
  return accounting.PrivacyLedger(
      sample_rate=plan.sample_rate, noise_multiplier=plan.noise_multiplier,
      l2_norm_clip=p.l2_norm_clip, delta=p.delta, target_epsilon=p.target_epsilon,
      planned_steps=plan.steps, accountant=p.accountant, steps_taken=0,
      dataset_size=dataset_size, run_id=run_id, data_fingerprint=fingerprint,
      gradient_flags=flags, gradient_flags_sha256=config_lib.flags_sha256(flags))


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


class BudgetExhaustedError(RuntimeError):
  """The workdir's run has taken and checkpointed every planned step: no further training."""


class DivergedError(RuntimeError):
  """The generator's weights became NaN / inf at a step; nothing of that chunk was saved."""


class Interrupted(Exception):
  """`stop()` asked the loop to end at a step boundary; the run was checkpointed there."""

  def __init__(self, step: int, message: str):
    super().__init__(message)
    self.step = step


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


def fingerprint(cfg: config_lib.TrainConfig, key: keys.PrivacyKey, images: np.ndarray,
                labels: np.ndarray, pixel_max: Optional[int] = None,
                groups: Optional[np.ndarray] = None) -> str:
  """The keyed data fingerprint (`keys.data_fingerprint`) of the private set as training
  sees it (float32 images in [−1, 1], scaled a chunk at a time) and, under
  --privacy_unit=group, of its groups and --max_per_group."""
  unit = "" if groups is None else f"group:max_per_group={cfg.data.max_per_group}"
  return keys.data_fingerprint(key, images, labels, groups, unit,
                               image_chunks=datasets.unit_chunks(images, pixel_max))


def open_run(cfg: config_lib.TrainConfig, plan: accounting.PrivacyPlan, images: np.ndarray,
             labels: np.ndarray, chief: bool = True, pixel_max: Optional[int] = None,
             groups: Optional[np.ndarray] = None) -> RunState:
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
  groups).
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
                           fingerprint(cfg, key, images, labels, pixel_max, groups))
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
  if ledger.data_fingerprint != fingerprint(cfg, key, images, labels, pixel_max, groups):
    raise ProvenanceError(f"--workdir={wd}: the private data differ from those this run "
                          f"started on (keyed fingerprint in {rundir.LEDGER_FILE}); resuming "
                          "would reuse the run's noise on other data: use a new --workdir")
  return RunState(identity, key, ledger, created=False)


def _restore(cfg, state: RunState, ckpt, manager, step_var) -> int:
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
    raise ProvenanceError(f"{latest}: unreadable checkpoint ({str(e).splitlines()[0]}); "
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
    raise ProvenanceError(f"{latest}: cannot be restored ({str(e).splitlines()[0]})") from None
  return int(step_var.numpy())


def train(cfg: config_lib.TrainConfig, images: np.ndarray, labels: np.ndarray,
          num_classes: int, plan: accounting.PrivacyPlan,
          on_log: Optional[Callable[[int, int, dict], None]] = None,
          label_names: Optional[Sequence[str]] = None,
          state: Optional[RunState] = None,
          stop: Optional[Callable[[], bool]] = None,
          finish_only: bool = False, pixel_max: Optional[int] = None,
          groups: Optional[np.ndarray] = None) -> TrainResult:
  """Trains (or resumes) the run in cfg.run.workdir until the plan's steps are taken.

  Args:
    cfg: the run.
    images: [N, H, W, C] uint8 pixels in [0, pixel_max] (kept so on the device, each batch
      scaled as drawn), or float32 in [−1, 1] with pixel_max None: the private set.
    labels: [N] int.
    num_classes: K.
    plan: from `plan_privacy`.
    on_log: called as on_log(step, planned_steps, logs) every cfg.run.log_every steps; for
      DP runs logs hold only {"epsilon": ε charged so far}, which depends on nothing but the
      plan and the step (released values such as the noised norm go to TensorBoard once
      their chunk is checkpointed); --nodp runs get every metric.
    label_names: K names for the rows of the sample grids (default "0", …, "K−1").
    state: from `open_run` (None: opened here).
    stop: polled after every call of the compiled steps (e.g. a signal flag; a call runs
      to the next log, sample or checkpoint point, at most --steps_per_call steps); when
      it returns True the loop checkpoints the step reached, writes the held-back outputs
      and raises Interrupted.
    finish_only: for a run whose steps are all taken and checkpointed, write the final grid
      and report from the final checkpoint (no step, no privacy spent) instead of raising
      BudgetExhaustedError.
    pixel_max: see images.
    groups: [N] int64 group ids under --privacy_unit=group (None: one record is the unit).

  Raises:
    BudgetExhaustedError: the run has taken and checkpointed every planned step.
    DivergedError: the weights became non-finite (the chunk is not checkpointed).
    Interrupted: stop() returned True (checkpointed at the step it names).
    ProvenanceError: the directory's checkpoint, ledger, key or data are not this run's.
    ValueError: the workdir holds a run whose privacy plan differs from this one, or
      label_names does not hold num_classes names.
  """
  run = cfg.run
  names = [str(k) for k in range(num_classes)] if label_names is None else list(label_names)
  if len(names) != num_classes:
    raise ValueError(f"{len(names)} label_names for {num_classes} classes")
  chief = distribute.is_chief(run.strategy)
  if state is None:
    state = open_run(cfg, plan, images, labels, chief, pixel_max, groups)
  ledger = state.ledger
  strategy = distribute.make_strategy(run.strategy, run.num_devices)
  distribute.check_split(cfg.num_generated, strategy.num_replicas_in_sync)
  with strategy.scope():
    model, step = trainer.build_model(cfg, images, labels, num_classes, plan, state.key,
                                      pixel_max, groups)
  generator, ema_generator = model.generator, model.ema_generator
  if ledger is not None:  # what the noise is, beside what it is charged as (privacy.json)
    noise = trainer.noise_description(cfg, plan.noise_multiplier, images.shape[1:],
                                      num_classes)
    if ledger.noise != noise:
      ledger = dataclasses.replace(ledger, noise=noise)
      if chief:
        ledger.save(rundir.path(run.workdir, rundir.LEDGER_FILE))
      state = dataclasses.replace(state, ledger=ledger)
  # Outside the scope: a plain local variable (collectives cannot broadcast strings).
  run_id = tf.Variable(state.identity.run_id, dtype=tf.string, trainable=False, name="run_id")
  tracked = {"ema_generator": ema_generator} if ema_generator is not None else {}
  ckpt = tf.train.Checkpoint(generator=generator, optimizer=model.optimizer, step=step,
                             run_id=run_id, **tracked)
  manager = tf.train.CheckpointManager(ckpt, rundir.path(run.workdir, rundir.CHECKPOINT_DIR),
                                       max_to_keep=run.keep_checkpoints)
  start = _restore(cfg, state, ckpt, manager, step)
  if start >= plan.steps and not finish_only:
    eps = f"ε={ledger.epsilon():.3f}, δ={ledger.delta:g}" if ledger is not None else "--nodp"
    raise BudgetExhaustedError(
        f"{rundir.path(run.workdir, rundir.CHECKPOINT_DIR)}: all {plan.steps} planned steps "
        f"are taken ({eps}); refusing to train further")
  scratch = None
  if not chief:  # its saves take part in the collectives; the chief's are the run's
    scratch = tempfile.mkdtemp(prefix="dp_sinkhorn_worker_")
    manager = tf.train.CheckpointManager(ckpt, scratch, max_to_keep=1)
  try:
    return _train_loop(cfg, plan, state, model, step, manager, strategy, chief, start,
                       names, num_classes, on_log, stop)
  finally:
    if scratch is not None:
      shutil.rmtree(scratch, ignore_errors=True)


def _steps_this_call(t: int, end: int, run: config_lib.RunConfig) -> int:
  """How many steps the call from step t runs: up to the next log point, sample point or
  chunk end `end` (where the loop reads the device), at most --steps_per_call."""
  def next_multiple(every):
    return (t // every + 1) * every

  k = min(end, next_multiple(run.log_every), next_multiple(run.sample_every)) - t
  return k if run.steps_per_call is None else min(k, run.steps_per_call)


def _read(state) -> dict:
  """The loop's one device-to-host copy at a read point: `trainer.LOOP_STATE` as floats."""
  return dict(zip(trainer.LOOP_STATE, (float(v) for v in state.numpy())))


def _train_loop(cfg, plan, state, model, step, manager, strategy, chief: bool, start: int,
                names, num_classes: int, on_log, stop) -> "TrainResult":
  """The chunked loop of `train`: charge (chief), run, checkpoint, publish (chief); the
  model was built in `strategy`'s scope.

  The steps run on the device, many per call (`trainer.multi_step_function`): a call runs
  to the next log point, sample point or chunk end (at most --steps_per_call steps), and
  only there does the loop read the device (`_read`: the last step's metrics and whether
  the weights stayed finite, one copy). Between those points nothing waits on a step:
  the state stays on the device and is handed to the next call. stop() is polled between
  calls: a run stops at the next call boundary inside the charged chunk."""
  run = cfg.run
  ledger = state.ledger
  ledger_path = rundir.path(run.workdir, rundir.LEDGER_FILE)
  t, steps_run, logs, t_saved = start, 0, {}, start
  calls = reads = 0
  train_fn = trainer.multi_step_function(model, strategy, step)
  loop_state = trainer.initial_loop_state()
  if chief:
    # Published events are timed by their step (io.events); the private diagnostics, never
    # published, keep the real clock for whoever debugs the run's speed.
    writer = events.EventWriter(rundir.path(run.workdir, rundir.TENSORBOARD_DIR), start)
    private_writer = events.EventWriter(
        os.path.join(rundir.ensure_private_dir(run.workdir), "tensorboard"), start,
        wall_time=lambda _: time.time())
    files.makedirs(rundir.path(run.workdir, rundir.SAMPLES_DIR))
    checkpoints.fix_checkpoint_times(manager)  # a process killed right after a save left times
  else:
    writer = private_writer = events.EventWriter(None, start)

  def save_ledger(updated):
    if chief:
      updated.save(ledger_path)
    return updated

  while t < plan.steps:
    end = min((t // run.checkpoint_every + 1) * run.checkpoint_every, plan.steps)
    if ledger is not None:  # write-ahead: step indices < end count as spent before they run
      ledger = save_ledger(ledger.charged_through(end))
    epsilon = ledger.epsilon() if ledger is not None else math.inf
    pending = []  # publishable outputs, held back until the chunk's checkpoint is recorded
    while t < end:
      count = _steps_this_call(t, end, run)
      loop_state = train_fn(count, loop_state)
      calls += 1
      t += count
      steps_run += count
      if stop is not None and t < end and stop():
        end = t  # a call boundary: checkpoint here and stop below
      is_log = t % run.log_every == 0 or t == plan.steps
      is_sample = t % run.sample_every == 0 and t < plan.steps
      if not (is_log or is_sample or t == end):
        continue  # nothing to write: the state stays on the device
      logs = _read(loop_state)
      reads += 1
      if not logs.pop("weights_finite"):
        diverged = int(step.numpy())  # the loop stopped after that step (multi_step_function)
        raise DivergedError(
            f"step {diverged}: the generator's weights became NaN or inf; the run stopped "
            f"without saving them (last good checkpoint: step {t_saved}). Lower "
            "--learning_rate or check the flags, and train in a new --workdir")
      if is_log:
        logs["epsilon"] = epsilon
        public = {k: v for k, v in logs.items() if k in summaries.PUBLIC_METRICS}
        private = {k: v for k, v in logs.items() if k not in summaries.PUBLIC_METRICS}
        pending.append(functools.partial(summaries.write_scalars, writer, t, public))
        summaries.write_scalars(private_writer, t, private)  # never published: written at once
        if on_log is not None:  # at once: the step and the ε charged are data-independent
          on_log(t, plan.steps, dict(logs) if ledger is None else {"epsilon": epsilon})
      if is_sample:
        # on every worker, as the final grid below
        images_t = summaries.generate_grid(model.sampling_generator, num_classes, 10)
        if chief:
          pending.append(functools.partial(summaries.write_samples, writer, images_t, names,
                                           run.workdir, t))
    manager.save(checkpoint_number=t)
    if chief:
      checkpoints.fix_checkpoint_times(manager)
    t_saved = t
    if ledger is not None:
      ledger = save_ledger(ledger.checkpointed(t))
    for write in pending:
      write()
    if t < plan.steps and chief:  # the final report follows the loop
      files.write_json_atomic(rundir.path(run.workdir, rundir.REPORT_FILE),
                         summaries.privacy_report(cfg, plan, ledger, False, state.identity))
    writer.flush()
    private_writer.flush()
    if chief:
      rundir.set_fixed_times(run.workdir)
    if stop is not None and t < plan.steps and stop():
      writer.close()
      private_writer.close()
      raise Interrupted(t, f"stopped at step {t} of {plan.steps} (checkpoint saved); re-run "
                           "the same command to resume")
  final = summaries.generate_grid(model.sampling_generator, num_classes, 10)  # every worker
  grid = None
  if chief:
    grid = summaries.write_samples(writer, final, names, run.workdir, t, final=True)
    files.write_json_atomic(rundir.path(run.workdir, rundir.REPORT_FILE),
                       summaries.privacy_report(cfg, plan, ledger, True, state.identity))
  writer.close()
  private_writer.close()
  if chief:
    rundir.set_fixed_times(run.workdir)
  return TrainResult(model, ledger, steps_run, logs, grid, state.identity, calls, reads)

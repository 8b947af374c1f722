"""A training run at the console: `main` (and `audit`) call `run`, which prints the plan and
the run's state, installs the SIGINT / SIGTERM handler, calls `train_lib.train`, exports
(--export) and turns every outcome into an exit code (0; 128 + the signal that stopped the
run at a step boundary) or a one-line `RunError`. Only entry points import this module;
the library below it (`train_lib`, `provenance`, `run_export`) prints nothing and installs
no handler.
"""

import os
import shutil
import signal
import sys
import tempfile
from typing import Optional

import tensorflow as tf

from dp_sinkhorn_tf.data import datasets
from dp_sinkhorn_tf.io import errors, files, rundir
from dp_sinkhorn_tf.privacy import accounting
from dp_sinkhorn_tf.release import export_lib
from dp_sinkhorn_tf.train import config as config_lib
from dp_sinkhorn_tf.train import (
  distribute,
  hardware,
  progress,
  provenance,
  run_export,
  train_lib,
  trainer,
)


class RunError(Exception):
  """A run that cannot start (code 2: bad input) or failed (code 1); one line."""

  def __init__(self, message: str, code: int = 2):
    super().__init__(message)
    self.code = code


def _fail(message: str, code: int = 2):
  raise RunError(message, code)


def _progress_printer(unit: str = "record", plan: Optional[accounting.PrivacyPlan] = None):
  """on_log for `train_lib.train`: one progress line (`progress.ProgressLine`) per log
  step; ε is labelled with the unit it protects ("epsilon per record 1.0506"), followed, for
  a run of several stages, by each stage's planned share of the target ("share warm_start
  0.1000 · share dp_sinkhorn 0.9000": ε is all of them composed)."""
  line = progress.ProgressLine()
  shares = {} if plan is None else {f"share {s.name}": w
                                    for s, w in zip(plan.stages, plan.stage_shares)}

  def on_log(spent: int, total: int, logs: dict) -> None:
    # DP runs hand over only ε charged (a function of the plan and the step); the loss and
    # the batch size are computed on private data (private_diagnostics/).
    names = {"epsilon": f"epsilon per {unit}"}
    values = {names.get(k, k): logs[k]
              for k in ("epsilon", "noised_grad_norm", "loss") if k in logs}
    line.report(spent, total, {**values, **shares} if "epsilon" in logs else values)

  return on_log


def _pretrain_printer():
  """on_pretrain for `train_lib.train`: the warm start's fit to its release (post-processing:
  its loss is a function of the release, publishable) as a progress line of its own."""
  line = progress.ProgressLine(prefix="warm start: fitting the generator to the release, ")

  def on_pretrain(step: int, total: int, loss: float) -> None:
    line.report(step, total, {"loss": loss})

  return on_pretrain


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
    state = provenance.open_run(cfg, plan, dataset.pixels, dataset.labels, chief,
                                pixel_max=dataset.pixel_max, groups=dataset.groups,
                                num_classes=dataset.num_classes)
  except (ValueError, FileNotFoundError) as e:
    _fail(str(e))
  except OSError as e:
    _fail(f"--workdir={cfg.run.workdir}: {files.os_error(e, cfg.run.workdir)}")
  ledger = state.ledger
  if chief:
    provenance.remove_stale_temps(cfg.run.workdir, cfg.run.model_name)
  # Decided once, before training: every worker of a multi-worker run must make the same
  # choice (the export takes part in collectives).
  complete = provenance.outputs_complete(cfg, state.identity.run_id)
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
    for stage, alone, share in zip(plan.stages, plan.stage_epsilons, plan.stage_shares):
      print(f"  stage {stage.name}: share {share:.3g} of ε, σ={stage.noise_multiplier:.4g} "
            f"q={stage.sample_rate:.4g} steps={stage.steps} → ε={alone:.3f} alone")
    noise = ledger.noise
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
    result = train_lib.train(cfg, dataset.pixels, dataset.labels, dataset.num_classes, plan,
                   on_log=_progress_printer(dataset.unit, plan), label_names=dataset.label_names,
                   state=state, stop=lambda: bool(stop), finish_only=not complete,
                   pixel_max=dataset.pixel_max, groups=dataset.groups,
                   on_pretrain=_pretrain_printer())
  except train_lib.Interrupted as e:
    print(f"\ninterrupted: {e}", file=sys.stderr)
    return 128 + (stop.signum or signal.SIGINT)
  except KeyboardInterrupt:
    print("\ninterrupted before a step boundary: the ledger and the last checkpoint are "
          "intact; re-run the same command to resume", file=sys.stderr)
    return 130
  except train_lib.BudgetExhaustedError as e:
    if cfg.run.if_finished == "skip":
      print(e)
      _print_artefacts(cfg.run.workdir)
      return 0
    _fail(str(e), code=1)
  except (train_lib.DivergedError, ValueError) as e:
    _fail(str(e), code=1)
  except OSError as e:
    provenance.remove_stale_temps(cfg.run.workdir, cfg.run.model_name)
    _fail(f"{files.os_error(e, cfg.run.workdir)}; the ledger and the last good checkpoint are "
          "intact: free the space / fix the path and re-run the same command", code=1)
  except tf.errors.OpError as e:
    provenance.remove_stale_temps(cfg.run.workdir, cfg.run.model_name)
    _fail(f"{cfg.run.workdir}: {errors.first_line(e)}; the ledger and the last good "
          "checkpoint are intact: fix the cause and re-run the same command", code=1)
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
  if cfg.run.export and not complete:
    metadata = run_export.export_metadata(cfg, plan, result, dataset, flags_text)
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


def _print_artefacts(workdir: str) -> None:
  print("artefacts (safe to publish):")
  for name, publishable, why in rundir.ARTEFACTS:
    if publishable and files.exists(os.path.join(workdir, name)):
      print(f"  {os.path.join(workdir, name)}  ({why})")
  print("DO NOT PUBLISH:")
  for name, publishable, why in rundir.ARTEFACTS:
    if not publishable and files.exists(os.path.join(workdir, name)):
      print(f"  {os.path.join(workdir, name)}  ({why})")

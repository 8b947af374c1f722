r"""Trains a DP-Sinkhorn generator.

  python -m dp_sinkhorn_tf.main --flagfile=launch/digits.flags --workdir=runs/digits

Flags become a frozen `config.TrainConfig` at once; the privacy plan (q, σ, steps, ε) is
fixed and printed before the first step; the run directory then holds checkpoints, the
privacy ledger, privacy.json, flags.txt, TensorBoard summaries, sample grids and (with
--export) a SavedModel in TF Serving's layout (`rundir` lists them and what is safe to
publish). Re-running the same command resumes.

The noise and the Poisson batches come from a secret key drawn from the OS at the first
start and kept in <workdir>/privacy_key (0600), never from --seed; --privacy_key_file
supplies a key the data owner keeps (to reproduce a run), --insecure_fixed_key derives it
from --seed for tests (then the run is marked "private": false).
"""

import os
import signal
import sys

from absl import app, flags

from dp_sinkhorn_tf import cli
from dp_sinkhorn_tf.io import files, rundir
from dp_sinkhorn_tf.train import config as config_lib
from dp_sinkhorn_tf.train import train_flags

FLAGS = flags.FLAGS
config_from_flags = train_flags.config_from_flags


def _progress_printer():
  import tensorflow as tf
  bar = {}

  def on_log(spent: int, total: int, logs: dict) -> None:
    if "bar" not in bar:
      bar["bar"] = tf.keras.utils.Progbar(total, stateful_metrics=list(logs),
                                          unit_name="step")
      bar["bar"].update(spent - 1 if spent > 1 else 0)
    # DP runs hand over only ε charged (a function of the plan and the step); the loss and
    # the batch size are computed on private data (private_diagnostics/).
    shown = [(k, logs[k]) for k in ("epsilon", "noised_grad_norm", "loss") if k in logs]
    bar["bar"].update(spent, values=shown)

  return on_log


def _remove_stale_temps(workdir: str, model_name: str) -> None:
  """Deletes what a killed process left: checkpoint '*_temp*' and export '.tmp-*-PID' dirs."""
  import shutil

  from dp_sinkhorn_tf import export

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
      if name.startswith(export.TMP_PREFIX) and pid.isdigit() and not _alive(int(pid)):
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
  import json

  from dp_sinkhorn_tf.release import serving

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
      print(f"\n{signal.Signals(signum).name}: stopping at the next step boundary "
            "(checkpoint, then exit)", file=sys.stderr, flush=True)
    elif signum == signal.SIGINT:
      raise KeyboardInterrupt

  def __bool__(self):
    return self.signum is not None


def run(cfg: config_lib.TrainConfig, flags_text: str, dataset=None) -> int:
  """Plans, trains and exports; returns the process exit code.

  dataset: the private datasets.Dataset to train on instead of loading cfg.data (the run audit
  passes the data with its canaries)."""
  import tensorflow as tf

  from dp_sinkhorn_tf.data import datasets
  from dp_sinkhorn_tf.train import trainer

  try:
    from dp_sinkhorn_tf.train import distribute
    distribute.configure_devices(cfg.run.strategy, cfg.run.num_devices)  # before any TF op
    distribute.check_divisible(cfg.num_generated, distribute.make_strategy(
        cfg.run.strategy, cfg.run.num_devices).num_replicas_in_sync)
    if dataset is None:
      dataset = datasets.load_dataset(cfg.data.dataset, cfg.data.data_dir, cfg.data.idx_dir)
    plan = trainer.plan_privacy(cfg, len(dataset.images))
    if cfg.run.export:
      from dp_sinkhorn_tf import export
      export.check_model_name(cfg.run.model_name)
    if files.exists(cfg.run.workdir) and not files.isdir(cfg.run.workdir):
      raise ValueError(f"--workdir={cfg.run.workdir}: exists and is not a directory")
    chief = distribute.is_chief(cfg.run.strategy)
    state = trainer.open_run(cfg, plan, dataset.images, dataset.labels, chief)
  except (ValueError, FileNotFoundError) as e:
    cli.fail(str(e))
  except OSError as e:
    cli.fail(f"--workdir={cfg.run.workdir}: {cli.os_error(e, cfg.run.workdir)}")
  ledger = state.ledger
  if chief:
    _remove_stale_temps(cfg.run.workdir, cfg.run.model_name)
  # Decided once, before training: every worker of a multi-worker run must make the same
  # choice (the export takes part in collectives).
  complete = _outputs_complete(cfg, state.identity.run_id)
  print(f"dataset {cfg.data.dataset}: {len(dataset.images)} private records, image shape "
        f"{tuple(dataset.image_shape)}, {dataset.num_classes} classes")
  if cfg.privacy.dp:
    print(f"privacy plan: q={plan.sample_rate:.4g} σ={plan.noise_multiplier:.4g} "
          f"C={cfg.privacy.l2_norm_clip:g} steps={plan.steps} → ε={plan.epsilon:.3f} "
          f"({plan.accountant}), δ={plan.delta:g}")
    if plan.warning:
      print(f"warning: {plan.warning}")
    if not state.identity.private:
      print(f"WARNING: NOT PRIVATE: {state.identity.reason}")
    if state.finished and complete:
      message = (f"{cfg.run.workdir}: the privacy budget is spent ({ledger.steps_taken}/"
                 f"{ledger.planned_steps} steps, ε={ledger.epsilon():.3f}); refusing to train "
                 "further. Use a new --workdir.")
      if FLAGS.if_finished == "skip":
        print(message)
        _print_artefacts(cfg.run.workdir)
        return 0
      cli.fail(message, code=1)
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
    result = trainer.train(cfg, dataset.images, dataset.labels, dataset.num_classes, plan,
                           on_log=_progress_printer(), label_names=dataset.label_names,
                           state=state, stop=lambda: bool(stop), finish_only=not complete)
  except trainer.Interrupted as e:
    print(f"\ninterrupted: {e}", file=sys.stderr)
    return 128 + (stop.signum or signal.SIGINT)
  except KeyboardInterrupt:
    print("\ninterrupted before a step boundary: the ledger and the last checkpoint are "
          "intact; re-run the same command to resume", file=sys.stderr)
    return 130
  except trainer.BudgetExhaustedError as e:
    if FLAGS.if_finished == "skip":
      print(e)
      _print_artefacts(cfg.run.workdir)
      return 0
    cli.fail(str(e), code=1)
  except (trainer.DivergedError, ValueError) as e:
    cli.fail(str(e), code=1)
  except OSError as e:
    _remove_stale_temps(cfg.run.workdir, cfg.run.model_name)
    cli.fail(f"{cli.os_error(e, cfg.run.workdir)}; the ledger and the last good checkpoint are "
          "intact: free the space / fix the path and re-run the same command", code=1)
  except tf.errors.OpError as e:
    _remove_stale_temps(cfg.run.workdir, cfg.run.model_name)
    cli.fail(cli.tf_error(e, cfg.run.workdir) + "; the ledger and the last good checkpoint are "
          "intact: fix the cause and re-run the same command", code=1)
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
  if cfg.run.export and not complete:
    import shutil
    import tempfile

    from dp_sinkhorn_tf import export
    metadata = export_metadata(cfg, plan, result, dataset, flags_text)
    # A non-chief worker exports too (collectives), to a folder it deletes.
    scratch = None if chief else tempfile.mkdtemp(prefix="dp_sinkhorn_worker_export_")
    try:
      path = export.export_generator(trainer.local_copy(cfg, result.model.sampling_generator),
                                     scratch or os.path.join(cfg.run.workdir, "export"),
                                     cfg.run.model_name, None, metadata)
    except (export.ExportError, FileExistsError) as e:
      cli.fail(str(e), code=1)
    except OSError as e:
      cli.fail(f"export: {cli.os_error(e, cfg.run.workdir)}; re-run the same command to finish "
            "(no privacy is spent)", code=1)
    finally:
      if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
    if chief:
      print(f"exported SavedModel: {path}")
  if not chief:
    print("worker done: the chief wrote the run directory")
    return 0
  _print_artefacts(cfg.run.workdir)
  if not result.identity.private:
    print(f"NOT PRIVATE: {result.identity.reason}")
  return 0


def export_metadata(cfg, plan, result, dataset, flags_text: str) -> dict:
  ledger = result.ledger
  identity = result.identity
  return {
      "run_id": identity.run_id, "private": identity.private,
      "private_reason": identity.reason or None,
      "epsilon": ledger.epsilon() if ledger is not None else None,
      "delta": plan.delta if cfg.privacy.dp else None,
      "accountant": plan.accountant if cfg.privacy.dp else None,
      "dp": cfg.privacy.dp, "mechanism": cfg.privacy.mechanism,
      "noise_multiplier": plan.noise_multiplier, "l2_norm_clip": cfg.privacy.l2_norm_clip,
      "sample_rate": plan.sample_rate,
      "steps": ledger.steps_taken if ledger is not None else plan.steps,
      "dataset": cfg.data.dataset, "image_shape": list(dataset.image_shape),
      "label_names": list(dataset.label_names), "training_flags": flags_text,
  }


def _print_artefacts(workdir: str) -> None:
  from dp_sinkhorn_tf.io import rundir

  print("artefacts (safe to publish):")
  for name, publishable, why in rundir.ARTEFACTS:
    if publishable and files.exists(os.path.join(workdir, name)):
      print(f"  {os.path.join(workdir, name)}  ({why})")
  print("DO NOT PUBLISH:")
  for name, publishable, why in rundir.ARTEFACTS:
    if not publishable and files.exists(os.path.join(workdir, name)):
      print(f"  {os.path.join(workdir, name)}  ({why})")


def main(argv) -> int:
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}: all options are --flags")
  try:
    cfg = config_from_flags(FLAGS)
  except ValueError as e:
    cli.fail(str(e))
  return run(cfg, FLAGS.flags_into_string())


parse_flags = cli.absl_parser(FLAGS)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)

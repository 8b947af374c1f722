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

import errno
import math
import os
import signal
import sys

from absl import app, flags

from dp_sinkhorn_tf import config as config_lib
from dp_sinkhorn_tf import sinkhorn

FLAGS = flags.FLAGS

# Data.
flags.DEFINE_enum("dataset", "digits",
                  ["digits", "mnist", "fashion_mnist", "cifar10", "celeb_a"],
                  "Private training set. digits ships with scikit-learn; the others come from "
                  "TFDS under --data_dir or, for (fashion_)mnist, from IDX files in --idx_dir.")
flags.DEFINE_string("data_dir", None, "TFDS data directory holding the prepared dataset.")
flags.DEFINE_string("idx_dir", None, "Folder with the original MNIST / Fashion-MNIST IDX files "
                    "(gz or raw); overrides TFDS for those datasets.")
# Model.
flags.DEFINE_enum("architecture", "dcgan", list(config_lib.ARCHITECTURES), "Generator family.")
flags.DEFINE_integer("latent_dim", 16, "Dimension of z ~ U(0,1).")
flags.DEFINE_integer("embed_dim", 8, "Label embedding size.")
flags.DEFINE_integer("hidden", 64, "Generator width (channels of the last block).")
flags.DEFINE_integer("depth", 1, "Convolution blocks per resolution.")
flags.DEFINE_enum("output", "tanh", list(config_lib.OUTPUTS),
                  "Generator output head: tanh (the paper) or clip, a straight-through clip to "
                  "[-1, 1] whose gradient never vanishes (noise cannot freeze saturated pixels).")
# Loss.
flags.DEFINE_enum("cost", "l1l2", list(config_lib.COSTS),
                  "Ground cost: l2 = ‖x−y‖², l1l2 = ‖x−y‖² + l1_weight·‖x−y‖₁.")
flags.DEFINE_float("l1_weight", 3.0, "The paper's m, weight of the L1 term in l1l2.")
flags.DEFINE_float("debias_fraction", 0.4, "p: n′ = ⌊p·n⌋ extra generated points "
                   "(0 biased, 1 fully debiased).")
flags.DEFINE_float("alpha_c", 15.0, "Weight α_c of the one-hot label block of the features.")
flags.DEFINE_float("sinkhorn_epsilon", 0.05, "Entropic regularisation λ.")
flags.DEFINE_float("sinkhorn_scaling", 0.5, "ε-scaling schedule: ratio between successive "
                   "annealing temperatures, from the cost's scale down to λ (closer to 1 = "
                   "slower, more accurate annealing; use ≈0.9 for λ far below the costs).")
flags.DEFINE_float("sinkhorn_threshold", 1e-3, "Stop once the L1 marginal error is below this.")
flags.DEFINE_integer("sinkhorn_max_iterations", 100, "Most Sinkhorn updates at λ.")
flags.DEFINE_bool("class_matching", False,
                  "Weight generated and private points so that the Sinkhorn plan moves mass "
                  "only within a class (mass per class ∝ its generated count, over the classes "
                  "present on both sides); false is the paper's uniform weights.")
flags.DEFINE_bool("sinkhorn_jit", True, "Compile the Sinkhorn loss and its image gradient with "
                  "XLA (real batch padded to power-of-two buckets): 3–15× faster for batches "
                  "up to ~50 on CPU, slower for batches of ~1000.")
# Privacy.
flags.DEFINE_bool("dp", True, "Train privately. --nodp trains the same model without clipping "
                  "or noise (ablations, upper bounds): no privacy guarantee.")
flags.DEFINE_enum("mechanism", "image_grad", list(config_lib.MECHANISMS),
                  "image_grad: clip + noise the gradient w.r.t. generated images (DP-Sinkhorn); "
                  "param_grad: TF Privacy DP-Adam on the parameter gradient (ablation).")
flags.DEFINE_float("l2_norm_clip", 0.5, "C: clip norm of the image gradient (sensitivity 2C).")
flags.DEFINE_float("release_blur", 0.0, "Blur the released (clipped + noised) image gradient "
                   "with a Gaussian of this many pixels before it reaches the generator: "
                   "post-processing at no privacy cost that damps the white noise (std × 0.28 "
                   "at 1 pixel). 0 = off.")
flags.DEFINE_float("public_clip", None, "Clip norm of the released gradient of the generated "
                   "images that meet no private data (rows n: of the self term); unset: "
                   "--l2_norm_clip. Data-independent, so no privacy cost. Their natural "
                   "gradient is 5-6.5x smaller than the private rows' at p=0.4 (measured on "
                   "Fashion-MNIST and the digits), so clipping "
                   "both to C over-weights the self term's repulsion.")
flags.DEFINE_float("noise_multiplier", None, "σ: noise std / sensitivity. Unset with --steps "
                   "set: the smallest σ within --target_epsilon.")
flags.DEFINE_float("target_epsilon", 10.0, "ε of the (ε, δ) guarantee.")
flags.DEFINE_float("delta", 1e-5, "δ of the (ε, δ) guarantee; keep it below 1/N.")
flags.DEFINE_enum("accountant", "rdp", list(config_lib.ACCOUNTANTS),
                  "Accountant that plans the budget (privacy.json reports both).")
# Optimisation.
flags.DEFINE_enum("optimizer", "adam", list(config_lib.OPTIMIZERS), "Generator optimiser.")
flags.DEFINE_float("learning_rate", 1e-3, "Learning rate.")
flags.DEFINE_float("beta_1", 0.5, "Adam β₁ (momentum with --optimizer=sgd).")
flags.DEFINE_float("beta_2", 0.999, "Adam β₂.")
flags.DEFINE_float("weight_decay", 0.0, "Decoupled weight decay (adamw only).")
flags.DEFINE_enum("lr_schedule", "constant", list(config_lib.LR_SCHEDULES),
                  "constant, or cosine: decay the learning rate as ½(1 + cos(π·t/T)) to 0 "
                  "over the run's T planned steps, so late noisy updates shrink.")
flags.DEFINE_float("ema_decay", 0.0, "Decay of an exponential moving average of the generator's "
                   "weights, used for samples and the export (0 = off). Post-processing of "
                   "the released gradients: no privacy cost.")
flags.DEFINE_integer("batch_size", 50, "B: expected Poisson batch (q = B/N); also n unless --fake_batch_size.")
flags.DEFINE_integer("fake_batch_size", None, "n: generated images that meet the private batch "
                     "each step (unset: n = --batch_size, as in the paper). Noise is added to "
                     "an n×d gradient, so a smaller n raises the signal-to-noise ratio.")
flags.DEFINE_integer("steps", None, "Training steps. Unset: as many as the budget allows.")
# Run.
flags.DEFINE_string("workdir", "runs/default", "Run directory (resumed if it holds a run).")
flags.DEFINE_integer("seed", 0, "Public seed of the data-independent randomness: "
                     "initialisation, latents, generated labels. The noise and the Poisson "
                     "batches never depend on it (they come from the run's secret key).")
flags.DEFINE_string("privacy_key_file", None, "A privacy key file (as <workdir>/privacy_key "
                    "of an earlier run) to drive noise and batches instead of a fresh key "
                    "from the OS: reproduces that run exactly. Keep it secret, never reuse it "
                    "on other data. Unset: a new secret key per run.")
flags.DEFINE_bool("insecure_fixed_key", False, "Derive the key from the public --seed: "
                  "reproducible and NOT private (tests, debugging); privacy.json and the "
                  "export say \"private\": false.")
flags.DEFINE_integer("log_every", 10, "Steps between progress / TensorBoard scalars.")
flags.DEFINE_integer("sample_every", 500, "Steps between sample grids.")
flags.DEFINE_integer("checkpoint_every", 200, "Steps between checkpoints (and ledger writes).")
flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints kept.")
flags.DEFINE_bool("export", True, "Export a SavedModel for TF Serving at the end.")
flags.DEFINE_string("model_name", "generator", "Model name in the export layout.")
flags.DEFINE_enum("if_finished", "fail", ["fail", "skip"],
                  "When --workdir's budget is already spent: fail (exit 1) or skip training "
                  "and only report the artefacts.")


def config_from_flags(f) -> config_lib.TrainConfig:
  """Builds the frozen run config; raises ValueError naming the bad flag."""
  for name in ("sinkhorn_epsilon", "sinkhorn_scaling", "sinkhorn_threshold"):
    value = getattr(f, name)
    if not math.isfinite(value):
      raise ValueError(f"--{name}={value!r}: expected a finite number")
  try:
    solver = sinkhorn.SinkhornConfig(epsilon=f.sinkhorn_epsilon, scaling=f.sinkhorn_scaling,
                                     threshold=f.sinkhorn_threshold,
                                     max_iterations=f.sinkhorn_max_iterations)
  except ValueError as e:
    raise ValueError(f"--sinkhorn_*: {e}") from None
  return config_lib.TrainConfig(
      batch_size=f.batch_size, steps=f.steps,
      data=config_lib.DataConfig(f.dataset, f.data_dir, f.idx_dir),
      model=config_lib.ModelConfig(f.architecture, f.latent_dim, f.embed_dim, f.hidden, f.depth,
                                   f.output),
      loss=config_lib.LossConfig(f.cost, f.l1_weight, f.debias_fraction, f.alpha_c, solver,
                                 f.sinkhorn_jit, f.class_matching),
      privacy=config_lib.PrivacyConfig(f.dp, f.mechanism, f.l2_norm_clip, f.noise_multiplier,
                                       f.target_epsilon, f.delta, f.accountant,
                                       f.release_blur, f.public_clip),
      optim=config_lib.OptimConfig(f.optimizer, f.learning_rate, f.beta_1, f.beta_2,
                                   f.weight_decay, f.ema_decay, f.lr_schedule),
      run=config_lib.RunConfig(f.workdir, f.seed, f.log_every, f.sample_every,
                               f.checkpoint_every, f.keep_checkpoints, f.export, f.model_name,
                               f.privacy_key_file, f.insecure_fixed_key),
      fake_batch_size=f.fake_batch_size)


def _fail(message: str, code: int = 2) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


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


def _os_error(e: OSError, what: str) -> str:
  """One line naming the file and the cause of a file-system error."""
  target = e.filename or what
  cause = e.strerror or type(e).__name__
  if isinstance(e, OSError) and e.errno == errno.ENOSPC:
    cause = "no space left on device"
  return f"{target}: {cause}"


def _tf_error(e: Exception, what: str) -> str:
  return f"{what}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"


def _remove_stale_temps(workdir: str, model_name: str) -> None:
  """Deletes what a killed process left: checkpoint '*_temp*' and export '.tmp-*-PID' dirs."""
  import shutil

  ckpt_dir = os.path.join(workdir, "checkpoints")
  if os.path.isdir(ckpt_dir):
    for name in os.listdir(ckpt_dir):
      if "_temp" in name:
        shutil.rmtree(os.path.join(ckpt_dir, name), ignore_errors=True)
  model_dir = os.path.join(workdir, "export", model_name)
  if os.path.isdir(model_dir):
    for name in os.listdir(model_dir):
      pid = name.rsplit("-", 1)[-1]
      if name.startswith(".tmp-") and pid.isdigit() and not _alive(int(pid)):
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

  from dp_sinkhorn_tf import serving

  workdir = cfg.run.workdir
  try:
    with open(os.path.join(workdir, "privacy.json")) as fh:
      report = json.load(fh)
  except (OSError, ValueError):
    return False
  if not report.get("finished") or report.get("run_id") != run_id:
    return False
  if not os.path.exists(os.path.join(workdir, "samples", "final.png")):
    return False
  if not cfg.run.export:
    return True
  model_dir = os.path.join(workdir, "export", cfg.run.model_name)
  for name in os.listdir(model_dir) if os.path.isdir(model_dir) else []:
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

  dataset: the private data.Dataset to train on instead of loading cfg.data (the run audit
  passes the data with its canaries)."""
  import tensorflow as tf

  from dp_sinkhorn_tf import data, trainer

  try:
    if dataset is None:
      dataset = data.load_dataset(cfg.data.dataset, cfg.data.data_dir, cfg.data.idx_dir)
    plan = trainer.plan_privacy(cfg, len(dataset.images))
    if cfg.run.export:
      from dp_sinkhorn_tf import export
      export.check_model_name(cfg.run.model_name)
    if os.path.exists(cfg.run.workdir) and not os.path.isdir(cfg.run.workdir):
      raise ValueError(f"--workdir={cfg.run.workdir}: exists and is not a directory")
    state = trainer.open_run(cfg, plan, dataset.images, dataset.labels)
  except (ValueError, FileNotFoundError) as e:
    _fail(str(e))
  except OSError as e:
    _fail(f"--workdir={cfg.run.workdir}: {_os_error(e, cfg.run.workdir)}")
  ledger = state.ledger
  _remove_stale_temps(cfg.run.workdir, cfg.run.model_name)
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
    trainer.write_text_atomic(os.path.join(cfg.run.workdir, "flags.txt"), flags_text)
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
    _fail(str(e), code=1)
  except (trainer.DivergedError, ValueError) as e:
    _fail(str(e), code=1)
  except OSError as e:
    _remove_stale_temps(cfg.run.workdir, cfg.run.model_name)
    _fail(f"{_os_error(e, cfg.run.workdir)}; the ledger and the last good checkpoint are "
          "intact: free the space / fix the path and re-run the same command", code=1)
  except tf.errors.OpError as e:
    _remove_stale_temps(cfg.run.workdir, cfg.run.model_name)
    _fail(_tf_error(e, cfg.run.workdir) + "; the ledger and the last good checkpoint are "
          "intact: fix the cause and re-run the same command", code=1)
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
  if cfg.run.export and not _outputs_complete(cfg, result.identity.run_id):
    from dp_sinkhorn_tf import export
    metadata = export_metadata(cfg, plan, result, dataset, flags_text)
    try:
      path = export.export_generator(result.model.sampling_generator,
                                     os.path.join(cfg.run.workdir, "export"),
                                     cfg.run.model_name, None, metadata)
    except (export.ExportError, FileExistsError) as e:
      _fail(str(e), code=1)
    except OSError as e:
      _fail(f"export: {_os_error(e, cfg.run.workdir)}; re-run the same command to finish "
            "(no privacy is spent)", code=1)
    print(f"exported SavedModel: {path}")
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
  from dp_sinkhorn_tf import rundir

  print("artefacts (safe to publish):")
  for name, publishable, why in rundir.ARTEFACTS:
    if publishable and os.path.exists(os.path.join(workdir, name)):
      print(f"  {os.path.join(workdir, name)}  ({why})")
  print("DO NOT PUBLISH:")
  for name, publishable, why in rundir.ARTEFACTS:
    if not publishable and os.path.exists(os.path.join(workdir, name)):
      print(f"  {os.path.join(workdir, name)}  ({why})")


def main(argv) -> int:
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}: all options are --flags")
  try:
    cfg = config_from_flags(FLAGS)
  except ValueError as e:
    _fail(str(e))
  return run(cfg, FLAGS.flags_into_string())


def parse_flags(argv):
  """absl's parser, with its errors (unknown flag, value outside an enum) as one line."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)

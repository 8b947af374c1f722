"""The train library: the loop of a run, from an opened run directory to its final
checkpoint, grid and report.

  python -m dp_sinkhorn_tf.main  →  console.run (prints, signals, exit codes, export)
      →  train_lib.train(cfg, …)  →  provenance.open_run / restore_checkpoint, then the loop

`train` builds the model and its step (`trainer`), opens or resumes the run
(`provenance`), and runs `_train_loop`: for each chunk of steps, charge the ledger, run the
compiled steps, checkpoint, then publish what the chunk held back. Summaries and grids live
in `summaries`, the run directory's names in `io.rundir`.

Privacy bookkeeping (with `provenance` and `accounting.PrivacyLedger`):

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
    only at log, sample and checkpoint points, and stops (stop()) at the end of a call,
    always inside the charged chunk. A call of k steps releases what k single steps do.
"""

import dataclasses
import functools
import math
import os
import shutil
import tempfile
import time
from typing import Callable, Optional, Sequence

import numpy as np
import tensorflow as tf

from dp_sinkhorn_tf.io import checkpoints, events, files, rundir
from dp_sinkhorn_tf.privacy import accounting
from dp_sinkhorn_tf.train import config as config_lib
from dp_sinkhorn_tf.train import distribute, provenance, summaries, trainer, warm_start


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


class BudgetExhaustedError(RuntimeError):
  """The workdir's run has taken and checkpointed every planned step: no further training."""


class DivergedError(RuntimeError):
  """The generator's weights became NaN / inf at a step; nothing of that chunk was saved."""


class Interrupted(Exception):
  """`stop()` asked the loop to end at a step boundary; the run was checkpointed there."""

  def __init__(self, step: int, message: str):
    super().__init__(message)
    self.step = step


def train(cfg: config_lib.TrainConfig, images: np.ndarray, labels: np.ndarray,
          num_classes: int, plan: accounting.PrivacyPlan,
          on_log: Optional[Callable[[int, int, dict], None]] = None,
          label_names: Optional[Sequence[str]] = None,
          state: Optional[provenance.RunState] = None,
          stop: Optional[Callable[[], bool]] = None,
          finish_only: bool = False, pixel_max: Optional[int] = None,
          groups: Optional[np.ndarray] = None,
          on_pretrain: Optional[Callable[[int, int, float], None]] = None) -> TrainResult:
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
    state: from `provenance.open_run` (None: opened here).
    stop: polled after every call of the compiled steps (e.g. a signal flag; a call runs
      to the next log, sample or checkpoint point, at most --steps_per_call steps); when
      it returns True the loop checkpoints the step reached, writes the held-back outputs
      and raises Interrupted.
    finish_only: for a run whose steps are all taken and checkpointed, write the final grid
      and report from the final checkpoint (no step, no privacy spent) instead of raising
      BudgetExhaustedError.
    pixel_max: see images.
    groups: [N] int64 group ids under --privacy_unit=group (None: one record is the unit).
    on_pretrain: called as on_pretrain(step, warm_start_steps, loss) after each step of the
      warm start's fit to its release (post-processing; a resume past step 0 does not fit).

  Raises:
    BudgetExhaustedError: the run has taken and checkpointed every planned step.
    DivergedError: the weights became non-finite (the chunk is not checkpointed).
    Interrupted: stop() returned True (checkpointed at the step it names).
    provenance.ProvenanceError: the directory's checkpoint, ledger, key or data are not
      this run's.
    ValueError: the workdir holds a run whose privacy plan differs from this one, or
      label_names does not hold num_classes names.
  """
  run = cfg.run
  names = [str(k) for k in range(num_classes)] if label_names is None else list(label_names)
  if len(names) != num_classes:
    raise ValueError(f"{len(names)} label_names for {num_classes} classes")
  chief = distribute.is_chief(run.strategy)
  if state is None:
    state = provenance.open_run(cfg, plan, images, labels, chief, pixel_max, groups,
                                num_classes=num_classes)
  ledger = state.ledger
  released = None
  if ledger is not None and warm_start.stage_of(plan) is not None:  # before step 0 (charged)
    released, ledger = warm_start.ensure_release(
        run.workdir, plan, ledger, state.key, images, labels, num_classes,
        cfg.privacy.warm_start_resolution, pixel_max, cfg.privacy.warm_start, run.seed)
    state = dataclasses.replace(state, ledger=ledger)
  strategy = distribute.make_strategy(run.strategy, run.num_devices)
  distribute.check_split(cfg.num_generated, strategy.num_replicas_in_sync)
  with strategy.scope():
    model, step = trainer.build_model(cfg, images, labels, num_classes, plan, state.key,
                                      pixel_max, groups)
  generator, ema_generator = model.generator, model.ema_generator
  # Outside the scope: a plain local variable (collectives cannot broadcast strings).
  run_id = tf.Variable(state.identity.run_id, dtype=tf.string, trainable=False, name="run_id")
  tracked = {"ema_generator": ema_generator} if ema_generator is not None else {}
  ckpt = tf.train.Checkpoint(generator=generator, optimizer=model.optimizer, step=step,
                             run_id=run_id, **tracked)
  manager = tf.train.CheckpointManager(ckpt, rundir.path(run.workdir, rundir.CHECKPOINT_DIR),
                                       max_to_keep=run.keep_checkpoints)
  start = provenance.restore_checkpoint(cfg, state, ckpt, manager, step)
  pretrain = released is not None and manager.latest_checkpoint is None
  if start >= plan.steps and not finish_only:
    eps = f"ε={ledger.epsilon():.3f}, δ={ledger.delta:g}" if ledger is not None else "--nodp"
    raise BudgetExhaustedError(
        f"{rundir.path(run.workdir, rundir.CHECKPOINT_DIR)}: all {plan.steps} planned steps "
        f"are taken ({eps}); refusing to train further")
  scratch = None
  if not chief:  # its saves take part in the collectives; the chief's are the run's
    scratch = tempfile.mkdtemp(prefix="dp_sinkhorn_worker_")
    manager = tf.train.CheckpointManager(ckpt, scratch, max_to_keep=1)
  else:
    checkpoints.fix_checkpoint_times(manager)  # a process killed right after a save left times
    manager = _FixedTimeManager(manager)
  ledger_path = rundir.path(run.workdir, rundir.LEDGER_FILE) if chief else None
  if pretrain:  # post-processing of the release; its result is the step-0 checkpoint
    total = cfg.privacy.warm_start_steps
    warm_start.pretrain(generator, released, cfg.privacy.warm_start,
                        cfg.privacy.warm_start_resolution, total, run.seed,
                        None if on_pretrain is None else
                        lambda t, loss: on_pretrain(t + 1, total, loss))
    if ema_generator is not None:
      for ema_var, var in zip(ema_generator.variables, generator.variables):
        ema_var.assign(var)
    manager.save(checkpoint_number=0)
  try:
    steps = DeviceSteps(model, strategy, step)
    outputs = RunOutputs(cfg, plan, state.identity, model.sampling_generator, names,
                         num_classes, chief, start)
    ledger, steps_run, logs = _train_loop(steps, ledger, ledger_path, manager, outputs, run,
                                          start, plan.steps, on_log, stop)
    grid = outputs.finish(start + steps_run, ledger)
    return TrainResult(model, ledger, steps_run, logs, grid, state.identity, steps.calls,
                       steps.reads)
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


class DeviceSteps:
  """The compiled steps (`trainer.multi_step_function`) and their state on the device.

  run(k) runs k steps in one call and hands the state (`trainer.LOOP_STATE`: whether the
  weights stayed finite and the last step's metrics) to the next call without waiting on it;
  read() is the one device-to-host copy, at a log, sample or checkpoint point. calls and
  reads count the loop's host round-trips (`TrainResult`)."""

  def __init__(self, model, strategy, step_var):
    self._fn = trainer.multi_step_function(model, strategy, step_var)
    self._state = trainer.initial_loop_state()
    self._step_var = step_var
    self.calls = self.reads = 0

  def run(self, count: int) -> None:
    self._state = self._fn(count, self._state)
    self.calls += 1

  def read(self) -> dict:
    self.reads += 1
    return dict(zip(trainer.LOOP_STATE, (float(v) for v in self._state.numpy())))

  def step_reached(self) -> int:
    """The step the compiled loop stopped after (it stops at the first non-finite one)."""
    return int(self._step_var.numpy())


class RunOutputs:
  """What the loop writes besides checkpoints and the ledger: TensorBoard scalars, sample
  grids, privacy.json. Publishable outputs are held back (`log`, `sample`) until `publish`,
  which the loop calls once the chunk's checkpoint is saved and recorded in the ledger; the
  private diagnostics are written at once (never published). Only the chief writes; the
  other workers generate the grids too (collectives) and write nothing."""

  def __init__(self, cfg, plan, identity, sampling_generator, names, num_classes: int,
               chief: bool, start: int):
    self._cfg, self._plan, self._identity = cfg, plan, identity
    self._generator, self._names, self._num_classes = sampling_generator, names, num_classes
    self._chief = chief
    self._workdir = cfg.run.workdir
    self._pending = []
    if chief:
      # Published events are timed by their step (io.events); the private diagnostics,
      # never published, keep the real clock for whoever debugs the run's speed.
      self._writer = events.EventWriter(rundir.path(self._workdir, rundir.TENSORBOARD_DIR),
                                        start)
      self._private_writer = events.EventWriter(
          os.path.join(rundir.ensure_private_dir(self._workdir), "tensorboard"), start,
          wall_time=lambda _: time.time())
      files.makedirs(rundir.path(self._workdir, rundir.SAMPLES_DIR))
    else:
      self._writer = self._private_writer = events.EventWriter(None, start)

  def log(self, t: int, logs: dict) -> None:
    public = {k: v for k, v in logs.items() if k in summaries.PUBLIC_METRICS}
    private = {k: v for k, v in logs.items() if k not in summaries.PUBLIC_METRICS}
    self._pending.append(functools.partial(summaries.write_scalars, self._writer, t, public))
    summaries.write_scalars(self._private_writer, t, private)  # never published: at once

  def sample(self, t: int) -> None:
    images_t = summaries.generate_grid(self._generator, self._num_classes, 10)
    if self._chief:
      self._pending.append(functools.partial(summaries.write_samples, self._writer, images_t,
                                             self._names, self._workdir, t))

  def publish(self, t: int, ledger) -> None:
    """After the checkpoint of step t is recorded: the held-back outputs, the interim
    privacy.json (the final one is `finish`'s), flushed, with fixed times."""
    pending, self._pending = self._pending, []
    for write in pending:
      write()
    if t < self._plan.steps and self._chief:
      self._report(ledger, False)
    self._writer.flush()
    self._private_writer.flush()
    if self._chief:
      rundir.set_fixed_times(self._workdir)

  def finish(self, t: int, ledger) -> Optional[str]:
    """The final grid and privacy.json; returns the grid's path (None on a worker)."""
    final = summaries.generate_grid(self._generator, self._num_classes, 10)  # every worker
    grid = None
    if self._chief:
      grid = summaries.write_samples(self._writer, final, self._names, self._workdir, t,
                                     final=True)
      self._report(ledger, True)
    self.close()
    if self._chief:
      rundir.set_fixed_times(self._workdir)
    return grid

  def close(self) -> None:
    self._writer.close()
    self._private_writer.close()

  def _report(self, ledger, finished: bool) -> None:
    files.write_json_atomic(rundir.path(self._workdir, rundir.REPORT_FILE),
                            summaries.privacy_report(self._cfg, self._plan, ledger, finished,
                                                     self._identity))


def _train_loop(steps: DeviceSteps, ledger, ledger_path: Optional[str], manager,
                outputs: RunOutputs, run: config_lib.RunConfig, start: int, total: int,
                on_log=None, stop=None):
  """The chunked loop: for each chunk [t, end) charge the ledger (write-ahead), run the
  steps, checkpoint, record the checkpoint in the ledger, then publish the chunk's outputs.
  Returns (ledger, steps run, the last logs).

  steps: the compiled steps on the device; a call runs to the next log point, sample point
    or chunk end (at most --steps_per_call steps), and only there does the loop read the
    device (one copy: the last step's metrics and whether the weights stayed finite).
  ledger: the privacy ledger (None for --nodp), saved to ledger_path (None: a worker that
    does not write it). manager: saves the checkpoint of a step (`save(checkpoint_number)`;
    the chief's with fixed times, a worker's to a scratch folder).
  stop: polled between calls: a run stops at the next call boundary inside the charged
    chunk, checkpoints there and raises Interrupted."""
  t, logs, t_saved = start, {}, start
  while t < total:
    end = min((t // run.checkpoint_every + 1) * run.checkpoint_every, total)
    if ledger is not None:  # write-ahead: step indices < end count as spent before they run
      ledger = _saved(ledger.charged_through(end), ledger_path)
    epsilon = ledger.epsilon() if ledger is not None else math.inf
    while t < end:
      count = _steps_this_call(t, end, run)
      steps.run(count)
      t += count
      if stop is not None and t < end and stop():
        end = t  # a call boundary: checkpoint here and stop below
      is_log = t % run.log_every == 0 or t == total
      is_sample = t % run.sample_every == 0 and t < total
      if not (is_log or is_sample or t == end):
        continue  # nothing to write: the state stays on the device
      logs = steps.read()
      if not logs.pop("weights_finite"):
        raise DivergedError(
            f"step {steps.step_reached()}: the generator's weights became NaN or inf; the run "
            f"stopped without saving them (last good checkpoint: step {t_saved}). Lower "
            "--learning_rate or check the flags, and train in a new --workdir")
      if is_log:
        logs["epsilon"] = epsilon
        outputs.log(t, logs)
        if on_log is not None:  # at once: the step and the ε charged are data-independent
          on_log(t, total, dict(logs) if ledger is None else {"epsilon": epsilon})
      if is_sample:
        outputs.sample(t)  # on every worker, as the final grid
    manager.save(checkpoint_number=t)
    t_saved = t
    if ledger is not None:
      ledger = _saved(ledger.checkpointed(t), ledger_path)
    outputs.publish(t, ledger)
    if stop is not None and t < total and stop():
      outputs.close()
      raise Interrupted(t, f"stopped at step {t} of {total} (checkpoint saved); re-run "
                           "the same command to resume")
  return ledger, t - start, logs


class _FixedTimeManager:
  """The chief's checkpoint manager: every save leaves the fixed times, not the clock's
  (`checkpoints.fix_checkpoint_times`)."""

  def __init__(self, manager: tf.train.CheckpointManager):
    self._manager = manager

  def save(self, checkpoint_number: int) -> str:
    path = self._manager.save(checkpoint_number=checkpoint_number)
    checkpoints.fix_checkpoint_times(self._manager)
    return path


def _saved(ledger, path: Optional[str]):
  if path is not None:
    ledger.save(path)
  return ledger

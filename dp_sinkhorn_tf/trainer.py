"""DP-Sinkhorn training: the Keras model with the private train_step, and the run loop.

One step (paper Alg. 1), all inside one tf.function:

  1. Poisson-sample the private set: each record in with probability q, keyed by
     (seed, step) so a step always sees the same batch (`sampling`).
  2. Generate n + n′ images from z ~ U(0,1) and uniformly drawn labels (data-independent).
  3. L = 2·W_λ(X[0:n], Y) − W_λ(X[0:n], X[n′:n+n′]) on features [image, α_c·one_hot].
  4. G = ∂L/∂X, the only quantity that touches private data. The mechanism clips G[0:n] to
     norm C and adds N(0, (2σC)²); G[n:] is clipped only (`privacy`).
  5. Optionally blur the released G̃ (`privacy.blur_release`, post-processing), then
     back-propagate it into the generator:
     tape.gradient(X, θ, output_gradients=G̃), then Adam / AdamW.

Everything after step 4 is post-processing of the Gaussian mechanism's output, so the run
is (ε, δ)-DP for the accountant's ε over the number of steps taken. With
mechanism="param_grad" (the paper's ablation) step 4–5 become TF Privacy's
DPKerasAdamOptimizer on the whole batch loss as one microbatch; see `build_optimizer`.

Privacy bookkeeping in `train`: before a chunk of steps runs, the ledger is advanced by the
chunk and written to disk (write-ahead), so a crash can only over-count, never under-count,
what was spent; a resume continues from the ledger, not from the checkpoint's step.
"""

import dataclasses
import json
import math
import os
from typing import Callable, Optional, Sequence

import numpy as np
import tensorflow as tf

from dp_sinkhorn_tf import (
  accounting,
  costs,
  evaluation,
  features,
  models,
  privacy,
  sampling,
  sinkhorn,
)
from dp_sinkhorn_tf import config as config_lib

LEDGER_FILE = "privacy_ledger.json"
REPORT_FILE = "privacy.json"


@dataclasses.dataclass(frozen=True)
class PrivacyPlan:
  """The budget decided before training: q, σ, T and the ε they give."""

  sample_rate: float
  noise_multiplier: float
  steps: int
  epsilon: float
  delta: float
  accountant: str
  warning: Optional[str] = None


def plan_privacy(cfg: config_lib.TrainConfig, dataset_size: int) -> PrivacyPlan:
  """Fixes (q, σ, T) from the config before any training step.

  q = B / N. With --noise_multiplier alone, T is the most steps within the target ε; with
  --steps alone, σ is the smallest multiplier within it; with both, the pair is checked.
  """
  p = cfg.privacy
  if cfg.batch_size > dataset_size:
    raise ValueError(f"--batch_size={cfg.batch_size}: expected at most the dataset size "
                     f"{dataset_size}")
  q = cfg.batch_size / dataset_size
  if not p.dp:
    return PrivacyPlan(q, 0.0, cfg.steps, math.inf, p.delta, p.accountant)
  warning = accounting.check_delta(p.delta, dataset_size)
  if p.noise_multiplier is None and cfg.steps is None:
    raise ValueError("--noise_multiplier / --steps: expected at least one of them with --dp "
                     "(the other follows from --target_epsilon)")
  if p.noise_multiplier is None:
    sigma = accounting.min_noise_multiplier(p.target_epsilon, p.delta, q, cfg.steps,
                                            p.accountant)
    steps = cfg.steps
  else:
    sigma = p.noise_multiplier
    budget = accounting.max_steps(p.target_epsilon, p.delta, q, sigma, p.accountant)
    steps = budget if cfg.steps is None else cfg.steps
    if steps > budget:
      raise ValueError(f"--steps={cfg.steps}: expected at most {budget}, the steps that "
                       f"--target_epsilon={p.target_epsilon} allows at σ={sigma}, q={q:.3g}")
    if steps < 1:
      raise ValueError(f"--noise_multiplier={sigma}: the budget --target_epsilon="
                       f"{p.target_epsilon} allows no step at q={q:.3g}; raise σ")
  eps = accounting.compute_epsilon(q, sigma, steps, p.delta, p.accountant)
  return PrivacyPlan(q, sigma, steps, eps, p.delta, p.accountant, warning)


def learning_rate_fn(cfg: config_lib.TrainConfig, total_steps: Optional[int] = None):
  """The learning rate: a float, or a schedule of the optimizer's step t.

  "cosine" is η_t = η·½(1 + cos(π·min(t, T)/T)) for T = total_steps: η at t = 0, η/2 at
  T/2, 0 from T on. Under DP the late updates are mostly noise; shrinking them lets the
  weights settle instead of random-walking at full step size to the end. The optimizer's
  step counter is checkpointed, so a resumed run continues the same curve.
  """
  o = cfg.optim
  if o.lr_schedule == "constant":
    return o.learning_rate
  if total_steps is None or total_steps < 1:
    raise ValueError(f"--lr_schedule={o.lr_schedule} needs the run's planned steps, got "
                     f"{total_steps!r}")
  return tf.keras.optimizers.schedules.CosineDecay(o.learning_rate, int(total_steps))


def build_optimizer(cfg: config_lib.TrainConfig, noise_multiplier: float,
                    total_steps: Optional[int] = None):
  """Adam / AdamW for image_grad; TF Privacy's DPKerasAdamOptimizer for param_grad.

  param_grad clips the whole parameter gradient of the batch loss (one microbatch) to C and
  adds N(0, (C·z)²) with z the optimizer's noise multiplier. Add/remove of one record moves
  the clipped gradient by up to 2C, so z = 2σ makes the noise std 2σC: the same Gaussian
  mechanism with multiplier σ that the accountant charges.

  total_steps: the run's planned steps T, needed by --lr_schedule=cosine.
  """
  o = cfg.optim
  lr = learning_rate_fn(cfg, total_steps)
  if cfg.privacy.mechanism == "param_grad":
    from tensorflow_privacy.privacy.optimizers import dp_optimizer_keras
    clip = cfg.privacy.l2_norm_clip if cfg.privacy.dp else 1e12
    return dp_optimizer_keras.DPKerasAdamOptimizer(
        l2_norm_clip=clip, noise_multiplier=2.0 * noise_multiplier, num_microbatches=1,
        learning_rate=lr, beta_1=o.beta_1, beta_2=o.beta_2)
  if o.optimizer == "sgd":
    # Heavy-ball momentum β₁. Unlike Adam, SGD does not rescale a parameter's update by its
    # gradient's running RMS; under noise-dominated gradients Adam keeps moving parameters
    # whose signal has vanished (e.g. behind a saturated tanh) at full speed.
    return tf.keras.optimizers.SGD(learning_rate=lr, momentum=o.beta_1)
  if o.optimizer == "adamw":
    return tf.keras.optimizers.AdamW(learning_rate=lr, beta_1=o.beta_1, beta_2=o.beta_2,
                                     weight_decay=o.weight_decay)
  return tf.keras.optimizers.Adam(learning_rate=lr, beta_1=o.beta_1, beta_2=o.beta_2)


class DPSinkhornModel(tf.keras.Model):
  """Wraps a generator; `train_step(step)` is one private DP-Sinkhorn update.

  The private images live in this object as constants and are reached only through the
  Poisson sample inside `train_step`; they are not variables, so checkpoints and exports
  never contain them.
  """

  def __init__(self, generator: tf.keras.Model, images: np.ndarray, labels: np.ndarray,
               num_classes: int, cfg: config_lib.TrainConfig, noise_multiplier: float,
               sample_rate: float, ema_generator: Optional[tf.keras.Model] = None):
    super().__init__()
    self.generator = generator
    self.ema_generator = ema_generator
    self.cfg = cfg
    self.num_classes = num_classes
    self._images = tf.constant(images, tf.float32)
    self._labels = tf.constant(labels, tf.int32)
    self._dataset_size = int(images.shape[0])
    self._sample_rate = float(sample_rate)
    self._n = cfg.num_primary
    self._n_total = cfg.num_generated
    self._cost = costs.make_cost(cfg.loss.cost, l1_weight=cfg.loss.l1_weight)
    if cfg.privacy.dp:
      self.mechanism = privacy.ImageGradientMechanism(cfg.privacy.l2_norm_clip, noise_multiplier,
                                                      cfg.privacy.public_clip)
    else:
      self.mechanism = privacy.ImageGradientMechanism(math.inf, 0.0)
    self._seed = cfg.run.seed
    self._image_dim = int(np.prod(images.shape[1:]))
    self._loss_and_grad = None
    if cfg.loss.jit_compile:
      self._loss_and_grad = sinkhorn.loss_and_gradient_fn(
          self._cost, cfg.loss.solver, self._n, dim=self._image_dim + num_classes,
          jit_compile=True)

  def call(self, inputs, training=False):
    return self.generator(inputs, training=training)

  @property
  def sampling_generator(self) -> tf.keras.Model:
    """What samples, evaluation and the export use: the EMA copy if there is one."""
    return self.ema_generator if self.ema_generator is not None else self.generator

  def update_ema(self, step: tf.Tensor) -> None:
    """ema ← d_t·ema + (1 − d_t)·w for every generator variable (BN statistics included).

    d_t = min(d, (1 + t) / (10 + t)) warms up so early weights are forgotten quickly. The
    average is a function of released (privatised) updates only: post-processing, no
    privacy cost.
    """
    if self.ema_generator is None:
      return
    t = tf.cast(step, tf.float32)
    decay = tf.minimum(self.cfg.optim.ema_decay, (1.0 + t) / (10.0 + t))
    for ema_var, var in zip(self.ema_generator.variables, self.generator.variables):
      ema_var.assign(decay * ema_var + (1.0 - decay) * var)

  def _step_seed(self, step: tf.Tensor, stream: int) -> tf.Tensor:
    return tf.stack([tf.cast(self._seed, tf.int64) * 7919 + stream, step])

  def private_batch(self, step: tf.Tensor):
    """The Poisson sample of step `step`: (images [m,H,W,C], labels [m]); m ~ Bin(N, q)."""
    idx = sampling.poisson_sample_indices(self._step_seed(step, 1), self._dataset_size,
                                          self._sample_rate)
    return tf.gather(self._images, idx), tf.gather(self._labels, idx)

  def latent_batch(self, step: tf.Tensor):
    """z ~ U(0,1) [n+n′, latent] and labels uniform over classes [n+n′], data-independent."""
    z = tf.random.stateless_uniform([self._n_total, self.generator.latent_dim],
                                    self._step_seed(step, 2))
    labels = tf.random.stateless_uniform([self._n_total], self._step_seed(step, 3), 0,
                                         self.num_classes, dtype=tf.int32)
    return z, labels

  def loss_weights(self, fake_labels, real_labels, real_weights=None):
    """(real, fake, self-primary, self-shifted) weights of the loss; None = uniform.

    With --class_matching, the cross term pairs X[0:n] with the batch under
    `features.class_matched_weights` (classes present on both sides, mass ∝ generated
    counts), and the self term pairs X[0:n] with X[n′:n+n′] the same way from generated
    labels alone, so the rows X[n:] still see no private data.
    """
    if not self.cfg.loss.class_matching:
      return real_weights, None, None, None
    k, n = self.num_classes, self._n
    extra = self._n_total - n
    fake_w, real_w = features.class_matched_weights(fake_labels[:n], real_labels, k,
                                                    real_weights)
    self_p, self_s = features.class_matched_weights(fake_labels[:n],
                                                    fake_labels[extra:extra + n], k)
    return real_w, fake_w, self_p, self_s

  def sinkhorn_loss(self, fake, fake_labels, real, real_labels):
    """The semi-debiased loss on [image, α_c·one_hot] features."""
    k, alpha = self.num_classes, self.cfg.loss.alpha_c
    fake_f = features.to_features(fake, fake_labels, k, alpha)
    real_f = features.to_features(real, real_labels, k, alpha)
    real_w, fake_w, self_p, self_s = self.loss_weights(fake_labels, real_labels)
    return sinkhorn.semi_debiased_loss(
        fake_f, real_f, self._n, self._cost, self.cfg.loss.solver, real_w, fake_w,
        None if self_p is None else (self_p, self_s))

  def _compiled_loss_and_image_grad(self, fake, fake_labels, real, real_labels):
    """The XLA path: (loss, ∂loss/∂fake, info) with the real batch padded to a bucket.

    The batch of m records is padded with zero rows of weight 0 to the smallest power of
    two ≥ max(m, 8), so XLA compiles one program per bucket; zero-weight rows carry no
    mass, so the loss and gradient equal the unpadded ones. ∂loss/∂image is the image
    block of ∂loss/∂features (the label block does not depend on the image).
    """
    k, alpha = self.num_classes, self.cfg.loss.alpha_c
    fake_f = features.to_features(fake, fake_labels, k, alpha)
    real_f = features.to_features(real, real_labels, k, alpha)
    m = tf.shape(real_f)[0]
    log2 = tf.math.log(tf.cast(tf.maximum(m, 1), tf.float32)) / math.log(2.0)
    size = tf.maximum(8, tf.cast(tf.round(2.0 ** tf.math.ceil(log2 - 1e-4)), tf.int32))
    size = tf.maximum(size, m)  # never drop a record, whatever the float rounding
    real_f = tf.pad(real_f, [[0, size - m], [0, 0]])
    weights = tf.pad(tf.ones(tf.stack([m]), tf.float32), [[0, size - m]])
    padded_labels = tf.pad(real_labels, [[0, size - m]])
    weights, fake_w, self_p, self_s = self.loss_weights(fake_labels, padded_labels, weights)
    loss, grad_f, info = self._loss_and_grad(fake_f, real_f, weights, fake_w, self_p, self_s)
    image_grad = tf.reshape(grad_f[:, :self._image_dim], tf.shape(fake))
    return loss, image_grad, info

  def image_grad_gradients(self, step: tf.Tensor):
    """Parameter gradients from the privatised image gradient, and the step's metrics."""
    real, real_labels = self.private_batch(step)
    z, fake_labels = self.latent_batch(step)
    variables = self.generator.trainable_variables
    with tf.GradientTape() as gen_tape:
      fake = self.generator([z, fake_labels], training=True)
    if self._loss_and_grad is not None:
      loss, image_grad, info = self._compiled_loss_and_image_grad(fake, fake_labels, real,
                                                                  real_labels)
    else:
      with tf.GradientTape() as loss_tape:
        loss_tape.watch(fake)
        loss, info = self.sinkhorn_loss(fake, fake_labels, real, real_labels)
      image_grad = loss_tape.gradient(loss, fake)
    released, p_info = self.mechanism.privatize(image_grad, self._n)
    released = privacy.blur_release(released, self.cfg.privacy.release_blur)
    grads = gen_tape.gradient(fake, variables, output_gradients=released)
    logs = {"loss": loss, "clean_grad_norm": p_info.clean_norm,
            "noised_grad_norm": p_info.noised_norm,
            "sinkhorn_iterations": tf.cast(info.iterations, tf.float32),
            "marginal_error": info.marginal_error,
            "real_batch_size": tf.cast(tf.shape(real)[0], tf.float32)}
    return grads, logs

  def _param_grad_step(self, step: tf.Tensor):
    real, real_labels = self.private_batch(step)
    z, fake_labels = self.latent_batch(step)
    variables = self.generator.trainable_variables
    with tf.GradientTape() as tape:
      fake = self.generator([z, fake_labels], training=True)
      loss, info = self.sinkhorn_loss(fake, fake_labels, real, real_labels)
    grads_and_vars = self.optimizer._compute_gradients(  # pylint: disable=protected-access
        tf.reshape(loss, [1]), variables, tape=tape)
    self.optimizer.apply_gradients(grads_and_vars)
    return {"loss": loss, "sinkhorn_iterations": tf.cast(info.iterations, tf.float32),
            "marginal_error": info.marginal_error,
            "real_batch_size": tf.cast(tf.shape(real)[0], tf.float32)}

  def train_step(self, data):
    """One DP-Sinkhorn step; `data` is the step index (int64 scalar or [1])."""
    step = tf.cast(tf.reshape(data, []), tf.int64)
    if self.cfg.privacy.mechanism == "param_grad":
      logs = self._param_grad_step(step)
    else:
      grads, logs = self.image_grad_gradients(step)
      self.optimizer.apply_gradients(zip(grads, self.generator.trainable_variables))
    self.update_ema(step)
    return logs


def make_generator(cfg: config_lib.TrainConfig, image_shape, num_classes: int,
                   build: bool = False):
  """The configured generator; build=True creates its variables with one inference call."""
  m = cfg.model
  generator = models.make_generator(m.architecture, tuple(image_shape), num_classes,
                                    latent_dim=m.latent_dim, embed_dim=m.embed_dim,
                                    hidden=m.hidden, depth=m.depth, output=m.output)
  if build:
    generator([tf.zeros([1, m.latent_dim]), tf.zeros([1], tf.int32)], training=False)
  return generator


def make_ema_generator(cfg: config_lib.TrainConfig, generator: tf.keras.Model):
  """A second generator of the same architecture starting from `generator`'s weights."""
  ema = make_generator(cfg, generator.image_shape, generator.num_classes, build=True)
  for ema_var, var in zip(ema.variables, generator.variables):
    ema_var.assign(var)
  return ema


def balanced_grid_labels(num_classes: int, per_class: int) -> np.ndarray:
  """[K·per_class] labels 0,0,…,1,1,… for per-class sample grids."""
  return np.repeat(np.arange(num_classes, dtype=np.int32), per_class)


def write_text_atomic(path: str, text: str) -> None:
  """Writes a temp file beside `path`, fsyncs it and renames it over `path`."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as fh:
    fh.write(text)
    fh.flush()
    os.fsync(fh.fileno())
  os.replace(tmp, path)


def _write_json_atomic(path: str, payload: dict) -> None:
  write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True))


@dataclasses.dataclass
class TrainResult:
  model: DPSinkhornModel
  ledger: Optional["accounting.PrivacyLedger"]
  steps_run: int
  final_logs: dict
  sample_grid: Optional[str]


def _new_ledger(cfg: config_lib.TrainConfig, plan: PrivacyPlan, dataset_size: int):
  p = cfg.privacy
  return accounting.PrivacyLedger(
      sample_rate=plan.sample_rate, noise_multiplier=plan.noise_multiplier,
      l2_norm_clip=p.l2_norm_clip, delta=p.delta, target_epsilon=p.target_epsilon,
      planned_steps=plan.steps, accountant=p.accountant, steps_taken=0,
      dataset_size=dataset_size)


def load_or_create_ledger(cfg: config_lib.TrainConfig, plan: PrivacyPlan, dataset_size: int):
  """The workdir's ledger (checked against this run's plan) or a fresh one."""
  path = os.path.join(cfg.run.workdir, LEDGER_FILE)
  fresh = _new_ledger(cfg, plan, dataset_size)
  if not os.path.exists(path):
    return fresh
  stored = accounting.PrivacyLedger.load(path)
  accounting.check_compatible(stored, fresh)
  return stored


class BudgetExhaustedError(RuntimeError):
  """The workdir's ledger already holds every planned step: no further training."""


def generate_grid(generator: tf.keras.Model, num_classes: int, per_class: int,
                  seed: int = 1234) -> np.ndarray:
  """Fixed-noise per-class samples [K·per_class, H, W, C] in inference mode."""
  labels = balanced_grid_labels(num_classes, per_class)
  z = tf.random.stateless_uniform([len(labels), generator.latent_dim], [seed, 0])
  return generator([z, tf.constant(labels)], training=False).numpy()


def privacy_report(cfg: config_lib.TrainConfig, plan: PrivacyPlan, ledger,
                   finished: bool) -> dict:
  """The human-readable privacy.json: plan, steps spent, ε under RDP and PLD."""
  report = {"dp": cfg.privacy.dp, "mechanism": cfg.privacy.mechanism,
            "dataset": cfg.data.dataset, "finished": finished,
            "plan": dataclasses.asdict(plan)}
  if ledger is not None:
    # The second accountant (PLD takes seconds at 1e5+ steps) only in the final report.
    report["ledger"] = accounting.report(ledger, all_accountants=finished)
  return report


def train(cfg: config_lib.TrainConfig, images: np.ndarray, labels: np.ndarray,
          num_classes: int, plan: PrivacyPlan,
          on_log: Optional[Callable[[int, int, dict], None]] = None,
          label_names: Optional[Sequence[str]] = None) -> TrainResult:
  """Trains (or resumes) the run in cfg.run.workdir until the plan's steps are spent.

  Args:
    cfg: the run.
    images: [N, H, W, C] float32 in [−1, 1], the private training split.
    labels: [N] int.
    num_classes: K.
    plan: from `plan_privacy`.
    on_log: called as on_log(steps_spent, planned_steps, logs) every cfg.run.log_every
      steps; logs hold the step's metrics and "epsilon" spent so far.
    label_names: K names for the rows of the sample grids (default "0", …, "K−1").

  Raises:
    BudgetExhaustedError: the workdir's ledger has no step left.
    ValueError: the workdir holds a run whose privacy plan differs from this one, or
      label_names does not hold num_classes names.
  """
  run = cfg.run
  names = [str(k) for k in range(num_classes)] if label_names is None else list(label_names)
  if len(names) != num_classes:
    raise ValueError(f"{len(names)} label_names for {num_classes} classes")
  os.makedirs(run.workdir, exist_ok=True)
  ledger_path = os.path.join(run.workdir, LEDGER_FILE)
  ledger = load_or_create_ledger(cfg, plan, len(images)) if cfg.privacy.dp else None
  if ledger is not None and ledger.is_exhausted:
    raise BudgetExhaustedError(
        f"{ledger_path}: all {ledger.planned_steps} planned steps are spent "
        f"(ε={ledger.epsilon():.3f}, δ={ledger.delta:g}); refusing to train further")

  # Weight initialisation from --seed too, so a run is reproducible end to end (Poisson
  # samples and latents are already keyed by (seed, step)). A resume restores the weights.
  tf.keras.utils.set_random_seed(run.seed)
  generator = make_generator(cfg, images.shape[1:], num_classes, build=True)
  ema_generator = make_ema_generator(cfg, generator) if cfg.optim.ema_decay > 0 else None
  model = DPSinkhornModel(generator, images, labels, num_classes, cfg, plan.noise_multiplier,
                          plan.sample_rate, ema_generator)
  model.compile(optimizer=build_optimizer(cfg, plan.noise_multiplier, plan.steps))
  step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
  tracked = {"ema_generator": ema_generator} if ema_generator is not None else {}
  ckpt = tf.train.Checkpoint(generator=generator, optimizer=model.optimizer, step=step,
                             **tracked)
  manager = tf.train.CheckpointManager(ckpt, os.path.join(run.workdir, "checkpoints"),
                                       max_to_keep=run.keep_checkpoints)
  if manager.latest_checkpoint:
    ckpt.restore(manager.latest_checkpoint).expect_partial()
  train_fn = tf.function(model.train_step, input_signature=[tf.TensorSpec([], tf.int64)])
  writer = tf.summary.create_file_writer(os.path.join(run.workdir, "tensorboard"))
  os.makedirs(os.path.join(run.workdir, "samples"), exist_ok=True)

  spent = ledger.steps_taken if ledger is not None else int(step.numpy())
  steps_run, logs = 0, {}
  while spent < plan.steps:
    chunk = min(run.checkpoint_every - spent % run.checkpoint_every, plan.steps - spent)
    if ledger is not None:  # write-ahead: the chunk counts as spent before it runs
      ledger = ledger.advanced(chunk)
      ledger.save(ledger_path)
    for _ in range(chunk):
      logs = {k: float(v) for k, v in train_fn(step.read_value()).items()}
      step.assign_add(1)
      spent += 1
      steps_run += 1
      if spent % run.log_every == 0 or spent == plan.steps:
        logs["epsilon"] = (accounting.compute_epsilon(plan.sample_rate, plan.noise_multiplier,
                                                      spent, plan.delta, plan.accountant)
                           if ledger is not None else math.inf)
        _write_scalars(writer, spent, logs)
        if on_log is not None:
          on_log(spent, plan.steps, logs)
      if spent % run.sample_every == 0:
        _write_samples(writer, model.sampling_generator, names, run.workdir, spent)
    manager.save(checkpoint_number=int(step.numpy()))
    if spent < plan.steps:  # the final report follows the loop
      _write_json_atomic(os.path.join(run.workdir, REPORT_FILE),
                         privacy_report(cfg, plan, ledger, finished=False))
  grid = _write_samples(writer, model.sampling_generator, names, run.workdir, spent,
                        final=True)
  _write_json_atomic(os.path.join(run.workdir, REPORT_FILE),
                     privacy_report(cfg, plan, ledger, finished=True))
  writer.flush()
  return TrainResult(model, ledger, steps_run, logs, grid)


def _write_scalars(writer, step: int, logs: dict) -> None:
  with writer.as_default(step=step):
    for name, value in logs.items():
      if math.isfinite(value):
        tf.summary.scalar(name, value)


def _write_samples(writer, generator, label_names: Sequence[str], workdir: str, step: int,
                   final: bool = False) -> str:
  """Generated (never private) images: a TensorBoard grid and a PNG, one row per class."""
  num_classes, per_class = len(label_names), 10
  images = generate_grid(generator, num_classes, per_class)
  with writer.as_default(step=step):
    grid = evaluation.tile_rows(np.asarray(images), num_classes)
    tf.summary.image("samples", grid[np.newaxis], max_outputs=1)
  name = "final.png" if final else f"step_{step:07d}.png"
  return evaluation.save_class_grid_png(
      images, balanced_grid_labels(num_classes, per_class), label_names,
      os.path.join(workdir, "samples", name), per_class=per_class, title=f"step {step}")

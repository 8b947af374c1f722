"""DP-Sinkhorn training: the Keras model with the private train_step, and the run loop.

One step (paper Alg. 1), all inside one tf.function:

  1. Poisson-sample the private set: each record in with probability q, keyed by the
     run's secret key and the step (`privacy_key`), so a step always sees the same batch
     and nobody without the key knows it.
  2. Generate n + n′ images from z ~ U(0,1) and uniformly drawn labels (data-independent,
     keyed by the public --seed and the step).
  3. L = 2·W_λ(X[0:n], Y) − W_λ(X[0:n], X[n′:n+n′]) on features [image, α_c·one_hot].
  4. G = ∂L/∂X, the only quantity that touches private data. The mechanism clips G[0:n] to
     norm C and adds N(0, (2σC)²) drawn from (secret key, step); G[n:] is clipped only
     (`privacy`).
  5. Optionally blur the released G̃ (`gaussian.blur_release`, post-processing), then
     back-propagate it into the generator:
     tape.gradient(X, θ, output_gradients=G̃), then Adam / AdamW.

Everything after step 4 is post-processing of the Gaussian mechanism's output, so the run
is (ε, δ)-DP for the accountant's ε over the number of steps taken. With
mechanism="param_grad" (the paper's ablation) step 4–5 clip the whole parameter gradient
of the batch loss (one microbatch) and add keyed noise (`gaussian.privatize_parameter_gradients`).

Privacy bookkeeping in `train` (see also `rundir` and `accounting.PrivacyLedger`):

  * open_run: a run directory holds one run (run.json: run id, dp, key source); its key,
    ledger and checkpoints must all belong to it, and the private data must be the data the
    run started on (keyed fingerprint), or the resume is refused.
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
"""

import dataclasses
import functools
import math
import os
import shutil
import tempfile
import time
import uuid
from typing import Callable, Optional, Sequence

import numpy as np
import tensorflow as tf

from dp_sinkhorn_tf.io import files, rundir
from dp_sinkhorn_tf.io import images as images_lib
from dp_sinkhorn_tf.models import generators
from dp_sinkhorn_tf.privacy import accounting, gaussian, keys, mechanisms, sampling
from dp_sinkhorn_tf.train import config as config_lib
from dp_sinkhorn_tf.train import distribute
from dp_sinkhorn_tf.transport import costs, features, sinkhorn

LEDGER_FILE = rundir.LEDGER_FILE
REPORT_FILE = rundir.REPORT_FILE
# Step metrics that are post-processing of the release (publishable). Every other metric
# (loss, clean gradient norm, Sinkhorn iterations, marginal error, Poisson batch size) is
# computed on private data before the mechanism: private_diagnostics/ only.
PUBLIC_METRICS = ("noised_grad_norm", "epsilon")
UNIT_OF_PRIVACY = (
    "one record = one (image, label) pair of the private training split, under add/remove "
    "adjacency. A person who contributed k records is protected only at the group level, "
    "about (k·ε, k·e^((k−1)ε)·δ): e.g. scikit-learn's digits hold 1,438 training images "
    "from 13 writers (~110 each), so ε is per image, not per writer. The record count N "
    "(dataset_size, and sample_rate = B/N) is published as is: treat N as public.")


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

  q is the exact inclusion probability of the sampler for the rate B / N
  (`sampling.inclusion_probability`: ⌈(B/N)·2⁵²⌉/2⁵², never below B/N), so the accountant
  is given the rate the batches are really drawn with. With --noise_multiplier alone, T is
  the most steps within the target ε; with --steps alone, σ is the smallest multiplier
  within it; with both, the pair is checked.
  """
  p = cfg.privacy
  if cfg.batch_size > dataset_size:
    raise ValueError(f"--batch_size={cfg.batch_size}: expected at most the dataset size "
                     f"{dataset_size}")
  q = sampling.inclusion_probability(cfg.batch_size / dataset_size)
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


def build_optimizer(cfg: config_lib.TrainConfig, total_steps: Optional[int] = None):
  """Adam / AdamW / SGD on already-privatised gradients (both mechanisms).

  param_grad no longer uses TF Privacy's DPKerasAdamOptimizer: its noise is a stateful
  tf.random op (a function of the public seed, replayed by a resumed process). The step
  privatises the parameter gradient itself with keyed noise (`privacy`).

  total_steps: the run's planned steps T, needed by --lr_schedule=cosine.
  """
  o = cfg.optim
  lr = learning_rate_fn(cfg, total_steps)
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
               sample_rate: float, ema_generator: Optional[tf.keras.Model] = None,
               key: Optional[keys.PrivacyKey] = None):
    """key: the run's secret key (batches and noise); None draws a fresh one."""
    super().__init__()
    self._key = key if key is not None else keys.generate()
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
    self._noise_multiplier = float(noise_multiplier) if cfg.privacy.dp else 0.0
    if cfg.privacy.dp:
      self.mechanism = gaussian.ImageGradientMechanism(cfg.privacy.l2_norm_clip, noise_multiplier,
                                                      cfg.privacy.public_clip)
    else:
      self.mechanism = gaussian.ImageGradientMechanism(math.inf, 0.0)
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
    """Public seeds (--seed, step) of the data-independent draws (latents, labels)."""
    return tf.stack([tf.cast(self._seed, tf.int64) * 7919 + stream, step])

  def noise_seed(self, step: tf.Tensor) -> tf.Tensor:
    """The secret seed of step `step`'s mechanism noise."""
    return keys.step_seed(self._key, step, keys.STREAM_NOISE)

  def private_batch(self, step: tf.Tensor):
    """The Poisson sample of step `step`: (images [m,H,W,C], labels [m]); m ~ Bin(N, q),
    keyed by the secret key (never --seed)."""
    idx = sampling.poisson_sample_indices(
        keys.step_seed(self._key, step, keys.STREAM_BATCH), self._dataset_size,
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
    """Parameter gradients from the privatised image gradient, and the step's metrics.

    Under a multi-replica strategy (`distribute`), this replica generates only its rows
    of the batch; the rows are all-gathered, every replica computes the same loss, G and
    release G̃ (one global clip, the key's noise), and back-propagates its own rows of G̃:
    the returned gradients sum to the single-device ones across replicas.
    """
    real, real_labels = self.private_batch(step)
    z, fake_labels = self.latent_batch(step)
    variables = self.generator.trainable_variables
    ctx, first, rows = distribute.my_rows(self._n_total)
    with tf.GradientTape() as gen_tape:
      mine = self.generator([z[first:first + rows], fake_labels[first:first + rows]],
                            training=True)
    if ctx is None:
      fake = mine
    else:  # across hosts all_gather loses the static shape; the loss needs it back
      fake = tf.ensure_shape(ctx.all_gather(mine, axis=0), [self._n_total, *mine.shape[1:]])
    if self._loss_and_grad is not None:
      loss, image_grad, info = self._compiled_loss_and_image_grad(fake, fake_labels, real,
                                                                  real_labels)
    else:
      with tf.GradientTape() as loss_tape:
        loss_tape.watch(fake)
        loss, info = self.sinkhorn_loss(fake, fake_labels, real, real_labels)
      image_grad = loss_tape.gradient(loss, fake)
    released, p_info = self.mechanism.privatize(image_grad, self._n, self.noise_seed(step))
    released = gaussian.blur_release(released, self.cfg.privacy.release_blur)
    grads = gen_tape.gradient(mine, variables,
                              output_gradients=released[first:first + rows])
    logs = {"loss": loss, "clean_grad_norm": p_info.clean_norm,
            "noised_grad_norm": p_info.noised_norm,
            "sinkhorn_iterations": tf.cast(info.iterations, tf.float32),
            "marginal_error": info.marginal_error,
            "real_batch_size": tf.cast(tf.shape(real)[0], tf.float32)}
    return grads, logs

  @property
  def noise_multiplier(self) -> float:
    """σ of this run's mechanism (0 for --nodp)."""
    return self._noise_multiplier

  def _replica_step(self, step: tf.Tensor):
    """The part of a step each replica runs: the mechanism's released gradients and the
    (all-reduced) update."""
    grads, logs = mechanisms.get(self.cfg.privacy.mechanism).gradients(self, step)
    self.optimizer.apply_gradients(zip(grads, self.generator.trainable_variables))
    return logs

  def train_step(self, data):
    """One DP-Sinkhorn step; `data` is the step index (int64 scalar or [1]). Under a
    multi-replica strategy call it in cross-replica context (inside `strategy.scope()`):
    it runs the replicas and returns the first replica's metrics (all replicas compute the
    same loss and release)."""
    step = tf.cast(tf.reshape(data, []), tf.int64)
    strategy = tf.distribute.get_strategy()
    if strategy.num_replicas_in_sync > 1:
      per_replica = strategy.run(self._replica_step, args=(step,))
      logs = {k: strategy.experimental_local_results(v)[0] for k, v in per_replica.items()}
    else:
      logs = self._replica_step(step)
    self.update_ema(step)
    # Public (a function of the weights): the loop stops a run whose weights diverged.
    logs["weights_finite"] = tf.reduce_all(
        [tf.reduce_all(tf.math.is_finite(v)) for v in self.generator.variables])
    return logs


def make_generator(cfg: config_lib.TrainConfig, image_shape, num_classes: int,
                   build: bool = False):
  """The configured generator; build=True creates its variables with one inference call."""
  m = cfg.model
  generator = generators.make_generator(m.architecture, tuple(image_shape), num_classes,
                                    latent_dim=m.latent_dim, embed_dim=m.embed_dim,
                                    hidden=m.hidden, depth=m.depth, output=m.output)
  if build:
    generator([tf.zeros([1, m.latent_dim]), tf.zeros([1], tf.int32)], training=False)
  return generator


def local_copy(cfg: config_lib.TrainConfig, generator: tf.keras.Model) -> tf.keras.Model:
  """`generator` itself, or, when its variables are distributed (built under a
  multi-replica strategy), a single-device copy with the same weights: what SavedModel
  export can save. Every worker must call it (reading distributed values may be a
  collective)."""
  if not any(isinstance(v, tf.distribute.DistributedValues) for v in generator.variables):
    return generator
  copy = make_generator(cfg, generator.image_shape, generator.num_classes, build=True)
  for target, source in zip(copy.variables, generator.variables):
    target.assign(source.read_value())
  return copy


def make_ema_generator(cfg: config_lib.TrainConfig, generator: tf.keras.Model):
  """A second generator of the same architecture starting from `generator`'s weights."""
  ema = make_generator(cfg, generator.image_shape, generator.num_classes, build=True)
  for ema_var, var in zip(ema.variables, generator.variables):
    ema_var.assign(var)
  return ema


def balanced_grid_labels(num_classes: int, per_class: int) -> np.ndarray:
  """[K·per_class] labels 0,0,…,1,1,… for per-class sample grids."""
  return np.repeat(np.arange(num_classes, dtype=np.int32), per_class)


@dataclasses.dataclass
class TrainResult:
  model: DPSinkhornModel
  ledger: Optional["accounting.PrivacyLedger"]
  steps_run: int
  final_logs: dict
  sample_grid: Optional[str]
  identity: Optional[rundir.RunIdentity] = None


def _new_ledger(cfg: config_lib.TrainConfig, plan: PrivacyPlan, dataset_size: int,
                run_id: str = "", fingerprint: str = ""):
  p = cfg.privacy
  return accounting.PrivacyLedger(
      sample_rate=plan.sample_rate, noise_multiplier=plan.noise_multiplier,
      l2_norm_clip=p.l2_norm_clip, delta=p.delta, target_epsilon=p.target_epsilon,
      planned_steps=plan.steps, accountant=p.accountant, steps_taken=0,
      dataset_size=dataset_size, run_id=run_id, data_fingerprint=fingerprint)


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


def open_run(cfg: config_lib.TrainConfig, plan: PrivacyPlan, images: np.ndarray,
             labels: np.ndarray, chief: bool = True) -> RunState:
  """Creates the run in cfg.run.workdir, or checks that everything there is one run.

  A new run gets a random run id and (DP) a key — from the OS, --privacy_key_file or, with
  --insecure_fixed_key, --seed — written to <workdir>/privacy_key (0600), then a ledger
  holding the run id and the keyed data fingerprint, then run.json last.

  Raises:
    ProvenanceError: checkpoints or a charged ledger without run.json; DP and --nodp mixed;
      the key, ledger or data do not belong to the run.
    ValueError: the ledger's plan differs from this one (names each field);
      keys.KeyFileError for an unreadable --privacy_key_file.

  chief=False (a non-chief worker of a multi-worker run) creates nothing: it waits for the
  chief's run.json and then opens the run read-only, with the same checks.
  """
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
      ledger = _new_ledger(cfg, plan, len(images), run_id,
                           keys.data_fingerprint(key, images, labels))
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
  accounting.check_compatible(ledger, _new_ledger(cfg, plan, len(images)))
  if ledger.data_fingerprint != keys.data_fingerprint(key, images, labels):
    raise ProvenanceError(f"--workdir={wd}: the private data differ from those this run "
                          f"started on (keyed fingerprint in {rundir.LEDGER_FILE}); resuming "
                          "would reuse the run's noise on other data: use a new --workdir")
  return RunState(identity, key, ledger, created=False)


def generate_grid(generator: tf.keras.Model, num_classes: int, per_class: int,
                  seed: int = 1234) -> np.ndarray:
  """Fixed-noise per-class samples [K·per_class, H, W, C] in inference mode."""
  labels = balanced_grid_labels(num_classes, per_class)
  z = tf.random.stateless_uniform([len(labels), generator.latent_dim], [seed, 0])
  return generator([z, tf.constant(labels)], training=False).numpy()


def privacy_report(cfg: config_lib.TrainConfig, plan: PrivacyPlan, ledger,
                   finished: bool, identity: Optional[rundir.RunIdentity] = None) -> dict:
  """The publishable privacy.json: plan, steps spent, ε under RDP and PLD, the unit of
  privacy, and whether the run is private at all (never the key or the data fingerprint)."""
  private = cfg.privacy.dp and (identity is None or identity.private)
  report = {"dp": cfg.privacy.dp, "mechanism": cfg.privacy.mechanism,
            "dataset": cfg.data.dataset, "finished": finished,
            "plan": dataclasses.asdict(plan), "private": private,
            "unit_of_privacy": UNIT_OF_PRIVACY}
  if identity is not None:
    report["run_id"] = identity.run_id
    report["key_source"] = identity.key_source
    if not private:
      report["private_reason"] = identity.reason
  if ledger is not None:
    # The second accountant (PLD takes seconds at 1e5+ steps) only in the final report.
    report["ledger"] = accounting.report(ledger, all_accountants=finished)
  return report


# What TF raises for a truncated, garbage or missing checkpoint file (a truncated
# .data-* file surfaces as IndexError "Read less bytes than requested").
CHECKPOINT_READ_ERRORS = (tf.errors.OpError, ValueError, IndexError, KeyError, OSError,
                          RuntimeError)
STEP_KEY = "step/.ATTRIBUTES/VARIABLE_VALUE"


def read_checkpoint_header(path: str):
  """(variable names, run id ("" if none), step (None if none)) of a checkpoint prefix.

  Raises one of CHECKPOINT_READ_ERRORS for an unreadable checkpoint."""
  # The reader on the prefix itself: tf.train.list_variables first asks whether the path is
  # a directory, which prefix-matching file systems (ram://) answer wrongly.
  reader = tf.compat.v1.train.NewCheckpointReader(path)
  names = set(reader.get_variable_to_shape_map())
  run_id = (reader.get_tensor(rundir.CHECKPOINT_RUN_ID_KEY)
            if rundir.CHECKPOINT_RUN_ID_KEY in names else b"")
  run_id = run_id.decode() if isinstance(run_id, bytes) else str(run_id)
  step = int(reader.get_tensor(STEP_KEY)) if STEP_KEY in names else None
  return names, run_id, step


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
    _, stored_id, stored_step = read_checkpoint_header(latest)
  except CHECKPOINT_READ_ERRORS as e:
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
  except CHECKPOINT_READ_ERRORS + (AssertionError,) as e:
    raise ProvenanceError(f"{latest}: cannot be restored ({str(e).splitlines()[0]})") from None
  return int(step_var.numpy())


def train(cfg: config_lib.TrainConfig, images: np.ndarray, labels: np.ndarray,
          num_classes: int, plan: PrivacyPlan,
          on_log: Optional[Callable[[int, int, dict], None]] = None,
          label_names: Optional[Sequence[str]] = None,
          state: Optional[RunState] = None,
          stop: Optional[Callable[[], bool]] = None,
          finish_only: bool = False) -> TrainResult:
  """Trains (or resumes) the run in cfg.run.workdir until the plan's steps are taken.

  Args:
    cfg: the run.
    images: [N, H, W, C] float32 in [−1, 1], the private training split.
    labels: [N] int.
    num_classes: K.
    plan: from `plan_privacy`.
    on_log: called as on_log(step, planned_steps, logs) every cfg.run.log_every steps; for
      DP runs logs hold only {"epsilon": ε charged so far}, which depends on nothing but the
      plan and the step (released values such as the noised norm go to TensorBoard once
      their chunk is checkpointed); --nodp runs get every metric.
    label_names: K names for the rows of the sample grids (default "0", …, "K−1").
    state: from `open_run` (None: opened here).
    stop: polled after every step (e.g. a signal flag); when it returns True the loop
      checkpoints that step, writes the held-back outputs and raises Interrupted.
    finish_only: for a run whose steps are all taken and checkpointed, write the final grid
      and report from the final checkpoint (no step, no privacy spent) instead of raising
      BudgetExhaustedError.

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
    state = open_run(cfg, plan, images, labels, chief)
  ledger = state.ledger
  strategy = distribute.make_strategy(run.strategy, run.num_devices)
  distribute.check_divisible(cfg.num_generated, strategy.num_replicas_in_sync)
  with strategy.scope():
    model, step = build_model(cfg, images, labels, num_classes, plan, state.key)
  generator, ema_generator = model.generator, model.ema_generator
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


def _train_loop(cfg, plan, state, model, step, manager, strategy, chief: bool, start: int,
                names, num_classes: int, on_log, stop) -> "TrainResult":
  """The chunked loop of `train`: charge (chief), run, checkpoint, publish (chief); the
  model was built in `strategy`'s scope."""
  run = cfg.run
  ledger = state.ledger
  ledger_path = rundir.path(run.workdir, LEDGER_FILE)
  t, steps_run, logs, t_saved = start, 0, {}, start
  train_fn = _step_function(model, strategy)
  if chief:
    writer = tf.summary.create_file_writer(rundir.path(run.workdir, rundir.TENSORBOARD_DIR))
    private_writer = tf.summary.create_file_writer(
        os.path.join(rundir.ensure_private_dir(run.workdir), "tensorboard"))
    files.makedirs(rundir.path(run.workdir, rundir.SAMPLES_DIR))
  else:
    writer = private_writer = tf.summary.create_noop_writer()

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
      logs = {k: float(v) for k, v in train_fn(step.read_value()).items()}
      step.assign_add(1)
      t += 1
      steps_run += 1
      if not logs.pop("weights_finite"):
        raise DivergedError(
            f"step {t}: the generator's weights became NaN or inf; the run stopped without "
            f"saving them (last good checkpoint: step {t_saved}). Lower --learning_rate or "
            "check the flags, and train in a new --workdir")
      if t % run.log_every == 0 or t == plan.steps:
        logs["epsilon"] = epsilon
        public = {k: v for k, v in logs.items() if k in PUBLIC_METRICS}
        private = {k: v for k, v in logs.items() if k not in PUBLIC_METRICS}
        pending.append(functools.partial(_write_scalars, writer, t, public))
        _write_scalars(private_writer, t, private)  # never published: written at once
        if on_log is not None:  # at once: the step and the ε charged are data-independent
          on_log(t, plan.steps, dict(logs) if ledger is None else {"epsilon": epsilon})
      if t % run.sample_every == 0 and t < plan.steps:
        images_t = generate_grid(model.sampling_generator, num_classes, 10)  # every worker
        if chief:
          pending.append(functools.partial(_write_samples, writer, images_t, names,
                                           run.workdir, t))
      if stop is not None and t < end and stop():
        end = t  # a step boundary: checkpoint here and stop below
    manager.save(checkpoint_number=t)
    t_saved = t
    if ledger is not None:
      ledger = save_ledger(ledger.checkpointed(t))
    for write in pending:
      write()
    if t < plan.steps and chief:  # the final report follows the loop
      files.write_json_atomic(rundir.path(run.workdir, REPORT_FILE),
                         privacy_report(cfg, plan, ledger, False, state.identity))
    private_writer.flush()
    if stop is not None and t < plan.steps and stop():
      writer.flush()
      raise Interrupted(t, f"stopped at step {t} of {plan.steps} (checkpoint saved); re-run "
                           "the same command to resume")
  final = generate_grid(model.sampling_generator, num_classes, 10)  # every worker
  grid = None
  if chief:
    grid = _write_samples(writer, final, names, run.workdir, t, final=True)
    files.write_json_atomic(rundir.path(run.workdir, REPORT_FILE),
                       privacy_report(cfg, plan, ledger, True, state.identity))
  writer.flush()
  private_writer.flush()
  return TrainResult(model, ledger, steps_run, logs, grid, state.identity)


def build_model(cfg: config_lib.TrainConfig, images: np.ndarray, labels: np.ndarray,
                num_classes: int, plan: PrivacyPlan, key: keys.PrivacyKey):
  """(DPSinkhornModel with its optimizer and slots built, step variable), created in the
  current strategy's scope. --seed steers only data-independent randomness: the
  initialisation here, the latents and generated labels in the step; the batches and the
  noise come from `key`."""
  tf.keras.utils.set_random_seed(cfg.run.seed)
  generator = make_generator(cfg, images.shape[1:], num_classes, build=True)
  ema_generator = make_ema_generator(cfg, generator) if cfg.optim.ema_decay > 0 else None
  model = DPSinkhornModel(generator, images, labels, num_classes, cfg, plan.noise_multiplier,
                          plan.sample_rate, ema_generator, key=key)
  model.compile(optimizer=build_optimizer(cfg, plan.steps))
  # Optimizer slots exist only after a first apply; build them so that a restore can check
  # that every object of the run is in the checkpoint.
  model.optimizer.build(generator.trainable_variables)
  step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
  return model, step


def _step_function(model: DPSinkhornModel, strategy: tf.distribute.Strategy):
  """The compiled step, entered in the strategy's scope (replicas run inside it)."""
  compiled = tf.function(model.train_step, input_signature=[tf.TensorSpec([], tf.int64)])

  def run(step):
    with strategy.scope():
      return compiled(step)

  return run


def _write_scalars(writer, step: int, logs: dict) -> None:
  with writer.as_default(step=step):
    for name, value in logs.items():
      if math.isfinite(value):
        tf.summary.scalar(name, value)


def _write_samples(writer, images: np.ndarray, label_names: Sequence[str], workdir: str,
                   step: int, final: bool = False) -> str:
  """Generated (never private) images: a TensorBoard grid and a PNG, one row per class."""
  num_classes, per_class = len(label_names), 10
  with writer.as_default(step=step):
    grid = images_lib.tile_rows(np.asarray(images), num_classes)
    tf.summary.image("samples", grid[np.newaxis], max_outputs=1)
  name = "final.png" if final else f"step_{step:07d}.png"
  return images_lib.save_class_grid_png(
      images, balanced_grid_labels(num_classes, per_class), label_names,
      os.path.join(workdir, rundir.SAMPLES_DIR, name), per_class=per_class,
      title=f"step {step}")

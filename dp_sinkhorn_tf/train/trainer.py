"""DP-Sinkhorn training: the Keras model with the private train_step (the loop is `train_lib`).

One step (paper Alg. 1), all inside one tf.function:

  1. Poisson-sample the private set: each record in with probability q, keyed by the
     run's secret key and the step (`privacy.keys`), so a step always sees the same batch
     and nobody without the key knows it.
  2. Generate n + n′ images from z ~ U(0,1) and uniformly drawn labels (data-independent,
     keyed by the public --seed and the step).
  3. L = 2·W_λ(X[0:n], Y) − W_λ(X[0:n], X[n′:n+n′]) on features [image, α_c·one_hot].
  4. G = ∂L/∂X, the only quantity that touches private data. The mechanism clips G[0:n] to
     norm C and adds N(0, (2σC)²) drawn from (secret key, step); G[n:] is clipped only
     (`privacy.gaussian`).
  5. Optionally blur the released G̃ (`gaussian.blur_release`, post-processing), then
     back-propagate it into the generator:
     tape.gradient(X, θ, output_gradients=G̃), then Adam / AdamW.

Everything after step 4 is post-processing of the Gaussian mechanism's output, so the run
is (ε, δ)-DP for the accountant's ε over the number of steps taken. With
mechanism="param_grad" (the paper's ablation) step 4–5 clip the whole parameter gradient
of the batch loss (one microbatch) and add keyed noise (`gaussian.privatize_parameter_gradients`).

Privacy bookkeeping (the ledger charged ahead of each chunk, held-back outputs, what a
crash or a resume re-runs): `train_lib`'s module docstring.
"""

import math
from typing import Optional

import numpy as np
import tensorflow as tf
from tensorflow_privacy.privacy.optimizers import dp_optimizer_keras

from dp_sinkhorn_tf.models import generators
from dp_sinkhorn_tf.privacy import accounting, gaussian, keys, lattice, mechanisms, sampling
from dp_sinkhorn_tf.train import config as config_lib
from dp_sinkhorn_tf.train import distribute
from dp_sinkhorn_tf.transport import costs, features, sinkhorn

INITIAL_LOSS_SCALE = 1.0


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


def build_optimizer(cfg: config_lib.TrainConfig, total_steps: Optional[int] = None,
                    noise_multiplier: Optional[float] = None, seed_fn=None):
  """Adam / AdamW / SGD on the released image gradient's parameter gradients (image_grad,
  and --nodp); for a DP param_grad run, TF Privacy's DP optimizer (`build_dp_optimizer`),
  which needs σ and seed_fn (the model's `noise_seed_now`).

  total_steps: the run's planned steps T, needed by --lr_schedule=cosine.
  """
  if cfg.privacy.dp and cfg.privacy.mechanism == "param_grad":
    if noise_multiplier is None or seed_fn is None:
      raise ValueError("param_grad's DP optimizer needs the noise multiplier and the step's "
                       "secret seed")
    return build_dp_optimizer(cfg, noise_multiplier, seed_fn, total_steps)
  o = cfg.optim
  lr = learning_rate_fn(cfg, total_steps)
  if o.optimizer == "sgd":
    # Heavy-ball momentum β₁. Unlike Adam, SGD does not rescale a parameter's update by its
    # gradient's running RMS; under noise-dominated gradients Adam keeps moving parameters
    # whose signal has vanished (e.g. behind a saturated tanh) at full speed.
    optimizer = tf.keras.optimizers.SGD(learning_rate=lr, momentum=o.beta_1)
  elif o.optimizer == "adamw":
    optimizer = tf.keras.optimizers.AdamW(learning_rate=lr, beta_1=o.beta_1, beta_2=o.beta_2,
                                          weight_decay=o.weight_decay)
  else:
    optimizer = tf.keras.optimizers.Adam(learning_rate=lr, beta_1=o.beta_1, beta_2=o.beta_2)
  if cfg.model.precision == "mixed_float16":
    # Dynamic loss scaling: the step scales what it back-propagates (the released G̃) and
    # unscales the parameter gradients. Keras starts at 2^15, made for losses whose
    # gradients are tiny; a private G̃ has entries of order 2σC, and 2^15 times that
    # overflows float16, so every halving on the way down would skip a step whose ε is
    # still charged. Start at 1: the scale doubles after each 2000 finite steps and an
    # overflow skips one step and halves it (≤ 1 in 2000 steps lost).
    optimizer = tf.keras.mixed_precision.LossScaleOptimizer(
        optimizer, initial_scale=INITIAL_LOSS_SCALE)
  return optimizer


_LEGACY = {"adam": lambda lr, o: tf.keras.optimizers.legacy.Adam(
                learning_rate=lr, beta_1=o.beta_1, beta_2=o.beta_2),
           "sgd": lambda lr, o: tf.keras.optimizers.legacy.SGD(learning_rate=lr,
                                                                momentum=o.beta_1)}


def build_dp_optimizer(cfg: config_lib.TrainConfig, noise_multiplier: float, seed_fn,
                       total_steps: Optional[int] = None):
  """--mechanism=param_grad: TF Privacy's generic DP Keras optimizer
  (`make_keras_generic_optimizer_class`) over Adam / SGD, whose DPQuery is
  `lattice.DiscreteGaussianSumQuery(C, σ)` with one microbatch (the batch loss is one
  record) and the step's secret seed from seed_fn(): TF Privacy's DP machinery, with exact
  keyed noise instead of its stateful float noise."""
  o = cfg.optim
  if o.optimizer not in _LEGACY:
    raise ValueError(f"--optimizer={o.optimizer}: expected one of {tuple(_LEGACY)} with "
                     "--mechanism=param_grad (TF Privacy's DP optimizers wrap Keras's legacy "
                     "optimizers)")
  query = lattice.DiscreteGaussianSumQuery(cfg.privacy.l2_norm_clip, noise_multiplier,
                                           seed=seed_fn)
  dp_class = dp_optimizer_keras.make_keras_generic_optimizer_class(
      type(_LEGACY[o.optimizer](0.1, o)))
  kwargs = {"learning_rate": learning_rate_fn(cfg, total_steps)}
  if o.optimizer == "adam":
    kwargs.update(beta_1=o.beta_1, beta_2=o.beta_2)
  else:
    kwargs.update(momentum=o.beta_1)
  return dp_class(dp_sum_query=query, num_microbatches=1, **kwargs)


def scale(optimizer, output_gradient: tf.Tensor) -> tf.Tensor:
  """output_gradient × the optimizer's dynamic loss scale (mixed_float16; unchanged for any
  other optimizer): what the step back-propagates into the generator (Keras's
  get_scaled_loss, applied to the released G̃ rows instead of a loss)."""
  if isinstance(optimizer, tf.keras.mixed_precision.LossScaleOptimizer):
    return optimizer.get_scaled_loss(output_gradient)
  return output_gradient


def unscale(optimizer, grads):
  """The parameter gradients divided by the loss scale `scale` multiplied by."""
  if isinstance(optimizer, tf.keras.mixed_precision.LossScaleOptimizer):
    return optimizer.get_unscaled_gradients(grads)
  return grads


# The per-step metrics of a mechanism, in this order (float32 scalars).
STEP_METRICS = ("loss", "clean_grad_norm", "noised_grad_norm", "sinkhorn_iterations",
                "marginal_error", "real_batch_size")


def _step_metrics(loss, clean_norm, noised_norm, info, real) -> dict:
  """A mechanism's per-step metrics (STEP_METRICS, float32 scalars). Only noised_grad_norm
  is a released quantity; the loss, the clean norm, the Sinkhorn diagnostics and the batch
  size are private diagnostics (`summaries` writes them under private_diagnostics/)."""
  values = (loss, clean_norm, noised_norm, info.iterations, info.marginal_error,
            tf.shape(real)[0])
  return {k: tf.reshape(tf.cast(v, tf.float32), []) for k, v in zip(STEP_METRICS, values)}


class _QueryStep:
  """The step whose secret seed param_grad's DPQuery draws, set inside the traced step
  (a plain attribute, never a variable: no checkpoint holds anything of the key)."""

  step = None


class DPSinkhornModel(tf.keras.Model):
  """Wraps a generator; `train_step(step)` is one private DP-Sinkhorn update.

  The private images live in this object as constants and are reached only through the
  Poisson sample inside `train_step`; they are not variables, so checkpoints and exports
  never contain them. uint8 pixels stay uint8 on the device (4× less than float32) and
  each batch is scaled to [−1, 1] as it is drawn (`to_unit_interval`).

  The unit of privacy (`private_batch`): one record, or under --privacy_unit=group (groups
  given) one group: the Poisson sample is over groups, q = B/G, and a sampled group gives
  at most m = --max_per_group of its records, a uniformly random m-subset keyed by
  (secret key, step) when it has more. Sensitivity. Let D, D′ differ in one whole group g
  (add/remove). A step's batch under D′ is the batch under D plus g's records, or the same
  batch when g is not sampled, and the released private block is clip_C(G) + N(0, (2σC)²)
  with G the whole n × d gradient of the loss on that batch (`privacy.gaussian`). Whatever
  g's records do to G, both clipped blocks have norm ≤ C, so
  ‖clip_C(G_D) − clip_C(G_D′)‖₂ ≤ ‖clip_C(G_D)‖₂ + ‖clip_C(G_D′)‖₂ ≤ 2C: the sensitivity is
  2C for a group of any size, as for one record, and the accountant's ε for (q = B/G, σ, T)
  holds per group. (A per-record clip summed over the batch would instead move by 2C per
  record of g.)
  """

  def __init__(self, generator: tf.keras.Model, images: np.ndarray, labels: np.ndarray,
               num_classes: int, cfg: config_lib.TrainConfig, noise_multiplier: float,
               sample_rate: float, ema_generator: Optional[tf.keras.Model] = None,
               key: Optional[keys.PrivacyKey] = None, pixel_max: Optional[int] = None,
               groups: Optional[np.ndarray] = None):
    """key: the run's secret key (batches and noise); None draws a fresh one.

    images: uint8 pixels in [0, pixel_max], or float32 in [−1, 1] with pixel_max None.
    groups: [N] int64 group ids 0…G−1 for cfg.data.privacy_unit == "group" (None: the unit
    is one record); sample_rate is then per group.
    """
    super().__init__()
    self._key = key if key is not None else keys.generate()
    self._step_for_query = _QueryStep()
    self.generator = generator
    self.ema_generator = ema_generator
    self.cfg = cfg
    self.num_classes = num_classes
    if (pixel_max is None) != (images.dtype != np.uint8):
      raise ValueError(f"images must be uint8 with pixel_max or float32 without it, got "
                       f"{images.dtype} and pixel_max={pixel_max}")
    self._pixel_max = pixel_max
    self._images = tf.constant(images, tf.uint8 if pixel_max is not None else tf.float32)
    self._labels = tf.constant(labels, tf.int32)
    if (groups is not None) != (cfg.data.privacy_unit == "group"):
      raise ValueError(f"--privacy_unit={cfg.data.privacy_unit} "
                       f"{'needs' if groups is None else 'takes no'} group ids")
    self._groups = None
    self._dataset_size = int(images.shape[0])
    if groups is not None:
      self._init_groups(np.asarray(groups, np.int64), cfg.data.max_per_group)
    self._sample_rate = float(sample_rate)
    self._n = cfg.num_primary
    self._n_total = cfg.num_generated
    self._cost = costs.make_cost(cfg.loss.cost, l1_weight=cfg.loss.l1_weight,
                                 products=cfg.loss.products)
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

  def noise_seed_now(self) -> tf.Tensor:
    """The noise seed of the step being traced (param_grad's DPQuery reads it)."""
    if self._step_for_query.step is None:
      raise ValueError("the DP optimizer asked for noise outside a training step")
    return self.noise_seed(self._step_for_query.step)

  def _init_groups(self, groups: np.ndarray, max_per_group: int) -> None:
    """The groups as tensors: the record indices sorted by group (stable), each group's
    start in that order and size."""
    order = np.argsort(groups, kind="stable")
    sizes = np.bincount(groups)
    self._groups = {
        "order": tf.constant(order, tf.int32),
        "starts": tf.constant(np.concatenate([[0], np.cumsum(sizes)[:-1]]), tf.int32),
        "sizes": tf.constant(sizes, tf.int32),
        # A subset is drawn only when some group has more than m records.
        "subset": bool(sizes.max() > max_per_group),
    }
    self._max_per_group = int(max_per_group)
    self._dataset_size = len(sizes)  # N of the Poisson sample: the number of groups

  def to_unit_interval(self, pixels: tf.Tensor) -> tf.Tensor:
    """A gathered batch as float32 in [−1, 1]: (x − m) / m with m = pixel_max / 2 for uint8
    pixels (`datasets.scale_to_unit_interval`, bit for bit); float32 images unchanged."""
    if self._pixel_max is None:
      return pixels
    half = tf.constant(self._pixel_max / 2.0, tf.float32)
    return (tf.cast(pixels, tf.float32) - half) / half

  def private_indices(self, step: tf.Tensor) -> tf.Tensor:
    """The records of step `step`'s batch, int32 [m], keyed by the secret key (never --seed).

    Records: the Poisson sample of the N records at rate q (m ~ Bin(N, q)). Groups: the
    Poisson sample of the G groups at rate q, then of each sampled group all its records if
    it has at most M = --max_per_group, else the M with the smallest keyed uniforms
    u ~ U(0, 1) (STREAM_GROUP_SUBSET, one draw per record at each step): a uniformly random
    M-subset, drawn independently of the other groups.
    """
    units = sampling.poisson_sample_indices(
        keys.step_seed(self._key, step, keys.STREAM_BATCH), self._dataset_size,
        self._sample_rate)
    if self._groups is None:
      return units
    g = self._groups
    ranges = tf.ragged.range(tf.gather(g["starts"], units),
                             tf.gather(g["starts"], units) + tf.gather(g["sizes"], units))
    positions = ranges.flat_values  # positions in `order` of the sampled groups' records
    if g["subset"]:
      rows = ranges.value_rowids()
      draws = tf.random.stateless_uniform(
          tf.shape(g["order"]), keys.step_seed(self._key, step, keys.STREAM_GROUP_SUBSET),
          dtype=tf.float64)
      u = tf.gather(draws, positions)
      # Sort by (group, u): a stable sort by u, then a stable sort by the group row.
      by_u = tf.argsort(u, stable=True)
      by_row = tf.gather(by_u, tf.argsort(tf.gather(rows, by_u), stable=True))
      rank = tf.range(tf.size(by_row, tf.int64)) - tf.gather(ranges.row_splits,
                                                             tf.gather(rows, by_row))
      positions = tf.gather(positions, tf.boolean_mask(by_row, rank < self._max_per_group))
    return tf.gather(g["order"], positions)

  def private_batch(self, step: tf.Tensor):
    """The private sample of step `step` (`private_indices`): (images [m, H, W, C] float32
    in [−1, 1], labels [m])."""
    idx = self.private_indices(step)
    return self.to_unit_interval(tf.gather(self._images, idx)), tf.gather(self._labels, idx)

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

  def released_image_gradient(self, fake, fake_labels, step: tf.Tensor):
    """(G̃, metrics) of step `step` for the whole generated batch `fake` [n + n′, H, W, C]:
    the loss against the step's Poisson sample, G = ∂L/∂fake, the mechanism's release (one
    clip of G[0:n], one keyed noise draw) and its blur. The only place the step reads the
    private data."""
    real, real_labels = self.private_batch(step)
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
    return released, _step_metrics(loss, p_info.clean_norm, p_info.noised_norm, info, real)

  def image_grad_gradients(self, step: tf.Tensor):
    """Parameter gradients from the privatised image gradient, and the step's metrics.

    Under a multi-replica strategy (`distribute`), this replica generates only its share
    of the batch (shares differ by at most one row); the shares are all-gathered, replica 0
    alone computes the loss, G and the release G̃ (`released_image_gradient`) and a
    broadcast hands G̃ and its metrics to every replica (`distribute.from_first_replica`);
    each back-propagates its own rows of G̃: the returned gradients sum to the
    single-device ones across replicas.
    """
    z, fake_labels = self.latent_batch(step)
    variables = self.generator.trainable_variables
    ctx, first, rows = distribute.my_rows(self._n_total)
    with tf.GradientTape() as gen_tape:
      mine = self.generator([z[first:first + rows], fake_labels[first:first + rows]],
                            training=True)
    if ctx is None:
      released, logs = self.released_image_gradient(mine, fake_labels, step)
    else:
      fake = distribute.gather_rows(ctx, mine, self._n_total)
      released, logs = distribute.from_first_replica(
          ctx, lambda: self.released_image_gradient(fake, fake_labels, step),
          lambda: (tf.zeros_like(fake), {k: tf.zeros([], tf.float32) for k in STEP_METRICS}))
    # The generator may compute in bfloat16 / float16 (--precision); its output `mine` and
    # everything from the loss to the release are float32. float16 back-propagates the
    # release times the loss scale (post-processing: G̃, weights and latents are public).
    grads = gen_tape.gradient(mine, variables,
                              output_gradients=scale(self.optimizer, released[first:first + rows]))
    grads = unscale(self.optimizer, grads)
    return grads, logs

  def param_grad_gradients(self, step: tf.Tensor):
    """The paper's ablation: the whole parameter gradient of the batch loss as one record,
    clipped to C and released with exact keyed lattice noise by TF Privacy's generic DP
    optimizer around `lattice.DiscreteGaussianSumQuery` (one microbatch: sensitivity 2C,
    σ_eff ≥ σ), and the step's metrics. The query's seed is this step's secret noise seed
    (`_step_for_query`, read when the optimizer asks for it); --nodp takes the plain
    gradient."""
    real, real_labels = self.private_batch(step)
    z, fake_labels = self.latent_batch(step)
    variables = self.generator.trainable_variables
    with tf.GradientTape() as tape:
      fake = self.generator([z, fake_labels], training=True)
      loss, info = self.sinkhorn_loss(fake, fake_labels, real, real_labels)
    if self.cfg.privacy.dp:
      clean = [tf.zeros_like(v) if g is None else g
               for g, v in zip(tape.gradient(loss, variables), variables)]
      self._step_for_query.step = step
      grads = self.optimizer.get_gradients(tf.reshape(loss, [1]), variables)
      clean_norm = tf.linalg.global_norm(clean)
    else:
      grads = [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
               for g, v in zip(tape.gradient(loss, variables), variables)]
      clean_norm = tf.linalg.global_norm(grads)
    return grads, _step_metrics(loss, clean_norm, tf.linalg.global_norm(grads), info, real)

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
    it runs the replicas and returns the first local replica's metrics (every replica
    holds replica 0's, broadcast with its release)."""
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


def release_entries(cfg: config_lib.TrainConfig, image_shape, num_classes: int) -> int:
  """N, the number of values the mechanism releases with noise each step: n·H·W·C for
  image_grad (the private rows of G), the generator's trainable parameters for param_grad."""
  if mechanisms.get(cfg.privacy.mechanism).releases_image_gradient:
    return cfg.num_primary * int(np.prod(image_shape))
  generator = make_generator(cfg, image_shape, num_classes, build=True, precision="float32")
  return int(sum(int(np.prod(v.shape)) for v in generator.trainable_variables))


def noise_description(cfg: config_lib.TrainConfig, noise_multiplier: float, image_shape,
                      num_classes: int) -> Optional[dict]:
  """The exact noise of a DP run (`privacy.lattice`), for the ledger, privacy.json, the
  export and the console; None without noise (--nodp, σ = 0 or C = 0)."""
  p = cfg.privacy
  if not p.dp or noise_multiplier == 0 or p.l2_norm_clip == 0:
    return None
  entries = release_entries(cfg, image_shape, num_classes)
  params = lattice.lattice_params(p.l2_norm_clip, noise_multiplier, entries)
  return {"distribution": "discrete Gaussian on the lattice γℤ, exact (privacy.lattice)",
          "entries": entries, "log2_gamma": params.log2_gamma, "gamma": params.gamma,
          "noise_stddev": params.noise_stddev,
          "effective_noise_multiplier": params.effective_noise_multiplier,
          "charged_noise_multiplier": float(noise_multiplier),
          "rounding_inflation": params.inflation,
          "certified_accountant": "rdp"}


def make_generator(cfg: config_lib.TrainConfig, image_shape, num_classes: int,
                   build: bool = False, precision: Optional[str] = None):
  """The configured generator; build=True creates its variables with one inference call.
  precision: the Keras policy (None: the training precision --precision)."""
  m = cfg.model
  generator = generators.make_generator(m.architecture, tuple(image_shape), num_classes,
                                        latent_dim=m.latent_dim, embed_dim=m.embed_dim,
                                        hidden=m.hidden, depth=m.depth, output=m.output,
                                        precision=precision or m.precision)
  if build:
    generator([tf.zeros([1, m.latent_dim]), tf.zeros([1], tf.int32)], training=False)
  return generator


def local_copy(cfg: config_lib.TrainConfig, generator: tf.keras.Model) -> tf.keras.Model:
  """What SavedModel export saves: `generator` itself when it is a float32 model on one
  device, else a float32 single-device copy with the same (float32) weights — of a
  generator built under a multi-replica strategy, or trained under --precision=mixed_*
  (the export is float32 so every serving host runs it). Every worker must call it
  (reading distributed values may be a collective)."""
  distributed = any(isinstance(v, tf.distribute.DistributedValues)
                    for v in generator.variables)
  if not distributed and generators.precision_of(generator) == "float32":
    return generator
  copy = make_generator(cfg, generator.image_shape, generator.num_classes, build=True,
                        precision="float32")
  for target, source in zip(copy.variables, generator.variables):
    target.assign(source.read_value())
  return copy


def make_ema_generator(cfg: config_lib.TrainConfig, generator: tf.keras.Model):
  """A second generator of the same architecture starting from `generator`'s weights."""
  ema = make_generator(cfg, generator.image_shape, generator.num_classes, build=True)
  for ema_var, var in zip(ema.variables, generator.variables):
    ema_var.assign(var)
  return ema


def build_model(cfg: config_lib.TrainConfig, images: np.ndarray, labels: np.ndarray,
                num_classes: int, plan: accounting.PrivacyPlan, key: keys.PrivacyKey,
                pixel_max: Optional[int] = None, groups: Optional[np.ndarray] = None):
  """(DPSinkhornModel with its optimizer and slots built, step variable), created in the
  current strategy's scope. --seed steers only data-independent randomness: the
  initialisation here, the latents and generated labels in the step; the batches and the
  noise come from `key`."""
  tf.keras.utils.set_random_seed(cfg.run.seed)
  generator = make_generator(cfg, images.shape[1:], num_classes, build=True)
  ema_generator = make_ema_generator(cfg, generator) if cfg.optim.ema_decay > 0 else None
  model = DPSinkhornModel(generator, images, labels, num_classes, cfg, plan.noise_multiplier,
                          plan.sample_rate, ema_generator, key=key, pixel_max=pixel_max,
                          groups=groups)
  optimizer = build_optimizer(cfg, plan.steps, plan.noise_multiplier, model.noise_seed_now)
  model.compile(optimizer=optimizer)
  # Optimizer slots exist only after a first apply; build them so that a restore can check
  # that every object of the run is in the checkpoint.
  if isinstance(optimizer, tf.keras.optimizers.legacy.Optimizer):
    optimizer._create_all_weights(generator.trainable_variables)  # pylint: disable=protected-access
  else:
    optimizer.build(generator.trainable_variables)
  step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
  return model, step


def step_function(model: DPSinkhornModel, strategy: tf.distribute.Strategy):
  """The compiled step, entered in the strategy's scope (replicas run inside it)."""
  compiled = tf.function(model.train_step, input_signature=[tf.TensorSpec([], tf.int64)],
                         autograph=False)

  def run(step):
    with strategy.scope():
      return compiled(step)

  return run


# The state `multi_step_function` carries from call to call: whether every weight is still
# finite (1.0 or 0.0), then the STEP_METRICS of the last step run (float32).
LOOP_STATE = ("weights_finite",) + STEP_METRICS


def initial_loop_state() -> tf.Tensor:
  """The state before a run's first call: finite weights, no metrics yet."""
  return tf.constant([1.0] + [0.0] * len(STEP_METRICS), tf.float32)


def multi_step_function(model: DPSinkhornModel, strategy: tf.distribute.Strategy,
                        step_var: tf.Variable):
  """run(num_steps, state) → state: up to num_steps steps in one call of one compiled function
  (a tf.while_loop around `train_step`; the trip count is a tensor, so any num_steps runs
  the same trace), entered in the strategy's scope as `step_function`.

  Iteration i trains step t = step_var + i, the index that keys its batch and noise (and
  that param_grad's DPQuery reads through `noise_seed_now`: the loop's own tensor, set as
  the body is traced), so k steps of one call release and update exactly what k calls of
  `step_function` do; step_var holds the next step index on return. state (LOOP_STATE, a
  float32 vector that stays on the device until the caller reads it) ANDs weights_finite
  over the steps and holds the last step's metrics. The loop stops after the first step
  that leaves a weight NaN or inf, and a call whose state says so runs no step: step_var
  then names that step (its index + 1), whatever num_steps the later calls asked for.

  Traced with autograph=False, as `step_function` and the solvers: the step's control flow
  is explicit (tf.while_loop, tf.cond, Python branches on Python values), so autograph would
  only rewrite ~80 functions per trace, a third of a small run's start-up
  (docs/benchmarks.md). A Python `if` on a tensor then fails at trace time instead of being
  converted.
  """

  def steps(num_steps, state):
    def cond(i, t, finite, logs):
      del t, logs
      return tf.logical_and(i < num_steps, finite)

    def body(i, t, finite, logs):
      del finite, logs
      out = model.train_step(t)
      return i + 1, t + 1, out["weights_finite"], [out[k] for k in STEP_METRICS]

    _, t, finite, logs = tf.while_loop(
        cond, body, (tf.constant(0, tf.int64), step_var.read_value(), state[0] > 0,
                     tf.unstack(state[1:])))
    step_var.assign(t)
    return tf.stack([tf.cast(finite, tf.float32)] + logs)

  compiled = tf.function(steps, input_signature=[
      tf.TensorSpec([], tf.int64), tf.TensorSpec([len(LOOP_STATE)], tf.float32)],
      autograph=False)

  def run(num_steps: int, state: tf.Tensor) -> tf.Tensor:
    with strategy.scope():
      return compiled(tf.constant(num_steps, tf.int64), state)

  return run



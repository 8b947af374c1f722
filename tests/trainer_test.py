"""Tests for dp_sinkhorn_tf.train.trainer: private steps, no-leak, resume, planning."""

import dataclasses
import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from dp_sinkhorn_tf.data import datasets
from dp_sinkhorn_tf.io import rundir
from dp_sinkhorn_tf.models import generators
from dp_sinkhorn_tf.privacy import accounting, gaussian, keys
from dp_sinkhorn_tf.train import config as config_lib
from dp_sinkhorn_tf.train import provenance, summaries, train_lib, trainer
from dp_sinkhorn_tf.transport import sinkhorn

DIGITS = datasets.load_dataset("digits")


def tiny_config(workdir="unused", **overrides) -> config_lib.TrainConfig:
  cfg = config_lib.TrainConfig(
      batch_size=16, steps=None,
      model=config_lib.ModelConfig(architecture="dcgan", latent_dim=4, embed_dim=2, hidden=4),
      loss=config_lib.LossConfig(cost="l1l2", solver=sinkhorn.SinkhornConfig(
          epsilon=0.5, max_iterations=20)),
      privacy=config_lib.PrivacyConfig(noise_multiplier=1.0, target_epsilon=2.0),
      run=config_lib.RunConfig(workdir=str(workdir), log_every=1, sample_every=10**6,
                               checkpoint_every=3))
  return dataclasses.replace(cfg, **overrides)


def build_model(cfg, dataset=DIGITS, sigma=1.0, key=None):
  gen = trainer.make_generator(cfg, dataset.image_shape, dataset.num_classes)
  model = trainer.DPSinkhornModel(gen, dataset.images, dataset.labels, dataset.num_classes,
                                  cfg, sigma, cfg.batch_size / len(dataset.images), key=key)
  model.compile(optimizer=trainer.build_optimizer(cfg, None, sigma, model.noise_seed_now))
  return model


def test_plan_from_sigma_uses_the_whole_budget():
  cfg = tiny_config()
  plan = accounting.plan_privacy(cfg, 1438)
  q = accounting.inclusion_probability(16 / 1438)  # the sampler's exact rate
  assert plan.sample_rate == q and q >= 16 / 1438
  assert plan.steps == accounting.max_steps(2.0, 1e-5, q, 1.0)
  assert plan.epsilon <= 2.0 < accounting.compute_epsilon(q, 1.0, plan.steps + 1, 1e-5)


def test_plan_from_steps_finds_sigma():
  cfg = tiny_config(steps=50, privacy=config_lib.PrivacyConfig(target_epsilon=2.0))
  plan = accounting.plan_privacy(cfg, 1438)
  assert plan.steps == 50 and plan.epsilon <= 2.0
  assert accounting.compute_epsilon(plan.sample_rate, plan.noise_multiplier - 0.01, 50,
                                    1e-5) > 2.0


@pytest.mark.parametrize("overrides,match", [
    (dict(steps=10**7), "--steps"), (dict(batch_size=5000), "--batch_size"),
    (dict(privacy=config_lib.PrivacyConfig(noise_multiplier=None)), "--noise_multiplier")])
def test_impossible_plans_are_refused(overrides, match):
  with pytest.raises(ValueError, match=match):
    accounting.plan_privacy(tiny_config(**overrides), 1438)


def test_private_steps_on_digits_are_finite_and_noised():
  model = build_model(tiny_config())
  step = tf.function(model.train_step, autograph=False)
  for s in range(3):
    logs = {k: float(v) for k, v in step(tf.constant(s, tf.int64)).items()}
    assert math.isfinite(logs["loss"])
  # noise std 2σC = 1 on 16 × 64 private entries: norm ≈ 32, far above C = 0.5.
  assert logs["noised_grad_norm"] > 10


def test_steps_on_tfds_mock_mnist():
  with tfds.testing.mock_data(num_examples=40):
    ds = datasets.load_dataset("mnist", data_dir="/nonexistent")
  cfg = tiny_config(batch_size=8)
  model = build_model(cfg, ds)
  logs = tf.function(model.train_step, autograph=False)(tf.constant(0, tf.int64))
  assert np.isfinite(float(logs["loss"]))


class _ZeroMechanism:
  """Releases zeros: if anything else reached the weights, it would be a leak."""

  def privatize(self, grad, num_private, noise_seed=None):
    zero = tf.zeros([])
    return tf.zeros_like(grad), gaussian.MechanismInfo(zero, zero, zero)


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16", "mixed_float16",
                                       "bfloat16_convs"])
def test_no_leak_zero_release_leaves_weights_unmoved(precision):
  model = build_model(tiny_config(model=config_lib.ModelConfig(
      architecture="dcgan", latent_dim=4, embed_dim=2, hidden=4, precision=precision)))
  model.mechanism = _ZeroMechanism()
  before = [v.numpy().copy() for v in model.generator.trainable_variables]
  step = tf.function(model.train_step, autograph=False)
  for s in range(3):
    step(tf.constant(s, tf.int64))
  after = [v.numpy() for v in model.generator.trainable_variables]
  for b, a in zip(before, after):
    np.testing.assert_array_equal(a, b)


def test_non_private_mode_applies_plain_autodiff_gradients():
  cfg = tiny_config(privacy=config_lib.PrivacyConfig(dp=False), steps=5)
  model = build_model(cfg, sigma=0.0)
  step = tf.constant(2, tf.int64)
  grads, _ = model.image_grad_gradients(step)
  real, real_labels = model.private_batch(step)
  z, fake_labels = model.latent_batch(step)
  with tf.GradientTape() as tape:
    fake = model.generator([z, fake_labels], training=True)
    loss, _ = model.sinkhorn_loss(fake, fake_labels, real, real_labels)
  direct = tape.gradient(loss, model.generator.trainable_variables)
  # The step's loss runs under XLA (float32 sums reassociated), the direct one does not:
  # equal up to 1e-3 of each gradient's largest entry.
  for g, d in zip(grads, direct):
    g, d = tf.convert_to_tensor(g).numpy(), tf.convert_to_tensor(d).numpy()
    np.testing.assert_allclose(g, d, rtol=1e-3, atol=1e-3 * np.abs(d).max() + 1e-7)


class _SpyMechanism:
  """The real mechanism, recording the dtype of every gradient it is given."""

  def __init__(self, mechanism):
    self.mechanism, self.dtypes = mechanism, []

  def privatize(self, grad, num_private, noise_seed=None):
    self.dtypes.append(grad.dtype)
    return self.mechanism.privatize(grad, num_private, noise_seed)


def _precision_config(precision, dp=True):
  model = config_lib.ModelConfig(architecture="dcgan", latent_dim=4, embed_dim=2, hidden=8,
                                 precision=precision)
  privacy = (config_lib.PrivacyConfig(noise_multiplier=1.0, target_epsilon=2.0) if dp
             else config_lib.PrivacyConfig(dp=False))
  return tiny_config(model=model, privacy=privacy, steps=None if dp else 5)


@pytest.mark.parametrize("precision,compute,norm_compute", [
    ("mixed_bfloat16", tf.bfloat16, tf.bfloat16), ("mixed_float16", tf.float16, tf.float16),
    ("bfloat16_convs", tf.bfloat16, tf.float32)])
def test_mixed_precision_lowers_the_generator_and_never_the_mechanism(precision, compute,
                                                                      norm_compute):
  model = build_model(_precision_config(precision))
  gen = model.generator
  assert gen.blocks[0].convs[0].compute_dtype == compute
  assert gen.to_image.compute_dtype == compute
  # bfloat16_convs: only the convolutions are lowered; BN and the dense projection are not.
  assert gen.blocks[0].norms[0].compute_dtype == norm_compute
  assert gen.project.compute_dtype == norm_compute
  assert generators.precision_of(gen) == precision
  assert all(v.dtype == tf.float32 for v in gen.variables)
  spy = _SpyMechanism(model.mechanism)
  model.mechanism = spy
  logs = tf.function(model.train_step, autograph=False)(tf.constant(0, tf.int64))
  assert spy.dtypes and set(spy.dtypes) == {tf.float32}  # once per trace
  assert np.isfinite(float(logs["loss"])) and float(logs["noised_grad_norm"]) > 10
  assert all(np.all(np.isfinite(v.numpy())) for v in gen.variables)


@pytest.mark.parametrize("precision,rtol", [("mixed_bfloat16", 0.08), ("mixed_float16", 0.04),
                                            ("bfloat16_convs", 0.08)])
def test_mixed_precision_gradients_match_float32(precision, rtol):
  # Same weights, same steps: the parameter gradients agree to the format's precision (the
  # bfloat16 mantissa has 8 bits, float16's 11). One batch's error has a long tail (float16:
  # median 1.4 %, 6.7 % seen once in 30 keys, through BN, the converged Sinkhorn and back), so
  # the median over seven batches is compared; over 12 fresh keys it was at most 1.8 % (float16),
  # 6.1 % (mixed_bfloat16), 5.3 % (bfloat16_convs). float16 back-propagates G̃ times the loss
  # scale (64 here): without the unscale the gradients would be 64 times too large.
  key = keys.generate()  # the same private batches for both
  reference = build_model(_precision_config("float32", dp=False), key=key)
  mixed = build_model(_precision_config(precision, dp=False), key=key)
  for target, source in zip(mixed.generator.variables, reference.generator.variables):
    target.assign(source)
  if precision == "mixed_float16":
    assert float(mixed.optimizer.loss_scale) == trainer.INITIAL_LOSS_SCALE
    mixed.compile(optimizer=tf.keras.mixed_precision.LossScaleOptimizer(
        tf.keras.optimizers.Adam(), dynamic=False, initial_scale=64.0))
  errors = []
  for step in range(1, 8):
    want, _ = reference.image_grad_gradients(tf.constant(step, tf.int64))
    got, _ = mixed.image_grad_gradients(tf.constant(step, tf.int64))
    got = np.concatenate([tf.reshape(g, [-1]).numpy() for g in got])
    want = np.concatenate([tf.reshape(w, [-1]).numpy() for w in want])
    assert got.dtype == np.float32
    errors.append(np.linalg.norm(got - want) / np.linalg.norm(want))
  assert np.median(errors) <= rtol, errors


def test_mixed_float16_is_refused_where_loss_scaling_would_see_private_data():
  with pytest.raises(ValueError, match="--precision='mixed_float16'.*param_grad"):
    tiny_config(model=config_lib.ModelConfig(precision="mixed_float16"),
                privacy=config_lib.PrivacyConfig(mechanism="param_grad", noise_multiplier=1.0))
  tiny_config(model=config_lib.ModelConfig(precision="mixed_bfloat16"),
              privacy=config_lib.PrivacyConfig(mechanism="param_grad", noise_multiplier=1.0))


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "bfloat16_convs"])
def test_a_mixed_precision_generator_is_exported_as_float32_with_its_weights(precision):
  # bfloat16_convs has a float32 model policy: the copy must still be made (precision_of).
  cfg = _precision_config(precision)
  model = build_model(cfg)
  copy = trainer.local_copy(cfg, model.generator)
  assert copy is not model.generator
  assert copy.blocks[0].convs[0].compute_dtype == tf.float32
  assert copy.to_image.compute_dtype == tf.float32
  for a, b in zip(copy.variables, model.generator.variables):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  z, labels = model.latent_batch(tf.constant(0, tf.int64))
  low = model.generator([z, labels], training=False).numpy()
  high = copy([z, labels], training=False).numpy()
  assert np.abs(low - high).max() < 0.05  # the same generator, up to bfloat16 rounding
  float32 = build_model(_precision_config("float32"))
  assert trainer.local_copy(cfg, float32.generator) is float32.generator


def test_param_grad_step_releases_clipped_gradient_plus_keyed_two_sigma_c_noise():
  cfg = tiny_config(privacy=config_lib.PrivacyConfig(mechanism="param_grad",
                                                     noise_multiplier=0.7, l2_norm_clip=0.5,
                                                     target_epsilon=2.0),
                    optim=config_lib.OptimConfig(optimizer="sgd", learning_rate=1.0,
                                                 beta_1=0.0))
  key = keys.generate()
  tf.keras.utils.set_random_seed(0)
  model = build_model(cfg, sigma=0.7, key=key)
  # Plain SGD with rate 1 and no momentum: the update is −released.
  variables = model.generator.trainable_variables
  before = [v.numpy().copy() for v in variables]
  logs = tf.function(model.train_step, autograph=False)(tf.constant(3, tf.int64))
  released = [b - v.numpy() for v, b in zip(variables, before)]
  # released = γ·(R(clip_C(g)/γ) + Z) through TF Privacy's DP optimizer, the noise std
  # γs ≈ 2σC = 0.7 keyed by (key, step 3): the clipped signal (norm ≤ 0.5 over all the
  # parameters) is far below the noise, so the update's spread is the noise's.
  assert type(model.optimizer).__name__ == "DPOptimizerClass"
  assert float(logs["clean_grad_norm"]) > 0
  total = np.concatenate([r.ravel() for r in released])
  assert np.std(total) == pytest.approx(0.7, rel=0.1)
  tf.keras.utils.set_random_seed(0)
  again = build_model(cfg, sigma=0.7, key=key)
  for v, b in zip(again.generator.trainable_variables, before):
    np.testing.assert_array_equal(v.numpy(), b)
  tf.function(again.train_step, autograph=False)(tf.constant(3, tf.int64))
  for v, w in zip(again.generator.trainable_variables, variables):
    np.testing.assert_array_equal(v.numpy(), w.numpy())  # the same key and step: replayed


def test_public_clip_reaches_the_mechanism_and_nodp_ignores_it():
  private = build_model(tiny_config(privacy=config_lib.PrivacyConfig(
      noise_multiplier=1.0, target_epsilon=2.0, public_clip=0.05)))
  assert private.mechanism.public_clip == 0.05 and private.mechanism.l2_norm_clip == 0.5
  plain = build_model(tiny_config(steps=5, privacy=config_lib.PrivacyConfig(
      dp=False, public_clip=0.05)))
  assert not plain.mechanism.is_private and plain.mechanism.public_clip is None


def test_cosine_schedule_matches_its_closed_form():
  cfg = tiny_config(optim=config_lib.OptimConfig(learning_rate=2e-3, lr_schedule="cosine"))
  schedule = trainer.learning_rate_fn(cfg, total_steps=100)
  # η_t = η·½(1 + cos(π t/T)), T = 100: η, η·½(1 + cos(π/4)) = 0.8536η, η/2, 0, and 0 after T.
  for t, factor in [(0, 1.0), (25, 0.5 * (1 + math.cos(math.pi / 4))), (50, 0.5), (100, 0.0),
                    (150, 0.0)]:
    assert float(schedule(t)) == pytest.approx(2e-3 * factor, abs=1e-9)


def test_optimizer_applies_the_scheduled_rate_at_its_step():
  # Plain SGD (momentum β₁ = 0) moves a variable by exactly η_t·g.
  cfg = tiny_config(optim=config_lib.OptimConfig(optimizer="sgd", learning_rate=2e-3,
                                                 beta_1=0.0, lr_schedule="cosine"))
  opt = trainer.build_optimizer(cfg, total_steps=100)
  var = tf.Variable(1.0)
  opt.apply_gradients([(tf.constant(1.0), var)])  # t = 0: η = 2e-3
  assert float(var) == pytest.approx(1.0 - 2e-3, abs=1e-7)
  opt.iterations.assign(50)
  opt.apply_gradients([(tf.constant(1.0), var)])  # t = 50: η/2 = 1e-3
  assert float(var) == pytest.approx(1.0 - 3e-3, abs=1e-7)


def test_constant_schedule_is_a_float_and_cosine_needs_the_steps():
  assert trainer.learning_rate_fn(tiny_config()) == pytest.approx(1e-3)
  cfg = tiny_config(optim=config_lib.OptimConfig(lr_schedule="cosine"))
  with pytest.raises(ValueError, match="--lr_schedule"):
    trainer.build_optimizer(cfg)


class _Crash(Exception):
  pass


def _crash_at(crash_step):
  """An on_log that raises at `crash_step` (called once that step's chunk is saved)."""

  def on_log(step, total, logs):
    if step == crash_step:
      raise _Crash()

  return on_log


def _weights(result):
  return [v.numpy() for v in result.model.generator.variables]


def test_resume_after_crash_replays_from_the_checkpoint_and_matches_an_uninterrupted_run(
    tmp_path, monkeypatch):
  key_file = tmp_path / "key"
  keys.write_key_file(str(key_file), keys.generate())

  def cfg_for(name):
    return tiny_config(tmp_path / name, steps=10, privacy=config_lib.PrivacyConfig(
        noise_multiplier=1.0, target_epsilon=10.0),
        run=config_lib.RunConfig(workdir=str(tmp_path / name), log_every=1,
                                 sample_every=2, checkpoint_every=3,
                                 privacy_key_file=str(key_file)))

  cfg = cfg_for("crashed")
  plan = accounting.plan_privacy(cfg, len(DIGITS.images))
  ledger_path = os.path.join(cfg.run.workdir, rundir.LEDGER_FILE)
  shown = []

  def crash_at_five(writer, step, logs):  # private diagnostics are written at once
    if step == 5:
      raise _Crash()
    write_scalars(writer, step, logs)

  def on_log(step, total, logs):
    assert set(logs) == {"epsilon"}  # data-independent values only
    shown.append(step)

  write_scalars = summaries.write_scalars
  monkeypatch.setattr(summaries, "write_scalars", crash_at_five)
  with pytest.raises(_Crash):
    train_lib.train(cfg, DIGITS.images, DIGITS.labels, 10, plan, on_log=on_log)
  monkeypatch.setattr(summaries, "write_scalars", write_scalars)
  # Write-ahead: the chunk [3, 6) was charged before it ran; the checkpoint holds step 3.
  ledger = accounting.PrivacyLedger.load(ledger_path)
  assert (ledger.steps_taken, ledger.checkpoint_step) == (6, 3)
  # Publishable outputs of the unfinished chunk were held back: the grid of step 4 was
  # never written (the progress line of step 4 shows only the step and ε).
  assert shown == [1, 2, 3, 4]
  samples = sorted(os.listdir(os.path.join(cfg.run.workdir, "samples")))
  assert samples == ["step_0000002.png"]
  seen = []
  result = train_lib.train(cfg, DIGITS.images, DIGITS.labels, 10, plan,
                         on_log=lambda s, t, logs: seen.append(s))
  assert seen == list(range(4, 11))  # steps 4, 5, 6 re-run from the checkpoint, then on
  ledger = accounting.PrivacyLedger.load(ledger_path)
  # Each step index charged once: the same ledger as an uninterrupted run.
  assert ledger.steps_taken == 10 and ledger.checkpoint_step == 10
  assert ledger.epsilon() == pytest.approx(accounting.compute_epsilon(
      plan.sample_rate, 1.0, 10, 1e-5))
  report = json.load(open(os.path.join(cfg.run.workdir, rundir.REPORT_FILE)))
  assert report["finished"] and report["ledger"]["steps_taken"] == 10
  assert os.path.exists(result.sample_grid)
  with pytest.raises(train_lib.BudgetExhaustedError, match="refusing to train further"):
    train_lib.train(cfg, DIGITS.images, DIGITS.labels, 10, plan)
  # The same key without a crash: bit-for-bit the same generator.
  straight_cfg = cfg_for("straight")
  straight = train_lib.train(straight_cfg, DIGITS.images, DIGITS.labels, 10, plan)
  for a, b in zip(_weights(result), _weights(straight)):
    np.testing.assert_array_equal(a, b)
  assert (accounting.PrivacyLedger.load(os.path.join(straight_cfg.run.workdir,
                                                     rundir.LEDGER_FILE)).steps_taken == 10)


def test_resume_with_a_different_plan_is_refused(tmp_path):
  cfg = tiny_config(tmp_path, steps=3, privacy=config_lib.PrivacyConfig(
      noise_multiplier=1.0, target_epsilon=10.0))
  plan = accounting.plan_privacy(cfg, len(DIGITS.images))
  train_lib.train(cfg, DIGITS.images, DIGITS.labels, 10, plan)
  other = dataclasses.replace(cfg, privacy=dataclasses.replace(cfg.privacy,
                                                               l2_norm_clip=1.0))
  with pytest.raises(ValueError, match="l2_norm_clip"):
    train_lib.train(other, DIGITS.images, DIGITS.labels, 10, accounting.plan_privacy(other, 1438))


def test_ema_update_matches_the_hand_derived_average():
  cfg = tiny_config(optim=config_lib.OptimConfig(ema_decay=0.999))
  gen = trainer.make_generator(cfg, DIGITS.image_shape, 10, build=True)
  ema = trainer.make_ema_generator(cfg, gen)
  model = trainer.DPSinkhornModel(gen, DIGITS.images, DIGITS.labels, 10, cfg, 1.0,
                                  16 / len(DIGITS.images), ema)
  model.compile(optimizer=trainer.build_optimizer(cfg))
  assert model.sampling_generator is ema
  w0 = [v.numpy().copy() for v in gen.variables]
  step = tf.function(model.train_step, autograph=False)
  step(tf.constant(0, tf.int64))
  w1 = [v.numpy().copy() for v in gen.variables]
  # t = 0: d_0 = min(0.999, (1 + 0) / (10 + 0)) = 0.1, so ema = 0.1·w0 + 0.9·w1.
  for e, a, b in zip(ema.variables, w0, w1):
    np.testing.assert_allclose(e.numpy(), 0.1 * a + 0.9 * b, rtol=1e-5, atol=1e-6)
  assert any(np.abs(a - b).max() > 0 for a, b in zip(w0, w1))
  step(tf.constant(1, tf.int64))
  w2 = [v.numpy() for v in gen.variables]
  # t = 1: d_1 = 2/11, so ema = (2/11)·(0.1·w0 + 0.9·w1) + (9/11)·w2.
  for e, a, b, c in zip(ema.variables, w0, w1, w2):
    np.testing.assert_allclose(e.numpy(), 2 / 11 * (0.1 * a + 0.9 * b) + 9 / 11 * c,
                               rtol=1e-5, atol=1e-6)


def test_fake_batch_size_decouples_n_from_the_poisson_batch():
  cfg = tiny_config(fake_batch_size=4)
  assert cfg.num_primary == 4 and cfg.num_generated == 4 + 1  # n′ = ⌊0.4·4⌋ = 1
  model = build_model(cfg)
  z, labels = model.latent_batch(tf.constant(0, tf.int64))
  assert z.shape[0] == 5 and labels.shape[0] == 5
  # q still follows B = 16, not n.
  assert accounting.plan_privacy(cfg, 1438).sample_rate == pytest.approx(16 / 1438)
  logs = tf.function(model.train_step, autograph=False)(tf.constant(0, tf.int64))
  # noise std 2σC = 1 on the 4 × 64 private rows only: norm ≈ √256 = 16.
  assert 10 < float(logs["noised_grad_norm"]) < 22


def test_sgd_uses_beta_1_as_momentum():
  cfg = tiny_config(optim=config_lib.OptimConfig(optimizer="sgd", learning_rate=1e-4,
                                                 beta_1=0.9))
  opt = trainer.build_optimizer(cfg)
  assert isinstance(opt, tf.keras.optimizers.SGD)
  assert opt.get_config()["momentum"] == pytest.approx(0.9)
  assert float(opt.learning_rate) == pytest.approx(1e-4)


@pytest.mark.parametrize("step,class_matching", [(0, False), (5, False), (5, True)])
def test_xla_path_with_padded_bucket_matches_the_plain_loss_and_image_gradient(
    step, class_matching):
  base = tiny_config(privacy=config_lib.PrivacyConfig(dp=False), steps=5)
  base = dataclasses.replace(base, loss=dataclasses.replace(base.loss,
                                                            class_matching=class_matching))
  plain_cfg = dataclasses.replace(base, loss=dataclasses.replace(base.loss, jit_compile=False))
  jit_cfg = dataclasses.replace(base, loss=dataclasses.replace(base.loss, jit_compile=True))
  plain, jit = build_model(plain_cfg, sigma=0.0), build_model(jit_cfg, sigma=0.0)
  jit.generator.set_weights(plain.generator.get_weights())
  s = tf.constant(step, tf.int64)
  real, real_labels = plain.private_batch(s)
  z, fake_labels = plain.latent_batch(s)
  fake = plain.generator([z, fake_labels], training=False)
  with tf.GradientTape() as tape:
    tape.watch(fake)
    loss, _ = plain.sinkhorn_loss(fake, fake_labels, real, real_labels)
  grad = tape.gradient(loss, fake)
  # The Poisson batch (≈16 records) is padded to 16 or 32 rows of which the extra weigh 0.
  jit_loss, jit_grad, _ = tf.function(jit._compiled_loss_and_image_grad, autograph=False)(
      fake, fake_labels, real, real_labels)
  np.testing.assert_allclose(float(jit_loss), float(loss), rtol=1e-4)
  # float32 reassociation under XLA: equal up to 1e-3 of the largest entry.
  scale = np.abs(grad.numpy()).max()
  np.testing.assert_allclose(jit_grad.numpy(), grad.numpy(), rtol=1e-3, atol=1e-3 * scale)
  assert np.abs(grad.numpy()).max() > 0


def test_xla_path_handles_an_empty_poisson_batch():
  cfg = tiny_config(privacy=config_lib.PrivacyConfig(dp=False), steps=5)
  model = build_model(cfg, sigma=0.0)
  z, fake_labels = model.latent_batch(tf.constant(0, tf.int64))
  fake = model.generator([z, fake_labels], training=False)
  empty = tf.zeros([0, 8, 8, 1])
  loss, grad, _ = tf.function(model._compiled_loss_and_image_grad, autograph=False)(
      fake, fake_labels, empty, tf.zeros([0], tf.int32))
  # No private data: the cross term is 0, so L = −W(X[0:n], X[n′:n+n′]), finite.
  assert np.isfinite(float(loss)) and np.isfinite(grad.numpy()).all()
  # The private rows' gradient comes from the self-term alone here.
  assert grad.shape == fake.shape


def _two_runs(tmp_path, **run_overrides):
  results = []
  for name in ("a", "b"):
    run = config_lib.RunConfig(workdir=str(tmp_path / name), log_every=1,
                               sample_every=10**6, checkpoint_every=3, **run_overrides)
    cfg = tiny_config(tmp_path / name, steps=3, run=run, privacy=config_lib.PrivacyConfig(
        noise_multiplier=1.0, target_epsilon=10.0))
    results.append(train_lib.train(cfg, DIGITS.images, DIGITS.labels, 10,
                                 accounting.plan_privacy(cfg, len(DIGITS.images))))
  return results


def test_the_same_command_in_two_workdirs_releases_different_generators(tmp_path):
  # Same flags, same --seed (same initialisation and latents): only the secret keys differ,
  # and with them the noise and the batches. With the noise a function of --seed, as
  # before, the two generators were identical.
  a, b = _two_runs(tmp_path)
  assert any(np.abs(x - y).max() > 0 for x, y in zip(_weights(a), _weights(b)))
  assert a.identity.run_id != b.identity.run_id
  run_keys = [keys.read_key_file(str(tmp_path / n / rundir.KEY_FILE)) for n in "ab"]
  assert not run_keys[0].same_secret(run_keys[1])


def test_the_same_key_file_reproduces_a_run_exactly(tmp_path):
  key_file = tmp_path / "owner.key"
  keys.write_key_file(str(key_file), keys.generate())
  a, b = _two_runs(tmp_path, privacy_key_file=str(key_file))
  for x, y in zip(_weights(a), _weights(b)):
    np.testing.assert_array_equal(x, y)


def test_batches_and_noise_follow_the_key_not_the_seed():
  key = keys.generate()
  step = tf.constant(4, tf.int64)
  m0 = build_model(tiny_config(), key=key)
  m1 = build_model(tiny_config(run=config_lib.RunConfig(seed=1)), key=key)
  m2 = build_model(tiny_config(), key=keys.generate())
  np.testing.assert_array_equal(m0.private_batch(step)[1].numpy(),
                                m1.private_batch(step)[1].numpy())
  np.testing.assert_array_equal(m0.noise_seed(step).numpy(), m1.noise_seed(step).numpy())
  assert not np.array_equal(m0.noise_seed(step).numpy(), m2.noise_seed(step).numpy())
  assert (m0.private_batch(step)[1].shape != m2.private_batch(step)[1].shape or
          not np.array_equal(m0.private_batch(step)[1].numpy(),
                             m2.private_batch(step)[1].numpy()))
  # The public latents do follow --seed.
  assert not np.array_equal(m0.latent_batch(step)[0].numpy(), m1.latent_batch(step)[0].numpy())


def test_noise_seeds_never_repeat_across_steps_or_streams():
  key = keys.generate()
  seeds = {tuple(keys.step_seed(key, t, s).numpy())
           for t in range(2000) for s in (keys.STREAM_BATCH, keys.STREAM_NOISE)}
  assert len(seeds) == 4000


def test_class_matching_changes_the_loss_and_leaves_public_rows_data_free():
  base = tiny_config(privacy=config_lib.PrivacyConfig(dp=False), steps=5)
  cfg = dataclasses.replace(base, loss=dataclasses.replace(base.loss, class_matching=True))
  model, uniform = build_model(cfg, sigma=0.0), build_model(base, sigma=0.0)
  uniform.generator.set_weights(model.generator.get_weights())
  z, fake_labels = model.latent_batch(tf.constant(3, tf.int64))
  fake = model.generator([z, fake_labels], training=False)
  grads, losses = [], []
  for step in (3, 4):  # two different Poisson batches
    real, real_labels = model.private_batch(tf.constant(step, tf.int64))
    with tf.GradientTape() as tape:
      tape.watch(fake)
      loss, _ = model.sinkhorn_loss(fake, fake_labels, real, real_labels)
    grads.append(tape.gradient(loss, fake).numpy())
    losses.append(float(loss))
  n = cfg.num_primary
  np.testing.assert_array_equal(grads[0][n:], grads[1][n:])
  assert np.abs(grads[0][:n] - grads[1][:n]).max() > 0
  real, real_labels = model.private_batch(tf.constant(4, tf.int64))
  plain, _ = uniform.sinkhorn_loss(fake, fake_labels, real, real_labels)
  assert abs(float(plain) - losses[1]) > 1e-3


def test_label_names_must_name_every_class(tmp_path):
  cfg = tiny_config(tmp_path, steps=1, privacy=config_lib.PrivacyConfig(
      noise_multiplier=1.0, target_epsilon=10.0))
  plan = accounting.plan_privacy(cfg, len(DIGITS.images))
  with pytest.raises(ValueError, match="3 label_names for 10 classes"):
    train_lib.train(cfg, DIGITS.images, DIGITS.labels, 10, plan, label_names=["a", "b", "c"])
  # Checked before anything is written: no ledger, no checkpoint.
  assert not os.path.exists(os.path.join(tmp_path, rundir.LEDGER_FILE))


# ---- provenance and release hygiene -------------------------------------------------------

def _dp_cfg(workdir, steps=3, **run):
  run = {"log_every": 1, "sample_every": 10**6, "checkpoint_every": 3, **run}
  return tiny_config(workdir, steps=steps, privacy=config_lib.PrivacyConfig(
      noise_multiplier=1.0, target_epsilon=10.0),
      run=config_lib.RunConfig(workdir=str(workdir), **run))


def _train(cfg, images=DIGITS.images, labels=DIGITS.labels):
  return train_lib.train(cfg, images, labels, 10, accounting.plan_privacy(cfg, len(images)))


def test_nodp_and_dp_runs_never_share_a_workdir(tmp_path):
  nodp = tiny_config(tmp_path, steps=3, privacy=config_lib.PrivacyConfig(dp=False))
  _train(nodp)
  # Before: the DP command restored the 3 non-private steps and stamped ε on them.
  with pytest.raises(provenance.ProvenanceError, match="holds a --nodp run"):
    _train(_dp_cfg(tmp_path))
  assert not os.path.exists(tmp_path / rundir.LEDGER_FILE)
  dp_dir = tmp_path / "dp"
  _train(_dp_cfg(dp_dir, steps=6))
  with pytest.raises(provenance.ProvenanceError, match="holds a DP run"):
    _train(tiny_config(dp_dir, steps=3, privacy=config_lib.PrivacyConfig(dp=False)))


def test_a_missing_ledger_beside_a_checkpoint_is_refused_never_restarted(tmp_path):
  cfg = _dp_cfg(tmp_path, steps=6)
  plan = accounting.plan_privacy(cfg, len(DIGITS.images))
  with pytest.raises(_Crash):
    train_lib.train(cfg, DIGITS.images, DIGITS.labels, 10, plan,
                  on_log=_crash_at(4))
  os.remove(tmp_path / rundir.LEDGER_FILE)
  with pytest.raises(provenance.ProvenanceError, match="privacy_ledger.json: missing"):
    _train(cfg)
  # Also without run.json: checkpoints that no identity vouches for are refused.
  os.remove(tmp_path / rundir.IDENTITY_FILE)
  with pytest.raises(provenance.ProvenanceError, match="checkpoints without run.json"):
    _train(cfg)


def test_a_checkpoint_of_another_run_is_never_restored(tmp_path):
  a, b = _dp_cfg(tmp_path / "a", steps=6), _dp_cfg(tmp_path / "b", steps=6)
  _train(a)
  with pytest.raises(_Crash):
    train_lib.train(b, DIGITS.images, DIGITS.labels, 10, accounting.plan_privacy(b, 1438),
                  on_log=_crash_at(4))
  # Swap b's checkpoints for a's (same plan, same architecture): refused by run id.
  import shutil
  shutil.rmtree(tmp_path / "b" / "checkpoints")
  shutil.copytree(tmp_path / "a" / "checkpoints", tmp_path / "b" / "checkpoints")
  with pytest.raises(provenance.ProvenanceError, match="written by run .*not by this"):
    _train(b)


def test_a_resume_on_different_private_data_is_refused(tmp_path):
  cfg = _dp_cfg(tmp_path, steps=6)
  with pytest.raises(_Crash):
    train_lib.train(cfg, DIGITS.images, DIGITS.labels, 10, accounting.plan_privacy(cfg, 1438),
                  on_log=_crash_at(4))
  # D′: one record replaced (same N, same plan): the same key would give the same noise on
  # other data, and two releases with equal noise differ by a noise-free quantity.
  images = DIGITS.images.copy()
  images[17] = -images[17]
  with pytest.raises(provenance.ProvenanceError, match="private data differ"):
    _train(cfg, images=images)


def test_a_resume_checks_every_flag_that_shapes_the_release_and_only_those(tmp_path):
  cfg = _dp_cfg(tmp_path, steps=6)
  with pytest.raises(_Crash):
    train_lib.train(cfg, DIGITS.images, DIGITS.labels, 10, accounting.plan_privacy(cfg, 1438),
                    on_log=_crash_at(4))
  ledger_path = tmp_path / rundir.LEDGER_FILE
  stored = json.loads(ledger_path.read_text())
  assert stored["gradient_flags"]["learning_rate"] == 1e-3
  assert stored["gradient_flags"]["noise_multiplier"] == 1.0
  assert stored["gradient_flags"]["steps"] == 6
  assert "workdir" not in stored["gradient_flags"]  # allow-listed (config.NOT_SHAPING)
  before = ledger_path.read_bytes()

  def opened(run):
    return provenance.open_run(run, accounting.plan_privacy(run, 1438), DIGITS.images,
                               DIGITS.labels, num_classes=10)

  # Flags that write, save or name things differently: the same run.
  moved = dataclasses.replace(cfg, run=dataclasses.replace(
      cfg.run, log_every=2, sample_every=5, checkpoint_every=2, keep_checkpoints=1,
      export=False, model_name="other", if_finished="skip"))
  assert not opened(moved).created
  # The public seed (latents, labels, initialisation) and a solver setting no flag sets:
  # both named, in one line, by flag or by config path.
  other = dataclasses.replace(
      cfg, run=dataclasses.replace(cfg.run, seed=1),
      loss=dataclasses.replace(cfg.loss, solver=dataclasses.replace(cfg.loss.solver,
                                                                    compile_solver=True)))
  with pytest.raises(provenance.ProvenanceError) as info:
    opened(other)
  message = str(info.value)
  assert "\n" not in message and message.startswith(f"--workdir={tmp_path}: ")
  assert ("(loss.solver.compile_solver: false then, true now; --seed: 0 then, 1 now)"
          in message)
  assert ledger_path.read_bytes() == before

  # An earlier version's ledger (no gradient flags): refused, not guessed.
  old = dict(stored)
  del old["gradient_flags"], old["gradient_flags_sha256"]
  ledger_path.write_text(json.dumps(old))
  with pytest.raises(provenance.ProvenanceError, match="records no flags .* earlier version"):
    opened(cfg)
  # Flags edited in the ledger (to let another command through): their hash gives it away.
  edited = json.loads(before)
  edited["gradient_flags"]["learning_rate"] = 0.01
  ledger_path.write_text(json.dumps(edited))
  with pytest.raises(provenance.ProvenanceError, match="do not match their SHA-256"):
    opened(dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, learning_rate=0.01)))
  ledger_path.write_bytes(before)
  assert _train(moved).ledger.steps_taken == 6  # and the allowed changes train on


def test_the_key_stays_in_its_owner_only_file_and_nowhere_else(tmp_path):
  cfg = _dp_cfg(tmp_path, steps=3)
  cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, sample_every=2))
  _train(cfg)
  key_path = tmp_path / rundir.KEY_FILE
  assert (os.stat(key_path).st_mode & 0o777) == 0o600
  key = keys.read_key_file(str(key_path))
  needles = [f"{w:016x}".encode() for w in key.words] + [str(w).encode() for w in key.words]
  for dirpath, _, files in os.walk(tmp_path):
    for name in files:
      path = os.path.join(dirpath, name)
      if path == str(key_path):
        continue
      blob = open(path, "rb").read()
      assert not any(n in blob for n in needles), path


def test_private_diagnostics_are_kept_apart_from_publishable_summaries(tmp_path):
  _train(_dp_cfg(tmp_path, steps=3))
  from tensorboard.backend.event_processing import event_accumulator

  def tags(folder):
    acc = event_accumulator.EventAccumulator(str(folder), size_guidance={"tensors": 0})
    acc.Reload()
    return set(acc.Tags()["tensors"])

  public = tags(tmp_path / rundir.TENSORBOARD_DIR)
  private = tags(tmp_path / rundir.PRIVATE_DIR / "tensorboard")
  assert {"epsilon", "noised_grad_norm", "samples"} <= public
  assert not public & {"loss", "clean_grad_norm", "sinkhorn_iterations", "marginal_error",
                       "real_batch_size"}
  assert {"loss", "clean_grad_norm", "real_batch_size"} <= private
  assert "DO NOT PUBLISH" in (tmp_path / rundir.PRIVATE_DIR / rundir.DO_NOT_PUBLISH).read_text()


def test_privacy_report_states_the_unit_and_whether_the_run_is_private(tmp_path):
  _train(_dp_cfg(tmp_path / "secret"))
  report = json.load(open(tmp_path / "secret" / rundir.REPORT_FILE))
  assert report["private"] is True and "private_reason" not in report
  assert "one record" in report["unit_of_privacy"] and "13 writers" in report["unit_of_privacy"]
  assert "data_fingerprint" not in report["ledger"]
  assert report["neighbouring_relation"] == accounting.NEIGHBOURING_RELATION
  assert "gradient_flags" not in report["ledger"]  # flags.txt publishes the flags
  _train(_dp_cfg(tmp_path / "fixed", insecure_fixed_key=True))
  report = json.load(open(tmp_path / "fixed" / rundir.REPORT_FILE))
  assert report["private"] is False and "insecure_fixed_key" in report["private_reason"]
  assert report["key_source"] == keys.SOURCE_INSECURE


def test_insecure_fixed_key_is_reproducible_from_the_seed(tmp_path):
  a = _train(_dp_cfg(tmp_path / "a", insecure_fixed_key=True))
  b = _train(_dp_cfg(tmp_path / "b", insecure_fixed_key=True))
  for x, y in zip(_weights(a), _weights(b)):
    np.testing.assert_array_equal(x, y)
  with pytest.raises(provenance.ProvenanceError, match="insecure_fixed_key"):
    _train(_dp_cfg(tmp_path / "a", steps=3))  # a run keeps its key source


def test_stop_checkpoints_mid_chunk_and_a_resume_continues_from_there(tmp_path):
  cfg = _dp_cfg(tmp_path, steps=9)
  plan = accounting.plan_privacy(cfg, len(DIGITS.images))
  calls = []

  def stop():
    calls.append(1)
    return len(calls) >= 4  # polled after each step: stop after step 4 (chunk [3, 6))

  with pytest.raises(train_lib.Interrupted, match="stopped at step 4 of 9") as info:
    train_lib.train(cfg, DIGITS.images, DIGITS.labels, 10, plan, stop=stop)
  assert info.value.step == 4
  ledger = accounting.PrivacyLedger.load(os.path.join(tmp_path, rundir.LEDGER_FILE))
  assert (ledger.steps_taken, ledger.checkpoint_step) == (6, 4)
  seen = []
  train_lib.train(cfg, DIGITS.images, DIGITS.labels, 10, plan,
                on_log=lambda s, t, logs: seen.append(s))
  assert seen == list(range(5, 10))


def test_diverged_weights_stop_the_run_without_saving_them(tmp_path, monkeypatch):
  cfg = _dp_cfg(tmp_path, steps=9)
  plan = accounting.plan_privacy(cfg, len(DIGITS.images))

  def poisoned_ema(self, step):  # the weights turn NaN in step index 4 (the 5th step)
    v = self.generator.variables[0]
    v.assign(tf.where(step == 4, tf.fill(tf.shape(v), np.nan), v))

  monkeypatch.setattr(trainer.DPSinkhornModel, "update_ema", poisoned_ema)
  with pytest.raises(train_lib.DivergedError, match="step 5: .*NaN or inf.*checkpoint: step 3"):
    train_lib.train(cfg, DIGITS.images, DIGITS.labels, 10, plan)
  ckpt = tf.train.latest_checkpoint(os.path.join(tmp_path, "checkpoints"))
  assert ckpt.endswith("ckpt-3")
  ledger = accounting.PrivacyLedger.load(os.path.join(tmp_path, rundir.LEDGER_FILE))
  assert (ledger.steps_taken, ledger.checkpoint_step) == (6, 3)
  for name, _ in tf.train.list_variables(ckpt):
    value = tf.train.load_variable(ckpt, name)
    if name.startswith("generator/"):
      assert np.all(np.isfinite(value)), name


# ---- many steps per call of the compiled loop (trainer.multi_step_function) -------------

def _optimizer_variables(model):
  found = model.optimizer.variables
  return found() if callable(found) else found  # legacy (param_grad) optimizers: a method


@pytest.mark.parametrize("mechanism", ["image_grad", "param_grad"])
def test_k_steps_in_one_call_are_k_single_steps_bit_for_bit(mechanism):
  # Each step of the loop keys its batch and noise (param_grad: the DPQuery's seed through
  # noise_seed_now) by its own index, so calls of 2 + 3 steps give the weights, EMA,
  # optimizer state and metrics of 5 single steps, bit for bit.
  cfg = tiny_config(
      privacy=config_lib.PrivacyConfig(noise_multiplier=1.0, target_epsilon=10.0,
                                       mechanism=mechanism),
      optim=config_lib.OptimConfig(ema_decay=0.99 if mechanism == "image_grad" else 0.0))
  plan = accounting.plan_privacy(cfg, len(DIGITS.images))
  key = keys.generate()
  strategy = tf.distribute.get_strategy()
  single, _ = trainer.build_model(cfg, DIGITS.images, DIGITS.labels, 10, plan, key)
  one_step = trainer.step_function(single, strategy)
  for t in range(5):
    logs = one_step(tf.constant(t, tf.int64))
  looped, step = trainer.build_model(cfg, DIGITS.images, DIGITS.labels, 10, plan, key)
  run = trainer.multi_step_function(looped, strategy, step)
  state = run(3, run(2, trainer.initial_loop_state()))
  assert int(step.numpy()) == 5
  values = dict(zip(trainer.LOOP_STATE, state.numpy().tolist()))
  expected = {k: float(v) for k, v in logs.items()}
  # param_grad's clean norm, a private diagnostic beside the update (the DP optimizer takes
  # its own gradients), may be summed in another order inside the loop: its last bit may
  # differ for some keys. Everything released or updated is bit for bit.
  assert values.pop("clean_grad_norm") == pytest.approx(expected.pop("clean_grad_norm"),
                                                        rel=1e-6)
  assert values == expected
  mine, theirs = (m.variables + _optimizer_variables(m) for m in (looped, single))
  assert len(mine) == len(theirs) > 10
  for a, b in zip(mine, theirs):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


class _Watched:
  """The loop's state as the loop sees it in the test below: reading it is recorded."""

  def __init__(self, tensor, reads, step):
    self.tensor, self._reads, self._step = tensor, reads, step

  def numpy(self):
    self._reads.append(self._step)
    return self.tensor.numpy()


def _watch_calls(monkeypatch, start=0):
  """Wraps trainer.multi_step_function: records (steps reached after each call) and (steps
  at which the loop read the returned state); any other use of the state fails."""
  calls, reads = [], []
  real = trainer.multi_step_function

  def watched_function(model, strategy, step_var):
    run = real(model, strategy, step_var)

    def call(num_steps, state):
      if isinstance(state, _Watched):
        state = state.tensor
      calls.append((calls[-1] if calls else start) + num_steps)
      return _Watched(run(num_steps, state), reads, calls[-1])

    return call

  monkeypatch.setattr(trainer, "multi_step_function", watched_function)
  return calls, reads


def test_the_loop_reads_the_device_only_at_log_sample_and_checkpoint_points(tmp_path,
                                                                            monkeypatch):
  # log points 4, 8, 12, 14; sample points 5, 10; chunk ends 6, 12, 14. Whatever the
  # calls, the state is read there and only there, and every K trains the same steps.
  expected_calls = {
      None: [4, 5, 6, 8, 10, 12, 14],       # to the next log, sample or checkpoint point
      3: [3, 4, 5, 6, 8, 10, 12, 14],       # at most 3: the call ending at 3 is not read
      1: list(range(1, 15)),
  }
  weights, ledgers = {}, {}
  for k, expected in expected_calls.items():
    cfg = _dp_cfg(tmp_path / str(k), steps=14, insecure_fixed_key=True, log_every=4,
                  sample_every=5, checkpoint_every=6, steps_per_call=k)
    with monkeypatch.context() as patch:
      calls, reads = _watch_calls(patch)
      logged = []
      result = train_lib.train(cfg, DIGITS.images, DIGITS.labels, 10,
                               accounting.plan_privacy(cfg, len(DIGITS.images)),
                               on_log=lambda s, t, logs: logged.append(s))
    assert calls == expected
    assert reads == [4, 5, 6, 8, 10, 12, 14]
    assert logged == [4, 8, 12, 14]
    assert (result.calls, result.reads, result.steps_run) == (len(calls), len(reads), 14)
    assert set(result.final_logs) == set(trainer.STEP_METRICS) | {"epsilon"}
    weights[k] = _weights(result)
    ledger = json.loads((tmp_path / str(k) / rundir.LEDGER_FILE).read_text())
    ledgers[k] = {f: v for f, v in ledger.items() if f != "run_id"}
  for k in (3, 1):
    assert ledgers[k] == ledgers[None]
    for a, b in zip(weights[k], weights[None]):
      np.testing.assert_array_equal(a, b)


def test_between_log_points_the_loop_makes_no_host_round_trip(tmp_path, monkeypatch):
  # Unset --steps_per_call: one call and one read per log interval, none in between.
  cfg = _dp_cfg(tmp_path, steps=21, log_every=7, sample_every=10**6, checkpoint_every=100)
  calls, reads = _watch_calls(monkeypatch)
  result = _train(cfg)
  assert calls == reads == [7, 14, 21]
  assert result.calls - result.reads == 0  # returns to Python between log points


def test_a_stop_takes_effect_at_the_end_of_a_call_inside_the_chunk(tmp_path, monkeypatch):
  cfg = _dp_cfg(tmp_path, steps=12, log_every=4, checkpoint_every=100)
  plan = accounting.plan_privacy(cfg, len(DIGITS.images))
  calls, _ = _watch_calls(monkeypatch)
  with pytest.raises(train_lib.Interrupted, match="stopped at step 4 of 12"):
    train_lib.train(cfg, DIGITS.images, DIGITS.labels, 10, plan, stop=lambda: True)
  assert calls == [4]
  ledger = accounting.PrivacyLedger.load(os.path.join(tmp_path, rundir.LEDGER_FILE))
  assert (ledger.steps_taken, ledger.checkpoint_step) == (12, 4)


def test_weights_that_diverge_inside_a_call_end_it_and_name_their_step(tmp_path, monkeypatch):
  cfg = _dp_cfg(tmp_path, steps=9, log_every=8, checkpoint_every=8)
  plan = accounting.plan_privacy(cfg, len(DIGITS.images))

  def poisoned_ema(self, step):  # the weights turn NaN in step index 4 (the 5th step)
    v = self.generator.variables[0]
    v.assign(tf.where(step == 4, tf.fill(tf.shape(v), np.nan), v))

  monkeypatch.setattr(trainer.DPSinkhornModel, "update_ema", poisoned_ema)
  calls, reads = _watch_calls(monkeypatch)
  with pytest.raises(train_lib.DivergedError, match="step 5: .*NaN or inf.*checkpoint: step 0"):
    train_lib.train(cfg, DIGITS.images, DIGITS.labels, 10, plan)
  assert calls == reads == [8]  # the call stopped after step 5; the read at 8 saw it
  assert tf.train.latest_checkpoint(os.path.join(tmp_path, "checkpoints")) is None
  ledger = accounting.PrivacyLedger.load(os.path.join(tmp_path, rundir.LEDGER_FILE))
  assert (ledger.steps_taken, ledger.checkpoint_step) == (8, 0)


# ---- the private set as uint8, and groups as the unit of privacy ------------------------

def test_uint8_pixels_give_the_float_models_batches_bit_for_bit():
  # The set stays uint8 on the device and each batch is scaled as drawn: the same batch,
  # value for value, as the float32 set gave (and 4× less memory).
  cfg = tiny_config()
  key = keys.generate()
  gen = trainer.make_generator(cfg, DIGITS.image_shape, 10)
  as_float = trainer.DPSinkhornModel(gen, DIGITS.images, DIGITS.labels, 10, cfg, 1.0,
                                     16 / 1438, key=key)
  as_uint8 = trainer.DPSinkhornModel(gen, DIGITS.pixels, DIGITS.labels, 10, cfg, 1.0,
                                     16 / 1438, key=key, pixel_max=DIGITS.pixel_max)
  assert as_uint8._images.dtype == tf.uint8
  for step in range(3):
    x, y = as_float.private_batch(tf.constant(step, tf.int64))
    u, v = as_uint8.private_batch(tf.constant(step, tf.int64))
    assert x.dtype == u.dtype == tf.float32 and len(x) > 0
    np.testing.assert_array_equal(x.numpy(), u.numpy())
    np.testing.assert_array_equal(y.numpy(), v.numpy())
  with pytest.raises(ValueError, match="uint8 with pixel_max"):
    trainer.DPSinkhornModel(gen, DIGITS.pixels, DIGITS.labels, 10, cfg, 1.0, 0.01)


def group_config(max_per_group, batch_size, **overrides):
  data = config_lib.DataConfig(dataset=None, source="npz:groups.npz", privacy_unit="group",
                               max_per_group=max_per_group)
  return tiny_config(data=data, batch_size=batch_size, **overrides)


def group_model(groups, max_per_group, sample_rate, key, sigma=1.0, cfg=None, pixels=None,
                labels=None):
  groups = np.asarray(groups, np.int64)
  n = len(groups)
  cfg = cfg or group_config(max_per_group, 1)
  pixels = pixels if pixels is not None else (np.arange(n) % 256).astype(np.uint8)[
      :, None, None, None].repeat(8, 1).repeat(8, 2)
  labels = labels if labels is not None else np.zeros(n, np.int32)
  gen = trainer.make_generator(cfg, pixels.shape[1:], int(labels.max()) + 1)
  return trainer.DPSinkhornModel(gen, pixels, labels, int(labels.max()) + 1, cfg, sigma,
                                 sample_rate, key=key, pixel_max=255, groups=groups)


def test_groups_are_poisson_sampled_and_give_at_most_m_keyed_records():
  # 5 groups of sizes 1, 2, 6, 6, 12; record i has pixel value i, so a batch names its
  # records. m = 3.
  sizes = [1, 2, 6, 6, 12]
  groups = np.repeat(np.arange(5), sizes)
  rng = np.random.default_rng(0)
  groups = groups[rng.permutation(len(groups))]  # records of a group need not be adjacent
  key = keys.generate()
  model = group_model(groups, 3, 0.5, key)
  assert model._dataset_size == 5  # the Poisson sample is over groups
  seen_in_big = np.zeros(len(groups))
  steps = 300
  for step in range(steps):
    t = tf.constant(step, tf.int64)
    idx = model.private_indices(t).numpy()
    # Which groups: exactly the keyed Poisson sample over the 5 groups.
    sampled = sampling_of(key, t, 5, 0.5)
    assert set(groups[idx]) == set(sampled.tolist())
    counts = np.bincount(groups[idx], minlength=5)
    for g in sampled:
      assert counts[g] == min(3, sizes[g])  # all of a small group, m of a big one
    assert len(set(idx.tolist())) == len(idx)  # no record twice
    images, _ = model.private_batch(t)
    np.testing.assert_array_equal(  # the images are the records' own
        images.numpy()[:, 0, 0, 0], (idx.astype(np.float32) - 127.5) / 127.5)
    seen_in_big[idx] += 1
  # Each record of the 12-group is taken with probability q·m/12 = 0.125 a step.
  big = np.flatnonzero(groups == 4)
  freq = seen_in_big[big] / steps
  assert abs(freq.mean() - 0.125) < 0.03 and freq.min() > 0.05 and freq.max() < 0.2
  # The same key and step give the same batch; another key another one.
  again = group_model(groups, 3, 0.5, key)
  other = group_model(groups, 3, 0.5, keys.generate())
  t = tf.constant(7, tf.int64)
  np.testing.assert_array_equal(again.private_indices(t), model.private_indices(t))
  assert not all(np.array_equal(other.private_indices(tf.constant(s, tf.int64)),
                                model.private_indices(tf.constant(s, tf.int64)))
                 for s in range(5))


def sampling_of(key, step, n, q):
  from dp_sinkhorn_tf.privacy import sampling
  return sampling.poisson_sample_indices(keys.step_seed(key, step, keys.STREAM_BATCH), n,
                                         q).numpy()


def test_the_group_subset_follows_the_key_not_the_seed():
  groups = np.zeros(20, np.int64)  # one group of 20, m = 4, always sampled
  key = keys.generate()
  a = group_model(groups, 4, 1.0, key, cfg=group_config(4, 1))
  b = group_model(groups, 4, 1.0, key, cfg=group_config(
      4, 1, run=config_lib.RunConfig(seed=99)))
  t = tf.constant(3, tf.int64)
  np.testing.assert_array_equal(a.private_indices(t), b.private_indices(t))
  assert len(a.private_indices(t)) == 4
  # Another step, another subset (keyed by the step too).
  assert any(not np.array_equal(a.private_indices(tf.constant(s, tf.int64)),
                                a.private_indices(t)) for s in range(4, 8))


def test_one_whole_group_moves_the_released_block_by_at_most_two_c():
  # Neighbouring data sets D′ = D + group g, g holding 24 copies of an image far from the
  # rest. Every group is sampled (q = 1), g gives all its records (m = 24), the noise is off:
  # the released blocks differ by the clip alone. Their clean gradients differ by far more
  # than 2C, so a clip per record (summed) could not have held the bound.
  c = 0.01
  privacy = config_lib.PrivacyConfig(noise_multiplier=1.0, l2_norm_clip=c)
  cfg = group_config(24, 4, privacy=privacy,
                     loss=config_lib.LossConfig(cost="l2", jit_compile=False,
                                                solver=sinkhorn.SinkhornConfig(epsilon=0.5)))
  rng = np.random.default_rng(1)
  base = rng.integers(0, 60, (8, 8, 8, 1)).astype(np.uint8)  # 4 groups of 2, dark images
  base_groups = np.repeat(np.arange(4), 2)
  far = np.full((24, 8, 8, 1), 255, np.uint8)  # group g: 24 white images
  pixels_d2 = np.concatenate([base, far])
  groups_d2 = np.concatenate([base_groups, np.full(24, 4)])
  labels_d, labels_d2 = np.zeros(8, np.int32), np.zeros(32, np.int32)
  key = keys.generate()
  d = group_model(base_groups, 24, 1.0, key, sigma=0.0, cfg=cfg, pixels=base,
                  labels=labels_d)
  d2 = group_model(groups_d2, 24, 1.0, key, sigma=0.0, cfg=cfg, pixels=pixels_d2,
                   labels=labels_d2)
  d2.generator.set_weights(d.generator.get_weights())
  clean_cfg = dataclasses.replace(cfg, privacy=config_lib.PrivacyConfig(dp=False), steps=1)
  clean_d = group_model(base_groups, 24, 1.0, key, sigma=0.0, cfg=clean_cfg, pixels=base,
                        labels=labels_d)
  clean_d2 = group_model(groups_d2, 24, 1.0, key, sigma=0.0, cfg=clean_cfg, pixels=pixels_d2,
                         labels=labels_d2)
  worst, clean_gap = 0.0, np.inf
  for step in range(3):
    t = tf.constant(step, tf.int64)
    assert len(d2.private_indices(t)) == len(d.private_indices(t)) + 24  # all of g, too
    z, fake_labels = d.latent_batch(t)
    fake = d.generator([z, fake_labels], training=False)
    released = [m.released_image_gradient(fake, fake_labels, t)[0].numpy()
                for m in (d, d2, clean_d, clean_d2)]
    worst = max(worst, np.linalg.norm(released[0] - released[1]))
    clean_gap = min(clean_gap, np.linalg.norm(released[2][:4] - released[3][:4]))
  assert worst <= 2 * c * (1 + 1e-5)
  assert clean_gap > 10 * 2 * c  # without the whole-block clip the group would show

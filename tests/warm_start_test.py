"""Tests for dp_sinkhorn_tf.train.warm_start: the warm start's release charged write-ahead,
kept in the workdir, never charged twice; a kill between the release and the first
DP-Sinkhorn step, then a resume."""

import dataclasses
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from dp_sinkhorn_tf.data import datasets
from dp_sinkhorn_tf.io import rundir
from dp_sinkhorn_tf.privacy import accounting, class_means, mean_embedding
from dp_sinkhorn_tf.train import config as config_lib
from dp_sinkhorn_tf.train import fit_lib, provenance, train_lib, trainer, warm_start
from dp_sinkhorn_tf.transport import sinkhorn

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (60, 4, 4, 1), dtype=np.uint8)
LABELS = RNG.integers(0, 2, 60)


class _Crash(Exception):
  pass


def _config(workdir, **privacy):
  fields = dict(noise_multiplier=1.0, target_epsilon=4.0, warm_start="class_means",
                warm_start_resolution=2)
  fields.update(privacy)
  return config_lib.TrainConfig(
      batch_size=4, steps=6, privacy=config_lib.PrivacyConfig(**fields),
      run=config_lib.RunConfig(workdir=str(workdir), insecure_fixed_key=True))


def _open(cfg, images=IMAGES, labels=LABELS):
  plan = accounting.plan_privacy(cfg, len(images))
  return plan, provenance.open_run(cfg, plan, images, labels, pixel_max=255, num_classes=2)


def _ensure(cfg, plan, state, images=IMAGES, labels=LABELS):
  return warm_start.ensure_release(cfg.run.workdir, plan, state.ledger, state.key, images,
                                   labels, 2, cfg.privacy.warm_start_resolution, 255)


def _stored_ledger(cfg):
  return accounting.PrivacyLedger.load(rundir.path(cfg.run.workdir, rundir.LEDGER_FILE))


def test_the_stage_is_charged_before_the_release_and_a_crash_recomputes_it_uncharged(
    tmp_path, monkeypatch):
  cfg = _config(tmp_path / "run")
  plan, state = _open(cfg)
  assert state.ledger.stages and not state.ledger.stage_charged("warm_start")
  before = state.ledger.epsilon()
  assert before == 0.0
  real_release = class_means.release

  def crash(*args, **kwargs):
    # Write-ahead: when the release is computed, the charge is on disk already.
    assert _stored_ledger(cfg).stage_charged("warm_start")
    raise _Crash()

  monkeypatch.setattr(class_means, "release", crash)
  with pytest.raises(_Crash):
    _ensure(cfg, plan, state)
  charged = _stored_ledger(cfg)
  assert charged.stage_charged("warm_start") and charged.epsilon() > 0
  assert not os.path.exists(rundir.path(cfg.run.workdir, rundir.WARM_START_FILE))
  # The resume after the crash: the same release (a function of key and data), no charge.
  monkeypatch.setattr(class_means, "release", real_release)
  plan, state = _open(cfg)
  released, ledger = _ensure(cfg, plan, state)
  assert ledger == charged == _stored_ledger(cfg)
  other = _config(tmp_path / "uninterrupted")
  plan_b, state_b = _open(other)
  released_b, ledger_b = _ensure(other, plan_b, state_b)
  np.testing.assert_array_equal(released, released_b)
  assert ledger_b.epsilon() == ledger.epsilon()


def test_a_resume_reads_the_file_and_never_releases_or_charges_again(tmp_path, monkeypatch):
  cfg = _config(tmp_path / "run")
  plan, state = _open(cfg)
  released, ledger = _ensure(cfg, plan, state)
  path = rundir.path(cfg.run.workdir, rundir.WARM_START_FILE)
  payload = open(path, "rb").read()

  def must_not_run(*args, **kwargs):
    raise AssertionError("released twice")

  monkeypatch.setattr(class_means, "release", must_not_run)
  plan, state = _open(cfg)
  again, ledger_again = _ensure(cfg, plan, state)
  np.testing.assert_array_equal(again, released)
  assert ledger_again == ledger and open(path, "rb").read() == payload
  # The released images: K × r × r × C in [−1, 1].
  images = warm_start.central_images(released, (4, 4, 1), 2).images
  assert images.shape == (2, 2, 2, 1) and np.abs(images).max() <= 1


def test_a_release_file_the_ledger_never_charged_is_refused(tmp_path):
  cfg = _config(tmp_path / "run")
  plan, state = _open(cfg)
  open(rundir.path(cfg.run.workdir, rundir.WARM_START_FILE), "wb").write(b"x")
  with pytest.raises(provenance.ProvenanceError, match="never charged"):
    _ensure(cfg, plan, state)


def test_a_resolution_that_does_not_divide_the_image_fails_before_the_charge(tmp_path):
  cfg = _config(tmp_path / "run", warm_start_resolution=3)
  plan, state = _open(cfg)
  with pytest.raises(ValueError, match="resolution 3"):
    _ensure(cfg, plan, state)
  assert not _stored_ledger(cfg).stage_charged("warm_start")


def test_a_resume_with_another_share_is_refused(tmp_path):
  cfg = _config(tmp_path / "run")
  plan, state = _open(cfg)
  _ensure(cfg, plan, state)
  with pytest.raises(ValueError, match="warm_start_share|stages"):
    _open(_config(tmp_path / "run", warm_start_share=0.2))


DIGITS = datasets.load_dataset("digits")


def _digits_config(workdir, kind="class_means"):
  return config_lib.TrainConfig(
      batch_size=16, steps=6,
      model=config_lib.ModelConfig(architecture="dcgan", latent_dim=4, embed_dim=2, hidden=4),
      loss=config_lib.LossConfig(cost="l1l2", solver=sinkhorn.SinkhornConfig(
          epsilon=0.5, max_iterations=20)),
      privacy=config_lib.PrivacyConfig(target_epsilon=3.0, warm_start=kind,
                                       warm_start_resolution=4, warm_start_steps=20),
      run=config_lib.RunConfig(workdir=str(workdir), log_every=1, sample_every=10**6,
                               checkpoint_every=3, insecure_fixed_key=True, export=False))


def test_a_kill_between_the_release_and_the_first_step_then_a_resume(tmp_path, monkeypatch):
  """The run dies after the warm-start release, before DP-Sinkhorn step 0 (the model build
  raises); the resume reuses the file, charges nothing again and spends exactly the plan."""
  cfg = _digits_config(tmp_path / "run")
  plan = accounting.plan_privacy(cfg, len(DIGITS.images))
  build = trainer.build_model

  def killed(*args, **kwargs):
    raise _Crash()

  monkeypatch.setattr(trainer, "build_model", killed)
  with pytest.raises(_Crash):
    train_lib.train(cfg, DIGITS.images, DIGITS.labels, 10, plan)
  path = rundir.path(cfg.run.workdir, rundir.WARM_START_FILE)
  payload = open(path, "rb").read()
  after_kill = _stored_ledger(cfg)
  assert after_kill.stage_charged("warm_start") and after_kill.steps_taken == 0
  eps_release = after_kill.epsilon()
  assert eps_release == pytest.approx(plan.stage_epsilons[0], rel=1e-9)

  monkeypatch.setattr(trainer, "build_model", build)
  monkeypatch.setattr(class_means, "release", killed)  # a second release would fail the test
  result = train_lib.train(cfg, DIGITS.images, DIGITS.labels, 10, plan)
  assert result.steps_run == 6 and open(path, "rb").read() == payload
  final = _stored_ledger(cfg)
  assert final.stages == after_kill.stages            # the stage charged once, as planned
  assert final.epsilon() == pytest.approx(plan.epsilon, rel=1e-12) and plan.epsilon <= 3.0
  assert final.epsilon() > eps_release
  # The same ε as a ledger of the same stages that was never interrupted.
  fresh = dataclasses.replace(final, stages=[dict(s, steps_taken=s["steps"])
                                             for s in plan.ledger_stages()])
  assert fresh.epsilon() == final.epsilon()


def _weights(model):
  return [v.numpy() for v in model.variables]


@pytest.mark.parametrize("kind", warm_start.KINDS)
def test_pretraining_is_a_function_of_the_release_alone_and_is_the_step_zero_checkpoint(
    tmp_path, monkeypatch, kind):
  """The run is killed at its first DP-Sinkhorn call; its step-0 checkpoint holds the
  pre-trained generator. Pre-training a fresh generator again from the release file and the
  public flags, with no private data anywhere in reach, gives the same weights; a resume
  restores them instead of pre-training again."""
  cfg = _digits_config(tmp_path / "run", kind)
  plan = accounting.plan_privacy(cfg, len(DIGITS.images))

  def killed(*args, **kwargs):
    raise _Crash()

  monkeypatch.setattr(train_lib.DeviceSteps, "run", killed)
  with pytest.raises(_Crash):
    train_lib.train(cfg, DIGITS.images, DIGITS.labels, 10, plan)
  ckpt_dir = rundir.path(cfg.run.workdir, rundir.CHECKPOINT_DIR)
  latest = tf.train.latest_checkpoint(ckpt_dir)
  assert latest.endswith("-0")
  stored = trainer.make_generator(cfg, DIGITS.image_shape, 10, build=True)
  tf.train.Checkpoint(generator=stored).restore(latest).expect_partial()

  # No private data from here on: the release file and public flags only.
  released = fit_lib.read_release(rundir.path(cfg.run.workdir, rundir.WARM_START_FILE))
  assert released.shape == (10, warm_start.num_entries(kind, DIGITS.image_shape, 4))
  tf.keras.utils.set_random_seed(cfg.run.seed)   # build_model's initialisation
  fresh = trainer.make_generator(cfg, DIGITS.image_shape, 10, build=True)
  initial = _weights(fresh)
  losses = warm_start.pretrain(fresh, released, kind, 4, 20, cfg.run.seed)
  assert losses[-1] < losses[0]
  for got, want, init in zip(_weights(stored), _weights(fresh), initial):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert max(np.abs(a - b).max() for a, b in zip(_weights(fresh), initial)) > 1e-3

  monkeypatch.undo()
  monkeypatch.setattr(warm_start, "pretrain", killed)   # a resume must not fit again
  result = train_lib.train(cfg, DIGITS.images, DIGITS.labels, 10, plan)
  assert result.steps_run == 6


def test_augmented_targets_are_shifted_noisy_upsampled_central_images():
  central = -np.ones((2, 2, 2, 1), np.float32)
  central[1, 0, 0, 0] = 1.0                    # class 1: a white top-left cell
  labels = tf.constant([0, 1, 1], tf.int32)
  out = warm_start.augmented_targets(tf.constant(central), labels, (8, 8, 1),
                                     tf.constant([3, 4], tf.int64)).numpy()
  assert out.shape == (3, 8, 8, 1) and out.min() >= -1 and out.max() <= 1
  assert out[0].mean() < -0.9                  # black stays black (noise, clamped)
  assert out[1, :4, :4].mean() > out[1, 4:, 4:].mean() + 0.5
  again = warm_start.augmented_targets(tf.constant(central), labels, (8, 8, 1),
                                       tf.constant([3, 4], tf.int64)).numpy()
  np.testing.assert_array_equal(out, again)


def test_the_merf_release_is_dp_merfs_class_sums_plus_lattice_noise(tmp_path):
  """--warm_start=merf releases Σ_i e_{y_i} ⊗ [a·φ(x_i), b] (`mean_embedding` (3)) with the
  frequencies of the public --seed: the release minus the exact sums is lattice noise of the
  planned scale (in the noise's units, mean ≈ 0 and std ≈ s·γ)."""
  cfg = _config(tmp_path / "run", warm_start="merf")
  plan, state = _open(cfg)
  released, ledger = warm_start.ensure_release(cfg.run.workdir, plan, state.ledger, state.key,
                                               IMAGES, LABELS, 2, 2, 255, "merf", seed=5)
  assert ledger.stage_charged("warm_start")
  params = warm_start.release_params(plan, (4, 4, 1), 2, "merf")
  # The ledger records what the noise is beside what it is charged as (privacy.json).
  noise = _stored_ledger(cfg).stages[0]["noise"]
  sigma = warm_start.stage_of(plan).noise_multiplier
  assert noise["charged_noise_multiplier"] == sigma and noise["released"] == "merf"
  assert noise["effective_noise_multiplier"] == mean_embedding.effective_noise_multiplier(
      params) >= sigma
  assert noise["entries"] == 2 * params.entries
  assert released.shape == (2, params.entries) == (2, 2 * 5000 + 1)
  exact = mean_embedding.embedding_sum(datasets.scale_to_unit_interval(IMAGES, 255), LABELS,
                                       warm_start.frequencies((4, 4, 1), 5), 2,
                                       warm_start.MERF_RELEASE.count_weight)
  noise = (released - exact) / params.gamma
  # Rounding moves each entry by < 1 lattice unit; the noise has std s ≫ 1.
  assert abs(noise.mean()) < 5 * params.scale.scale / math.sqrt(noise.size)
  assert noise.std() == pytest.approx(params.scale.scale, rel=0.03)
  np.testing.assert_array_equal(released / params.gamma, np.round(released / params.gamma))


def test_merf_and_class_means_warm_starts_charge_the_same_stage():
  cfg = _config("unused")
  assert (accounting.plan_privacy(cfg, 60).stages
          == accounting.plan_privacy(dataclasses.replace(
              cfg, privacy=dataclasses.replace(cfg.privacy, warm_start="merf")), 60).stages)

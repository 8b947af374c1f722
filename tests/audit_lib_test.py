"""Tests for dp_sinkhorn_tf.evaluation.audit_lib: the step audit of the real mechanism and
the negative controls that must be flagged (on a tiny generator), the audit's config, the
run audit's canary file and training set, and the reports it writes."""

import json
import math
import os
import stat

import numpy as np
import pytest

from dp_sinkhorn_tf.data import datasets
from dp_sinkhorn_tf.evaluation import audit_lib
from dp_sinkhorn_tf.privacy import auditing, keys
from dp_sinkhorn_tf.train import config as config_lib
from dp_sinkhorn_tf.train import trainer
from dp_sinkhorn_tf.transport import sinkhorn

DELTA = 1e-5
TRIALS = 4000  # per side: 2000 choose the threshold, 2000 measure the error rates
DIGITS = datasets.load_dataset("digits")


@pytest.fixture(scope="module")
def setting():
  """A tiny generator at σ = 1, C = 0.5; Y the empty batch (a valid Poisson sample; the
  canary's gradient is diluted by nothing); the canary: an all-white image of the class
  generated most (no search: fast)."""
  import tensorflow as tf
  cfg = config_lib.TrainConfig(
      batch_size=8, steps=None,
      model=config_lib.ModelConfig(architecture="dcgan", latent_dim=4, embed_dim=2, hidden=4,
                                   output="clip"),
      loss=config_lib.LossConfig(cost="l1l2", class_matching=True,
                                 solver=sinkhorn.SinkhornConfig(epsilon=0.5,
                                                                max_iterations=30)),
      privacy=config_lib.PrivacyConfig(noise_multiplier=1.0, target_epsilon=10.0))
  tf.keras.utils.set_random_seed(0)
  gen = trainer.make_generator(cfg, DIGITS.image_shape, 10, build=True)
  model = trainer.DPSinkhornModel(gen, DIGITS.images, DIGITS.labels, 10, cfg, 1.0,
                                  8 / len(DIGITS.images))
  empty = np.zeros((0,) + DIGITS.image_shape, np.float32)
  no_labels = np.zeros([0], np.int64)
  _, _, fake_labels = auditing.canary_gradients(model, empty, no_labels, DIGITS.images[0], 0)
  label = int(np.bincount(fake_labels.numpy()[:cfg.num_primary], minlength=10).argmax())
  canary = np.ones(DIGITS.image_shape, np.float32)
  g_out, g_in, _ = auditing.canary_gradients(model, empty, no_labels, canary, label)
  return audit_lib.StepSetting(model, cfg.num_primary, 0.5, 1.0, g_out, g_in, canary, label)


@pytest.fixture(scope="module")
def real_audit(setting):
  return audit_lib.audit_release(setting, audit_lib.real_release(setting), TRIALS, DELTA, 0.95)


def test_step_audit_of_the_real_mechanism_tries_every_adversary(real_audit):
  result, scores = real_audit
  assert [a.name for a in result.adversaries] == ["linear", "lattice"] == list(scores)
  assert all(len(s) == TRIALS for pair in scores.values() for s in pair)
  # The linear attack is as strong as this canary allows: the clipped releases differ by
  # ‖u‖ ≤ 2C, i.e. a Gaussian step with multiplier σ·2C/‖u‖; its bound must stay below that
  # step's ε (else the noise is smaller than claimed) and be informative.
  assert 0.3 * result.sensitivity < result.difference_norm <= result.sensitivity + 1e-6
  reachable = auditing.gaussian_epsilon(result.sensitivity / result.difference_norm, DELTA)
  assert result.reference_epsilon == pytest.approx(reachable, rel=1e-3)
  linear = result.adversaries[0]
  assert 0.2 < linear.epsilon_lower_bound < reachable <= result.certified_epsilon


def test_no_adversary_flags_the_real_mechanism(real_audit):
  result, _ = real_audit
  assert not result.flagged, [(a.name, a.epsilon_lower_bound) for a in result.adversaries]


def test_the_audited_release_is_the_shipped_mechanism_bit_for_bit(setting):
  # The audit runs the mechanism compiled (for speed); it must release exactly what the
  # mechanism releases, or it would attack other code than the one that ships.
  release, n = audit_lib.real_release(setting), setting.num_private
  for trial, grad in enumerate([setting.grad_out, setting.grad_in, setting.grad_out]):
    seed = keys.step_seed(keys.generate(), trial, keys.STREAM_NOISE)
    shipped = setting.model.mechanism.privatize(grad, n, seed)[0].numpy()[:n]
    np.testing.assert_array_equal(release(grad, seed), shipped)
    assert not np.array_equal(shipped, setting.clean(grad))  # noised: the check means something


@pytest.mark.parametrize("name", sorted(audit_lib.CONTROLS))
def test_every_broken_mechanism_is_flagged(setting, name):
  build, certify, _ = audit_lib.CONTROLS[name]
  q = 8 / len(DIGITS.images)
  certified = certify(setting, None, DELTA, q)
  reference = certify(setting, None, DELTA, q, setting.fraction)
  assert reference <= certified
  result, _ = audit_lib.audit_release(setting, build(setting), TRIALS, DELTA, 0.95, certified,
                                  reference)
  assert result.flagged, (name, result.epsilon_lower_bound, reference)


def test_the_float32_control_is_found_by_the_lattice_adversary_alone_at_a_small_shift(setting):
  # The setting on this step: blocks 0.05·2C apart, σ = 1, C = 0.5, 600 releases
  # per side. A Gaussian allows ε = 0.160 there; the float32 Box–Muller noise is Gaussian to
  # the linear test but not to the lattice test.
  shifted = audit_lib.shifted_setting(setting, 0.05)
  build, certify, _ = audit_lib.CONTROLS["float32_gaussian"]
  reference = certify(shifted, None, DELTA, 0.0, shifted.fraction)
  assert reference == pytest.approx(auditing.pair_gaussian_epsilon(1.0, 0.05, DELTA), rel=1e-3)
  result, _ = audit_lib.audit_release(shifted, build(shifted), 600, DELTA, 0.95,
                                  certify(shifted, None, DELTA, 0.0), reference)
  bounds = {a.name: a.epsilon_lower_bound for a in result.adversaries}
  assert bounds["lattice"] > reference >= bounds["linear"]
  assert result.flagged and result.strongest == "lattice"


def test_shifted_setting_puts_two_clipped_blocks_the_shift_apart(setting):
  shifted = audit_lib.shifted_setting(setting, 0.05)
  n, clip = setting.num_private, setting.l2_norm_clip
  a, b = shifted.clean(shifted.grad_out), shifted.clean(shifted.grad_in)
  assert np.linalg.norm(b - a) == pytest.approx(0.05 * 2 * clip, rel=1e-5)
  assert shifted.fraction == pytest.approx(0.05, rel=1e-5)
  for block, grad in ((a, shifted.grad_out), (b, shifted.grad_in)):
    assert np.linalg.norm(block) == pytest.approx(clip, rel=1e-5)
    assert np.linalg.norm(grad.numpy()[:n]) >= 2 * clip  # clipped, as a real gradient is
  # The public rows are the step's own.
  np.testing.assert_array_equal(shifted.grad_in.numpy()[n:], setting.grad_in.numpy()[n:])
  with pytest.raises(ValueError, match="--audit_shift"):
    audit_lib.shifted_setting(setting, 0.6)


GOOD_AUDIT = dict(kind="step", out="/tmp/out", trials=10, controls=True, shift=0.0,
                  confidence=0.95, canaries=10, canary_copies=1, samples_per_class=10)


@pytest.mark.parametrize("field, value, flag", [
    ("trials", 1, "--audit_trials=1"), ("canaries", 1, "--audit_canaries=1"),
    ("samples_per_class", 0, "--audit_samples_per_class=0"),
    ("canary_copies", 0, "--audit_canary_copies=0"),
    ("confidence", 0.5, "--audit_confidence=0.5"), ("confidence", 1.0, "--audit_confidence=1.0"),
    ("shift", 0.6, "--audit_shift=0.6"), ("shift", -0.1, "--audit_shift=-0.1"),
    ("shift", float("nan"), "--audit_shift=nan"),
])
def test_audit_config_refuses_a_bad_value_naming_its_flag(field, value, flag):
  audit_lib.AuditConfig(**GOOD_AUDIT)  # the base is valid
  with pytest.raises(ValueError, match=f"^{flag}: expected"):
    audit_lib.AuditConfig(**dict(GOOD_AUDIT, **{field: value}))


# ---- the run audit's pieces (cheap: no training) ------------------------------------------

def test_the_canary_file_is_drawn_once_owner_only_and_read_back_on_a_resume(tmp_path):
  path = str(tmp_path / "run" / audit_lib.CANARY_FILE)
  images, labels, included = audit_lib.load_or_draw_canaries(path, 30, DIGITS)
  assert images.shape == (30, 8, 8, 1) and labels.dtype == np.int32 and included.dtype == bool
  assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # its bits are the membership secret
  again = audit_lib.load_or_draw_canaries(path, 30, DIGITS)  # a resume: the same draw
  for first, second in zip((images, labels, included), again):
    np.testing.assert_array_equal(first, second)
  # Another count would be another audit: refused, naming the flag.
  with pytest.raises(ValueError, match=r"^--audit_canaries=31: .* holds 30 canaries"):
    audit_lib.load_or_draw_canaries(path, 31, DIGITS)


def test_a_file_that_is_not_a_canary_file_is_refused(tmp_path):
  path = tmp_path / audit_lib.CANARY_FILE
  path.write_bytes(b"not an npz")
  with pytest.raises(ValueError, match="not a canary file of this audit"):
    audit_lib.load_or_draw_canaries(str(path), 10, DIGITS)


@pytest.mark.parametrize("copies", [1, 3])
def test_with_canaries_adds_exactly_the_included_canaries_copies_times(copies):
  images = np.stack([np.full(DIGITS.image_shape, v, np.float32) for v in (0.1, 0.2, 0.3)])
  labels = np.array([4, 5, 6], np.int32)
  included = np.array([True, False, True])
  out = audit_lib.with_canaries(DIGITS, images, labels, included, copies)
  n = len(DIGITS.images)
  assert len(out.images) == n + 2 * copies and out.num_classes == DIGITS.num_classes
  np.testing.assert_array_equal(out.images[:n], DIGITS.images)
  np.testing.assert_array_equal(out.labels[n:], np.repeat([4, 6], copies))
  np.testing.assert_array_equal(out.images[n:, 0, 0, 0],
                                np.repeat(np.float32([0.1, 0.3]), copies))


def test_the_report_keeps_the_other_audits_section_and_replaces_its_own(tmp_path):
  out = str(tmp_path / "audit")
  audit_lib._write_report(out, "run", {"canaries": 3})
  audit_lib._write_report(out, "step", {"trials_per_side": 1})
  path = audit_lib._write_report(out, "step", {"trials_per_side": 2})
  assert path == os.path.join(out, audit_lib.AUDIT_FILE)
  with open(path) as fh:
    assert json.load(fh) == {"run": {"canaries": 3}, "step": {"trials_per_side": 2}}
  with open(path, "w") as fh:
    fh.write("{torn")  # an unreadable report is started afresh, not a crash
  audit_lib._write_report(out, "run", {"canaries": 4})
  with open(path) as fh:
    assert json.load(fh) == {"run": {"canaries": 4}}


def test_the_certified_run_epsilon_is_the_tightest_accountant(tmp_path):
  (tmp_path / "privacy.json").write_text(json.dumps(
      {"dp": True, "ledger": {"epsilon": {"rdp": 2.5, "pld": 2.25}}}))
  assert audit_lib.certified_run_epsilon(str(tmp_path)) == 2.25
  (tmp_path / "privacy.json").write_text(json.dumps({"dp": False}))
  assert audit_lib.certified_run_epsilon(str(tmp_path)) == math.inf


def test_roc_plot_is_a_png_with_one_panel_per_roc_panel(tmp_path):
  path = str(tmp_path / "roc.png")
  scores = (np.arange(10.0), np.arange(10.0) + 3)
  audit_lib.plot_roc(path, [audit_lib.RocPanel("a", 1.0, 1e-5, (("x", *scores, 0.5),)),
                            audit_lib.RocPanel("b", math.inf, 1e-5, (("y", *scores, 0.1),))])
  with open(path, "rb") as fh:
    png = fh.read()
  assert png[:8] == b"\x89PNG\r\n\x1a\n"
  width = int.from_bytes(png[16:20], "big")
  assert width == round(2 * 4.8 * 110)  # two panels of 4.8 inches at 110 dpi


def test_roc_plot_draws_a_panel_whose_attack_has_an_empty_side(tmp_path):
  # A run audit draws each canary in with probability 1/2: with few canaries, every one may be
  # in, and the "out" scores are empty (this once divided by zero in a full-suite run).
  path = str(tmp_path / "roc.png")
  audit_lib.plot_roc(path, [audit_lib.RocPanel("a", 1.0, 1e-5,
                                               (("x", np.zeros(0), np.arange(3.0), 0.0),))])
  with open(path, "rb") as fh:
    assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_a_failed_training_ends_the_run_audit_with_its_code_and_no_report(tmp_path):
  cfg = config_lib.TrainConfig(batch_size=8, steps=10,
                               run=config_lib.RunConfig(workdir=str(tmp_path / "run")))
  audit_cfg = audit_lib.AuditConfig(**dict(GOOD_AUDIT, kind="run", out=str(tmp_path / "out")))
  seen, lines = [], []

  def train(cfg, flags_text, dataset):
    seen.append((cfg.run.if_finished, flags_text, len(dataset.images)))
    return 3

  assert audit_lib.run_run(cfg, audit_cfg, "--steps=10", train, lines.append) == 3
  with np.load(tmp_path / "run" / audit_lib.CANARY_FILE) as z:
    included = int(z["included"].sum())
  # A finished run is re-scored, never trained further; the set holds the included canaries.
  assert seen == [("skip", "--steps=10", len(DIGITS.images) + included)]
  assert lines[0].startswith("run audit: 10 canaries, ") and "DO NOT PUBLISH" in lines[0]
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", sorted(audit_lib.CONTROLS))
def test_a_control_is_resolvable_unless_it_is_a_gaussian_too_wide_for_the_trials(setting, name):
  resolution = audit_lib._resolvable(name, setting, 100, DELTA, 0.95, needed=0.5)
  assert bool(resolution) == (name != "known_batches" or resolution.expected > 0.5)
  tiny = audit_lib.shifted_setting(setting, 0.01)  # the unsubsampled Gaussian at σ/0.01
  assert bool(audit_lib._resolvable(name, tiny, 100, DELTA, 0.95, 0.5)) == (
      name != "known_batches")

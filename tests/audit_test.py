"""Tests for dp_sinkhorn_tf.audit: the step audit of the real mechanism, negative
controls that must be flagged, and `python -m dp_sinkhorn_tf.audit` end to end."""

import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from dp_sinkhorn_tf import audit
from dp_sinkhorn_tf.data import datasets
from dp_sinkhorn_tf.privacy import auditing, keys
from dp_sinkhorn_tf.train import config as config_lib
from dp_sinkhorn_tf.train import trainer
from dp_sinkhorn_tf.transport import sinkhorn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
  return audit.StepSetting(model, cfg.num_primary, 0.5, 1.0, g_out, g_in, canary, label)


@pytest.fixture(scope="module")
def real_audit(setting):
  return audit.audit_release(setting, audit.real_release(setting), TRIALS, DELTA, 0.95)


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
  release, n = audit.real_release(setting), setting.num_private
  for trial, grad in enumerate([setting.grad_out, setting.grad_in, setting.grad_out]):
    seed = keys.step_seed(keys.generate(), trial, keys.STREAM_NOISE)
    shipped = setting.model.mechanism.privatize(grad, n, seed)[0].numpy()[:n]
    np.testing.assert_array_equal(release(grad, seed), shipped)
    assert not np.array_equal(shipped, setting.clean(grad))  # noised: the check means something


@pytest.mark.parametrize("name", sorted(audit.CONTROLS))
def test_every_broken_mechanism_is_flagged(setting, name):
  build, certify, _ = audit.CONTROLS[name]
  q = 8 / len(DIGITS.images)
  certified = certify(setting, None, DELTA, q)
  reference = certify(setting, None, DELTA, q, setting.fraction)
  assert reference <= certified
  result, _ = audit.audit_release(setting, build(setting), TRIALS, DELTA, 0.95, certified,
                                  reference)
  assert result.flagged, (name, result.epsilon_lower_bound, reference)


def test_the_float32_control_is_found_by_the_lattice_adversary_alone_at_a_small_shift(setting):
  # The setting on this step: blocks 0.05·2C apart, σ = 1, C = 0.5, 600 releases
  # per side. A Gaussian allows ε = 0.160 there; the float32 Box–Muller noise is Gaussian to
  # the linear test but not to the lattice test.
  shifted = audit.shifted_setting(setting, 0.05)
  build, certify, _ = audit.CONTROLS["float32_gaussian"]
  reference = certify(shifted, None, DELTA, 0.0, shifted.fraction)
  assert reference == pytest.approx(auditing.pair_gaussian_epsilon(1.0, 0.05, DELTA), rel=1e-3)
  result, _ = audit.audit_release(shifted, build(shifted), 600, DELTA, 0.95,
                                  certify(shifted, None, DELTA, 0.0), reference)
  bounds = {a.name: a.epsilon_lower_bound for a in result.adversaries}
  assert bounds["lattice"] > reference >= bounds["linear"]
  assert result.flagged and result.strongest == "lattice"


def test_shifted_setting_puts_two_clipped_blocks_the_shift_apart(setting):
  shifted = audit.shifted_setting(setting, 0.05)
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
    audit.shifted_setting(setting, 0.6)


def test_the_roc_region_of_a_dp_mechanism_has_its_closed_form():
  fpr = np.array([0.0, 1e-3, 0.5, 1.0])
  tpr = audit.dp_region_tpr(fpr, 1.0, 0.0)
  np.testing.assert_allclose(tpr, [0.0, np.e * 1e-3, 1 - 0.5 / np.e, 1.0])
  # The attack's ROC on separable scores reaches (0, 1); on identical ones the diagonal.
  fpr, tpr = audit.roc(np.array([0.0, 1.0]), np.array([2.0, 3.0]))
  assert (0.0, 1.0) in set(zip(fpr, tpr))


# ---- the CLI -------------------------------------------------------------------------------

TINY = ["--dataset=digits", "--batch_size=16", "--hidden=4", "--latent_dim=4", "--embed_dim=2",
        "--noise_multiplier=1", "--target_epsilon=10", "--checkpoint_every=50",
        "--log_every=50", "--sample_every=100", "--sinkhorn_max_iterations=20",
        "--verbosity=-1"]


def run_audit(*args, timeout=600):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, "-m", "dp_sinkhorn_tf.audit", *TINY, *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


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
  audit.AuditConfig(**GOOD_AUDIT)  # the base is valid
  with pytest.raises(ValueError, match=f"^{flag}: expected"):
    audit.AuditConfig(**dict(GOOD_AUDIT, **{field: value}))


def test_audit_config_from_flags_defaults_out_to_the_workdir():
  class Flags:  # the --audit_* flags at their defaults
    audit, audit_out, audit_trials, audit_controls, audit_confidence = "run", None, 10, 1, 0.9
    audit_shift = 0.0
    audit_canaries, audit_canary_copies, audit_samples_per_class = 20, 1, 5
  cfg = audit.audit_config_from_flags(Flags, "/runs/x")
  assert cfg.out == "/runs/x/audit" and cfg.kind == "run" and cfg.canaries == 20


def test_bad_audit_flag_is_one_line_and_writes_nothing(tmp_path):
  proc = run_audit("--audit=step", "--audit_confidence=1", f"--audit_out={tmp_path / 'out'}",
                   timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      "error: --audit_confidence=1.0: expected a number in (0.5, 1)"]
  assert not (tmp_path / "out").exists()


def test_step_cli_writes_audit_json_and_roc(tmp_path):
  proc = run_audit("--audit=step", "--audit_trials=400", "--noaudit_controls",
                   f"--audit_out={tmp_path}")
  report = json.loads((tmp_path / "audit.json").read_text())["step"]
  real = report["mechanism"]
  # The exact mechanism is not flagged: exit 0.
  assert proc.returncode == 0 and not real["flagged"], proc.stderr[-2000:]
  assert report["adversaries"] == ["linear", "lattice"]  # in the order tried
  assert set(real["adversaries"]) == {"linear", "lattice"}
  assert "box_muller_float32" in report["grids"] and report["pair"]["kind"] == "canary"
  linear = real["adversaries"]["linear"]
  assert not linear["flagged"] and linear["info"]["trials_each"] == 200
  assert linear["epsilon_lower_bound"] <= report["reachable_epsilon"] <= \
      real["certified_epsilon"]
  assert real["reference_epsilon"] == report["reachable_epsilon"]
  # The searched canary moves the release at least as much as the fixed white one would.
  assert real["difference_norm"] > 0.3 * real["sensitivity"]
  assert (tmp_path / "step_audit_roc.png").stat().st_size > 10_000


def test_step_cli_at_a_small_shift_reports_every_adversary_per_control(tmp_path):
  # The issue's setting through the audit command (the tests' tiny config;
  # 300 releases per side, not 600, to keep the test short: still far above 0.160).
  proc = run_audit("--audit=step", "--audit_trials=300", "--audit_shift=0.05",
                   f"--audit_out={tmp_path}")
  report = json.loads((tmp_path / "audit.json").read_text())["step"]
  # The float32 control is flagged by the lattice adversary, the exact mechanism by none;
  # every control the audit can resolve is caught, so the command exits 0.
  assert proc.returncode == 0, proc.stderr[-2000:]
  real = report["mechanism"]
  assert not real["flagged"]
  assert all(a["epsilon_lower_bound"] < report["reachable_epsilon"]
             for a in real["adversaries"].values())
  assert report["pair"] == {"kind": "shift", "shift": 0.05,
                            "fraction": pytest.approx(0.05, rel=1e-5)}
  gaussian = auditing.pair_gaussian_epsilon(1.0, 0.05, DELTA)
  assert report["reachable_epsilon"] == pytest.approx(gaussian, rel=1e-3)
  control = report["controls"]["float32_gaussian"]
  lattice, linear = control["adversaries"]["lattice"], control["adversaries"]["linear"]
  assert lattice["epsilon_lower_bound"] > gaussian >= linear["epsilon_lower_bound"]
  assert control["flagged"] and control["strongest"] == "lattice"
  for name, result in report["controls"].items():
    # known_batches leaves the unsubsampled Gaussian at σ/0.05 = 20: no attack on 150
    # releases a side can resolve it, and the report says so instead of failing.
    assert result["flagged"] or (name == "known_batches" and not result["resolvable"]), name
    assert set(result["adversaries"]) == {"linear", "lattice"}
    assert result["epsilon_lower_bound"] == max(
        a["epsilon_lower_bound"] for a in result["adversaries"].values())
  assert "float32_gaussian" in proc.stdout and "lattice" in proc.stdout


def test_run_cli_trains_on_exactly_the_included_canaries_and_reports_the_bound(tmp_path):
  workdir = tmp_path / "run"
  args = ("--audit=run", f"--workdir={workdir}", "--steps=100", "--audit_canaries=40",
          "--audit_samples_per_class=20")
  proc = run_audit(*args)
  assert proc.returncode == 0, proc.stderr[-2000:]
  npz = workdir / "audit_canaries.npz"
  assert stat.S_IMODE(npz.stat().st_mode) == 0o600  # its bits are the membership secret
  with np.load(npz) as z:
    images, labels, included = z["images"], z["labels"], z["included"]
  # The run's data fingerprint is that of the digits plus exactly the included canaries.
  key = keys.read_key_file(str(workdir / "privacy_key"))
  trained = audit.with_canaries(DIGITS, images, labels, included)
  ledger = json.loads((workdir / "privacy_ledger.json").read_text())
  assert ledger["data_fingerprint"] == keys.data_fingerprint(key, trained.images,
                                                                    trained.labels)
  report = json.loads((workdir / "audit" / "audit.json").read_text())["run"]
  privacy = json.loads((workdir / "privacy.json").read_text())
  assert report["canaries"] == 40 and report["run_id"] == ledger["run_id"]
  assert report["certified_epsilon"] == pytest.approx(min(privacy["ledger"]["epsilon"].values()))
  assert 0 <= report["epsilon_lower_bound"] < report["certified_epsilon"]
  assert (workdir / "audit" / "run_audit_roc.png").exists()
  # A second command with another canary count would train another set: refused.
  again = run_audit(*args[:-2], "--audit_canaries=41")
  assert again.returncode == 2
  assert again.stderr.strip().splitlines() == [
      next(line for line in again.stderr.splitlines() if line.startswith("error:"))]
  assert "--audit_canaries=41" in again.stderr


def test_step_audit_of_a_nodp_config_is_a_one_line_error(tmp_path):
  proc = run_audit("--audit=step", "--nodp", "--steps=10", f"--audit_out={tmp_path}")
  assert proc.returncode == 2
  assert proc.stderr.strip().startswith("error:") and len(proc.stderr.strip().splitlines()) == 1

"""Tests for `python -m dp_sinkhorn_tf.audit` end to end (the library it runs:
audit_lib_test): its flags, one-line errors, and the reports of the step and run audits."""

import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from dp_sinkhorn_tf import audit
from dp_sinkhorn_tf.data import datasets
from dp_sinkhorn_tf.evaluation import audit_lib
from dp_sinkhorn_tf.privacy import auditing, keys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DELTA = 1e-5
DIGITS = datasets.load_dataset("digits")

TINY = ["--dataset=digits", "--batch_size=16", "--hidden=4", "--latent_dim=4", "--embed_dim=2",
        "--noise_multiplier=1", "--target_epsilon=10", "--checkpoint_every=50",
        "--log_every=50", "--sample_every=100", "--sinkhorn_max_iterations=20",
        "--verbosity=-1"]


def run_audit(*args, timeout=600):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, "-m", "dp_sinkhorn_tf.audit", *TINY, *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


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
  trained = audit_lib.with_canaries(DIGITS, images, labels, included)
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

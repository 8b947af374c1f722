"""Tests for the dp_sinkhorn_tf.main command line: errors, and cifar.flags starting up."""

import os
import subprocess
import sys

import pytest
import tensorflow_datasets as tfds
from absl import flags

from dp_sinkhorn_tf import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*args, timeout=300):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, "-m", "dp_sinkhorn_tf.main", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout, env=env)


def _error_lines(stderr: str):
  return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("args,flag", [
    (["--batch_size=0"], "--batch_size"),
    (["--fake_batch_size=0"], "--fake_batch_size"),
    (["--ema_decay=1"], "--ema_decay"),
    (["--lr_schedule=linear"], "--lr_schedule"),
    (["--no_such_flag=1"], "no_such_flag"),
    (["--learning_rate=-1"], "--learning_rate"),
    (["--debias_fraction=1.5"], "--debias_fraction"),
    (["--l2_norm_clip=0"], "--l2_norm_clip"),
    (["--weight_decay=0.1"], "--weight_decay"),
    (["--sinkhorn_epsilon=0"], "--sinkhorn_"),
    (["--release_blur=-1"], "--release_blur"),
    (["--public_clip=-0.1"], "--public_clip"),
    (["--public_clip=0.1", "--mechanism=param_grad"], "--public_clip"),
    (["--release_blur=1", "--mechanism=param_grad"], "--release_blur"),
    (["--steps=999999999", "--noise_multiplier=1"], "--steps"),
])
def test_bad_flag_values_give_one_line_naming_the_flag(tmp_path, args, flag):
  workdir = tmp_path / "run"
  proc = run_main(f"--workdir={workdir}", *args)
  assert proc.returncode != 0
  errors = _error_lines(proc.stderr)
  assert len(errors) == 1 and flag in errors[0], proc.stderr[-2000:]
  assert not workdir.exists()  # nothing half-written


def test_cifar_flagfile_without_data_names_data_dir(tmp_path):
  empty, workdir = tmp_path / "tfds", tmp_path / "run"
  empty.mkdir()
  proc = run_main("--flagfile=launch/cifar.flags", f"--data_dir={empty}",
                  f"--workdir={workdir}")
  assert proc.returncode != 0
  errors = _error_lines(proc.stderr)
  assert len(errors) == 1 and f"--data_dir={empty}" in errors[0]
  assert not workdir.exists()


def test_cifar_flagfile_starts_training_on_tfds_data(tmp_path, monkeypatch):
  monkeypatch.chdir(ROOT)
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["main", "--flagfile=launch/cifar.flags", f"--workdir={tmp_path}",
               "--data_dir=/nonexistent", "--batch_size=4", "--steps=2", "--hidden=2",
               "--noexport", "--log_every=1"])
  try:
    cfg = main.config_from_flags(flags.FLAGS)
    with tfds.testing.mock_data(num_examples=64):
      assert main.run(cfg, flags.FLAGS.flags_into_string()) == 0
  finally:
    flags.FLAGS.unparse_flags()
  assert cfg.model.architecture == "biggan" and cfg.data.dataset == "cifar10"
  for name in ("privacy.json", "privacy_ledger.json", "flags.txt", "samples/final.png"):
    assert (tmp_path / name).exists(), name
  assert "--flagfile" not in (tmp_path / "flags.txt").read_text()  # resolved flags


def test_positional_arguments_are_rejected(tmp_path):
  proc = run_main(f"--workdir={tmp_path / 'run'}", "extra")
  assert proc.returncode != 0 and len(_error_lines(proc.stderr)) == 1

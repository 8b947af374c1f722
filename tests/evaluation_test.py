"""Tests for dp_sinkhorn_tf.evaluation.evaluation: synthetic sets, samplers, classifiers, Fréchet distance,
privacy curves and the atomic writers."""

import inspect
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from dp_sinkhorn_tf.evaluation import evaluation
from dp_sinkhorn_tf.models import generators

# ---- helpers ------------------------------------------------------------------------------


class TinyExport(tf.Module):
  """The export's `sample` signature over fixed class templates: template[label] + 0.2·noise."""

  def __init__(self, templates: np.ndarray):
    super().__init__()
    self.templates = tf.Variable(templates.astype(np.float32), trainable=False)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.int32, name="label"),
                                tf.TensorSpec([], tf.int64, name="seed")])
  def sample(self, label, seed):
    n = tf.shape(label)[0]
    z = tf.random.stateless_uniform([n, 4], tf.stack([seed, tf.constant(0, tf.int64)]))
    shape = tf.concat([[n], tf.shape(self.templates)[1:]], 0)
    noise = tf.random.stateless_normal(shape, tf.stack([seed, tf.constant(1, tf.int64)]))
    images = tf.clip_by_value(tf.gather(self.templates, label) + 0.2 * noise, -1.0, 1.0)
    return {"images": images, "z": z,
            "images_uint8": tf.cast(tf.round((images + 1.0) * 127.5), tf.uint8)}


def save_tiny_export(version_dir, templates: np.ndarray, metadata: dict) -> str:
  module = TinyExport(templates)
  tf.saved_model.save(module, str(version_dir), signatures={"sample": module.sample})
  os.makedirs(os.path.join(version_dir, "assets.extra"), exist_ok=True)
  with open(os.path.join(version_dir, "assets.extra", "metadata.json"), "w") as fh:
    json.dump(metadata, fh)
  return str(version_dir)


def quadrant_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """8×8×1 images in [−1, 1]: background −1 + N(0, 0.3²), quadrant `label` (TL, TR, BL, BR)
  bright (+1): a separable problem every classifier should solve."""
  images = -1.0 + 0.3 * rng.standard_normal((len(labels), 8, 8, 1))
  for i, k in enumerate(labels):
    r, c = divmod(int(k), 2)
    images[i, 4 * r:4 * r + 4, 4 * c:4 * c + 4] += 2.0
  return np.clip(images, -1.0, 1.0).astype(np.float32)


@pytest.fixture(scope="module")
def quadrants():
  rng = np.random.default_rng(0)
  train_y = evaluation.balanced_labels(3, 450)[rng.permutation(450)]
  test_y = evaluation.balanced_labels(3, 150)
  return quadrant_images(train_y, rng), train_y, quadrant_images(test_y, rng), test_y


# ---- synthetic data -----------------------------------------------------------------------

def test_balanced_labels_spread_the_remainder_over_the_first_classes():
  np.testing.assert_array_equal(np.bincount(evaluation.balanced_labels(3, 10)), [4, 3, 3])
  np.testing.assert_array_equal(np.bincount(evaluation.balanced_labels(4, 2), minlength=4),
                                [1, 1, 0, 0])
  assert evaluation.balanced_labels(10, 60000).dtype == np.int32


def test_generate_dataset_chunks_with_derived_seeds_and_keeps_labels_aligned():
  calls = []

  def sample_fn(labels, seed):
    calls.append((len(labels), seed))
    # each image carries its label, so misaligned chunks would show
    return np.broadcast_to(labels[:, None, None, None] / 10.0, (len(labels), 2, 2, 1))

  images, labels = evaluation.generate_dataset(sample_fn, 3, 25, seed=7, chunk_size=10)
  assert [c[0] for c in calls] == [10, 10, 5]
  assert len({c[1] for c in calls}) == 3  # distinct per-chunk seeds
  assert [c[1] for c in calls] == [evaluation.chunk_seed(7, i) for i in range(3)]
  assert images.shape == (25, 2, 2, 1) and images.dtype == np.float32
  np.testing.assert_allclose(images[:, 0, 0, 0], labels / 10.0, atol=1e-7)
  np.testing.assert_array_equal(np.bincount(labels), [9, 8, 8])
  again, labels_again = evaluation.generate_dataset(sample_fn, 3, 25, seed=7, chunk_size=10)
  np.testing.assert_array_equal(labels, labels_again)
  _, other = evaluation.generate_dataset(sample_fn, 3, 25, seed=8, chunk_size=10)
  assert not np.array_equal(labels, other)


def test_generate_dataset_rejects_a_sampler_returning_the_wrong_count():
  with pytest.raises(ValueError, match="for 4 labels"):
    evaluation.generate_dataset(lambda y, s: np.zeros((3, 2, 2, 1)), 2, 4, seed=0)


def test_keras_sampler_is_deterministic_per_seed():
  gen = generators.make_generator("dcgan", (8, 8, 1), 3, latent_dim=4, embed_dim=2, hidden=8,
                                  depth=1, output="tanh", precision="float32")
  sample = evaluation.sampler_from_keras(gen)
  labels = np.array([0, 1, 2, 2], np.int32)
  a, b, c = sample(labels, 5), sample(labels, 5), sample(labels, 6)
  assert a.shape == (4, 8, 8, 1) and np.all(np.abs(a) <= 1.0)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


# ---- SavedModel sampler -------------------------------------------------------------------

@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("export") / "generator"
  templates = np.stack([np.full((4, 4, 1), v) for v in (-0.8, 0.0, 0.8)])
  meta = {"num_classes": 3, "image_shape": [4, 4, 1], "label_names": ["lo", "mid", "hi"],
          "epsilon": 2.5, "delta": 1e-5, "dp": True}
  save_tiny_export(root / "2", templates, dict(meta, label_names=["old", "old", "old"]))
  shutil.copytree(root / "2", root / "10")  # numerically highest (lexically "10" < "2")
  with open(root / "10" / "assets.extra" / "metadata.json", "w") as fh:
    json.dump(meta, fh)
  return root


def test_saved_model_sampler_takes_the_highest_numeric_version(export_dir):
  sampler = evaluation.sampler_from_saved_model(str(export_dir))
  assert sampler.path.endswith(os.path.join("generator", "10"))
  assert sampler.label_names == ("lo", "mid", "hi")
  assert sampler.num_classes == 3 and sampler.image_shape == (4, 4, 1)
  assert sampler.metadata["epsilon"] == 2.5
  direct = evaluation.sampler_from_saved_model(str(export_dir / "2"))
  assert direct.label_names == ("old", "old", "old")


def test_saved_model_sampler_follows_labels_and_seed(export_dir):
  sampler = evaluation.sampler_from_saved_model(str(export_dir))
  labels = np.array([0, 1, 2] * 20, np.int32)
  images = sampler(labels, 3)
  assert images.shape == (60, 4, 4, 1) and images.dtype == np.float32
  means = [images[labels == k].mean() for k in range(3)]
  np.testing.assert_allclose(means, [-0.8, 0.0, 0.8], atol=0.05)
  np.testing.assert_array_equal(images, sampler(labels, 3))
  assert not np.allclose(images, sampler(labels, 4))
  gen_x, gen_y = evaluation.generate_dataset(sampler, 3, 30, seed=1, chunk_size=7)
  assert gen_x.shape == (30, 4, 4, 1)
  np.testing.assert_array_equal(np.bincount(gen_y), [10, 10, 10])


def test_saved_model_errors_name_the_path(tmp_path, export_dir):
  with pytest.raises(FileNotFoundError, match="numeric version"):
    evaluation.sampler_from_saved_model(str(tmp_path))
  broken = tmp_path / "7"
  shutil.copytree(export_dir / "10", broken)
  os.remove(broken / "assets.extra" / "metadata.json")
  with pytest.raises(FileNotFoundError, match="metadata.json"):
    evaluation.sampler_from_saved_model(str(broken))


# ---- classifiers --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", evaluation.CLASSIFIERS)
def test_each_classifier_solves_a_separable_problem(quadrants, kind):
  train_x, train_y, test_x, test_y = quadrants
  result = evaluation.train_classifier(kind, train_x, train_y, 3, seed=0, max_epochs=25,
                                       patience=4, batch_size=32)
  assert evaluation.accuracy(result.model, test_x, test_y) >= 0.95
  assert result.val_accuracy >= 0.95


def test_cnn_skips_pooling_that_would_shrink_below_one_pixel():
  def pools(shape):
    model = evaluation.build_classifier("cnn", shape, 4)
    assert model.output_shape == (None, 4)
    return sum(isinstance(layer, tf.keras.layers.MaxPool2D) for layer in model.layers)

  assert pools((8, 8, 1)) == 3 and pools((28, 28, 1)) == 3
  assert pools((2, 2, 1)) == 1 and pools((1, 5, 3)) == 0


def test_early_stopping_restores_the_best_validation_epoch():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((200, 4, 4, 1)).astype(np.float32)
  y = rng.integers(0, 2, 200).astype(np.int32)  # unlearnable: validation loss soon rises
  result = evaluation.train_classifier("mlp", x, y, 2, seed=3, max_epochs=200, patience=2,
                                       batch_size=16, learning_rate=1e-2)
  val_loss = result.history["val_loss"]
  assert len(val_loss) < 200  # stopped early
  assert result.best_epoch == int(np.argmin(val_loss))
  _, val_idx = evaluation.split_validation(200, 0.1, seed=3)
  restored = result.model.evaluate(x[val_idx], y[val_idx], verbose=0)[0]
  assert restored == pytest.approx(val_loss[result.best_epoch], rel=1e-4)


def test_training_never_receives_the_test_split(quadrants, monkeypatch):
  train_x, train_y, test_x, test_y = quadrants
  # By signature: no parameter through which a test split could enter.
  params = inspect.signature(evaluation.train_classifier).parameters
  assert not [p for p in params if "test" in p]

  state = {"training": False, "reads": 0}

  class Guarded:
    """The test split; reading it while a classifier trains fails the test."""

    def __init__(self, array):
      self.array = array

    def __array__(self, dtype=None, copy=None):
      assert not state["training"], "the test split was read during training"
      state["reads"] += 1
      return self.array if dtype is None else self.array.astype(dtype)

  guarded_x, guarded_y = Guarded(test_x), Guarded(test_y)
  real_train = evaluation.train_classifier
  seen = []

  def spy(kind, *args, **kwargs):
    for arg in list(args) + list(kwargs.values()):
      assert arg is not guarded_x and arg is not guarded_y
    seen.append(kind)
    state["training"] = True
    try:
      return real_train(kind, *args, **kwargs)
    finally:
      state["training"] = False

  monkeypatch.setattr(evaluation, "train_classifier", spy)
  accs = evaluation.evaluate_downstream(train_x, train_y, guarded_x, guarded_y, 3,
                                        kinds=["logreg", "mlp"], seed=0, max_epochs=5)
  assert seen == ["logreg", "mlp"] and state["reads"] >= 2
  assert set(accs) == {"logreg", "mlp"} and all(0.0 <= a <= 1.0 for a in accs.values())


def test_paper_protocol_reports_the_best_test_epoch(quadrants):
  train_x, train_y, test_x, test_y = quadrants
  result = evaluation.paper_protocol_accuracy("mlp", train_x, train_y, test_x, test_y, 3,
                                              seed=0, max_epochs=6, batch_size=32)
  assert len(result.test_accuracies) == 6
  assert result.accuracy == max(result.test_accuracies)
  assert result.best_epoch == int(np.argmax(result.test_accuracies))
  # The last epoch's model is what fit left behind: its test accuracy is the last entry.
  assert result.test_accuracies[-1] <= result.accuracy


def test_paper_protocol_selects_on_the_test_split_and_can_only_flatter(quadrants):
  # Labels of the test split permuted: a classifier that learnt the task scores badly on
  # it, yet the protocol picks whichever epoch happens to score best — never below any
  # epoch, which is why it is reported as optimistic.
  train_x, train_y, test_x, test_y = quadrants
  flipped = (np.asarray(test_y) + 1) % 3
  results = evaluation.evaluate_paper_protocol(train_x, train_y, test_x, flipped, 3,
                                               kinds=["logreg"], seed=0, max_epochs=4,
                                               batch_size=32)
  result = results["logreg"]
  assert result.accuracy == max(result.test_accuracies) <= 0.5
  with pytest.raises(ValueError, match="unknown classifier"):
    evaluation.evaluate_paper_protocol(train_x, train_y, test_x, test_y, 3, kinds=["svm"])


def test_unknown_classifier_is_rejected_before_training(quadrants):
  train_x, train_y, test_x, test_y = quadrants
  with pytest.raises(ValueError, match="unknown classifier 'svm'"):
    evaluation.evaluate_downstream(train_x, train_y, test_x, test_y, 3, kinds=["logreg", "svm"])


# ---- Fréchet distance ---------------------------------------------------------------------

# ---- privacy and writers ------------------------------------------------------------------

# ---- class structure ----------------------------------------------------------------------

def test_class_spread_is_the_mean_distance_to_the_class_mean_by_hand():
  # class 0: (0,0) and (6,8): mean (3,4), each at distance 5; class 1: (1,1) x3: distance 0;
  # class 2 has no image and is left out of the mean over classes: (5 + 0) / 2.
  x = np.array([[0, 0], [6, 8], [1, 1], [1, 1], [1, 1]], np.float32).reshape(5, 1, 2, 1)
  y = np.array([0, 0, 1, 1, 1])
  np.testing.assert_allclose(evaluation.class_means(x, y, 3)[:2], [[3, 4], [1, 1]])
  assert np.all(np.isnan(evaluation.class_means(x, y, 3)[2]))
  assert evaluation.class_spread(x, y, 3) == pytest.approx(2.5)
  with pytest.raises(ValueError, match="one label per image"):
    evaluation.class_spread(x, y[:4], 3)


def test_nearest_class_mean_accuracy_by_hand():
  # means: class 0 at (0,0), class 1 at (10,0) (from (8,0),(12,0)); class 2 has no training
  # image, so a test point sitting on (100,100) still goes to the nearer present mean (class 1).
  train_x = np.array([[0, 0], [8, 0], [12, 0]], np.float32)
  train_y = np.array([0, 1, 1])
  test_x = np.array([[1, 0], [9, 1], [4, 0], [6, 0], [100, 100]], np.float32)
  test_y = np.array([0, 1, 1, 1, 2])  # (4,0) is nearer class 0: wrong; (6,0) right; last wrong
  acc = evaluation.nearest_class_mean_accuracy(train_x, train_y, test_x, test_y, 3)
  assert acc == pytest.approx(3 / 5)


def test_class_structure_matches_a_brute_force_computation():
  rng = np.random.default_rng(3)
  x, y = rng.standard_normal((300, 4, 4, 1)), rng.integers(0, 5, 300)
  t, ty = rng.standard_normal((200, 4, 4, 1)), rng.integers(0, 5, 200)
  flat = x.reshape(300, -1)
  means = np.stack([flat[y == k].mean(0) for k in range(5)])
  want_spread = np.mean([np.mean([np.linalg.norm(v - means[k]) for v in flat[y == k]])
                         for k in range(5)])
  want_acc = np.mean([np.argmin([np.sum((v - m) ** 2) for m in means]) == label
                      for v, label in zip(t.reshape(200, -1), ty)])
  assert evaluation.class_spread(x, y, 5) == pytest.approx(want_spread, rel=1e-12)
  assert evaluation.nearest_class_mean_accuracy(x, y, t, ty, 5) == pytest.approx(want_acc)


def test_privacy_summary_keeps_privacy_fields_and_privacy_json():
  meta = {"epsilon": 3.0, "delta": 1e-5, "label_names": ["a"], "training_flags": "--x"}
  summary = evaluation.privacy_summary(meta, {"finished": True})
  assert summary == {"epsilon": 3.0, "delta": 1e-5, "privacy_json": {"finished": True}}


def test_eval_report_needs_a_reason_for_a_missing_fid():
  kwargs = dict(model="m", dataset="digits", accuracies={"logreg": 0.5}, num_samples=10,
                seed=0, test_size=5, privacy={})
  with pytest.raises(ValueError, match="reason"):
    evaluation.eval_report(**kwargs)
  report = evaluation.eval_report(fid_reason="not requested", **kwargs)
  assert report["fid"] is None and report["fid_details"]["reason"] == "not requested"

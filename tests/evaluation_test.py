"""Tests for dp_sinkhorn_tf.evaluation.evaluation: synthetic sets, samplers, classifiers, Fréchet distance,
privacy curves and the atomic writers."""

import inspect
import json
import os
import shutil

import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf

from dp_sinkhorn_tf.evaluation import evaluation
from dp_sinkhorn_tf.models import generators
from dp_sinkhorn_tf.privacy import accounting

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
  gen = generators.make_generator("dcgan", (8, 8, 1), 3, latent_dim=4, embed_dim=2, hidden=8)
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


def test_unknown_classifier_is_rejected_before_training(quadrants):
  train_x, train_y, test_x, test_y = quadrants
  with pytest.raises(ValueError, match="unknown classifier 'svm'"):
    evaluation.evaluate_downstream(train_x, train_y, test_x, test_y, 3, kinds=["logreg", "svm"])


# ---- Fréchet distance ---------------------------------------------------------------------

def _random_spd(rng, d, rank=None):
  a = rng.standard_normal((d, rank or d))
  return a @ a.T + (0.0 if rank else 0.1 * np.eye(d))


def test_frechet_distance_is_zero_for_identical_gaussians():
  rng = np.random.default_rng(0)
  mu, sigma = rng.standard_normal(6), _random_spd(rng, 6)
  assert evaluation.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_closed_form_for_diagonal_covariances():
  mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, -1.0, 2.0])
  a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)  # = 5 + 5
  assert evaluation.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(
      expected, rel=1e-12)
  assert expected == pytest.approx(10.0)


def test_frechet_distance_closed_form_for_commuting_covariances():
  rng = np.random.default_rng(1)
  q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
  a, b = rng.uniform(0.1, 3.0, 5), rng.uniform(0.1, 3.0, 5)
  s1, s2 = (q * a) @ q.T, (q * b) @ q.T
  mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  assert evaluation.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frechet_distance_matches_scipy_sqrtm_on_random_spd(seed):
  rng = np.random.default_rng(seed)
  d = 8
  mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
  s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
  reference = (np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) -
               2.0 * np.trace(scipy.linalg.sqrtm(s1 @ s2)).real)
  assert evaluation.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-8)


def test_frechet_distance_with_singular_covariances_is_finite_and_symmetric():
  rng = np.random.default_rng(3)
  s1, s2 = _random_spd(rng, 10, rank=3), _random_spd(rng, 10, rank=4)
  mu = np.zeros(10)
  d12 = evaluation.frechet_distance(mu, s1, mu, s2)
  assert np.isfinite(d12) and d12 > 0
  assert d12 == pytest.approx(evaluation.frechet_distance(mu, s2, mu, s1), rel=1e-6)
  assert evaluation.frechet_distance(mu, s1, mu, s1) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match="expected μ"):
    evaluation.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


def test_gaussian_stats_match_numpy():
  x = np.random.default_rng(4).standard_normal((50, 4))
  mu, sigma = evaluation.gaussian_stats(x)
  np.testing.assert_allclose(mu, x.mean(0))
  np.testing.assert_allclose(sigma, np.cov(x, rowvar=False))
  with pytest.raises(ValueError, match="N ≥ 2"):
    evaluation.gaussian_stats(x[:1])


# ---- privacy and writers ------------------------------------------------------------------

def _ledger(steps_taken):
  return accounting.PrivacyLedger(sample_rate=0.05, noise_multiplier=1.0, l2_norm_clip=0.5,
                                  delta=1e-5, target_epsilon=10.0, planned_steps=1000,
                                  accountant="rdp", steps_taken=steps_taken, dataset_size=1000)


def test_epsilon_curve_spans_one_to_steps_taken_and_grows():
  ledger = _ledger(400)
  steps, eps = evaluation.epsilon_curve(ledger, num_points=4)  # the real accountant
  np.testing.assert_array_equal(steps, [1, 134, 267, 400])
  assert np.all(np.diff(eps) > 0)
  assert eps[-1] == pytest.approx(ledger.epsilon())


def test_epsilon_curve_asks_the_accountant_at_fifty_distinct_steps(monkeypatch):
  asked = []

  def fake_epsilon(q, sigma, steps, delta, accountant):
    asked.append((q, sigma, steps, delta, accountant))
    return float(steps)

  monkeypatch.setattr(accounting, "compute_epsilon", fake_epsilon)  # ~0.1 s each when real
  steps, eps = evaluation.epsilon_curve(_ledger(400))
  assert len(steps) == 50 and steps[0] == 1 and steps[-1] == 400
  assert len(set(steps.tolist())) == 50 and np.all(np.diff(steps) > 0)
  assert asked[-1] == (0.05, 1.0, 400, 1e-5, "rdp")
  np.testing.assert_array_equal(eps, steps)
  short_steps, _ = evaluation.epsilon_curve(_ledger(3))
  np.testing.assert_array_equal(short_steps, [1, 2, 3])
  with pytest.raises(ValueError, match="no step"):
    evaluation.epsilon_curve(_ledger(0))


def test_privacy_summary_keeps_privacy_fields_and_privacy_json():
  meta = {"epsilon": 3.0, "delta": 1e-5, "label_names": ["a"], "training_flags": "--x"}
  summary = evaluation.privacy_summary(meta, {"finished": True})
  assert summary == {"epsilon": 3.0, "delta": 1e-5, "privacy_json": {"finished": True}}


def test_writers_are_atomic_and_produce_pngs_and_strict_json(tmp_path):
  path = str(tmp_path / "eval.json")
  evaluation.write_json_atomic(path, {"eps": float("inf"), "x": np.float32(0.5),
                                      "nan": float("nan"), "arr": np.arange(2)})
  with open(path) as fh:
    assert json.load(fh) == {"eps": "inf", "x": 0.5, "nan": None, "arr": [0, 1]}
  rng = np.random.default_rng(0)
  labels = np.array([0, 1, 2, 0, 1], np.int32)
  images = rng.uniform(-1, 1, (5, 8, 8, 1)).astype(np.float32)
  written = [
      evaluation.save_class_grid_png(images, labels, ["a", "b", "c"], str(tmp_path / "g.png"),
                                     per_class=3, title="t"),
      evaluation.save_label_histogram_png(labels, ["a", "b", "c"], str(tmp_path / "h.png"),
                                          reference_labels=labels),
      evaluation.save_epsilon_plot_png(_ledger(100), str(tmp_path / "e.png"), num_points=3),
  ]
  for png in written:
    with open(png, "rb") as fh:
      assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
  assert sorted(os.listdir(tmp_path)) == ["e.png", "eval.json", "g.png", "h.png"]  # no temps


def test_tile_rows_puts_each_row_of_images_side_by_side():
  images = np.stack([np.full((2, 3, 1), v) for v in (-1.0, 0.0, 1.0, 0.5)])
  grid = evaluation.tile_rows(images, rows=2, pad=0)
  assert grid.shape == (4, 6, 1) and grid.dtype == np.uint8
  np.testing.assert_array_equal(grid[[0, 0, 2, 2], [0, 3, 0, 3], 0], [0, 128, 255, 191])
  with pytest.raises(ValueError, match="do not fill"):
    evaluation.tile_rows(images[:3], rows=2)


def test_tile_rows_frames_tiles_with_grey_lines():
  # Four 2×3 tiles, values −1, 0, 1, 0.5 → 0, 128, 255, 191; with pad=1 the grid is
  # 2·(2+1)+1 = 7 rows by 2·(3+1)+1 = 9 columns, and rows 0, 3, 6 / columns 0, 4, 8 are 128.
  images = np.stack([np.full((2, 3, 1), v) for v in (-1.0, 0.0, 1.0, 0.5)])
  grid = evaluation.tile_rows(images, rows=2)
  assert grid.shape == (7, 9, 1)
  np.testing.assert_array_equal(grid[[0, 3, 6], :, 0], 128)
  np.testing.assert_array_equal(grid[:, [0, 4, 8], 0], 128)
  np.testing.assert_array_equal(grid[1:3, 1:4, 0], 0)
  np.testing.assert_array_equal(grid[1:3, 5:8, 0], 128)
  np.testing.assert_array_equal(grid[4:6, 1:4, 0], 255)
  np.testing.assert_array_equal(grid[4:6, 5:8, 0], 191)
  assert evaluation.tile_row_centres(2, height=2) == [1.5, 4.5]  # the middles of rows 1–2, 4–5
  with pytest.raises(ValueError, match="pad"):
    evaluation.tile_rows(images, rows=2, pad=-1)


def test_per_class_examples_fill_missing_classes_with_blank_images():
  images = np.stack([np.full((2, 2, 1), 0.5)] * 3).astype(np.float32)
  out = evaluation.per_class_examples(images, np.array([0, 0, 2]), 3, per_class=2)
  assert out.shape == (6, 2, 2, 1)
  np.testing.assert_array_equal(out[:, 0, 0, 0], [0.5, 0.5, -1, -1, 0.5, -1])


def test_eval_report_needs_a_reason_for_a_missing_fid():
  kwargs = dict(model="m", dataset="digits", accuracies={"logreg": 0.5}, num_samples=10,
                seed=0, test_size=5, privacy={})
  with pytest.raises(ValueError, match="reason"):
    evaluation.eval_report(**kwargs)
  report = evaluation.eval_report(fid_reason="not requested", **kwargs)
  assert report["fid"] is None and report["fid_details"]["reason"] == "not requested"

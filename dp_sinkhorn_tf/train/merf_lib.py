"""DP-MERF (Harder et al. 2021) as a run: one release of the class-conditional
random-feature sums (`privacy.mean_embedding`), then generator training against it.

The loss compares the generator's class-conditional random-feature means with the released
ones (`privacy.mean_embedding`):

  L(G) = Σ_c p̃_c ‖ m_c(G) − μ̃_c ‖²,   m_c(G) = mean_{i : y_i = c} φ(G(z_i, y_i)),      (1)

over a batch of z_i ~ U(0, 1) and labels y_i ~ p̃ (classes absent from the batch contribute a
constant). With labels drawn from p̃ this is, up to the batch's label noise, DP-MERF's
‖ (1/B) Σ_i e_{y_i} ⊗ φ(G(z_i, y_i)) − p̃ ⊗ μ̃ ‖².

A run (`run`): the secret key (read from <workdir>/privacy_key, or drawn and written there,
0600, never published), σ for the target (ε, δ) of the one release, the release itself
(kept as <workdir>/release.npz: it is the DP output, publishable, and a re-run reuses it
instead of spending again — only after checking, against the PRIVATE release_check.json
beside it, that the data (keyed fingerprint), the key and the release's flags are the same),
privacy.json, the training, the SavedModel export.

Privacy: `train_generator` takes the released μ̃ and p̃ (and the public frequencies and seed)
and nothing else; everything here is post-processing of the one release, whose ε
`privacy.mean_embedding.dp_event` states. Training can run for any number of steps.
"""

import hmac
import json
import os
from typing import Callable, NamedTuple, Optional, Sequence

import dp_accounting
import numpy as np
import tensorflow as tf

from dp_sinkhorn_tf.data import datasets
from dp_sinkhorn_tf.data import spec as data_spec
from dp_sinkhorn_tf.io import files, rundir
from dp_sinkhorn_tf.models import generators
from dp_sinkhorn_tf.privacy import accounting, keys, mean_embedding
from dp_sinkhorn_tf.release import export_lib
from dp_sinkhorn_tf.train import fit_lib, merf_config, provenance

RELEASE_FILE = "release.npz"
CHECK_FILE = "release_check.json"  # PRIVATE: the keyed data fingerprint (0600)
MECHANISM = "mean_embedding"

# The frozen configs (declared with their flags in `train.merf_config`, TF-free).
ReleaseConfig = merf_config.ReleaseConfig
MerfTrainConfig = merf_config.MerfTrainConfig
RunConfig = merf_config.RunConfig


class TrainInfo(NamedTuple):
  """losses: [steps] float32, the loss (1) at each step."""

  losses: np.ndarray


def merf_loss(images: tf.Tensor, labels: tf.Tensor, means: tf.Tensor, proportions: tf.Tensor,
              frequencies: tf.Tensor) -> tf.Tensor:
  """L of (1) for a generated batch: images [B, ...] float32, labels [B] int32, means μ̃
  [K, 2F] float32, proportions p̃ [K] float32, frequencies [F, d] float32."""
  num_classes = tf.shape(means)[0]
  flat = tf.reshape(images, [tf.shape(images)[0], -1])
  phi = mean_embedding.fourier_features(flat, frequencies)
  sums = tf.math.unsorted_segment_sum(phi, labels, num_classes)
  counts = tf.math.unsorted_segment_sum(tf.ones_like(labels, tf.float32), labels, num_classes)
  batch_means = sums / tf.maximum(counts, 1.0)[:, None]
  return tf.reduce_sum(proportions * tf.reduce_sum((batch_means - means)**2, axis=1))


def make_generator(cfg: MerfTrainConfig, image_shape: Sequence[int], num_classes: int):
  tf.keras.utils.set_random_seed(cfg.seed)     # public: the initialisation only
  return generators.make_generator(cfg.architecture, tuple(image_shape), num_classes,
                                   latent_dim=cfg.latent_dim, embed_dim=cfg.embed_dim,
                                   hidden=cfg.hidden, depth=cfg.depth, output=cfg.output,
                                   precision="float32")


def train_generator(released: mean_embedding.ClassEmbeddings, frequencies: np.ndarray,
                    image_shape: Sequence[int], cfg: MerfTrainConfig,
                    on_step: Optional[Callable[[int, float], None]] = None):
  """Trains a new generator on (1); returns (generator, TrainInfo). on_step(t, loss) is
  called after each step (progress for a command line).

  released: the post-processed release (μ̃, p̃); frequencies: the public W [F, d] with
  d = prod(image_shape). Deterministic given its arguments (stateless latents and labels
  from cfg.seed), so a test can compare two calls bit for bit.
  """
  generator = make_generator(cfg, image_shape, int(released.means.shape[0]))
  return generator, fit(generator, released, frequencies, cfg, on_step)


def fit(generator: tf.keras.Model, released: mean_embedding.ClassEmbeddings,
        frequencies: np.ndarray, cfg: MerfTrainConfig,
        on_step: Optional[Callable[[int, float], None]] = None) -> TrainInfo:
  """Fits `generator` (g(z, y), latents of its `latent_dim`) in place to (1) for cfg.steps
  Adam steps of cfg.batch_size (cfg's schedule and seed; its generator fields unused). Sees
  the release, W and the public seed only: post-processing."""
  means = tf.constant(released.means, tf.float32)
  proportions = tf.constant(released.proportions, tf.float32)
  w = tf.constant(frequencies, tf.float32)
  schedule = tf.keras.optimizers.schedules.ExponentialDecay(
      cfg.learning_rate, cfg.decay_every, cfg.lr_decay, staircase=True)
  optimizer = tf.keras.optimizers.Adam(schedule)
  log_p = tf.math.log(tf.maximum(proportions, 1e-12))[None, :]
  latent_dim = int(generator.latent_dim)

  @tf.function(jit_compile=False, autograph=False)
  def step(t):
    seed = tf.stack([tf.constant(cfg.seed, tf.int64), tf.cast(t, tf.int64)])
    z = generators.sample_latent(cfg.batch_size, latent_dim, seed)
    labels = tf.random.stateless_categorical(log_p, cfg.batch_size, seed + [0, 2**40],
                                             dtype=tf.int32)[0]
    with tf.GradientTape() as tape:
      images = tf.cast(generator([z, labels], training=True), tf.float32)
      loss = merf_loss(images, labels, means, proportions, w)
    grads = tape.gradient(loss, generator.trainable_variables)
    optimizer.apply_gradients(zip(grads, generator.trainable_variables))
    return loss

  return TrainInfo(fit_lib.run_steps(step, cfg.steps, on_step))


def release_epsilon(params, delta: float) -> float:
  """ε of the one release (RDP accountant, add/remove), from its dp_event."""
  acc = dp_accounting.rdp.RdpAccountant(
      neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
  acc.compose(mean_embedding.dp_event(params))
  return float(acc.get_epsilon(delta))


def plan_release(cfg: ReleaseConfig, input_dim: int):
  """(frequencies W [F, d] float64, lattice params): σ is the smallest multiplier whose
  release meets cfg.epsilon (`accounting.min_noise_multiplier` at q = 1, one step)."""
  sigma = accounting.min_noise_multiplier(cfg.epsilon, cfg.delta, 1.0, 1, "rdp")
  frequencies = mean_embedding.fourier_frequencies(input_dim, cfg.num_frequencies,
                                                   cfg.length_scale, cfg.seed)
  return frequencies, mean_embedding.release_params(sigma, 2 * cfg.num_frequencies + 1)


def open_key(workdir: str, insecure_fixed_key: bool, seed: int) -> keys.PrivacyKey:
  """The run's key: <workdir>/privacy_key if it exists, else a fresh one written there
  (refused when a release or its check file is already there: a new key could not have
  made it)."""
  path = os.path.join(workdir, rundir.KEY_FILE)
  if files.exists(path):
    source = keys.SOURCE_INSECURE if insecure_fixed_key else keys.SOURCE_OS
    return keys.read_key_file(path, source)
  for name in (RELEASE_FILE, CHECK_FILE):
    if files.exists(os.path.join(workdir, name)):
      raise ValueError(f"{path}: missing, but {os.path.join(workdir, name)} is there: the key "
                       "it was released with is gone; use a new --workdir")
  key = keys.insecure_fixed(seed) if insecure_fixed_key else keys.generate()
  files.makedirs(workdir)
  keys.write_key_file(path, key)
  return key


def key_check(key: keys.PrivacyKey) -> str:
  """HMAC-SHA256(key, a constant) as hex: names the key without revealing it."""
  return hmac.new(keys.to_text(key).encode(), b"dp_sinkhorn_tf.merf release key",
                  "sha256").hexdigest()


def release_check(cfg: RunConfig, key: keys.PrivacyKey, dataset) -> dict:
  """The contents of <workdir>/release_check.json (PRIVATE): what a reuse of release.npz must
  match — the flags that shape the release (`merf_config.release_flags`) and their SHA-256,
  the key (`key_check`) and the keyed data fingerprint (`keys.data_fingerprint` of the
  float32 images in [−1, 1] the release sees, and the labels). Private because the
  fingerprint is a function of the private data (keyed, but not covered by ε)."""
  flags = merf_config.release_flags(cfg)
  return {
      "release_flags": flags, "release_flags_sha256": merf_config.flags_sha256(flags),
      "key_check": key_check(key),
      "data_fingerprint": provenance.fingerprint(key, dataset.pixels, dataset.labels,
                                                 dataset.pixel_max),
  }


def check_reuse(stored: dict, current: dict, workdir: str) -> None:
  """Raises ValueError (one line naming the flag or the file) unless `current` (a
  `release_check` of this run) matches the `stored` one of the release in `workdir`."""
  release = os.path.join(workdir, RELEASE_FILE)
  old, new = stored.get("release_flags", {}), current["release_flags"]
  for name in sorted(set(old) | set(new)):
    if old.get(name) != new.get(name):
      raise ValueError(f"--{name}={new.get(name)!r}: {release} was released with "
                       f"--{name}={old.get(name)!r}; use that value or a new --workdir")
  if stored.get("release_flags_sha256") != current["release_flags_sha256"]:
    raise ValueError(f"{os.path.join(workdir, CHECK_FILE)}: its flag hash does not match its "
                     "flags (edited?); use a new --workdir")
  if stored.get("key_check") != current["key_check"]:
    raise ValueError(f"{os.path.join(workdir, rundir.KEY_FILE)}: not the key {release} was "
                     "released with; use a new --workdir")
  if stored.get("data_fingerprint") != current["data_fingerprint"]:
    raise ValueError(f"--dataset / --idx_dir / --data_dir: the data read now are not those "
                     f"{release} was released from (keyed fingerprint in {CHECK_FILE}); use "
                     "the same data or a new --workdir")


def privacy_report(cfg: ReleaseConfig, params, dataset_size: int, key) -> dict:
  """privacy.json of a run: what was released, at which noise, and its ε."""
  return {
      "dp": True, "private": key.private, "mechanism": MECHANISM,
      "epsilon": release_epsilon(params, cfg.delta), "delta": cfg.delta,
      "target_epsilon": cfg.epsilon, "accountant": "rdp",
      "noise_multiplier": params.noise_multiplier * 2.0,
      "effective_noise_multiplier": mean_embedding.effective_noise_multiplier(params),
      "dp_event": repr(mean_embedding.dp_event(params)), "steps": 1, "sample_rate": 1.0,
      "dataset_size": dataset_size, "neighbouring_relation": accounting.NEIGHBOURING_RELATION,
      "released": "S̃ = Σ e_y ⊗ [a·φ(x), b] + lattice noise (release.npz)",
      "num_frequencies": cfg.num_frequencies, "length_scale": cfg.length_scale,
      "count_weight": cfg.count_weight, "frequency_seed": cfg.seed,
      "lattice_gamma": params.gamma, "key_source": key.source,
  }


def release_once(cfg: RunConfig, dataset, key) -> tuple:
  """(S̃, frequencies, params, privacy report): S̃ read from <workdir>/release.npz when a
  previous attempt made it from the same data, key and release flags (`check_reuse`: else a
  ValueError, and nothing is written), else released now.

  Order of writes: release_check.json (what is about to be released), release.npz,
  privacy.json. A crash between the first two leaves a check file without a release: the
  next attempt checks it and releases the same S̃ again (its noise is the key's, at step 0),
  so nothing is ever released twice with different noise."""
  frequencies, params = plan_release(cfg.release, int(np.prod(dataset.image_shape)))
  path = os.path.join(cfg.workdir, RELEASE_FILE)
  check_path = os.path.join(cfg.workdir, CHECK_FILE)
  current = release_check(cfg, key, dataset)
  if files.exists(check_path):
    check_reuse(json.loads(files.read_text(check_path)), current, cfg.workdir)
  elif files.exists(path):
    raise ValueError(f"{path}: no {CHECK_FILE} beside it, so nothing shows it came from this "
                     "data, key and flags; use a new --workdir")
  else:
    files.write_text_atomic(check_path, json.dumps(current, indent=1, sort_keys=True),
                            mode=0o600)
  if files.exists(path):
    released = fit_lib.read_release(path)
  else:
    seed = keys.step_seed(key, 0, keys.STREAM_MEAN_EMBEDDING)
    released = mean_embedding.release(dataset.images, dataset.labels, frequencies,
                                      dataset.num_classes, cfg.release.count_weight, params,
                                      seed)
    fit_lib.write_release(path, released)
  report = privacy_report(cfg.release, params, len(dataset), key)
  files.write_json_atomic(os.path.join(cfg.workdir, rundir.REPORT_FILE), report)
  return released, frequencies, params, report


def run(cfg: RunConfig, on_step: Optional[Callable[[int, float], None]] = None) -> dict:
  """The whole run; returns {"export": path, "privacy": report, "final_loss": float}."""
  dataset = datasets.load_dataset(cfg.dataset, cfg.data_dir, cfg.idx_dir)
  key = open_key(cfg.workdir, cfg.insecure_fixed_key, cfg.release.seed)
  released, frequencies, _, report = release_once(cfg, dataset, key)
  spec = data_spec.DataSpec(source=cfg.dataset, image_shape=tuple(dataset.image_shape),
                            label_names=tuple(dataset.label_names))
  del dataset                 # training below sees the release and public values only
  embeddings = mean_embedding.class_embeddings(released, cfg.release.count_weight)
  generator, info = train_generator(embeddings, frequencies, spec.image_shape, cfg.train,
                                    on_step)
  metadata = {k: report[k] for k in ("dp", "epsilon", "delta", "accountant", "mechanism",
                                     "noise_multiplier", "steps", "target_epsilon",
                                     "dataset_size")}
  metadata.update(dataset=cfg.dataset, label_names=list(spec.label_names),
                  data_spec=spec.to_json(), private=report["private"])
  path = export_lib.export_generator(generator, os.path.join(cfg.workdir, "export"),
                                     metadata=metadata)
  return {"export": path, "privacy": report, "final_loss": float(info.losses[-1])}

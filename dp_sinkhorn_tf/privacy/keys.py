"""The run's secret key: the only source of the randomness that decides what is released.

Everything that decides a release — the Poisson batch of step t and the Gaussian noise of
step t — is a stateless function of (key, t):

  batch seed(t) = [k₀ + 1, k₁ + t],   noise seed(t) = [k₀ + 2, k₁ + t]   (int64 [2])

and, under --privacy_unit=group, which records of a sampled group the step takes:
group-subset seed(t) = [k₀ + 3, k₁ + t]; the mean-embedding release (`mean_embedding`, one
release) takes [k₀ + 4, k₁], the warm start's (`class_means`, one release) [k₀ + 5, k₁].

fed to TF's stateless Philox ops, which scramble both seed words into the Philox key and
counter. So

  * the noise never repeats: two different steps, or the batch and the noise of one step,
    never share a seed (the first word tells the stream, the second the step);
  * nothing depends on a process's RNG position: a resumed run draws exactly the noise an
    uninterrupted run would at the same step, so replaying step t after a crash releases
    the same value again (see `trainer`), never fresh noise correlated with old noise;
  * nothing depends on `--seed`, which is public (flags.txt, export metadata) and keeps
    steering only data-independent randomness (initialisation, latents, generated labels).

The key is 2 × 62 random bits from the OS (`os.urandom`), drawn at the first start of a run
and stored in <workdir>/privacy_key with mode 0600. It is never written anywhere else
(flags.txt, privacy.json, the export, TensorBoard and logs carry at most the *path* of a key
file); `repr(PrivacyKey)` hides it. The words stay below 2⁶² so k + t never overflows int64.

Security model: an attacker who learns the key can replay every batch and every noise draw
and remove the noise; the guarantee then is gone. Philox is a statistical, not a
cryptographic, generator, so the key's secrecy rests on an attacker not inverting Philox
from the released (noised) values — the same assumption as jax_privacy's keyed PRNG. A data
owner who keeps the key (or supplies one with --privacy_key_file) can reproduce the run bit
for bit; a key must never be reused for a run on different data.

`--insecure_fixed_key` derives the key from `--seed` (public): only for tests and
debugging. Such a run is marked "private": false in privacy.json and in the export.

This module also computes the data fingerprint HMAC-SHA256(key, images ‖ labels [‖ unit ‖
groups]), kept in the ledger: a resume on different private data would reuse the run's noise
on other data (two releases with the same noise differ by a noise-free quantity), so it is
refused. It covers whatever decides a step's batch: the images as training sees them
(float32 in [−1, 1]), the labels and, under --privacy_unit=group, the group of every record
and the number of records a sampled group gives (--max_per_group). Keyed, so the fingerprint
reveals nothing about the data without the key.
"""

import dataclasses
import hashlib
import hmac
import os
import re
from typing import Tuple

import numpy as np
import tensorflow as tf

from dp_sinkhorn_tf.io import files

KEY_BITS = 62
STREAM_BATCH = 1
STREAM_NOISE = 2
STREAM_GROUP_SUBSET = 3
STREAM_MEAN_EMBEDDING = 4  # the one release of `mean_embedding` (step 0)
STREAM_WARM_START = 5  # the warm start's one release of `class_means` (step 0)
STREAMS = (STREAM_BATCH, STREAM_NOISE, STREAM_GROUP_SUBSET, STREAM_MEAN_EMBEDDING,
           STREAM_WARM_START)
_FORMAT = "dp_sinkhorn_tf-privacy-key-v1"
_PATTERN = re.compile(rf"^{_FORMAT} ([0-9a-f]{{16}}) ([0-9a-f]{{16}})$")

SOURCE_OS = "os_entropy"
SOURCE_FILE = "privacy_key_file"
SOURCE_INSECURE = "insecure_fixed_key"
INSECURE_REASON = ("--insecure_fixed_key: the noise and the Poisson batches follow from the "
                   "public --seed, so anyone can replay them; no privacy guarantee")


class KeyFileError(ValueError):
  """A key file that is missing, unreadable or not a key; the message names the file."""


@dataclasses.dataclass(frozen=True)
class PrivacyKey:
  """Two secret words in [0, 2⁶²) and where they came from (SOURCE_*)."""

  words: Tuple[int, int]
  source: str = SOURCE_OS

  def __post_init__(self):
    if len(self.words) != 2 or not all(0 <= int(w) < 2**KEY_BITS for w in self.words):
      raise ValueError(f"a privacy key is two integers in [0, 2^{KEY_BITS})")

  def __repr__(self) -> str:  # never print the secret
    return f"PrivacyKey(<secret>, source={self.source!r})"

  __str__ = __repr__

  @property
  def private(self) -> bool:
    """False for --insecure_fixed_key: the key is a function of public flags."""
    return self.source != SOURCE_INSECURE

  def same_secret(self, other: "PrivacyKey") -> bool:
    return tuple(self.words) == tuple(other.words)


def generate() -> PrivacyKey:
  """A fresh key from the OS's entropy source."""
  raw = os.urandom(16)
  mask = (1 << KEY_BITS) - 1
  return PrivacyKey((int.from_bytes(raw[:8], "big") & mask,
                     int.from_bytes(raw[8:], "big") & mask), SOURCE_OS)


def insecure_fixed(seed: int) -> PrivacyKey:
  """The public, reproducible key of --insecure_fixed_key: SHA-256 of the seed."""
  digest = hashlib.sha256(f"dp_sinkhorn_tf insecure fixed key {int(seed)}".encode()).digest()
  mask = (1 << KEY_BITS) - 1
  return PrivacyKey((int.from_bytes(digest[:8], "big") & mask,
                     int.from_bytes(digest[8:16], "big") & mask), SOURCE_INSECURE)


def to_text(key: PrivacyKey) -> str:
  return f"{_FORMAT} {key.words[0]:016x} {key.words[1]:016x}\n"


def from_text(text: str, path: str, source: str = SOURCE_OS) -> PrivacyKey:
  match = _PATTERN.match(text.strip())
  if match is None:
    raise KeyFileError(f"{path}: not a privacy key (expected one line '{_FORMAT} <16 hex> "
                    "<16 hex>', as written by dp_sinkhorn_tf.main)")
  try:
    return PrivacyKey((int(match.group(1), 16), int(match.group(2), 16)), source)
  except ValueError:
    raise KeyFileError(f"{path}: key words must be below 2^{KEY_BITS}") from None


def read_key_file(path: str, source: str = SOURCE_OS) -> PrivacyKey:
  """Reads a key written by `write_key_file`; KeyFileError naming the file otherwise."""
  try:
    text = files.read_bytes(path)[:4096].decode("utf-8", "replace")
  except (OSError, tf.errors.OpError) as e:
    cause = getattr(e, "strerror", None) or getattr(e, "message", None) or e
    raise KeyFileError(f"{path}: cannot read the privacy key ({cause})") from None
  return from_text(text, path, source)


def write_key_file(path: str, key: PrivacyKey) -> None:
  """Writes the key readable and writable by its owner only (0600 on a local file system;
  on a shared one the store's access control applies), atomically (`files`)."""
  files.write_text_atomic(path, to_text(key), mode=0o600)


def step_seed(key: PrivacyKey, step, stream: int) -> tf.Tensor:
  """The stateless seed [k₀ + stream, k₁ + step] (int64 [2]) of one stream at one step."""
  if stream not in STREAMS:
    raise ValueError(f"unknown key stream {stream}")
  step = tf.cast(step, tf.int64)
  return tf.stack([tf.constant(key.words[0] + stream, tf.int64),
                   tf.constant(key.words[1], tf.int64) + step])


def data_fingerprint(key: PrivacyKey, images: np.ndarray, labels: np.ndarray,
                     groups=None, unit: str = "", image_chunks=None) -> str:
  """HMAC-SHA256(key, shapes ‖ images ‖ labels [‖ unit ‖ groups]) as hex: equal iff the
  data are (w.h.p.).

  images: [N, …]; its bytes are those of its float32 values, or of `image_chunks` when
  given (an iterable of float32 arrays whose concatenation along axis 0 the images are, e.g.
  uint8 pixels scaled a chunk at a time: no float32 copy of the whole set). The digest of
  a record-level set (groups None, unit "") is the same either way. groups: [N] int group
  ids; unit: what else decides the batch (e.g. "group:max_per_group=4").
  """
  mac = hmac.new(to_text(key).encode(), digestmod=hashlib.sha256)
  labels = np.ascontiguousarray(labels, np.int64)
  mac.update(repr((tuple(images.shape), labels.shape)).encode())
  for chunk in (image_chunks if image_chunks is not None else (images,)):
    mac.update(np.ascontiguousarray(chunk, np.float32).tobytes())
  mac.update(labels.tobytes())
  if groups is not None or unit:
    mac.update(f"unit {unit}".encode())
  if groups is not None:
    groups = np.ascontiguousarray(groups, np.int64)
    mac.update(repr(groups.shape).encode())
    mac.update(groups.tobytes())
  return mac.hexdigest()

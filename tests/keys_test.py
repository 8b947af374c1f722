"""Tests for dp_sinkhorn_tf.privacy.gaussian.keys: the secret key, its file, its seeds, the fingerprint."""

import os
import stat

import numpy as np
import pytest
import tensorflow as tf

from dp_sinkhorn_tf.privacy import keys


def test_fresh_keys_are_random_and_below_2_to_the_62():
  fresh = [keys.generate() for _ in range(50)]
  assert len({k.words for k in fresh}) == 50
  assert all(0 <= w < 2**62 for k in fresh for w in k.words)
  # 50 × 2 words of 62 random bits: the top bit is set about half the time.
  top = sum((w >> 61) & 1 for k in fresh for w in k.words)
  assert 25 <= top <= 75


def test_repr_and_str_never_show_the_secret():
  key = keys.generate()
  for text in (repr(key), str(key), f"{key}", repr([key])):
    assert f"{key.words[0]:x}" not in text and str(key.words[0]) not in text
    assert "<secret>" in text


def test_key_file_round_trip_is_owner_only(tmp_path):
  path = str(tmp_path / "k")
  os.umask(0o022)
  key = keys.generate()
  keys.write_key_file(path, key)
  assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
  back = keys.read_key_file(path)
  assert back.same_secret(key)
  assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


@pytest.mark.parametrize("text", ["", "hello", "dp_sinkhorn_tf-privacy-key-v1 00 11",
                                  "dp_sinkhorn_tf-privacy-key-v1 " + "f" * 16 + " " + "0" * 16])
def test_bad_key_files_name_the_file(tmp_path, text):
  path = tmp_path / "bad.key"
  path.write_text(text)
  with pytest.raises(keys.KeyFileError, match="bad.key"):
    keys.read_key_file(str(path))


def test_missing_key_file_names_the_file(tmp_path):
  with pytest.raises(keys.KeyFileError, match="nope.key: cannot read"):
    keys.read_key_file(str(tmp_path / "nope.key"))


def test_insecure_key_is_a_public_function_of_the_seed_and_marked_not_private():
  a, b, c = (keys.insecure_fixed(0), keys.insecure_fixed(0),
             keys.insecure_fixed(1))
  assert a.same_secret(b) and not a.same_secret(c)
  assert not a.private and keys.generate().private


def test_step_seeds_are_key_plus_stream_and_key_plus_step():
  key = keys.PrivacyKey((10, 20))
  np.testing.assert_array_equal(
      keys.step_seed(key, 7, keys.STREAM_NOISE).numpy(), [12, 27])
  np.testing.assert_array_equal(
      keys.step_seed(key, tf.constant(7, tf.int64), keys.STREAM_BATCH).numpy(),
      [11, 27])
  top = keys.PrivacyKey((2**62 - 1, 2**62 - 1))  # no int64 overflow at 2⁶⁰ steps
  assert keys.step_seed(top, 2**60, 2).numpy().min() > 0
  # The group-subset stream: its own first word, so it never shares a seed with a batch
  # or a noise draw of any step.
  np.testing.assert_array_equal(
      keys.step_seed(key, 7, keys.STREAM_GROUP_SUBSET).numpy(), [13, 27])
  # The mean-embedding release: its own first word too.
  np.testing.assert_array_equal(
      keys.step_seed(key, 0, keys.STREAM_MEAN_EMBEDDING).numpy(), [14, 20])
  np.testing.assert_array_equal(
      keys.step_seed(key, 0, keys.STREAM_WARM_START).numpy(), [15, 20])
  assert len(set(keys.STREAMS)) == 5
  with pytest.raises(ValueError):
    keys.step_seed(key, 0, 6)


def test_data_fingerprint_sees_one_changed_record_and_depends_on_the_key():
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (20, 8, 8, 1)).astype(np.float32)
  labels = rng.integers(0, 10, 20)
  key = keys.generate()
  base = keys.data_fingerprint(key, images, labels)
  assert base == keys.data_fingerprint(key, images.copy(), labels.copy())
  changed = images.copy()
  changed[3, 2, 2, 0] += 1e-3
  assert keys.data_fingerprint(key, changed, labels) != base
  assert keys.data_fingerprint(key, images[:-1], labels[:-1]) != base  # D minus one
  relabelled = labels.copy()
  relabelled[0] = (relabelled[0] + 1) % 10
  assert keys.data_fingerprint(key, images, relabelled) != base
  assert keys.data_fingerprint(keys.generate(), images, labels) != base


def test_a_chunked_fingerprint_of_uint8_pixels_equals_that_of_their_float32_images():
  # Training hashes uint8 pixels scaled a chunk at a time (no float32 copy of the set): the
  # digest is that of the float32 images, so runs of earlier versions still resume.
  rng = np.random.default_rng(1)
  pixels = rng.integers(0, 256, (37, 4, 4, 3), dtype=np.uint8)
  labels = rng.integers(0, 3, 37)
  key = keys.generate()
  images = (pixels.astype(np.float32) - np.float32(127.5)) / np.float32(127.5)
  chunks = ((pixels[i:i + 8].astype(np.float32) - np.float32(127.5)) / np.float32(127.5)
            for i in range(0, 37, 8))
  assert keys.data_fingerprint(key, pixels, labels, image_chunks=chunks) == \
      keys.data_fingerprint(key, images, labels)


def test_the_fingerprint_covers_the_groups_and_the_unit():
  rng = np.random.default_rng(2)
  images = rng.uniform(-1, 1, (12, 4, 4, 1)).astype(np.float32)
  labels = rng.integers(0, 2, 12)
  groups = np.repeat(np.arange(4), 3)
  key = keys.generate()
  base = keys.data_fingerprint(key, images, labels, groups, "group:max_per_group=2")
  assert base != keys.data_fingerprint(key, images, labels)
  moved = groups.copy()
  moved[0] = 1  # one record moved to another group: another private set of groups
  assert keys.data_fingerprint(key, images, labels, moved, "group:max_per_group=2") != base
  # Another m takes other records of a group at the same step: other releases.
  assert keys.data_fingerprint(key, images, labels, groups, "group:max_per_group=3") != base

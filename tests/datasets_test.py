"""Tests for dp_sinkhorn_tf.data.datasets (no downloads: synthetic IDX files and TFDS mock data)."""

import gzip
import os
import struct

import numpy as np
import pytest
import tensorflow_datasets as tfds

from dp_sinkhorn_tf.data import datasets

FASHION_DIR = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist


def _idx_bytes(array: np.ndarray) -> bytes:
  # Magic 00 00 08 <rank>, then rank big-endian uint32 dims, then the bytes row-major.
  header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
  return header + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def _write_split(folder, split, images, labels, compress):
  for stem, array in zip(datasets.IDX_FILES[split], (images, labels)):
    payload = _idx_bytes(array)
    path = os.path.join(folder, stem + (".gz" if compress else ""))
    with open(path, "wb") as fh:
      fh.write(gzip.compress(payload) if compress else payload)


# ---- scaling and the Dataset record -------------------------------------------------------

def test_scaling_maps_endpoints_and_midpoint_exactly():
  # (x − m) / m with m = max/2: 0 → −1, m → 0, max → 1, all exactly representable.
  np.testing.assert_array_equal(datasets.scale_to_unit_interval(np.array([0, 255], np.uint8), 255.0),
                                [-1.0, 1.0])
  np.testing.assert_array_equal(datasets.scale_to_unit_interval(np.array([0, 8, 16]), 16.0),
                                [-1.0, 0.0, 1.0])
  assert datasets.scale_to_unit_interval(np.arange(256, dtype=np.uint8), 255.0).dtype == np.float32


def test_dataset_record_checks_its_fields():
  images, labels = np.zeros((2, 4, 4, 1), np.float32), np.zeros(2, np.int32)
  ds = datasets.Dataset("x", images, labels, 2, (4, 4, 1), ("a", "b"))
  assert ds.image_shape == (4, 4, 1)
  with pytest.raises(ValueError, match="image_shape"):
    datasets.Dataset("x", images, labels, 2, (4, 4, 3), ("a", "b"))
  with pytest.raises(ValueError, match="labels"):
    datasets.Dataset("x", images, labels[:1], 2, (4, 4, 1), ("a", "b"))
  with pytest.raises(ValueError, match="label_names"):
    datasets.Dataset("x", images, labels, 3, (4, 4, 1), ("a", "b"))
  with pytest.raises(ValueError, match="without pixel_max must be float32"):
    datasets.Dataset("x", images.astype(np.uint8), labels, 2, (4, 4, 1), ("a", "b"))
  with pytest.raises(ValueError, match="uint8 with pixel_max"):
    datasets.Dataset("x", images, labels, 2, (4, 4, 1), ("a", "b"), pixel_max=255)
  with pytest.raises(ValueError, match="groups must be"):  # id 1 unused
    datasets.Dataset("x", images, labels, 2, (4, 4, 1), ("a", "b"),
                     groups=np.array([0, 2], np.int64))


def test_the_private_set_is_stored_as_uint8_and_scaled_on_demand():
  train = datasets.load_dataset("digits")
  assert train.pixels.dtype == np.uint8 and train.pixel_max == 16 and train.pixels.max() == 16
  # The float32 view is the formula on the stored pixels, bit for bit, and so is every chunk.
  np.testing.assert_array_equal(train.images,
                                datasets.scale_to_unit_interval(train.pixels, 16))
  np.testing.assert_array_equal(np.concatenate(list(datasets.unit_chunks(train.pixels, 16, 100))),
                                train.images)
  assert train.pixels.nbytes * 4 == train.images.nbytes
  assert len(train) == train.num_units == 1438 and train.unit == "record"
  floats = train.as_float()
  assert floats.pixel_max is None and floats.pixels.dtype == np.float32
  np.testing.assert_array_equal(floats.images, train.images)


# ---- the entry point: load(DataConfig) ---------------------------------------------------

def _data(**kwargs):
  from dp_sinkhorn_tf.train import config
  return config.DataConfig(**kwargs)


def test_image_size_and_channels_apply_to_the_built_ins():
  ds = datasets.load(_data(image_size=(16, 12), channels=3))
  assert ds.image_shape == (16, 12, 3) and ds.pixel_max == 16 and ds.pixels.max() <= 16
  plain = datasets.load(_data())
  np.testing.assert_array_equal(plain.pixels, datasets.load_dataset("digits").pixels)
  spec = datasets.spec_of(ds, _data(image_size=(16, 12), channels=3))
  assert spec.image_shape == (16, 12, 3) and spec.image_size == (16, 12) and spec.channels == 3
  assert spec.source == "digits" and spec.label_names == datasets.DIGIT_LABELS


def test_a_held_out_split_takes_the_models_shape_and_names():
  from dp_sinkhorn_tf.data import spec as data_spec
  like = data_spec.DataSpec("digits", (12, 12, 1), datasets.DIGIT_LABELS)
  test = datasets.load(_data(), "test", like=like)
  assert test.image_shape == (12, 12, 1) and len(test) == 359
  other = data_spec.DataSpec("folder:x", (8, 8, 1), ("cat", "dog"))
  with pytest.raises(ValueError, match=r"--dataset=digits: classes \['0'"):
    datasets.load(_data(), "test", like=other)
  one = data_spec.DataSpec("folder:x", (8, 8, 1), ("all",), labelled=False)
  assert set(datasets.load(_data(), "test", like=one).labels) == {0}


def test_a_set_that_cannot_fit_is_one_line_with_the_bytes_before_any_decoding(tmp_path,
                                                                              monkeypatch):
  import tensorflow as tf
  for i in range(3):
    (tmp_path / f"{i}.png").write_bytes(tf.io.encode_png(np.zeros((8, 8, 3), np.uint8)).numpy())
  monkeypatch.setattr(datasets, "available_memory_bytes", lambda: 1000)
  # 3 images × 32×32×3 bytes, twice (the array and the training copy) = 18,432 bytes.
  with pytest.raises(ValueError, match=r"^--data=folder:.*: the private set needs 18,432 "
                     r"bytes \(3 images × 32×32×3 uint8, twice.*but 1,000 bytes"):
    datasets.load(_data(dataset=None, source=f"folder:{tmp_path}", image_size=(32, 32)))
  assert datasets.bytes_needed(200_000, (32, 32, 3)) == 2 * 614_400_000
  monkeypatch.setattr(datasets, "available_memory_bytes", lambda: 10**9)
  assert len(datasets.load(_data(dataset=None, source=f"folder:{tmp_path}"))) == 3


def test_a_user_source_becomes_a_dataset_with_groups(tmp_path):
  np.savez(tmp_path / "d.npz", images=np.zeros((4, 8, 8), np.uint8),
           labels=np.array([0, 1, 0, 1]), groups=np.array([7, 7, 3, 9]))
  ds = datasets.load(_data(dataset=None, source=f"npz:{tmp_path / 'd.npz'}",
                           privacy_unit="group", max_per_group=2))
  assert ds.name == f"npz:{tmp_path / 'd.npz'}" and ds.unit == "group"
  assert ds.num_groups == ds.num_units == 3 and list(ds.groups) == [1, 1, 0, 2]
  spec = datasets.spec_of(ds, _data(dataset=None, source=f"npz:{tmp_path / 'd.npz'}",
                                    privacy_unit="group", max_per_group=2))
  assert spec.privacy_unit == "group" and spec.max_per_group == 2


# ---- digits -------------------------------------------------------------------------------

def test_digits_split_is_fixed_disjoint_and_scaled():
  train, test = datasets.load_dataset("digits"), datasets.load_test_split("digits")
  # 1,797 digits; round(0.2 · 1797) = 359 held out, 1,438 private training records.
  assert train.images.shape == (1438, 8, 8, 1) and test.images.shape == (359, 8, 8, 1)
  assert train.images.dtype == np.float32 and train.labels.dtype == np.int32
  assert train.images.min() == -1.0 and train.images.max() == 1.0  # raw values 0 and 16
  # Pixel values 0..16 map to k/8 − 1: every value is on that grid.
  np.testing.assert_array_equal((train.images + 1) * 8, np.round((train.images + 1) * 8))
  assert set(np.unique(train.labels)) == set(range(10)) and train.num_classes == 10
  assert train.image_shape == (8, 8, 1) and train.label_names[3] == "3"
  from sklearn.datasets import load_digits
  order = np.random.default_rng(0).permutation(1797)
  np.testing.assert_array_equal(test.labels, load_digits().target[order[-359:]])
  np.testing.assert_array_equal(datasets.load_dataset("digits").images, train.images)


# ---- IDX ----------------------------------------------------------------------------------

@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("split,loader", [("train", datasets.load_dataset),
                                          ("test", datasets.load_test_split)])
def test_idx_round_trip(tmp_path, compress, split, loader):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
  images[0, 0, 0], images[0, 0, 1] = 0, 255
  labels = np.array([0, 1, 2, 3, 4, 9], np.uint8)
  _write_split(str(tmp_path), split, images, labels, compress)
  ds = loader("fashion_mnist", idx_dir=str(tmp_path))
  np.testing.assert_array_equal(ds.labels, labels)
  # Exact inverse of (x − 127.5) / 127.5 in float32 recovers the bytes.
  np.testing.assert_array_equal(np.round(ds.images[..., 0] * 127.5 + 127.5), images)
  assert ds.images[0, 0, 0, 0] == -1.0 and ds.images[0, 0, 1, 0] == 1.0
  assert ds.image_shape == (28, 28, 1) and ds.label_names[9] == "Ankle boot"
  np.testing.assert_array_equal(datasets.read_idx(str(tmp_path / (datasets.IDX_FILES[split][0] + (
      ".gz" if compress else "")))), images)


def test_mnist_idx_gets_digit_label_names(tmp_path):
  _write_split(str(tmp_path), "train", np.zeros((2, 3, 5), np.uint8), np.array([7, 2]), True)
  ds = datasets.load_dataset("mnist", idx_dir=str(tmp_path))
  assert ds.name == "mnist" and ds.label_names[7] == "7" and ds.image_shape == (3, 5, 1)


@pytest.mark.parametrize("compress", [True, False])
def test_bad_magic_names_the_file(tmp_path, compress):
  payload = b"\x12\x34\x08\x03" + b"\x00" * 12
  path = tmp_path / "train-images-idx3-ubyte"
  path.write_bytes(gzip.compress(payload) if compress else payload)
  with pytest.raises(ValueError, match="train-images-idx3-ubyte: bad IDX magic number 0x12340803"):
    datasets.read_idx(str(path))


def test_non_byte_idx_type_is_rejected(tmp_path):
  path = tmp_path / "floats.idx"
  path.write_bytes(struct.pack(">BBBBI", 0, 0, 0x0D, 1, 1) + b"\x00" * 4)
  with pytest.raises(ValueError, match="floats.idx: bad IDX magic number 0x00000d01"):
    datasets.read_idx(str(path))


def test_size_mismatch_names_the_file(tmp_path):
  path = tmp_path / "t.idx"
  # Header says 10 bytes; only 3 follow.
  path.write_bytes(struct.pack(">BBBBI", 0, 0, 8, 1, 10) + b"\x00" * 3)
  with pytest.raises(ValueError, match=r"t.idx: IDX body has 3 bytes, header dims \(10,\) need 10"):
    datasets.read_idx(str(path))


def test_truncated_header_and_corrupt_gzip_name_the_file(tmp_path):
  short = tmp_path / "short.idx"
  short.write_bytes(struct.pack(">BBBBI", 0, 0, 8, 3, 10))
  with pytest.raises(ValueError, match="short.idx: truncated IDX header"):
    datasets.read_idx(str(short))
  broken = tmp_path / "broken.gz"
  broken.write_bytes(gzip.compress(b"\x00\x00\x08\x01" * 10)[:-6])
  with pytest.raises(ValueError, match="broken.gz: corrupt gzip"):
    datasets.read_idx(str(broken))


def test_an_unreadable_idx_file_names_the_file(tmp_path):
  # Not "not found" (that names --idx_dir): a directory in the file's place, as root also
  # gets it where a permission error would not show.
  (tmp_path / "t.idx").mkdir()
  with pytest.raises(ValueError, match=r"t.idx: unreadable \(Is a directory\)"):
    datasets.read_idx(str(tmp_path / "t.idx"))


def test_images_and_labels_must_agree(tmp_path):
  _write_split(str(tmp_path), "train", np.zeros((3, 4, 4), np.uint8), np.zeros(2), False)
  with pytest.raises(ValueError, match="train-labels-idx1-ubyte: expected \\[3\\] labels"):
    datasets.load_dataset("mnist", idx_dir=str(tmp_path))
  _write_split(str(tmp_path), "train", np.zeros((2, 4, 4), np.uint8), np.array([0, 10]), False)
  with pytest.raises(ValueError, match="label 10 outside 0..9"):
    datasets.load_dataset("mnist", idx_dir=str(tmp_path))


def test_missing_idx_file_names_the_flag_and_the_file(tmp_path):
  _write_split(str(tmp_path), "train", np.zeros((2, 4, 4), np.uint8), np.zeros(2), True)
  with pytest.raises(datasets.DataNotFoundError, match="--idx_dir=.*t10k-images-idx3-ubyte"):
    datasets.load_test_split("mnist", idx_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match="not a directory"):
    datasets.load_dataset("mnist", idx_dir=str(tmp_path / "absent"))
  with pytest.raises(ValueError, match="absent.gz: no such IDX file"):
    datasets.read_idx(str(tmp_path / "absent.gz"))


@pytest.mark.skipif(not os.path.isdir(FASHION_DIR), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist_idx_files():
  train = datasets.load_dataset("fashion_mnist", idx_dir=FASHION_DIR)
  assert train.images.shape == (60000, 28, 28, 1)
  assert train.images.min() == -1.0 and train.images.max() == 1.0
  assert np.bincount(train.labels).tolist() == [6000] * 10  # Fashion-MNIST is balanced
  test = datasets.load_test_split("fashion_mnist", idx_dir=FASHION_DIR)
  assert np.bincount(test.labels).tolist() == [1000] * 10


# ---- TFDS ---------------------------------------------------------------------------------

def _raw_mock_examples(name, split, n):
  ds = tfds.load(name, split=split, data_dir="/nonexistent", download=False)
  return list(tfds.as_numpy(ds.take(n)))


@pytest.mark.parametrize("name,shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
@pytest.mark.parametrize("split,loader", [("train", datasets.load_dataset),
                                          ("test", datasets.load_test_split)])
def test_tfds_path_with_mock_data(name, shape, split, loader):
  with tfds.testing.mock_data(num_examples=12):
    ds = loader(name, data_dir="/nonexistent")
    raw = _raw_mock_examples(name, split, 12)  # mock data is seeded: the same examples
  assert ds.images.shape == (12,) + shape and ds.image_shape == shape
  assert ds.images.dtype == np.float32 and ds.labels.dtype == np.int32
  expected = np.stack([ex["image"] for ex in raw]).astype(np.float32)
  np.testing.assert_array_equal(ds.images, (expected - np.float32(127.5)) / np.float32(127.5))
  np.testing.assert_array_equal(ds.labels, [ex["label"] for ex in raw])
  assert ds.num_classes == 10 and ds.label_names == datasets.LABEL_NAMES[name]


def test_celeba_is_32x32_with_the_male_attribute_as_label():
  with tfds.testing.mock_data(num_examples=6):
    ds = datasets.load_dataset("celeb_a", data_dir="/nonexistent")
    raw = _raw_mock_examples("celeb_a", "train", 6)
  assert raw[0]["image"].shape == (218, 178, 3)  # the mock uses the real feature shape
  assert ds.images.shape == (6, 32, 32, 3) and ds.num_classes == 2
  np.testing.assert_array_equal(ds.labels, [int(ex["attributes"]["Male"]) for ex in raw])
  assert ds.label_names == ("female", "male")
  assert -1.0 <= ds.images.min() and ds.images.max() <= 1.0


def test_celeba_at_another_image_size_is_resized_once_from_the_crop():
  import tensorflow as tf

  from dp_sinkhorn_tf.train import config
  with tfds.testing.mock_data(num_examples=3):
    ds = datasets.load(config.DataConfig(dataset="celeb_a", data_dir="/nonexistent",
                                         image_size=(16, 16)))
    raw = _raw_mock_examples("celeb_a", "train", 3)
  crop = tf.image.resize_with_crop_or_pad(np.stack([ex["image"] for ex in raw]), 178, 178)
  direct = tf.cast(tf.clip_by_value(tf.round(tf.image.resize(crop, [16, 16], antialias=True)),
                                    0, 255), tf.uint8).numpy()
  np.testing.assert_array_equal(ds.pixels, direct)  # not 178 → 32 → 16


@pytest.mark.parametrize("size,crop", [((109, 89), None), ((16, 32), (89, 178))])
def test_celeba_at_a_non_square_size_is_cropped_to_its_aspect_not_stretched(size, crop):
  # 109×89 is the image's own aspect: the whole 218×178 image, resized, no crop (the old
  # path cropped 178×178 and stretched it). 16×32 (1:2): the centred 89×178 band.
  import tensorflow as tf

  from dp_sinkhorn_tf.train import config
  with tfds.testing.mock_data(num_examples=3):
    ds = datasets.load(config.DataConfig(dataset="celeb_a", data_dir="/nonexistent",
                                         image_size=size))
    raw = _raw_mock_examples("celeb_a", "train", 3)
  images = np.stack([ex["image"] for ex in raw])
  if crop is not None:
    top, left = (218 - crop[0]) // 2, (178 - crop[1]) // 2
    images = images[:, top:top + crop[0], left:left + crop[1]]
  direct = tf.cast(tf.clip_by_value(tf.round(tf.image.resize(images, size, antialias=True)),
                                    0, 255), tf.uint8).numpy()
  assert ds.pixels.shape == (3, *size, 3)
  np.testing.assert_array_equal(ds.pixels, direct)


def test_missing_tfds_data_names_data_dir(tmp_path):
  with pytest.raises(FileNotFoundError, match=f"'cifar10' .* not found under --data_dir={tmp_path}"):
    datasets.load_dataset("cifar10", data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="tfds build"):
    datasets.load_test_split("mnist", data_dir=str(tmp_path))
  assert os.listdir(tmp_path) == []  # nothing written into the data dir


def test_unknown_dataset_and_misused_idx_dir():
  with pytest.raises(ValueError, match="dataset='svhn'"):
    datasets.load_dataset("svhn")
  with pytest.raises(ValueError, match="dataset='svhn'"):
    datasets.load_test_split("svhn")
  with pytest.raises(ValueError, match="--idx_dir"):
    datasets.load_dataset("cifar10", idx_dir="/tmp")
  with pytest.raises(ValueError, match="--idx_dir"):
    datasets.load_dataset("digits", idx_dir="/tmp")

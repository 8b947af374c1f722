"""Tests for dp_sinkhorn_tf.data (no downloads: synthetic IDX files and TFDS mock data)."""

import gzip
import os
import struct

import numpy as np
import pytest
import tensorflow_datasets as tfds

from dp_sinkhorn_tf import data

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


def _write_idx(path, array, compress):
  header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
      f">{array.ndim}I", *array.shape)
  payload = header + array.astype(np.uint8).tobytes()
  with open(path, "wb") as fh:
    fh.write(gzip.compress(payload) if compress else payload)


def _write_split(folder, split, images, labels, compress):
  image_stem, label_stem = data.IDX_FILES[split]
  suffix = ".gz" if compress else ""
  _write_idx(os.path.join(folder, image_stem + suffix), images, compress)
  _write_idx(os.path.join(folder, label_stem + suffix), labels, compress)


def test_scaling_maps_endpoints_exactly():
  np.testing.assert_array_equal(data.scale_to_unit_interval(np.array([0, 255]), 255.0),
                                [-1.0, 1.0])
  np.testing.assert_array_equal(data.scale_to_unit_interval(np.array([0, 8, 16]), 16.0),
                                [-1.0, 0.0, 1.0])


def test_digits_split_is_fixed_and_disjoint():
  train, test = data.load_dataset("digits"), data.load_test_split("digits")
  # 1,797 digits; 20 % → 359 held out, 1,438 private training records.
  assert train.images.shape == (1438, 8, 8, 1) and test.images.shape == (359, 8, 8, 1)
  assert train.images.min() == -1.0 and train.images.max() == 1.0
  assert set(np.unique(train.labels)) == set(range(10)) and train.num_classes == 10
  flat_train = {row.tobytes() for row in train.images.reshape(len(train.images), -1)}
  overlap = sum(row.tobytes() in flat_train for row in test.images.reshape(len(test.images), -1))
  assert overlap < 5  # only genuine duplicates of the source data could coincide
  np.testing.assert_array_equal(data.load_dataset("digits").labels, train.labels)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip(tmp_path, compress):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
  labels = np.array([0, 1, 2, 3, 4, 9], np.uint8)
  _write_split(str(tmp_path), "train", images, labels, compress)
  ds = data.load_dataset("fashion_mnist", idx_dir=str(tmp_path))
  np.testing.assert_array_equal(ds.labels, labels)
  np.testing.assert_allclose(ds.images[..., 0], images / 127.5 - 1.0, atol=1e-6)
  assert ds.image_shape == (28, 28, 1) and ds.label_names[9] == "Ankle boot"


def test_bad_magic_names_the_file(tmp_path):
  path = tmp_path / "train-images-idx3-ubyte"
  path.write_bytes(b"\x12\x34\x08\x03" + b"\x00" * 12)
  with pytest.raises(ValueError, match="train-images-idx3-ubyte.*magic"):
    data.read_idx(str(path))


def test_truncated_body_names_the_file(tmp_path):
  path = tmp_path / "t.idx"
  path.write_bytes(struct.pack(">BBBBI", 0, 0, 8, 1, 10) + b"\x00" * 3)
  with pytest.raises(ValueError, match="t.idx.*3 bytes"):
    data.read_idx(str(path))


def test_missing_idx_file_names_the_flag(tmp_path):
  with pytest.raises(FileNotFoundError, match="--idx_dir=.*train-images"):
    data.load_dataset("mnist", idx_dir=str(tmp_path))


@pytest.mark.skipif(not os.path.isdir(FASHION_DIR), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist_idx_files():
  train = data.load_dataset("fashion_mnist", idx_dir=FASHION_DIR)
  assert train.images.shape == (60000, 28, 28, 1)
  assert np.bincount(train.labels).tolist() == [6000] * 10


@pytest.mark.parametrize("name,shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_path_with_mock_data(name, shape):
  with tfds.testing.mock_data(num_examples=12):
    ds = data.load_dataset(name, data_dir="/nonexistent")
  assert ds.images.shape == (12,) + shape
  assert ds.images.dtype == np.float32 and -1.0 <= ds.images.min() <= ds.images.max() <= 1.0
  assert ds.num_classes == 10


def test_celeba_uses_the_male_attribute_at_32x32():
  with tfds.testing.mock_data(num_examples=5):
    ds = data.load_dataset("celeb_a", data_dir="/nonexistent")
  assert ds.images.shape == (5, 32, 32, 3)
  assert set(np.unique(ds.labels)) <= {0, 1} and ds.label_names == ("female", "male")


def test_missing_tfds_data_names_data_dir(tmp_path):
  with pytest.raises(FileNotFoundError, match=f"--data_dir={tmp_path}"):
    data.load_dataset("cifar10", data_dir=str(tmp_path))


def test_unknown_dataset_and_misused_idx_dir():
  with pytest.raises(ValueError, match="--dataset='svhn'"):
    data.load_dataset("svhn")
  with pytest.raises(ValueError, match="--idx_dir"):
    data.load_dataset("cifar10", idx_dir="/tmp")

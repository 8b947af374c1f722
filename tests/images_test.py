"""Tests for dp_sinkhorn_tf.io.images: the uint8 rule, tiling and the PNG writers."""

import os

import numpy as np
import pytest
import tensorflow as tf

from dp_sinkhorn_tf.io import images
from dp_sinkhorn_tf.privacy import accounting


def _ledger(steps_taken):
  return accounting.PrivacyLedger(sample_rate=0.05, noise_multiplier=1.0, l2_norm_clip=0.5,
                                  delta=1e-5, target_epsilon=10.0, planned_steps=1000,
                                  accountant="rdp", steps_taken=steps_taken, dataset_size=1000)


def test_to_uint8_maps_minus_one_to_zero_and_one_to_255_and_clips():
  x = np.array([-1.5, -1.0, 0.0, 1.0, 2.0, 1.0 / 127.5 - 1.0])
  np.testing.assert_array_equal(images.to_uint8(x), [0, 0, 128, 255, 255, 1])
  assert images.to_uint8(x).dtype == np.uint8


def test_the_exported_uint8_rule_is_the_same_rule():
  from dp_sinkhorn_tf.release import export_lib
  x = np.linspace(-1.2, 1.2, 1001).astype(np.float32)
  np.testing.assert_array_equal(export_lib.to_uint8(tf.constant(x)).numpy(), images.to_uint8(x))


def test_writers_are_atomic_and_produce_pngs(tmp_path):
  rng = np.random.default_rng(0)
  labels = np.array([0, 1, 2, 0, 1], np.int32)
  imgs = rng.uniform(-1, 1, (5, 8, 8, 1)).astype(np.float32)
  written = [
      images.save_class_grid_png(imgs, labels, ["a", "b", "c"], str(tmp_path / "g.png"),
                                     per_class=3, title="t"),
      images.save_label_histogram_png(labels, ["a", "b", "c"], str(tmp_path / "h.png"),
                                          reference_labels=labels),
      images.save_epsilon_plot_png(_ledger(100), accounting.epsilon_curve(_ledger(100), 3),
                                   str(tmp_path / "e.png")),
  ]
  for png in written:
    with open(png, "rb") as fh:
      assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
  assert sorted(os.listdir(tmp_path)) == ["e.png", "g.png", "h.png"]  # no temps


def test_tile_rows_puts_each_row_of_images_side_by_side():
  imgs = np.stack([np.full((2, 3, 1), v) for v in (-1.0, 0.0, 1.0, 0.5)])
  grid = images.tile_rows(imgs, rows=2, pad=0)
  assert grid.shape == (4, 6, 1) and grid.dtype == np.uint8
  np.testing.assert_array_equal(grid[[0, 0, 2, 2], [0, 3, 0, 3], 0], [0, 128, 255, 191])
  with pytest.raises(ValueError, match="do not fill"):
    images.tile_rows(imgs[:3], rows=2)


def test_tile_rows_frames_tiles_with_grey_lines():
  # Four 2×3 tiles, values −1, 0, 1, 0.5 → 0, 128, 255, 191; with pad=1 the grid is
  # 2·(2+1)+1 = 7 rows by 2·(3+1)+1 = 9 columns, and rows 0, 3, 6 / columns 0, 4, 8 are 128.
  imgs = np.stack([np.full((2, 3, 1), v) for v in (-1.0, 0.0, 1.0, 0.5)])
  grid = images.tile_rows(imgs, rows=2)
  assert grid.shape == (7, 9, 1)
  np.testing.assert_array_equal(grid[[0, 3, 6], :, 0], 128)
  np.testing.assert_array_equal(grid[:, [0, 4, 8], 0], 128)
  np.testing.assert_array_equal(grid[1:3, 1:4, 0], 0)
  np.testing.assert_array_equal(grid[1:3, 5:8, 0], 128)
  np.testing.assert_array_equal(grid[4:6, 1:4, 0], 255)
  np.testing.assert_array_equal(grid[4:6, 5:8, 0], 191)
  assert images.tile_row_centres(2, height=2) == [1.5, 4.5]  # the middles of rows 1–2, 4–5
  with pytest.raises(ValueError, match="pad"):
    images.tile_rows(imgs, rows=2, pad=-1)


def test_per_class_examples_fill_missing_classes_with_blank_images():
  imgs = np.stack([np.full((2, 2, 1), 0.5)] * 3).astype(np.float32)
  out = images.per_class_examples(imgs, np.array([0, 0, 2]), 3, per_class=2)
  assert out.shape == (6, 2, 2, 1)
  np.testing.assert_array_equal(out[:, 0, 0, 0], [0.5, 0.5, -1, -1, 0.5, -1])

"""Tests for dp_sinkhorn_tf.features."""

import numpy as np
import pytest
import tensorflow as tf

from dp_sinkhorn_tf import features


def test_layout_is_flat_image_then_scaled_one_hot():
  images = tf.reshape(tf.range(8, dtype=tf.float32), [2, 2, 2, 1])
  out = features.to_features(images, tf.constant([2, 0]), num_classes=3, alpha_c=15.0)
  np.testing.assert_array_equal(out.numpy(), [[0, 1, 2, 3, 0, 0, 15], [4, 5, 6, 7, 15, 0, 0]])


def test_cross_class_cost_is_at_least_two_alpha_squared():
  # Two identical images with different labels: ‖φ − φ'‖² = α² + α² = 2·15² = 450.
  image = tf.zeros([1, 4, 4, 1])
  a = features.to_features(image, tf.constant([1]), 10, 15.0)
  b = features.to_features(image, tf.constant([7]), 10, 15.0)
  assert float(tf.reduce_sum(tf.square(a - b))) == pytest.approx(450.0)


def test_static_width_is_known_for_static_image_shapes():
  @tf.function(input_signature=[tf.TensorSpec([None, 28, 28, 1]), tf.TensorSpec([None], tf.int32)])
  def fn(images, labels):
    out = features.to_features(images, labels, 10, 15.0)
    assert out.shape.as_list() == [None, 794]
    return out

  assert fn(tf.zeros([3, 28, 28, 1]), tf.zeros([3], tf.int32)).shape == (3, 794)


@pytest.mark.parametrize("kwargs,match", [(dict(num_classes=0), "num_classes"),
                                          (dict(alpha_c=-1.0), "alpha_c")])
def test_bad_arguments(kwargs, match):
  args = dict(images=tf.zeros([1, 2, 2, 1]), labels=tf.zeros([1], tf.int32), num_classes=3,
              alpha_c=1.0)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    features.to_features(**args)

"""Tests for dp_sinkhorn_tf.transport.features."""

import numpy as np
import pytest
import tensorflow as tf

from dp_sinkhorn_tf.transport import features


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


def test_class_matched_weights_hand_derived():
  # x labels [0,0,1,2] → F = (2,1,1,0); y labels [0,1,1,3] → R = (1,2,0,1).
  # Shared classes {0,1}: π = (2/3, 1/3); a = π_c/F_c = 1/3 on classes 0,1, 0 on class 2;
  # b = π_c/R_c: 2/3 for the class-0 point, 1/6 for each class-1 point, 0 for class 3.
  a, b = features.class_matched_weights([0, 0, 1, 2], [0, 1, 1, 3], 4)
  np.testing.assert_allclose(a.numpy(), [1 / 3, 1 / 3, 1 / 3, 0], rtol=1e-6)
  np.testing.assert_allclose(b.numpy(), [2 / 3, 1 / 6, 1 / 6, 0], rtol=1e-6)
  # Per class both sides hold the same mass, so a class-preserving plan exists.
  for c in range(4):
    assert a.numpy()[np.array([0, 0, 1, 2]) == c].sum() == pytest.approx(
        b.numpy()[np.array([0, 1, 1, 3]) == c].sum(), abs=1e-7)


def test_class_matched_weights_respect_padding_and_disjoint_classes():
  # A zero-weight (padded) row is dropped, and its class then counts as absent.
  a, b = features.class_matched_weights([0, 1], [0, 1, 1], 2, y_weights=[1.0, 0.0, 0.0])
  np.testing.assert_allclose(a.numpy(), [1, 0])
  np.testing.assert_allclose(b.numpy(), [1, 0, 0])
  a, b = features.class_matched_weights([0, 0], [1, 2], 3)
  assert a.numpy().sum() == 0 and b.numpy().sum() == 0

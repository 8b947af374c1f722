"""Maps (image, label) pairs into the space where the Sinkhorn cost is measured.

DP-Sinkhorn compares generated and private samples as points
`[flatten(image), α_c · one_hot(label)]` (paper §4, "class-conditional generation"): the
label block makes transporting mass across classes cost at least 2·α_c² under the squared
Euclidean cost, so a large α_c (the paper uses 15) makes the plan class-preserving.
"""

import tensorflow as tf


def to_features(images: tf.Tensor, labels: tf.Tensor, num_classes: int,
                alpha_c: float) -> tf.Tensor:
  """Concatenates flattened images with scaled one-hot labels.

  φ(x, y) = [vec(x), α_c · e_y]

  Args:
    images: [b, h, w, c] float (any rank ≥ 2 with a leading batch axis).
    labels: [b] integer class ids in [0, num_classes).
    num_classes: number of classes K (> 0).
    alpha_c: weight α_c ≥ 0 of the label block.

  Returns:
    [b, h·w·c + K] tensor with the dtype of `images`.
  """
  if num_classes <= 0:
    raise ValueError(f"num_classes must be positive, got {num_classes}")
  if alpha_c < 0:
    raise ValueError(f"alpha_c must be non-negative, got {alpha_c}")
  images = tf.convert_to_tensor(images)
  if images.shape.rank is not None and images.shape.rank < 2:
    raise ValueError(f"images must have a batch axis and ≥1 feature axis, got shape {images.shape}")
  batch = tf.shape(images)[0]
  flat = tf.reshape(images, tf.stack([batch, -1]))
  if images.shape.rank is not None and images.shape[1:].is_fully_defined():
    flat = tf.ensure_shape(flat, [None, images.shape[1:].num_elements()])
  one_hot = tf.one_hot(tf.cast(labels, tf.int32), num_classes, dtype=images.dtype)
  return tf.concat([flat, alpha_c * one_hot], axis=1)

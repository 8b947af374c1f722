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


def class_matched_weights(labels_x: tf.Tensor, labels_y: tf.Tensor, num_classes: int,
                          y_weights=None):
  """Point weights under which the transport plan between two labelled clouds is per class.

  With uniform weights, a balanced plan between n generated and m private points must move
  mass across classes whenever the two clouds' class counts differ, which for small batches
  they nearly always do (16 uniform labels against a Poisson batch of 16 over 10 classes
  put ~40% of the mass on the wrong class). That mass pulls an image of one class towards
  images of another. Here each class c present in both clouds gets the mass

    π_c = F_c / Σ_{c' shared} F_c'        (F_c = #{i : x_i has label c})

  spread evenly over its points on each side:

    a_i = π_{c(i)} / F_{c(i)} = 1 / Σ_{shared} F,   b_j = w_j · π_{c(j)} / R_{c(j)},

  with R_c = Σ_{j : y_j has label c} w_j; points of a class missing on the other side get
  weight 0. Both sides then hold mass π_c in class c, so a class-preserving plan exists,
  and with a large label weight α_c the entropic cost splits by class:

    W_λ(a, b) = Σ_c π_c · W_λ(X_c, Y_c) + λ·H(π),    H(π) = −Σ_c π_c log π_c,      (4)

  a Sinkhorn estimate of the class-conditional distance Σ_c π_c W_λ(p(·|c), q(·|c)).

  Privacy: when y is the private batch, b and a depend on it, but only inside the loss whose
  image gradient the mechanism clips as a whole; the generated labels themselves stay
  data-independent, so nothing else the step releases depends on the batch.

  Args:
    labels_x: [n] integer labels of the first cloud.
    labels_y: [m] integer labels of the second cloud.
    num_classes: K > 0.
    y_weights: [m] non-negative weights of the second cloud (zeros mark padding) or None.

  Returns:
    (a [n], b [m]) float32 weights, each summing to 1, or both all zero when the clouds
    share no class.
  """
  if num_classes <= 0:
    raise ValueError(f"num_classes must be positive, got {num_classes}")
  onehot_x = tf.one_hot(tf.cast(labels_x, tf.int32), num_classes, dtype=tf.float32)
  onehot_y = tf.one_hot(tf.cast(labels_y, tf.int32), num_classes, dtype=tf.float32)
  w = (tf.ones(tf.shape(onehot_y)[:1], tf.float32) if y_weights is None
       else tf.cast(y_weights, tf.float32))
  count_x = tf.reduce_sum(onehot_x, axis=0)                     # F_c
  count_y = tf.reduce_sum(w[:, tf.newaxis] * onehot_y, axis=0)  # R_c
  shared = tf.cast((count_x > 0) & (count_y > 0), tf.float32)
  total = tf.reduce_sum(shared * count_x)
  mass = tf.math.divide_no_nan(shared * count_x, total)          # π_c
  a = tf.linalg.matvec(onehot_x, tf.math.divide_no_nan(mass, count_x))
  b = w * tf.linalg.matvec(onehot_y, tf.math.divide_no_nan(mass, count_y))
  return a, b

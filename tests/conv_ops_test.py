"""Tests for dp_sinkhorn_tf.models.conv_ops: eq. 3 against a brute-force sum and TensorFlow's
own backward-weights op, and the custom-gradient op against TensorFlow's autodiff."""

import numpy as np
import pytest
import tensorflow as tf

from dp_sinkhorn_tf.models import conv_ops


def _brute_filter_gradient(dy, x):
  """eq. 3 as written: ∂L/∂K[a,b,o,i] = Σ dy[n, 2h+a−1, 2w+b−1, o]·x[n, h, w, i]."""
  n, h, w, c_in = x.shape
  c_out = dy.shape[3]
  out = np.zeros((4, 4, c_out, c_in))
  for a in range(4):
    for b in range(4):
      for r in range(h):
        for c in range(w):
          row, col = 2 * r + a - 1, 2 * c + b - 1
          if 0 <= row < 2 * h and 0 <= col < 2 * w:
            out[a, b] += dy[:, row, col, :].T @ x[:, r, c, :]
  return out


def _data(n, h, w, c_in, c_out, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(n, 2 * h, 2 * w, c_out)).astype(np.float32),
          rng.normal(size=(n, h, w, c_in)).astype(np.float32))


def test_taps_follow_the_output_row_they_read():
  # 2h + a − 1 = 2(h + s) + p for every tap a.
  for a, (p, s) in enumerate(conv_ops.TAPS):
    assert all(2 * h + a - 1 == 2 * (h + s) + p for h in range(5))


@pytest.mark.parametrize("shape", [(2, 3, 2, 2, 3), (1, 1, 1, 1, 1), (3, 4, 5, 3, 2)])
def test_filter_gradient_equals_the_sum_it_stands_for(shape):
  dy, x = _data(*shape)
  np.testing.assert_allclose(conv_ops.filter_gradient(tf.constant(dy), tf.constant(x)).numpy(),
                             _brute_filter_gradient(dy, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(5, 7, 7, 16, 8), (3, 4, 6, 8, 4)])
def test_filter_gradient_equals_tensorflows_backward_weights_op(shape):
  dy, x = _data(*shape, seed=1)
  ref = tf.raw_ops.Conv2DBackpropFilter(input=dy, filter_sizes=[4, 4, shape[4], shape[3]],
                                        out_backprop=x, strides=[1, 2, 2, 1], padding="SAME")
  got = conv_ops.filter_gradient(tf.constant(dy), tf.constant(x))
  np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-4, atol=1e-4)


def test_conv_transpose_value_and_gradients_equal_tensorflows():
  dy, x = _data(4, 7, 5, 6, 3, seed=2)
  x = tf.constant(x)
  kernel = tf.constant(np.random.default_rng(3).normal(size=(4, 4, 3, 6)).astype(np.float32))
  with tf.GradientTape(persistent=True) as tape:
    tape.watch([x, kernel])
    ours = conv_ops.conv_transpose(x, kernel)
    ref = tf.nn.conv2d_transpose(x, kernel, [4, 14, 10, 3], strides=2, padding="SAME")
  np.testing.assert_allclose(ours.numpy(), ref.numpy(), rtol=1e-5, atol=1e-5)
  for got, want in zip(tape.gradient(ours, [x, kernel], output_gradients=dy),
                       tape.gradient(ref, [x, kernel], output_gradients=dy)):
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-4)


def test_bfloat16_product_matches_float32_to_bfloat16_rounding():
  dy, x = _data(8, 7, 7, 32, 16, seed=4)
  want = _brute_filter_gradient(dy, x)
  got = conv_ops.filter_gradient(tf.constant(dy, tf.bfloat16), tf.constant(x, tf.bfloat16))
  rel = np.linalg.norm(got.numpy().astype(np.float64) - want) / np.linalg.norm(want)
  assert rel < 1e-2  # inputs rounded to 8 bits (2⁻⁹ relative each), float32 accumulation


@pytest.mark.parametrize("dtype,hw,expected", [
    (tf.bfloat16, (7, 7), True), (tf.bfloat16, (8, 8), True), (tf.bfloat16, (4, 16), True),
    (tf.bfloat16, (14, 14), False), (tf.float32, (7, 7), False), (tf.float16, (4, 4), False)])
def test_product_path_only_for_small_bfloat16_inputs(dtype, hw, expected):
  assert conv_ops.use_matmul_filter_gradient(tf.zeros([2, *hw, 3], dtype)) == expected

"""The DCGAN's transposed convolution (4×4, stride 2, SAME) with its filter gradient as one
matrix product.

Forward, for x [N, H, W, C_in] and a kernel K [4, 4, C_out, C_in] (Keras's layout), the
transpose of the stride-2 convolution, y [N, 2H, 2W, C_out]:

    y[n, 2h + a − 1, 2w + b − 1, o] += Σ_i x[n, h, w, i] · K[a, b, o, i]     (eq. 1)

(SAME padding of a 4-wide kernel at stride 2 puts one pixel before the image). Its gradients
for an output gradient dy:

    ∂L/∂x = conv2d(dy, K, stride 2, SAME)                                       (eq. 2)
    ∂L/∂K[a, b, o, i] = Σ_{n,h,w} dy[n, 2h + a − 1, 2w + b − 1, o] · x[n, h, w, i]  (eq. 3)

with dy = 0 outside the image. TensorFlow computes eq. 3 with oneDNN's backward-weights
convolution, which in bfloat16 on a small input runs far below the CPU's bfloat16 matmul
rate (AVX-512-BF16 EPYC, batch 70, 2026-12-04: 7×7×256 → 14×14×128, 19.3 ms, no faster than
float32, against 8.4 ms for eq. 1 and 9.0 ms for a matmul of eq. 3's size; 4×4×512 input:
38 ms against 14). Written as a product, eq. 3 is Rᵀ·x: tap a reads output row 2h + a − 1,
i.e. row h + s_a of the output's phase p_a = (a − 1) mod 2, with the shift s_a = ⌊(a − 1)/2⌋
(a = 0, 1, 2, 3 ↦ (p, s) = (1, −1), (0, 0), (1, 0), (0, 1)); R [N·H·W, 16·C_out] stacks,
for the 16 taps (a, b), phase (p_a, p_b) of dy shifted by (s_a, s_b). Same FLOPs as eq. 3;
the copy into R costs a few ms, so it pays only on small inputs (`USE_MATMUL_MAX_PIXELS`).
"""

import tensorflow as tf

# Tap a of the 4-wide kernel ↦ (phase, shift) of the output row it reads (module docstring).
TAPS = ((1, -1), (0, 0), (1, 0), (0, 1))
# Inputs of at most this many pixels (H·W) take eq. 3 as a product in bfloat16. Measured
# (2026-12-04, batch 70, bfloat16, ms: oneDNN / product): 4×4 38.3 / 13.6, 7×7 18.5 / 13.5,
# 8×8 21.5 / 15.6, 14×14 12.7 / 15.8, 16×16 15.8 / 21.6; float32 7×7 17.8 / 27.9.
USE_MATMUL_MAX_PIXELS = 64


def filter_gradient(dy: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
  """∂L/∂K = Rᵀ·x (eq. 3): dy [N, 2H, 2W, C_out], x [N, H, W, C_in] → [4, 4, C_out, C_in].
  H, W and the channels must be static."""
  h, w, c_in = x.shape[1], x.shape[2], x.shape[3]
  c_out = dy.shape[3]
  phases = tf.reshape(dy, [-1, h, 2, w, 2, c_out])          # [n, h, p_a, w, p_b, o]
  phases = tf.pad(phases, [[0, 0], [1, 1], [0, 0], [1, 1], [0, 0], [0, 0]])
  columns = [phases[:, 1 + s_a:1 + s_a + h, p_a, 1 + s_b:1 + s_b + w, p_b, :]
             for p_a, s_a in TAPS for p_b, s_b in TAPS]      # tap (a, b) in row-major order
  r = tf.reshape(tf.concat(columns, axis=-1), [-1, 16 * c_out])
  product = tf.matmul(r, tf.reshape(x, [-1, c_in]), transpose_a=True)  # [16·C_out, C_in]
  return tf.reshape(product, [4, 4, c_out, c_in])


def use_matmul_filter_gradient(x: tf.Tensor) -> bool:
  """Whether eq. 3 as a product is the faster path for input x: bfloat16 and a static
  H·W ≤ USE_MATMUL_MAX_PIXELS (module docstring)."""
  h, w = x.shape[1], x.shape[2]
  return (x.dtype == tf.bfloat16 and h is not None and w is not None
          and h * w <= USE_MATMUL_MAX_PIXELS)


@tf.custom_gradient
def conv_transpose(x: tf.Tensor, kernel: tf.Tensor):
  """y = eq. 1 with the gradients eq. 2 (as TensorFlow's own) and eq. 3 (`filter_gradient`).
  x [N, H, W, C_in] with static H, W, C_in; kernel [4, 4, C_out, C_in], same dtype."""
  h, w, c_out = x.shape[1], x.shape[2], kernel.shape[2]
  output_shape = tf.stack([tf.shape(x)[0], 2 * h, 2 * w, c_out])
  y = tf.nn.conv2d_transpose(x, kernel, output_shape, strides=2, padding="SAME")

  def grad(dy):
    return (tf.nn.conv2d(dy, kernel, strides=2, padding="SAME"), filter_gradient(dy, x))

  return y, grad

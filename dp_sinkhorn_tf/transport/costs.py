"""Pairwise ground costs c(x, y) between two point clouds.

A cost maps x: [n, d] and y: [m, d] to the matrix C: [n, m] with C_ij = c(x_i, y_j). Both
costs here are differentiable in x and y, and neither holds an [n, m, d] tensor at once:

* `SquaredEuclidean`: c(x, y) = ‖x − y‖², computed as ‖x‖² + ‖y‖² − 2⟨x, y⟩ (one matmul)
  and clamped at 0 against round-off.
* `SquaredEuclideanPlusL1`: the DP-Sinkhorn paper's cost c(x, y) = ‖x − y‖² + m·‖x − y‖₁.
  The L1 part has no matmul form, so it is evaluated over blocks of rows of x, each block
  holding at most `max_block_bytes` of [rows, m, d] temporaries, and its gradient is written
  by hand with the same blocking (autodiff would keep every block's [rows, m, d] tensor).
"""

import dataclasses

import tensorflow as tf

from dp_sinkhorn_tf.transport.options import PRODUCTS

# One [rows, m, d] temporary of the blockwise L1 cost is kept under this size; peak memory is
# a small multiple of it (the difference, its absolute value or sign, and the reduction).
DEFAULT_MAX_BLOCK_BYTES = 64 * 1024 * 1024


def _check_pair(x: tf.Tensor, y: tf.Tensor) -> None:
  for name, t in (("x", x), ("y", y)):
    if t.shape.rank is not None and t.shape.rank != 2:
      raise ValueError(f"cost: {name} must have shape [points, dim], got {t.shape}")
  if (x.shape.rank == 2 and y.shape.rank == 2 and x.shape[1] is not None
      and y.shape[1] is not None and x.shape[1] != y.shape[1]):
    raise ValueError(f"cost: x and y need the same dim, got {x.shape[1]} and {y.shape[1]}")




def _check_products(products: str) -> None:
  if products not in PRODUCTS:
    raise ValueError(f"products must be one of {PRODUCTS}, got {products!r}")


def _bf16_matmul(a: tf.Tensor, b: tf.Tensor, out_dtype: tf.DType, **kwargs) -> tf.Tensor:
  """a·b with both factors rounded to bfloat16, the result (rounded to bfloat16 by
  TensorFlow's CPU kernel, which has no float32 output for it) cast to out_dtype."""
  return tf.cast(tf.matmul(tf.cast(a, tf.bfloat16), tf.cast(b, tf.bfloat16), **kwargs),
                 out_dtype)


def centred_product(g: tf.Tensor, z: tf.Tensor, transpose_g: bool = False) -> tf.Tensor:
  """G·z = G·(z − z̄) + (G·1) ⊗ z̄ with the first product in bfloat16 (z̄ = mean row of z).

  The rounding of a bfloat16 product is relative to its result. In the gradient of
  ‖x‖² + ‖y‖² − 2⟨x, y⟩ w.r.t. x, 2·(diag(G1)·x − G·y), the two terms are of the size of the
  points and their difference of the size of x_i minus its barycentre; centring y first
  makes the rounded product of that size too, so its error is relative to the spread of
  the points rather than to their offset from 0. The row sums and the mean stay in z's
  dtype. With transpose_g, Gᵀ·z.
  """
  mean = tf.reduce_mean(z, axis=0, keepdims=True)
  mass = tf.reduce_sum(g, axis=0 if transpose_g else 1)[:, tf.newaxis]
  return (_bf16_matmul(g, z - mean, z.dtype, transpose_a=transpose_g)
          + tf.cast(mass, z.dtype) * mean)


def inner_products(x: tf.Tensor, y: tf.Tensor, products: str = "float32") -> tf.Tensor:
  """⟨x_i, y_j⟩: [n, m] in x's dtype.

  products="bfloat16" rounds x and y to bfloat16 for the forward product (the AVX-512-BF16 /
  AMX units of recent CPUs run it 2–3.4× faster) and rounds the result to bfloat16
  (TensorFlow's CPU kernel has no float32 output for bfloat16 inputs): each entry is off by
  up to 2⁻⁸ of its size. The backward products G·y and Gᵀ·x stay in x's dtype: only the cost
  matrix is rounded, never the gradient's sums. products="bfloat16_all" runs the backward
  products in bfloat16 too, on centred factors (`centred_product`): all of the loss's
  n×m×d work on the bfloat16 units.
  """
  _check_products(products)
  if products == "float32":
    return tf.matmul(x, y, transpose_b=True)

  @tf.custom_gradient
  def low(x, y):
    value = _bf16_matmul(x, y, x.dtype, transpose_b=True)

    def grad(upstream):
      if products == "bfloat16_all":
        return centred_product(upstream, y), centred_product(upstream, x, transpose_g=True)
      return tf.matmul(upstream, y), tf.matmul(upstream, x, transpose_a=True)

    return value, grad

  return low(x, y)


def squared_euclidean(x: tf.Tensor, y: tf.Tensor, products: str = "float32") -> tf.Tensor:
  """C_ij = max(‖x_i‖² + ‖y_j‖² − 2⟨x_i, y_j⟩, 0) = ‖x_i − y_j‖².

  Args:
    x: [n, d] float.
    y: [m, d] float, same dtype.
    products: one of PRODUCTS, the format of the ⟨x_i, y_j⟩ matmul and (bfloat16_all) of
      its backward products (`inner_products`); the norms stay in x's dtype.

  Returns:
    [n, m] float. Its gradient w.r.t. x for an upstream G is 2·(diag(G1)·x − G·y): one
    matmul, never an [n, m, d] tensor.
  """
  x_sq = tf.reduce_sum(tf.square(x), axis=1, keepdims=True)
  y_sq = tf.reduce_sum(tf.square(y), axis=1)[tf.newaxis, :]
  cross = inner_products(x, y, products)
  return tf.maximum(x_sq + y_sq - 2.0 * cross, 0.0)


def _rows_per_block(m: tf.Tensor, d: tf.Tensor, itemsize: int,
                    max_block_bytes: int) -> tf.Tensor:
  """Largest row count k ≥ 1 with k·m·d·itemsize ≤ max_block_bytes."""
  per_row = tf.maximum(m * d * itemsize, 1)
  return tf.maximum(tf.cast(max_block_bytes // per_row, tf.int32), 1)


def _map_row_blocks(fn, x: tf.Tensor, rows: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
  """Concatenates fn(x[s:s+rows]) over row blocks; fn returns [block_rows, width]."""
  n = tf.shape(x)[0]
  num_blocks = (n + rows - 1) // rows
  out = tf.TensorArray(x.dtype, size=num_blocks, infer_shape=False,
                       element_shape=tf.TensorShape([None, None]))

  def body(i, out):
    start = i * rows
    block = x[start:tf.minimum(start + rows, n)]
    return i + 1, out.write(i, fn(block))

  # parallel_iterations=1: concurrent iterations would each hold a block's temporaries.
  _, out = tf.while_loop(lambda i, _: i < num_blocks, body, (0, out), parallel_iterations=1)
  return tf.reshape(out.concat(), tf.stack([n, width]))


def pairwise_l1(x: tf.Tensor, y: tf.Tensor,
                max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES) -> tf.Tensor:
  """C_ij = ‖x_i − y_j‖₁, blockwise over rows of x, with a blockwise custom gradient.

  For an upstream gradient G: [n, m] (the transport plan, in the Sinkhorn loss),
    ∂/∂x_i Σ_ij G_ij ‖x_i − y_j‖₁ =  Σ_j G_ij · sign(x_i − y_j)
    ∂/∂y_j Σ_ij G_ij ‖x_i − y_j‖₁ = −Σ_i G_ij · sign(x_i − y_j)
  Both sums are taken block by block, so no [n, m, d] tensor is ever held.

  Args:
    x: [n, d] float.
    y: [m, d] float.
    max_block_bytes: size bound of one [rows, m, d] temporary.

  Returns:
    [n, m] float.
  """
  itemsize = x.dtype.size

  @tf.custom_gradient
  def _l1(x, y):
    m, d = tf.shape(y)[0], tf.shape(y)[1]
    rows = _rows_per_block(m, d, itemsize, max_block_bytes)

    def block_cost(xb):
      return tf.reduce_sum(tf.abs(xb[:, tf.newaxis, :] - y[tf.newaxis, :, :]), axis=2)

    value = _map_row_blocks(block_cost, x, rows, m)

    def grad(upstream):
      n = tf.shape(x)[0]
      num_blocks = (n + rows - 1) // rows
      gx_blocks = tf.TensorArray(x.dtype, size=num_blocks, infer_shape=False,
                                 element_shape=tf.TensorShape([None, None]))

      def body(i, gx_blocks, gy):
        start = i * rows
        stop = tf.minimum(start + rows, n)
        sign = tf.sign(x[start:stop, tf.newaxis, :] - y[tf.newaxis, :, :])
        g_block = upstream[start:stop]
        gx_blocks = gx_blocks.write(i, tf.einsum("km,kmd->kd", g_block, sign))
        return i + 1, gx_blocks, gy - tf.einsum("km,kmd->md", g_block, sign)

      _, gx_blocks, gy = tf.while_loop(
          lambda i, *_: i < num_blocks, body, (0, gx_blocks, tf.zeros_like(y)),
          parallel_iterations=1)
      return tf.reshape(gx_blocks.concat(), tf.shape(x)), gy

    return value, grad

  return _l1(x, y)


@dataclasses.dataclass(frozen=True)
class SquaredEuclidean:
  """c(x, y) = ‖x − y‖²; products: the format of its ⟨x, y⟩ matmul (`inner_products`)."""

  products: str = "float32"

  def __post_init__(self):
    _check_products(self.products)

  def __call__(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    x, y = tf.convert_to_tensor(x), tf.convert_to_tensor(y)
    _check_pair(x, y)
    return squared_euclidean(x, y, self.products)


@dataclasses.dataclass(frozen=True)
class SquaredEuclideanPlusL1:
  """c(x, y) = ‖x − y‖² + l1_weight · ‖x − y‖₁ (the DP-Sinkhorn paper's cost, m = l1_weight)."""

  l1_weight: float = 3.0
  max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES
  products: str = "float32"  # of the ‖x − y‖² part's matmul (`inner_products`)

  def __post_init__(self):
    _check_products(self.products)
    if self.l1_weight < 0:
      raise ValueError(f"l1_weight must be ≥ 0, got {self.l1_weight}")
    if self.max_block_bytes <= 0:
      raise ValueError(f"max_block_bytes must be positive, got {self.max_block_bytes}")

  def __call__(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    x, y = tf.convert_to_tensor(x), tf.convert_to_tensor(y)
    _check_pair(x, y)
    l2 = squared_euclidean(x, y, self.products)
    if self.l1_weight == 0:
      return l2
    return l2 + self.l1_weight * pairwise_l1(x, y, self.max_block_bytes)


Cost = SquaredEuclidean | SquaredEuclideanPlusL1

# The cost table: name → factory(l1_weight, max_block_bytes, products), in the order of
# `options.COST_NAMES`. A new cost is one class above, one entry here and its name there
# (config and the flags read the names from there without TensorFlow), and its test.
COSTS = {
    "l2": lambda l1_weight, max_block_bytes, products: SquaredEuclidean(products=products),
    "l1l2": lambda l1_weight, max_block_bytes, products: SquaredEuclideanPlusL1(
        l1_weight=l1_weight, max_block_bytes=max_block_bytes, products=products),
}


def make_cost(name: str, l1_weight: float = 3.0,
              max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES, products: str = "float32") -> Cost:
  """Returns the cost called `name` in COSTS: "l2" (‖x−y‖²) or "l1l2"
  (‖x−y‖² + l1_weight·‖x−y‖₁); products: the format of the ⟨x, y⟩ matmul."""
  if name not in COSTS:
    raise ValueError(f"unknown cost {name!r}: expected one of {tuple(COSTS)}")
  return COSTS[name](l1_weight, max_block_bytes, products)

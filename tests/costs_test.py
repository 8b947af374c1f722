"""Tests for dp_sinkhorn_tf.transport.costs."""

import numpy as np
import pytest
import tensorflow as tf

from dp_sinkhorn_tf.transport import costs


def naive_l1(x, y):
  return tf.reduce_sum(tf.abs(x[:, None, :] - y[None, :, :]), axis=2)


def test_squared_euclidean_hand_values():
  # (0,0)→(3,4): 25; (1,1)→(3,4): 4+9 = 13; (0,0)→(0,0): 0.
  x = tf.constant([[0.0, 0.0], [1.0, 1.0]])
  y = tf.constant([[3.0, 4.0], [0.0, 0.0]])
  np.testing.assert_allclose(costs.squared_euclidean(x, y).numpy(), [[25, 0], [13, 2]])


def test_squared_euclidean_is_clamped_at_zero():
  # Large equal points: ‖x‖² + ‖x‖² − 2⟨x, x⟩ cancels catastrophically in float32.
  x = tf.constant(np.random.default_rng(0).normal(size=(6, 50)) * 1e3, tf.float32)
  assert np.all(costs.squared_euclidean(x, x).numpy() >= 0)


def test_l1_plus_l2_hand_values():
  # (0,0)→(3,4): ‖·‖² = 25, ‖·‖₁ = 7 → 25 + 3·7 = 46.
  cost = costs.SquaredEuclideanPlusL1(l1_weight=3.0)
  value = cost(tf.constant([[0.0, 0.0]]), tf.constant([[3.0, 4.0]]))
  assert value.numpy()[0, 0] == pytest.approx(46.0)


@pytest.mark.parametrize("block_bytes", [1, 8 * 5 * 3 * 2, 10**9])
def test_blockwise_l1_equals_naive_value_and_gradient(block_bytes):
  rng = np.random.default_rng(1)
  x = tf.constant(rng.normal(size=(11, 3)))
  y = tf.constant(rng.normal(size=(5, 3)))
  upstream = tf.constant(rng.normal(size=(11, 5)))
  with tf.GradientTape(persistent=True) as tape:
    tape.watch([x, y])
    blockwise = costs.pairwise_l1(x, y, max_block_bytes=block_bytes)
    naive = naive_l1(x, y)
    lb, ln = tf.reduce_sum(upstream * blockwise), tf.reduce_sum(upstream * naive)
  np.testing.assert_allclose(blockwise.numpy(), naive.numpy(), rtol=1e-12)
  for var in (x, y):
    np.testing.assert_allclose(tape.gradient(lb, var).numpy(), tape.gradient(ln, var).numpy(),
                               rtol=1e-12)


def test_blockwise_l1_under_tf_function_with_dynamic_shapes():
  @tf.function(input_signature=[tf.TensorSpec([None, 4]), tf.TensorSpec([None, 4])])
  def fn(x, y):
    with tf.GradientTape() as tape:
      tape.watch(x)
      total = tf.reduce_sum(costs.pairwise_l1(x, y, max_block_bytes=64))
    return total, tape.gradient(total, x)

  rng = np.random.default_rng(2)
  for n, m in [(3, 2), (7, 9), (1, 1)]:
    x = tf.constant(rng.normal(size=(n, 4)), tf.float32)
    y = tf.constant(rng.normal(size=(m, 4)), tf.float32)
    total, grad = fn(x, y)
    np.testing.assert_allclose(total.numpy(), tf.reduce_sum(naive_l1(x, y)).numpy(), rtol=1e-5)
    # ∂/∂x_i Σ_j ‖x_i − y_j‖₁ = Σ_j sign(x_i − y_j)
    expected = tf.reduce_sum(tf.sign(x[:, None] - y[None]), axis=1)
    np.testing.assert_allclose(grad.numpy(), expected.numpy())


def test_rows_per_block_respects_memory_bound():
  # m = 2000, d = 3082, float32: one row is 24.66 MB, so 64 MiB holds 2 rows.
  rows = costs._rows_per_block(tf.constant(2000), tf.constant(3082), 4, 64 * 1024 * 1024)
  assert int(rows) == 2
  assert int(costs._rows_per_block(tf.constant(10), tf.constant(10), 4, 1)) == 1


def test_make_cost_and_errors():
  assert isinstance(costs.make_cost("l2"), costs.SquaredEuclidean)
  assert costs.make_cost("l1l2", l1_weight=1 / 3).l1_weight == pytest.approx(1 / 3)
  with pytest.raises(ValueError, match="unknown cost 'l3'"):
    costs.make_cost("l3")
  with pytest.raises(ValueError, match="l1_weight"):
    costs.SquaredEuclideanPlusL1(l1_weight=-1)
  with pytest.raises(ValueError, match="same dim"):
    costs.SquaredEuclidean()(tf.zeros([2, 3]), tf.zeros([2, 4]))


def test_bfloat16_products_are_within_their_rounding_bound_and_keep_float32_gradients():
  # Forward: inputs rounded to bfloat16 (relative 2⁻⁹ each, so each term x_k·y_k within
  # ~2⁻⁸ of itself), the result rounded once more (2⁻⁹ of |⟨x, y⟩|).
  rng = np.random.default_rng(0)
  x = tf.constant(rng.uniform(-1, 1, (40, 300)), tf.float32)
  y = tf.constant(rng.uniform(-1, 1, (30, 300)), tf.float32)
  exact = x.numpy().astype(np.float64) @ y.numpy().astype(np.float64).T
  bound = 2.0**-8 * (np.abs(x.numpy()) @ np.abs(y.numpy()).T) + 2.0**-9 * np.abs(exact)
  with tf.GradientTape(persistent=True) as tape:
    tape.watch([x, y])
    low = costs.inner_products(x, y, "bfloat16")
    high = costs.inner_products(x, y, "float32")
  err = np.abs(low.numpy() - exact)
  assert np.all(err <= bound + 1e-6) and err.max() > 0  # rounded, but within the bound
  # Backward: the same float32 products G·y and Gᵀ·x as the float32 path, bit for bit.
  upstream = tf.constant(rng.normal(size=(40, 30)), tf.float32)
  for low_grad, high_grad in zip(tape.gradient(low, [x, y], upstream),
                                 tape.gradient(high, [x, y], upstream)):
    np.testing.assert_array_equal(low_grad.numpy(), high_grad.numpy())


def test_centred_product_rounds_relative_to_the_spread_not_the_offset():
  # Points far from 0 (offset 50, spread ±1): a plain bfloat16 product G·z rounds its result
  # relative to |G·z| ≈ 50·|G1|, so its error swamps the spread; the centred one rounds only
  # G·(z − z̄) and adds (G1)·z̄ in float32. Bound: inputs 2⁻⁹ each, output 2⁻⁹ of its size.
  rng = np.random.default_rng(1)
  g = rng.uniform(0, 1, (40, 30)).astype(np.float32)
  z = (50.0 + rng.uniform(-1, 1, (30, 200))).astype(np.float32)
  exact = g.astype(np.float64) @ z.astype(np.float64)
  centred = costs.centred_product(tf.constant(g), tf.constant(z)).numpy()
  zc = np.abs(z - z.mean(0, keepdims=True))
  bound = (2.0**-8 + 2.0**-9) * (np.abs(g) @ zc) + 1e-5 * np.abs(exact)
  assert np.all(np.abs(centred - exact) <= bound)
  plain = tf.cast(tf.matmul(tf.cast(g, tf.bfloat16), tf.cast(z, tf.bfloat16)), tf.float32)
  assert np.abs(plain.numpy() - exact).max() > 10 * np.abs(centred - exact).max()
  # transpose_g: Gᵀ·z.
  z2 = (50.0 + rng.uniform(-1, 1, (40, 200))).astype(np.float32)
  exact_t = g.T.astype(np.float64) @ z2.astype(np.float64)
  centred_t = costs.centred_product(tf.constant(g), tf.constant(z2), transpose_g=True).numpy()
  bound_t = ((2.0**-8 + 2.0**-9) * (np.abs(g.T) @ np.abs(z2 - z2.mean(0, keepdims=True)))
             + 1e-5 * np.abs(exact_t))
  assert np.all(np.abs(centred_t - exact_t) <= bound_t)


def test_bfloat16_all_runs_the_backward_products_centred_in_bfloat16():
  rng = np.random.default_rng(2)
  x = tf.constant(rng.uniform(-1, 1, (40, 300)), tf.float32)
  y = tf.constant(rng.uniform(-1, 1, (30, 300)), tf.float32)
  upstream = tf.constant(rng.normal(size=(40, 30)), tf.float32)
  with tf.GradientTape(persistent=True) as tape:
    tape.watch([x, y])
    all_low = costs.inner_products(x, y, "bfloat16_all")
    cost_low = costs.inner_products(x, y, "bfloat16")
  np.testing.assert_array_equal(all_low.numpy(), cost_low.numpy())  # same forward
  gx, gy = tape.gradient(all_low, [x, y], upstream)
  np.testing.assert_allclose(gx.numpy(), costs.centred_product(upstream, y).numpy())
  np.testing.assert_allclose(gy.numpy(),
                             costs.centred_product(upstream, x, transpose_g=True).numpy())
  exact_x = upstream.numpy().astype(np.float64) @ y.numpy()
  assert 0 < np.abs(gx.numpy() - exact_x).max() <= 2e-2 * np.abs(exact_x).max()


def test_products_name_is_checked():
  with pytest.raises(ValueError, match="products"):
    costs.make_cost("l2", products="float16")
  with pytest.raises(ValueError, match="products"):
    costs.inner_products(tf.zeros([2, 3]), tf.zeros([2, 3]), "int8")
  assert costs.make_cost("l1l2", products="bfloat16").products == "bfloat16"

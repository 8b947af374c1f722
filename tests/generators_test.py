"""Tests for dp_sinkhorn_tf.models.generators (tiny widths: hidden 4–8)."""

import numpy as np
import pytest
import tensorflow as tf

from dp_sinkhorn_tf.models import conv_ops, generators

SHAPES = [(8, 8, 1), (28, 28, 1), (32, 32, 3)]
TINY = dict(latent_dim=4, embed_dim=3, hidden=4, depth=1, output="tanh", precision="float32")


def _tiny(arch, shape=(8, 8, 1), **kw):
  return generators.make_generator(arch, shape, 10, **{**TINY, **kw})


@pytest.mark.parametrize("arch", generators.ARCHITECTURES)
@pytest.mark.parametrize("shape", SHAPES)
def test_output_shape_range_and_attributes(arch, shape):
  gen = generators.make_generator(arch, shape, num_classes=10, **{**TINY, "latent_dim": 6})
  z = generators.sample_latent(5, 6, [0, 1])
  for training in (True, False):
    out = gen([z, tf.range(5)], training=training)
    assert out.shape == (5,) + shape and out.dtype == tf.float32
    assert np.all(np.abs(out.numpy()) <= 1.0)
  assert (gen.latent_dim, gen.num_classes, gen.image_shape) == (6, 10, shape)


@pytest.mark.parametrize("shape,k,seed", [
    ((8, 8, 1), 1, (4, 4)), ((28, 28, 1), 2, (7, 7)), ((32, 32, 3), 3, (4, 4)),
    ((64, 64, 3), 4, (4, 4)), ((18, 30, 1), 2, (5, 8))])
def test_upsamplings_and_seed_follow_resolution(shape, k, seed):
  # k = max(1, floor(log2 min(H, W)) - 2); seed = ceil(H / 2^k), ceil(W / 2^k).
  assert generators.num_upsamplings(shape) == k and generators.seed_shape(shape) == seed


def test_overshoot_is_center_cropped():
  # (18, 30): seed (5, 8) × 2² = (20, 32) → crop 1 row top/bottom, 1 column left/right.
  gen = _tiny("dcgan", (18, 30, 2))
  assert gen([generators.sample_latent(2, 4, 0), tf.constant([0, 1])]).shape == (2, 18, 30, 2)
  x = tf.reshape(tf.range(4 * 6, dtype=tf.float32), [1, 4, 6, 1])
  np.testing.assert_array_equal(generators.center_crop(x, 2, 2)[0, :, :, 0], [[8, 9], [14, 15]])


@pytest.mark.parametrize("arch", generators.ARCHITECTURES)
def test_labels_change_the_output(arch):
  gen = _tiny(arch)
  z = tf.tile(generators.sample_latent(1, 4, [3, 3]), [2, 1])
  for training in (True, False):
    out = gen([z, tf.constant([1, 7])], training=training).numpy()
    assert np.abs(out[0] - out[1]).max() > 1e-4


@pytest.mark.parametrize("arch", generators.ARCHITECTURES)
@pytest.mark.parametrize("shape,depth", [((8, 8, 1), 2), ((28, 28, 1), 1), ((32, 32, 3), 1)])
def test_every_trainable_variable_gets_a_finite_nonzero_gradient(arch, shape, depth):
  gen = _tiny(arch, shape, depth=depth)
  z = generators.sample_latent(12, 4, [0, 0])
  with tf.GradientTape() as tape:
    out = gen([z, tf.range(12) % 10], training=True)
    loss = tf.reduce_sum(out * tf.random.stateless_normal(out.shape, [1, 1]))
  grads = tape.gradient(loss, gen.trainable_variables)
  assert len(grads) > 0
  for var, grad in zip(gen.trainable_variables, grads):
    assert grad is not None, var.name
    g = tf.convert_to_tensor(grad).numpy()
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0, var.name


@pytest.mark.parametrize("arch", generators.ARCHITECTURES)
def test_depth_adds_blocks_but_not_upsamplings(arch, monkeypatch):
  shallow, deep = _tiny(arch, (32, 32, 3), depth=1), _tiny(arch, (32, 32, 3), depth=3)
  assert deep.count_params() > shallow.count_params()
  # 4 × 2³ = 32 exactly: an extra upsampling would overshoot and need a crop.
  monkeypatch.setattr(generators, "center_crop", lambda *a: pytest.fail("unexpected crop"))
  assert deep([generators.sample_latent(2, 4, 1), tf.constant([0, 1])]).shape == (2, 32, 32, 3)


@pytest.mark.parametrize("arch", generators.ARCHITECTURES)
def test_tf_function_agrees_with_eager_and_does_not_retrace_on_batch_size(arch):
  gen = _tiny(arch)
  fn = tf.function(lambda z, y: gen([z, y], training=False),
                   input_signature=[tf.TensorSpec([None, 4]), tf.TensorSpec([None], tf.int32)])
  for b in (1, 3, 17):
    z, y = generators.sample_latent(b, 4, b), tf.range(b) % 10
    np.testing.assert_allclose(fn(z, y).numpy(), gen([z, y], training=False).numpy(),
                               atol=1e-5)
  assert fn.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("arch", generators.ARCHITECTURES)
def test_checkpoint_round_trip_gives_identical_outputs(arch, tmp_path):
  gen = _tiny(arch)
  z, y = generators.sample_latent(4, 4, [5, 5]), tf.constant([0, 1, 2, 3])
  gen([z, y], training=True)  # updates BatchNorm moving statistics away from (0, 1)
  moving = [v for v in gen.variables if "moving_mean" in v.name]
  assert moving and any(np.abs(v.numpy()).max() > 0 for v in moving)
  path = tf.train.Checkpoint(generator=gen).save(str(tmp_path / "ckpt"))
  other = _tiny(arch)
  before = other([z, y], training=False).numpy()
  expected = gen([z, y], training=False).numpy()
  assert np.abs(before - expected).max() > 1e-4  # a fresh model differs until restored
  tf.train.Checkpoint(generator=other).restore(path).assert_consumed()
  np.testing.assert_array_equal(other([z, y], training=False).numpy(), expected)


@pytest.mark.parametrize("arch", generators.ARCHITECTURES)
def test_inference_output_does_not_depend_on_batch_companions(arch):
  gen = _tiny(arch)
  z, y = generators.sample_latent(6, 4, [9, 9]), tf.constant([0, 1, 2, 3, 4, 5])
  alone = gen([z[:1], y[:1]], training=False).numpy()
  np.testing.assert_allclose(alone, gen([z, y], training=False).numpy()[:1], atol=1e-6)
  # In training mode BN uses the batch's own statistics, so companions do matter.
  alone = gen([z[:2], y[:2]], training=True).numpy()
  assert np.abs(alone - gen([z, y], training=True).numpy()[:2]).max() > 1e-5


def test_sample_latent_is_uniform_and_reproducible():
  z = generators.sample_latent(2000, 5, [1, 2]).numpy()
  assert z.shape == (2000, 5) and z.dtype == np.float32
  assert z.min() >= 0.0 and z.max() < 1.0
  assert abs(z.mean() - 0.5) < 0.01  # std of the mean: sqrt(1/12 / 10000) ≈ 0.003
  np.testing.assert_array_equal(generators.sample_latent(2000, 5, [1, 2]).numpy(), z)
  np.testing.assert_array_equal(generators.sample_latent(3, 2, 7), generators.sample_latent(3, 2, [7, 0]))
  rng = tf.random.Generator.from_seed(0)
  first, second = generators.sample_latent(3, 2, rng), generators.sample_latent(3, 2, rng)
  assert first.shape == (3, 2) and np.abs(first - second).max() > 0


@pytest.mark.parametrize("kwargs,match", [
    (dict(architecture="vae"), "architecture"),
    (dict(image_shape=(2, 2, 1)), "image_shape"),
    (dict(image_shape=(8, 8)), "image_shape"),
    (dict(image_shape=(8, 8, 0)), "image_shape"),
    (dict(num_classes=0), "num_classes"),
    (dict(latent_dim=2.5), "latent_dim"),
    (dict(embed_dim=0), "embed_dim"),
    (dict(hidden=0), "hidden"),
    (dict(depth=0), "depth"),
    (dict(output="sigmoid"), "output")])
def test_bad_arguments_raise_value_error_naming_them(kwargs, match):
  args = dict(architecture="dcgan", image_shape=(8, 8, 1), num_classes=10, **TINY)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    generators.make_generator(**args)


def test_sample_latent_bad_arguments():
  with pytest.raises(ValueError, match="latent_dim"):
    generators.sample_latent(2, 0, 0)
  with pytest.raises(ValueError, match="batch"):
    generators.sample_latent(-1, 2, 0)


@pytest.mark.parametrize("arch", generators.ARCHITECTURES)
def test_clip_head_is_in_range_and_passes_gradients_where_tanh_saturates(arch):
  gen = _tiny(arch, output="clip")
  assert gen.get_config()["output"] == "clip"
  # Straight-through clip: forward min(1, max(−1, x)), derivative 1 everywhere.
  x = tf.constant([[-3.0, -0.5, 0.25, 2.0]])
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(x)
    clipped = generators.straight_through_clip(x)
    saturated = tf.tanh(x)
  np.testing.assert_allclose(clipped.numpy(), [[-1.0, -0.5, 0.25, 1.0]])
  np.testing.assert_allclose(tape.gradient(clipped, x).numpy(), [[1.0, 1.0, 1.0, 1.0]])
  # tanh′(±3) = 1 − tanh²(3) ≈ 0.0099: the noise-driven dead end the clip head avoids.
  assert tape.gradient(saturated, x).numpy()[0, 0] == pytest.approx(0.009866, rel=1e-3)
  out = gen([tf.random.uniform([5, 4]) * 50, tf.range(5)], training=False).numpy()
  assert out.min() >= -1.0 and out.max() <= 1.0


@pytest.mark.parametrize("arch", generators.ARCHITECTURES)
def test_bfloat16_convs_lowers_every_convolution_and_nothing_else(arch):
  gen = _tiny(arch, (16, 16, 3), hidden=8, precision="bfloat16_convs")
  layers = list(gen._flatten_layers(include_self=False))
  convs = ([*gen.dense, gen.to_image] if arch == "mlp"  # the MLP's products are its layers
           else [c for c in layers if isinstance(c, tf.keras.layers.Conv2D)])  # ConvT too
  others = [o for o in layers if o not in convs and o.trainable_weights]
  assert convs and all(c.compute_dtype == tf.bfloat16 for c in convs)
  assert others and all(o.compute_dtype == tf.float32 for o in others)
  assert all(v.dtype == tf.float32 for v in gen.variables)
  assert generators.precision_of(gen) == "bfloat16_convs"
  # The same weights in float32 give the same images up to bfloat16 rounding.
  ref = _tiny(arch, (16, 16, 3), hidden=8)
  for a, b in zip(ref.variables, gen.variables):
    a.assign(b)
  inputs = [generators.sample_latent(6, gen.latent_dim, 0), tf.range(6)]
  low, high = gen(inputs, training=True), ref(inputs, training=True)
  assert low.dtype == tf.float32
  assert 0 < np.abs(low.numpy() - high.numpy()).max() < 0.1
  # Building one leaves Keras's global policy and later layers alone.
  assert tf.keras.mixed_precision.global_policy().name == "float32"
  assert tf.keras.layers.Conv2D(2, 1).dtype_policy.name == "float32"


def _backward_weight_ops(gen):
  """Conv2DBackpropFilter ops in the graph of `gen`'s parameter gradient."""
  inputs = [generators.sample_latent(3, gen.latent_dim, 0), tf.range(3)]

  @tf.function
  def grads():
    with tf.GradientTape() as tape:
      out = gen(inputs, training=True)
    return tape.gradient(out, gen.trainable_variables)

  return sum(op.type == "Conv2DBackpropFilter"
             for op in grads.get_concrete_function().graph.get_operations())


@pytest.mark.parametrize("precision,expected", [("float32", 2), ("bfloat16_convs", 1),
                                                ("mixed_bfloat16", 1)])
def test_small_bfloat16_transposed_conv_takes_the_product_filter_gradient(precision, expected,
                                                                          monkeypatch):
  # 28×28: seed 7×7 → 14×14 → 28×28. In bfloat16 the 7×7-input ConvT's filter gradient is
  # conv_ops' product; the 14×14 one and every float32 one stay TensorFlow's op (+1: the
  # output Conv 3×3's).
  gen = _tiny("dcgan", (28, 28, 1), precision=precision)
  assert _backward_weight_ops(gen) == expected + 1
  # The same generator with the product path off: the same gradient up to bfloat16 rounding.
  inputs = [generators.sample_latent(6, 4, 1), tf.range(6)]
  out_grad = tf.random.stateless_normal([6, 28, 28, 1], [5, 6])
  grads, calls, product = [], [], conv_ops.filter_gradient
  monkeypatch.setattr(conv_ops, "filter_gradient", lambda *a: calls.append(1) or product(*a))
  for max_pixels in (conv_ops.USE_MATMUL_MAX_PIXELS, 0):
    monkeypatch.setattr(conv_ops, "USE_MATMUL_MAX_PIXELS", max_pixels)
    with tf.GradientTape() as tape:
      out = gen(inputs, training=True)
    grads.append(tape.gradient(out, gen.blocks[0].convs[0].kernel, output_gradients=out_grad))
    calls.append("|")
  assert "".join(map(str, calls)) == ("1||" if expected == 1 else "||")
  ours, tf_op = (tf.convert_to_tensor(g).numpy() for g in grads)
  # Both in bfloat16 (8-bit mantissa), summed in different orders: 1.98 % apart on an
  # AVX2-only CPU (2026-12-07), < 1 % with AVX-512-BF16.
  assert np.linalg.norm(ours - tf_op) / np.linalg.norm(tf_op) < 3e-2


def test_the_widths_have_no_defaults_here():
  # They are the training config's (train.config.ModelConfig): one place for each default.
  with pytest.raises(TypeError, match="depth"):
    generators.make_generator("dcgan", (8, 8, 1), 10, latent_dim=4, embed_dim=3, hidden=4,
                              output="tanh", precision="float32")

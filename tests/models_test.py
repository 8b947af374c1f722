"""Tests for dp_sinkhorn_tf.models."""

import numpy as np
import pytest
import tensorflow as tf

from dp_sinkhorn_tf import models

SHAPES = [(8, 8, 1), (28, 28, 1), (32, 32, 3)]


@pytest.mark.parametrize("arch", models.ARCHITECTURES)
@pytest.mark.parametrize("shape", SHAPES)
def test_output_shape_and_range(arch, shape):
  gen = models.make_generator(arch, shape, num_classes=10, latent_dim=6, embed_dim=3, hidden=8)
  z = models.sample_latent(5, 6, [0, 1])
  out = gen([z, tf.range(5)], training=True)
  assert out.shape == (5,) + shape
  assert np.all(np.abs(out.numpy()) <= 1.0)
  assert (gen.latent_dim, gen.num_classes, gen.image_shape) == (6, 10, shape)


@pytest.mark.parametrize("size,expected", [(8, 1), (28, 2), (32, 3), (64, 4)])
def test_upsamplings_follow_resolution(size, expected):
  assert models.num_upsamplings((size, size, 1)) == expected


@pytest.mark.parametrize("arch", models.ARCHITECTURES)
def test_labels_change_the_output(arch):
  gen = models.make_generator(arch, (8, 8, 1), 10, latent_dim=4, embed_dim=4, hidden=8)
  z = tf.tile(models.sample_latent(1, 4, [3, 3]), [2, 1])
  out = gen([z, tf.constant([1, 7])], training=False).numpy()
  assert np.abs(out[0] - out[1]).max() > 1e-4


@pytest.mark.parametrize("arch", models.ARCHITECTURES)
def test_every_trainable_variable_gets_a_finite_nonzero_gradient(arch):
  gen = models.make_generator(arch, (8, 8, 1), 10, latent_dim=4, embed_dim=4, hidden=8)
  z = models.sample_latent(16, 4, [0, 0])
  with tf.GradientTape() as tape:
    out = gen([z, tf.range(16) % 10], training=True)
    loss = tf.reduce_sum(out * tf.random.stateless_normal(out.shape, [1, 1]))
  grads = tape.gradient(loss, gen.trainable_variables)
  for var, grad in zip(gen.trainable_variables, grads):
    assert grad is not None, var.name
    g = tf.convert_to_tensor(grad).numpy()
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0, var.name


def test_no_retracing_across_batch_sizes():
  gen = models.make_generator("dcgan", (8, 8, 1), 10, latent_dim=4, embed_dim=4, hidden=8)
  fn = tf.function(lambda z, y: gen([z, y], training=False),
                   input_signature=[tf.TensorSpec([None, 4]), tf.TensorSpec([None], tf.int32)])
  for b in (1, 3, 17):
    assert fn(tf.zeros([b, 4]), tf.zeros([b], tf.int32)).shape == (b, 8, 8, 1)
  assert fn.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("arch", models.ARCHITECTURES)
def test_checkpoint_round_trip_gives_identical_outputs(arch, tmp_path):
  kw = dict(latent_dim=4, embed_dim=4, hidden=8)
  gen = models.make_generator(arch, (8, 8, 1), 10, **kw)
  z, y = models.sample_latent(4, 4, [5, 5]), tf.constant([0, 1, 2, 3])
  gen([z, y], training=True)  # move BatchNorm statistics away from their init
  path = tf.train.Checkpoint(generator=gen).save(str(tmp_path / "ckpt"))
  other = models.make_generator(arch, (8, 8, 1), 10, **kw)
  tf.train.Checkpoint(generator=other).restore(path).assert_consumed()
  np.testing.assert_array_equal(gen([z, y], training=False).numpy(),
                                other([z, y], training=False).numpy())


def test_inference_output_does_not_depend_on_batch_companions():
  gen = models.make_generator("biggan", (8, 8, 1), 10, latent_dim=4, embed_dim=4, hidden=8)
  z, y = models.sample_latent(6, 4, [9, 9]), tf.constant([0, 1, 2, 3, 4, 5])
  alone = gen([z[:1], y[:1]], training=False).numpy()
  batched = gen([z, y], training=False).numpy()[:1]
  np.testing.assert_allclose(alone, batched, atol=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    (dict(architecture="vae"), "architecture"), (dict(image_shape=(2, 2, 1)), "image_shape"),
    (dict(num_classes=0), "num_classes"), (dict(hidden=0), "hidden")])
def test_bad_arguments(kwargs, match):
  args = dict(architecture="dcgan", image_shape=(8, 8, 1), num_classes=10)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    models.make_generator(**args)

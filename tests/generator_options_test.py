"""Tests for the TF-free generator options (dp_sinkhorn_tf.models.generator_options): the
names are the ones `generators` builds, and every image shape they promise is built."""

import pytest

from dp_sinkhorn_tf.models import generator_options, generators


def test_the_generators_read_the_tables():
  assert generators.PRECISIONS is generator_options.PRECISIONS
  # each architecture is built in generators_test
  assert generators.ARCHITECTURES is generator_options.ARCHITECTURES
  assert generators.OUTPUTS is generator_options.OUTPUTS


@pytest.mark.parametrize("architecture", generator_options.ARCHITECTURES)
def test_the_generators_build_every_size_the_options_promise(architecture):
  # IMAGE_SIDES' ends, odd sides (an overshoot is centre-cropped), non-square, both channel
  # counts: the promise the --image_size check makes.
  import tensorflow as tf
  low, high = generator_options.IMAGE_SIDES
  for shape in [(low, low, 1), (high, high, 3), (13, 17, 3), (28, 28, 1), (36, 20, 3),
                (low, high, 1)]:
    assert generator_options.image_shape_problem(shape) == ""
    gen = generators.make_generator(architecture, shape, 2, latent_dim=2, embed_dim=2,
                                    hidden=2, depth=1, output="tanh", precision="float32")
    out = gen([tf.zeros([1, 2]), tf.zeros([1], tf.int32)], training=False)
    assert tuple(out.shape) == (1, *shape), (architecture, shape)


def test_sizes_and_channels_outside_the_range_are_named():
  low, high = generator_options.IMAGE_SIDES
  assert "7×8 pixels (the generators take 8 to 128" in generator_options.image_shape_problem(
      (low - 1, low, 1))
  assert "pixels" in generator_options.image_shape_problem((low, high + 1, 3))
  assert "4 channels" in generator_options.image_shape_problem((low, low, 4))

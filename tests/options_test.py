"""Tests for the TF-free option tables (dp_sinkhorn_tf.transport.options and
dp_sinkhorn_tf.models.options): the names agree with the libraries that build them, the
solver settings refuse bad values, and n′ = ⌊p·n⌋."""

import pytest

from dp_sinkhorn_tf.models import generators
from dp_sinkhorn_tf.models import options as model_options
from dp_sinkhorn_tf.transport import costs, sinkhorn
from dp_sinkhorn_tf.transport import options as transport_options


def test_the_cost_names_are_the_cost_table():
  assert transport_options.COST_NAMES == tuple(costs.COSTS)
  for name in transport_options.COST_NAMES:
    costs.make_cost(name)  # each name builds


def test_the_libraries_read_the_tables():
  assert costs.PRODUCTS is transport_options.PRODUCTS
  assert sinkhorn.SinkhornConfig is transport_options.SinkhornConfig
  assert generators.PRECISIONS is model_options.PRECISIONS
  assert generators.ARCHITECTURES is model_options.ARCHITECTURES  # each built in generators_test
  assert generators.OUTPUTS is model_options.OUTPUTS


@pytest.mark.parametrize("kwargs", [dict(epsilon=0), dict(scaling=1.0), dict(scaling=0),
                                    dict(max_iterations=0), dict(threshold=-1),
                                    dict(absorb_threshold=100), dict(anneal_threshold=-1),
                                    dict(anneal_max_iterations=0)])
def test_solver_config_rejects_bad_values(kwargs):
  name = next(iter(kwargs))
  with pytest.raises(ValueError, match=name.split("_")[0]):
    transport_options.SinkhornConfig(**kwargs)


@pytest.mark.parametrize("n,p,expected", [(50, 0.4, 20), (5, 0.4, 2), (7, 0.0, 0), (7, 1.0, 7),
                                          (10, 0.3, 3)])
def test_num_extra(n, p, expected):
  assert transport_options.num_extra(n, p) == expected


@pytest.mark.parametrize("n,p", [(5, 1.5), (5, -0.1), (-1, 0.4)])
def test_num_extra_refuses_bad_arguments(n, p):
  with pytest.raises(ValueError):
    transport_options.num_extra(n, p)


@pytest.mark.parametrize("architecture", model_options.ARCHITECTURES)
def test_the_generators_build_every_size_the_options_promise(architecture):
  # IMAGE_SIDES' ends, odd sides (an overshoot is centre-cropped), non-square, both channel
  # counts: the promise the --image_size check makes.
  import tensorflow as tf
  low, high = model_options.IMAGE_SIDES
  for shape in [(low, low, 1), (high, high, 3), (13, 17, 3), (28, 28, 1), (36, 20, 3),
                (low, high, 1)]:
    assert model_options.image_shape_problem(shape) == ""
    gen = generators.make_generator(architecture, shape, 2, latent_dim=2, embed_dim=2,
                                    hidden=2, depth=1)
    out = gen([tf.zeros([1, 2]), tf.zeros([1], tf.int32)], training=False)
    assert tuple(out.shape) == (1, *shape), (architecture, shape)


def test_sizes_and_channels_outside_the_range_are_named():
  low, high = model_options.IMAGE_SIDES
  assert "7×8 pixels (the generators take 8 to 128" in model_options.image_shape_problem(
      (low - 1, low, 1))
  assert "pixels" in model_options.image_shape_problem((low, high + 1, 3))
  assert "4 channels" in model_options.image_shape_problem((low, low, 4))

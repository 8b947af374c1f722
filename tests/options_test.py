"""Tests for the TF-free transport settings (dp_sinkhorn_tf.transport.options): the names
agree with the libraries that build them, the solver settings refuse bad values, and
n′ = ⌊p·n⌋."""

import pytest

from dp_sinkhorn_tf.transport import costs, sinkhorn
from dp_sinkhorn_tf.transport import options as transport_options


def test_the_cost_names_are_the_cost_table():
  assert transport_options.COST_NAMES == tuple(costs.COSTS)
  for name in transport_options.COST_NAMES:
    costs.make_cost(name)  # each name builds


def test_the_libraries_read_the_tables():
  assert costs.PRODUCTS is transport_options.PRODUCTS
  assert sinkhorn.SinkhornConfig is transport_options.SinkhornConfig


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

"""Tests for dp_sinkhorn_tf.privacy.mechanisms: the table drives the config and the step, so a new
mechanism is one entry; the shipped entries keep their properties."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from dp_sinkhorn_tf.data import datasets
from dp_sinkhorn_tf.privacy import accounting, keys, mechanisms
from dp_sinkhorn_tf.train import config as config_lib
from dp_sinkhorn_tf.train import trainer
from dp_sinkhorn_tf.transport import costs, sinkhorn
from dp_sinkhorn_tf.transport import options as transport_options


def test_the_shipped_mechanisms_and_their_properties():
  assert set(mechanisms.MECHANISMS) == {"image_grad", "param_grad"}
  for name, mech in mechanisms.MECHANISMS.items():
    assert mech.name == name
  assert mechanisms.get("image_grad").distributable
  assert mechanisms.get("image_grad").releases_image_gradient
  assert not mechanisms.get("param_grad").distributable
  assert config_lib.MECHANISMS == tuple(mechanisms.MECHANISMS)


@dataclasses.dataclass(frozen=True)
class _Frozen(mechanisms.Mechanism):
  """A test mechanism that releases nothing: zero gradients."""

  name: str = "frozen"

  def gradients(self, model, step):
    variables = model.generator.trainable_variables
    return [tf.zeros_like(v) for v in variables], {"loss": tf.constant(0.0)}


def test_a_new_mechanism_is_one_table_entry(monkeypatch):
  monkeypatch.setitem(mechanisms.MECHANISMS, "frozen", _Frozen())
  digits = datasets.load_dataset("digits")
  cfg = config_lib.TrainConfig(
      batch_size=8, steps=3,
      model=config_lib.ModelConfig(architecture="dcgan", latent_dim=4, embed_dim=2, hidden=4),
      loss=config_lib.LossConfig(solver=sinkhorn.SinkhornConfig(max_iterations=5),
                                 jit_compile=False),
      privacy=config_lib.PrivacyConfig(mechanism="frozen", noise_multiplier=1.0))
  plan = accounting.plan_privacy(cfg, len(digits.images))
  model, _ = trainer.build_model(cfg, digits.images, digits.labels, 10, plan,
                                 keys.insecure_fixed(0))
  before = [v.numpy() for v in model.generator.trainable_variables]
  model.train_step(tf.constant(0, tf.int64))
  for a, v in zip(before, model.generator.trainable_variables):
    np.testing.assert_array_equal(a, v.numpy())  # the step used the table's entry
  # Not distributable, so a strategy refuses it by name.
  with pytest.raises(ValueError, match=r"--mechanism='frozen'.*\['image_grad'\]"):
    config_lib.TrainConfig(privacy=config_lib.PrivacyConfig(mechanism="frozen"),
                           run=config_lib.RunConfig(strategy="mirrored"))


def test_a_new_cost_is_its_table_entry_and_its_name(monkeypatch):
  monkeypatch.setitem(costs.COSTS, "half_l2",
                      lambda l1_weight, max_block_bytes, products: _HalfL2())
  with pytest.raises(ValueError, match="--cost='half_l2'"):  # the name is not listed yet
    config_lib.LossConfig(cost="half_l2")
  monkeypatch.setattr(transport_options, "COST_NAMES", (*transport_options.COST_NAMES,
                                                        "half_l2"))
  cfg = config_lib.LossConfig(cost="half_l2")
  cost = costs.make_cost(cfg.cost)
  x = tf.constant([[0.0, 0.0]])
  y = tf.constant([[3.0, 4.0]])
  assert float(cost(x, y)[0, 0]) == 12.5


class _HalfL2:
  def __call__(self, x, y):
    return 0.5 * costs.squared_euclidean(x, y)

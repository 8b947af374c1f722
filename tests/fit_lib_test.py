"""Tests for dp_sinkhorn_tf.train.fit_lib: the step loop of the non-private fits and the
release file, locally and on ram:// (standing in for gs://)."""

import uuid

import numpy as np
import pytest
import tensorflow as tf

from dp_sinkhorn_tf.train import fit_lib


def test_run_steps_calls_each_step_in_order_and_reports_its_loss():
  seen, reported = [], []

  def step(t):
    assert t.dtype == tf.int64 and t.shape == ()
    seen.append(int(t))
    return tf.constant(0.5, tf.float32) * tf.cast(t, tf.float32) + 1.0

  losses = fit_lib.run_steps(step, 4, lambda t, loss: reported.append((t, loss)))
  assert seen == [0, 1, 2, 3]
  assert losses.dtype == np.float32 and losses.tolist() == [1.0, 1.5, 2.0, 2.5]
  assert reported == [(0, 1.0), (1, 1.5), (2, 2.0), (3, 2.5)]
  assert fit_lib.run_steps(step, 0).shape == (0,)


@pytest.mark.parametrize("where", ["local", "ram"])
def test_a_release_reads_back_bit_for_bit(where, tmp_path):
  root = str(tmp_path) if where == "local" else f"ram://fit_lib_test/{uuid.uuid4().hex}"
  tf.io.gfile.makedirs(root)
  released = np.random.default_rng(0).normal(size=(3, 17)) * 1e-3  # float64, as released
  path = f"{root}/release.npz"
  fit_lib.write_release(path, released)
  back = fit_lib.read_release(path)
  assert back.dtype == np.float64 and np.array_equal(back, released)
  assert tf.io.gfile.listdir(root) == ["release.npz"]

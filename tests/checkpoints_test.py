"""Tests for dp_sinkhorn_tf.io.checkpoints: the header read without restoring, and the
checkpoint folder without wall-clock times."""

import os
import time
import uuid

import pytest
import tensorflow as tf

from dp_sinkhorn_tf.io import checkpoints, files


def _manager(folder, max_to_keep=2):
  step = tf.Variable(0, dtype=tf.int64)
  run_id = tf.Variable("run-a", dtype=tf.string)
  ckpt = tf.train.Checkpoint(step=step, run_id=run_id)
  return step, tf.train.CheckpointManager(ckpt, str(folder), max_to_keep=max_to_keep)


def _state(folder):
  return tf.train.get_checkpoint_state(str(folder))


def test_the_header_names_the_run_and_the_step(tmp_path):
  step, manager = _manager(tmp_path)
  step.assign(7)
  path = manager.save(checkpoint_number=7)
  names, run_id, stored = checkpoints.read_checkpoint_header(path)
  assert (run_id, stored) == ("run-a", 7) and checkpoints.STEP_KEY in names
  assert checkpoints.checkpoint_number(path) == 7


def test_saves_leave_no_clock_time_and_a_reopened_manager_still_rotates(tmp_path):
  step, manager = _manager(tmp_path)
  for n in (3, 6):
    step.assign(n)
    manager.save(checkpoint_number=n)
  # What TensorFlow leaves: the clock time of each save, in a folder that is published.
  assert all(abs(t - time.time()) < 3600 for t in _state(tmp_path).all_model_checkpoint_timestamps)
  checkpoints.fix_checkpoint_times(manager)
  state = _state(tmp_path)
  assert list(state.all_model_checkpoint_timestamps) == [946684803.0, 946684806.0]
  assert state.last_preserved_timestamp == 946684799.0
  assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == ["ckpt-3", "ckpt-6"]
  text = (tmp_path / "checkpoint").read_text()
  assert str(tmp_path) not in text  # still relative paths, as the manager writes them
  for path in [tmp_path] + list(tmp_path.iterdir()):
    assert os.stat(path).st_mtime == files.FIXED_TIME, path
  # A new process's manager manages both (FIXED_TIME + N > last_preserved), so the next save
  # deletes the oldest beyond max_to_keep=2, as without the rewrite.
  step, reopened = _manager(tmp_path)
  assert [os.path.basename(p) for p in reopened.checkpoints] == ["ckpt-3", "ckpt-6"]
  step.assign(9)
  reopened.save(checkpoint_number=9)
  checkpoints.fix_checkpoint_times(reopened)
  assert not os.path.exists(tmp_path / "ckpt-3.index")
  assert list(_state(tmp_path).all_model_checkpoint_timestamps) == [946684806.0, 946684809.0]
  assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-9")


def test_an_empty_folder_and_a_gfile_folder(tmp_path):
  _, manager = _manager(tmp_path / "none")
  checkpoints.fix_checkpoint_times(manager)  # nothing saved: nothing to rewrite
  assert not os.path.exists(tmp_path / "none" / "checkpoint")
  folder = f"ram://checkpoints_test/{uuid.uuid4().hex}"
  step, manager = _manager(folder)
  step.assign(4)
  manager.save(checkpoint_number=4)
  checkpoints.fix_checkpoint_times(manager)  # the file is rewritten; no utime there
  assert list(_state(folder).all_model_checkpoint_timestamps) == [946684804.0]
  assert tf.train.latest_checkpoint(folder).endswith("ckpt-4")


def test_a_name_without_a_number_is_refused():
  with pytest.raises(ValueError):
    checkpoints.checkpoint_number("checkpoints/ckpt")

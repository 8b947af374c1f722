"""Tests for dp_sinkhorn_tf.io.events: TensorBoard events timed by the step, in a file whose
name holds no clock time and no host, with the records tf.summary would write."""

import glob
import os
import socket
import time
import uuid

import numpy as np
import pytest
import tensorflow as tf

from dp_sinkhorn_tf.io import events, files


def read_events(path):
  return list(tf.compat.v1.train.summary_iterator(str(path)))


def only_file(folder):
  paths = glob.glob(os.path.join(str(folder), "*"))
  assert len(paths) == 1, paths
  return paths[0]


GRID = np.arange(5 * 7 * 1, dtype=np.uint8).reshape(5, 7, 1) * 6


def test_summaries_are_those_tf_summary_writes_but_timed_by_the_step(tmp_path):
  reference = tf.summary.create_file_writer(str(tmp_path / "tf"))
  with reference.as_default(step=3):
    tf.summary.scalar("epsilon", 1.25)
    tf.summary.image("samples", GRID[np.newaxis], max_outputs=1)
  reference.flush()
  ours = events.EventWriter(str(tmp_path / "ours"), start_step=2)
  ours.scalar("epsilon", 1.25, 3)
  ours.image("samples", GRID, 3)
  ours.close()
  theirs, mine = read_events(only_file(tmp_path / "tf")), read_events(ours.path)
  assert len(theirs) == len(mine) == 3
  assert mine[0].file_version == theirs[0].file_version == "brain.Event:2"
  for a, b in zip(theirs[1:], mine[1:]):
    assert b.summary == a.summary and b.step == a.step == 3  # field for field
  # Every time is 2000-01-01T00:00:00Z + step, the file version's that of the first step.
  assert [e.wall_time for e in mine] == [946684800.0 + 2, 946684800.0 + 3, 946684800.0 + 3]
  assert abs(theirs[1].wall_time - time.time()) < 3600  # what tf.summary would publish


def test_tensorboard_reads_the_values_and_the_image(tmp_path):
  from tensorboard.backend.event_processing import event_accumulator

  writer = events.EventWriter(str(tmp_path), start_step=0)
  for step in (1, 2, 5):
    writer.scalar("noised_grad_norm", 0.5 * step, step)
  writer.scalar("epsilon", float("nan"), 6)  # written as is (summaries skips non-finite)
  writer.image("samples", GRID, 5)
  writer.close()
  acc = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
  acc.Reload()
  scalars = acc.Tensors("noised_grad_norm")
  assert [(s.step, s.wall_time, float(tf.make_ndarray(s.tensor_proto))) for s in scalars] == [
      (1, 946684801.0, 0.5), (2, 946684802.0, 1.0), (5, 946684805.0, 2.5)]
  image = acc.Tensors("samples")[0]
  width, height, png = tf.make_ndarray(image.tensor_proto)
  assert (int(width), int(height)) == (7, 5)
  np.testing.assert_array_equal(tf.image.decode_png(png).numpy(), GRID)


def test_the_file_name_holds_no_clock_time_no_host_and_no_process(tmp_path):
  name = events.events_file_name(events.step_wall_time(40))
  assert name == "events.out.tfevents.0946684840.dp_sinkhorn_tf.v2"
  assert socket.gethostname() not in name and str(os.getpid()) not in name
  assert "tfevents" in name  # TensorBoard reads only such files
  # Sessions that start later sort later (TensorBoard reads a folder's files in name order).
  names = [events.events_file_name(events.step_wall_time(s)) for s in (0, 9, 10, 10**8)]
  assert names == sorted(names)


def test_file_and_folder_times_are_fixed_after_a_flush(tmp_path):
  writer = events.EventWriter(str(tmp_path / "tb"), start_step=0)
  writer.scalar("epsilon", 1.0, 1)
  writer.flush()
  for path in (writer.path, tmp_path / "tb"):
    assert os.stat(path).st_mtime == files.FIXED_TIME
  writer.scalar("epsilon", 2.0, 2)
  writer.close()
  assert os.stat(writer.path).st_mtime == files.FIXED_TIME
  assert [e.step for e in read_events(writer.path)] == [0, 1, 2]
  with pytest.raises(ValueError, match="closed"):  # reopening would truncate the file
    writer.scalar("epsilon", 3.0, 3)


def test_a_session_that_writes_nothing_leaves_no_file_and_a_same_start_session_replaces_it(
    tmp_path):
  events.EventWriter(str(tmp_path / "tb"), start_step=4).close()
  assert not os.path.exists(tmp_path / "tb")
  first = events.EventWriter(str(tmp_path / "tb"), start_step=4)
  first.scalar("epsilon", 1.0, 4)
  first.close()
  second = events.EventWriter(str(tmp_path / "tb"), start_step=4)  # e.g. a finish-only rerun
  second.scalar("epsilon", 1.0, 4)
  second.close()
  assert second.path == first.path and only_file(tmp_path / "tb") == first.path
  assert [(e.step, e.wall_time) for e in read_events(first.path)] == [
      (0, 946684804.0), (4, 946684804.0)]  # the file version (step 0, as tf.summary's), a
  # scalar: the first session's events are gone, not doubled


def test_a_writer_without_folder_discards_and_another_clock_is_honoured(tmp_path):
  sink = events.EventWriter(None, start_step=0)
  sink.scalar("epsilon", 1.0, 1)
  sink.image("samples", GRID, 1)
  sink.close()
  assert sink.path is None
  clock = events.EventWriter(str(tmp_path), start_step=0, wall_time=lambda step: 7.0 * step)
  clock.scalar("loss", 3.0, 2)
  clock.close()
  assert [e.wall_time for e in read_events(clock.path)] == [0.0, 14.0]


def test_images_must_be_uint8_hwc():
  with pytest.raises(ValueError, match="uint8"):
    events.image_summary("samples", GRID.astype(np.float32))
  with pytest.raises(ValueError, match="uint8"):
    events.image_summary("samples", GRID[np.newaxis])


def test_events_on_a_tf_io_gfile_file_system():
  folder = f"ram://events_test/{uuid.uuid4().hex}/tb"
  writer = events.EventWriter(folder, start_step=0)
  writer.scalar("epsilon", 1.5, 1)
  writer.close()  # no utime there: a no-op, not an error
  assert tf.io.gfile.listdir(folder) == ["events.out.tfevents.0946684800.dp_sinkhorn_tf.v2"]
  assert [(e.step, e.wall_time) for e in read_events(writer.path)] == [
      (0, 946684800.0), (1, 946684801.0)]

"""TensorBoard event files whose times are a function of the step, not of the clock.

`tf.summary`'s writer stamps every event with time.time() and names its file
events.out.tfevents.<time>.<host>.<pid>.<n>.v2: published, that is a timing side channel
(the gap between two events is how long the steps between them took, which depends on the
private data and is not covered by ε) and it names the machine. This writer produces the
same records (`scalar_summary`, `image_summary` build the Summary protos `tf.summary.scalar`
and `tf.summary.image` write, field for field), with

  wall_time(step) = FIXED_TIME + step          (`step_wall_time`; FIXED_TIME = 2000-01-01Z)

for every event, the file-version event included (timed by the first step of the writer's
session; its step field is 0, as tf.summary's), in a file named

  events.out.tfevents.<wall_time of the first step, 10 digits>.dp_sinkhorn_tf.v2

so that the names sort like the sessions (TensorBoard reads a folder's files in name order).
A caller may pass another `wall_time` (e.g. the real clock for private diagnostics, which
are never published). On a local file system the file's times are FIXED_TIME after every
flush (`files.set_fixed_time`).

A writer opens its file at its first event and truncates a file of the same name: that is
one written by an earlier session that began at the same step, and that session can only
have written events this session writes again (a run's outputs for steps after its last
checkpoint are never written; see `train_lib`). Paths may be on any tf.io.gfile file system.
"""

import os
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from dp_sinkhorn_tf.io import files

FILE_VERSION = "brain.Event:2"  # what tf.summary's writer puts first; TensorBoard checks it
WRITER_NAME = "dp_sinkhorn_tf.io.events"
SCALARS_PLUGIN = "scalars"  # tensorboard.plugins.scalar.metadata.PLUGIN_NAME
IMAGES_PLUGIN = "images"  # tensorboard.plugins.image.metadata.PLUGIN_NAME


def step_wall_time(step: int) -> float:
  """wall_time(step) = FIXED_TIME + step, in seconds since the Unix epoch.

  Strictly increasing in the step, so TensorBoard's "relative" axis reads the step in
  seconds, and a function of the step alone: two runs with the same steps give the same
  times whatever their durations."""
  return float(files.FIXED_TIME + int(step))


def events_file_name(first_wall_time: float) -> str:
  """events.out.tfevents.<int(first_wall_time), zero-padded to 10 digits>.dp_sinkhorn_tf.v2:
  TensorBoard's pattern (it reads files whose name holds "tfevents"), with neither a clock
  time nor a host name nor a process id."""
  return f"events.out.tfevents.{int(first_wall_time):010d}.dp_sinkhorn_tf.v2"


def scalar_summary(tag: str, value: float) -> tf.compat.v1.Summary:
  """The Summary `tf.summary.scalar(tag, value)` writes: a float32 scalar tensor (its bytes
  in tensor_content) with the scalars plugin's metadata (empty content: version 0)."""
  summary = tf.compat.v1.Summary()
  entry = summary.value.add(tag=tag)
  entry.metadata.plugin_data.plugin_name = SCALARS_PLUGIN
  entry.tensor.dtype = tf.float32.as_datatype_enum
  entry.tensor.tensor_shape.SetInParent()
  entry.tensor.tensor_content = np.asarray(value, np.float32).tobytes()
  return summary


def image_summary(tag: str, image: np.ndarray) -> tf.compat.v1.Summary:
  """The Summary `tf.summary.image(tag, image[np.newaxis], max_outputs=1)` writes for one
  uint8 image [H, W, C]: the strings [str(W), str(H), PNG bytes] with the images plugin's
  metadata (empty content: version 0)."""
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3:
    raise ValueError(f"image: expected uint8 [H, W, C], got {image.dtype} {image.shape}")
  png = tf.image.encode_png(image).numpy()
  summary = tf.compat.v1.Summary()
  entry = summary.value.add(tag=tag)
  entry.metadata.plugin_data.plugin_name = IMAGES_PLUGIN
  entry.tensor.CopyFrom(tf.make_tensor_proto(
      np.array([str(image.shape[1]).encode(), str(image.shape[0]).encode(), png], object)))
  return summary


class EventWriter:
  """Appends events to <logdir>/events_file_name(wall_time(start_step)).

  Args:
    logdir: the folder (created at the first event); None: a writer that discards
      everything (a non-chief worker's).
    start_step: the step the session starts from (names the file, times its first event).
    wall_time: step → wall_time of its events; default `step_wall_time`.
  """

  def __init__(self, logdir: Optional[str], start_step: int,
               wall_time: Callable[[int], float] = step_wall_time):
    self._logdir = logdir
    self._start_step = int(start_step)
    self._wall_time = wall_time
    self._writer = None
    self._closed = False
    self.path = (None if logdir is None else
                 os.path.join(logdir, events_file_name(wall_time(self._start_step))))

  def _write(self, event: tf.compat.v1.Event) -> None:
    if self._closed:
      raise ValueError(f"{self.path}: the writer is closed")
    if self._writer is None:
      files.makedirs(self._logdir)
      self._writer = tf.io.TFRecordWriter(self.path)
      first = tf.compat.v1.Event(wall_time=self._wall_time(self._start_step),
                                 file_version=FILE_VERSION)
      first.source_metadata.writer = WRITER_NAME
      self._writer.write(first.SerializeToString())
    self._writer.write(event.SerializeToString())

  def write(self, step: int, summary: tf.compat.v1.Summary) -> None:
    """One event: `summary` at `step`, timed wall_time(step)."""
    if self._logdir is None:
      return
    self._write(tf.compat.v1.Event(wall_time=self._wall_time(step), step=int(step),
                                   summary=summary))

  def scalar(self, tag: str, value: float, step: int) -> None:
    self.write(step, scalar_summary(tag, value))

  def image(self, tag: str, image: np.ndarray, step: int) -> None:
    self.write(step, image_summary(tag, image))

  def flush(self) -> None:
    """Writes the buffered events to the file; then the times of the file and of its
    folder are FIXED_TIME (local paths)."""
    if self._writer is not None:
      self._writer.flush()
      files.set_fixed_time(self.path)
      files.set_fixed_time(self._logdir)

  def close(self) -> None:
    """Flushes and closes the file; a later event is a ValueError (reopening would truncate
    the file)."""
    if self._writer is not None:
      self.flush()
      self._writer.close()
      self._writer = None
    self._closed = True

"""A checkpoint's header (variable names, run id, step), read without restoring it: what
`train_lib.open_run` and `export` check before they trust a checkpoint.

Kept out of `rundir` (the run directory's layout), which the CLIs read before their flags
are checked and so must not import TensorFlow.
"""

import tensorflow as tf

# The checkpoint's run id entry (a tf.Variable(tf.string) tracked as "run_id") and its step.
CHECKPOINT_RUN_ID_KEY = "run_id/.ATTRIBUTES/VARIABLE_VALUE"
STEP_KEY = "step/.ATTRIBUTES/VARIABLE_VALUE"

# What TF raises for a truncated, garbage or missing checkpoint file (a truncated
# .data-* file surfaces as IndexError "Read less bytes than requested").
CHECKPOINT_READ_ERRORS = (tf.errors.OpError, ValueError, IndexError, KeyError, OSError,
                          RuntimeError)


def read_checkpoint_header(path: str):
  """(variable names, run id ("" if none), step (None if none)) of a checkpoint prefix.

  Raises one of CHECKPOINT_READ_ERRORS for an unreadable checkpoint."""
  # The reader on the prefix itself: tf.train.list_variables first asks whether the path is
  # a directory, which prefix-matching file systems (ram://) answer wrongly.
  reader = tf.compat.v1.train.NewCheckpointReader(path)
  names = set(reader.get_variable_to_shape_map())
  run_id = (reader.get_tensor(CHECKPOINT_RUN_ID_KEY)
            if CHECKPOINT_RUN_ID_KEY in names else b"")
  run_id = run_id.decode() if isinstance(run_id, bytes) else str(run_id)
  step = int(reader.get_tensor(STEP_KEY)) if STEP_KEY in names else None
  return names, run_id, step

"""A checkpoint's header (variable names, run id, step), read without restoring it: what
`provenance.open_run` and `export` check before they trust a checkpoint; and the checkpoint
folder without wall-clock times (`fix_checkpoint_times`).

Kept out of `rundir` (the run directory's layout), which the CLIs read before their flags
are checked and so must not import TensorFlow.
"""

import tensorflow as tf

from dp_sinkhorn_tf.io import files

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


def checkpoint_number(path: str) -> int:
  """N of a checkpoint prefix ".../ckpt-N" (ValueError for another name)."""
  return int(path.rpartition("-")[2])


def fix_checkpoint_times(manager: tf.train.CheckpointManager) -> None:
  """Removes the wall-clock times a CheckpointManager leaves in its folder.

  The manager writes time.time() of each save into the folder's `checkpoint` file
  (all_model_checkpoint_timestamps, last_preserved_timestamp): a timing side channel in a
  published folder. This rewrites the file with the same paths (relative, as the manager
  writes them) and

    timestamp(ckpt-N) = FIXED_TIME + N,    last_preserved_timestamp = FIXED_TIME − 1,

  then sets the times of every file in the folder and of the folder to FIXED_TIME
  (`files.set_fixed_times`; a no-op on a remote file system, whose `checkpoint` file is
  rewritten all the same). The manager reads these times only for
  keep_checkpoint_every_n_hours (not used here) and, when it reopens the folder, manages
  (and deletes beyond max_to_keep) the checkpoints whose time exceeds
  last_preserved_timestamp: every one, as FIXED_TIME + N > FIXED_TIME − 1 for N ≥ 0.

  Call it after each save (the manager rewrites its own times at every save) and after
  opening a folder (a process killed between a save and this call left real times).
  """
  paths = list(manager.checkpoints)
  if paths:
    tf.__internal__.train.update_checkpoint_state(
        manager.directory, manager.latest_checkpoint, all_model_checkpoint_paths=paths,
        save_relative_paths=True,
        all_model_checkpoint_timestamps=[float(files.FIXED_TIME + checkpoint_number(p))
                                         for p in paths],
        last_preserved_timestamp=float(files.FIXED_TIME - 1))
  files.set_fixed_times(manager.directory)

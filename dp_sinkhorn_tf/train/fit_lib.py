"""What the non-private fits share — DP-MERF's generator training (`merf_lib.fit`) and the
warm start's pre-training (`warm_start.pretrain`), both post-processing of one release: the
step loop, and the .npz file a released array is kept in (<workdir>/release.npz,
<workdir>/warm_start.npz)."""

from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from dp_sinkhorn_tf.io import files

RELEASE_KEY = "released"  # the array's name inside the .npz


def run_steps(step: Callable[[tf.Tensor], tf.Tensor], steps: int,
              on_step: Optional[Callable[[int, float], None]] = None) -> np.ndarray:
  """step(t) for t = 0 … steps−1 (t an int64 scalar tensor; step returns the loss),
  on_step(t, loss) after each; returns the losses [steps] float32."""
  losses = np.zeros([steps], np.float32)
  for t in range(steps):
    losses[t] = step(tf.constant(t, tf.int64)).numpy()
    if on_step is not None:
      on_step(t, float(losses[t]))
  return losses


def read_release(path: str) -> np.ndarray:
  """The array `write_release` wrote to `path` (any `io.files` path)."""
  return files.read_npz(path)[RELEASE_KEY]


def write_release(path: str, released: np.ndarray) -> None:
  """Writes a released array as .npz (key `RELEASE_KEY`), atomically (`io.files`)."""
  files.write_npz_atomic(path, {RELEASE_KEY: released})

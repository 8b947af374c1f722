"""tf.distribute for the private step: which devices, which strategy, which rows are mine.

How a step is split over R replicas (`trainer.DPSinkhornModel.image_grad_gradients`), and
why the privacy argument is unchanged:

* the Poisson sample is drawn from the secret key by every replica alike (a stateless draw
  of (key, step)): one global sample, each record in with probability q;
* the n + n′ latents and labels are public draws of (--seed, step), the same everywhere;
  replica r generates rows [r·b, (r+1)·b), b = (n + n′)/R, and the rows are all-gathered;
* every replica computes the same Sinkhorn loss and image gradient G on the gathered batch,
  clips the whole private block G[0:n] to C (the global block, not a per-replica part) and
  adds the noise of (key, step): every replica releases the same G̃;
* replica r back-propagates its rows of G̃ through its own forward pass; the parameter
  gradients are summed across replicas (the optimizer's all-reduce), which is the gradient
  of the whole batch, so the update equals the single-device one (to float32 rounding;
  BatchNorm is synchronised so its batch statistics are the whole batch's).

What scales: the generator's forward and backward passes over the generated batch. What
does not: the Sinkhorn solve, computed on the gathered batch by every replica.
"""

from typing import Optional, Tuple

import tensorflow as tf


def configure_devices(strategy: str, num_devices: Optional[int]) -> None:
  """Before TF touches a device: with --strategy=mirrored, no GPU and num_devices set,
  split the CPU into num_devices logical devices. Raises ValueError if TF has already
  initialised its devices with another split."""
  if strategy != "mirrored" or num_devices is None:
    return
  if tf.config.list_physical_devices("GPU"):
    return
  cpu = tf.config.list_physical_devices("CPU")[0]
  wanted = [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)]
  try:
    tf.config.set_logical_device_configuration(cpu, wanted)
  except RuntimeError:
    have = len(tf.config.list_logical_devices("CPU"))
    if have < num_devices:
      raise ValueError(f"--num_devices={num_devices}: TensorFlow already runs on {have} CPU "
                       "device(s) in this process; set it before any TensorFlow work") \
          from None


def make_strategy(strategy: str, num_devices: Optional[int]) -> tf.distribute.Strategy:
  """The default strategy, or MirroredStrategy over the first num_devices GPUs (all when
  None), or over num_devices logical CPUs on a host without GPUs."""
  if strategy == "default":
    return tf.distribute.get_strategy()
  if strategy != "mirrored":
    raise ValueError(f"--strategy={strategy}: expected default or mirrored")
  gpus = tf.config.list_logical_devices("GPU")
  if gpus:
    devices = [d.name for d in gpus[:num_devices]]
    return tf.distribute.MirroredStrategy(devices)
  cpus = tf.config.list_logical_devices("CPU")
  count = num_devices or 1
  if len(cpus) < count:
    raise ValueError(f"--num_devices={count}: only {len(cpus)} CPU device(s); none is a GPU")
  # NCCL needs GPUs: reduce through one device instead.
  return tf.distribute.MirroredStrategy([d.name for d in cpus[:count]],
                                        cross_device_ops=tf.distribute.ReductionToOneDevice())


def check_divisible(num_generated: int, replicas: int) -> None:
  """Each replica generates the same number of rows: n + n′ must split evenly."""
  if num_generated % replicas:
    raise ValueError(f"--fake_batch_size / --batch_size / --debias_fraction: the {num_generated} "
                     f"generated images per step (n + n′) must split evenly over {replicas} "
                     "replicas")


def my_rows(total: int) -> Tuple[Optional[tf.distribute.ReplicaContext], object, int]:
  """(replica context or None, first row, rows) of this replica's share of `total` rows
  (the whole range outside a multi-replica strategy)."""
  ctx = tf.distribute.get_replica_context()
  if ctx is None or ctx.num_replicas_in_sync == 1:
    return None, 0, total
  rows = total // ctx.num_replicas_in_sync
  return ctx, ctx.replica_id_in_sync_group * rows, rows

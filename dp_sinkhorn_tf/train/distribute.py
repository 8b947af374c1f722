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

Multi-worker (`--strategy=multi_worker`, one process per host, TF_CONFIG): every process
runs the same loop on the same shared --workdir; only the chief (`is_chief`: task "chief",
else worker 0) creates the run and writes the ledger (write-ahead, before each chunk: no
worker can finish a step of the chunk without the chief), privacy.json, TensorBoard,
grids, checkpoints and the export; the other workers wait for the chief's run.json, read
the key from --workdir, and write their checkpoints and exports (which take part in the
same collectives) to a local temporary folder that is deleted.
"""

import json
import os
from typing import Optional, Tuple

import tensorflow as tf

# A multi-worker collective that waits longer than this fails (a dead or stuck worker is a
# crash: the survivors exit with an error and the run resumes from its last checkpoint).
COLLECTIVE_TIMEOUT_S = 60
_CACHE = {}  # one strategy object per (kind, devices) and process: a model built in one
# strategy's scope must run in that same object (and MultiWorkerMirroredStrategy may be
# created only once)


def has_gpu() -> bool:
  """Whether TensorFlow sees a physical GPU (listing does not initialise the devices)."""
  return bool(tf.config.list_physical_devices("GPU"))


def configure_devices(strategy: str, num_devices: Optional[int]) -> None:
  """Before TF touches a device: with --strategy=mirrored, no GPU and num_devices set,
  split the CPU into num_devices logical devices. Raises ValueError if TF has already
  initialised its devices with another split."""
  if strategy != "mirrored" or num_devices is None:
    return
  if has_gpu():
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
  if (strategy, num_devices) not in _CACHE:
    _CACHE[(strategy, num_devices)] = _new_strategy(strategy, num_devices)
  return _CACHE[(strategy, num_devices)]


def _new_strategy(strategy: str, num_devices: Optional[int]) -> tf.distribute.Strategy:
  if strategy == "multi_worker":
    task()  # a missing or malformed TF_CONFIG is one clear error, not a TF traceback
    options = tf.distribute.experimental.CommunicationOptions(
        timeout_seconds=COLLECTIVE_TIMEOUT_S)
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
  if strategy != "mirrored":
    raise ValueError(f"--strategy={strategy}: expected default, mirrored or multi_worker")
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


def task() -> Tuple[str, int]:
  """(task type, index) of this process in TF_CONFIG; ValueError when it is unusable."""
  text = os.environ.get("TF_CONFIG")
  if not text:
    raise ValueError("--strategy=multi_worker: TF_CONFIG is not set (expected "
                     '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", '
                     '"index": i}})')
  try:
    config = json.loads(text)
    kind, index = config["task"]["type"], int(config["task"]["index"])
    members = config["cluster"][kind]
  except (ValueError, KeyError, TypeError):
    raise ValueError("--strategy=multi_worker: TF_CONFIG is not a cluster with this task "
                     f"in it: {text[:200]}") from None
  if not 0 <= index < len(members):
    raise ValueError(f"--strategy=multi_worker: TF_CONFIG task {kind}:{index} is not in the "
                     f"cluster ({len(members)} {kind} entries)")
  return kind, index


def is_chief(strategy: str) -> bool:
  """Whether this process writes the run directory: always, except a non-chief task of a
  multi-worker cluster (the chief is task "chief", or worker 0 when there is none)."""
  if strategy != "multi_worker":
    return True
  kind, index = task()
  cluster = json.loads(os.environ["TF_CONFIG"])["cluster"]
  return kind == "chief" or (kind == "worker" and index == 0 and "chief" not in cluster)

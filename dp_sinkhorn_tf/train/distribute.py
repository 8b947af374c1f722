"""tf.distribute for the private step: which devices, which strategy, which rows are mine.

How a step is split over R replicas (`trainer.DPSinkhornModel.image_grad_gradients`):

* the n + n′ latents and labels are public draws of (--seed, step), the same everywhere;
  replica r generates the contiguous rows `share(N, R, r)` of the N = n + n′: the first
  N mod R replicas ⌈N/R⌉ rows, the others ⌊N/R⌋, so any N ≥ R splits;
* `gather_rows`: each replica pads its rows with zero rows to ⌈N/R⌉ (so every replica
  sends the same shape), the padded blocks are all-gathered and the padding rows are
  dropped at fixed positions: every replica holds X, the N rows in the single-device order;
* `from_first_replica`: replica 0 (the chief's first device in a multi-worker cluster)
  alone draws the Poisson sample from the secret key, computes the Sinkhorn loss and
  G = ∂L/∂X on X, clips the whole private block G[0:n] to C once and adds the noise of
  (key, step) once: the release G̃; the other replicas compute nothing from the data and
  contribute exact zeros; a SUM all-reduce of (G̃ on replica 0, 0 elsewhere) hands every
  replica G̃ bit for bit (x + 0 = x in floating point), with replica 0's metrics;
* replica r back-propagates its rows of G̃ through its own forward pass; the parameter
  gradients are summed across replicas (the optimizer's all-reduce), which is the gradient
  of the whole batch, so the update equals the single-device one (to float32 rounding).

Why the padding changes nothing. A padding row never passes through the generator: it is
a zero row appended to a replica's output for the all-gather only and removed before the
loss, so it is in neither the loss, nor G, nor the release, nor any back-propagation.
BatchNorm is synchronised (`generators.batch_norm`): its batch statistics are the
all-reduced sums over the rows the replicas generated divided by the all-reduced row count,
i.e. over the N rows of X exactly as on one device, whether the shares are equal or not
(padding rows through the generator would have entered those statistics, and the moving
averages, and changed every real row). Hence X, L, G, G̃ and the summed parameter
gradient are the single-device step's, up to the order of float32 sums.

Why the sensitivity is 2C whatever the replicas compute. Fix the step's public inputs: the
generated batch X (latents of --seed, weights that are post-processing of earlier
releases; whichever replica, with whatever flags, generated a row, X does not depend on the
private data D of this step). What leaves the mechanism is one tensor, G̃ = M(G₀(X, D)),
where G₀ is replica 0's image gradient: the all-reduce adds to it only zeros that the
other replicas produce without reading D, so the value every replica receives is M(G₀)
itself, not R separately computed values expected to agree. ‖clip_C(G₀(X, D)[0:n]) −
clip_C(G₀(X, D′)[0:n])‖₂ ≤ 2C for neighbouring D, D′, as on one device, so M is the
Gaussian mechanism with sensitivity 2C and noise 2σC; the back-propagation of its rows on
every replica, the summed gradients and the update are post-processing. (Had each replica
clipped its own G_r and back-propagated its rows of clip_C(G_r) + Z, the release would be
the stack of R blocks taken from R different clipped tensors: norm up to √R·C, sensitivity
2C·√R if replicas disagreed, e.g. a worker started with other loss flags.)

Belt and braces for multi-worker: `check_same_config` all-gathers a hash of every worker's
resolved training configuration (paths excepted) before the run directory is touched, and
every worker refuses to start when they differ.

What scales: the generator's forward and backward passes over the generated batch. What
does not: the Sinkhorn solve, computed once per step on the gathered batch by replica 0.

Multi-worker (`--strategy=multi_worker`, one process per host, TF_CONFIG): every process
runs the same loop on the same shared --workdir; only the chief (`is_chief`: task "chief",
else worker 0) creates the run and writes the ledger (write-ahead, before each chunk: no
worker can finish a step of the chunk without the chief), privacy.json, TensorBoard,
grids, checkpoints and the export; the other workers wait for the chief's run.json, read
the key from --workdir, and write their checkpoints and exports (which take part in the
same collectives) to a local temporary folder that is deleted.
"""

import dataclasses
import hashlib
import json
import os
from typing import Callable, Optional, Sequence, Tuple, TypeVar

import numpy as np
import tensorflow as tf

# A multi-worker collective that waits longer than this fails (a dead or stuck worker is a
# crash: the survivors exit with an error and the run resumes from its last checkpoint).
COLLECTIVE_TIMEOUT_S = 60
_CACHE = {}  # one strategy object per (kind, devices) and process: a model built in one
# strategy's scope must run in that same object (and MultiWorkerMirroredStrategy may be
# created only once)
T = TypeVar("T")


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


def share(total: int, replicas: int, replica: int) -> Tuple[int, int]:
  """(first row, rows) of replica `replica`'s contiguous share of `total` rows: the first
  total mod R replicas get ⌈total/R⌉ rows, the others ⌊total/R⌋; the shares are in replica
  order and cover [0, total) exactly once."""
  base, extra = divmod(total, replicas)
  return replica * base + min(replica, extra), base + (1 if replica < extra else 0)


def check_split(num_generated: int, replicas: int) -> None:
  """Every replica generates at least one row: n + n′ ≥ R (any n + n′ ≥ R splits, unevenly
  if need be)."""
  if num_generated < replicas:
    raise ValueError(f"--fake_batch_size / --batch_size / --debias_fraction: the "
                     f"{num_generated} generated images per step (n + n′) are fewer than the "
                     f"{replicas} replicas (each generates at least one)")


def replica_id(ctx: tf.distribute.ReplicaContext) -> int:
  """This replica's index in its sync group as a Python int (Mirrored and MultiWorkerMirrored
  strategies trace each replica separately with a constant id)."""
  rid = tf.get_static_value(ctx.replica_id_in_sync_group)
  if rid is None:
    raise ValueError("this tf.distribute strategy gives no static replica id; expected "
                     "MirroredStrategy or MultiWorkerMirroredStrategy")
  return int(rid)


def my_rows(total: int) -> Tuple[Optional[tf.distribute.ReplicaContext], int, int]:
  """(replica context or None, first row, rows) of this replica's `share` of `total` rows
  (None and the whole range outside a multi-replica strategy); Python ints."""
  ctx = tf.distribute.get_replica_context()
  if ctx is None or ctx.num_replicas_in_sync == 1:
    return None, 0, total
  first, rows = share(total, ctx.num_replicas_in_sync, replica_id(ctx))
  return ctx, first, rows


def gather_rows(ctx: tf.distribute.ReplicaContext, mine: tf.Tensor, total: int) -> tf.Tensor:
  """Every replica's rows (`my_rows`) in row order: [total, ...] on every replica.

  Each replica pads `mine` with zero rows to ⌈total/R⌉, the padded blocks are all-gathered
  (the same shape from every replica; across hosts the static shape is lost and restored
  here), and the padding rows, at positions fixed by (total, R), are dropped: the result
  holds no padding row, whatever the shares.
  """
  replicas = ctx.num_replicas_in_sync
  width = -(-total // replicas)
  rows = share(total, replicas, replica_id(ctx))[1]
  padded = tf.pad(mine, [[0, width - rows]] + [[0, 0]] * (mine.shape.rank - 1))
  gathered = tf.ensure_shape(ctx.all_gather(padded, axis=0),
                             [replicas * width, *mine.shape[1:]])
  if total % replicas == 0:
    return gathered
  keep = [r * width + i for r in range(replicas) for i in range(share(total, replicas, r)[1])]
  return tf.gather(gathered, keep)


def from_first_replica(ctx: tf.distribute.ReplicaContext, compute: Callable[[], T],
                       zeros: Callable[[], T]) -> T:
  """compute() as replica 0 computes it, on every replica: replica 0 calls compute(), every
  other replica calls only zeros() (the same structure, shapes and dtypes, all zeros), and
  a SUM all-reduce hands everyone replica 0's value exactly (x + 0 = x). compute runs once
  per step in the whole cluster, so whatever it draws (a clip, a noise sample) is applied
  once, and no other replica's computation reaches the result."""
  value = compute() if replica_id(ctx) == 0 else zeros()
  return ctx.all_reduce(tf.distribute.ReduceOp.SUM, value)


# Fields of TrainConfig that may differ between the workers of one run: paths, which a
# shared file system may mount at different places (the data themselves are checked by the
# keyed fingerprint in the ledger, the key by `provenance.open_run`).
HOST_LOCAL_FIELDS = (("run", "workdir"), ("run", "privacy_key_file"), ("data", "data_dir"),
                     ("data", "idx_dir"))


def config_hash(cfg) -> str:
  """32 hex digits of SHA-256 over the resolved configuration `cfg` (a TrainConfig):
  `dataclasses.asdict` minus HOST_LOCAL_FIELDS, as sorted JSON. Equal configs (up to those
  paths) hash equally in every process; any other field that differs changes it."""
  fields = dataclasses.asdict(cfg)
  for section, name in HOST_LOCAL_FIELDS:
    fields.get(section, {}).pop(name, None)
  text = json.dumps(fields, sort_keys=True, default=repr)
  return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def differing_configs(hashes: Sequence[str], replicas_per_worker: int) -> Optional[str]:
  """None when every replica's config hash is the same, else the one-line refusal naming
  each process's hash (process = replica index // replicas_per_worker, in the cluster's
  order: the chief, then the workers)."""
  if len(set(hashes)) <= 1:
    return None
  per_process = {}
  for index, value in enumerate(hashes):
    per_process.setdefault(index // max(1, replicas_per_worker), value)
  listed = ", ".join(f"process {w}: {h}" for w, h in sorted(per_process.items()))
  return ("--flagfile / flags: the workers' resolved training configurations differ (config "
          f"hash {listed}); start every worker with the same flags (only --workdir, "
          "--privacy_key_file, --data_dir and --idx_dir may differ)")


def check_same_config(strategy: tf.distribute.Strategy, cfg) -> None:
  """All-gathers every replica's `config_hash(cfg)`; ValueError (`differing_configs`) on
  every worker when they are not all equal, or when the collective fails (a worker missing
  for COLLECTIVE_TIMEOUT_S). A collective: every worker must call it, before anything is
  written."""
  words = np.frombuffer(bytes.fromhex(config_hash(cfg)), dtype=">u4").astype(np.int64)

  @tf.function
  def gather():
    def replica():
      ctx = tf.distribute.get_replica_context()
      return ctx.all_gather(tf.constant(words[np.newaxis]), axis=0)
    return strategy.run(replica)

  try:
    gathered = strategy.experimental_local_results(gather())[0].numpy()
  except tf.errors.OpError as e:
    text = str(e).strip().splitlines()
    raise ValueError("--strategy=multi_worker: could not compare the configuration with the "
                     f"other workers ({text[0] if text else type(e).__name__}); start every "
                     "worker of TF_CONFIG") from None
  hashes = ["".join(f"{int(w):08x}" for w in row) for row in gathered]
  message = differing_configs(hashes, len(strategy.extended.worker_devices))
  if message:
    raise ValueError(message)


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

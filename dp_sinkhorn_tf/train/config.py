"""Frozen run configuration. `main.py` turns flags into these once; nothing mutates them.

Each dataclass validates its own fields in `__post_init__` and names the flag that set the
bad value, so a bad command line fails with one line before any work starts. The module
imports no TensorFlow (the option tables it checks against are TF-free:
`models.generator_options`, `transport.options`, `privacy.mechanisms`), so that line comes
before TensorFlow's start-up and within a second (imports_test checks it).

`gradient_flags` names, by flag, every field that shapes a step's released gradient or the
update made from it (all but `NOT_SHAPING`); the ledger keeps them and their SHA-256, and a
resume must present the same.
"""

import dataclasses
import hashlib
import json
import math
from typing import Any, Dict, List, Optional, Tuple

from dp_sinkhorn_tf.data import datasets
from dp_sinkhorn_tf.data import spec as data_spec
from dp_sinkhorn_tf.models import generator_options as model_options
from dp_sinkhorn_tf.privacy import mechanisms
from dp_sinkhorn_tf.transport import options as transport_options

ARCHITECTURES = model_options.ARCHITECTURES
OUTPUTS = model_options.OUTPUTS
PRECISIONS = model_options.PRECISIONS
MECHANISMS = tuple(mechanisms.MECHANISMS)
OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine")
ACCOUNTANTS = ("rdp", "pld")
COSTS = transport_options.COST_NAMES
PRODUCTS = transport_options.PRODUCTS
STRATEGIES = ("default", "mirrored", "multi_worker")
IF_FINISHED = ("fail", "skip")


def require(condition: bool, flag: str, expected: str, value) -> None:
  """ValueError("--flag=value: expected …") unless `condition`: the one line a bad flag
  value gives (the config's own check; the command lines' `cli.require` words it the same)."""
  if not condition:
    raise ValueError(f"--{flag}={value!r}: expected {expected}")


def _require_finite(obj, *names: str) -> None:
  """Every named float field is a finite number (or None): inf and NaN are refused up front
  (--target_epsilon=inf once trained a whole run at σ ≈ 0.001)."""
  for name in names:
    value = getattr(obj, name)
    require(value is None or (isinstance(value, (int, float)) and math.isfinite(value)),
            name, "a finite number", value)


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """The private data (`data.spec` lists the sources): a built-in --dataset or a --data
  source, and what is done to it before training.

  image_key / label_key: the features of tfds: / tfrecord: sources (None: "image" /
  "label", the label optional). image_size (H, W) / channels: resize (antialiased) /
  convert every image; None keeps the data's own, which must then agree. privacy_unit:
  "record" (one image) or "group" (every record of one group id, `groups`: a CSV of
  file → group, or "subfolders"; npz: its `groups` array), of which a sampled group gives at
  most max_per_group records a step.
  """

  dataset: Optional[str] = "digits"  # --dataset (None when --data is given)
  source: Optional[str] = None  # --data=SCHEME:ARG
  data_dir: Optional[str] = None
  idx_dir: Optional[str] = None
  image_key: Optional[str] = None
  label_key: Optional[str] = None
  image_size: Optional[Tuple[int, int]] = None
  channels: Optional[int] = None
  privacy_unit: str = "record"
  groups: Optional[str] = None
  max_per_group: int = 1

  def __post_init__(self):
    require((self.dataset is None) != (self.source is None), "data",
            "either --data=SOURCE or --dataset=NAME, not both", self.source)
    if self.dataset is not None:
      require(self.dataset in datasets.DATASETS, "dataset",
              f"one of {', '.join(datasets.DATASETS)} (your own data: --data="
              f"{data_spec.SOURCE_HELP})", self.dataset)
      scheme = None
    else:
      scheme = data_spec.parse_source(self.source).scheme
    for name in ("image_key", "label_key"):
      require(getattr(self, name) is None or scheme in ("tfds", "tfrecord"), name,
              "unset unless --data=tfds:… or tfrecord:…", getattr(self, name))
    require(self.idx_dir is None or self.dataset in datasets.IDX_DATASETS, "idx_dir",
            f"unset unless --dataset is {' or '.join(datasets.IDX_DATASETS)}",
            self.idx_dir)
    if self.image_size is not None:
      size = data_spec.format_size(self.image_size)
      problem = model_options.image_shape_problem((*self.image_size, 1))
      require(not problem, "image_size", "a size the generators build: " + problem, size)
    require(self.channels is None or self.channels in model_options.CHANNELS, "channels",
            "1 (grayscale) or 3 (RGB), or unset (the data's own)", self.channels)
    require(self.privacy_unit in data_spec.PRIVACY_UNITS, "privacy_unit",
            f"one of {data_spec.PRIVACY_UNITS}", self.privacy_unit)
    require(self.max_per_group >= 1, "max_per_group", "an integer ≥ 1",
            self.max_per_group)
    if self.privacy_unit == "record":
      require(self.groups is None, "groups", "unset unless --privacy_unit=group",
              self.groups)
      return
    if scheme == "folder":
      require(bool(self.groups), "groups", "a CSV of file → group id, or "
              f"{data_spec.GROUPS_SUBFOLDERS} (one sub-folder level per group), with "
              "--privacy_unit=group", self.groups)
    elif scheme == "npz":
      require(self.groups is None, "groups", "unset with --data=npz:… (the file's "
              "`groups` array holds them)", self.groups)
    else:
      require(False, "privacy_unit", "record with "
              f"{'--data=' + self.source if scheme else '--dataset=' + self.dataset} "
              "(groups come from folder: with --groups, or npz: with a `groups` array)",
              self.privacy_unit)

  @property
  def name(self) -> str:
    """The data as the user named them: the --dataset name or the --data source."""
    return self.dataset if self.dataset is not None else self.source


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  architecture: str = "dcgan"
  latent_dim: int = 16
  embed_dim: int = 8
  hidden: int = 64
  depth: int = 1
  output: str = "tanh"  # output head: "tanh" (paper) or "clip" (straight-through clip)
  # The generator's Keras policy (model_options.PRECISIONS); the loss, the mechanism and the
  # accountant are float32 whatever it is.
  precision: str = "float32"

  def __post_init__(self):
    require(self.precision in PRECISIONS, "precision", f"one of {PRECISIONS}", self.precision)
    require(self.architecture in ARCHITECTURES, "architecture", f"one of {ARCHITECTURES}",
            self.architecture)
    require(self.output in OUTPUTS, "output", f"one of {OUTPUTS}", self.output)
    for name in ("latent_dim", "embed_dim", "hidden", "depth"):
      require(getattr(self, name) >= 1, name, "an integer ≥ 1", getattr(self, name))


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """The semi-debiased Sinkhorn loss (paper eq. 8) and its feature space."""

  cost: str = "l1l2"
  l1_weight: float = 3.0  # the paper's m in ‖x−y‖² + m·‖x−y‖₁
  debias_fraction: float = 0.4  # p: n′ = ⌊p·n⌋ extra generated points
  alpha_c: float = 15.0  # weight of the one-hot label block
  solver: transport_options.SinkhornConfig = transport_options.SinkhornConfig()
  # Compile the loss + image gradient with XLA, the real batch padded to a power-of-two
  # bucket with zero weights (one program per bucket). 3–15× faster for n ≤ 50 on CPU;
  # slower for n ≳ 1000, where the matrix products dominate.
  jit_compile: bool = True
  # Weight points so that the plan stays within classes (features.class_matched_weights);
  # False is the paper's uniform weights.
  class_matching: bool = False
  # Format of the cost matrices' ⟨x, y⟩ products (costs.inner_products): "bfloat16" is
  # 2–3× faster on CPUs with AVX-512-BF16 or AMX; the value stays within 1e-3, the gradient
  # within ~0.4 % at λ = 50 (CIFAR / CelebA) but ~11 % at λ = 0.05, where the plan is sharp;
  # "bfloat16_all" also runs the gradient's plan products in bfloat16 (~0.5 % at λ = 50).
  products: str = "float32"

  def __post_init__(self):
    _require_finite(self, "l1_weight", "debias_fraction", "alpha_c")
    names = transport_options.COST_NAMES
    require(self.cost in names, "cost", f"one of {names}", self.cost)
    require(self.products in PRODUCTS, "sinkhorn_products", f"one of {PRODUCTS}",
            self.products)
    require(self.l1_weight >= 0, "l1_weight", "a number ≥ 0", self.l1_weight)
    require(0 <= self.debias_fraction <= 1, "debias_fraction", "a number in [0, 1]",
            self.debias_fraction)
    require(self.alpha_c >= 0, "alpha_c", "a number ≥ 0", self.alpha_c)


@dataclasses.dataclass(frozen=True)
class PrivacyConfig:
  """What the accountant needs, plus the mechanism's knobs.

  noise_multiplier σ is the noise std divided by the sensitivity 2C. Give it, or leave it
  None and give `steps` in TrainConfig: the planner then finds the smallest σ for the
  target ε.
  """

  dp: bool = True
  mechanism: str = "image_grad"
  l2_norm_clip: float = 0.5
  noise_multiplier: Optional[float] = None
  target_epsilon: float = 10.0
  delta: float = 1e-5
  accountant: str = "rdp"
  # Gaussian blur (pixels) of the released image gradient: post-processing, no privacy cost.
  release_blur: float = 0.0
  # Clip norm of the public rows G[n:] (None: l2_norm_clip). They see generated data only.
  public_clip: Optional[float] = None

  def __post_init__(self):
    _require_finite(self, "l2_norm_clip", "noise_multiplier", "target_epsilon", "delta",
                    "release_blur", "public_clip")
    require(self.public_clip is None or 0 <= self.public_clip < float("inf"), "public_clip",
            "a finite number ≥ 0 (or unset: --l2_norm_clip)", self.public_clip)
    require(self.mechanism in mechanisms.MECHANISMS, "mechanism",
            f"one of {tuple(mechanisms.MECHANISMS)}", self.mechanism)
    image = mechanisms.get(self.mechanism).releases_image_gradient
    require(self.public_clip is None or image, "public_clip",
            f"unset with --mechanism={self.mechanism} (it clips rows of the image gradient)",
            self.public_clip)
    require(0 <= self.release_blur <= 10, "release_blur", "a number of pixels in [0, 10]",
            self.release_blur)
    require(self.release_blur == 0 or image, "release_blur",
            f"0 with --mechanism={self.mechanism} (it smooths the released image gradient)",
            self.release_blur)
    require(self.accountant in ACCOUNTANTS, "accountant", f"one of {ACCOUNTANTS}",
            self.accountant)
    if not self.dp:
      return
    require(self.l2_norm_clip > 0 and self.l2_norm_clip != float("inf"), "l2_norm_clip",
            "a finite number > 0 with --dp", self.l2_norm_clip)
    require(self.noise_multiplier is None or self.noise_multiplier > 0, "noise_multiplier",
            "a number > 0 with --dp", self.noise_multiplier)
    require(self.target_epsilon > 0, "target_epsilon", "a number > 0", self.target_epsilon)
    require(0 < self.delta < 1, "delta", "a number in (0, 1)", self.delta)
    # The lattice noise (privacy.lattice) is certified through RDP: for integer shifts the
    # discrete Gaussian's Rényi divergences are the continuous one's. Its privacy-loss
    # distribution is not below the continuous Gaussian's, so a PLD plan would not be a bound.
    require(self.accountant == "rdp", "accountant",
            "rdp with --dp (the exact lattice noise is certified by RDP; privacy.json "
            "reports the continuous Gaussian's PLD figure for reference only)",
            self.accountant)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  optimizer: str = "adam"
  learning_rate: float = 1e-3
  beta_1: float = 0.5
  beta_2: float = 0.999
  weight_decay: float = 0.0
  ema_decay: float = 0.0  # 0: off; else sample / export an EMA of the generator's weights
  # "cosine": lr·½(1 + cos(π·t/T)) over the run's T planned steps (trainer.learning_rate_fn).
  lr_schedule: str = "constant"

  def __post_init__(self):
    _require_finite(self, "learning_rate", "beta_1", "beta_2", "weight_decay", "ema_decay")
    require(self.optimizer in OPTIMIZERS, "optimizer", f"one of {OPTIMIZERS}", self.optimizer)
    require(self.learning_rate > 0, "learning_rate", "a number > 0", self.learning_rate)
    require(0 <= self.beta_1 < 1, "beta_1", "a number in [0, 1)", self.beta_1)
    require(0 <= self.beta_2 < 1, "beta_2", "a number in [0, 1)", self.beta_2)
    require(self.weight_decay >= 0, "weight_decay", "a number ≥ 0", self.weight_decay)
    require(self.weight_decay == 0 or self.optimizer == "adamw", "weight_decay",
            "0 unless --optimizer=adamw", self.weight_decay)
    require(0 <= self.ema_decay < 1, "ema_decay", "a number in [0, 1)", self.ema_decay)
    require(self.lr_schedule in LR_SCHEDULES, "lr_schedule", f"one of {LR_SCHEDULES}",
            self.lr_schedule)


@dataclasses.dataclass(frozen=True)
class RunConfig:
  workdir: str = "runs/default"
  seed: int = 0
  log_every: int = 10
  sample_every: int = 500
  checkpoint_every: int = 200
  keep_checkpoints: int = 3
  export: bool = True
  model_name: str = "generator"
  # The secret key that drives noise and batches (privacy_key): None draws a fresh one
  # from the OS at the first start; a path reuses a key the data owner keeps.
  privacy_key_file: Optional[str] = None
  # Derive the key from the public --seed: reproducible, NOT private (tests, debugging).
  insecure_fixed_key: bool = False
  # tf.distribute: "default" (one device), "mirrored" (the devices of one host: GPUs, or
  # num_devices logical CPUs when there is none; num_devices None = every GPU), or
  # "multi_worker" (MultiWorkerMirroredStrategy over the hosts of TF_CONFIG).
  strategy: str = "default"
  num_devices: Optional[int] = None
  # A run whose budget is spent and whose outputs exist: "fail" (exit 1) or "skip" (exit 0).
  if_finished: str = "fail"
  # Steps per call of the compiled loop (train_lib._train_loop), at most; None: every step
  # up to the next log, sample or checkpoint point, where the loop reads the device anyway.
  steps_per_call: Optional[int] = None

  def __post_init__(self):
    require(bool(self.workdir), "workdir", "a directory path", self.workdir)
    require(self.if_finished in IF_FINISHED, "if_finished", f"one of {IF_FINISHED}",
            self.if_finished)
    require(self.strategy in STRATEGIES, "strategy", f"one of {STRATEGIES}", self.strategy)
    require(self.num_devices is None or self.num_devices >= 1, "num_devices",
            "an integer ≥ 1 (or unset)", self.num_devices)
    require(not (self.privacy_key_file and self.insecure_fixed_key), "insecure_fixed_key",
            "unset together with --privacy_key_file (one key source)", self.insecure_fixed_key)
    require(self.steps_per_call is None or self.steps_per_call >= 1, "steps_per_call",
            "an integer ≥ 1 (or unset)", self.steps_per_call)
    for name in ("log_every", "sample_every", "checkpoint_every", "keep_checkpoints"):
      require(getattr(self, name) >= 1, name, "an integer ≥ 1", getattr(self, name))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """A whole run. batch_size is the expected Poisson batch B (q = B/N); fake_batch_size
  the number n of generated points per step in W(X[0:n], Y) (None: n = B, as in the
  paper); steps=None lets the privacy budget decide.

  Why n may differ from B: the noise is added to the n × d image gradient while the signal
  is clipped to C in total, so the signal-to-noise ratio per step scales as 1/√(n·d). A
  smaller n gives a cleaner (if more stochastic) released gradient at the same ε.
  """

  batch_size: int = 50
  steps: Optional[int] = None
  data: DataConfig = DataConfig()
  model: ModelConfig = ModelConfig()
  loss: LossConfig = LossConfig()
  privacy: PrivacyConfig = PrivacyConfig()
  optim: OptimConfig = OptimConfig()
  run: RunConfig = RunConfig()
  fake_batch_size: Optional[int] = None

  def __post_init__(self):
    require(self.batch_size >= 1, "batch_size", "an integer ≥ 1", self.batch_size)
    require(self.fake_batch_size is None or self.fake_batch_size >= 1, "fake_batch_size",
            "an integer ≥ 1 (or unset: the same as --batch_size)", self.fake_batch_size)
    require(self.steps is None or self.steps >= 1, "steps", "an integer ≥ 1 (or unset)",
            self.steps)
    if not self.privacy.dp:
      require(self.steps is not None, "steps", "a step count when --dp=false (no budget "
              "decides it)", self.steps)
    # Dynamic loss scaling skips a step and shrinks its scale when a gradient overflows.
    # param_grad back-propagates the loss on the private batch, so that decision (and the
    # scale, which is checkpointed) would depend on the private data outside the mechanism.
    # image_grad back-propagates only the released G̃: there it is post-processing.
    require(self.model.precision != "mixed_float16"
            or mechanisms.get(self.privacy.mechanism).releases_image_gradient or
            not self.privacy.dp, "precision",
            f"float32 or mixed_bfloat16 with --mechanism={self.privacy.mechanism} (float16 "
            "loss scaling would make a data-dependent, unprivatised decision per step)",
            self.model.precision)
    # param_grad runs on TF Privacy's DP optimizers, which wrap Keras's legacy Adam / SGD.
    require(self.optim.optimizer in ("adam", "sgd") or self.privacy.mechanism != "param_grad"
            or not self.privacy.dp, "optimizer",
            "adam or sgd with --mechanism=param_grad (TF Privacy's DP optimizer wraps "
            "Keras's legacy optimizers)", self.optim.optimizer)
    if self.run.strategy != "default":
      distributable = [m for m, v in mechanisms.MECHANISMS.items() if v.distributable]
      require(mechanisms.get(self.privacy.mechanism).distributable, "mechanism",
              f"one of {distributable} with --strategy={self.run.strategy} (the others run "
              "on one device)", self.privacy.mechanism)

  @property
  def num_primary(self) -> int:
    """n: the generated points that meet the private batch."""
    return self.fake_batch_size if self.fake_batch_size is not None else self.batch_size

  @property
  def num_generated(self) -> int:
    """n + n′ generated points per step, n′ = ⌊p·n⌋."""
    n = self.num_primary
    return n + transport_options.num_extra(n, self.loss.debias_fraction)


# ---- the flags that shape the released gradient (checked on resume) ------------------------

# Fields of TrainConfig that change neither the released gradient G̃ of any step nor the update
# made from it, so a resume may change them. Every other field, including any added later, is
# part of `gradient_flags` and must be the same when a run resumes (`provenance.open_run`).
# Hashed on purpose although borderline: --sinkhorn_jit, --strategy and --num_devices (the
# same G̃ only to float32 rounding, and a resume re-runs steps bit for bit), the plan's own
# flags (--target_epsilon, --delta, --accountant; also compared as the plan) and
# --insecure_fixed_key (also refused on its own: a run keeps its key).
NOT_SHAPING = {
    "data.data_dir": "a path: the data read from it are pinned by the ledger's keyed "
                     "fingerprint and N",
    "data.idx_dir": "a path: as --data_dir",
    "data.source": "where the data are read from (--data=SCHEME:PATH): the records read are "
                   "pinned by the ledger's keyed fingerprint and N, so a moved folder resumes",
    "run.workdir": "where the run lives (run.json, not the path, identifies it)",
    "run.log_every": "how often scalars are written; every step computes the same logs",
    "run.sample_every": "grids are drawn in inference mode from stateless latents: they read "
                        "the weights and change nothing",
    "run.checkpoint_every": "where the loop pauses to charge and save; step t releases the "
                            "same whatever the chunking (the SIGKILL test in main_test)",
    "run.keep_checkpoints": "how many saved checkpoints are kept",
    "run.export": "post-processing at the end",
    "run.model_name": "the export's name",
    "run.privacy_key_file": "a path: the key itself is pinned (the run keeps <workdir>/"
                            "privacy_key, and a given file must hold the same secret)",
    "run.if_finished": "what to do once every step is taken",
    "run.steps_per_call": "how many steps one call of the compiled loop runs; step t keys "
                          "its batch and noise by t in every call (trainer_test: K steps in "
                          "one call are K single steps bit for bit)",
}

# Config paths whose flag is not the field's own name. Other fields of the sections are set
# by the flag of their name; a nested field without a flag is named by its config path.
_FLAG_NAMES = {
    "data.source": "data",
    "loss.jit_compile": "sinkhorn_jit",
    "loss.products": "sinkhorn_products",
    "loss.solver.epsilon": "sinkhorn_epsilon",
    "loss.solver.scaling": "sinkhorn_scaling",
    "loss.solver.threshold": "sinkhorn_threshold",
    "loss.solver.max_iterations": "sinkhorn_max_iterations",
    "loss.solver.relaxation": "sinkhorn_relaxation",
}


def _leaves(obj, prefix: str = ""):
  """(config path, value) of every non-dataclass field of a config, depth first."""
  for field in dataclasses.fields(obj):
    value = getattr(obj, field.name)
    path = f"{prefix}{field.name}"
    if dataclasses.is_dataclass(value):
      yield from _leaves(value, path + ".")
    else:
      yield path, value


def flag_name(path: str) -> str:
  """The flag that sets config field `path` ("optim.learning_rate" → "learning_rate");
  the path itself for a nested field no flag sets ("loss.solver.compile_solver")."""
  if path in _FLAG_NAMES:
    return _FLAG_NAMES[path]
  return path.split(".")[-1] if path.count(".") <= 1 else path


def gradient_flags(cfg: TrainConfig) -> Dict[str, Any]:
  """{flag name: value} of every field of `cfg` not in NOT_SHAPING: what decides a step's
  released gradient and the update made from it. Pass the config with its plan resolved
  (steps and noise_multiplier as the planner fixed them), so that an unset flag and the
  value it resolved to compare equal."""
  return {flag_name(path): value for path, value in _leaves(cfg) if path not in NOT_SHAPING}


def _canonical(value):
  """A number as a float (the flag 1 and 1.0 are one value; −0.0 is 0.0, as == has it),
  anything else as is."""
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return float(value) + 0.0
  return value


def flags_sha256(flags: Dict[str, Any]) -> str:
  """SHA-256 hex of JSON(sorted {name: canonical value}): equal exactly when every value is.

  Raises ValueError for a value JSON cannot hold exactly (inf, NaN, objects)."""
  text = json.dumps({k: _canonical(v) for k, v in flags.items()}, sort_keys=True,
                    separators=(",", ":"), allow_nan=False)
  return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _show(value) -> str:
  if value is None:
    return "unset"
  if isinstance(value, bool):
    return str(value).lower()
  return repr(value) if isinstance(value, float) else str(value)


def changed_flags(then: Dict[str, Any], now: Dict[str, Any]) -> List[str]:
  """"--name: <then> then, <now> now" for every name whose canonical values differ (a name
  on one side only shows as "absent" on the other), sorted by name."""
  out = []
  for name in sorted(set(then) | set(now)):
    a, b = then.get(name, _ABSENT), now.get(name, _ABSENT)
    if a is _ABSENT or b is _ABSENT or _canonical(a) != _canonical(b):
      label = f"--{name}" if "." not in name else name
      out.append(f"{label}: {'absent' if a is _ABSENT else _show(a)} then, "
                 f"{'absent' if b is _ABSENT else _show(b)} now")
  return out


_ABSENT = object()

"""Frozen run configuration. `main.py` turns flags into these once; nothing mutates them.

Each field is declared once, with its flag: `lr: float = option(1e-3, "Learning rate.")`
gives the type, the default, the help and (by default) the flag's name, which is the field's;
`flag_meta` lists the rest (another name, enum choices, a reason it shapes no gradient).
`flag_specs` reads the table (train_flags defines the absl flags from it, `io.flagdefs`) and
`from_flags` builds the config from the parsed values by the same table, so a new flag is one
field here and nothing elsewhere.

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
import typing
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from dp_sinkhorn_tf.data import datasets
from dp_sinkhorn_tf.data import spec as data_spec
from dp_sinkhorn_tf.io import errors
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
WARM_STARTS = ("none", "class_means", "merf")


# ValueError("--flag=value: expected …") unless a condition holds: the one line a bad flag
# value gives, as every command line words it (`io.errors`).
require = errors.require


def _require_finite(obj, *names: str) -> None:
  """Every named float field is a finite number (or None): inf and NaN are refused up front
  (--target_epsilon=inf once trained a whole run at σ ≈ 0.001)."""
  for name in names:
    value = getattr(obj, name)
    require(value is None or (isinstance(value, (int, float)) and math.isfinite(value)),
            name, "a finite number", value)


# ---- one declaration per field: type, default, flag name, help ----------------------------

def flag_meta(help: str, *, name: Optional[str] = None, choices: Optional[Sequence[str]] = None,
              flag_default: Any = dataclasses.MISSING, flag_type: Optional[type] = None,
              parse: Optional[Callable[[Any], Any]] = None,
              not_shaping: Optional[str] = None) -> Dict[str, Any]:
  """The flag of a config field, as dataclass field metadata.

  name: the flag (default: the field's name); choices: an enum flag of these values;
  flag_default: the flag's default when it is not the field's; flag_type / parse: the flag's
  type when it is not the field's, and the function from the flag's value to the field's;
  not_shaping: why the field changes no released gradient (a resume may change it: NOT_SHAPING).
  """
  meta = {"help": help, "name": name, "choices": tuple(choices) if choices else None,
          "flag_default": flag_default, "flag_type": flag_type, "parse": parse}
  if not_shaping is not None:
    meta["not_shaping"] = not_shaping
  return meta


def option(default, help: str, **meta) -> Any:
  """A config field set by a flag: `x: int = option(3, "What x is.")` (see `flag_meta`)."""
  return dataclasses.field(default=default, metadata=flag_meta(help, **meta))


class FlagSpec(NamedTuple):
  """One flag of a config: what a command line defines (`io.flagdefs.define_all`)."""

  name: str
  path: str  # the config field it sets, e.g. "optim.learning_rate"
  type: type  # str, int, float or bool
  default: Any
  help: str
  choices: Optional[Tuple[str, ...]]


def _flag_type(annotation) -> type:
  """int for `int` and `Optional[int]`; likewise str, float, bool."""
  args = [a for a in typing.get_args(annotation) if a is not type(None)]
  return args[0] if typing.get_origin(annotation) is typing.Union and len(args) == 1 else annotation


def _spec(field: dataclasses.Field, path: str, meta: Dict[str, Any], default) -> FlagSpec:
  flag_default = meta["flag_default"]
  return FlagSpec(meta["name"] or field.name, path, meta["flag_type"] or _flag_type(field.type),
                  default if flag_default is dataclasses.MISSING else flag_default,
                  meta["help"], meta["choices"])


def _fields(cls, prefix: str = ""):
  """(config path, field, its flag's metadata or None, default) of every leaf field of the
  config class `cls`, depth first; a nested class's fields carry the metadata of the table in
  the metadata "flags" of the field that holds it (LossConfig.solver)."""
  for field in dataclasses.fields(cls):
    path = prefix + field.name
    if "flags" in field.metadata:
      for sub in dataclasses.fields(field.type):
        yield f"{path}.{sub.name}", sub, field.metadata["flags"].get(sub.name), sub.default
    elif dataclasses.is_dataclass(field.type):
      yield from _fields(field.type, path + ".")
    else:
      yield path, field, field.metadata or None, field.default


def flag_specs(cls) -> List[FlagSpec]:
  """The flags of config class `cls` (TrainConfig: every training flag), in field order."""
  return [_spec(field, path, meta, default) for path, field, meta, default in _fields(cls)
          if meta is not None]


def from_flags(cls, value_of: Callable[[str], Any]):
  """The config `cls` of the flag values `value_of(flag name)`, built by the table of
  `flag_specs`; raises ValueError naming the bad flag. A class may adjust the values of its
  own flags first with a `from_flags(**fields)` class method (DataConfig)."""
  fields = {}
  for field in dataclasses.fields(cls):
    if "flags" in field.metadata:
      fields[field.name] = _nested_from_flags(field.type, field.metadata["flags"], value_of)
    elif dataclasses.is_dataclass(field.type):
      fields[field.name] = from_flags(field.type, value_of)
    else:
      meta = field.metadata
      value = value_of(meta["name"] or field.name)
      fields[field.name] = meta["parse"](value) if meta["parse"] else value
  return getattr(cls, "from_flags", cls)(**fields)


def _nested_from_flags(cls, table: Dict[str, Dict[str, Any]], value_of):
  """A class outside this module (SinkhornConfig) from the flags of `table`: its float flags
  finite, its own errors ("relaxation must be …") prefixed with the flag."""
  values = {name: value_of(meta["name"]) for name, meta in table.items()}
  for name, value in values.items():
    require(not isinstance(value, float) or math.isfinite(value), table[name]["name"],
                "a finite number", value)
  try:
    return cls(**values)
  except ValueError as e:
    field = str(e).split()[0]
    raise ValueError(f"--{table[field]['name'] if field in table else field}: {e}") from None


@dataclasses.dataclass(frozen=True, kw_only=True)
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

  dataset: Optional[str] = option(  # None when --data is given; neither flag: digits
      "digits", f"A built-in private training set: {', '.join(datasets.DATASETS)} (unset "
      "and no --data: digits). digits ships with scikit-learn; the others come from TFDS "
      "under --data_dir or, for (fashion_)mnist, from IDX files in --idx_dir.",
      flag_default=None)
  source: Optional[str] = option(
      None, "Your own private training set (instead of --dataset): "
      f"{data_spec.SOURCE_HELP}. See docs/own-data.md.", name="data",
      not_shaping="where the data are read from (--data=SCHEME:PATH): the records read are "
      "pinned by the ledger's keyed fingerprint and N, so a moved folder resumes")
  data_dir: Optional[str] = option(
      None, "TFDS data directory holding the prepared dataset.",
      not_shaping="a path: the data read from it are pinned by the ledger's keyed "
      "fingerprint and N")
  idx_dir: Optional[str] = option(
      None, "Folder with the original MNIST / Fashion-MNIST IDX files (gz or raw); overrides "
      "TFDS for those datasets.", not_shaping="a path: as --data_dir")
  image_key: Optional[str] = option(
      None, "--data=tfds:/tfrecord: the image feature (default image).")
  label_key: Optional[str] = option(
      None, "--data=tfds:/tfrecord: the int label feature (default label, optional: without "
      "it the data are one class).")
  image_size: Optional[Tuple[int, int]] = option(
      None, "Resize every image (antialiased, centre-cropped to the aspect ratio first) to H "
      "or HxW pixels; unset: the data's own size, which every image must then have.",
      flag_type=str, parse=data_spec.parse_image_size)
  channels: Optional[int] = option(
      None, "Convert every image to 1 (grayscale) or 3 (RGB) channels; unset: the data's own "
      "(grayscale and colour must not mix).")
  privacy_unit: str = option(
      "record", "What ε protects: record (one image, the default) or group (all images of "
      "one --groups id: user-level privacy).")
  groups: Optional[str] = option(
      None, "--privacy_unit=group with --data=folder:: a CSV with columns file,group (paths "
      "relative to the folder), or 'subfolders' (the first sub-folder level below the "
      "classes names the group). npz: the file's `groups` array.")
  max_per_group: int = option(
      1, "--privacy_unit=group: at most this many records of a sampled group per step (a "
      "keyed random subset when it has more).")

  @classmethod
  def from_flags(cls, **fields) -> "DataConfig":
    """The config of the data flags' values: no --data and no --dataset is digits."""
    if fields["dataset"] is None and fields["source"] is None:
      fields["dataset"] = "digits"
    return cls(**fields)

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


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
  architecture: str = option("dcgan", "Generator family.", choices=ARCHITECTURES)
  latent_dim: int = option(16, "Dimension of z ~ U(0,1).")
  embed_dim: int = option(8, "Label embedding size.")
  hidden: int = option(64, "Generator width (channels of the last block; units per layer for "
                       "--architecture=mlp).")
  depth: int = option(1, "Convolution blocks per resolution (hidden layers for "
                      "--architecture=mlp).")
  output: str = option(
      "tanh", "Generator output head: tanh (the paper) or clip, a straight-through clip to "
      "[-1, 1] whose gradient never vanishes (noise cannot freeze saturated pixels).",
      choices=OUTPUTS)
  # The loss, the mechanism and the accountant are float32 whatever it is.
  precision: str = option(
      "float32", "The generator's Keras mixed-precision policy: mixed_bfloat16 for CPUs with "
      "AVX-512-BF16 or AMX and TPUs, mixed_float16 (with loss scaling) for GPUs, "
      "bfloat16_convs (only the convolutions in bfloat16) for such CPUs when BatchNorm and "
      "activations are a large part of the generator. Weights, the Sinkhorn loss, the clip, "
      "the noise and the accountant stay float32; export, sample and evaluate rebuild the "
      "generator in float32.", choices=PRECISIONS)

  def __post_init__(self):
    require(self.precision in PRECISIONS, "precision", f"one of {PRECISIONS}", self.precision)
    require(self.architecture in ARCHITECTURES, "architecture", f"one of {ARCHITECTURES}",
            self.architecture)
    require(self.output in OUTPUTS, "output", f"one of {OUTPUTS}", self.output)
    for name in ("latent_dim", "embed_dim", "hidden", "depth"):
      require(getattr(self, name) >= 1, name, "an integer ≥ 1", getattr(self, name))


@dataclasses.dataclass(frozen=True, kw_only=True)
class LossConfig:
  """The semi-debiased Sinkhorn loss (paper eq. 8) and its feature space."""

  cost: str = option("l1l2", "Ground cost: l2 = ‖x−y‖², l1l2 = ‖x−y‖² + l1_weight·‖x−y‖₁.",
                     choices=COSTS)
  l1_weight: float = option(3.0, "The paper's m, weight of the L1 term in l1l2.")
  debias_fraction: float = option(0.4, "p: n′ = ⌊p·n⌋ extra generated points (0 biased, 1 "
                                  "fully debiased).")
  alpha_c: float = option(15.0, "Weight α_c of the one-hot label block of the features.")
  # The solver's defaults are SinkhornConfig's; these are the flags of the fields that have one.
  solver: transport_options.SinkhornConfig = dataclasses.field(
      default=transport_options.SinkhornConfig(), metadata={"flags": {
          "epsilon": flag_meta("Entropic regularisation λ.", name="sinkhorn_epsilon"),
          "scaling": flag_meta(
              "ε-scaling schedule: ratio between successive annealing temperatures, from the "
              "cost's scale down to λ (closer to 1 = slower, more accurate annealing; use ≈0.9 "
              "for λ far below the costs).", name="sinkhorn_scaling"),
          "threshold": flag_meta("Stop once the L1 marginal error is below this.",
                                 name="sinkhorn_threshold"),
          "max_iterations": flag_meta("Most Sinkhorn updates at λ.",
                                      name="sinkhorn_max_iterations"),
          "relaxation": flag_meta(
              "Over-relaxation ω in [1, 2) of the updates at λ (same fixed point): 1.5 halves "
              "the updates of the l2 problems at λ=50 (cifar, celeba); 1 (plain Sinkhorn) for "
              "the l1l2 problems at λ=0.05, which stop at the iteration cap either way.",
              name="sinkhorn_relaxation"),
      }})
  # The real batch is padded to a power-of-two bucket with zero weights (one program per
  # bucket).
  jit_compile: bool = option(
      True, "Compile the Sinkhorn loss and its image gradient with XLA (real batch padded to "
      "power-of-two buckets): 3–15× faster for batches up to ~50 on CPU, slower for batches "
      "of ~1000.", name="sinkhorn_jit")
  # features.class_matched_weights.
  class_matching: bool = option(
      False, "Weight generated and private points so that the Sinkhorn plan moves mass only "
      "within a class (mass per class ∝ its generated count, over the classes present on both "
      "sides); false is the paper's uniform weights.")
  # costs.inner_products; "bfloat16_all" also runs the gradient's plan products in bfloat16.
  products: str = option(
      "float32", "Format of the ⟨x, y⟩ matmul of the cost matrices: bfloat16 is 2–3x faster "
      "on CPUs with AVX-512-BF16; the loss stays within 1e-3, its gradient within ~0.4% at "
      "λ=50 (cifar, celeba) but ~11% at λ=0.05. Gradient sums stay float32; bfloat16_all "
      "rounds them too (centred; +0.1% at λ=50): the whole loss on the bfloat16 units.",
      name="sinkhorn_products", choices=PRODUCTS)

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


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrivacyConfig:
  """What the accountant needs, plus the mechanism's knobs.

  noise_multiplier σ is the noise std divided by the sensitivity 2C. Give it, or leave it
  None and give `steps` in TrainConfig: the planner then finds the smallest σ for the
  target ε.
  """

  dp: bool = option(True, "Train privately. --nodp trains the same model without clipping or "
                    "noise (ablations, upper bounds): no privacy guarantee.")
  mechanism: str = option(
      "image_grad", "image_grad: clip + noise the gradient w.r.t. generated images "
      "(DP-Sinkhorn); param_grad: TF Privacy DP-Adam on the parameter gradient (ablation).",
      choices=MECHANISMS)
  l2_norm_clip: float = option(0.5, "C: clip norm of the image gradient (sensitivity 2C).")
  noise_multiplier: Optional[float] = option(
      None, "σ: noise std / sensitivity. Unset with --steps set: the smallest σ within "
      "--target_epsilon.")
  target_epsilon: float = option(10.0, "ε of the (ε, δ) guarantee.")
  delta: float = option(1e-5, "δ of the (ε, δ) guarantee; keep it below 1/N.")
  accountant: str = option(
      "rdp", "Accountant that plans the budget: rdp with --dp (the exact lattice noise is "
      "certified by RDP); privacy.json reports the PLD figure for reference.",
      choices=ACCOUNTANTS)
  release_blur: float = option(
      0.0, "Blur the released (clipped + noised) image gradient with a Gaussian of this many "
      "pixels before it reaches the generator: post-processing at no privacy cost that damps "
      "the white noise (std × 0.28 at 1 pixel). 0 = off.")
  warm_start: str = option(
      "none", "A private release before the DP-Sinkhorn steps, paid from --warm_start_share "
      "of --target_epsilon (exact lattice Gaussian; written to warm_start.npz), then "
      "--warm_start_steps non-private steps fitting the generator to it. class_means: the "
      "per-class mean images pooled to --warm_start_resolution; merf: DP-MERF's per-class "
      "random-feature means (python -m dp_sinkhorn_tf.merf's defaults and schedule).",
      choices=WARM_STARTS)
  warm_start_share: float = option(
      0.1, "Share of --target_epsilon planned for the warm-start release (the DP-Sinkhorn "
      "steps plan with the rest; composed, the two spend --target_epsilon).")
  warm_start_resolution: int = option(
      7, "r: the warm start releases r×r mean images (must divide the image height and width).")
  warm_start_steps: int = option(
      300, "Non-private steps that fit the generator to the warm start's release before "
      "DP-Sinkhorn step 0 (post-processing: no privacy cost); DP-MERF trains 3000 (merf).")
  # They see generated data only.
  public_clip: Optional[float] = option(
      None, "Clip norm of the released gradient of the generated images that meet no private "
      "data (rows n: of the self term); unset: --l2_norm_clip. Data-independent, so no "
      "privacy cost. Their natural gradient is 5-6.5x smaller than the private rows' at p=0.4 "
      "(measured on Fashion-MNIST and the digits), so clipping both to C over-weights the self "
      "term's repulsion.")

  def __post_init__(self):
    _require_finite(self, "l2_norm_clip", "noise_multiplier", "target_epsilon", "delta",
                    "release_blur", "public_clip", "warm_start_share")
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
    require(self.warm_start in WARM_STARTS, "warm_start", f"one of {WARM_STARTS}",
            self.warm_start)
    require(0 < self.warm_start_share < 1, "warm_start_share", "a number in (0, 1)",
            self.warm_start_share)
    require(self.warm_start_resolution >= 1, "warm_start_resolution", "an integer ≥ 1",
            self.warm_start_resolution)
    require(self.warm_start_steps >= 0, "warm_start_steps", "an integer ≥ 0",
            self.warm_start_steps)
    require(self.dp or self.warm_start == "none", "warm_start",
            "none with --nodp (the warm start is a private release)", self.warm_start)
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


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimConfig:
  optimizer: str = option("adam", "Generator optimiser.", choices=OPTIMIZERS)
  learning_rate: float = option(1e-3, "Learning rate.")
  beta_1: float = option(0.5, "Adam β₁ (momentum with --optimizer=sgd).")
  beta_2: float = option(0.999, "Adam β₂.")
  weight_decay: float = option(0.0, "Decoupled weight decay (adamw only).")
  ema_decay: float = option(
      0.0, "Decay of an exponential moving average of the generator's weights, used for "
      "samples and the export (0 = off). Post-processing of the released gradients: no "
      "privacy cost.")
  # trainer.learning_rate_fn.
  lr_schedule: str = option(
      "constant", "constant, or cosine: decay the learning rate as ½(1 + cos(π·t/T)) to 0 "
      "over the run's T planned steps, so late noisy updates shrink.", choices=LR_SCHEDULES)

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


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig:
  workdir: str = option("runs/default", "Run directory (resumed if it holds a run).",
                        not_shaping="where the run lives (run.json, not the path, "
                        "identifies it)")
  seed: int = option(0, "Public seed of the data-independent randomness: initialisation, "
                     "latents, generated labels. The noise and the Poisson batches never "
                     "depend on it (they come from the run's secret key).")
  log_every: int = option(10, "Steps between progress / TensorBoard scalars.",
                          not_shaping="how often scalars are written; every step computes "
                          "the same logs")
  sample_every: int = option(500, "Steps between sample grids.",
                             not_shaping="grids are drawn in inference mode from stateless "
                             "latents: they read the weights and change nothing")
  checkpoint_every: int = option(
      200, "Steps between checkpoints (and ledger writes).",
      not_shaping="where the loop pauses to charge and save; step t releases the same "
      "whatever the chunking (the SIGKILL test in main_test)")
  keep_checkpoints: int = option(3, "Checkpoints kept.",
                                 not_shaping="how many saved checkpoints are kept")
  export: bool = option(True, "Export a SavedModel for TF Serving at the end.",
                        not_shaping="post-processing at the end")
  model_name: str = option("generator", "Model name in the export layout.",
                           not_shaping="the export's name")
  # None draws a fresh key from the OS at the first start.
  privacy_key_file: Optional[str] = option(
      None, "A privacy key file (as <workdir>/privacy_key of an earlier run) to drive noise "
      "and batches instead of a fresh key from the OS: reproduces that run exactly. Keep it "
      "secret, never reuse it on other data. Unset: a new secret key per run.",
      not_shaping="a path: the key itself is pinned (the run keeps <workdir>/privacy_key, "
      "and a given file must hold the same secret)")
  insecure_fixed_key: bool = option(
      False, "Derive the key from the public --seed: reproducible and NOT private (tests, "
      "debugging); privacy.json and the export say \"private\": false.")
  strategy: str = option(
      "default", "tf.distribute strategy: default (one device), mirrored (every GPU of this "
      "host, or --num_devices logical CPUs) or multi_worker (one process per host, cluster in "
      "TF_CONFIG, --workdir on a file system all hosts share; the chief writes the run "
      "directory). The private release is the same as on one device: one Poisson sample, one "
      "clip of the whole released block, one keyed noise draw; replicas split the generated "
      "batch.", choices=STRATEGIES)
  num_devices: Optional[int] = option(
      None, "Devices for --strategy=mirrored (unset: every GPU). Without GPUs the CPU is split "
      "into this many logical devices (tests, overhead benchmarks: no speed-up on one CPU).")
  if_finished: str = option(
      "fail", "When --workdir's budget is already spent: fail (exit 1) or skip training and "
      "only report the artefacts.", choices=IF_FINISHED,
      not_shaping="what to do once every step is taken")
  # train_lib._train_loop.
  steps_per_call: Optional[int] = option(
      None, "At most this many steps per call of the compiled training loop (a tf.while_loop "
      "on the device). Unset: every step up to the next log, sample or checkpoint point, the "
      "only places the loop reads the device; a stop signal takes effect at the end of a "
      "call. 1: a return to Python after every step (slower, same steps).",
      not_shaping="how many steps one call of the compiled loop runs; step t keys its batch "
      "and noise by t in every call (trainer_test: K steps in one call are K single steps "
      "bit for bit)")

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


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
  """A whole run. batch_size is the expected Poisson batch B (q = B/N); fake_batch_size
  the number n of generated points per step in W(X[0:n], Y) (None: n = B, as in the
  paper); steps=None lets the privacy budget decide.

  Why n may differ from B: the noise is added to the n × d image gradient while the signal
  is clipped to C in total, so the signal-to-noise ratio per step scales as 1/√(n·d). A
  smaller n gives a cleaner (if more stochastic) released gradient at the same ε.
  """

  batch_size: int = option(
      50, "B: expected Poisson batch of privacy units (q = B/N; records, or groups with "
      "--privacy_unit=group, each giving up to --max_per_group records); also n unless "
      "--fake_batch_size.")
  steps: Optional[int] = option(None, "Training steps. Unset: as many as the budget allows.")
  data: DataConfig = DataConfig()
  model: ModelConfig = ModelConfig()
  loss: LossConfig = LossConfig()
  privacy: PrivacyConfig = PrivacyConfig()
  optim: OptimConfig = OptimConfig()
  run: RunConfig = RunConfig()
  fake_batch_size: Optional[int] = option(
      None, "n: generated images that meet the private batch each step (unset: n = "
      "--batch_size, as in the paper). Noise is added to an n×d gradient, so a smaller n "
      "raises the signal-to-noise ratio.")

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
    require(self.privacy.warm_start == "none" or self.run.strategy == "default",
            "warm_start", "none with --strategy other than default (the release is charged "
            "and the generator pre-trained on one device)", self.privacy.warm_start)
    require(self.privacy.warm_start == "none" or self.data.privacy_unit == "record",
            "warm_start", "none with --privacy_unit=group (its sensitivity is one record's)",
            self.privacy.warm_start)
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
# made from it, so a resume may change them: those whose flag gives a reason (`not_shaping`).
# Every other field, including any added later, is part of `gradient_flags` and must be the
# same when a run resumes (`provenance.open_run`). Hashed on purpose although borderline:
# --sinkhorn_jit, --strategy and --num_devices (the same G̃ only to float32 rounding, and a
# resume re-runs steps bit for bit), the plan's own flags (--target_epsilon, --delta,
# --accountant; also compared as the plan) and --insecure_fixed_key (also refused on its own:
# a run keeps its key).
NOT_SHAPING = {path: meta["not_shaping"] for path, _, meta, _ in _fields(TrainConfig)
               if meta and "not_shaping" in meta}

# Config paths whose flag is not the field's own name. Other fields are set by the flag of
# their name; a nested field without a flag is named by its config path.
_FLAG_NAMES = {spec.path: spec.name for spec in flag_specs(TrainConfig)
               if spec.name != spec.path.split(".")[-1]}


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

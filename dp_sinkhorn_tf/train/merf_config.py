"""Frozen configuration of a DP-MERF run (`train.merf_lib`), each field declared once with
its flag (`train.config.option`).

`python -m dp_sinkhorn_tf.merf` defines its flags from this table (`flag_specs`, through
`io.flagdefs.define_all`) and builds the config from the parsed values by the same table
(`from_flags`), as the training flags do (`train.train_flags`): a new flag is one field here.
The module imports no TensorFlow, so a bad flag is one line before TensorFlow's start-up.

`release_flags` names, by flag, every field that shapes the one release (its noise, its
features, the data it is computed on); a re-run that reuses release.npz must present the same
(`merf_lib.check_reuse`). The training fields shape only post-processing and may change.
"""

import dataclasses
import hashlib
import json
import math
from typing import Any, Callable, Dict, List, Optional

from dp_sinkhorn_tf.data import datasets
from dp_sinkhorn_tf.io import errors
from dp_sinkhorn_tf.models import generator_options as model_options
from dp_sinkhorn_tf.train import config as config_lib

option = config_lib.option
require = errors.require

SEED_HELP = "Public seed: frequencies, initialisation, latents, labels."


def _require_finite(obj, *names: str) -> None:
  for name in names:
    value = getattr(obj, name)
    require(isinstance(value, (int, float)) and math.isfinite(value), name, "a finite number",
            value)


@dataclasses.dataclass(frozen=True)
class ReleaseConfig:
  """The one release: target (ε, δ) under add/remove (RDP accountant), F frequencies of
  length scale ℓ (pixels in [−1, 1]; DP-MERF's 127 = ℓ² on [0, 1] pixels is ℓ ≈ 22.5 here)
  drawn from the public `seed`, and the count entry's weight b."""

  epsilon: float = option(10.0, "Target ε of the one release.")
  delta: float = option(1e-5, "δ.")
  num_frequencies: int = option(5000, "Random Fourier frequencies F (2F features).")
  length_scale: float = option(22.5, "Gaussian kernel length scale ℓ (pixels in [−1, 1]).")
  count_weight: float = option(0.1, "Weight b of the class-count entry of each record's "
                               "embedding (the features get √(1 − b²)).")
  seed: int = option(0, SEED_HELP)

  def __post_init__(self):
    _require_finite(self, "epsilon", "delta", "length_scale", "count_weight")
    require(self.epsilon > 0, "epsilon", "a number > 0", self.epsilon)
    require(0 < self.delta < 1, "delta", "a number in (0, 1)", self.delta)
    require(self.num_frequencies >= 1, "num_frequencies", "an integer ≥ 1",
            self.num_frequencies)
    require(0 < self.count_weight < 1, "count_weight", "a number in (0, 1)", self.count_weight)
    require(self.length_scale > 0, "length_scale", "a number > 0", self.length_scale)


@dataclasses.dataclass(frozen=True)
class MerfTrainConfig:
  """The generator (`models.generators.make_generator`'s arguments) and its Adam schedule:
  `steps` batches of `batch_size`, the learning rate decayed by `lr_decay` every
  `decay_every` steps. The schedule's defaults are DP-MERF's (batch 100, 5e-3 × 0.9 every
  600 steps), the one docs/results.md measures and the merf warm start uses."""

  architecture: str = option("dcgan", "Generator: dcgan | biggan | mlp.",
                             choices=model_options.ARCHITECTURES)
  hidden: int = option(32, "Generator width.")
  depth: int = option(1, "Generator depth (blocks per resolution; mlp: hidden layers).")
  latent_dim: int = option(16, "Latent dimension.")
  embed_dim: int = option(8, "Class embedding dimension.")
  output: str = option("tanh", "Output head: tanh | clip.", choices=model_options.OUTPUTS)
  batch_size: int = option(100, "Generated batch per step.")
  steps: int = option(3000, "Training steps (free: post-processing).")
  learning_rate: float = option(5e-3, "Adam learning rate.")
  lr_decay: float = option(0.9, "Learning-rate factor every --decay_every steps.")
  decay_every: int = option(600, "Steps between learning-rate decays.")
  seed: int = option(0, SEED_HELP)

  def __post_init__(self):
    require(self.architecture in model_options.ARCHITECTURES, "architecture",
            f"one of {', '.join(model_options.ARCHITECTURES)}", self.architecture)
    require(self.output in model_options.OUTPUTS, "output",
            f"one of {', '.join(model_options.OUTPUTS)}", self.output)
    for name in ("latent_dim", "embed_dim", "hidden", "depth", "batch_size", "steps",
                 "decay_every"):
      require(getattr(self, name) >= 1, name, "an integer ≥ 1", getattr(self, name))
    _require_finite(self, "learning_rate", "lr_decay")
    require(self.learning_rate > 0, "learning_rate", "a number > 0", self.learning_rate)
    require(0 < self.lr_decay <= 1, "lr_decay", "a number in (0, 1]", self.lr_decay)


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """A whole run: where, which data (`datasets.load_dataset`), the release, the training."""

  workdir: Optional[str] = option(None, "Run directory (created).")
  dataset: str = option("fashion_mnist", "Built-in private set (its training split).",
                        choices=datasets.DATASETS)
  idx_dir: Optional[str] = option(None, "Folder with MNIST / Fashion-MNIST IDX files.")
  data_dir: Optional[str] = option(None, "TFDS data directory.")
  insecure_fixed_key: bool = option(False, "Derive the key from --seed (tests only: NO "
                                    "privacy).")
  release: ReleaseConfig = ReleaseConfig()
  train: MerfTrainConfig = MerfTrainConfig()

  def __post_init__(self):
    require(bool(self.workdir), "workdir", "a run directory", self.workdir)
    require(self.dataset in datasets.DATASETS, "dataset",
            f"one of {', '.join(datasets.DATASETS)}", self.dataset)


def flag_specs() -> List[config_lib.FlagSpec]:
  """The command line's flags, one per name: the release and the training both read --seed
  (their two `seed` fields declare the same flag)."""
  specs: Dict[str, config_lib.FlagSpec] = {}
  for spec in config_lib.flag_specs(RunConfig):
    first = specs.setdefault(spec.name, spec)
    if (first.type, first.default) != (spec.type, spec.default):
      raise TypeError(f"--{spec.name} declared twice with different types or defaults: "
                      f"{first.path}, {spec.path}")
  return list(specs.values())


def from_flags(value_of: Callable[[str], Any]) -> RunConfig:
  """The frozen RunConfig of the flag values `value_of(flag name)`; ValueError names a bad
  flag."""
  return config_lib.from_flags(RunConfig, value_of)


def release_flags(cfg: RunConfig) -> Dict[str, Any]:
  """{flag: value} of every flag that shapes the release: the data set and every field of
  the ReleaseConfig (where the data are read from is not here: the keyed data fingerprint
  pins the records read)."""
  flags = {"dataset": cfg.dataset}
  flags.update({f.name: getattr(cfg.release, f.name)
                for f in dataclasses.fields(ReleaseConfig)})
  return flags


def flags_sha256(flags: Dict[str, Any]) -> str:
  """SHA-256 of the flags as canonical JSON (sorted keys)."""
  return hashlib.sha256(json.dumps(flags, sort_keys=True).encode()).hexdigest()

r"""Exports a run's generator as a SavedModel in TF Serving's versioned layout.

  python -m dp_sinkhorn_tf.export --workdir=runs/digits_demo
      [--checkpoint=PATH] [--model_name=generator] [--version=N] [--export_dir=DIR]
      [--weights=auto|ema|raw]

The layout, the signatures and the metadata are described in `release.export_lib`, the
restore from a run directory in `train.run_export`; this is their command line. --workdir, --checkpoint and --export_dir may be local or on any
tf.io.gfile file system (gs://, hdfs://, ram://: `io.files`). Exit status: 0 (prints the version directory), 2 for a bad flag or run
directory, 1 when the version exists; errors are one `error:` line naming the flag or file.
"""

import dataclasses
import sys
from typing import Optional

from absl import flags

from dp_sinkhorn_tf import cli

FLAGS = flags.FlagValues()  # private registry (cli): importable beside the training flags
cli.define_shared("workdir", "Run directory of dp_sinkhorn_tf.main.", flag_values=FLAGS)
flags.DEFINE_string("checkpoint", None, "Checkpoint prefix or directory (default: the latest "
                    "in <workdir>/checkpoints).", flag_values=FLAGS)
flags.DEFINE_string("model_name", None, "Model directory name (default: the run's "
                    "--model_name, normally 'generator').", flag_values=FLAGS)
flags.DEFINE_integer("version", None, "Version number ≥ 1 (default: the next free one).",
                     flag_values=FLAGS)
flags.DEFINE_string("export_dir", None, "Export root (default: <workdir>/export).",
                    flag_values=FLAGS)
WEIGHTS = ("auto", "ema", "raw")  # run_export.WEIGHTS' keys, without loading TensorFlow
flags.DEFINE_enum("weights", "auto", WEIGHTS, "Which weights: auto (the EMA when the "
                  "checkpoint holds one, else the raw generator), ema or raw. Either is "
                  "post-processing of the released gradients: the run's ε covers both.",
                  flag_values=FLAGS)


@dataclasses.dataclass(frozen=True)
class ExportConfig:
  """`export`'s flags, validated (`config_from_flags`); each field is the flag of its name."""

  workdir: str
  checkpoint: Optional[str]
  model_name: Optional[str]
  version: Optional[int]
  export_dir: Optional[str]
  weights: str

  def __post_init__(self):
    if not self.workdir:
      raise ValueError("--workdir: required (the run directory of dp_sinkhorn_tf.main)")
    cli.require(self.weights in WEIGHTS, "weights", f"one of {'|'.join(WEIGHTS)}",
                self.weights)


def config_from_flags(f) -> ExportConfig:
  """The parsed flags `f` as an ExportConfig (ValueError naming a bad flag)."""
  return ExportConfig(**{field.name: getattr(f, field.name)
                         for field in dataclasses.fields(ExportConfig)})


def run(cfg: ExportConfig) -> int:
  """Exports the run; prints the version directory. 1 when the version exists."""
  from dp_sinkhorn_tf.train import run_export  # TF loads after the flags are checked

  try:
    path = run_export.export_run(cfg.workdir, cfg.checkpoint, cfg.model_name, cfg.version,
                                 cfg.export_dir, cfg.weights)
  except FileExistsError as e:
    print(f"error: {cli.first_line(e)}", file=sys.stderr)
    return 1
  print(path)
  return 0


main = cli.main_of(lambda f: run(config_from_flags(f)), FLAGS, "dp_sinkhorn_tf.export")


if __name__ == "__main__":
  sys.exit(main())

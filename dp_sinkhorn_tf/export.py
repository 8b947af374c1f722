r"""Exports a run's generator as a SavedModel in TF Serving's versioned layout.

  python -m dp_sinkhorn_tf.export --workdir=runs/digits_demo
      [--checkpoint=PATH] [--model_name=generator] [--version=N] [--export_dir=DIR]

The layout, the signatures and the metadata are described in `release.export_lib`; this
is its command line. Exit status: 0 (prints the version directory), 2 for a bad flag or run
directory, 1 when the version exists; errors are one `error:` line naming the flag or file.
"""

import sys

from absl import flags

from dp_sinkhorn_tf import cli

FLAGS = flags.FlagValues()  # private registry (cli): importable beside the training flags
flags.DEFINE_string("workdir", None, "Run directory of dp_sinkhorn_tf.main.", flag_values=FLAGS)
flags.DEFINE_string("checkpoint", None, "Checkpoint prefix or directory (default: the latest "
                    "in <workdir>/checkpoints).", flag_values=FLAGS)
flags.DEFINE_string("model_name", None, "Model directory name (default: the run's "
                    "--model_name, normally 'generator').", flag_values=FLAGS)
flags.DEFINE_integer("version", None, "Version number ≥ 1 (default: the next free one).",
                     flag_values=FLAGS)
flags.DEFINE_string("export_dir", None, "Export root (default: <workdir>/export).",
                    flag_values=FLAGS)


def run(f) -> int:
  if not f.workdir:
    raise ValueError("--workdir: required (the run directory of dp_sinkhorn_tf.main)")
  from dp_sinkhorn_tf.release import export_lib  # TF loads after the flags are checked

  try:
    path = export_lib.export_run(f.workdir, f.checkpoint, f.model_name, f.version,
                                 f.export_dir)
  except FileExistsError as e:
    print(f"error: {cli.first_line(e)}", file=sys.stderr)
    return 1
  print(path)
  return 0


main = cli.main_of(run, FLAGS, "dp_sinkhorn_tf.export")


if __name__ == "__main__":
  sys.exit(main())

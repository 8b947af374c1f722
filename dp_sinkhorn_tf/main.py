r"""Trains a DP-Sinkhorn generator.

  python -m dp_sinkhorn_tf.main --flagfile=launch/digits.flags --workdir=runs/digits

Flags become a frozen `config.TrainConfig` at once (`train_flags`), and `console.run(cfg)`
(prints, signals and exit codes over the train library `train_lib`) does the rest: the
privacy plan (q, σ, steps, ε) is fixed and printed before the first step; the run
directory then holds checkpoints, the privacy ledger, privacy.json, flags.txt, TensorBoard
summaries, sample grids and (with --export) a SavedModel in TF Serving's layout (`rundir`
lists them and what is safe to publish). Re-running the same command resumes.

The noise and the Poisson batches come from a secret key drawn from the OS at the first
start and kept in <workdir>/privacy_key (0600), never from --seed; --privacy_key_file
supplies a key the data owner keeps (to reproduce a run), --insecure_fixed_key derives it
from --seed for tests (then the run is marked "private": false).
"""


from absl import app, flags

from dp_sinkhorn_tf import cli
from dp_sinkhorn_tf.data import datasets
from dp_sinkhorn_tf.privacy import accounting
from dp_sinkhorn_tf.train import config as config_lib
from dp_sinkhorn_tf.train import train_flags

FLAGS = flags.FLAGS
config_from_flags = train_flags.config_from_flags


def run(cfg: config_lib.TrainConfig, flags_text: str, dataset=None) -> int:
  """console.run(cfg) with its errors as one `error:` line and exit 2 (bad input) or 1.

  The data set is loaded and the privacy plan fixed first, before the run directory is
  touched and without TensorFlow (except for the sources TensorFlow decodes or reads:
  folder:, tfrecord:, TFDS, --image_size / --channels), so bad data or a plan the flags make
  impossible (e.g. more --steps than --target_epsilon allows) is one line, no state written,
  no ε spent. N for the accountant is the number of privacy units: records, or groups under
  --privacy_unit=group."""
  try:
    if dataset is None:
      dataset = datasets.load(cfg.data)
    if dataset.groups is not None and cfg.batch_size > dataset.num_units:
      raise ValueError(f"--batch_size={cfg.batch_size}: expected at most the number of groups "
                       f"{dataset.num_units} (with --privacy_unit=group, B is the expected "
                       "number of sampled groups)")
    plan = accounting.plan_privacy(cfg, dataset.num_units)
  except (ValueError, OSError) as e:  # OSError: e.g. an unreadable image (names the file)
    cli.fail(cli.first_line(e))
  from dp_sinkhorn_tf.train import console  # TF loads after the flags and the plan

  try:
    return console.run(cfg, flags_text, dataset, plan)
  except console.RunError as e:
    cli.fail(str(e), e.code)


def main(argv) -> int:
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}: all options are --flags")
  try:
    cfg = config_from_flags(FLAGS)
  except ValueError as e:
    cli.fail(str(e))
  return run(cfg, FLAGS.flags_into_string())


parse_flags = cli.absl_parser(FLAGS)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)

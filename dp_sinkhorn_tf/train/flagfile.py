"""A training flagfile read into the frozen run config: a run directory's flags.txt (the
export restores a run from it: `run_export`) or a launch/*.flags (the benchmarks).

The process's own flags are left alone: the file is parsed on a fresh FlagValues holding
copies of the training flags (`train_flags`), its --flagfile lines expanded by
`io.flagfiles` as the command lines do.
"""

import copy

from absl import flags

from dp_sinkhorn_tf.io import errors, files, flagfiles
from dp_sinkhorn_tf.train import train_flags


class FlagsFileError(ValueError):
  """A flagfile that cannot be read or does not parse; one line naming the file."""


def parse_flags_file(path: str):
  """flags.txt (absl flagfile of dp_sinkhorn_tf.main) or a launch flagfile → (TrainConfig,
  text). Raises FlagsFileError (a ValueError) naming the file.

  Parsed on a fresh FlagValues holding copies of main's flags (the process's own flags are
  left alone); lines for flags main does not define (absl's own) are ignored.
  """
  fresh = flags.FlagValues()
  for flag in train_flags.flags_of(train_flags.FLAGS):
    fresh[flag.name] = copy.deepcopy(flag)
  try:
    text = files.read_text(path)
  except (OSError, UnicodeDecodeError) as e:
    raise FlagsFileError(f"{path}: unreadable ({errors.first_line(e)})") from None
  try:
    fresh(["flags.txt", *flagfiles.expand_flagfiles([f"--flagfile={path}"])], known_only=True)
    return train_flags.config_from_flags(fresh), text
  except (flags.Error, ValueError) as e:  # flagfiles.FlagfileError is a ValueError
    raise FlagsFileError(f"{path}: {errors.first_line(e)}") from None



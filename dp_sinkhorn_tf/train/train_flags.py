"""The training flags of `dp_sinkhorn_tf.main` (and `dp_sinkhorn_tf.audit`) and the frozen
config they become.

Importing this module defines the flags on absl's global FLAGS; `config_from_flags` turns
parsed values (of FLAGS or of a FlagValues holding copies, as `export` reads flags.txt) into a
`config.TrainConfig` at once, by the same table (`config.flag_specs`): each field of the
config declares its flag (name, default, help) once, beside its type.
"""

from absl import flags

from dp_sinkhorn_tf.io import flagdefs
from dp_sinkhorn_tf.train import config as config_lib

FLAGS = flags.FLAGS

# One flag per field of TrainConfig, as the fields declare them (config.option).
flagdefs.define_all(config_lib.flag_specs(config_lib.TrainConfig), FLAGS, __name__)


def config_from_flags(f) -> config_lib.TrainConfig:
  """Builds the frozen run config; raises ValueError naming the bad flag."""
  return config_lib.from_flags(config_lib.TrainConfig, lambda name: getattr(f, name))


def flags_of(flag_values) -> list:
  """The training flags held by `flag_values` (defined by this module)."""
  return flag_values.get_flags_for_module(__name__)

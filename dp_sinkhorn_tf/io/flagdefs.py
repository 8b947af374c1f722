"""absl flags from a table, and the flags several command lines share.

`define_all` defines one absl flag per row of a table (`train.config.flag_specs`: name, type,
default, help, enum choices), so a config field declared once (`train.config.option`) is
also its flag. `define_shared` defines the flags that more than one command line has
(--workdir, --seed, --model) with one type and one validation everywhere; each command line
says in its help what the flag means to it.

Below the command lines and the training flags alike (absl only), so that both can use it.
"""

import sys
from typing import Iterable, Optional

from absl import flags

INT64_MIN, INT64_MAX = -2**63, 2**63 - 1

_DEFINE = {str: flags.DEFINE_string, int: flags.DEFINE_integer, float: flags.DEFINE_float,
           bool: flags.DEFINE_bool}

# name: (type, extra arguments of its DEFINE): the one definition of a shared flag.
SHARED = {
    "workdir": (str, {}),  # a run directory of dp_sinkhorn_tf.main
    "seed": (int, {"lower_bound": INT64_MIN, "upper_bound": INT64_MAX}),  # a public int64 seed
    "model": (str, {}),  # an exported SavedModel
}


def define_shared(name: str, help: str, default=None, flag_values=flags.FLAGS,
                  module_name: Optional[str] = None):
  """Defines the shared flag `name` (a key of SHARED) on `flag_values`; `help` says what it
  means to this command line. module_name: the module the flag belongs to in --help and
  `get_flags_for_module` (None: the caller's, as absl has it for its own DEFINEs)."""
  kind, extra = SHARED[name]
  module_name = module_name or _caller_module()
  return _DEFINE[kind](name, default, help, flag_values=flag_values, module_name=module_name,
                       **extra)


def define_all(specs: Iterable, flag_values=flags.FLAGS, module_name: Optional[str] = None):
  """Defines a flag for each spec (`.name`, `.type`, `.default`, `.help`, `.choices`): an
  enum flag when it has choices, a shared one (`define_shared`) when its name is shared.
  module_name: as for `define_shared`."""
  module_name = module_name or _caller_module()
  for spec in specs:
    if spec.name in SHARED:
      if spec.type is not SHARED[spec.name][0]:
        raise TypeError(f"--{spec.name}: a shared flag of type {SHARED[spec.name][0]}, got "
                        f"{spec.type}")
      define_shared(spec.name, spec.help, spec.default, flag_values, module_name)
    elif spec.choices:
      flags.DEFINE_enum(spec.name, spec.default, list(spec.choices), spec.help,
                        flag_values=flag_values, module_name=module_name)
    else:
      _DEFINE[spec.type](spec.name, spec.default, spec.help, flag_values=flag_values,
                         module_name=module_name)


def _caller_module() -> str:
  """The name of the module that called the function that calls this one."""
  return sys._getframe(2).f_globals["__name__"]  # pylint: disable=protected-access

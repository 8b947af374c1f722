"""Tests for dp_sinkhorn_tf.io.flagdefs: absl flags from a table, and the shared flags."""

import dataclasses
from typing import Optional

import pytest
from absl import flags

from dp_sinkhorn_tf.io import flagdefs
from dp_sinkhorn_tf.train import config as config_lib


@dataclasses.dataclass(frozen=True, kw_only=True)
class ToyConfig:
  """A config of one field per flag kind: a new field is one declaration."""

  rate: float = config_lib.option(0.5, "A rate.")
  count: Optional[int] = config_lib.option(None, "A count.")
  kind: str = config_lib.option("a", "A kind.", choices=("a", "b"))
  loud: bool = config_lib.option(False, "Be loud.")
  label: str = config_lib.option("x", "A label.", name="toy_label")
  seed: int = config_lib.option(0, "The toy's seed.")


def _define(*argv):
  fv = flags.FlagValues()
  flagdefs.define_all(config_lib.flag_specs(ToyConfig), fv)
  fv(["toy", *argv])
  return fv


def test_a_table_becomes_flags_and_the_flags_its_config():
  fv = _define("--rate=0.25", "--count=3", "--kind=b", "--loud", "--toy_label=y", "--seed=-7")
  cfg = config_lib.from_flags(ToyConfig, lambda name: getattr(fv, name))
  assert cfg == ToyConfig(rate=0.25, count=3, kind="b", loud=True, label="y", seed=-7)
  assert config_lib.from_flags(ToyConfig, lambda name: getattr(_define(), name)) == ToyConfig()
  assert type(fv["count"]).__name__ == "Flag" and fv["count"].parser.flag_type() == "int"
  assert fv["loud"].boolean and fv["toy_label"].help == "A label."


def test_the_flags_belong_to_the_module_that_defines_them():
  fv = _define()
  assert {f.name for f in fv.get_flags_for_module(__name__)} == {
      "rate", "count", "kind", "loud", "toy_label", "seed"}
  other = flags.FlagValues()
  flagdefs.define_all(config_lib.flag_specs(ToyConfig), other, module_name="elsewhere")
  assert len(other.get_flags_for_module("elsewhere")) == 6


@pytest.mark.parametrize("arg,message", [
    ("--kind=c", r"^flag --kind=c: value should be one of <a\|b>"),
    ("--count=1.5", r"^flag --count=1.5: "),
    ("--seed=9223372036854775808", r"^flag --seed=9223372036854775808: .* not an integer in"),
])
def test_bad_values_are_absl_errors_naming_the_flag(arg, message):
  with pytest.raises(flags.IllegalFlagValueError, match=message):
    _define(arg)


def test_a_shared_flag_has_one_type_and_its_own_help_per_command_line():
  fv = flags.FlagValues()
  flagdefs.define_shared("seed", "Seed of the latents.", 0, flag_values=fv)
  flagdefs.define_shared("workdir", "A run directory.", flag_values=fv)
  assert fv["seed"].help == "Seed of the latents." and fv["workdir"].default is None
  assert (fv["seed"].parser.lower_bound, fv["seed"].parser.upper_bound) == (
      flagdefs.INT64_MIN, flagdefs.INT64_MAX)
  assert {f.name for f in fv.get_flags_for_module(__name__)} == {"seed", "workdir"}


def test_a_table_row_cannot_redefine_a_shared_flag_with_another_type():
  @dataclasses.dataclass(frozen=True, kw_only=True)
  class Bad:
    seed: str = config_lib.option("0", "A seed as text.")

  with pytest.raises(TypeError, match="--seed: a shared flag"):
    flagdefs.define_all(config_lib.flag_specs(Bad), flags.FlagValues())

"""Tests for dp_sinkhorn_tf.train.merf_config: the flag table of a DP-MERF run, its
validation (one line naming the flag), and the flags that shape the release."""

import dataclasses

import pytest

from dp_sinkhorn_tf.train import merf_config


def _defaults():
  return {spec.name: spec.default for spec in merf_config.flag_specs()}


def test_one_spec_per_flag_name_and_seed_sets_both_configs():
  names = [spec.name for spec in merf_config.flag_specs()]
  assert len(names) == len(set(names)) and "seed" in names
  values = {**_defaults(), "workdir": "w", "seed": 11, "hidden": 5}
  cfg = merf_config.from_flags(values.__getitem__)
  assert (cfg.release.seed, cfg.train.seed, cfg.train.hidden) == (11, 11, 5)
  assert cfg == merf_config.RunConfig(
      workdir="w", release=merf_config.ReleaseConfig(seed=11),
      train=merf_config.MerfTrainConfig(seed=11, hidden=5))


@pytest.mark.parametrize("flag, value", [
    ("workdir", None), ("workdir", ""), ("dataset", "imagenet"), ("epsilon", 0.0),
    ("epsilon", float("nan")), ("delta", 1.0), ("num_frequencies", 0),
    ("length_scale", -1.0), ("count_weight", 1.0), ("count_weight", 0.0),
    ("hidden", 0), ("steps", 0), ("learning_rate", float("inf")), ("lr_decay", 1.5),
    ("architecture", "resnet"), ("output", "sigmoid")])
def test_a_bad_value_is_one_line_naming_its_flag(flag, value):
  values = {**_defaults(), "workdir": "w", flag: value}
  with pytest.raises(ValueError) as e:
    merf_config.from_flags(values.__getitem__)
  assert str(e.value).startswith(f"--{flag}=") and "\n" not in str(e.value)


def test_release_flags_are_the_data_set_and_every_release_field():
  cfg = merf_config.RunConfig(workdir="w", dataset="digits",
                              release=merf_config.ReleaseConfig(num_frequencies=9))
  flags = merf_config.release_flags(cfg)
  assert set(flags) == {"dataset"} | {f.name for f in dataclasses.fields(
      merf_config.ReleaseConfig)}
  assert flags["dataset"] == "digits" and flags["num_frequencies"] == 9
  # Training flags shape no release: the same flags and hash with another schedule.
  longer = dataclasses.replace(cfg, train=merf_config.MerfTrainConfig(steps=10))
  assert merf_config.release_flags(longer) == flags
  other = dataclasses.replace(cfg, release=merf_config.ReleaseConfig(num_frequencies=10))
  assert merf_config.flags_sha256(merf_config.release_flags(other)) != \
      merf_config.flags_sha256(flags)
  assert merf_config.flags_sha256(dict(reversed(list(flags.items())))) == \
      merf_config.flags_sha256(flags)

"""Tests for dp_sinkhorn_tf.train.config: the flags that shape the released gradient."""

import dataclasses
import hashlib

import pytest
from absl import flags

from dp_sinkhorn_tf.train import config as config_lib
from dp_sinkhorn_tf.train import train_flags


def test_every_training_flag_is_hashed_or_allow_listed_never_both():
  cfg = config_lib.TrainConfig()
  hashed = {name for name in config_lib.gradient_flags(cfg) if "." not in name}
  allowed = {config_lib.flag_name(path) for path in config_lib.NOT_SHAPING}
  defined = {f.name for f in train_flags.flags_of(flags.FLAGS)}
  assert hashed | allowed == defined  # a new flag is hashed unless a reason is written down
  assert not hashed & allowed
  # The nested fields no flag sets are hashed under their config path.
  nested = {name for name in config_lib.gradient_flags(cfg) if "." in name}
  assert nested == {"loss.solver.stabilized_kernel", "loss.solver.absorb_threshold",
                    "loss.solver.compile_solver"}


def test_the_hash_changes_with_a_shaping_field_and_not_with_an_allow_listed_one():
  cfg = config_lib.TrainConfig(data=config_lib.DataConfig(dataset="mnist"))
  digest = config_lib.flags_sha256(config_lib.gradient_flags(cfg))

  def with_(**sections):
    return config_lib.flags_sha256(config_lib.gradient_flags(dataclasses.replace(
        cfg, **{k: dataclasses.replace(getattr(cfg, k), **v) for k, v in sections.items()})))

  assert with_(optim={"learning_rate": 5e-4}) != digest
  assert with_(loss={"alpha_c": 10.0}) != digest
  assert with_(privacy={"release_blur": 1.0}) != digest
  assert with_(model={"precision": "mixed_bfloat16"}) != digest
  assert with_(run={"seed": 1}) != digest
  assert with_(run={"log_every": 2, "checkpoint_every": 7, "workdir": "elsewhere",
                    "privacy_key_file": "k", "if_finished": "skip"},
               data={"idx_dir": "x"}) == digest


def test_the_hash_is_sha256_of_the_sorted_canonical_json():
  # Numbers are floats (the flag 1 and 1.0 are one value); keys sorted; no spaces.
  expected = hashlib.sha256(b'{"a":"x","b":1.0,"c":null,"d":true}').hexdigest()
  assert config_lib.flags_sha256({"d": True, "c": None, "b": 1, "a": "x"}) == expected
  assert config_lib.flags_sha256({"b": 1.0, "a": "x", "c": None, "d": True}) == expected
  # Equal values hash equal (then the check and the then/now list agree): −0.0 == 0.0.
  assert config_lib.flags_sha256({"a": -0.0}) == config_lib.flags_sha256({"a": 0})
  with pytest.raises(ValueError):
    config_lib.flags_sha256({"a": float("inf")})


def test_changed_flags_names_each_difference_as_then_and_now():
  then = {"learning_rate": 0.0005, "alpha_c": 15.0, "hidden": 64, "public_clip": None,
          "class_matching": False, "loss.solver.compile_solver": False, "gone": "x"}
  now = {"learning_rate": 0.001, "alpha_c": 15, "hidden": 64.0, "public_clip": 0.25,
         "class_matching": True, "loss.solver.compile_solver": True, "new": "y"}
  assert config_lib.changed_flags(then, now) == [
      "--class_matching: false then, true now",
      "--gone: x then, absent now",
      "--learning_rate: 0.0005 then, 0.001 now",
      "loss.solver.compile_solver: false then, true now",
      "--new: absent then, y now",
      "--public_clip: unset then, 0.25 now",
  ]
  assert config_lib.changed_flags(then, then) == []


def test_a_private_run_is_planned_by_rdp_only():
  # The exact (lattice) noise is certified by RDP; its PLD is not below the continuous
  # Gaussian's, so a PLD-planned private run would claim an ε nothing certifies.
  with pytest.raises(ValueError, match=r"^--accountant='?pld'?: expected rdp with --dp"):
    config_lib.PrivacyConfig(accountant="pld")
  assert config_lib.PrivacyConfig(accountant="pld", dp=False).accountant == "pld"
  assert config_lib.PrivacyConfig().accountant == "rdp"

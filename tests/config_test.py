"""Tests for dp_sinkhorn_tf.train.config: each field declares its flag once, and the flags that
shape the released gradient."""

import dataclasses
import hashlib
import os
import re
import subprocess
import sys

import pytest
from absl import flags

from dp_sinkhorn_tf.train import config as config_lib
from dp_sinkhorn_tf.train import train_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# The solver's internals: no flag, hashed under their config path (a resume that changes one,
# e.g. a run started before the annealing levels were solved, is refused).
SOLVER_INTERNALS = {"loss.solver.stabilized_kernel", "loss.solver.absorb_threshold",
                    "loss.solver.compile_solver", "loss.solver.anneal_threshold",
                    "loss.solver.anneal_max_iterations"}


def test_every_training_flag_is_hashed_or_allow_listed_never_both():
  cfg = config_lib.TrainConfig()
  hashed = {name for name in config_lib.gradient_flags(cfg) if "." not in name}
  allowed = {config_lib.flag_name(path) for path in config_lib.NOT_SHAPING}
  defined = {f.name for f in train_flags.flags_of(flags.FLAGS)}
  assert hashed | allowed == defined  # a new flag is hashed unless a reason is written down
  assert not hashed & allowed
  # The nested fields no flag sets are hashed under their config path.
  nested = {name for name in config_lib.gradient_flags(cfg) if "." in name}
  assert nested == SOLVER_INTERNALS


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


# ---- each field declared once: its flag comes from it ---------------------------------------

SPECS = config_lib.flag_specs(config_lib.TrainConfig)


def _leaf_paths(cls, prefix=""):
  for field in dataclasses.fields(cls):
    if dataclasses.is_dataclass(field.type):
      yield from _leaf_paths(field.type, f"{prefix}{field.name}.")
    else:
      yield prefix + field.name


def test_every_config_field_has_exactly_one_flag_and_every_flag_one_field():
  paths = [spec.path for spec in SPECS]
  names = [spec.name for spec in SPECS]
  assert len(set(paths)) == len(paths) and len(set(names)) == len(names)
  unflagged = set(_leaf_paths(config_lib.TrainConfig)) - set(paths)
  # Only the solver's internals have no flag (they are hashed under their path, above).
  assert unflagged == SOLVER_INTERNALS
  assert {f.name for f in train_flags.flags_of(flags.FLAGS)} == set(names)
  assert all(config_lib.flag_name(spec.path) == spec.name for spec in SPECS)


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.name)
def test_each_flag_is_its_field_default_help_and_choices(spec):
  flag = flags.FLAGS[spec.name]
  enum = f"<{'|'.join(spec.choices)}>: " if spec.choices else ""  # absl's prefix of an enum
  assert flag.help == enum + spec.help and spec.help.strip()
  assert flag.default == spec.default
  assert getattr(flag.parser, "enum_values", None) == (list(spec.choices) if spec.choices
                                                       else None)
  field_default = config_lib.TrainConfig()
  for part in spec.path.split("."):
    field_default = getattr(field_default, part)
  # The flag's default is the field's, but for --dataset: unset, the data default to digits.
  assert spec.default == (None if spec.name == "dataset" else field_default)


def test_the_flags_defaults_build_the_default_config():
  defaults = {spec.name: spec.default for spec in SPECS}
  assert config_lib.from_flags(config_lib.TrainConfig, defaults.__getitem__) == \
      config_lib.TrainConfig()


def test_from_flags_reads_each_field_from_its_own_flag():
  values = {spec.name: spec.default for spec in SPECS}
  values.update(data="npz:x.npz", image_size="32x24", sinkhorn_jit=False,
                sinkhorn_relaxation=1.5, hidden=7, workdir="w", steps_per_call=4)
  cfg = config_lib.from_flags(config_lib.TrainConfig, values.__getitem__)
  assert (cfg.data.dataset, cfg.data.source, cfg.data.image_size) == (None, "npz:x.npz", (32, 24))
  assert (cfg.loss.jit_compile, cfg.loss.solver.relaxation, cfg.model.hidden) == (False, 1.5, 7)
  assert (cfg.run.workdir, cfg.run.steps_per_call) == ("w", 4)
  with pytest.raises(ValueError, match=r"^--sinkhorn_relaxation: relaxation must be"):
    config_lib.from_flags(config_lib.TrainConfig,
                          {**values, "sinkhorn_relaxation": 2.0}.__getitem__)
  with pytest.raises(ValueError, match=r"^--sinkhorn_epsilon=inf: expected a finite number"):
    config_lib.from_flags(config_lib.TrainConfig,
                          {**values, "sinkhorn_epsilon": float("inf")}.__getitem__)


def test_not_shaping_is_the_fields_that_give_a_reason():
  assert set(config_lib.NOT_SHAPING) == {
      "data.data_dir", "data.idx_dir", "data.source", "run.workdir", "run.log_every",
      "run.sample_every", "run.checkpoint_every", "run.keep_checkpoints", "run.export",
      "run.model_name", "run.privacy_key_file", "run.if_finished", "run.steps_per_call"}
  assert all(reason.strip() for reason in config_lib.NOT_SHAPING.values())


@pytest.mark.parametrize("cls", [config_lib.DataConfig, config_lib.ModelConfig,
                                 config_lib.LossConfig, config_lib.PrivacyConfig,
                                 config_lib.OptimConfig, config_lib.RunConfig,
                                 config_lib.TrainConfig])
def test_configs_are_keyword_only(cls):
  first = dataclasses.fields(cls)[0]
  with pytest.raises(TypeError, match="positional"):
    cls(getattr(cls(), first.name))


def test_helpfull_of_main_lists_every_field(tmp_path):
  out = subprocess.run([sys.executable, "-m", "dp_sinkhorn_tf.main", "--helpfull"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300,
                       env=dict(os.environ, PYTHONPATH=ROOT))
  # absl prints the help and exits 1; the training flags are listed under their module.
  text = out.stdout.split("dp_sinkhorn_tf.train.train_flags:\n", 1)[-1]
  listed = set(re.findall(r"^  --(?:\[no\])?(\w+):", text, re.M))
  assert {spec.name for spec in SPECS} <= listed, out.stdout[-2000:] + out.stderr
  words = " ".join(text.split())
  for spec in SPECS:  # each with the first words of its help
    enum = f"<{'|'.join(spec.choices)}>: " if spec.choices else ""
    head = " ".join(spec.help.split()[:3])
    assert f"--{'[no]' if spec.type is bool else ''}{spec.name}: {enum}{head}" in words


def test_warm_start_flags_are_checked_and_hashed():
  cfg = config_lib.TrainConfig()
  assert cfg.privacy.warm_start == "none"
  for bad in ({"warm_start_share": 0.0}, {"warm_start_share": 1.0},
              {"warm_start_share": float("nan")}, {"warm_start_resolution": 0},
              {"warm_start_steps": -1}, {"warm_start": "other"},
              {"warm_start": "class_means", "dp": False}):
    with pytest.raises(ValueError, match="--warm_start"):
      config_lib.PrivacyConfig(**bad)
  with pytest.raises(ValueError, match="--warm_start"):
    config_lib.TrainConfig(privacy=config_lib.PrivacyConfig(warm_start="class_means"),
                           run=config_lib.RunConfig(strategy="multi_worker"))
  digest = config_lib.flags_sha256(config_lib.gradient_flags(cfg))
  for change in ({"warm_start": "class_means"}, {"warm_start_share": 0.2},
                 {"warm_start_resolution": 14}):
    other = dataclasses.replace(cfg, privacy=dataclasses.replace(cfg.privacy, **change))
    assert config_lib.flags_sha256(config_lib.gradient_flags(other)) != digest, change

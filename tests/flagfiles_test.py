"""Tests for dp_sinkhorn_tf.io.flagfiles: the lookup (working directory, the naming file's
folder, the shipped flagfiles) and its errors; and every launch flagfile parses against
main's flags and gives a valid frozen config."""

import glob
import os

import pytest
from absl import flags

from dp_sinkhorn_tf import cli, main
from dp_sinkhorn_tf.io import flagfiles
from dp_sinkhorn_tf.train import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGFILES = sorted(glob.glob(os.path.join(ROOT, "launch", "*.flags")))


def _command(path: str) -> str:
  """The command line a shipped flagfile is for: "merf" when its header says so, else "main"
  (the training flags)."""
  with open(path) as fh:
    return "merf" if "python -m dp_sinkhorn_tf.merf --flagfile=" in fh.read(1500) else "main"


TRAIN_FLAGFILES = [p for p in FLAGFILES if _command(p) == "main"]
MERF_FLAGFILES = [p for p in FLAGFILES if _command(p) == "merf"]


def test_a_shipped_flagfile_is_found_by_name_from_any_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  args = flagfiles.expand_flagfiles(["--flagfile=digits.flags", "--steps=3"])
  # digits.flags names common.flags, which resolves beside it (not in the working dir).
  common = flagfiles._read_flagfile(os.path.join(flagfiles.SHIPPED_FLAGFILES, "common.flags"))
  assert args[:len(common)] == common and "--dataset=digits" in args
  assert args[-1] == "--steps=3"  # later flags still override the file's
  # The repository spelling works from anywhere too.
  assert flagfiles.expand_flagfiles(["--flagfile=launch/digits.flags"]) == args[:-1]


def test_a_file_in_the_working_directory_wins_over_the_shipped_one(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "digits.flags").write_text("--dataset=mnist\n")
  assert flagfiles.expand_flagfiles(["--flagfile=digits.flags"]) == ["--dataset=mnist"]


def test_nested_flagfiles_resolve_relative_to_the_file_that_names_them(tmp_path, monkeypatch):
  (tmp_path / "conf").mkdir()
  (tmp_path / "conf" / "base.flags").write_text("# base\n--batch_size=7\n\n// absl comment\n")
  (tmp_path / "conf" / "run.flags").write_text("--flagfile=base.flags\n--hidden=5\n")
  (tmp_path / "base.flags").write_text("--batch_size=99\n")  # a decoy in the working dir
  monkeypatch.chdir(tmp_path)
  assert flagfiles.expand_flagfiles(["--flagfile=conf/run.flags"]) == ["--batch_size=7",
                                                                 "--hidden=5"]
  # A user's own file may build on the shipped defaults by name.
  (tmp_path / "conf" / "mine.flags").write_text("--flagfile=common.flags\n--seed=3\n")
  args = flagfiles.expand_flagfiles([f"--flagfile={tmp_path}/conf/mine.flags"])
  assert "--target_epsilon=10" in args and args[-1] == "--seed=3"


def test_missing_and_self_including_flagfiles_are_errors_naming_the_file(tmp_path,
                                                                         monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(flagfiles.FlagfileError, match=r"--flagfile=nope.flags: no such file.*"
                     r"digits.flags"):
    flagfiles.expand_flagfiles(["--flagfile=nope.flags"])
  (tmp_path / "loop.flags").write_text("--flagfile=loop.flags\n")
  with pytest.raises(flagfiles.FlagfileError, match="includes itself"):
    flagfiles.expand_flagfiles(["--flagfile=loop.flags"])


@pytest.fixture
def parse(monkeypatch):
  monkeypatch.chdir(ROOT)

  def _parse(*argv) -> config_lib.TrainConfig:
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["main", *cli.expand_flagfiles(argv)])  # as main's parser does
    try:
      return main.config_from_flags(flags.FLAGS)
    finally:
      flags.FLAGS.unparse_flags()

  return _parse


def test_the_expected_flagfiles_exist():
  names = {os.path.basename(p) for p in FLAGFILES}
  assert {"common.flags", "digits.flags", "mnist.flags", "fashion_mnist.flags", "cifar.flags",
          "celeba.flags"} <= names


@pytest.mark.parametrize("path", TRAIN_FLAGFILES, ids=os.path.basename)
def test_flagfile_parses(parse, path):
  cfg = parse(f"--flagfile={path}")
  assert cfg.privacy.dp and cfg.privacy.target_epsilon == 10.0 and cfg.privacy.delta == 1e-5


@pytest.mark.parametrize("path", [p for p in FLAGFILES if not p.endswith("common.flags")],
                         ids=os.path.basename)
def test_dataset_flagfiles_open_with_their_command(path):
  with open(path) as fh:
    head = fh.read(1500)
  assert f"python -m dp_sinkhorn_tf.{_command(path)} --flagfile=launch/" in head
  assert "runtime" in head.lower() and "ε" in head


def test_paper_settings_for_fashion_mnist(parse):
  cfg = parse(f"--flagfile={os.path.join(ROOT, 'launch', 'fashion_mnist.flags')}")
  # Cao et al. 2021: B=50, C=0.5, m=3, p=0.4, λ=0.05, α_c=15.
  assert (cfg.batch_size, cfg.privacy.l2_norm_clip, cfg.loss.l1_weight,
          cfg.loss.debias_fraction, cfg.loss.solver.epsilon, cfg.loss.alpha_c) == (
              50, 0.5, 3.0, 0.4, 0.05, 15.0)
  assert cfg.loss.cost == "l1l2" and cfg.data.dataset == "fashion_mnist"


def test_celeba_uses_the_l2_cost(parse):
  cfg = parse(f"--flagfile={os.path.join(ROOT, 'launch', 'celeba.flags')}")
  assert cfg.loss.cost == "l2" and cfg.data.dataset == "celeb_a"


DATASET_SIZES = {"digits": 1438, "mnist": 60000, "fashion_mnist": 60000, "cifar10": 50000,
                 "celeb_a": 162770}


@pytest.mark.parametrize("path", [p for p in TRAIN_FLAGFILES if not p.endswith("common.flags")],
                         ids=os.path.basename)
def test_header_step_count_is_what_the_accountant_allows(parse, path):
  """A header that says "N steps" (or "→ N steps") quotes the planner's own number."""
  import re

  from dp_sinkhorn_tf.privacy import accounting
  head = "".join(line for line in open(path) if line.startswith("#")).replace("\n#", " ")
  match = re.search(r"(\d[\d,]{3,}) steps", head)
  if match is None:
    pytest.skip("header quotes no exact step count")
  cfg = parse(f"--flagfile={path}")
  q = cfg.batch_size / DATASET_SIZES[cfg.data.dataset]
  quoted = int(match.group(1).replace(",", ""))
  if cfg.steps is not None:  # --steps given: σ follows; the header's σ must be the planner's
    sigma = accounting.min_noise_multiplier(cfg.privacy.target_epsilon, cfg.privacy.delta, q,
                                            cfg.steps, cfg.privacy.accountant)
    assert quoted == cfg.steps and f"σ = {sigma:.3f}" in head
  else:
    assert quoted == accounting.max_steps(cfg.privacy.target_epsilon, cfg.privacy.delta, q,
                                          cfg.privacy.noise_multiplier, cfg.privacy.accountant)


@pytest.mark.parametrize("path", MERF_FLAGFILES, ids=os.path.basename)
def test_merf_flagfiles_parse_with_merfs_flags(monkeypatch, path):
  from dp_sinkhorn_tf import merf

  monkeypatch.chdir(ROOT)
  merf.FLAGS.unparse_flags()
  merf.FLAGS(["merf", *cli.expand_flagfiles([f"--flagfile={path}", "--workdir=unused"])])
  try:
    cfg = merf.config_from_flags(merf.FLAGS)
  finally:
    merf.FLAGS.unparse_flags()
  with open(path, encoding="utf-8") as fh:
    head = fh.read(1500)
  assert f"(ε, δ) = ({cfg.release.epsilon:g}, {cfg.release.delta:.0e})".replace("e-0", "e-") in head


def test_the_merf_flagfiles_are_found():
  assert sorted(os.path.basename(p) for p in MERF_FLAGFILES) == [
      "digits_merf.flags", "fashion_mnist_merf.flags", "fashion_mnist_merf_eps1.flags"]


def test_lattice_cost_tool_prices_every_training_flagfile_within_a_tenth_of_a_percent():
  """tools/lattice_cost.py (quoted in docs/privacy.md) reads every training flagfile; the
  exact noise's ε at σ_eff is at most 0.1 % above the ε charged (issue 35's bound)."""
  import re
  import subprocess
  import sys

  out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "lattice_cost.py")],
                       capture_output=True, text=True, check=True, cwd=ROOT).stdout
  names = [line.split()[0] for line in out.splitlines() if line.strip()]
  assert sorted(names) == sorted(os.path.basename(p) for p in TRAIN_FLAGFILES
                                 if not p.endswith("common.flags"))
  changes = [float(m) for m in re.findall(r"\(([+-][0-9.]+) %\)", out)]
  assert len(changes) == len(names) and max(changes) <= 0.1, out

"""Tests for dp_sinkhorn_tf.cli: flagfiles from any directory and from an installed package
(the lookup itself: flagfiles_test), and one-line errors."""

import os
import shutil
import subprocess
import sys

import pytest

from dp_sinkhorn_tf import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, cwd, env=None):
  env = dict(os.environ if env is None else env, TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                        timeout=300, env=env)


def test_main_trains_from_a_shipped_flagfile_named_from_another_directory(tmp_path):
  proc = _run(["-m", "dp_sinkhorn_tf.main", "--flagfile=digits.flags", "--steps=2",
               "--checkpoint_every=1", "--noexport", "--workdir=run", "--hidden=4",
               "--verbosity=-1"], cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-1500:]
  recorded = (tmp_path / "run" / "flags.txt").read_text().splitlines()
  assert "--latent_dim=8" in recorded and "--hidden=4" in recorded  # file, then override
  missing = _run(["-m", "dp_sinkhorn_tf.main", "--flagfile=cifr.flags"], cwd=tmp_path)
  assert missing.returncode == 2
  assert missing.stderr.strip().splitlines() == [missing.stderr.strip()]
  assert missing.stderr.startswith("error: --flagfile=cifr.flags: no such file")


def test_an_installed_package_ships_its_flagfiles(tmp_path):
  target = tmp_path / "site"
  pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                        "--no-build-isolation", f"--target={target}", ROOT],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
  shutil.rmtree(os.path.join(ROOT, "build"), ignore_errors=True)
  assert pip.returncode == 0, pip.stderr[-1500:]
  env = dict(os.environ, PYTHONPATH=str(target))
  proc = _run(["-c", "from dp_sinkhorn_tf import cli; "
               "print(cli.find_flagfile('cifar.flags')); "
               "print(cli.expand_flagfiles(['--flagfile=cifar.flags'])[-1])"],
              cwd=tmp_path, env=env)
  assert proc.returncode == 0, proc.stderr[-1500:]
  found, last = proc.stdout.split()
  assert found.startswith(str(target)) and found.endswith("cifar.flags")
  assert last.startswith("--")


def test_fail_prints_one_line_and_exits(capsys):
  with pytest.raises(SystemExit) as e:
    cli.fail("--x=1: expected 2", code=2)
  assert e.value.code == 2
  assert capsys.readouterr().err == "error: --x=1: expected 2\n"


def test_require_names_the_flag_and_shows_the_value_as_its_repr():
  cli.require(True, "steps", "an integer ≥ 1", 0)  # a condition that holds raises nothing
  with pytest.raises(ValueError, match=r"^--steps=0: expected an integer ≥ 1$"):
    cli.require(False, "steps", "an integer ≥ 1", 0)
  with pytest.raises(ValueError, match=r"^--workdir='': expected a directory path$"):
    cli.require(False, "workdir", "a directory path", "")  # '' is visible

  class FlagError(ValueError):
    pass

  with pytest.raises(FlagError, match=r"^--fid='x': expected one of none\|pixels$"):
    cli.require(False, "fid", "one of none|pixels", "x", error=FlagError)


def test_quiet_start_silences_tf_unless_verbosity_is_asked(monkeypatch):
  import logging
  monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
  cli.quiet_start(["--verbosity=1", "--steps=3"])
  assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ
  cli.quiet_start(["-v", "0"])
  assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ
  cli.quiet_start(["--steps=3"])
  assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"
  assert logging.getLogger("tensorflow").level == logging.WARNING
  monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")  # the user's own setting wins
  cli.quiet_start(["--steps=3"])
  assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1"


@pytest.mark.parametrize("module", ["export", "sample", "evaluate"])
def test_entry_points_on_a_private_registry_parse_in_a_fresh_process(tmp_path, module):
  # absl's --verbosity is defined only once absl.logging is imported; the quiet start must
  # not assume it (a fresh `sample` once failed with "Unknown command line flag 'verbosity'").
  missing = tmp_path / "missing"
  flag = "--workdir" if module == "export" else "--model"
  proc = subprocess.run([sys.executable, "-m", f"dp_sinkhorn_tf.{module}", f"{flag}={missing}"],
                        capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  # export names the missing --workdir; sample and evaluate first ask for their --out
  assert len(errors) == 1 and "verbosity" not in proc.stderr
  assert (str(missing) if module == "export" else "--out") in errors[0]

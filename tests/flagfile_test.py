"""Tests for dp_sinkhorn_tf.train.flagfile: a launch file or a run's flags.txt becomes the
frozen run config, and the process's own flags are left alone."""

import pytest
from absl import flags

from dp_sinkhorn_tf.io import flagfiles
from dp_sinkhorn_tf.train import flagfile


def test_a_launch_file_and_its_includes_become_the_run_config():
  path = flagfiles.find_flagfile("digits.flags")
  cfg, text = flagfile.parse_flags_file(path)
  assert cfg.data.dataset == "digits"
  assert "--flagfile=common.flags" in text  # the file as written, includes unexpanded
  assert cfg.privacy.target_epsilon == 10  # from common.flags


def test_the_process_flags_are_left_alone(tmp_path):
  path = tmp_path / "flags.txt"
  path.write_text("--steps=7\n--batch_size=3\n")
  before = flags.FLAGS["steps"].value, flags.FLAGS["steps"].present
  cfg, _ = flagfile.parse_flags_file(str(path))
  assert (cfg.steps, cfg.batch_size) == (7, 3)
  assert (flags.FLAGS["steps"].value, flags.FLAGS["steps"].present) == before


def test_a_bad_or_missing_file_is_one_error_naming_it(tmp_path):
  with pytest.raises(flagfile.FlagsFileError, match=r"nope\.txt: unreadable"):
    flagfile.parse_flags_file(str(tmp_path / "nope.txt"))
  bad = tmp_path / "bad.txt"
  bad.write_text("--learning_rate=fast\n")
  with pytest.raises(flagfile.FlagsFileError, match=r"bad\.txt: .*learning_rate") as info:
    flagfile.parse_flags_file(str(bad))
  assert "\n" not in str(info.value)
  assert isinstance(info.value, ValueError)

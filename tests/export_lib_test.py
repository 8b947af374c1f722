"""Tests for dp_sinkhorn_tf.release.export_lib's small parts: the uint8 rule, versions, names
and the directories an export creates (the SavedModel itself, its signatures and atomicity:
export_test; serving it: serving_test)."""

import os

import numpy as np
import pytest
import tensorflow as tf

from dp_sinkhorn_tf.release import export_lib


def test_to_uint8_rounds_half_to_even_and_clips():
  # 0 → 127.5 exactly: half to even gives 128; 0.5 → 191.25; outside [−1, 1] clips.
  x = tf.constant([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0])
  np.testing.assert_array_equal(export_lib.to_uint8(x).numpy(), [0, 0, 128, 191, 255, 255])


def test_versions_are_the_numeric_subdirectories(tmp_path):
  assert export_lib.existing_versions(str(tmp_path / "none")) == []
  assert export_lib.next_version(str(tmp_path / "none")) == 1
  for name in ("1", "10", "2", ".tmp-11-123", "x3"):
    (tmp_path / name).mkdir()
  (tmp_path / "12").write_text("a file, not a version")
  assert export_lib.existing_versions(str(tmp_path)) == [1, 2, 10]
  assert export_lib.next_version(str(tmp_path)) == 11
  with pytest.raises(FileExistsError, match="--version=2: .* already exists"):
    export_lib.refuse_existing(str(tmp_path), 2)
  export_lib.refuse_existing(str(tmp_path), 3)


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", ".hidden", None])
def test_a_model_name_must_be_a_plain_directory_name(name):
  with pytest.raises(export_lib.ExportError, match="--model_name=.*plain directory name"):
    export_lib.check_model_name(name)


@pytest.mark.parametrize("version", [0, -1, 1.5, True, "2"])
def test_a_version_must_be_an_integer_of_at_least_one(version):
  with pytest.raises(export_lib.ExportError, match="--version=.*integer ≥ 1"):
    export_lib.check_name_and_version("generator", version)
  export_lib.check_name_and_version("generator", 7)


def test_makedirs_returns_only_the_directories_it_created(tmp_path):
  (tmp_path / "a").mkdir()
  created = export_lib._makedirs(str(tmp_path / "a" / "b" / "c"))
  assert created == [str(tmp_path / "a" / "b"), str(tmp_path / "a" / "b" / "c")]
  assert os.path.isdir(tmp_path / "a" / "b" / "c")
  assert export_lib._makedirs(str(tmp_path / "a" / "b" / "c")) == []

"""Tests for dp_sinkhorn_tf.io.files: the atomic writer and helpers on a local file system and
on TF's in-memory `ram://` file system (standing in for gs:// / hdfs://)."""

import errno
import json
import os
import stat
import uuid

import numpy as np
import pytest
import tensorflow as tf

from dp_sinkhorn_tf.io import files


@pytest.fixture
def ram():
  root = f"ram://files_test/{uuid.uuid4().hex}"
  tf.io.gfile.makedirs(root)
  return root


@pytest.mark.parametrize("where", ["local", "ram"])
def test_atomic_writes_round_trip_and_leave_no_temp(where, tmp_path, ram):
  root = str(tmp_path) if where == "local" else ram
  target = f"{root}/report.json"
  files.write_json_atomic(target, {"eps": float("inf"), "nan": float("nan"), "n": 3})
  assert json.loads(files.read_text(target)) == {"eps": "inf", "nan": None, "n": 3}
  files.write_text_atomic(target, "second")
  assert files.read_text(target) == "second"
  assert files.listdir(root) == ["report.json"]  # no temp left beside it
  assert files.exists(target) and not files.isdir(target) and files.isdir(root)


def test_a_secret_is_created_owner_only_whatever_the_umask(tmp_path):
  old = os.umask(0)
  try:
    files.write_text_atomic(str(tmp_path / "key"), "secret", mode=0o600)
  finally:
    os.umask(old)
  assert stat.S_IMODE((tmp_path / "key").stat().st_mode) == 0o600


def test_a_failed_write_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
  target = tmp_path / "ledger.json"
  files.write_text_atomic(str(target), "old")

  def broken(*args, **kwargs):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(os, "replace", broken)
  with pytest.raises(OSError):
    files.write_text_atomic(str(target), "new")
  assert target.read_text() == "old" and os.listdir(tmp_path) == ["ledger.json"]


def test_missing_files_are_file_not_found_everywhere(tmp_path, ram):
  for path in (str(tmp_path / "nope"), f"{ram}/nope"):
    with pytest.raises(FileNotFoundError):
      files.read_text(path)


def test_rename_dir_moves_a_saved_model_layout_on_ram(ram):
  # ram:// lists "assets.extra/…" under "assets/" as a ghost ".extra": not copied.
  for rel, text in (("saved_model.pb", "pb"), ("variables/variables.index", "i"),
                    ("assets.extra/metadata.json", "{}")):
    tf.io.gfile.makedirs(os.path.dirname(f"{ram}/tmp/{rel}"))
    with tf.io.gfile.GFile(f"{ram}/tmp/{rel}", "w") as fh:
      fh.write(text)
  tf.io.gfile.makedirs(f"{ram}/tmp/assets")
  files.rename_dir(f"{ram}/tmp", f"{ram}/1")
  assert files.read_text(f"{ram}/1/assets.extra/metadata.json") == "{}"
  assert files.read_text(f"{ram}/1/variables/variables.index") == "i"
  assert files.read_text(f"{ram}/1/saved_model.pb") == "pb"
  with pytest.raises(FileExistsError):
    files.rename_dir(f"{ram}/1", f"{ram}/1")


def test_os_error_is_one_line_naming_the_file_and_the_cause():
  full = OSError(errno.ENOSPC, "No space left on device", "/data/run/ledger.json")
  assert files.os_error(full, "/data/run") == "/data/run/ledger.json: no space left on device"
  denied = PermissionError(errno.EACCES, "Permission denied")
  assert files.os_error(denied, "/data/run") == "/data/run: Permission denied"
  assert files.os_error(OSError(), "/x") == "/x: OSError"


def test_json_safe_is_one_rule_and_refuses_what_json_cannot_hold():
  safe = files.json_safe({"t": (1, np.float32(2.5)), "a": np.array([np.inf, -np.inf]),
                          "nan": np.float64("nan"), "b": np.bool_(True)})
  assert safe == {"t": [1, 2.5], "a": ["inf", "-inf"], "nan": None, "b": True}
  with pytest.raises(TypeError, match="set"):
    files.json_safe({"x": {1, 2}})

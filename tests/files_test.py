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


def test_every_local_write_carries_the_fixed_time_from_its_first_moment(tmp_path, monkeypatch):
  assert files.FIXED_TIME == 946684800  # 2000-01-01T00:00:00Z
  seen = []
  replace = os.replace

  def watching_replace(src, dst):  # the time is set before the target appears
    seen.append(os.stat(src).st_mtime)
    replace(src, dst)

  monkeypatch.setattr(os, "replace", watching_replace)
  target = tmp_path / "privacy.json"
  files.write_json_atomic(str(target), {"eps": 1.0})
  files.write_text_atomic(str(target), "second", mode=0o600)
  assert seen == [files.FIXED_TIME] * 2
  st = os.stat(target)
  assert (st.st_mtime, st.st_atime) == (files.FIXED_TIME, files.FIXED_TIME)


def test_set_fixed_times_stamps_a_tree_with_its_folders_and_nothing_outside(tmp_path):
  root = tmp_path / "run"
  (root / "export" / "generator" / "1" / "variables").mkdir(parents=True)
  (root / "export" / "generator" / "1" / "variables" / "variables.index").write_bytes(b"i")
  (root / "flags.txt").write_text("--x\n")
  outside = tmp_path / "neighbour.txt"
  outside.write_text("not ours")
  before = os.stat(outside).st_mtime
  files.set_fixed_times(str(root))
  stamped = [root] + list(root.rglob("*"))
  assert len(stamped) == 7
  assert all(os.stat(p).st_mtime == files.FIXED_TIME for p in stamped)
  assert os.stat(outside).st_mtime == before != files.FIXED_TIME
  assert os.stat(tmp_path).st_mtime != files.FIXED_TIME  # the parent is not the run's
  files.set_fixed_times(str(tmp_path / "missing"))  # nothing there: nothing to do
  files.set_fixed_time(str(outside))
  assert os.stat(outside).st_mtime == files.FIXED_TIME


def test_fixed_times_are_a_no_op_on_a_gfile_file_system(ram):
  # tf.io.gfile has no utime; ram:// reports mtime 0 whatever is done.
  files.write_text_atomic(f"{ram}/run.json", "{}")
  files.set_fixed_time(f"{ram}/run.json")
  files.set_fixed_times(ram)
  assert tf.io.gfile.stat(f"{ram}/run.json").mtime_nsec == 0


@pytest.mark.parametrize("where", ["local", "ram"])
def test_npz_round_trips_every_array_exactly_with_the_mode_asked(where, tmp_path, ram):
  root = str(tmp_path) if where == "local" else ram
  arrays = {"a": np.arange(6, dtype=np.float64).reshape(2, 3) / 7, "b": np.array([1, -2], np.int8),
            "key": np.array("abc")}
  for compressed in (False, True):
    target = f"{root}/x{int(compressed)}.npz"
    files.write_npz_atomic(target, arrays, mode=0o600 if where == "local" else None,
                           compressed=compressed)
    back = files.read_npz(target)
    assert sorted(back) == ["a", "b", "key"]
    for name, value in arrays.items():
      assert back[name].dtype == value.dtype and np.array_equal(back[name], value), name
  assert sorted(files.listdir(root)) == ["x0.npz", "x1.npz"]  # no temp left beside them
  if where == "local":
    assert os.stat(f"{root}/x0.npz").st_mode & 0o777 == 0o600
  assert len(files.npz_bytes(arrays, compressed=True)) != len(files.npz_bytes(arrays))
  with pytest.raises(FileNotFoundError):
    files.read_npz(f"{root}/missing.npz")

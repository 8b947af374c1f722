"""Tests for dp_sinkhorn_tf.train.run_export's checks before a restore: which weights, which
checkpoint, which run directory (restoring and exporting real runs: export_test)."""

import os

import pytest
import tensorflow as tf

from dp_sinkhorn_tf.io import rundir
from dp_sinkhorn_tf.train import run_export


def test_weights_pick_the_ema_when_there_is_one_and_refuse_a_missing_one():
  with_ema = ["generator/x", "ema_generator/x", "step"]
  assert run_export.pick_weights(with_ema, "auto", "p") == "ema_generator"
  assert run_export.pick_weights(["generator/x"], "auto", "p") == "generator"
  assert run_export.pick_weights(with_ema, "raw", "p") == "generator"
  assert run_export.pick_weights(with_ema, "ema", "p") == "ema_generator"
  with pytest.raises(run_export.ExportError, match="--weights=ema: the checkpoint p holds no"):
    run_export.pick_weights(["generator/x"], "ema", "p")
  with pytest.raises(run_export.ExportError, match="--weights='best': expected one of"):
    run_export.check_weights("best")


def test_the_checkpoint_is_a_prefix_a_directory_or_the_runs_latest(tmp_path):
  workdir = str(tmp_path)
  with pytest.raises(run_export.ExportError, match="no checkpoint in"):
    run_export.resolve_checkpoint(workdir, None)
  ckpt = tf.train.Checkpoint(v=tf.Variable(1.0))
  prefix = ckpt.save(os.path.join(workdir, "checkpoints", "ckpt"))
  assert run_export.resolve_checkpoint(workdir, None) == prefix
  assert run_export.resolve_checkpoint(workdir, prefix) == prefix
  assert run_export.resolve_checkpoint(workdir, os.path.join(workdir, "checkpoints")) == prefix
  with pytest.raises(run_export.ExportError, match="--checkpoint=.*neither a checkpoint"):
    run_export.resolve_checkpoint(workdir, os.path.join(workdir, "nothing"))


def test_a_run_directory_needs_its_flags_and_data_spec(tmp_path):
  with pytest.raises(run_export.ExportError, match="no such directory"):
    run_export.export_run(str(tmp_path / "missing"))
  with pytest.raises(run_export.ExportError, match="no flags.txt"):
    run_export.export_run(str(tmp_path))
  with pytest.raises(run_export.ExportError, match="no data_spec.json .*--if_finished=skip"):
    run_export.read_run_spec(str(tmp_path))
  (tmp_path / rundir.FLAGS_FILE).write_text("--batch_size=oops\n")
  with pytest.raises(run_export.ExportError, match="flags.txt: .*batch_size"):
    run_export.export_run(str(tmp_path))

"""Tests for dp_sinkhorn_tf.train.provenance: opening, checking and cleaning a run directory,
on a few random images (no step runs; resumes of real runs are trainer_test's)."""

import dataclasses
import json
import os
import subprocess

import numpy as np
import pytest

from dp_sinkhorn_tf.io import rundir
from dp_sinkhorn_tf.privacy import accounting
from dp_sinkhorn_tf.release import export_lib
from dp_sinkhorn_tf.train import config as config_lib
from dp_sinkhorn_tf.train import provenance

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (40, 4, 4, 1), dtype=np.uint8)
LABELS = RNG.integers(0, 2, 40)


def _config(workdir, dp=True, **run):
  return config_lib.TrainConfig(
      batch_size=4, steps=6, privacy=config_lib.PrivacyConfig(dp=dp, noise_multiplier=1.0),
      run=config_lib.RunConfig(workdir=str(workdir), insecure_fixed_key=dp, **run))


def _open(cfg, images=IMAGES, labels=LABELS):
  return provenance.open_run(cfg, accounting.plan_privacy(cfg, len(images)), images, labels,
                             pixel_max=255, num_classes=2)


def test_a_new_run_writes_its_key_ledger_and_identity_and_reopens_as_itself(tmp_path):
  cfg = _config(tmp_path / "run")
  state = _open(cfg)
  assert state.created and state.identity.dp and not state.finished
  for name in (rundir.KEY_FILE, rundir.LEDGER_FILE, rundir.IDENTITY_FILE):
    assert os.path.exists(rundir.path(cfg.run.workdir, name)), name
  ledger = json.loads(open(rundir.path(cfg.run.workdir, rundir.LEDGER_FILE)).read())
  assert ledger["run_id"] == state.identity.run_id and ledger["steps_taken"] == 0
  assert ledger["data_fingerprint"] == provenance.fingerprint(state.key, IMAGES, LABELS, 255)
  again = _open(cfg)
  assert not again.created
  assert again.identity == state.identity and again.ledger == state.ledger


def test_the_ledger_records_the_exact_noise_at_creation_and_a_resume_fills_it_in(tmp_path):
  cfg = _config(tmp_path / "run")
  state = _open(cfg)
  path = rundir.path(cfg.run.workdir, rundir.LEDGER_FILE)
  stored = json.loads(open(path).read())["noise"]
  # the image-gradient release: num_primary (= batch size 4) rows of 4·4·1 pixels
  assert stored["entries"] == 4 * 16 and stored["charged_noise_multiplier"] == 1.0
  assert stored["effective_noise_multiplier"] >= 1.0 and state.ledger.noise == stored
  without = dataclasses.replace(state.ledger, noise=None)  # as an earlier version wrote it
  without.save(path)
  again = _open(cfg)
  assert again.ledger.noise == stored
  assert json.loads(open(path).read())["noise"] == stored
  assert _open(_config(tmp_path / "nodp", dp=False)).ledger is None


def test_other_data_another_mode_or_a_lost_ledger_are_refused(tmp_path):
  cfg = _config(tmp_path / "run")
  _open(cfg)
  changed = IMAGES.copy()
  changed[3] = 255 - changed[3]
  with pytest.raises(provenance.ProvenanceError, match="private data differ"):
    _open(cfg, images=changed)
  with pytest.raises(provenance.ProvenanceError, match="holds a DP run"):
    _open(_config(tmp_path / "run", dp=False))
  os.remove(rundir.path(cfg.run.workdir, rundir.LEDGER_FILE))
  with pytest.raises(provenance.ProvenanceError, match="privacy_ledger.json: missing"):
    _open(cfg)


class _NoCheckpoint:
  latest_checkpoint = None


def test_restore_from_nothing_starts_at_zero_unless_the_ledger_records_a_checkpoint(tmp_path):
  cfg = _config(tmp_path / "run")
  state = _open(cfg)
  assert provenance.restore_checkpoint(cfg, state, None, _NoCheckpoint(), None) == 0
  saved = dataclasses.replace(state, ledger=state.ledger.charged_through(3).checkpointed(3))
  with pytest.raises(provenance.ProvenanceError, match="ledger records one at step 3"):
    provenance.restore_checkpoint(cfg, saved, None, _NoCheckpoint(), None)
  os.makedirs(rundir.path(cfg.run.workdir, rundir.CHECKPOINT_DIR))
  open(rundir.path(cfg.run.workdir, f"{rundir.CHECKPOINT_DIR}/ckpt-3.index"), "w").close()
  with pytest.raises(provenance.ProvenanceError, match="no readable checkpoint index"):
    provenance.restore_checkpoint(cfg, state, None, _NoCheckpoint(), None)


def test_outputs_are_complete_only_with_this_runs_final_report_and_grid(tmp_path):
  cfg = _config(tmp_path, export=False)
  assert not provenance.outputs_complete(cfg, "abc")
  with open(rundir.path(str(tmp_path), rundir.REPORT_FILE), "w") as fh:
    json.dump({"finished": True, "run_id": "abc"}, fh)
  assert not provenance.outputs_complete(cfg, "abc")  # no final grid yet
  os.makedirs(tmp_path / rundir.SAMPLES_DIR)
  open(tmp_path / rundir.SAMPLES_DIR / "final.png", "wb").close()
  assert provenance.outputs_complete(cfg, "abc")
  assert not provenance.outputs_complete(cfg, "another run")
  assert not provenance.outputs_complete(dataclasses.replace(
      cfg, run=dataclasses.replace(cfg.run, export=True)), "abc")  # no export of it


def test_stale_temps_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
  dead = subprocess.Popen(["true"])  # a process id that has exited
  dead.wait()
  ckpt_temp = tmp_path / rundir.CHECKPOINT_DIR / "ckpt-4_temp"
  model_dir = tmp_path / rundir.EXPORT_DIR / "generator"
  dead_tmp = model_dir / f"{export_lib.TMP_PREFIX}2-{dead.pid}"
  live_tmp = model_dir / f"{export_lib.TMP_PREFIX}3-{os.getppid()}"
  version = model_dir / "1"
  for folder in (ckpt_temp, dead_tmp, live_tmp, version):
    folder.mkdir(parents=True)
  provenance.remove_stale_temps(str(tmp_path), "generator")
  assert not ckpt_temp.exists() and not dead_tmp.exists()
  assert live_tmp.exists() and version.exists()

"""Tests for dp_sinkhorn_tf.train.console's pieces: the data line, the progress callback, the
stop flag of SIGINT / SIGTERM and the artefact list (whole runs through `main`: main_test)."""

import signal

import pytest

from dp_sinkhorn_tf.data import datasets
from dp_sinkhorn_tf.io import rundir
from dp_sinkhorn_tf.privacy import accounting
from dp_sinkhorn_tf.train import console


def test_the_data_line_names_the_set_its_size_shape_and_classes():
  digits = datasets.load_dataset("digits")
  assert console.describe_data(digits) == (
      "data digits: 1438 private records, image shape (8, 8, 1), 10 classes "
      "['0', '1', '2', '3', '4', '5', '6', '7', '8', '9']")


def test_the_progress_line_labels_epsilon_with_the_unit_it_protects(capsys):
  on_log = console._progress_printer("group")
  on_log(5, 5, {"epsilon": 1.25, "secret": 3.0})
  out = capsys.readouterr().out
  assert "step 5/5" in out and "epsilon per group 1.25" in out and "secret" not in out


def test_the_progress_line_shows_each_stage_share_of_a_run_with_stages(capsys):
  plan = accounting.PrivacyPlan(
      0.01, 1.2, 100, 4.0, 1e-5, "rdp",
      stages=(accounting.Stage("warm_start", 6.0), accounting.Stage("dp_sinkhorn", 1.2, 0.01,
                                                                    100)),
      stage_epsilons=(0.9, 3.6), stage_shares=(0.25, 0.75))
  console._progress_printer("record", plan)(5, 5, {"epsilon": 1.5})
  out = capsys.readouterr().out
  assert "epsilon per record 1.5000 · share warm_start 0.2500 · share dp_sinkhorn 0.7500" in out
  console._progress_printer("record", accounting.PrivacyPlan(0.01, 1.2, 9, 4.0, 1e-5, "rdp"))(
      5, 5, {"epsilon": 1.5})
  assert "share" not in capsys.readouterr().out


def test_the_warm_start_fit_has_a_progress_line_of_its_own(capsys):
  on_pretrain = console._pretrain_printer()
  on_pretrain(1, 3000, 0.5)
  on_pretrain(3000, 3000, 0.125)
  out = capsys.readouterr().out.splitlines()
  assert out[0] == "warm start: fitting the generator to the release, step 1/3000 (0.0%) · loss 0.5000"
  assert out[-1].startswith("warm start: fitting the generator to the release, step 3000/3000")
  assert out[-1].endswith("loss 0.1250")


def test_the_first_signal_asks_for_a_stop_and_a_second_ctrl_c_interrupts(capsys):
  stop = console._StopFlag()
  assert not stop
  stop(signal.SIGTERM, None)
  assert stop and stop.signum == signal.SIGTERM
  assert "SIGTERM: stopping when the running call" in capsys.readouterr().err
  stop(signal.SIGTERM, None)  # a repeated SIGTERM changes nothing
  assert stop.signum == signal.SIGTERM
  with pytest.raises(KeyboardInterrupt):
    stop(signal.SIGINT, None)


def test_the_artefacts_are_listed_as_publishable_or_not(tmp_path, capsys):
  (tmp_path / rundir.REPORT_FILE).write_text("{}")
  (tmp_path / rundir.KEY_FILE).write_text("secret")
  console._print_artefacts(str(tmp_path))
  out = capsys.readouterr().out
  safe, unsafe = out.split("DO NOT PUBLISH:")
  assert rundir.REPORT_FILE in safe and rundir.KEY_FILE not in safe
  assert rundir.KEY_FILE in unsafe and rundir.REPORT_FILE not in unsafe

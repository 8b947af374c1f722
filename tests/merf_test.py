"""Tests for the dp_sinkhorn_tf.merf command line: flags to a frozen config, one-line errors,
and a tiny run end to end."""

import json
import os

from dp_sinkhorn_tf import merf

TINY = ["--dataset=digits", "--insecure_fixed_key", "--num_frequencies=8", "--length_scale=4",
        "--architecture=mlp", "--hidden=8", "--latent_dim=4", "--embed_dim=2",
        "--batch_size=16", "--steps=2", "--epsilon=3"]


def test_missing_workdir_is_one_line_and_exit_2(capsys):
  assert merf.main(["merf", "--dataset=digits"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: --workdir=") and err.count("\n") == 1


def test_bad_count_weight_is_refused_before_any_work(tmp_path, capsys):
  assert merf.main(["merf", f"--workdir={tmp_path}", "--count_weight=1"]) == 2
  assert "count_weight" in capsys.readouterr().err
  assert not os.listdir(tmp_path)


def test_tiny_run_writes_privacy_json_and_an_export(tmp_path, capsys):
  assert merf.main(["merf", f"--workdir={tmp_path}"] + TINY) == 0
  out = capsys.readouterr().out
  report = json.load(open(os.path.join(tmp_path, "privacy.json")))
  assert f"ε = {report['epsilon']:.4f}" in out and report["epsilon"] <= 3
  assert os.path.isdir(os.path.join(tmp_path, "export", "generator", "1"))

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


def test_every_flag_keeps_its_name_and_default():
  # The hand-written flags before they came from merf_config's table (plus --depth).
  expected = {"workdir": None, "dataset": "fashion_mnist", "idx_dir": None, "data_dir": None,
              "epsilon": 10.0, "delta": 1e-5, "num_frequencies": 5000, "length_scale": 22.5,
              "count_weight": 0.1, "seed": 0, "insecure_fixed_key": False,
              "architecture": "dcgan", "hidden": 32, "latent_dim": 16, "embed_dim": 8,
              "output": "tanh", "batch_size": 100, "steps": 3000, "learning_rate": 5e-3,
              "lr_decay": 0.9, "decay_every": 600, "depth": 1}  # DP-MERF's schedule
  assert {name: merf.FLAGS[name].default for name in expected} == expected
  assert set(merf.FLAGS.get_flags_for_module(merf.__name__)) >= {merf.FLAGS[n] for n in expected}


def test_the_config_of_the_flags_sets_both_seeds(tmp_path):
  merf.FLAGS(["merf", f"--workdir={tmp_path}", "--seed=5", "--num_frequencies=7",
              "--steps=9", "--architecture=mlp"])
  try:
    cfg = merf.config_from_flags(merf.FLAGS)
  finally:
    merf.FLAGS.unparse_flags()
  assert (cfg.release.seed, cfg.train.seed) == (5, 5)
  assert (cfg.release.num_frequencies, cfg.train.steps, cfg.train.architecture) == (7, 9, "mlp")
  assert cfg.workdir == str(tmp_path)


def test_a_reuse_with_another_release_flag_is_one_line_and_spends_nothing(tmp_path, capsys):
  assert merf.main(["merf", f"--workdir={tmp_path}"] + TINY) == 0
  capsys.readouterr()
  before = sorted(os.listdir(tmp_path)) + sorted(os.listdir(tmp_path / "export" / "generator"))
  release = open(os.path.join(tmp_path, "release.npz"), "rb").read()
  assert merf.main(["merf", f"--workdir={tmp_path}"] + TINY + ["--num_frequencies=9"]) == 2
  captured = capsys.readouterr()
  assert captured.err.startswith("error: --num_frequencies=9: ") and \
      captured.err.count("\n") == 1 and "Traceback" not in captured.err
  assert "release.npz was released with --num_frequencies=8" in captured.err
  assert "step" not in captured.out                  # no training started
  after = sorted(os.listdir(tmp_path)) + sorted(os.listdir(tmp_path / "export" / "generator"))
  assert after == before
  assert open(os.path.join(tmp_path, "release.npz"), "rb").read() == release
  # The same flags (and longer training) reuse it.
  assert merf.main(["merf", f"--workdir={tmp_path}"] + TINY + ["--steps=3"]) == 0
  assert open(os.path.join(tmp_path, "release.npz"), "rb").read() == release

"""Tests for dp_sinkhorn_tf.bench: the CLI's contract (the timings live in `make bench`)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_bench(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.run([sys.executable, "-m", "dp_sinkhorn_tf.bench", *args], cwd=ROOT,
                        capture_output=True, text=True, env=env, timeout=600)


def one_line(proc) -> dict:
  """The suite's single JSON line, after checking the child succeeded."""
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 1
  return json.loads(lines[0])


@pytest.mark.parametrize("args,needle", [
    (["nosuchsuite"], "suite"),
    (["train", "--precision=float8"], "precision"),
    (["train", "--only=nosuchconfig"], "--only"),
    (["loop", "--only=digits_demo_step"], "--only"),
    (["sinkhorn", "--rounds=0"], "rounds"),
    (["sinkhorn", "--products=float16"], "products"),
    (["sinkhorn", "--relaxation=2"], "relaxation"),
    (["noise", "--steps_timed=0"], "steps_timed"),
    (["noise", "--only=digits_loop"], "--only"),
])
def test_bad_arguments_give_one_line(args, needle):
  proc = run_bench(*args)
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert proc.returncode != 0 and len(errors) == 1 and needle in errors[0], proc.stderr
  assert "Traceback" not in proc.stderr and not proc.stdout.strip()


def test_precision_compare_prints_both_medians_and_their_ratio_in_one_line():
  result = one_line(run_bench("train", "--only=digits_demo_step", "--repeats=1",
                              "--rounds=1", "--precision=compare"))
  assert result["low"] == "mixed_bfloat16" and result["rounds"] == 1
  assert result["step_ms_rounds"] == [result["step_ms"]]
  assert result["step_ms_low_rounds"] == [result["step_ms_low"]]
  assert result["step_speedup"] == pytest.approx(result["step_ms"] / result["step_ms_low"],
                                                 abs=0.01)


def test_loop_suite_prints_both_loops_their_ratio_and_host_syncs_in_one_line():
  result = one_line(run_bench("loop", "--only=digits_loop", "--rounds=1", "--loop_steps=400"))
  assert result["config"] == "digits_loop" and result["rounds"] == 1 and result["steps"] == 400
  assert result["ms_per_step_k1_rounds"] == [result["ms_per_step_k1"]]
  assert result["speedup"] == pytest.approx(result["ms_per_step_k1"] / result["ms_per_step"],
                                            abs=0.01)
  steps, log_every = result["steps"], result["log_every"]
  assert result["calls_k1"] == steps  # one call per step: a host sync at every step
  assert result["syncs_per_step_between_log_points_k1"] > 0.9
  assert result["calls"] == result["reads"] == steps // log_every  # one per log interval
  assert result["syncs_per_step_between_log_points"] == 0


def test_noise_suite_prints_exact_and_float_step_medians_and_their_ratio_in_one_line():
  result = one_line(run_bench("noise", "--only=digits_demo_step", "--steps_timed=3"))
  assert result["config"] == "digits_demo_step" and result["steps_each"] == 3
  assert result["released_values"] == 8 * 8 * 8  # digits.flags: B = 8 rows of 8×8×1
  # the ratio of the unrounded medians; the ms are rounded to 0.01
  assert result["exact_over_float"] == pytest.approx(result["exact_ms"] / result["float_ms"],
                                                     rel=0.01)


def test_float_noise_stand_in_is_a_rounded_normal_and_is_undone():
  import numpy as np
  import tensorflow as tf

  from dp_sinkhorn_tf.privacy import discrete_gaussian as dg
  from dp_sinkhorn_tf.train import bench_train
  exact = dg.sample
  scale = dg.scale_parameters(3.0)
  seed = tf.constant([5, 7], tf.int64)
  with bench_train.float_noise():
    z, _ = dg.sample([1000], scale, seed)
    assert dg.sample is not exact
  assert dg.sample is exact
  expected = np.round(tf.random.stateless_normal([1000], seed).numpy() * scale.scale)
  np.testing.assert_array_equal(z.numpy(), expected.astype(np.int64))


def test_bench_config_holds_every_flag_under_its_own_name():
  from dp_sinkhorn_tf import bench
  names = {f.name for f in bench.dataclasses.fields(bench.BenchConfig)}
  assert names - {"suite"} == set(bench.FLAGS)  # its private registry holds only its own flags
  bench.FLAGS.unparse_flags()
  bench.FLAGS(["bench", "--only=digits_demo_step,,celeba_l2_n200", "--repeats=2", "--jit"])
  try:
    cfg = bench.config_from_flags(bench.FLAGS, "all")
    assert cfg.only == ("digits_demo_step", "celeba_l2_n200") and cfg.suite == "all"
    assert cfg.repeats == 2 and cfg.jit and cfg.precision == "flagfile"
    with pytest.raises(bench.dataclasses.FrozenInstanceError):
      cfg.repeats = 1
  finally:
    bench.FLAGS.unparse_flags()


def test_relaxation_reaches_the_solver_and_cuts_its_updates():
  runs = {}
  for omega in ("1.0", "1.5"):
    proc = run_bench("sinkhorn", "--only=celeba_l2_n200", "--repeats=1",
                     f"--relaxation={omega}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs[omega] = json.loads(proc.stdout.strip().splitlines()[-1])
  assert runs["1.5"]["relaxation"] == 1.5 and runs["1.0"]["relaxation"] == 1.0
  assert runs["1.5"]["marginal_error"] <= 1e-3 and runs["1.0"]["marginal_error"] <= 1e-3
  assert runs["1.5"]["iterations"] < runs["1.0"]["iterations"]
  assert runs["1.5"]["loss"] == pytest.approx(runs["1.0"]["loss"], rel=1e-4)

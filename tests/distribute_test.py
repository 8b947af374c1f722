"""Tests for dp_sinkhorn_tf.train.distribute: a MirroredStrategy step over 2 and 4 logical CPU
devices, with n + n′ = 11 rows that split over neither (6 + 5, 3 + 3 + 3 + 2: padded for the
all-gather), releases what one device releases and updates the weights to the same values,
also when the replicas would compute different image gradients (the release is replica 0's,
broadcast); a mirrored training run ends with the same ledger and generator as a
single-device run; workers started with different flags refuse to train.

Logical devices must be configured before TensorFlow initialises, so each check runs in a
fresh process."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dp_sinkhorn_tf.train import config as config_lib
from dp_sinkhorn_tf.train import distribute

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ONE_STEP = r"""
import json, sys
import numpy as np
import tensorflow as tf
from dp_sinkhorn_tf.data import datasets
from dp_sinkhorn_tf.privacy import keys
from dp_sinkhorn_tf.train import config as config_lib, distribute, trainer
from dp_sinkhorn_tf.transport import sinkhorn
from dp_sinkhorn_tf.privacy import accounting
distribute.configure_devices("mirrored", 4)
digits = datasets.load_dataset("digits")
key = keys.insecure_fixed(3)
jit = sys.argv[1] != "eager_loss"
if sys.argv[1] == "jit_disagree":
  # Replicas that disagree: any replica but 0 would see the opposite image gradient. A
  # release computed (or clipped, or noised) on every replica would change the update.
  compiled = trainer.DPSinkhornModel._compiled_loss_and_image_grad
  def disagreeing(self, *args):
    loss, grad, info = compiled(self, *args)
    ctx = tf.distribute.get_replica_context()
    if ctx is not None and distribute.replica_id(ctx) != 0:
      grad = -grad
    return loss, grad, info
  trainer.DPSinkhornModel._compiled_loss_and_image_grad = disagreeing
result = {}
for strategy, n in [("default", None), ("mirrored", 2), ("mirrored", 4)]:
  cfg = config_lib.TrainConfig(
      batch_size=16, fake_batch_size=9, steps=5,
      model=config_lib.ModelConfig(architecture="dcgan",
                                   latent_dim=4, embed_dim=2, hidden=4, output="clip"),
      loss=config_lib.LossConfig(cost="l1l2", debias_fraction=0.25, class_matching=True,
                                 jit_compile=jit,
                                 solver=sinkhorn.SinkhornConfig(epsilon=0.5, max_iterations=30)),
      privacy=config_lib.PrivacyConfig(noise_multiplier=1.0, target_epsilon=10.0,
                                       release_blur=0.7),
      optim=config_lib.OptimConfig(ema_decay=0.99),
      run=config_lib.RunConfig(workdir="unused", strategy=strategy, num_devices=n))
  assert cfg.num_generated == 11
  plan = accounting.plan_privacy(cfg, len(digits.images))
  st = distribute.make_strategy(strategy, n)
  with st.scope():
    model, _ = trainer.build_model(cfg, digits.images, digits.labels, 10, plan, key)
  step_fn = trainer.step_function(model, st)
  for t in range(3):
    step_fn(tf.constant(t, tf.int64))
  weights = [v.numpy().tolist() for v in model.generator.variables
             + model.ema_generator.variables]
  # Step 3 as every replica computes it: the released norms and the parameter gradients.
  @tf.function(autograph=False)
  def released(step):
    def replica(step):
      grads, logs = model.image_grad_gradients(step)
      grads = [tf.convert_to_tensor(g) for g in grads]  # the embedding's are sparse
      return grads, logs["clean_grad_norm"], logs["noised_grad_norm"]
    return st.run(replica, args=(step,))
  with st.scope():
    grads, clean, noised = released(tf.constant(3, tf.int64))
  summed = [np.sum([g.numpy() for g in st.experimental_local_results(v)], axis=0).tolist()
            for v in grads]
  result[f"{strategy}{n or ''}"] = {
      "replicas": st.num_replicas_in_sync,
      "clean": [float(v) for v in st.experimental_local_results(clean)],
      "noised": [float(v) for v in st.experimental_local_results(noised)],
      "grads": summed, "weights": weights}
print("RESULT " + json.dumps(result))
"""


def _run_python(code: str, *args, timeout=600):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
  return json.loads(line[len("RESULT "):])


@pytest.mark.parametrize("path", ["eager_loss", "jit", "jit_disagree"])
def test_padded_mirrored_steps_release_and_update_as_one_device(path):
  result = _run_python(ONE_STEP, path)
  base = result["default"]
  for name in ("mirrored2", "mirrored4"):
    run = result[name]
    assert run["replicas"] == int(name[-1])
    # Every replica holds the same G̃ (one global clip, one keyed noise) as one device.
    assert len(set(run["noised"])) == 1 and len(set(run["clean"])) == 1
    assert run["noised"][0] == pytest.approx(base["noised"][0], rel=1e-5)
    assert run["clean"][0] == pytest.approx(base["clean"][0], rel=1e-5)
    # The replicas' parameter gradients of step 3 sum to the single-device ones, and after
    # three steps the weights (and their EMA) agree to float32 rounding.
    for a, b in zip(base["grads"], run["grads"]):
      np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5)
    for a, b in zip(base["weights"], run["weights"]):
      np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=5e-5)


MULTI_STEP = r"""
import json
import numpy as np
import tensorflow as tf
from dp_sinkhorn_tf.data import datasets
from dp_sinkhorn_tf.privacy import accounting, keys
from dp_sinkhorn_tf.train import config as config_lib, distribute, trainer
from dp_sinkhorn_tf.transport import sinkhorn
distribute.configure_devices("mirrored", 2)
digits = datasets.load_dataset("digits")
cfg = config_lib.TrainConfig(
    batch_size=16, fake_batch_size=9, steps=5,
    model=config_lib.ModelConfig(architecture="dcgan",
                                 latent_dim=4, embed_dim=2, hidden=4, output="clip"),
    loss=config_lib.LossConfig(cost="l1l2", debias_fraction=0.25, class_matching=True,
                               solver=sinkhorn.SinkhornConfig(epsilon=0.5, max_iterations=30)),
    privacy=config_lib.PrivacyConfig(noise_multiplier=1.0, target_epsilon=10.0),
    optim=config_lib.OptimConfig(ema_decay=0.99),
    run=config_lib.RunConfig(workdir="unused", strategy="mirrored", num_devices=2))
plan = accounting.plan_privacy(cfg, len(digits.images))
key = keys.insecure_fixed(3)
st = distribute.make_strategy("mirrored", 2)
weights = {}
for how in ("single", "loop"):
  with st.scope():
    model, step = trainer.build_model(cfg, digits.images, digits.labels, 10, plan, key)
  if how == "single":
    one = trainer.step_function(model, st)
    for t in range(5):
      one(tf.constant(t, tf.int64))
  else:
    run = trainer.multi_step_function(model, st, step)
    run(3, run(2, trainer.initial_loop_state()))
  weights[how] = [np.concatenate([r.numpy().ravel() for r in
                                  st.experimental_local_results(v)]).tolist()
                  for v in model.generator.variables + model.ema_generator.variables]
  weights[how + "_step"] = int(step.numpy())
print("RESULT " + json.dumps(weights))
"""


def test_mirrored_steps_in_one_call_are_single_steps_bit_for_bit():
  # The while loop runs strategy.run (and its all-gather and broadcast) per iteration.
  result = _run_python(MULTI_STEP)
  assert result["loop_step"] == 5
  assert result["loop"] == result["single"]


@pytest.mark.parametrize("replicas", [1, 2, 3, 4, 7])
def test_shares_cover_every_row_once_and_differ_by_at_most_one(replicas):
  for total in range(1, 24):
    if total < replicas:
      with pytest.raises(ValueError, match=f"the {total} generated images .* fewer than the "
                                           f"{replicas} replicas"):
        distribute.check_split(total, replicas)
      continue
    distribute.check_split(total, replicas)
    shares = [distribute.share(total, replicas, r) for r in range(replicas)]
    rows = [i for first, count in shares for i in range(first, first + count)]
    assert rows == list(range(total))
    sizes = [count for _, count in shares]
    assert max(sizes) - min(sizes) <= 1 and max(sizes) == -(-total // replicas)
    assert sizes == sorted(sizes, reverse=True)


def test_the_config_hash_ignores_paths_only():
  base = config_lib.TrainConfig(data=config_lib.DataConfig(dataset="mnist"))
  same = config_lib.TrainConfig(
      data=config_lib.DataConfig(dataset="mnist", data_dir="/mnt/a", idx_dir="/mnt/b"),
      run=config_lib.RunConfig(workdir="/nfs/elsewhere", privacy_key_file="/keys/k"))
  assert distribute.config_hash(same) == distribute.config_hash(base)
  assert len(distribute.config_hash(base)) == 32
  others = [config_lib.TrainConfig(),
            config_lib.TrainConfig(loss=config_lib.LossConfig(alpha_c=10.0)),
            config_lib.TrainConfig(privacy=config_lib.PrivacyConfig(l2_norm_clip=0.25)),
            config_lib.TrainConfig(run=config_lib.RunConfig(seed=1)),
            config_lib.TrainConfig(run=config_lib.RunConfig(checkpoint_every=100)),
            config_lib.TrainConfig(fake_batch_size=49)]
  hashes = {distribute.config_hash(c) for c in others}
  assert len(hashes) == len(others) and distribute.config_hash(base) not in hashes


def test_differing_hashes_name_every_process():
  assert distribute.differing_configs(["ab", "ab", "ab", "ab"], 2) is None
  message = distribute.differing_configs(["ab", "ab", "cd", "cd"], 2)
  assert message.startswith("--flagfile / flags: ") and "\n" not in message
  assert "process 0: ab, process 1: cd" in message


def _main(*args, timeout=600):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, "-m", "dp_sinkhorn_tf.main", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout, env=env)


TINY = ["--dataset=digits", "--batch_size=16", "--fake_batch_size=10", "--debias_fraction=0.2",
        "--hidden=4", "--latent_dim=4", "--embed_dim=2", "--noise_multiplier=1",
        "--target_epsilon=10", "--steps=30", "--checkpoint_every=10", "--log_every=10",
        "--sample_every=100", "--sinkhorn_max_iterations=20", "--insecure_fixed_key",
        "--verbosity=-1"]


def _weights(workdir):
  import tensorflow as tf
  path = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
  return {name: tf.train.load_variable(path, name) for name, _ in tf.train.list_variables(path)
          if name.startswith("generator/")}


def test_a_mirrored_run_ends_like_a_single_device_run(tmp_path):
  single, mirrored = tmp_path / "single", tmp_path / "mirrored"
  for workdir, extra in ((single, []), (mirrored, ["--strategy=mirrored", "--num_devices=2"])):
    proc = _main(f"--workdir={workdir}", *TINY, *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
  ledgers = [json.loads((w / "privacy_ledger.json").read_text()) for w in (single, mirrored)]
  for field in ("steps_taken", "checkpoint_step", "sample_rate", "noise_multiplier"):
    assert ledgers[0][field] == ledgers[1][field]
  a, b = _weights(str(single)), _weights(str(mirrored))
  assert a.keys() == b.keys() and a
  for name in a:
    np.testing.assert_allclose(b[name], a[name], atol=1e-4, err_msg=name)
  assert (mirrored / "export" / "generator" / "1" / "saved_model.pb").exists()


def test_fewer_generated_rows_than_replicas_is_refused_before_any_work(tmp_path):
  workdir = tmp_path / "run"
  proc = _main(f"--workdir={workdir}", *TINY, "--strategy=mirrored", "--num_devices=3",
               "--fake_batch_size=2", "--debias_fraction=0")
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: --fake_batch_size")
  assert "2 generated images" in lines[0] and "3 replicas" in lines[0]
  assert not workdir.exists()


def test_param_grad_is_refused_under_a_strategy():
  with pytest.raises(ValueError, match="--mechanism"):
    config_lib.TrainConfig(privacy=config_lib.PrivacyConfig(mechanism="param_grad"),
                           run=config_lib.RunConfig(strategy="mirrored", num_devices=2))


# ---- multi-worker: two processes on localhost ports ---------------------------------------

def _free_ports(count):
  import socket
  socks = [socket.socket() for _ in range(count)]
  for s in socks:
    s.bind(("localhost", 0))
  ports = [s.getsockname()[1] for s in socks]
  for s in socks:
    s.close()
  return ports


def _start_workers(workdir, *extra, count=2, only=None):
  """`count` workers on localhost; `only`: {index: extra flags of that worker alone}."""
  ports = _free_ports(count)
  procs = []
  for index in range(count):
    own = (only or {}).get(index, [])
    tf_config = {"cluster": {"worker": [f"localhost:{p}" for p in ports]},
                 "task": {"type": "worker", "index": index}}
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_CONFIG=json.dumps(tf_config))
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "dp_sinkhorn_tf.main", f"--workdir={workdir}", *TINY,
         "--strategy=multi_worker", *extra, *own], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True))
  return procs


def _finish(procs, timeout=600):
  return [(p.wait(timeout=timeout), p.stdout.read(), p.stderr.read()) for p in procs]


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("single") / "run"
  proc = _main(f"--workdir={workdir}", *TINY)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


def test_a_two_worker_run_ends_like_a_single_process_run(tmp_path, single_run):
  workdir = tmp_path / "run"
  results = _finish(_start_workers(workdir))
  for code, _, err in results:
    assert code == 0, err[-3000:]
  single = json.loads((single_run / "privacy_ledger.json").read_text())
  multi = json.loads((workdir / "privacy_ledger.json").read_text())
  for field in ("steps_taken", "checkpoint_step", "sample_rate", "noise_multiplier"):
    assert single[field] == multi[field]
  a, b = _weights(str(single_run)), _weights(str(workdir))
  for name in a:
    np.testing.assert_allclose(b[name], a[name], atol=1e-4, err_msg=name)
  # Only the chief wrote: one export, one set of checkpoints, nothing of the worker's.
  assert sorted(os.listdir(workdir / "export" / "generator")) == ["1"]
  assert "worker done" in results[1][1]


def test_a_killed_worker_is_a_crash_and_the_run_resumes(tmp_path, single_run):
  import signal
  import time
  workdir = tmp_path / "run"
  procs = _start_workers(workdir)
  ckpt_dir = workdir / "checkpoints"
  deadline = time.time() + 900  # a loaded 2-core machine took > 300 s to the first checkpoint
  while not (ckpt_dir / "checkpoint").exists() and time.time() < deadline:
    time.sleep(0.2)
  procs[1].send_signal(signal.SIGKILL)
  (code0, _, err0), _ = _finish(procs)
  assert code0 != 0  # the chief cannot finish a step without its peer
  assert len([ln for ln in err0.splitlines() if ln.startswith("error:")]) == 1
  ledger = json.loads((workdir / "privacy_ledger.json").read_text())
  assert ledger["steps_taken"] >= ledger["checkpoint_step"] >= 10
  for code, _, err in _finish(_start_workers(workdir)):  # the cluster restarts
    assert code == 0, err[-3000:]
  resumed = json.loads((workdir / "privacy_ledger.json").read_text())
  assert resumed["steps_taken"] == resumed["checkpoint_step"] == 30
  a, b = _weights(str(single_run)), _weights(str(workdir))
  for name in a:  # the same key replays the same releases
    np.testing.assert_allclose(b[name], a[name], atol=1e-4, err_msg=name)


def test_workers_started_with_different_flags_refuse_before_any_write(tmp_path):
  workdir = tmp_path / "run"
  results = _finish(_start_workers(workdir, only={1: ["--alpha_c=10"]}))
  hashes = set()
  for code, _, err in results:
    assert code == 2, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --flagfile / flags: the workers' "
                                                   "resolved training configurations differ")
    hashes.add(lines[0])
  assert len(hashes) == 1  # both name the same two hashes
  assert not workdir.exists()  # refused before the chief created the run: no ε spent

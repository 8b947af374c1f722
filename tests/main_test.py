"""Tests for the dp_sinkhorn_tf.main command line: errors, and cifar.flags starting up."""

import os
import subprocess
import sys

import pytest
import tensorflow_datasets as tfds
from absl import flags

from dp_sinkhorn_tf import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*args, timeout=300, quiet_tf=True):
  """The entry point in a fresh process; quiet_tf=False leaves TensorFlow's C++ log at the
  user's default, so its start-up lines would show."""
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  if quiet_tf:
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
  return subprocess.run([sys.executable, "-m", "dp_sinkhorn_tf.main", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout, env=env)


def _error_lines(stderr: str):
  return [line for line in stderr.splitlines() if line.startswith("error:")]


def _assert_one_error_naming(stderr: str, flag: str, workdir) -> None:
  errors = _error_lines(stderr)
  assert len(errors) == 1 and flag in errors[0], stderr[-2000:]
  assert not workdir.exists()  # nothing half-written


def _exit_code_in_process(*args) -> int:
  """The entry point's parser and main in this process, as absl.app.run calls them: the
  exit code of the SystemExit they must raise (no TensorFlow start-up per case)."""
  flags.FLAGS.unparse_flags()
  try:
    with pytest.raises(SystemExit) as exit_info:
      main.main(main.parse_flags(["main", *args]))
  finally:
    flags.FLAGS.unparse_flags()
  return exit_info.value.code


BAD_FLAGS = [
    (["--batch_size=0"], "--batch_size"),
    (["--fake_batch_size=0"], "--fake_batch_size"),
    (["--ema_decay=1"], "--ema_decay"),
    (["--lr_schedule=linear"], "--lr_schedule"),
    (["--no_such_flag=1"], "no_such_flag"),
    (["--learning_rate=-1"], "--learning_rate"),
    (["--debias_fraction=1.5"], "--debias_fraction"),
    (["--l2_norm_clip=0"], "--l2_norm_clip"),
    (["--weight_decay=0.1"], "--weight_decay"),
    (["--sinkhorn_epsilon=0"], "--sinkhorn_"),
    (["--release_blur=-1"], "--release_blur"),
    (["--public_clip=-0.1"], "--public_clip"),
    (["--public_clip=0.1", "--mechanism=param_grad"], "--public_clip"),
    (["--release_blur=1", "--mechanism=param_grad"], "--release_blur"),
    (["--steps=999999999", "--noise_multiplier=1"], "--steps"),
    (["--target_epsilon=inf"], "--target_epsilon"),
    (["--learning_rate=inf"], "--learning_rate"),
    (["--alpha_c=inf"], "--alpha_c"),
    (["--sinkhorn_threshold=nan"], "--sinkhorn_threshold"),
    (["--sinkhorn_relaxation=2"], "--sinkhorn_relaxation"),
    (["--sinkhorn_scaling=1"], "--sinkhorn_scaling"),
    (["--sinkhorn_max_iterations=0"], "--sinkhorn_max_iterations"),
    (["--sinkhorn_relaxation=0.5"], "--sinkhorn_relaxation"),
    (["--precision=float16"], "precision"),
    (["--precision=mixed_float16", "--mechanism=param_grad"], "--precision"),
    # Data flags: no closed list of names, one line naming the flag.
    (["--data=/data/my_scans"], "--data='/data/my_scans': expected folder:PATH"),
    (["--data=folder:x", "--dataset=mnist"], "--data="),
    (["--dataset=svhn"], "--dataset='svhn': expected one of digits"),
    (["--image_size=4"], "--image_size='4x4': expected a size the generators build"),
    (["--image_size=big"], "--image_size"),
    (["--channels=2"], "--channels"),
    (["--privacy_unit=person"], "--privacy_unit"),
    (["--groups=g.csv"], "--groups='g.csv': expected unset unless --privacy_unit=group"),
    (["--privacy_unit=group"], "--privacy_unit='group': expected record with --dataset"),
    (["--data=folder:x", "--privacy_unit=group"], "--groups"),
    (["--data=npz:x.npz", "--privacy_unit=group", "--groups=g.csv"], "--groups"),
    (["--max_per_group=0"], "--max_per_group"),
    (["--image_key=img"], "--image_key"),
    (["--idx_dir=/tmp"], "--idx_dir"),
]


@pytest.mark.parametrize("args,flag", BAD_FLAGS)
def test_bad_flag_values_give_one_line_naming_the_flag(tmp_path, capsys, args, flag):
  # In this process (the entry point's parser and main, as absl.app.run calls them): each
  # case costs no TensorFlow start-up. The subprocess test below runs three of them for real.
  workdir = tmp_path / "run"
  assert _exit_code_in_process(f"--workdir={workdir}", *args) == 2
  _assert_one_error_naming(capsys.readouterr().err, flag, workdir)


@pytest.mark.parametrize("args,flag", [case for case in BAD_FLAGS  # value, name, plan
                                       if case[1] in ("--batch_size", "no_such_flag", "--steps")])
def test_bad_flag_values_exit_2_with_one_line_and_no_traceback(tmp_path, args, flag):
  # With TensorFlow's log at its default: the flags are checked before TensorFlow loads, so
  # its nine start-up lines (oneDNN, CUDA stubs, TF-TRT) never precede the error.
  workdir = tmp_path / "run"
  proc = run_main(f"--workdir={workdir}", *args, quiet_tf=False)
  assert proc.returncode == 2
  _assert_one_error_naming(proc.stderr, flag, workdir)
  assert proc.stderr.strip().splitlines() == _error_lines(proc.stderr), proc.stderr[-2000:]


def test_an_unreadable_data_file_is_one_line_before_any_work(tmp_path, capsys):
  # The data set loads in `main` before TensorFlow; a read error there (here a directory
  # where the IDX file should be) is one line naming the file, not a traceback.
  idx, workdir = tmp_path / "idx", tmp_path / "run"
  (idx / "train-images-idx3-ubyte").mkdir(parents=True)
  (idx / "train-labels-idx1-ubyte").write_bytes(b"")
  assert _exit_code_in_process("--dataset=fashion_mnist", f"--idx_dir={idx}",
                                f"--workdir={workdir}", "--steps=10") == 2
  _assert_one_error_naming(capsys.readouterr().err, "train-images-idx3-ubyte", workdir)


def _png(path, shape=(8, 8, 3), value=None):
  import numpy as np
  import tensorflow as tf
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pixels = (np.random.default_rng(abs(hash(str(path))) % 2**32).integers(0, 256, shape)
            if value is None else np.full(shape, value)).astype(np.uint8)
  with open(path, "wb") as fh:
    fh.write(tf.io.encode_png(pixels).numpy())


def _bad_data(kind, root):
  """(flags, text the one error line must hold) for each kind of bad data of issue 36."""
  import numpy as np
  import tensorflow as tf
  data = root / "data"
  if kind == "empty folder":
    data.mkdir()
    return [f"--data=folder:{data}"], "no images"
  if kind == "empty class folder":
    _png(str(data / "cat" / "0.png"))
    (data / "dog").mkdir()
    return [f"--data=folder:{data}"], "class folder 'dog' holds no image"
  if kind == "corrupt image":
    _png(str(data / "cat" / "0.png"))
    (data / "cat" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    return [f"--data=folder:{data}"], "cat/1.png: not a decodable image"
  if kind == "mixed sizes":
    _png(str(data / "0.png"), (8, 8, 3))
    _png(str(data / "1.png"), (9, 8, 3))
    return [f"--data=folder:{data}"], "1.png: 9×8 pixels where the first image has 8×8"
  if kind == "npz label out of range":
    np.savez(root / "d.npz", images=np.zeros((4, 8, 8), np.uint8),
             labels=np.array([0, 1, 2, 5]), label_names=np.array(["a", "b", "c"]))
    return [f"--data=npz:{root / 'd.npz'}"], "label 5 outside [0, 3)"
  if kind == "tfrecord without image key":
    with tf.io.TFRecordWriter(str(root / "d.rec")) as writer:
      feature = {"label": tf.train.Feature(int64_list=tf.train.Int64List(value=[1]))}
      writer.write(tf.train.Example(features=tf.train.Features(feature=feature))
                   .SerializeToString())
    return [f"--data=tfrecord:{root / 'd.rec'}"], "d.rec record 0: 0 values of the image"
  if kind == "group csv naming missing files":
    _png(str(data / "0.png"))
    (root / "g.csv").write_text("file,group\n0.png,ann\nmissing.png,bob\n")
    return [f"--data=folder:{data}", "--privacy_unit=group", f"--groups={root / 'g.csv'}"], \
        "row 3 names 'missing.png', which is not an image"
  if kind == "tfds not prepared":
    (root / "tfds").mkdir()
    return ["--data=tfds:mnist", f"--data_dir={root / 'tfds'}"], "not prepared under"
  if kind == "images too large":
    _png(str(data / "0.png"), (300, 200, 3))
    return [f"--data=folder:{data}"], "300×200 pixels (the generators take 8 to 128"
  raise AssertionError(kind)


@pytest.mark.parametrize("kind", [
    "empty folder", "empty class folder", "corrupt image", "mixed sizes",
    "npz label out of range", "tfrecord without image key", "group csv naming missing files",
    "tfds not prepared", "images too large"])
def test_bad_data_is_one_line_with_no_state_written_and_no_epsilon_spent(tmp_path, capsys,
                                                                         kind):
  args, text = _bad_data(kind, tmp_path)
  workdir = tmp_path / "run"
  assert _exit_code_in_process(f"--workdir={workdir}", *args, "--steps=3",
                               "--batch_size=1") == 2
  err = capsys.readouterr().err
  _assert_one_error_naming(err, text, workdir)  # not workdir.exists(): no key, no ledger
  assert "Traceback" not in err


def test_cifar_flagfile_without_data_names_data_dir(tmp_path):
  empty, workdir = tmp_path / "tfds", tmp_path / "run"
  empty.mkdir()
  proc = run_main("--flagfile=launch/cifar.flags", f"--data_dir={empty}",
                  f"--workdir={workdir}")
  assert proc.returncode != 0
  errors = _error_lines(proc.stderr)
  assert len(errors) == 1 and f"--data_dir={empty}" in errors[0]
  assert not workdir.exists()


def test_cifar_flagfile_starts_training_on_tfds_data(tmp_path, monkeypatch):
  monkeypatch.chdir(ROOT)
  flags.FLAGS.unparse_flags()
  main.parse_flags(["main", "--flagfile=launch/cifar.flags", f"--workdir={tmp_path}",
                    "--data_dir=/nonexistent", "--batch_size=4", "--steps=2", "--hidden=2",
                    "--noexport", "--log_every=1"])
  try:
    cfg = main.config_from_flags(flags.FLAGS)
    with tfds.testing.mock_data(num_examples=64):
      assert main.run(cfg, flags.FLAGS.flags_into_string()) == 0
  finally:
    flags.FLAGS.unparse_flags()
  assert cfg.model.architecture == "biggan" and cfg.data.dataset == "cifar10"
  for name in ("privacy.json", "privacy_ledger.json", "flags.txt", "samples/final.png"):
    assert (tmp_path / name).exists(), name
  assert "--flagfile" not in (tmp_path / "flags.txt").read_text()  # resolved flags


def test_positional_arguments_are_rejected(tmp_path):
  proc = run_main(f"--workdir={tmp_path / 'run'}", "extra")
  assert proc.returncode != 0 and len(_error_lines(proc.stderr)) == 1


TINY = ["--dataset=digits", "--batch_size=16", "--hidden=4", "--latent_dim=4", "--embed_dim=2",
        "--noise_multiplier=1", "--target_epsilon=10", "--checkpoint_every=5",
        "--log_every=1", "--sample_every=10", "--sinkhorn_max_iterations=20", "--noexport"]


def _final_weights(workdir):
  import tensorflow as tf
  path = tf.train.latest_checkpoint(str(workdir / "checkpoints"))
  return {name: tf.train.load_variable(path, name) for name, _ in tf.train.list_variables(path)
          if name.startswith("generator/")}


def test_sigkill_at_random_moments_then_resume_gives_the_same_generator_and_ledger(tmp_path):
  # The data owner's key file makes two runs comparable; a killed-and-resumed run must
  # release bit-for-bit the generator of an uninterrupted one and charge the same steps.
  import json
  import random
  import signal
  import time

  from dp_sinkhorn_tf.privacy import keys
  key = tmp_path / "owner.key"
  keys.write_key_file(str(key), keys.generate())
  args = TINY + ["--steps=60", f"--privacy_key_file={key}"]
  straight = run_main(f"--workdir={tmp_path / 'straight'}", *args)
  assert straight.returncode == 0, straight.stderr[-2000:]
  workdir = tmp_path / "killed"
  ledger = workdir / "privacy_ledger.json"
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  rng, kills = random.Random(0), 0
  for _ in range(8):
    proc = subprocess.Popen([sys.executable, "-m", "dp_sinkhorn_tf.main",
                             f"--workdir={workdir}", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start = time.time()
    before = json.loads(ledger.read_text())["steps_taken"] if ledger.exists() else -1
    while proc.poll() is None and time.time() - start < 120:  # until it charges a chunk
      if ledger.exists() and json.loads(ledger.read_text())["steps_taken"] > before:
        break
      time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 1.5))
    if proc.poll() is None:
      proc.send_signal(signal.SIGKILL)
      kills += 1
    proc.wait()
    if proc.returncode == 0 or kills == 3:  # three kills, then the final run finishes it
      break
  assert kills >= 2
  final = run_main(f"--workdir={workdir}", *args)  # finishes, or says the budget is spent
  assert final.returncode in (0, 1), final.stderr[-2000:]
  a, b = _final_weights(tmp_path / "straight"), _final_weights(workdir)
  assert a.keys() == b.keys() and len(a) > 4
  for name in a:
    assert (a[name] == b[name]).all(), name
  led_a = json.loads((tmp_path / "straight" / "privacy_ledger.json").read_text())
  led_b = json.loads(ledger.read_text())
  assert led_a["steps_taken"] == led_b["steps_taken"] == 60
  assert led_b["checkpoint_step"] == 60


def test_a_run_leaves_stderr_empty_at_the_users_default_log_level(tmp_path):
  # TF's start-up lines (TF_CPP_MIN_LOG_LEVEL) and XLA's absl-logged "Compiled cluster using
  # XLA!" of the exact noise sampler (io.log_filter) are both quiet without --verbosity.
  proc = run_main(f"--workdir={tmp_path / 'run'}", *TINY, "--steps=2", quiet_tf=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stderr == "", proc.stderr[-2000:]


def test_progress_shows_only_publishable_values_and_summary_marks_private_files(tmp_path):
  proc = run_main(f"--workdir={tmp_path / 'run'}", *TINY, "--steps=3")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "epsilon" in proc.stdout and "loss" not in proc.stdout
  plan_line = next(line for line in proc.stdout.splitlines() if line.startswith("privacy plan"))
  assert "ε=" in plan_line
  assert "neighbours: add/remove one record; N treated as public" in plan_line
  assert "step 3/3 (100.0%)" in proc.stdout  # the last step is always reported
  assert "real_batch_size" not in proc.stdout
  tail = proc.stdout.split("DO NOT PUBLISH:")[1]
  assert "privacy_key" in tail and "private_diagnostics" in tail
  assert "NOT PRIVATE" not in proc.stdout


@pytest.mark.parametrize("kind", ["class_means", "merf"])
def test_a_run_with_a_warm_start_shows_its_stages_and_the_fit(tmp_path, kind):
  work = tmp_path / "run"
  proc = run_main(f"--workdir={work}", *TINY, "--steps=3", f"--warm_start={kind}",
                  "--warm_start_resolution=4", "--warm_start_steps=4", "--export")
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = proc.stdout
  assert "stage warm_start: share" in out and "stage dp_sinkhorn: share" in out
  assert "warm start: fitting the generator to the release, step 4/4 (100.0%)" in out
  assert "step 3/3 (100.0%)" in out and "share warm_start" in out
  assert (work / "warm_start.npz").exists()
  import json
  report = json.loads((work / "privacy.json").read_text())["ledger"]
  stages = report["stages"]
  assert [s["name"] for s in stages] == ["warm_start", "dp_sinkhorn"]
  # The export's metadata lists the stages as privacy.json does, both from training's own
  # export and from the export command reading the run directory back.
  from dp_sinkhorn_tf.release import serving
  from dp_sinkhorn_tf.train import run_export
  exported = serving.read_metadata(str(work / "export" / "generator" / "1"))
  again = serving.read_metadata(run_export.export_run(str(work), export_dir=str(tmp_path / "x")))
  for meta in (exported, again):
    assert meta["stages"] == report["stages"]
    assert [s["name"] for s in meta["stages"]] == ["warm_start", "dp_sinkhorn"]
    assert abs(sum(s["share"] for s in meta["stages"]) - 1) < 1e-9
    assert meta["epsilon"] == report["epsilon"]["rdp"]


def _clock_values(blob: bytes, low: float, high: float) -> list:
  """What in `blob` reads as a time in [low, high] (seconds since the epoch): a little-endian
  float64 at any offset (TensorBoard's wall_time) or decimal text of epoch seconds."""
  import re

  import numpy as np
  found = []
  for offset in range(8):
    n = (len(blob) - offset) // 8
    values = np.frombuffer(blob, "<f8", count=max(n, 0), offset=offset)
    found += [float(v) for v in values[(values >= low) & (values <= high)]]
  for text in re.findall(rb"\d{10}(?:\.\d+)?(?:e\+?\d+)?|\d\.\d+e\+0?9", blob):
    try:
      value = float(text)
    except ValueError:
      continue
    if low <= value <= high:
      found.append(value)
  return found


def test_published_files_carry_no_wall_clock_time(tmp_path):
  import datetime
  import json
  import time

  import tensorflow as tf

  from dp_sinkhorn_tf.io import files, rundir
  fixed = files.FIXED_TIME
  started = time.time()
  workdir = tmp_path / "run"
  proc = run_main(f"--workdir={workdir}", *TINY[:-1], "--steps=12", "--sample_every=4")
  assert proc.returncode == 0, proc.stderr[-2000:]
  finished = time.time()
  # TensorBoard: one session, named without time or host; every event at 2000-01-01 + step.
  assert os.listdir(workdir / "tensorboard") == [
      "events.out.tfevents.0946684800.dp_sinkhorn_tf.v2"]
  events = list(tf.compat.v1.train.summary_iterator(
      str(workdir / "tensorboard" / "events.out.tfevents.0946684800.dp_sinkhorn_tf.v2")))
  assert events[0].file_version == "brain.Event:2" and events[0].wall_time == fixed
  tags = [(e.step, v.tag) for e in events[1:] for v in e.summary.value]
  assert [step for step, tag in tags if tag == "samples"] == [4, 8, 12]
  assert [step for step, tag in tags if tag == "epsilon"] == list(range(1, 13))
  assert all(e.wall_time == fixed + e.step for e in events)
  assert sorted(os.listdir(workdir / "samples")) == ["final.png", "step_0000004.png",
                                                     "step_0000008.png"]
  # Every file and folder of what may be published, and the run directory itself.
  published = [workdir]
  for name, publishable, _ in rundir.ARTEFACTS:
    if publishable and (workdir / name).exists():
      published += [workdir / name, *(workdir / name).rglob("*")]
  assert {p.relative_to(workdir).parts[0] for p in published[1:]} == {
      "export", "privacy.json", "samples", "tensorboard", "flags.txt", "run.json",
      "checkpoints", "data_spec.json"}
  for path in published:
    assert os.stat(path).st_mtime == fixed, path
  state = tf.train.get_checkpoint_state(str(workdir / "checkpoints"))
  assert [fixed + int(p.rsplit("-", 1)[1]) for p in state.all_model_checkpoint_paths] == list(
      state.all_model_checkpoint_timestamps) and len(state.all_model_checkpoint_paths) >= 2
  meta = json.loads((workdir / "export" / "generator" / "1" / "assets.extra" /
                     "metadata.json").read_text())
  assert "exported_at" not in meta
  # No time of the run inside any published file, in binary or as text (epoch seconds, ISO
  # dates); the PNGs hold no tIME chunk.
  today = datetime.datetime.fromtimestamp(started, datetime.timezone.utc).strftime("%Y-%m-%d")
  for path in published:
    if path.is_file():
      blob = path.read_bytes()
      assert not _clock_values(blob, started - 60, finished + 60), path
      assert today.encode() not in blob and b"tIME" not in blob, path
  # The scan finds the times the private diagnostics keep (never published).
  private = list((workdir / rundir.PRIVATE_DIR / "tensorboard").iterdir())
  assert len(private) == 1 and _clock_values(private[0].read_bytes(), started - 60,
                                             finished + 60)


def test_bfloat16_on_a_cpu_without_bfloat16_instructions_is_warned(tmp_path, capsys,
                                                                  monkeypatch):
  from dp_sinkhorn_tf.train import hardware
  monkeypatch.setattr(hardware, "read_cpu_flags", lambda: frozenset({"avx2", "fma"}))
  flags.FLAGS.unparse_flags()
  main.parse_flags(["main", f"--workdir={tmp_path / 'run'}", *TINY, "--steps=2",
                    "--precision=bfloat16_convs"])
  try:
    assert main.run(main.config_from_flags(flags.FLAGS), flags.FLAGS.flags_into_string()) == 0
  finally:
    flags.FLAGS.unparse_flags()
  assert ("warning: --precision=bfloat16_convs: this CPU has no bfloat16 instructions"
          in capsys.readouterr().out)


def test_insecure_fixed_key_is_announced_as_not_private(tmp_path):
  import json
  proc = run_main(f"--workdir={tmp_path / 'run'}", *TINY[:-1], "--steps=3",
                  "--insecure_fixed_key")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "NOT PRIVATE: --insecure_fixed_key" in proc.stdout
  meta = json.loads((tmp_path / "run" / "export" / "generator" / "1" / "assets.extra" /
                     "metadata.json").read_text())
  assert meta["private"] is False and "insecure_fixed_key" in meta["private_reason"]
  assert meta["neighbouring_relation"].startswith("add/remove one record")
  proc = run_main(f"--workdir={tmp_path / 'run2'}", *TINY, "--steps=3", "--insecure_fixed_key",
                  f"--privacy_key_file={tmp_path / 'k'}")
  assert proc.returncode == 2 and "--insecure_fixed_key" in _error_lines(proc.stderr)[0]


def test_bad_model_name_is_refused_before_any_step(tmp_path):
  workdir = tmp_path / "run"
  proc = run_main(f"--workdir={workdir}", *TINY[:-1], "--steps=3", "--model_name=../x")
  assert proc.returncode == 2 and "--model_name" in _error_lines(proc.stderr)[0]
  assert not workdir.exists()


def test_a_bad_key_file_is_one_line_and_writes_nothing(tmp_path):
  bad = tmp_path / "bad.key"
  bad.write_text("not a key")
  workdir = tmp_path / "run"
  proc = run_main(f"--workdir={workdir}", *TINY, "--steps=3", f"--privacy_key_file={bad}")
  errors = _error_lines(proc.stderr)
  assert proc.returncode == 2 and len(errors) == 1 and "bad.key" in errors[0]
  assert not workdir.exists()


def test_workdir_that_is_a_file_is_one_line(tmp_path):
  target = tmp_path / "file"
  target.write_text("x")
  proc = run_main(f"--workdir={target}", *TINY, "--steps=3")
  errors = _error_lines(proc.stderr)
  assert proc.returncode == 2 and len(errors) == 1 and "not a directory" in errors[0]
  assert "Traceback" not in proc.stderr and target.read_text() == "x"


def _wait_for(predicate, proc, timeout=900):
  """Polls `predicate` until it holds or `proc` ends; the timeout only bounds a hung test (a
  loaded 2-core machine took > 120 s to a first checkpoint)."""
  import time
  start = time.time()
  while not predicate() and proc.poll() is None and time.time() - start < timeout:
    time.sleep(0.05)


@pytest.mark.parametrize("signame,code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_signals_stop_at_a_step_boundary_with_a_checkpoint_and_one_line(tmp_path, signame,
                                                                        code):
  import json
  import signal
  workdir = tmp_path / "run"
  args = [f"--workdir={workdir}", *TINY, "--steps=400", "--checkpoint_every=100"]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.Popen([sys.executable, "-m", "dp_sinkhorn_tf.main", *args], cwd=ROOT,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  _wait_for(lambda: (workdir / "checkpoints" / "checkpoint").exists(), proc)
  proc.send_signal(getattr(signal, signame))
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == code, err[-2000:]
  assert "Traceback" not in err and "re-run the same command to resume" in err
  ledger = json.loads((workdir / "privacy_ledger.json").read_text())
  step = ledger["checkpoint_step"]
  assert 100 <= step < 400  # stopped at a step boundary (mid-chunk: trainer_test)
  resumed = run_main(*args)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f"{step} checkpointed" in resumed.stdout
  assert json.loads((workdir / "privacy_ledger.json").read_text())["steps_taken"] == 400


def test_a_run_killed_after_its_last_step_finishes_its_outputs_on_rerun(tmp_path):
  import json
  import re
  import shutil
  import time
  workdir = tmp_path / "run"
  args = [f"--workdir={workdir}", *TINY[:-1], "--steps=6"]
  assert run_main(*args).returncode == 0
  # As if killed during the export, after the last chunk was checkpointed: no export, a
  # stale temporary export directory, privacy.json not yet final, no final grid.
  shutil.rmtree(workdir / "export" / "generator" / "1")
  (workdir / "export" / "generator" / ".tmp-1-999999").mkdir()
  report = json.loads((workdir / "privacy.json").read_text())
  report["finished"] = False
  (workdir / "privacy.json").write_text(json.dumps(report))
  os.remove(workdir / "samples" / "final.png")
  # Killed between a save and the rewrite of the checkpoint file: the clock times are there.
  state = workdir / "checkpoints" / "checkpoint"
  state.write_text(re.sub(r"(timestamp: )\S+", lambda m: m.group(1) + repr(time.time()),
                          state.read_text()))
  ledger_before = (workdir / "privacy_ledger.json").read_text()
  proc = run_main(*args)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "no privacy spent" in proc.stdout
  assert "all_model_checkpoint_timestamps: 946684806.0" in state.read_text()  # no save: scrubbed
  # The rerun is a second TensorBoard session (the final grid again), named by its first step.
  assert sorted(os.listdir(workdir / "tensorboard")) == [
      "events.out.tfevents.0946684800.dp_sinkhorn_tf.v2",
      "events.out.tfevents.0946684806.dp_sinkhorn_tf.v2"]
  assert sorted(os.listdir(workdir / "export" / "generator")) == ["1"]
  assert json.loads((workdir / "privacy.json").read_text())["finished"] is True
  assert (workdir / "samples" / "final.png").exists()
  assert (workdir / "privacy_ledger.json").read_text() == ledger_before  # nothing charged
  again = run_main(*args)  # now complete: the usual refusal
  assert again.returncode == 1 and "budget is spent" in _error_lines(again.stderr)[0]


def _kill_after_first_checkpoint(workdir, args):
  """Runs main with args, SIGKILLs it once checkpoints/checkpoint exists."""
  import signal
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.Popen([sys.executable, "-m", "dp_sinkhorn_tf.main", *args], cwd=ROOT,
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  _wait_for(lambda: (workdir / "checkpoints" / "checkpoint").exists(), proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()


def test_a_resume_with_other_gradient_flags_is_one_line_and_spends_nothing(tmp_path):
  import json
  workdir = tmp_path / "run"
  args = [f"--workdir={workdir}", *TINY, "--steps=60"]
  _kill_after_first_checkpoint(workdir, args)
  ledger = json.loads((workdir / "privacy_ledger.json").read_text())
  assert 0 < ledger["steps_taken"] < 60  # a run to resume
  before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
  for flag, then, now in [("learning_rate", "0.001", "0.0005"), ("alpha_c", "15.0", "10.0")]:
    proc = run_main(*args, f"--{flag}={now}")
    errors = _error_lines(proc.stderr)
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert errors[0] == (f"error: --workdir={workdir}: the run there was started with other "
                         "flags that shape the released gradient "
                         f"(--{flag}: {then} then, {now} now); resume with the same flags or "
                         "use a new --workdir")
    assert "Traceback" not in proc.stderr
    # Nothing written: the ledger's bytes (no ε charged), flags.txt, privacy.json, all.
    assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before
  # What is logged and how many steps a call runs shape no gradient.
  resumed = run_main(*args, "--log_every=2", "--steps_per_call=3")
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "resuming run" in resumed.stdout
  assert json.loads((workdir / "privacy_ledger.json").read_text())["steps_taken"] == 60


def test_an_unparsable_checkpoint_index_is_refused_not_restarted(tmp_path):
  workdir = tmp_path / "run"
  args = [f"--workdir={workdir}", *TINY, "--steps=20"]
  _kill_after_first_checkpoint(workdir, args)
  (workdir / "checkpoints" / "checkpoint").write_text("garbage {{{")
  before = sorted(os.listdir(workdir / "checkpoints"))
  proc = run_main(*args)
  errors = _error_lines(proc.stderr)
  assert proc.returncode == 1 and len(errors) == 1 and "checkpoint" in errors[0]
  assert "Traceback" not in proc.stderr
  assert sorted(os.listdir(workdir / "checkpoints")) == before  # nothing deleted


def test_a_truncated_checkpoint_is_one_line_on_resume(tmp_path):
  workdir = tmp_path / "run"
  args = [f"--workdir={workdir}", *TINY, "--steps=20"]
  _kill_after_first_checkpoint(workdir, args)
  data = [p for p in (workdir / "checkpoints").iterdir() if ".data-" in p.name]
  for path in data:
    path.write_bytes(path.read_bytes()[:10])
  proc = run_main(*args)
  errors = _error_lines(proc.stderr)
  assert proc.returncode == 1 and len(errors) == 1 and "ckpt-" in errors[0], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr


def test_a_full_disk_during_a_checkpoint_is_one_line_and_loses_nothing(tmp_path, monkeypatch,
                                                                       capsys):
  import json

  import tensorflow as tf
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["main", f"--workdir={tmp_path}", *TINY, "--steps=15"])
  saves = []
  real_save = tf.train.CheckpointManager.save

  def save(self, checkpoint_number=None, **kwargs):
    saves.append(checkpoint_number)
    if len(saves) == 2:  # the second checkpoint hits a full disk mid-write
      os.makedirs(os.path.join(self.directory, f"ckpt-{checkpoint_number}_temp"))
      raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")
    return real_save(self, checkpoint_number=checkpoint_number, **kwargs)

  monkeypatch.setattr(tf.train.CheckpointManager, "save", save)
  try:
    cfg = main.config_from_flags(flags.FLAGS)
    with pytest.raises(SystemExit) as exit_info:
      main.run(cfg, flags.FLAGS.flags_into_string())
  finally:
    flags.FLAGS.unparse_flags()
  assert exit_info.value.code == 1
  errors = _error_lines(capsys.readouterr().err)
  assert len(errors) == 1 and "No space left on device" in errors[0]
  assert "re-run the same command" in errors[0]
  assert not [n for n in os.listdir(tmp_path / "checkpoints") if "_temp" in n]
  ledger = json.loads((tmp_path / "privacy_ledger.json").read_text())
  assert (ledger["steps_taken"], ledger["checkpoint_step"]) == (10, 5)
  assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-5")
  monkeypatch.setattr(tf.train.CheckpointManager, "save", real_save)
  resumed = run_main(f"--workdir={tmp_path}", *TINY, "--steps=15")  # space freed: resumes
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert json.loads((tmp_path / "privacy_ledger.json").read_text())["steps_taken"] == 15


@pytest.fixture(scope="module")
def finished_tiny_run(tmp_path_factory):
  """A finished 4-step run (the TINY flags), made once for the tests that copy and damage it."""
  base = tmp_path_factory.mktemp("finished") / "run"
  assert run_main(f"--workdir={base}", *TINY, "--steps=4").returncode == 0
  return base


@pytest.mark.parametrize("name,content,match", [
    ("privacy_ledger.json", "{not json", "privacy_ledger.json: unreadable"),
    ("run.json", "[]", "run.json: not a run identity"),
    ("privacy_key", "garbage", "privacy_key: not a privacy key"),
])
def test_corrupt_run_state_is_one_line_and_changes_nothing(tmp_path, finished_tiny_run, name,
                                                           content, match):
  import shutil
  args = [*TINY, "--steps=4"]
  workdir = tmp_path / "run"
  shutil.copytree(finished_tiny_run, workdir)
  (workdir / name).write_text(content)
  before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
  proc = run_main(f"--workdir={workdir}", *args)
  errors = _error_lines(proc.stderr)
  assert proc.returncode != 0 and len(errors) == 1 and match in errors[0], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before


def test_a_run_directory_on_a_tf_io_gfile_file_system(capsys):
  # ram:// (TF's in-memory file system) stands in for gs:// / hdfs://: every file of the run
  # goes through tf.io.gfile, the export included.
  import json as json_lib
  import uuid

  import tensorflow as tf

  from dp_sinkhorn_tf.io import files
  workdir = f"ram://main_test/{uuid.uuid4().hex}/run"
  args = ["main", f"--workdir={workdir}", *TINY[:-1], "--steps=10", "--export"]
  flags.FLAGS.unparse_flags()
  main.parse_flags(args)
  try:
    cfg = main.config_from_flags(flags.FLAGS)
    assert main.run(cfg, flags.FLAGS.flags_into_string()) == 0
  finally:
    flags.FLAGS.unparse_flags()
  ledger = json_lib.loads(files.read_text(f"{workdir}/privacy_ledger.json"))
  report = json_lib.loads(files.read_text(f"{workdir}/privacy.json"))
  assert ledger["steps_taken"] == ledger["checkpoint_step"] == 10 and report["finished"]
  assert files.exists(f"{workdir}/samples/final.png")
  assert tf.train.latest_checkpoint(f"{workdir}/checkpoints").endswith("ckpt-10")
  loaded = tf.saved_model.load(f"{workdir}/export/generator/1")
  out = loaded.signatures["sample"](label=tf.constant([0, 1]), seed=tf.constant(3, tf.int64))
  assert out["images"].shape == (2, 8, 8, 1)
  meta = json_lib.loads(files.read_text(f"{workdir}/export/generator/1/assets.extra/"
                                        "metadata.json"))
  assert meta["run_id"] == ledger["run_id"]
  # The same command again: the budget is spent and nothing is retrained.
  main.parse_flags(args)
  try:
    with pytest.raises(SystemExit) as exit_info:
      main.run(main.config_from_flags(flags.FLAGS), flags.FLAGS.flags_into_string())
  finally:
    flags.FLAGS.unparse_flags()
  assert exit_info.value.code == 1
  assert "privacy budget is spent" in capsys.readouterr().err

"""Tests for dp_sinkhorn_tf.export: signatures, fresh-process parity, atomicity, run export."""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf

from dp_sinkhorn_tf import __version__, export
from dp_sinkhorn_tf.io import files
from dp_sinkhorn_tf.models import generators
from dp_sinkhorn_tf.release import export_lib, serving
from dp_sinkhorn_tf.train import run_export

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
LATENT, SHAPE, CLASSES = 8, (8, 8, 1), 10
METADATA = {"epsilon": 3.5, "delta": 1e-5, "accountant": "rdp", "dp": True,
            "mechanism": "image_grad", "noise_multiplier": 1.0, "l2_norm_clip": 0.5,
            "sample_rate": 0.01, "steps": 7, "dataset": "digits", "image_shape": [8, 8, 1],
            "label_names": [str(i) for i in range(10)], "training_flags": "--hidden=8\n"}


def make_tiny_generator(seed: int = 0) -> tf.keras.Model:
  """An 8×8×1 DCGAN with random BatchNorm statistics, so inference mode is visible."""
  tf.keras.utils.set_random_seed(seed)
  gen = generators.make_generator("dcgan", SHAPE, CLASSES, latent_dim=LATENT, embed_dim=4,
                              hidden=8, depth=1, output="tanh", precision="float32")
  rng = np.random.default_rng(seed)
  for var in gen.variables:
    if "moving_mean" in var.name or "beta" in var.name:
      var.assign(rng.normal(0, 0.3, var.shape).astype(np.float32))
    elif "moving_variance" in var.name or "gamma" in var.name:
      var.assign(rng.uniform(0.5, 2.0, var.shape).astype(np.float32))
  return gen


def saved_model_cli(*args, timeout=120):
  exe = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
  cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m",
                                           "tensorflow.python.tools.saved_model_cli"]
  return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout,
                        env=ENV)


def parse_show_all(text: str) -> dict:
  """saved_model_cli show --all → {signature: {"inputs"|"outputs": {name: (dtype, shape)}}}."""
  sigs, sig, kind, name = {}, None, None, None
  for line in text.splitlines():
    if line.startswith(("Concrete Functions", "The MetaGraph with tag set")):
      break
    if m := re.match(r"signature_def\['(.+)'\]:", line):
      sig = sigs.setdefault(m.group(1), {"inputs": {}, "outputs": {}})
    elif m := re.match(r"\s+(inputs|outputs)\['(.+)'\] tensor_info:", line):
      kind, name = m.groups()
      sig[kind][name] = [None, None]
    elif m := re.match(r"\s+dtype: (\S+)", line):
      sig[kind][name][0] = m.group(1)
    elif m := re.match(r"\s+shape: (.+)$", line):
      sig[kind][name][1] = m.group(1).strip()
    elif m := re.match(r"\s+Method name is: (\S*)", line):
      sig["method"] = m.group(1)
  return {s: {k: ({n: tuple(v) for n, v in d.items()} if isinstance(d, dict) else d)
              for k, d in entry.items()} for s, entry in sigs.items()}


def assert_no_timestamp(meta: dict) -> None:
  """No export date, no ISO date or time, no epoch seconds of these days in the metadata."""
  assert "exported_at" not in meta
  text = json.dumps(meta)
  assert not re.search(r"\d{4}-\d\d-\d\d|\d\d:\d\d:\d\d", text), text
  now = time.time()
  for number in re.findall(r"\d{9,}(?:\.\d+)?", text):
    assert abs(float(number) - now) > 30 * 86400, number


def assert_fixed_times(*roots) -> None:
  """Every given path and everything under it has the modification time 2000-01-01T00:00Z."""
  for root in roots:
    for path in [root] + [os.path.join(d, n) for d, dirs, names in os.walk(root)
                          for n in dirs + names]:
      assert os.stat(path).st_mtime == files.FIXED_TIME == 946684800, path


def model_entries(model_dir: str) -> list:
  return sorted(os.listdir(model_dir)) if os.path.isdir(model_dir) else []


@pytest.fixture(scope="module")
def generator():
  return make_tiny_generator()


@pytest.fixture(scope="module")
def exported(generator, tmp_path_factory):
  base = tmp_path_factory.mktemp("export")
  return export_lib.export_generator(generator, str(base), "generator", None, METADATA)


# ---- signatures -----------------------------------------------------------------------------

def test_saved_model_cli_show_lists_both_signatures(exported):
  assert os.path.basename(exported) == "1"
  proc = saved_model_cli("show", "--dir", exported, "--all")
  assert proc.returncode == 0, proc.stderr[-2000:]
  sigs = parse_show_all(proc.stdout)
  images = ("DT_FLOAT", "(-1, 8, 8, 1)")
  pixels = ("DT_UINT8", "(-1, 8, 8, 1)")
  assert sigs["serving_default"]["inputs"] == {"z": ("DT_FLOAT", "(-1, 8)"),
                                               "label": ("DT_INT32", "(-1)")}
  assert sigs["serving_default"]["outputs"] == {"images": images, "images_uint8": pixels}
  assert sigs["sample"]["inputs"] == {"label": ("DT_INT32", "(-1)"), "seed": ("DT_INT64", "()")}
  assert sigs["sample"]["outputs"] == {"images": images, "images_uint8": pixels,
                                       "z": ("DT_FLOAT", "(-1, 8)")}
  assert sigs["serving_default"]["method"] == sigs["sample"]["method"] == \
      "tensorflow/serving/predict"


def test_saved_model_cli_run_sample(exported, generator, tmp_path):
  proc = saved_model_cli("run", "--dir", exported, "--tag_set", "serve", "--signature_def",
                         "sample", "--input_exprs", "label=[0,1,2];seed=7",
                         "--outdir", str(tmp_path))
  assert proc.returncode == 0, proc.stderr[-2000:]
  images = np.load(tmp_path / "images.npy")
  pixels = np.load(tmp_path / "images_uint8.npy")
  z = np.load(tmp_path / "z.npy")
  assert images.shape == pixels.shape == (3, 8, 8, 1) and z.shape == (3, LATENT)
  assert images.dtype == np.float32 and pixels.dtype == np.uint8
  # The documented seed rule, and the Keras generator in inference mode on that z.
  np.testing.assert_array_equal(z, generators.sample_latent(3, LATENT, 7).numpy())
  expected = generator([z, tf.constant([0, 1, 2])], training=False).numpy()
  np.testing.assert_allclose(images, expected, atol=1e-5)


CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf

    data, path = sys.argv[1], sys.argv[2]
    z, labels = np.load(data + "/z.npy"), np.load(data + "/labels.npy")
    loaded = tf.saved_model.load(path)
    generate, sample = loaded.signatures["serving_default"], loaded.signatures["sample"]
    out = generate(z=tf.constant(z), label=tf.constant(labels))
    images = out["images"].numpy()
    np.testing.assert_allclose(images, np.load(data + "/expected.npy"), atol=1e-5)
    rule = np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(out["images_uint8"].numpy(), rule)
    # Inference-mode BatchNorm: an image does not depend on the rest of its batch.
    alone = generate(z=tf.constant(z[2:3]), label=tf.constant(labels[2:3]))["images"].numpy()
    np.testing.assert_allclose(alone[0], images[2], atol=1e-6)
    draw = lambda seed: sample(label=tf.constant(labels), seed=tf.constant(seed, tf.int64))
    a, b, c = draw(7), draw(7), draw(8)
    np.testing.assert_array_equal(a["images"].numpy(), b["images"].numpy())
    np.testing.assert_array_equal(a["z"].numpy(), np.load(data + "/z7.npy"))
    np.testing.assert_allclose(a["images"].numpy(), np.load(data + "/sample7.npy"), atol=1e-5)
    assert np.abs(a["images"].numpy() - c["images"].numpy()).max() > 1e-3
    assert np.abs(a["z"].numpy() - c["z"].numpy()).max() > 1e-3
    # A longer label list extends the latents of a shorter one (row i depends on (seed, i)).
    head = sample(label=tf.constant(labels[:2]), seed=tf.constant(7, tf.int64))["z"].numpy()
    np.testing.assert_array_equal(head, a["z"].numpy()[:2])
    for bad_z, bad_labels in ((z, labels + 10), (z, -labels - 1), (z[:2], labels)):
      try:
        generate(z=tf.constant(bad_z), label=tf.constant(bad_labels))
      except tf.errors.InvalidArgumentError:
        continue
      raise AssertionError("a bad request was served")
    print("CHILD-OK")
""")


def test_fresh_process_matches_keras_generator(exported, generator, tmp_path):
  rng = np.random.default_rng(1)
  z = rng.uniform(size=(6, LATENT)).astype(np.float32)
  labels = np.array([0, 3, 9, 3, 1, 7], np.int32)
  expected = generator([z, labels], training=False).numpy()
  z7 = generators.sample_latent(6, LATENT, 7).numpy()
  np.save(tmp_path / "z.npy", z)
  np.save(tmp_path / "labels.npy", labels)
  np.save(tmp_path / "expected.npy", expected)
  np.save(tmp_path / "z7.npy", z7)
  np.save(tmp_path / "sample7.npy", generator([z7, labels], training=False).numpy())
  script = tmp_path / "child.py"
  script.write_text(CHILD)
  proc = subprocess.run([sys.executable, str(script), str(tmp_path), exported],
                        capture_output=True, text=True, timeout=120, env=ENV)
  assert proc.returncode == 0 and "CHILD-OK" in proc.stdout, proc.stderr[-3000:]
  # The match is with inference mode specifically: training-mode BN gives other images.
  twin = make_tiny_generator()
  train_mode = twin([z, labels], training=True).numpy()
  assert np.abs(train_mode - expected).max() > 1e-2


def test_metadata_holds_training_facts_and_export_fields(exported):
  meta = serving.read_metadata(exported)
  for key, value in METADATA.items():
    assert meta[key] == value, key
  assert meta["latent_dim"] == LATENT and meta["num_classes"] == CLASSES
  assert meta["image_shape"] == [8, 8, 1] and meta["version"] == 1
  assert meta["dp_sinkhorn_tf_version"] == __version__
  assert meta["tensorflow_version"] == tf.__version__
  assert_no_timestamp(meta)
  sigs = meta["signatures"]
  assert sigs["serving_default"]["inputs"] == {
      "z": {"dtype": "float32", "shape": [None, LATENT]},
      "label": {"dtype": "int32", "shape": [None]}}
  assert sigs["sample"]["inputs"]["seed"] == {"dtype": "int64", "shape": []}
  assert sigs["sample"]["outputs"]["images_uint8"] == {"dtype": "uint8",
                                                       "shape": [None, 8, 8, 1]}
  assert meta["generator"]["family"] == "DCGANGenerator" and meta["generator"]["hidden"] == 8


def test_every_file_and_folder_of_an_export_has_the_fixed_time(generator, tmp_path):
  base = tmp_path / "new" / "export"  # the export creates base and the model folder
  path = export_lib.export_generator(generator, str(base), "g", None, METADATA)
  assert len(list(os.walk(path))) >= 3  # the version, variables/, assets.extra/, …
  assert_fixed_times(path, str(base))
  assert os.stat(tmp_path / "new").st_mtime == files.FIXED_TIME  # created by the export
  assert os.stat(tmp_path).st_mtime != files.FIXED_TIME  # not the export's: left alone


def test_non_finite_and_numpy_metadata_become_strict_json(generator, tmp_path):
  path = export_lib.export_generator(generator, str(tmp_path), "g", 3,
                                 {"epsilon": float("inf"), "steps": np.int64(4),
                                  "image_shape": (8, 8, 1)})
  text = open(os.path.join(path, "assets.extra", "metadata.json")).read()
  meta = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
  assert meta["epsilon"] == "inf" and meta["steps"] == 4 and meta["version"] == 3


# ---- versions and atomicity -----------------------------------------------------------------

def test_versions_count_up_and_are_never_overwritten(generator, tmp_path):
  model_dir = tmp_path / "generator"
  first = export_lib.export_generator(generator, str(tmp_path))
  second = export_lib.export_generator(generator, str(tmp_path))
  assert (os.path.basename(first), os.path.basename(second)) == ("1", "2")
  pb = os.path.join(first, "saved_model.pb")
  before = (os.stat(pb).st_ino, open(pb, "rb").read())  # times are fixed: not a witness
  with pytest.raises(FileExistsError, match=r"--version=1: .* already exists"):
    export_lib.export_generator(generator, str(tmp_path), version=1)
  assert (os.stat(pb).st_ino, open(pb, "rb").read()) == before
  assert export_lib.export_generator(generator, str(tmp_path), version=7).endswith("7")
  assert export_lib.next_version(str(model_dir)) == 8
  assert model_entries(model_dir) == ["1", "2", "7"]


class _Boom(RuntimeError):
  pass


@pytest.mark.parametrize("where", ["after_save", "during_save"])
def test_interrupted_export_leaves_no_version_and_no_temp_dir(generator, tmp_path, monkeypatch,
                                                              where):
  real_save = tf.saved_model.save

  def save_then_fail(obj, path, **kwargs):
    if where == "during_save":  # a partial directory exists when the failure hits
      os.makedirs(os.path.join(path, "variables"))
      raise _Boom()
    real_save(obj, path, **kwargs)
    assert os.path.exists(os.path.join(path, "saved_model.pb"))

  def fail_metadata(*args):
    raise _Boom()

  monkeypatch.setattr(export_lib.tf.saved_model, "save", save_then_fail)
  if where == "after_save":
    monkeypatch.setattr(export_lib, "_write_metadata", fail_metadata)
  with pytest.raises(_Boom):
    export_lib.export_generator(generator, str(tmp_path / "fresh"), "generator", None, METADATA)
  assert not (tmp_path / "fresh").exists()  # nothing at all: the dirs it made are gone too
  # With an existing model directory: version 1 survives, no version 2, no temp dir.
  monkeypatch.undo()
  export_lib.export_generator(generator, str(tmp_path / "kept"))
  monkeypatch.setattr(export_lib.tf.saved_model, "save", save_then_fail)
  if where == "after_save":
    monkeypatch.setattr(export_lib, "_write_metadata", fail_metadata)
  with pytest.raises(_Boom):
    export_lib.export_generator(generator, str(tmp_path / "kept"))
  assert model_entries(tmp_path / "kept" / "generator") == ["1"]


@pytest.mark.parametrize("kwargs,match", [
    (dict(model_name="a/b"), "--model_name"), (dict(model_name=".hidden"), "--model_name"),
    (dict(version=0), "--version"), (dict(version=True), "--version"),
    (dict(metadata={"x": object()}), "metadata"),
    (dict(metadata={"latent_dim": 3}), "latent_dim"),
    (dict(metadata={"image_shape": [28, 28, 1]}), "image_shape"),
    (dict(metadata={"label_names": ["a", "b"]}), "label_names")])
def test_bad_arguments_are_refused_before_writing(generator, tmp_path, kwargs, match):
  with pytest.raises(export_lib.ExportError, match=match):
    export_lib.export_generator(generator, str(tmp_path / "base"), **kwargs)
  assert not (tmp_path / "base").exists()


# ---- from a run directory -------------------------------------------------------------------

TRAIN_FLAGS = ["--dataset=digits", "--batch_size=8", "--steps=2", "--noise_multiplier=1",
               "--target_epsilon=10", "--latent_dim=4", "--embed_dim=2", "--hidden=4",
               "--sinkhorn_epsilon=0.5", "--sinkhorn_max_iterations=5", "--log_every=1",
               "--sample_every=1000", "--checkpoint_every=1000"]


def run_module(module, *args, timeout=300):
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout, env=ENV)


def error_lines(stderr: str) -> list:
  return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A 2-step DP run of dp_sinkhorn_tf.main, which exports version 1 itself (--export)."""
  workdir = str(tmp_path_factory.mktemp("run") / "digits")
  proc = run_module("dp_sinkhorn_tf.main", f"--workdir={workdir}", *TRAIN_FLAGS)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


def _images(version_dir, z, labels):
  fn = tf.saved_model.load(version_dir).signatures["serving_default"]
  return fn(z=tf.constant(z), label=tf.constant(labels))["images"].numpy()


def test_cli_exports_a_run_like_training_does(run_dir):
  model_dir = os.path.join(run_dir, "export", "generator")
  assert model_entries(model_dir) == ["1"]  # written by main's --export
  proc = run_module("dp_sinkhorn_tf.export", f"--workdir={run_dir}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  path = proc.stdout.strip().splitlines()[-1]
  assert path == os.path.join(model_dir, "2") and model_entries(model_dir) == ["1", "2"]
  restored = run_export.restore_run(run_dir)
  z = generators.sample_latent(5, 4, 3).numpy()
  labels = np.array([0, 2, 4, 6, 8], np.int32)
  expected = restored.generator([z, labels], training=False).numpy()
  np.testing.assert_allclose(_images(path, z, labels), expected, atol=1e-5)
  np.testing.assert_allclose(_images(os.path.join(model_dir, "1"), z, labels), expected,
                             atol=1e-5)
  meta, by_main = serving.read_metadata(path), serving.read_metadata(os.path.join(model_dir, "1"))
  ledger = json.load(open(os.path.join(run_dir, "privacy_ledger.json")))
  assert meta["steps"] == ledger["steps_taken"] == 2 and meta["checkpoint_step"] == 2
  assert meta["weights"] == "generator" and meta["latent_dim"] == 4
  assert meta["neighbouring_relation"].startswith("add/remove one record")
  for key in ("epsilon", "delta", "accountant", "neighbouring_relation", "dp", "mechanism",
              "noise_multiplier", "l2_norm_clip", "sample_rate", "steps", "dataset",
              "image_shape", "label_names", "weights"):
    if isinstance(by_main[key], float):
      assert meta[key] == pytest.approx(by_main[key]), key
    else:
      assert meta[key] == by_main[key], key
  assert "--hidden=4" in meta["training_flags"]
  assert_no_timestamp(meta)
  assert_no_timestamp(by_main)
  assert os.stat(run_dir).st_mtime == files.FIXED_TIME  # stamped again after the export
  assert_fixed_times(os.path.join(run_dir, "export"))


def test_cli_errors_are_one_line_and_write_nothing(run_dir, tmp_path, capsys):
  missing = tmp_path / "nope"
  proc = run_module("dp_sinkhorn_tf.export", f"--workdir={missing}")
  errors = error_lines(proc.stderr)
  assert proc.returncode != 0 and len(errors) == 1 and f"--workdir={missing}" in errors[0]
  assert not missing.exists()
  model_dir = os.path.join(run_dir, "export", "generator")
  before = model_entries(model_dir)
  for argv, flag in [([f"--workdir={run_dir}", "--version=1"], "--version=1"),
                     ([f"--workdir={run_dir}", "--version=0"], "--version=0"),
                     ([f"--workdir={run_dir}", f"--checkpoint={tmp_path}"], "--checkpoint="),
                     ([f"--workdir={run_dir}", "--weights=bogus"], "--weights=bogus"),
                     ([f"--workdir={run_dir}", "--weights=ema"], "--weights=ema: "),
                     ([f"--workdir={tmp_path}"], f"--workdir={tmp_path}: no flags.txt")]:
    assert export.main(["export", *argv]) != 0
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and flag in errors[0], errors
  assert model_entries(model_dir) == before and os.listdir(tmp_path) == []


def _copy_run(run_dir, dest, flags_edit=None):
  os.makedirs(dest)
  for name in ("flags.txt", "privacy.json", "privacy_ledger.json", "run.json",
               "data_spec.json"):
    shutil.copy(os.path.join(run_dir, name), dest)
  if flags_edit:
    path = os.path.join(dest, "flags.txt")
    text = open(path).read()
    open(path, "w").write(text.replace(*flags_edit))
  return str(dest)


def test_checkpoint_with_ema_exports_the_ema_weights(run_dir, tmp_path):
  workdir = _copy_run(run_dir, tmp_path / "ema")
  restored = run_export.restore_run(run_dir)
  raw = restored.generator
  ema = generators.make_generator("dcgan", (8, 8, 1), 10, latent_dim=4, embed_dim=2, hidden=4,
                                  depth=1, output="tanh", precision="float32")
  for var in ema.variables:
    var.assign(var + 0.25)
  run_id = json.load(open(os.path.join(run_dir, "run.json")))["run_id"]
  ckpt = tf.train.Checkpoint(generator=raw, ema_generator=ema,
                             step=tf.Variable(5, dtype=tf.int64),
                             run_id=tf.Variable(run_id, dtype=tf.string))
  prefix = ckpt.write(os.path.join(workdir, "chk", "ckpt-5"))
  path = run_export.export_run(workdir, checkpoint=prefix, model_name="ema_model")
  assert path == os.path.join(workdir, "export", "ema_model", "1")
  z = generators.sample_latent(4, 4, 0).numpy()
  labels = np.array([1, 2, 3, 4], np.int32)
  got = _images(path, z, labels)
  np.testing.assert_allclose(got, ema([z, labels], training=False).numpy(), atol=1e-5)
  assert np.abs(got - raw([z, labels], training=False).numpy()).max() > 1e-3
  meta = serving.read_metadata(path)
  assert meta["weights"] == "ema_generator" and meta["checkpoint_step"] == 5


def test_weights_picks_the_raw_or_the_ema_generator(run_dir, tmp_path):
  workdir = _copy_run(run_dir, tmp_path / "both")
  raw = run_export.restore_run(run_dir).generator
  ema = generators.make_generator("dcgan", (8, 8, 1), 10, latent_dim=4, embed_dim=2, hidden=4,
                                  depth=1, output="tanh", precision="float32")
  for ema_var, var in zip(ema.variables, raw.variables):
    ema_var.assign(var - 0.25)
  run_id = json.load(open(os.path.join(run_dir, "run.json")))["run_id"]
  prefix = tf.train.Checkpoint(generator=raw, ema_generator=ema,
                               step=tf.Variable(7, dtype=tf.int64),
                               run_id=tf.Variable(run_id, dtype=tf.string)).write(
                                   os.path.join(workdir, "chk", "ckpt-7"))
  z = generators.sample_latent(4, 4, 1).numpy()
  labels = np.array([0, 3, 5, 9], np.int32)
  want = {"raw": raw([z, labels], training=False).numpy(),
          "ema": ema([z, labels], training=False).numpy()}
  assert np.abs(want["raw"] - want["ema"]).max() > 1e-3
  for weights, key in [("raw", "generator"), ("ema", "ema_generator"), ("auto", "ema_generator")]:
    path = run_export.export_run(workdir, checkpoint=prefix, model_name=weights, weights=weights)
    np.testing.assert_allclose(_images(path, z, labels), want["ema" if key != "generator"
                                                              else "raw"], atol=1e-5)
    assert serving.read_metadata(path)["weights"] == key


def test_ema_weights_from_a_checkpoint_without_them_are_refused(run_dir):
  with pytest.raises(export_lib.ExportError, match="^--weights=ema: .*no ema_generator"):
    run_export.restore_run(run_dir, weights="ema")
  with pytest.raises(export_lib.ExportError, match="^--weights='best': expected one of"):
    run_export.restore_run(run_dir, weights="best")
  assert run_export.restore_run(run_dir, weights="raw").weights == "generator"


def test_export_config_holds_every_flag_under_its_own_name():
  names = {f.name for f in dataclasses.fields(export.ExportConfig)}
  assert names == set(export.FLAGS)
  assert tuple(run_export.WEIGHTS) == export.WEIGHTS  # the CLI's copy, kept TF-free
  export.FLAGS(["export", "--workdir=/some/run", "--weights=raw", "--version=3"])
  try:
    cfg = export.config_from_flags(export.FLAGS)
    assert (cfg.workdir, cfg.weights, cfg.version, cfg.checkpoint) == ("/some/run", "raw", 3,
                                                                      None)
    with pytest.raises(dataclasses.FrozenInstanceError):
      cfg.weights = "ema"
  finally:
    export.FLAGS.unparse_flags()
  with pytest.raises(ValueError, match="^--workdir: required"):
    export.ExportConfig(workdir="", checkpoint=None, model_name=None, version=None,
                        export_dir=None, weights="auto")


@pytest.mark.parametrize("edit,match", [
    (("--hidden=4", "--hidden=6"), "--checkpoint="),
    (("--latent_dim=4", "--latent_dim=0"), "flags.txt: --latent_dim=0")])
def test_flags_that_do_not_fit_the_checkpoint_are_refused(run_dir, tmp_path, edit, match):
  workdir = _copy_run(run_dir, tmp_path / "bad", edit)
  with pytest.raises(export_lib.ExportError, match=match):
    run_export.export_run(workdir, checkpoint=os.path.join(run_dir, "checkpoints"))
  assert not os.path.exists(os.path.join(workdir, "export"))


def test_dp_run_without_ledger_is_refused(run_dir, tmp_path):
  workdir = _copy_run(run_dir, tmp_path / "noledger")
  os.remove(os.path.join(workdir, "privacy_ledger.json"))
  with pytest.raises(export_lib.ExportError, match="privacy_ledger.json"):
    run_export.export_run(workdir, checkpoint=os.path.join(run_dir, "checkpoints"))
  assert not os.path.exists(os.path.join(workdir, "export"))


def test_a_checkpoint_of_another_run_is_not_stamped_with_this_runs_epsilon(run_dir, tmp_path):
  # Before: export --checkpoint=DIR stamped the workdir's ε on any checkpoint.
  other = str(tmp_path / "other")
  proc = run_module("dp_sinkhorn_tf.main", f"--workdir={other}", *TRAIN_FLAGS, "--noexport")
  assert proc.returncode == 0, proc.stderr[-3000:]
  with pytest.raises(export_lib.ExportError, match="written by run .* not by"):
    run_export.export_run(run_dir, checkpoint=os.path.join(other, "checkpoints"))
  proc = run_module("dp_sinkhorn_tf.export", f"--workdir={run_dir}",
                    f"--checkpoint={os.path.join(other, 'checkpoints')}")
  errors = error_lines(proc.stderr)
  assert proc.returncode == 2 and len(errors) == 1 and "written by run" in errors[0]
  # A checkpoint written without any run id (an older version) is refused too.
  restored = run_export.restore_run(run_dir)
  prefix = tf.train.Checkpoint(generator=restored.generator).write(str(tmp_path / "old" / "c"))
  with pytest.raises(export_lib.ExportError, match="no run id"):
    run_export.export_run(run_dir, checkpoint=prefix, export_dir=str(tmp_path / "x"))


def test_export_metadata_names_the_run_and_says_it_is_private(run_dir):
  meta = serving.read_metadata(os.path.join(run_dir, "export", "generator", "1"))
  run = json.load(open(os.path.join(run_dir, "run.json")))
  assert meta["run_id"] == run["run_id"] and meta["private"] is True
  assert meta["private_reason"] is None
  text = json.dumps(meta)
  assert "data_fingerprint" not in text and "privacy-key" not in text


def test_the_export_builds_the_generator_from_the_runs_data_spec(run_dir, tmp_path):
  # No table of data-set shapes: the shape and the classes come from data_spec.json.
  from dp_sinkhorn_tf.data import spec as data_spec

  spec = data_spec.read_spec(os.path.join(run_dir, "data_spec.json"))
  assert spec.image_shape == (8, 8, 1) and spec.num_classes == 10 and spec.source == "digits"
  meta = serving.read_metadata(os.path.join(run_dir, "export", "generator", "1"))
  assert data_spec.DataSpec.from_json(meta["data_spec"], "metadata") == spec
  assert meta["privacy_unit"] == "record"
  checkpoints = os.path.join(run_dir, "checkpoints")
  missing = _copy_run(run_dir, tmp_path / "nospec")
  os.remove(os.path.join(missing, "data_spec.json"))
  with pytest.raises(export_lib.ExportError, match="no data_spec.json .*--if_finished=skip"):
    run_export.export_run(missing, checkpoint=checkpoints)
  # A spec that does not describe the checkpoint's generator is refused, not exported.
  other = _copy_run(run_dir, tmp_path / "otherspec")
  bigger = dataclasses.replace(spec, image_shape=(16, 16, 1))
  open(os.path.join(other, "data_spec.json"), "w").write(bigger.dumps())
  with pytest.raises(export_lib.ExportError, match="--checkpoint="):
    run_export.export_run(other, checkpoint=checkpoints)
  assert not os.path.exists(os.path.join(other, "export"))


def test_a_truncated_or_garbage_checkpoint_is_one_line(run_dir, tmp_path):
  workdir = _copy_run(run_dir, tmp_path / "corrupt")
  shutil.copytree(os.path.join(run_dir, "checkpoints"), os.path.join(workdir, "checkpoints"))
  ckpts = os.path.join(workdir, "checkpoints")
  for name in os.listdir(ckpts):
    if ".data-" in name:
      path = os.path.join(ckpts, name)
      open(path, "r+b").truncate(10)
  proc = run_module("dp_sinkhorn_tf.export", f"--workdir={workdir}")
  errors = error_lines(proc.stderr)
  assert proc.returncode == 2 and len(errors) == 1 and "ckpt-" in errors[0], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  for name in os.listdir(ckpts):
    if name.endswith(".index"):
      open(os.path.join(ckpts, name), "wb").write(b"garbage")
  proc = run_module("dp_sinkhorn_tf.export", f"--workdir={workdir}")
  errors = error_lines(proc.stderr)
  assert proc.returncode == 2 and len(errors) == 1 and "unreadable" in errors[0]
  assert not os.path.exists(os.path.join(workdir, "export"))

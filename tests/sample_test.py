"""Tests for the dp_sinkhorn_tf.sample command line: PNG / NPZ output, flag errors."""

import dataclasses
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from dp_sinkhorn_tf import sample
from dp_sinkhorn_tf.models import generators
from dp_sinkhorn_tf.release import export_lib, synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
LATENT = 5
WIDTHS = dict(embed_dim=3, hidden=8, depth=1, output="tanh", precision="float32")


def _generator(seed):
  tf.keras.utils.set_random_seed(seed)
  return generators.make_generator("dcgan", (8, 8, 1), 10, latent_dim=LATENT, **WIDTHS)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  """A model directory with versions 1 and 2 (different weights); returns (dir, gens)."""
  base = tmp_path_factory.mktemp("export")
  gens = {1: _generator(1), 2: _generator(2)}
  for version, gen in gens.items():
    export_lib.export_generator(gen, str(base), "generator", version,
                            {"epsilon": 1.5, "delta": 1e-5, "dp": True})
  return str(base / "generator"), gens


def run_sample(*args):
  return subprocess.run([sys.executable, "-m", "dp_sinkhorn_tf.sample", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=120, env=ENV)


def test_png_grid_from_the_command_line(model, tmp_path):
  model_dir, _ = model
  wide, tall = tmp_path / "wide.png", tmp_path / "tall.png"
  proc = run_sample(f"--model={model_dir}", "--labels=0,1,2", "--num_per_label=8",
                    "--seed=0", f"--out={wide}")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert sample.main(["sample", f"--model={model_dir}/1", "--labels=0,1,2,3,4,5,6,7",
                      "--num_per_label=2", f"--out={tall}"]) == 0
  import matplotlib.image
  for path in (wide, tall):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  # 3 rows × 8 columns of 8×8 images is wide; 8 rows × 2 columns is tall.
  h, w = matplotlib.image.imread(wide).shape[:2]
  assert w > 2 * h
  h, w = matplotlib.image.imread(tall).shape[:2]
  assert h > 2 * w
  assert sorted(os.listdir(tmp_path)) == ["tall.png", "wide.png"]  # no temp files left


def test_npz_holds_the_highest_versions_samples(model, tmp_path):
  model_dir, gens = model
  out = tmp_path / "s.npz"
  assert sample.main(["sample", f"--model={model_dir}", "--labels=3,7", "--num_per_label=4",
                      "--seed=9", f"--out={out}"]) == 0
  data = np.load(out)
  assert set(data.files) == {"images", "images_uint8", "labels", "z", "seed"}
  assert data["images"].shape == data["images_uint8"].shape == (8, 8, 8, 1)
  assert data["images"].dtype == np.float32 and data["images_uint8"].dtype == np.uint8
  np.testing.assert_array_equal(data["labels"], [3, 3, 3, 3, 7, 7, 7, 7])
  assert data["labels"].dtype == np.int32 and int(data["seed"]) == 9
  np.testing.assert_array_equal(data["z"], generators.sample_latent(8, LATENT, 9).numpy())
  expected = gens[2]([data["z"], data["labels"]], training=False).numpy()  # version 2
  np.testing.assert_allclose(data["images"], expected, atol=1e-5)
  rule = np.clip(np.round((data["images"] + 1) * 127.5), 0, 255).astype(np.uint8)
  np.testing.assert_array_equal(data["images_uint8"], rule)
  # Same flags → same file content; another seed → other images.
  again, other = tmp_path / "again.npz", tmp_path / "other.npz"
  sample.main(["sample", f"--model={model_dir}", "--labels=3,7", "--num_per_label=4", "--seed=9",
               f"--out={again}"])
  sample.main(["sample", f"--model={model_dir}", "--labels=3,7", "--num_per_label=4", "--seed=10",
               f"--out={other}"])
  np.testing.assert_array_equal(np.load(again)["images"], data["images"])
  assert np.abs(np.load(other)["images"] - data["images"]).max() > 1e-3


def test_failed_write_leaves_no_file(model, tmp_path, monkeypatch):
  model_dir, _ = model

  def boom(*args, **kwargs):
    raise OSError("disk full")

  monkeypatch.setattr(synthetic.np, "savez", boom)
  with pytest.raises(OSError, match="disk full"):
    sample.main(["sample", f"--model={model_dir}", "--labels=1", "--num_per_label=1",
                 f"--out={tmp_path / 'x.npz'}"])
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("args,flag", [
    (["--labels=0,10"], "--labels=0,10"),
    (["--labels=-1"], "--labels=-1"),
    (["--labels=a,b"], "--labels=a,b"),
    (["--num_per_label=0"], "--num_per_label=0"),
    (["--num_per_label=two"], "--num_per_label=two"),
    (["--seed=1.5"], "--seed=1.5"),
    (["--out={tmp}/grid.jpg"], "--out="),
    (["--out={tmp}/missing/grid.png"], "--out="),
    (["--model={tmp}"], "--model="),
    (["--model={tmp}/nope"], "--model="),
])
def test_bad_flags_fail_in_one_line_and_write_nothing(model, tmp_path, args, flag):
  model_dir, _ = model
  argv = [f"--model={model_dir}", f"--out={tmp_path}/grid.png"]
  argv += [a.format(tmp=tmp_path) for a in args]
  proc = run_sample(*argv)
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert proc.returncode == 2 and len(errors) == 1 and flag in errors[0], proc.stderr
  assert os.listdir(tmp_path) == []


def test_sample_config_is_the_checked_flags(model, tmp_path):
  model_dir, _ = model
  names = {f.name for f in dataclasses.fields(synthetic.SampleConfig)}
  assert set(sample.FLAGS) <= names  # every flag, plus what checking it resolved
  out = str(tmp_path / "grid.PNG")
  sample.FLAGS(["sample", f"--model={model_dir}", "--labels=3, 1", f"--out={out}", "--seed=-4"])
  try:
    cfg = sample.config_from_flags(sample.FLAGS)
  finally:
    sample.FLAGS.unparse_flags()
  assert cfg.version_dir == os.path.join(model_dir, "2") and cfg.version == 2
  assert cfg.labels == (3, 1) and cfg.suffix == ".png" and cfg.seed == -4
  assert cfg.num_per_label == 8 and cfg.metadata["epsilon"] == 1.5
  with pytest.raises(dataclasses.FrozenInstanceError):
    cfg.seed = 0
  assert os.listdir(tmp_path) == []  # checking writes nothing


def test_a_corrupt_saved_model_is_one_line_naming_the_file(model, tmp_path):
  broken = tmp_path / "generator"
  shutil.copytree(model[0], broken)
  pb = broken / "2" / "saved_model.pb"
  pb.write_bytes(pb.read_bytes()[:100])
  out = tmp_path / "grid.png"
  proc = run_sample(f"--model={broken}", f"--out={out}")
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
  assert "saved_model.pb" in errors[0] and "Traceback" not in proc.stderr
  assert not out.exists()


# ---- synthetic data sets: --format=folder|npz|tfrecord ------------------------------------

NAMES = ["owl", "cat", "dog"]  # not sorted: a folder reads them back in sorted order


def _export_model(base, name, version, seed, shape, names, labelled, unit, metadata):
  """Export a small DCGAN of `shape` for the classes `names` with a run's metadata (its data
  spec built from the same arguments); returns the model directory."""
  tf.keras.utils.set_random_seed(seed)
  gen = generators.make_generator("dcgan", shape, len(names), latent_dim=LATENT, **WIDTHS)
  spec = {"source": metadata["dataset"], "image_shape": list(shape), "label_names": names,
          "labelled": labelled, "privacy_unit": unit}
  if labelled:
    spec["num_classes"] = len(names)
  return export_lib.export_generator(
      gen, str(base), name, version,
      {**metadata, "dp": True, "label_names": names, "data_spec": spec, "privacy_unit": unit})


@pytest.fixture(scope="module")
def named_model(tmp_path_factory):
  """An 8×8 RGB model of the classes NAMES (a run's metadata: ε, δ, run id, unit, spec)."""
  return _export_model(tmp_path_factory.mktemp("named"), "pets", 4, 3, (8, 8, 3), NAMES, True,
                       "group", {"epsilon": 2.5, "delta": 1e-6, "private": True,
                                 "run_id": "run-abc", "accountant": "rdp",
                                 "dataset": "folder:/data/pets"})


@pytest.fixture(scope="module")
def flat_model(tmp_path_factory):
  """A model trained on unlabelled data: one class, "all"."""
  return _export_model(tmp_path_factory.mktemp("flat"), "scans", 1, 4, (8, 8, 1), ["all"],
                       False, "record", {"epsilon": 1.0, "delta": 1e-5, "run_id": "run-flat",
                                         "dataset": "folder:/data/scans"})


def _read_back(fmt, out):
  from dp_sinkhorn_tf.data import sources
  from dp_sinkhorn_tf.data import spec as data_spec
  arg = {"folder": str(out), "npz": f"{out}/synthetic.npz",
         "tfrecord": f"{out}/*.tfrecord"}[fmt]
  return sources.load(data_spec.parse_source(f"{fmt}:{arg}"), "train", sources.Options())


def _by_class(pixels, labels, names):
  """{class name: the images of that class, in order}."""
  return {name: pixels[labels == k] for k, name in enumerate(names)}


@pytest.mark.parametrize("fmt", ["folder", "npz", "tfrecord"])
def test_a_synthetic_data_set_is_read_back_by_its_data_source(named_model, tmp_path, fmt):
  out = tmp_path / "synthetic"
  assert sample.main(["sample", f"--model={named_model}", f"--format={fmt}",
                      "--num_per_label=5", "--seed=7", f"--out={out}"]) == 0
  # What sample drew: the export's images_uint8, label-major, from seed 7.
  drawn = synthetic.draw(named_model, [0, 1, 2], 5, 7)
  expected = _by_class(drawn["images_uint8"], drawn["labels"], NAMES)
  loaded = _read_back(fmt, out)
  assert loaded.pixels.shape == (15, 8, 8, 3) and loaded.pixels.dtype == np.uint8
  assert loaded.labelled and loaded.notes == ()  # the manifest is no skipped file
  names = {"folder": ("cat", "dog", "owl"),  # sorted folder names
           "npz": tuple(NAMES),  # the export's order, with its names
           "tfrecord": ("0", "1", "2")}[fmt]  # indices in the export's order (names: manifest)
  assert loaded.label_names == names
  got = _by_class(loaded.pixels, loaded.labels, loaded.label_names)
  for k, name in enumerate(NAMES):
    key = str(k) if fmt == "tfrecord" else name
    assert len(got[key]) == 5
    np.testing.assert_array_equal(got[key], expected[name])  # PNG / npz: lossless
  listing = sorted(os.listdir(out))
  assert "synthetic_manifest.json" in listing
  assert sorted(os.listdir(tmp_path)) == ["synthetic"]  # no temporary folder left
  if fmt == "folder":
    assert listing == ["cat", "dog", "owl", "synthetic_manifest.json"]
    assert sorted(os.listdir(out / "owl")) == [f"{i:06d}.png" for i in range(5)]
  elif fmt == "tfrecord":
    assert listing == ["synthetic-00000-of-00001.tfrecord", "synthetic_manifest.json"]


def test_the_manifest_says_what_the_images_are(named_model, tmp_path):
  import json
  out = tmp_path / "s"
  assert sample.main(["sample", f"--model={named_model}", "--format=folder", "--labels=dog,owl",
                      "--num_per_label=3", "--seed=-2", f"--out={out}"]) == 0
  manifest = json.loads((out / "synthetic_manifest.json").read_text())
  assert manifest["synthetic"] is True and manifest["format"] == "folder"
  assert (manifest["run_id"], manifest["epsilon"], manifest["delta"]) == ("run-abc", 2.5, 1e-6)
  assert manifest["privacy_unit"] == "group" and manifest["accountant"] == "rdp"
  assert manifest["seed"] == -2 and manifest["private"] is True
  assert manifest["counts"] == {"owl": 3, "cat": 0, "dog": 3} and manifest["num_images"] == 6
  assert manifest["requested"] == {"num_per_label": 3, "labels": ["dog", "owl"]}
  assert manifest["label_names"] == NAMES and manifest["image_shape"] == [8, 8, 3]
  assert manifest["model"]["path"] == named_model and manifest["model"]["version"] == 4
  assert manifest["model"]["model_name"] == "pets"
  assert manifest["read_back"] == f"--data=folder:{out}"
  assert sorted(os.listdir(out)) == ["dog", "owl", "synthetic_manifest.json"]  # no empty cat/


def test_an_unlabelled_model_writes_a_flat_folder(flat_model, tmp_path):
  out = tmp_path / "flat"
  assert sample.main(["sample", f"--model={flat_model}", "--format=folder", "--num=12",
                      f"--out={out}"]) == 0
  assert len([n for n in os.listdir(out) if n.endswith(".png")]) == 12
  loaded = _read_back("folder", out)
  assert loaded.pixels.shape == (12, 8, 8, 1) and not loaded.labelled
  assert loaded.label_names == ("all",) and loaded.notes == ()
  for fmt in ("npz", "tfrecord"):  # no labels written: read back as unlabelled too
    assert sample.main(["sample", f"--model={flat_model}", f"--format={fmt}", "--num=4",
                        f"--out={tmp_path / fmt}"]) == 0
    again = _read_back(fmt, tmp_path / fmt)
    assert again.pixels.shape == (4, 8, 8, 1) and not again.labelled


def test_proportions_are_rounded_to_sum_to_num(named_model, tmp_path):
  import json
  out = tmp_path / "p"
  assert sample.main(["sample", f"--model={named_model}", "--format=npz", "--num=7",
                      "--proportions=cat:0.3,dog:0.7", f"--out={out}"]) == 0
  loaded = _read_back("npz", out)
  assert np.bincount(loaded.labels, minlength=3).tolist() == [0, 2, 5]  # owl, cat, dog
  manifest = json.loads((out / "synthetic_manifest.json").read_text())
  assert manifest["counts"] == {"owl": 0, "cat": 2, "dog": 5}
  assert manifest["requested"] == {"num": 7, "proportions": {"cat": 0.3, "dog": 0.7}}
  # --num alone: as even as the total allows, over --labels (default: every class).
  out = tmp_path / "even"
  assert sample.main(["sample", f"--model={named_model}", "--format=tfrecord", "--num=8",
                      f"--out={out}"]) == 0
  assert np.bincount(_read_back("tfrecord", out).labels).tolist() == [3, 3, 2]


def test_an_existing_destination_is_refused_and_an_empty_one_filled(named_model, tmp_path,
                                                                    capsys):
  full = tmp_path / "full"
  full.mkdir()
  (full / "keep.txt").write_text("mine")
  argv = ["sample", f"--model={named_model}", "--format=folder", "--num_per_label=1"]
  assert sample.main(argv + [f"--out={full}"]) == 2
  errors = [line for line in capsys.readouterr().err.splitlines()
            if line.startswith("error:")]
  assert len(errors) == 1 and f"--out={full}" in errors[0] and "not empty" in errors[0]
  assert os.listdir(full) == ["keep.txt"]
  a_file = tmp_path / "a_file"
  a_file.write_text("x")
  assert sample.main(argv + [f"--out={a_file}"]) == 2
  assert "not a folder" in capsys.readouterr().err
  empty = tmp_path / "empty"
  empty.mkdir()
  assert sample.main(argv + [f"--out={empty}"]) == 0
  assert sorted(os.listdir(empty)) == ["cat", "dog", "owl", "synthetic_manifest.json"]
  assert sorted(os.listdir(tmp_path)) == ["a_file", "empty", "full"]


def test_a_failed_data_set_write_leaves_nothing(named_model, tmp_path, monkeypatch):
  from dp_sinkhorn_tf.io import files
  written = []
  real_write = files.write_bytes

  def fail_on_the_fourth(path, payload):
    if len(written) == 3:
      raise OSError(28, "No space left on device", path)
    written.append(path)
    real_write(path, payload)

  monkeypatch.setattr(files, "write_bytes", fail_on_the_fourth)
  with pytest.raises(OSError):
    sample.main(["sample", f"--model={named_model}", "--format=folder", "--num_per_label=2",
                 f"--out={tmp_path / 'out'}"])
  assert len(written) == 3 and os.listdir(tmp_path) == []


@pytest.mark.parametrize("args,flag", [
    (["--proportions=cat:0.5", "--format=npz"], "--proportions=cat:0.5: needs --num"),
    (["--proportions=cat", "--num=4"], "--proportions=cat: 'cat' is not CLASS:WEIGHT"),
    (["--proportions=cat:x", "--num=4"], "--proportions=cat:x: weight 'x'"),
    (["--proportions=cat:-1,dog:2", "--num=4"], "--proportions=cat:-1,dog:2: weight '-1'"),
    (["--proportions=cat:inf", "--num=4"], "--proportions=cat:inf: weight 'inf'"),
    (["--proportions=emu:1", "--num=4"], "--proportions=emu:1: 'emu' is neither"),
    (["--proportions=cat:1,1:2", "--num=4"], "--proportions=cat:1,1:2: class 'cat' is given"),
    (["--proportions=cat:0,dog:0", "--num=4"], "--proportions=cat:0,dog:0: the weights sum"),
    (["--proportions=cat:1", "--num=4", "--labels=dog"], "--labels=dog: not with"),
    (["--num=4", "--num_per_label=2"], "--num_per_label=2: not with --num=4"),
    (["--num=0"], "--num"),
    (["--format=grid", "--num=4", "--out={tmp}/g.png"], "--num=4: a grid has"),
    (["--format=grid"], "--out={tmp}/out: --format=grid writes a .png file"),
    (["--format=npz", "--out={tmp}/x.npz"], "--out={tmp}/x.npz: --format=npz writes a folder"),
    (["--format=folder", "--out={tmp}/missing/out"], "--out={tmp}/missing/out: directory"),
])
def test_bad_data_set_flags_are_one_line_naming_the_flag(named_model, tmp_path, capsys, args,
                                                          flag):
  argv = ["sample", f"--model={named_model}", "--format=folder", f"--out={tmp_path}/out"]
  argv += [a.format(tmp=tmp_path) for a in args]
  assert sample.main(argv) == 2
  errors = [line for line in capsys.readouterr().err.splitlines()
            if line.startswith("error:")]
  assert len(errors) == 1 and flag.format(tmp=tmp_path) in errors[0], errors
  assert os.listdir(tmp_path) == []


def test_a_label_name_that_cannot_name_a_folder_is_refused(tmp_path, capsys):
  tf.keras.utils.set_random_seed(5)
  gen = generators.make_generator("dcgan", (8, 8, 1), 2, latent_dim=LATENT, **WIDTHS)
  version = export_lib.export_generator(gen, str(tmp_path / "m"), "g", 1,
                                        {"label_names": ["a/b", "ok"]})
  argv = ["sample", f"--model={version}", "--num_per_label=1"]
  assert sample.main(argv + ["--format=folder", f"--out={tmp_path / 'o'}"]) == 2
  assert "--format=folder: class 'a/b' contains a path separator" in capsys.readouterr().err
  assert sample.main(argv + ["--format=folder", "--labels=ok", f"--out={tmp_path / 'o'}"]) == 0
  assert sample.main(argv + ["--format=npz", f"--out={tmp_path / 'n'}"]) == 0
  assert _read_back("npz", tmp_path / "n").label_names == ("a/b", "ok")

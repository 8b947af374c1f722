"""Tests for the dp_sinkhorn_tf.sample command line: PNG / NPZ output, flag errors."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from dp_sinkhorn_tf import sample
from dp_sinkhorn_tf.models import generators
from dp_sinkhorn_tf.release import export_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
LATENT = 5


def _generator(seed):
  tf.keras.utils.set_random_seed(seed)
  return generators.make_generator("dcgan", (8, 8, 1), 10, latent_dim=LATENT, embed_dim=3,
                               hidden=8)


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

  monkeypatch.setattr(sample.np, "savez", boom)
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
  names = {f.name for f in sample.dataclasses.fields(sample.SampleConfig)}
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
  with pytest.raises(sample.dataclasses.FrozenInstanceError):
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


def test_labels_by_name_or_index():
  names = ["cat", "dog", "owl"]
  assert sample.parse_labels("owl,cat", names) == [2, 0]
  assert sample.parse_labels("1, owl", names) == [1, 2]  # mixed
  assert sample.parse_labels(None, names) == [0, 1, 2]
  # A name wins over an index: folders named "1", "2", "3" are classes 0, 1, 2.
  assert sample.parse_labels("1,3", ["1", "2", "3"]) == [0, 2]
  assert sample.parse_labels("0", ["1", "2", "3"]) == [0]
  # An unlabelled (one-class) model: the label is optional, and 0 or its name work.
  assert sample.parse_labels(None, ["all"]) == [0]
  assert sample.parse_labels("all,0", ["all"]) == [0, 0]
  with pytest.raises(sample.FlagError, match=r"^--labels=emu: 'emu' is neither a class name "
                     r"\(cat, dog, owl\) nor a class index in \[0, 3\)"):
    sample.parse_labels("emu", names)
  with pytest.raises(sample.FlagError, match=r"3 outside \[0, num_classes=3\)"):
    sample.parse_labels("3", names)

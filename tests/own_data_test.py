"""End to end, the user's own data (issue 36): generated images in → main (a few steps) →
export → sample → evaluate on held-out images, for a folder with class sub-folders, a flat
(unlabelled) folder, npz: and tfrecord: inputs, and user-level privacy.

Everything runs in this process through each command's own main (the first path also as a
subprocess, as a user types it), on 8×8 images, so the file takes about a minute."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from dp_sinkhorn_tf import evaluate, export, main, sample
from dp_sinkhorn_tf.release import serving

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ("cat", "dog", "owl")
FAST = ["--batch_size=4", "--steps=3", "--noise_multiplier=1", "--target_epsilon=10",
        "--latent_dim=4", "--embed_dim=2", "--hidden=4", "--sinkhorn_epsilon=0.5",
        "--sinkhorn_max_iterations=5", "--nosinkhorn_jit", "--log_every=1",
        "--sample_every=1000", "--checkpoint_every=1000"]
EVAL = ["--num_samples=60", "--classifiers=logreg", "--max_epochs=1", "--nopaper_protocol",
        "--noshow_epochs"]


def _image(rng, k, channels):
  """An 8×8 image of class k: a bright band at row 2k plus noise (classes differ)."""
  x = rng.integers(0, 60, (8, 8, channels))
  x[2 * k:2 * k + 2] += 180
  return x.astype(np.uint8)


def _write_png(path, pixels):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as fh:
    fh.write(tf.io.encode_png(pixels).numpy())


def _class_folder(root, n, seed, channels=3):
  rng = np.random.default_rng(seed)
  for k, name in enumerate(CLASSES):
    for i in range(n):
      _write_png(os.path.join(root, name, f"{i:03d}.png"), _image(rng, k, channels))
  return root


def _flat_folder(root, n, seed):
  rng = np.random.default_rng(seed)
  for i in range(n):
    _write_png(os.path.join(root, f"{i:03d}.png"), _image(rng, i % 3, 1))
  return root


def _npz(path, n, seed):
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % 3
  images = np.stack([_image(rng, k, 1)[..., 0] for k in labels])
  np.savez(path, images=images, labels=labels, label_names=np.array(CLASSES))
  return path


def _tfrecord(path, n, seed):
  rng = np.random.default_rng(seed)
  with tf.io.TFRecordWriter(path) as writer:
    for i in range(n):
      feature = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(
                     value=[tf.io.encode_png(_image(rng, i % 3, 3)).numpy()])),
                 "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 3]))}
      writer.write(tf.train.Example(features=tf.train.Features(feature=feature))
                   .SerializeToString())
  return path


def _train(workdir, *args, capsys=None) -> str:
  """main in this process; returns what it printed."""
  flags.FLAGS.unparse_flags()
  main.parse_flags(["main", f"--workdir={workdir}", *FAST, *args])
  try:
    assert main.run(main.config_from_flags(flags.FLAGS), flags.FLAGS.flags_into_string()) == 0
  finally:
    flags.FLAGS.unparse_flags()
  return capsys.readouterr().out if capsys is not None else ""


def _export_sample_evaluate(workdir, tmp_path, labels, heldout, capsys, eval_args=()):
  """export (a second version) → sample --labels → evaluate --data=heldout; returns
  (metadata, sample npz, eval.json)."""
  assert export.main(["export", f"--workdir={workdir}"]) == 0
  version = capsys.readouterr().out.strip().splitlines()[-1]
  assert version.endswith(os.path.join("export", "generator", "2"))
  meta = serving.read_metadata(version)
  out = str(tmp_path / "s.npz")
  argv = ["sample", f"--model={os.path.dirname(version)}", "--num_per_label=2", f"--out={out}"]
  assert sample.main(argv + ([f"--labels={labels}"] if labels is not None else [])) == 0
  assert sample.main([*argv[:-1], f"--out={tmp_path / 's.png'}"] +
                     ([f"--labels={labels}"] if labels is not None else [])) == 0
  drawn = np.load(out)
  eval_out = tmp_path / "eval"
  assert evaluate.main(["evaluate", f"--model={version}", f"--workdir={workdir}",
                        f"--data={heldout}", f"--out={eval_out}", *EVAL, *eval_args]) == 0
  capsys.readouterr()
  with open(eval_out / "eval.json") as fh:
    report = json.load(fh)
  return meta, drawn, report


def test_a_folder_of_classes_from_the_command_line_to_evaluation(tmp_path, capsys):
  train = _class_folder(str(tmp_path / "train"), 8, 0)
  heldout = str(tmp_path / "heldout")
  _class_folder(heldout, 4, 1)
  os.rename(os.path.join(heldout, "dog"), os.path.join(tmp_path, "dog_away"))  # a subset
  workdir = str(tmp_path / "run")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run([sys.executable, "-m", "dp_sinkhorn_tf.main", f"--workdir={workdir}",
                         f"--data=folder:{train}", "--image_size=16", *FAST], cwd=ROOT,
                        capture_output=True, text=True, timeout=300, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (f"data folder:{train}: 24 private records, image shape (16, 16, 3), 3 classes "
          "['cat', 'dog', 'owl']") in proc.stdout
  assert "per record (N=24 records)" in proc.stdout and "epsilon per record" in proc.stdout
  assert "data_spec.json" in proc.stdout  # listed among the publishable artefacts
  spec = json.load(open(os.path.join(workdir, "data_spec.json")))
  assert spec["image_shape"] == [16, 16, 3] and spec["label_names"] == list(CLASSES)
  assert spec["source"] == f"folder:{train}" and spec["image_size"] == [16, 16]
  meta, drawn, report = _export_sample_evaluate(workdir, tmp_path, "owl,cat",
                                                f"folder:{heldout}", capsys)
  assert meta["label_names"] == list(CLASSES) and meta["image_shape"] == [16, 16, 3]
  assert meta["data_spec"] == spec and meta["privacy_unit"] == "record"
  assert meta["epsilon"] > 0 and meta["dataset"] == f"folder:{train}"
  assert list(drawn["labels"]) == [2, 2, 0, 0] and drawn["images"].shape == (4, 16, 16, 3)
  # The held-out folder (cat and owl only, 8×8) came in at the model's 16×16, labelled by
  # name: owl is class 2, not 1.
  assert report["test_size"] == 8 and set(report["accuracies"]) == {"logreg"}
  assert report["label_names"] == list(CLASSES) and report["dataset"] == f"folder:{heldout}"


def test_a_flat_folder_trains_an_unconditional_generator(tmp_path, capsys):
  train = _flat_folder(str(tmp_path / "train"), 12, 0)
  heldout = _flat_folder(str(tmp_path / "heldout"), 6, 1)
  workdir = str(tmp_path / "run")
  out = _train(workdir, f"--data=folder:{train}", capsys=capsys)
  assert "12 private records, image shape (8, 8, 1), unlabelled (one class" in out
  meta, drawn, report = _export_sample_evaluate(workdir, tmp_path, None, f"folder:{heldout}",
                                                capsys, ["--fid=pixels"])
  assert meta["num_classes"] == 1 and meta["data_spec"]["labelled"] is False
  assert list(drawn["labels"]) == [0, 0]  # no --labels: the one class
  assert report["accuracies"] == {} and "one class" in report["classifiers_note"]
  assert report["fid"] is not None and report["test_size"] == 6


def test_npz_input(tmp_path, capsys):
  workdir = str(tmp_path / "run")
  out = _train(workdir, f"--data=npz:{_npz(str(tmp_path / 'train.npz'), 24, 0)}",
               "--channels=3", capsys=capsys)
  assert "24 private records, image shape (8, 8, 3), 3 classes" in out
  meta, drawn, report = _export_sample_evaluate(
      workdir, tmp_path, "dog", f"npz:{_npz(str(tmp_path / 'test.npz'), 9, 1)}", capsys)
  assert meta["image_shape"] == [8, 8, 3] and list(drawn["labels"]) == [1, 1]
  assert report["test_size"] == 9  # grayscale held-out images converted to RGB as trained


def test_tfrecord_input(tmp_path, capsys):
  workdir = str(tmp_path / "run")
  out = _train(workdir, f"--data=tfrecord:{_tfrecord(str(tmp_path / 'train.rec'), 24, 0)}",
               capsys=capsys)
  assert "24 private records, image shape (8, 8, 3), 3 classes ['0', '1', '2']" in out
  meta, drawn, report = _export_sample_evaluate(
      workdir, tmp_path, "2", f"tfrecord:{_tfrecord(str(tmp_path / 'test.rec'), 6, 1)}", capsys)
  assert meta["label_names"] == ["0", "1", "2"] and list(drawn["labels"]) == [2, 2]
  assert report["test_size"] == 6


def test_user_level_privacy_from_group_sub_folders(tmp_path, capsys):
  train = tmp_path / "train"
  rng = np.random.default_rng(0)
  for k, name in enumerate(CLASSES):
    for person in ("ann", "bob", "cy", "dee"):
      for i in range(3):
        _write_png(str(train / name / person / f"{i}.png"), _image(rng, k, 1))
  workdir = str(tmp_path / "run")
  out = _train(workdir, f"--data=folder:{train}", "--privacy_unit=group",
               "--groups=subfolders", "--max_per_group=2", capsys=capsys)
  # 36 records in 4 groups (a person's images across the classes form one group).
  assert "36 private records in 4 groups (the unit of privacy)" in out
  assert "per group (N=4 groups)" in out and "epsilon per group" in out
  report = json.load(open(os.path.join(workdir, "privacy.json")))
  assert report["privacy_unit"] == "group" and report["max_per_group"] == 2
  assert "one group" in report["unit_of_privacy"]
  assert report["ledger"]["dataset_size"] == 4  # N for the accountant: the groups
  assert report["plan"]["sample_rate"] == pytest.approx(1.0)  # B = 4 of 4 groups
  spec = json.load(open(os.path.join(workdir, "data_spec.json")))
  assert spec["privacy_unit"] == "group" and spec["max_per_group"] == 2
  assert "36" not in json.dumps(spec)  # the record count is not published
  # A resume with another --max_per_group would take other records at the same steps
  # under the same noise: refused (a flag that shapes the released gradient; the keyed
  # fingerprint covers m as well, checked after the flags).
  flags.FLAGS.unparse_flags()
  main.parse_flags(["main", f"--workdir={workdir}", *FAST,
                    f"--data=folder:{train}", "--privacy_unit=group", "--groups=subfolders",
                    "--max_per_group=3"])
  try:
    with pytest.raises(SystemExit) as exit_info:
      main.run(main.config_from_flags(flags.FLAGS), flags.FLAGS.flags_into_string())
  finally:
    flags.FLAGS.unparse_flags()
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert "--max_per_group: 2 then, 3 now" in err and err.count("error:") == 1

"""Every command end to end on TF's in-memory file system (`ram://`), which stands in for
gs:// / hdfs:// without a network: a tiny training run with --workdir=ram://…, `export` to
ram://, `sample` (a grid and a synthetic folder) to ram://, `--data=folder:ram://…` reading
the synthetic folder back, `evaluate` reading the model, the run and held-out data from
ram:// and writing there (with an FID cache), and `audit --audit=run` (its work directory,
secret canary file, training run and export on ram://) writing its report there.

In process: ram:// lives in one process's memory. Nothing here touches the local disk but
pytest's own files; no part needed a local fallback. The step audit (`--audit=step`) is run
end to end on a local folder by tests/audit_test.py only: here its two writers are called on
ram:// directly, as its ~45 s canary search would double this file's time.
"""

import json
import os
import uuid

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from dp_sinkhorn_tf import audit, evaluate, export, sample
from dp_sinkhorn_tf import main as main_lib
from dp_sinkhorn_tf.data import sources
from dp_sinkhorn_tf.data import spec as data_spec
from dp_sinkhorn_tf.evaluation import audit_lib
from dp_sinkhorn_tf.io import files
from dp_sinkhorn_tf.release import synthetic

TINY = ["--dataset=digits", "--batch_size=16", "--hidden=4", "--latent_dim=4", "--embed_dim=2",
        "--noise_multiplier=1", "--target_epsilon=10", "--checkpoint_every=5",
        "--log_every=5", "--sample_every=10", "--sinkhorn_max_iterations=20"]


def _train(args) -> int:
  """dp_sinkhorn_tf.main in this process (its flags are the process's global ones)."""
  flags.FLAGS.unparse_flags()
  main_lib.parse_flags(["main", *args])
  try:
    cfg = main_lib.config_from_flags(flags.FLAGS)
    return main_lib.run(cfg, flags.FLAGS.flags_into_string())
  finally:
    flags.FLAGS.unparse_flags()


def _audit(args) -> int:
  """dp_sinkhorn_tf.audit in this process, parsed as absl.app.run would."""
  from dp_sinkhorn_tf import cli
  flags.FLAGS.unparse_flags()
  try:
    rest = cli.absl_parser(flags.FLAGS)(["audit", *args])
    return audit.main(rest)
  finally:
    flags.FLAGS.unparse_flags()


def _no_temporaries(root: str) -> None:
  for folder, dirs, names in files.walk(root):
    assert not [n for n in dirs + names if ".tmp-" in n], (folder, dirs, names)


@pytest.fixture(scope="module")
def root():
  path = f"ram://remote_test/{uuid.uuid4().hex}"
  tf.io.gfile.makedirs(path)
  yield path
  assert not os.path.exists("ram:")  # no ram:// path was taken for a local one


@pytest.fixture(scope="module")
def trained(root):
  """A 10-step DP run on the digits with its work directory on ram://, exported by the
  `export` command to the run's export/ and to a second export root on ram://."""
  workdir = f"{root}/run"
  assert _train([f"--workdir={workdir}", *TINY, "--steps=10", "--noexport"]) == 0
  assert export.main(["export", f"--workdir={workdir}"]) == 0
  assert export.main(["export", f"--workdir={workdir}", f"--export_dir={root}/exports",
                      "--version=3", "--weights=raw"]) == 0
  return workdir


def test_export_writes_a_whole_version_on_ram(root, trained, capsys):
  ledger = json.loads(files.read_text(f"{trained}/privacy_ledger.json"))
  for version_dir in (f"{trained}/export/generator/1", f"{root}/exports/generator/3"):
    meta = json.loads(files.read_text(f"{version_dir}/assets.extra/metadata.json"))
    assert meta["run_id"] == ledger["run_id"] and meta["epsilon"] > 0
    assert meta["checkpoint"].startswith(f"{trained}/checkpoints/ckpt-10")
    loaded = tf.saved_model.load(version_dir)
    out = loaded.signatures["sample"](label=tf.constant([0, 9]), seed=tf.constant(1, tf.int64))
    assert out["images_uint8"].shape == (2, 8, 8, 1)
  assert json.loads(files.read_text(f"{root}/exports/generator/3/assets.extra/"
                                    "metadata.json"))["weights"] == "generator"
  _no_temporaries(trained)
  _no_temporaries(f"{root}/exports")
  # A version that exists is refused, on ram:// as locally.
  assert export.main(["export", f"--workdir={trained}", f"--export_dir={root}/exports",
                      "--version=3"]) == 1
  assert "already exists" in capsys.readouterr().err


def test_sample_writes_a_grid_and_a_synthetic_folder_read_back_from_ram(root, trained, capsys):
  model = f"{trained}/export/generator"
  assert sample.main(["sample", f"--model={model}", "--labels=0,7", "--num_per_label=4",
                      f"--out={root}/grid.png"]) == 0
  assert files.read_bytes(f"{root}/grid.png")[:8] == b"\x89PNG\r\n\x1a\n"
  out = f"{root}/synthetic"
  assert sample.main(["sample", f"--model={model}", "--format=folder", "--num_per_label=3",
                      "--seed=5", f"--out={out}"]) == 0
  assert f"read it back with --data=folder:{out}" in capsys.readouterr().out
  assert sorted(files.listdir(out)) == [str(k) for k in range(10)] + [
      data_spec.SYNTHETIC_MANIFEST]
  manifest = json.loads(files.read_text(f"{out}/{data_spec.SYNTHETIC_MANIFEST}"))
  ledger = json.loads(files.read_text(f"{trained}/privacy_ledger.json"))
  assert manifest["synthetic"] and manifest["run_id"] == ledger["run_id"]
  assert manifest["model"]["path"] == f"{model}/1" and manifest["num_images"] == 30
  loaded = sources.load(data_spec.parse_source(f"folder:{out}"), "train", sources.Options())
  assert loaded.pixels.shape == (30, 8, 8, 1) and loaded.notes == ()
  assert np.bincount(loaded.labels).tolist() == [3] * 10
  drawn = synthetic.draw(f"{model}/1", list(range(10)), 3, 5)
  np.testing.assert_array_equal(loaded.pixels, drawn["images_uint8"])  # same order here
  # npz and TFRecords on ram:// too, read back by their sources.
  for fmt, arg in (("npz", f"{root}/syn_npz/synthetic.npz"),
                   ("tfrecord", f"{root}/syn_tfr/*.tfrecord")):
    dest = arg.rsplit("/", 1)[0]
    assert sample.main(["sample", f"--model={model}", f"--format={fmt}", "--num=20",
                        "--proportions=1:1,2:3", f"--out={dest}"]) == 0
    back = sources.load(data_spec.parse_source(f"{fmt}:{arg}"), "train", sources.Options())
    assert np.bincount(back.labels, minlength=3).tolist() == [0, 5, 15]
  # An existing data set is never overwritten.
  assert sample.main(["sample", f"--model={model}", "--format=folder", f"--out={out}"]) == 2
  assert "not empty" in capsys.readouterr().err
  _no_temporaries(root)


def test_evaluate_reads_and_writes_ram(root, trained):
  # Held-out data: the synthetic folder on ram:// (written by the test above, or here).
  held_out = f"{root}/held_out"
  assert sample.main(["sample", f"--model={trained}/export/generator", "--format=folder",
                      "--num_per_label=4", "--seed=11", f"--out={held_out}"]) == 0
  out = f"{root}/eval"
  argv = ["evaluate", f"--model={trained}/export/generator", f"--workdir={trained}",
          f"--data=folder:{held_out}", f"--out={out}", "--num_samples=60",
          "--classifiers=logreg", "--max_epochs=1", "--nopaper_protocol", "--noshow_epochs",
          "--fid=pixels", "--fid_num_samples=20", f"--fid_cache={root}/fid_cache.npz",
          "--epsilon_points=3"]
  assert evaluate.main(argv) == 0
  report = json.loads(files.read_text(f"{out}/eval.json"))
  assert report["test_size"] == 40 and "logreg" in report["accuracies"]
  assert report["pictures"]["written"] == ["samples.png", "labels.png", "epsilon.png"]
  assert sorted(files.listdir(out)) == ["epsilon.png", "eval.json", "labels.png", "samples.png"]
  assert files.isfile(f"{root}/fid_cache.npz")
  assert evaluate.main(argv) == 0  # again: the FID from the cache, the outputs replaced
  assert json.loads(files.read_text(f"{out}/eval.json"))["fid"] == report["fid"]
  _no_temporaries(root)


def test_audit_writes_its_report_to_ram(root):
  # The run audit end to end: its work directory (the secret canary file among it), its
  # training run, export and report on ram://. The step audit writes through the same two
  # writers, called here directly: the command itself spends ~45 s here on its canary search
  # (80 gradients), which tests/audit_test.py runs on a local folder.
  out = f"{root}/audit_step"
  audit_lib._write_report(out, "step", {"trials_per_side": 200})
  audit_lib.plot_roc(f"{out}/step_audit_roc.png", [audit_lib.RocPanel(
      "t", 1.0, 1e-5, (("a", np.arange(10.0), np.arange(10.0) + 3, 0.5),))])
  audit_lib._write_report(out, "run", {"canaries": 3})  # one audit keeps the other's section
  assert json.loads(files.read_text(f"{out}/audit.json")) == {
      "step": {"trials_per_side": 200}, "run": {"canaries": 3}}
  assert files.read_bytes(f"{out}/step_audit_roc.png")[:4] == b"\x89PNG"
  # The run audit: its work directory (the secret canary file among it) on ram://.
  workdir = f"{root}/audit_run"
  args = [*TINY, "--verbosity=-1", "--audit=run", f"--workdir={workdir}", "--steps=5",
          "--audit_canaries=10", "--audit_samples_per_class=5"]
  assert _audit(args) == 0
  with files.open_binary(f"{workdir}/audit_canaries.npz") as fh, np.load(fh) as z:
    included = z["included"]
  assert included.shape == (10,)
  run = json.loads(files.read_text(f"{workdir}/audit/audit.json"))["run"]
  assert run["canaries"] == 10 and files.isfile(f"{workdir}/audit/run_audit_roc.png")
  assert _audit(args) == 0  # a resume reads the canaries back from ram:// and re-scores
  with files.open_binary(f"{workdir}/audit_canaries.npz") as fh, np.load(fh) as z:
    np.testing.assert_array_equal(z["included"], included)
  _no_temporaries(root)

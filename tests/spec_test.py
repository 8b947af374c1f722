"""Tests for dp_sinkhorn_tf.data.spec: --data and --image_size parsing, the data spec's JSON."""

import json

import pytest

from dp_sinkhorn_tf.data import spec as data_spec


@pytest.mark.parametrize("text,scheme,arg", [
    ("folder:/data/my scans", "folder", "/data/my scans"),
    ("tfds:my_builder/config", "tfds", "my_builder/config"),
    ("tfds:mnist:3.0.1", "tfds", "mnist:3.0.1"),  # TFDS's own version syntax passes through
    ("tfrecord:gs://bucket/*.tfrecord", "tfrecord", "gs://bucket/*.tfrecord"),
    ("npz:x.npz", "npz", "x.npz"),
])
def test_sources_parse(text, scheme, arg):
  source = data_spec.parse_source(text)
  assert (source.scheme, source.arg) == (scheme, arg) and str(source) == text


@pytest.mark.parametrize("text", ["/data/my_scans", "svhn:x", "folder:", "folder: ", ""])
def test_a_bad_source_names_the_flag_and_the_choices(text):
  with pytest.raises(ValueError, match=r"^--data=.*: expected folder:PATH, tfds:NAME"):
    data_spec.parse_source(text)


def test_image_sizes_parse():
  assert data_spec.parse_image_size("32") == (32, 32)
  assert data_spec.parse_image_size("28x20") == (28, 20)
  assert data_spec.parse_image_size(" 28 X 20 ") == (28, 20)
  assert data_spec.parse_image_size(None) is None
  for bad in ("32x", "x32", "-8", "3.5", "big"):
    with pytest.raises(ValueError, match=f"^--image_size='{bad}': expected H or HxW"):
      data_spec.parse_image_size(bad)
  assert data_spec.format_size((28, 20)) == "28x20"


def test_the_spec_round_trips_through_json(tmp_path):
  spec = data_spec.DataSpec("folder:/d", (32, 24, 3), ("cat", "dog"), True, (32, 24), 3,
                            "group", 4)
  path = tmp_path / "data_spec.json"
  path.write_text(spec.dumps())
  data = json.loads(path.read_text())
  assert data["num_classes"] == 2 and data["image_shape"] == [32, 24, 3]
  assert data["format_version"] == data_spec.FORMAT_VERSION
  assert data_spec.read_spec(str(path)) == spec
  # No count of records anywhere: N is privacy.json's, the record count is not published.
  assert not any("size" in k and k != "image_size" for k in data)


@pytest.mark.parametrize("payload,match", [
    ([], "expected a data spec"),
    ({"source": "x", "image_shape": [8, 8]}, "lacks"),
    ({"source": "x", "image_shape": [8, 8], "label_names": ["a"]}, "image_shape must be"),
    ({"source": "x", "image_shape": [8, 8, 1], "label_names": ["a", "a"]}, "distinct"),
    ({"source": "x", "image_shape": [8, 8, 1], "label_names": ["a", "b"], "labelled": False},
     "unlabelled data have one class"),
    ({"source": "x", "image_shape": [8, 8, 1], "label_names": ["a"], "num_classes": 2},
     "num_classes=2 but 1 label names"),
])
def test_a_bad_spec_names_the_file(tmp_path, payload, match):
  path = tmp_path / "data_spec.json"
  path.write_text(json.dumps(payload))
  with pytest.raises(ValueError, match=match) as info:
    data_spec.read_spec(str(path))
  assert str(path) in str(info.value)
  path.write_text("{not json")
  with pytest.raises(ValueError, match="not valid JSON"):
    data_spec.read_spec(str(path))
  with pytest.raises(FileNotFoundError):
    data_spec.read_spec(str(tmp_path / "missing.json"))

"""Tests for dp_sinkhorn_tf.release.serving: REST bodies ↔ an exported model, gRPC requests."""

import json
import re

import numpy as np
import pytest
import tensorflow as tf

from dp_sinkhorn_tf.models import generators
from dp_sinkhorn_tf.release import export_lib, serving

LATENT = 6


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
  tf.keras.utils.set_random_seed(3)
  gen = generators.make_generator("dcgan", (8, 8, 1), 10, latent_dim=LATENT, embed_dim=4, hidden=8,
                                  depth=1, output="tanh", precision="float32")
  path = export_lib.export_generator(gen, str(tmp_path_factory.mktemp("export")))
  return tf.saved_model.load(path)


def _inputs(batch=4, seed=0):
  rng = np.random.default_rng(seed)
  return {"z": rng.uniform(size=(batch, LATENT)).astype(np.float32),
          "label": rng.integers(0, 10, batch).astype(np.int32)}


def _serve(loaded, text: str, fmt: str) -> str:
  """What TF Serving does with a REST body: JSON → tensors → signature → JSON."""
  signature_name, arrays = serving.body_to_inputs(text)
  fn = loaded.signatures[signature_name]
  outputs = fn(**{name: tf.constant(a) for name, a in arrays.items()})
  return json.dumps(serving.outputs_to_response({k: v.numpy() for k, v in outputs.items()}, fmt))


CASES = [(serving.SERVING_DEFAULT, serving.ROW), (serving.SERVING_DEFAULT, serving.COLUMNAR),
         (serving.SAMPLE, serving.COLUMNAR)]


@pytest.mark.parametrize("signature_name,fmt", CASES)
def test_rest_body_round_trips_through_the_signature(loaded, signature_name, fmt):
  inputs = _inputs() if signature_name == serving.SERVING_DEFAULT else \
      {"label": np.array([3, 1, 4, 1, 5], np.int32), "seed": 11}
  text = serving.dumps(serving.predict_body(signature_name, inputs, fmt, latent_dim=None))
  body = json.loads(text)
  assert body["signature_name"] == signature_name
  assert ("instances" if fmt == serving.ROW else "inputs") in body
  # The body parses back to exactly the inputs (float32 values survive JSON unchanged).
  _, parsed = serving.body_to_inputs(text)
  for name, value in inputs.items():
    np.testing.assert_array_equal(parsed[name], value)
    assert parsed[name].dtype == np.dtype(serving.INPUTS[signature_name][name][0])
  got = serving.parse_response(_serve(loaded, text, fmt), signature_name)
  direct = loaded.signatures[signature_name](
      **{name: tf.constant(value, dtype=serving.INPUTS[signature_name][name][0])
         for name, value in inputs.items()})
  assert set(got) == set(direct) == set(serving.OUTPUTS[signature_name])
  for name, tensor in direct.items():
    assert got[name].dtype == tensor.dtype.as_numpy_dtype and got[name].shape == tensor.shape
    np.testing.assert_array_equal(got[name], tensor.numpy())


def test_row_body_layout_and_json_integer_labels():
  inputs = _inputs(batch=2)
  body = serving.generate_body(inputs["z"], inputs["label"])
  assert body["signature_name"] == "serving_default" and len(body["instances"]) == 2
  assert set(body["instances"][1]) == {"z", "label"}
  assert len(body["instances"][1]["z"]) == LATENT
  # TF Serving wants JSON integers for DT_INT32 (3, not 3.0).
  text = serving.dumps(body)
  assert re.search(r'"label":\d+[,}]', text)


def test_columnar_sample_body_has_scalar_seed_and_row_is_refused():
  body = serving.sample_body([0, 1, 2], 7)
  assert body == {"signature_name": "sample", "inputs": {"label": [0, 1, 2], "seed": 7}}
  with pytest.raises(ValueError, match="columnar"):
    serving.row_body("sample", {"label": [0, 1, 2], "seed": 7})
  # What TF Serving would build from a row-format sample body: seed [3], not a scalar.
  rows = {"signature_name": "sample",
          "instances": [{"label": i, "seed": 7} for i in range(3)]}
  with pytest.raises(ValueError, match="'seed'.*rank 0"):
    serving.body_to_inputs(rows)


@pytest.mark.parametrize("inputs,match", [
    ({"z": np.zeros((2, LATENT)), "label": [1, 2, 3]}, "batch size"),
    ({"z": np.zeros((2, LATENT)), "label": [1.5, 2]}, "integers"),
    ({"z": np.zeros((2, LATENT)), "label": [2**31, 0]}, "int32 range"),
    ({"z": np.zeros((2,)), "label": [1, 2]}, "rank 2"),
    ({"z": np.full((1, LATENT), np.nan), "label": [1]}, "finite"),
    ({"z": np.zeros((1, LATENT))}, "takes inputs"),
    ({"z": np.zeros((1, 3)), "label": [1]}, r"\[B, 6\]")])
def test_bad_inputs_are_refused_with_the_input_named(inputs, match):
  with pytest.raises(ValueError, match=match):
    serving.row_body("serving_default", inputs, latent_dim=LATENT)


def test_parse_response_layouts_dtypes_and_errors():
  row = {"predictions": [{"images": [[[0.5]]], "images_uint8": [[[191]]]},
                         {"images": [[[-1.0]]], "images_uint8": [[[0]]]}]}
  out = serving.parse_response(json.dumps(row))
  assert out["images"].shape == (2, 1, 1, 1) and out["images"].dtype == np.float32
  np.testing.assert_array_equal(out["images_uint8"].ravel(), [191, 0])
  assert out["images_uint8"].dtype == np.uint8
  columnar = {"outputs": {"images": [[[[0.25]]]], "images_uint8": [[[[159]]]],
                          "z": [[0.1, 0.2]]}}
  out = serving.parse_response(columnar, "sample")
  assert out["z"].dtype == np.float32 and out["z"].shape == (1, 2)
  with pytest.raises(serving.ServingError, match="TF Serving: bad label"):
    serving.parse_response('{"error": "bad label"}')
  with pytest.raises(serving.ServingError, match="images_uint8"):
    serving.parse_response({"outputs": {"images": [0.0], "images_uint8": [300]}})
  with pytest.raises(serving.ServingError, match="predictions"):
    serving.parse_response({"result": []})


def test_predict_url():
  assert serving.predict_url("generator") == \
      "http://localhost:8501/v1/models/generator:predict"
  assert serving.predict_url("g", "h", 9000, 3) == "http://h:9000/v1/models/g/versions/3:predict"


def _serving_apis():
  """tensorflow_serving.apis (the `serving` extra: tensorflow-serving-api==2.15.1)."""
  return pytest.importorskip("tensorflow_serving.apis",
                             reason="needs tensorflow-serving-api==2.15.1 (the serving extra)")


def test_make_predict_request_carries_the_tensors():
  _serving_apis()
  from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

  assert hasattr(prediction_service_pb2_grpc, "PredictionServiceStub")
  inputs = _inputs(batch=3)
  request = serving.make_predict_request("generator", "serving_default", inputs, version=2)
  assert isinstance(request, predict_pb2.PredictRequest)
  assert request.model_spec.name == "generator"
  assert request.model_spec.signature_name == "serving_default"
  assert request.model_spec.version.value == 2
  assert set(request.inputs) == {"z", "label"}
  z = tf.make_ndarray(request.inputs["z"])
  label = tf.make_ndarray(request.inputs["label"])
  np.testing.assert_array_equal(z, inputs["z"])
  np.testing.assert_array_equal(label, inputs["label"])
  assert request.inputs["z"].dtype == tf.float32.as_datatype_enum
  assert request.inputs["label"].dtype == tf.int32.as_datatype_enum
  sample = serving.make_predict_request("generator", "sample",
                                        {"label": [0, 1], "seed": 5})
  assert not sample.model_spec.HasField("version")
  seed = tf.make_ndarray(sample.inputs["seed"])
  assert seed.shape == () and seed == 5 and sample.inputs["seed"].dtype == tf.int64.as_datatype_enum
  assert tf.make_ndarray(sample.inputs["label"]).dtype == np.int32
  # A request survives the wire format.
  again = predict_pb2.PredictRequest.FromString(request.SerializeToString())
  np.testing.assert_array_equal(tf.make_ndarray(again.inputs["z"]), inputs["z"])


def test_parse_predict_response(loaded):
  _serving_apis()
  from tensorflow_serving.apis import predict_pb2

  inputs = _inputs(batch=2)
  outputs = loaded.signatures["serving_default"](z=tf.constant(inputs["z"]),
                                                 label=tf.constant(inputs["label"]))
  response = predict_pb2.PredictResponse()
  for name, tensor in outputs.items():
    response.outputs[name].CopyFrom(tf.make_tensor_proto(tensor.numpy()))
  parsed = serving.parse_predict_response(response)
  np.testing.assert_array_equal(parsed["images_uint8"], outputs["images_uint8"].numpy())
  assert parsed["images_uint8"].dtype == np.uint8


# ---- export metadata ----------------------------------------------------------------------

def _write_metadata(version_dir, payload):
  path = version_dir / serving.METADATA_PATH
  path.parent.mkdir(parents=True)
  path.write_text(payload if isinstance(payload, str) else json.dumps(payload))


def test_metadata_without_num_classes_uses_the_label_names(tmp_path):
  _write_metadata(tmp_path, {"image_shape": [8, 8, 1], "label_names": ["a", "b"]})
  meta = serving.read_metadata(str(tmp_path))
  assert meta["num_classes"] == 2 and meta["label_names"] == ["a", "b"]


def test_metadata_defaults_label_names_to_the_class_indices(tmp_path):
  _write_metadata(tmp_path, {"image_shape": [8, 8, 1], "num_classes": 3})
  assert serving.read_metadata(str(tmp_path))["label_names"] == ["0", "1", "2"]


@pytest.mark.parametrize("payload,match", [
    ("{not json", "not valid JSON"),
    ([1, 2], "JSON object"),
    ({"image_shape": [8, 8, 1]}, "num_classes"),
    ({"num_classes": 2}, "image_shape"),
    ({"num_classes": "2", "image_shape": [8, 8, 1]}, "integer"),
    ({"num_classes": 3, "label_names": ["a"], "image_shape": [8, 8, 1]}, "label_names"),
    ({"num_classes": 2, "image_shape": [8, 8]}, r"\[H, W, C\]"),
])
def test_bad_metadata_names_the_file_and_the_field(tmp_path, payload, match):
  _write_metadata(tmp_path, payload)
  with pytest.raises(ValueError, match=match) as info:
    serving.read_metadata(str(tmp_path))
  assert "metadata.json" in str(info.value)


def test_missing_metadata_says_where_it_looked(tmp_path):
  with pytest.raises(FileNotFoundError, match="not exported by dp_sinkhorn_tf.export"):
    serving.read_metadata(str(tmp_path))


def test_version_dirs_are_the_numeric_subdirectories_sorted_by_number(tmp_path):
  for name in ("2", "10", "007", "latest", "3a", "١"):  # ١: a digit, but not ASCII
    (tmp_path / name).mkdir()
  (tmp_path / "5").write_text("a file, not a version")
  assert serving.version_dirs(str(tmp_path)) == [(2, "2"), (7, "007"), (10, "10")]
  assert serving.version_dirs(str(tmp_path / "missing")) == []


def test_find_version_dir_takes_the_highest_version_holding_a_saved_model(tmp_path):
  for name in ("1", "2", "3"):
    (tmp_path / name).mkdir()
  for name in ("1", "2"):
    (tmp_path / name / "saved_model.pb").write_bytes(b"")
  # Version 3 is still being written (no saved_model.pb): version 2 is the newest.
  assert serving.find_version_dir(str(tmp_path)) == (str(tmp_path / "2"), 2)
  assert serving.find_version_dir(str(tmp_path / "1")) == (str(tmp_path / "1"), 1)
  with pytest.raises(FileNotFoundError, match="neither a SavedModel directory"):
    serving.find_version_dir(str(tmp_path / "3"))
  with pytest.raises(FileNotFoundError, match="no such directory"):
    serving.find_version_dir(str(tmp_path / "missing"))

"""Client-side helpers for an exported generator behind TF Serving (pure: no network).

The export (`dp_sinkhorn_tf.export`) has two signatures; B is the batch, L = latent_dim:

  serving_default: z [B, L] float32 (z ~ U(0, 1)), label [B] int32
                   → images [B, H, W, C] float32 in [−1, 1], images_uint8 [B, H, W, C] uint8
  sample:          label [B] int32, seed int64 scalar
                   → images, images_uint8 as above, and z [B, L] float32, the latent used:
                     z = tf.random.stateless_uniform([B, L], seed=[seed, 0]).

REST (`POST http://HOST:8501/v1/models/NAME[/versions/N]:predict`) takes a JSON body in one
of two layouts, which TF Serving maps to tensors as follows:

* row ("instances"): a list of per-example objects {"z": [...], "label": 3}. TF Serving
  stacks every key over the list, so each input gains a leading batch dimension and every
  input must have one. `sample`'s scalar `seed` would become a [B] vector and no longer
  match the signature: call `sample` with the columnar layout.
* columnar ("inputs"): {"z": [[...], ...], "label": [...], "seed": 7}; each input is sent
  with its own shape, scalars included.

The answer is {"predictions": [{"images": ..., "images_uint8": ...}, ...]} for a row request
and {"outputs": {"images": [...], "images_uint8": [...]}} for a columnar one (names are
dropped when a signature has a single output), or {"error": "..."}.

Numbers: int32 / int64 inputs must be JSON integers (TF Serving rejects 3.0 for DT_INT32);
float32 inputs are written as the exact decimal value of each float32, so TF Serving
reads back the identical float32.

This module builds those bodies (`row_body`, `columnar_body`, `predict_body`), parses the
answers (`parse_response`), and, for gRPC, builds `tensorflow_serving.apis.predict_pb2`
requests (`make_predict_request`; needs the `tensorflow-serving-api` package) and reads
their responses (`parse_predict_response`). `body_to_inputs` and `outputs_to_response`
mirror TF Serving's own JSON ↔ tensor mapping, for tests and debugging without a server.
"""

import json
import numbers
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from dp_sinkhorn_tf.io import errors, files

SERVING_DEFAULT = "serving_default"
SAMPLE = "sample"
SIGNATURES = (SERVING_DEFAULT, SAMPLE)
ROW, COLUMNAR = "row", "columnar"
FORMATS = (ROW, COLUMNAR)

# name → (dtype, rank); B-dimensioned inputs have rank ≥ 1, `seed` is a scalar.
INPUTS = {
    SERVING_DEFAULT: {"z": ("float32", 2), "label": ("int32", 1)},
    SAMPLE: {"label": ("int32", 1), "seed": ("int64", 0)},
}
OUTPUTS = {
    SERVING_DEFAULT: {"images": "float32", "images_uint8": "uint8"},
    SAMPLE: {"images": "float32", "images_uint8": "uint8", "z": "float32"},
}

JsonBody = Dict[str, Any]

# Written by `export` beside saved_model.pb; read by `evaluation`, `sample` and clients.
METADATA_PATH = os.path.join("assets.extra", "metadata.json")


class ServingError(RuntimeError):
  """TF Serving answered {"error": message}, or the answer is not a predict response."""


def predict_url(model_name: str, host: str = "localhost", port: int = 8501,
                version: Optional[int] = None) -> str:
  """http://host:port/v1/models/<model_name>[/versions/<version>]:predict (no version: the
  newest version TF Serving has loaded)."""
  path = f"/v1/models/{model_name}" + (f"/versions/{int(version)}" if version is not None
                                       else "")
  return f"http://{host}:{port}{path}:predict"


# ---- the export layout ---------------------------------------------------------------------

def version_dirs(model_dir: str) -> List[Tuple[int, str]]:
  """[(version, directory name)] of `model_dir` (local or any tf.io.gfile path), sorted by
  version: its subdirectories named by ASCII digits, the versions TF Serving would load
  (whether they hold a SavedModel yet or not). [] when `model_dir` does not exist."""
  if not files.isdir(model_dir):
    return []
  names = [name.rstrip("/") for name in files.listdir(model_dir)]  # gfile marks dirs with /
  return sorted((int(name), name) for name in names
                if name.isascii() and name.isdigit() and
                files.isdir(os.path.join(model_dir, name)))


def find_version_dir(path: str) -> Tuple[str, Optional[int]]:
  """(version directory, version) of an export (local or any tf.io.gfile path): `path`
  itself when it holds saved_model.pb, else its highest numeric version subdirectory holding
  one (TF Serving's <model>/<version>/ layout). The version is None for a SavedModel
  directory whose name is not a number.

  Raises:
    FileNotFoundError: "<path>: ..." when `path` is neither.
  """
  if not files.isdir(path):
    raise FileNotFoundError(f"{path}: no such directory")
  if files.isfile(os.path.join(path, "saved_model.pb")):
    name = os.path.basename(path.rstrip("/") if files.is_remote(path)
                            else os.path.normpath(path))
    return path, int(name) if name.isascii() and name.isdigit() else None
  versions = [(version, name) for version, name in version_dirs(path)
              if files.isfile(os.path.join(path, name, "saved_model.pb"))]
  if not versions:
    raise FileNotFoundError(f"{path}: neither a SavedModel directory (no saved_model.pb) nor "
                            "a model directory with numeric version subdirectories")
  version, name = max(versions)
  return os.path.join(path, name), version


# ---- inputs ---------------------------------------------------------------------------------

def _as_typed_array(name: str, value, dtype: str) -> np.ndarray:
  """value → np.ndarray of `dtype`; integers must be integral and in range (no silent wrap)."""
  array = np.asarray(value)
  if not np.issubdtype(array.dtype, np.number):
    raise ValueError(f"input {name!r}: expected numbers, got dtype {array.dtype}")
  target = np.dtype(dtype)
  if np.issubdtype(target, np.integer):
    if not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
      raise ValueError(f"input {name!r}: expected integers ({dtype}), got {array.dtype}")
    info = np.iinfo(target)
    if array.size and (array.min() < info.min or array.max() > info.max):
      raise ValueError(f"input {name!r}: values outside the {dtype} range")
  elif array.size and not np.all(np.isfinite(array)):
    raise ValueError(f"input {name!r}: expected finite numbers")
  return array.astype(target)


def load_saved_model(version_dir: str):
  """tf.saved_model.load, its failures (a corrupt or truncated saved_model.pb, missing
  variables) as one ValueError naming the file."""
  import tensorflow as tf

  try:
    return tf.saved_model.load(version_dir)
  except (OSError, ValueError, IndexError, KeyError, RuntimeError, tf.errors.OpError) as e:
    raise ValueError(f"{os.path.join(version_dir, 'saved_model.pb')}: not a loadable "
                     f"SavedModel ({errors.first_line(e)[:200]})") from None
  except Exception as e:  # noqa: BLE001 - protobuf's DecodeError has no common TF base
    raise ValueError(f"{os.path.join(version_dir, 'saved_model.pb')}: not a loadable "
                     f"SavedModel ({type(e).__name__})") from None


def read_metadata(version_dir: str) -> dict:
  """METADATA_PATH of an export version directory, checked: an integer num_classes
  (len(label_names) when the file omits it), label_names (default "0".."K−1") and a
  3-entry image_shape.

  Raises:
    FileNotFoundError: no metadata file (not exported by dp_sinkhorn_tf.export).
    ValueError: the file is not JSON or lacks / contradicts one of the fields above.
  """
  path = os.path.join(version_dir, METADATA_PATH)
  try:
    meta = json.loads(files.read_text(path))
  except FileNotFoundError:
    raise FileNotFoundError(f"{path}: missing export metadata (not exported by "
                            "dp_sinkhorn_tf.export)") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(meta, dict):
    raise ValueError(f"{path}: expected a JSON object")
  if "num_classes" not in meta and "label_names" in meta:
    meta["num_classes"] = len(meta["label_names"])
  for key in ("num_classes", "image_shape"):
    if key not in meta:
      raise ValueError(f"{path}: lacks {key!r}")
  if not isinstance(meta["num_classes"], int) or meta["num_classes"] < 1:
    raise ValueError(f"{path}: num_classes must be an integer ≥ 1, got {meta['num_classes']!r}")
  if "label_names" not in meta:
    meta["label_names"] = [str(k) for k in range(meta["num_classes"])]
  if len(meta["label_names"]) != meta["num_classes"]:
    raise ValueError(f"{path}: {len(meta['label_names'])} label_names for num_classes="
                     f"{meta['num_classes']}")
  if len(meta["image_shape"]) != 3:
    raise ValueError(f"{path}: image_shape must be [H, W, C], got {meta['image_shape']}")
  return meta


def check_inputs(signature_name: str, inputs: Mapping[str, Any],
                 latent_dim: Optional[int] = None) -> Dict[str, np.ndarray]:
  """Validates `inputs` against signature `signature_name`; returns them as typed arrays.

  Checks the input names (exactly the signature's), each rank (z: 2, label: 1, seed: 0),
  a common batch size B for z and label, z's width when `latent_dim` is given, and that
  integer inputs hold integers within their dtype. Raises ValueError naming the input.
  """
  if signature_name not in INPUTS:
    raise ValueError(f"unknown signature {signature_name!r}: expected one of {SIGNATURES}")
  spec = INPUTS[signature_name]
  if set(inputs) != set(spec):
    raise ValueError(f"signature {signature_name!r} takes inputs {sorted(spec)}, got "
                     f"{sorted(inputs)}")
  arrays = {}
  for name, (dtype, rank) in spec.items():
    array = _as_typed_array(name, inputs[name], dtype)
    if array.ndim != rank:
      raise ValueError(f"input {name!r}: expected rank {rank}, got shape {array.shape}")
    arrays[name] = array
  batches = {name: a.shape[0] for name, a in arrays.items() if a.ndim}
  if len(set(batches.values())) > 1:
    raise ValueError(f"inputs {sorted(batches)} must share the batch size, got {batches}")
  if "z" in arrays and latent_dim is not None and arrays["z"].shape[1] != latent_dim:
    raise ValueError(f"input 'z': expected [B, {latent_dim}], got {arrays['z'].shape}")
  return arrays


def row_body(signature_name: str, inputs: Mapping[str, Any],
             latent_dim: Optional[int] = None) -> JsonBody:
  """{"signature_name": s, "instances": [{name: inputs[name][i], ...} for i < B]}.

  Every input must carry the batch dimension, so the `sample` signature (scalar seed) is
  refused with a ValueError: use `columnar_body` for it.
  """
  arrays = check_inputs(signature_name, inputs, latent_dim)
  scalars = sorted(name for name, a in arrays.items() if a.ndim == 0)
  if scalars:
    raise ValueError(f"signature {signature_name!r}: input(s) {scalars} are scalars; the row "
                     "format stacks every input over the instances, so use the columnar "
                     "format (columnar_body)")
  columns = {name: a.tolist() for name, a in arrays.items()}
  batch = len(next(iter(columns.values())))
  instances = [{name: columns[name][i] for name in columns} for i in range(batch)]
  return {"signature_name": signature_name, "instances": instances}


def columnar_body(signature_name: str, inputs: Mapping[str, Any],
                  latent_dim: Optional[int] = None) -> JsonBody:
  """{"signature_name": s, "inputs": {name: nested list (or scalar) of inputs[name]}}."""
  arrays = check_inputs(signature_name, inputs, latent_dim)
  return {"signature_name": signature_name,
          "inputs": {name: a.tolist() for name, a in arrays.items()}}


def predict_body(signature_name: str, inputs: Mapping[str, Any], fmt: str = COLUMNAR,
                 latent_dim: Optional[int] = None) -> JsonBody:
  """`row_body` (fmt="row") or `columnar_body` (fmt="columnar")."""
  if fmt not in FORMATS:
    raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
  build = row_body if fmt == ROW else columnar_body
  return build(signature_name, inputs, latent_dim)


def generate_body(z, labels, fmt: str = ROW) -> JsonBody:
  """Body for serving_default: images of labels[i] from latent z[i] ([B, L] in [0, 1))."""
  return predict_body(SERVING_DEFAULT, {"z": z, "label": labels}, fmt)


def sample_body(labels, seed: int) -> JsonBody:
  """Columnar body for `sample`: one image per labels[i], latents drawn from `seed`."""
  return columnar_body(SAMPLE, {"label": labels, "seed": seed})


def dumps(body: JsonBody) -> str:
  """The request text (strict JSON: NaN / Infinity are refused)."""
  return json.dumps(body, allow_nan=False, separators=(",", ":"))


# ---- TF Serving's JSON ↔ tensor mapping (server side, emulated) ----------------------------

def body_to_inputs(body: Union[str, bytes, JsonBody]) -> Tuple[str, Dict[str, np.ndarray]]:
  """(signature_name, {name: array}) as TF Serving would feed them to the signature.

  Row: each key is stacked over "instances" (every instance must hold exactly the
  signature's keys, with equal shapes). Columnar: each key of "inputs" as sent. Dtypes come
  from the signature; a shape that does not fit the signature (e.g. a row-format `seed`,
  now [B]) raises ValueError, as TF Serving would refuse it.
  """
  if isinstance(body, (str, bytes)):
    body = json.loads(body)
  signature_name = body.get("signature_name", SERVING_DEFAULT)
  if signature_name not in INPUTS:
    raise ValueError(f"unknown signature {signature_name!r}: expected one of {SIGNATURES}")
  spec = INPUTS[signature_name]
  if ("instances" in body) == ("inputs" in body):
    raise ValueError("a predict body holds exactly one of 'instances' (row) or 'inputs' "
                     "(columnar)")
  if "instances" in body:
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
      raise ValueError("'instances' must be a non-empty list")
    for i, instance in enumerate(instances):
      if not isinstance(instance, dict) or set(instance) != set(spec):
        raise ValueError(f"instance {i}: expected an object with keys {sorted(spec)}")
    raw = {name: [instance[name] for instance in instances] for name in spec}
  else:
    raw = body["inputs"]
    if not isinstance(raw, dict) or set(raw) != set(spec):
      raise ValueError(f"'inputs' must be an object with keys {sorted(spec)}")
  arrays = {}
  for name, (dtype, rank) in spec.items():
    array = _as_typed_array(name, raw[name], dtype)
    if array.ndim != rank:
      raise ValueError(f"input {name!r}: signature {signature_name!r} expects rank {rank}, "
                       f"the body gives shape {array.shape}")
    arrays[name] = array
  return signature_name, arrays


def outputs_to_response(outputs: Mapping[str, Any], fmt: str) -> JsonBody:
  """{"predictions": [...]} (row) or {"outputs": ...} (columnar), as TF Serving answers.

  Row: one object per batch entry (every output must have the same batch size) or, for a
  single output, its bare values; columnar: an object of whole tensors, or the bare tensor
  for a single output.
  """
  if fmt not in FORMATS:
    raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
  arrays = {name: np.asarray(value) for name, value in sorted(outputs.items())}
  values = {name: a.tolist() for name, a in arrays.items()}  # float32 → exact float
  if fmt == COLUMNAR:
    return {"outputs": values if len(values) > 1 else next(iter(values.values()))}
  batches = {a.shape[0] if a.ndim else None for a in arrays.values()}
  if len(batches) != 1 or None in batches:
    raise ValueError(f"row format needs every output batched alike, got shapes "
                     f"{ {n: a.shape for n, a in arrays.items()} }")
  batch = batches.pop()
  if len(values) == 1:
    return {"predictions": next(iter(values.values()))}
  return {"predictions": [{name: values[name][i] for name in values} for i in range(batch)]}


# ---- responses ----------------------------------------------------------------------------

def _typed_output(name: str, value: Any, dtype: Optional[str]) -> np.ndarray:
  array = np.asarray(value)
  if dtype is None:
    return array
  target = np.dtype(dtype)
  if np.issubdtype(target, np.integer) and array.size:
    info = np.iinfo(target)
    if (not np.issubdtype(array.dtype, np.integer) or array.min() < info.min or
        array.max() > info.max):
      raise ServingError(f"output {name!r}: expected {dtype} values, got {array.dtype} in "
                         f"[{array.min()}, {array.max()}]")
  return array.astype(target)


def parse_response(response: Union[str, bytes, JsonBody],
                   signature_name: str = SERVING_DEFAULT,
                   single_output_name: str = "output") -> Dict[str, np.ndarray]:
  """A REST predict answer (text or parsed JSON) → {output name: np.ndarray}.

  Row answers are stacked back over the batch; dtypes follow the signature (images float32,
  images_uint8 uint8, z float32). A single-output answer carries no names: it is returned
  under `single_output_name`. Raises ServingError for {"error": ...} or an unknown layout.
  """
  if isinstance(response, (str, bytes)):
    try:
      response = json.loads(response)
    except json.JSONDecodeError as e:
      raise ServingError(f"the answer is not JSON: {e}") from None
  if not isinstance(response, dict):
    raise ServingError(f"expected a JSON object, got {type(response).__name__}")
  if "error" in response:
    raise ServingError(f"TF Serving: {response['error']}")
  dtypes = OUTPUTS.get(signature_name, {})
  if "predictions" in response:
    rows = response["predictions"]
    if not isinstance(rows, list):
      raise ServingError("'predictions' must be a list")
    if rows and all(isinstance(row, dict) for row in rows):
      names = list(rows[0])
      if any(set(row) != set(names) for row in rows):
        raise ServingError("'predictions' rows have different keys")
      raw = {name: [row[name] for row in rows] for name in names}
    else:
      raw = {single_output_name: rows}
  elif "outputs" in response:
    outputs = response["outputs"]
    raw = outputs if isinstance(outputs, dict) else {single_output_name: outputs}
  else:
    raise ServingError(f"expected 'predictions', 'outputs' or 'error', got keys "
                       f"{sorted(response)}")
  return {name: _typed_output(name, value, dtypes.get(name)) for name, value in raw.items()}


# ---- gRPC ---------------------------------------------------------------------------------

def make_predict_request(model_name: str, signature_name: str,
                         inputs: Mapping[str, Any], version: Optional[int] = None):
  """A tensorflow_serving.apis.predict_pb2.PredictRequest for PredictionService/Predict.

  model_spec.name = model_name, model_spec.signature_name = signature_name and, when
  given, model_spec.version = version (else the newest loaded version). For this
  package's signatures the inputs are checked and cast (`check_inputs`); other signatures
  take `inputs` as numpy would convert them. Needs `pip install
  tensorflow-serving-api==2.15.1` (imported here, not at module import).
  """
  import tensorflow as tf
  from tensorflow_serving.apis import predict_pb2

  if not model_name:
    raise ValueError("model_name must be a non-empty string")
  if version is not None and (isinstance(version, bool) or
                              not isinstance(version, numbers.Integral) or version < 0):
    raise ValueError(f"version must be an integer ≥ 0 or None, got {version!r}")
  if signature_name in INPUTS:
    arrays = check_inputs(signature_name, inputs)
  else:
    arrays = {name: np.asarray(value) for name, value in inputs.items()}
  request = predict_pb2.PredictRequest()
  request.model_spec.name = model_name
  request.model_spec.signature_name = signature_name
  if version is not None:
    request.model_spec.version.value = int(version)
  for name, array in arrays.items():
    request.inputs[name].CopyFrom(tf.make_tensor_proto(array))
  return request


def parse_predict_response(response) -> Dict[str, np.ndarray]:
  """A predict_pb2.PredictResponse → {output name: np.ndarray} (dtypes as served)."""
  import tensorflow as tf

  return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}

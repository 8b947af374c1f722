"""The one atomic writer, and file helpers for local paths and any `tf.io.gfile` file system.

A path with a scheme (`gs://`, `hdfs://`, `ram://`, …) goes through `tf.io.gfile`; a local
path through `os`, where the writer also fsyncs. A reader of a file written here sees the
old content or the new one, never a part:

* local: temp file in the same folder, fsync, `os.replace` (atomic on POSIX);
* gfile: temp object, then `tf.io.gfile.rename(overwrite=True)`. That is atomic where the
  file system's rename is (HDFS, `ram://`); on object stores such as GCS a rename is a copy
  then a delete, so a reader may briefly see no file, but never a partial one (an object
  appears whole).

Directories (`rename_dir`, the export's version folder) are moved atomically only on a
local file system; elsewhere by copying (see there).

Times: a file's modification time is wall-clock, and wall-clock time is data-dependent and
not covered by ε (a step's duration depends on its Sinkhorn solves). Every file written
here on a local file system carries FIXED_TIME as its access and modification time (set on
the temporary file before the rename, so the target never shows another), and
`set_fixed_times` stamps what other writers (TensorFlow's checkpoints and SavedModels, the
TensorBoard events) and directories leave. A remote file system has no utime: `ram://`
reports mtime 0 for everything, GCS the upload time of each object (which cannot be set).
A file's change time (ctime) cannot be set by any process: GNU tar's default format and zip
do not store it, but `tar --format=posix` does unless given
`--pax-option=delete=atime,delete=ctime`.
"""

import errno
import io
import json
import os
from typing import Dict, Optional

# 2000-01-01T00:00:00Z in seconds since the Unix epoch: the modification time of every
# file the project writes locally, and the origin of TensorBoard's step-derived wall times
# (`io.events`). Not 0: zip cannot store times before 1980.
FIXED_TIME = 946684800


def is_remote(path: str) -> bool:
  """A path with a URL scheme (handled by tf.io.gfile)."""
  return "://" in str(path)


def _gfile():
  import tensorflow as tf
  return tf.io.gfile


def exists(path: str) -> bool:
  return _gfile().exists(path) if is_remote(path) else os.path.exists(path)


def isdir(path: str) -> bool:
  return _gfile().isdir(path) if is_remote(path) else os.path.isdir(path)


def makedirs(path: str) -> None:
  if is_remote(path):
    _gfile().makedirs(path)
  else:
    os.makedirs(path, exist_ok=True)


def isfile(path: str) -> bool:
  if is_remote(path):
    return _gfile().exists(path) and not _gfile().isdir(path)
  return os.path.isfile(path)


def listdir(path: str) -> list:
  """The entries of a directory. On a remote file system only those that exist: `ram://`
  matches by prefix, so its listing of "d/a" also shows "d/ab.txt" as "b.txt" (a ghost)."""
  if not is_remote(path):
    return os.listdir(path)
  gfile = _gfile()
  base = path.rstrip("/")
  return [name.rstrip("/") for name in gfile.listdir(path)
          if gfile.exists(f"{base}/{name.rstrip('/')}")]


def walk(root: str):
  """os.walk(root, followlinks=True) on any file system: (folder, sub-folders, files) top
  down, the sub-folders list prunable in place; ghost entries (`listdir`) left out."""
  if not is_remote(root):
    yield from os.walk(root, followlinks=True)
    return
  gfile = _gfile()
  base = root.rstrip("/")
  dirs, names = [], []
  for name in listdir(base):
    (dirs if gfile.isdir(f"{base}/{name}") else names).append(name)
  yield base, dirs, names
  for name in dirs:
    yield from walk(f"{base}/{name}")


def glob(pattern: str) -> list:
  """Sorted paths matching a glob pattern (tf.io.gfile.glob on every file system: its `*`
  does not cross a '/')."""
  return sorted(_gfile().glob(pattern))


def abspath(path: str) -> str:
  """os.path.abspath for a local path; a remote path is absolute already."""
  return path if is_remote(path) else os.path.abspath(path)


def replace(source: str, target: str) -> None:
  """Renames a file over `target` (os.replace; tf.io.gfile.rename(overwrite=True))."""
  if is_remote(source):
    _gfile().rename(source, target, overwrite=True)
  else:
    os.replace(source, target)


def rmdir(path: str) -> None:
  """Removes an empty directory (OSError when it is not empty, locally)."""
  if is_remote(path):
    _gfile().remove(path)  # ram://, GCS: a directory is a marker or a prefix
  else:
    os.rmdir(path)


def remove(path: str) -> None:
  if is_remote(path):
    _gfile().remove(path)
  else:
    os.remove(path)


def rmtree(path: str) -> None:
  """Removes a directory tree if it exists (errors ignored, as shutil.rmtree(…, True))."""
  if is_remote(path):
    try:
      if _gfile().exists(path):
        _gfile().rmtree(path)
    except Exception:  # noqa: BLE001 - best effort, like ignore_errors=True
      pass
  else:
    import shutil
    shutil.rmtree(path, ignore_errors=True)


def set_fixed_time(path: str) -> None:
  """Sets the access and modification times of `path` (a file or a directory) to
  FIXED_TIME. A no-op for a remote path (tf.io.gfile has no utime; module docstring)."""
  if not is_remote(path):
    os.utime(path, (FIXED_TIME, FIXED_TIME))


def set_fixed_times(root: str) -> None:
  """set_fixed_time on `root` and, for a directory, on every file and directory under it
  (symbolic links are not followed). A missing `root` or a remote path: a no-op. Setting
  a child's time does not change its directory's, so the order does not matter."""
  if is_remote(root) or not os.path.lexists(root):
    return
  for dirpath, dirnames, filenames in os.walk(root):
    for name in dirnames + filenames:
      os.utime(os.path.join(dirpath, name), (FIXED_TIME, FIXED_TIME), follow_symlinks=False)
  os.utime(root, (FIXED_TIME, FIXED_TIME), follow_symlinks=False)


def rename_dir(source: str, target: str) -> None:
  """Moves a directory (never over an existing one). Local: os.rename, atomic. gfile: a
  copy of every file, `saved_model.pb` last (TF Serving loads a version once that file is
  there, so it never sees a version without its variables), then the removal of `source`:
  object stores (GCS) and `ram://` cannot rename directories."""
  if not is_remote(source):
    os.rename(source, target)
    return
  gfile = _gfile()
  if gfile.exists(target):
    raise FileExistsError(errno.EEXIST, "File exists", target)
  copies = []

  def collect(src: str, dst: str) -> None:
    gfile.makedirs(dst)
    for name in gfile.listdir(src):
      name = name.rstrip("/")
      if not gfile.exists(f"{src}/{name}"):
        continue  # ram:// lists "assets.extra/…" under "assets/" as ".extra": a ghost
      if gfile.isdir(f"{src}/{name}"):
        collect(f"{src}/{name}", f"{dst}/{name}")
      else:
        copies.append((f"{src}/{name}", f"{dst}/{name}"))

  collect(source.rstrip("/"), target.rstrip("/"))
  copies.sort(key=lambda pair: pair[1].endswith("/saved_model.pb"))
  for src, dst in copies:
    gfile.copy(src, dst)
  rmtree(source)  # best effort (ram:// cannot delete its ghost entries): a ".tmp-" name


def read_bytes(path: str) -> bytes:
  """The file's bytes; a missing file is FileNotFoundError and another failure OSError on
  every file system (gfile's errors translated)."""
  if not is_remote(path):
    with open(path, "rb") as fh:
      return fh.read()
  import tensorflow as tf
  try:
    with tf.io.gfile.GFile(path, "rb") as fh:
      return fh.read()
  except tf.errors.NotFoundError:
    raise FileNotFoundError(errno.ENOENT, "No such file or directory", path) from None
  except tf.errors.OpError as e:
    raise OSError(errno.EIO, e.message, path) from None


def read_text(path: str) -> str:
  return read_bytes(path).decode("utf-8")


def open_binary(path: str):
  """A seekable binary reader of `path` (for zipfile / np.load): open() locally,
  tf.io.gfile.GFile elsewhere; a missing file is FileNotFoundError on both."""
  if not is_remote(path):
    return open(path, "rb")
  if not _gfile().exists(path):
    raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
  return _gfile().GFile(path, "rb")


def write_bytes(path: str, payload: bytes) -> None:
  """Writes a file, not atomically: for files inside a folder that is itself published by
  one rename (`staged_dir`). Local files get FIXED_TIME."""
  if is_remote(path):
    with _gfile().GFile(path, "wb") as fh:
      fh.write(payload)
    return
  with open(path, "wb") as fh:
    fh.write(payload)
  os.utime(path, (FIXED_TIME, FIXED_TIME))


def fsync_tree(root: str) -> None:
  """fsync every file and directory under `root`, so that a rename publishes durable bytes
  (local file systems; a remote store's objects are durable once written)."""
  if is_remote(root):
    return
  for dirpath, _, filenames in os.walk(root):
    for name in filenames:
      with open(os.path.join(dirpath, name), "rb") as fh:
        os.fsync(fh.fileno())
    fd = os.open(dirpath, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)


class staged_dir:  # noqa: N801 - used as a context manager, like tempfile's
  """`with staged_dir(target) as tmp:` fill the folder `tmp` (beside `target`, named
  .<name>.tmp-<pid>); on a normal exit it is fsynced, stamped with FIXED_TIME and moved to
  `target` by `rename_dir` (one atomic rename locally); on an error it is removed and
  `target` is untouched. `target` must not exist, or be an empty folder (removed at the
  move): a folder with content is refused with FileExistsError before anything is written.
  """

  def __init__(self, target: str):
    self.target = target.rstrip("/") or target
    parent, name = os.path.split(self.target)
    self.tmp = os.path.join(parent, f".{name}.tmp-{os.getpid()}")

  def check(self) -> None:
    """FileExistsError when the target exists and is not an empty folder."""
    if not exists(self.target):
      return
    if not isdir(self.target):
      raise FileExistsError(errno.EEXIST, "exists and is not a folder", self.target)
    if listdir(self.target):
      raise FileExistsError(errno.EEXIST, "exists and is not empty", self.target)

  def __enter__(self) -> str:
    self.check()
    parent = os.path.dirname(self.target)
    if parent:
      makedirs(parent)
    rmtree(self.tmp)  # left by a killed process that had our pid
    makedirs(self.tmp)
    return self.tmp

  def __exit__(self, kind, value, traceback) -> bool:
    if kind is not None:
      rmtree(self.tmp)
      return False
    try:
      self.check()  # appeared meanwhile?
      fsync_tree(self.tmp)
      set_fixed_times(self.tmp)
      if exists(self.target):
        rmdir(self.target)  # empty (checked)
      rename_dir(self.tmp, self.target)
    except BaseException:
      rmtree(self.tmp)
      raise
    return False


def npz_bytes(arrays: Dict[str, object], compressed: bool = False) -> bytes:
  """`arrays` as the bytes of an .npz (np.savez, or np.savez_compressed)."""
  import numpy as np  # here: the rest of the module needs no numpy
  buf = io.BytesIO()
  (np.savez_compressed if compressed else np.savez)(buf, **arrays)
  return buf.getvalue()


def write_npz_atomic(target: str, arrays: Dict[str, object], mode: Optional[int] = None,
                     compressed: bool = False) -> None:
  """`arrays` as an .npz at `target`, written atomically (`write_bytes_atomic`)."""
  write_bytes_atomic(target, npz_bytes(arrays, compressed), mode)


def read_npz(path: str) -> dict:
  """{name: array} of the .npz at `path` (any path of this module), read whole."""
  import numpy as np
  with np.load(io.BytesIO(read_bytes(path))) as stored:
    return {name: stored[name] for name in stored.files}


def write_bytes_atomic(target: str, payload: bytes, mode: Optional[int] = None) -> None:
  """Writes `payload` to a temp file beside `target` (created with `mode`, e.g. 0o600 for
  a secret; local paths only) and renames it over `target` (module docstring). A local
  target's times are FIXED_TIME from the moment it appears."""
  tmp = f"{target}.tmp-{os.getpid()}"
  if is_remote(target):
    gfile = _gfile()
    try:
      with gfile.GFile(tmp, "wb") as fh:
        fh.write(payload)
      gfile.rename(tmp, target, overwrite=True)
    except BaseException:
      if gfile.exists(tmp):
        gfile.remove(tmp)
      raise
    return
  try:
    if os.path.exists(tmp):
      os.remove(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else mode)
    with os.fdopen(fd, "wb") as fh:
      if mode is not None:
        os.fchmod(fh.fileno(), mode)  # whatever the umask
      fh.write(payload)
      fh.flush()
      os.fsync(fh.fileno())
    os.utime(tmp, (FIXED_TIME, FIXED_TIME))
    os.replace(tmp, target)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def os_error(e: OSError, what: str) -> str:
  """One line naming the file and the cause of a file-system error (`what` when the error
  names no file)."""
  target = e.filename or what
  cause = e.strerror or type(e).__name__
  if e.errno == errno.ENOSPC:
    cause = "no space left on device"
  return f"{target}: {cause}"


def write_text_atomic(target: str, text: str, mode: Optional[int] = None) -> None:
  write_bytes_atomic(target, text.encode("utf-8"), mode)


def json_safe(value):
  """JSON-able copy (JSON has no NaN or ∞): numpy scalars and arrays become Python numbers
  and lists, tuples lists, ±∞ the strings "inf" / "-inf", NaN None. The one rule for every
  JSON file the project writes (run directory, eval.json, the export's metadata).

  Raises:
    TypeError: a value JSON cannot hold (naming it), before anything is written.
  """
  import math

  import numpy as np
  if isinstance(value, dict):
    return {str(k): json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  if isinstance(value, np.ndarray):
    return json_safe(value.tolist())
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
  if value is None or isinstance(value, (str, bool, int, float)):
    return value
  raise TypeError(f"value {value!r} of type {type(value).__name__} is not JSON-able")


def write_json_atomic(target: str, payload: dict) -> None:
  """json_safe(payload), indented, key-sorted, atomically."""
  write_text_atomic(target, json.dumps(json_safe(payload), indent=2, sort_keys=True,
                                       allow_nan=False) + "\n")

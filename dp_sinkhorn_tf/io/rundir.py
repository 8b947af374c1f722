"""The run directory: its file names, what is safe to publish, the atomic writer, the run id.

  <workdir>/
    run.json                 run identity: run_id, dp, key source      publishable
    privacy_key              the run's SECRET key (0600)               NEVER publish
    privacy_ledger.json      steps charged, plan, flags, run_id, HMAC  keep private
    privacy.json             plan, ε spent (RDP and PLD), unit         publishable
    flags.txt                the resolved flags (no key, only a path)  publishable
    data_spec.json           source, image shape, label names, unit    publishable**
    checkpoints/             weights + optimizer state + run_id        publishable*
    samples/                 generated grids                           publishable
    tensorboard/             ε, released (noised) norms, grids         publishable
    private_diagnostics/     loss, clean norms, batch sizes, Sinkhorn  NEVER publish
    export/                  SavedModel (TF Serving layout)            publishable
    audit/                   audit.json, ROC plots (`audit` runs only)  publishable
    audit_canaries.npz       run audit: canaries + inclusion bits      NEVER publish

  * post-processing of the released gradients and the public initialisation.
  ** the source is in flags.txt already, the shape follows from the flags and the data's
     format, and the label names are the data owner's class names (folder or ClassLabel
     names), public by assumption: a class named after a person would publish that name.
     It holds no count (`data.spec`).

Times: no published file carries wall-clock time (which would time the steps between two
writes: data-dependent, not covered by ε). Every file and folder that training and the
export write in a local run directory has the modification time `files.FIXED_TIME`
(2000-01-01T00:00:00Z; `set_fixed_times` after each chunk, the run and the export), the
TensorBoard events are timed by their step (`io.events`), the checkpoint folder's
`checkpoint` file too (`checkpoints.fix_checkpoint_times`), and no file holds a timestamp.
On gs:// or ram:// the store keeps its own times (`files`). The private diagnostics'
TensorBoard keeps real times: it is never published.

Provenance: run.json is written last when a run is created (after the key and the ledger),
so a directory with run.json always has its key and, for DP runs, its ledger; every
checkpoint holds the run_id, and a checkpoint, ledger or export step of another run id is
refused (`provenance.open_run`, `export`).
"""

import dataclasses
import json
import os
from typing import Optional

from dp_sinkhorn_tf.io import files

IDENTITY_FILE = "run.json"
KEY_FILE = "privacy_key"
LEDGER_FILE = "privacy_ledger.json"
REPORT_FILE = "privacy.json"
FLAGS_FILE = "flags.txt"
DATA_SPEC_FILE = "data_spec.json"
CHECKPOINT_DIR = "checkpoints"
SAMPLES_DIR = "samples"
TENSORBOARD_DIR = "tensorboard"
PRIVATE_DIR = "private_diagnostics"
EXPORT_DIR = "export"
DO_NOT_PUBLISH = "DO_NOT_PUBLISH.txt"
WARM_START_FILE = "warm_start.npz"  # the warm start's one release (`train.warm_start`)
AUDIT_DIR = "audit"  # `python -m dp_sinkhorn_tf.audit`'s default --audit_out
AUDIT_CANARY_FILE = "audit_canaries.npz"

PRIVATE_DIR_NOTE = """DO NOT PUBLISH this folder.

Everything here was computed on the private training data BEFORE the privacy mechanism
(the Sinkhorn loss, the clean gradient norm, Sinkhorn iterations and marginal error, the
exact Poisson batch size). None of it is covered by the run's (epsilon, delta) guarantee:
the loss alone differed by 35 between neighbouring datasets at one step.
It is there for debugging on the data owner's side only.
"""

# (artefact, publishable?, why) for main's summary and the README table.
ARTEFACTS = (
    (f"{EXPORT_DIR}/", True, "generator: post-processing of released gradients"),
    (REPORT_FILE, True, "plan and ε; states N (the number of private records)"),
    (f"{SAMPLES_DIR}/", True, "generated images only"),
    (f"{TENSORBOARD_DIR}/", True, "ε, released (noised) norms, generated grids; times = step"),
    (FLAGS_FILE, True, "resolved flags (a key file's path, never a key)"),
    (DATA_SPEC_FILE, True, "source, image shape, label names (your class names: public by "
     "assumption), unit of privacy"),
    (IDENTITY_FILE, True, "run id, dp, key source"),
    (f"{CHECKPOINT_DIR}/", True, "weights and optimizer state of released updates"),
    (WARM_START_FILE, True, "the warm start's one DP release (per-class feature sums + noise)"),
    (f"{AUDIT_DIR}/", True, "audit lower bounds and ROC plots (synthetic canaries only)"),
    (LEDGER_FILE, False, "keep: holds a keyed fingerprint of the data"),
    (KEY_FILE, False, "SECRET: whoever has it can remove the noise"),
    (f"{PRIVATE_DIR}/", False, "computed on private data before the mechanism"),
    (AUDIT_CANARY_FILE, False, "the run audit's secret canary inclusion bits"),
)


def path(workdir: str, name: str) -> str:
  return os.path.join(workdir, name)  # also right for gs://, ram://, … (slash-separated)


write_bytes_atomic = files.write_bytes_atomic
write_text_atomic = files.write_text_atomic
write_json_atomic = files.write_json_atomic


def set_fixed_times(workdir: str) -> None:
  """The run directory and everything in it get the times files.FIXED_TIME (local paths;
  module docstring)."""
  files.set_fixed_times(workdir)


def ensure_private_dir(workdir: str) -> str:
  """<workdir>/private_diagnostics with its DO_NOT_PUBLISH note; returns its path."""
  folder = path(workdir, PRIVATE_DIR)
  files.makedirs(folder)
  note = os.path.join(folder, DO_NOT_PUBLISH)
  if not files.exists(note):
    write_text_atomic(note, PRIVATE_DIR_NOTE)
  return folder


class ProvenanceError(ValueError):
  """The run directory's state does not belong together; one line naming the file."""


@dataclasses.dataclass(frozen=True)
class RunIdentity:
  """run.json: which run a directory holds. `private` is False for --nodp and for
  --insecure_fixed_key runs (then `reason` says why)."""

  run_id: str
  dp: bool
  key_source: str  # privacy_key.SOURCE_* ("" for --nodp)
  private: bool
  reason: str = ""

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def read_identity(workdir: str) -> Optional[RunIdentity]:
  """run.json, or None if there is none; ProvenanceError if it is unreadable."""
  target = path(workdir, IDENTITY_FILE)
  if not files.exists(target):
    return None
  try:
    data = json.loads(files.read_text(target))
    fields = {f.name for f in dataclasses.fields(RunIdentity)}
    identity = RunIdentity(**{k: data[k] for k in fields})
  except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
    raise ProvenanceError(f"{target}: not a run identity ({type(e).__name__}: {e}); the run "
                          "cannot be resumed safely: use a new --workdir") from None
  if not isinstance(identity.run_id, str) or not identity.run_id:
    raise ProvenanceError(f"{target}: empty run_id; use a new --workdir")
  return identity


def write_identity(workdir: str, identity: RunIdentity) -> None:
  write_json_atomic(path(workdir, IDENTITY_FILE), identity.to_json())


def checkpoint_files_exist(workdir: str) -> bool:
  """Anything in <workdir>/checkpoints (a readable index or not)."""
  folder = path(workdir, CHECKPOINT_DIR)
  # A save killed before its rename leaves only a "*_temp*" directory: no checkpoint.
  return files.isdir(folder) and any("_temp" not in name for name in files.listdir(folder))

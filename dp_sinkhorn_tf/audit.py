r"""`python -m dp_sinkhorn_tf.audit`: measured lower bounds on ε for a training config.

  # white box, one private step of the flagfile's mechanism, with negative controls
  python -m dp_sinkhorn_tf.audit --audit=step --flagfile=launch/digits.flags \
      --audit_out=runs/audit_step
  # black box, one training run with canaries (trains like dp_sinkhorn_tf.main)
  python -m dp_sinkhorn_tf.audit --audit=run --flagfile=launch/digits.flags \
      --workdir=runs/audit_digits

Takes every training flag of `dp_sinkhorn_tf.main` (the audited config) plus the --audit_*
flags. Writes <audit_out>/audit.json (a "step" and/or a "run" section; one audit keeps the
other's section) and <audit_out>/{step,run}_audit_roc.png: each attack's ROC curve against
the region the certified ε allows. The audits are `dp_sinkhorn_tf.evaluation.audit_lib`
(what each does, and the canary file <workdir>/audit_canaries.npz that must NOT be
published); their math is `dp_sinkhorn_tf.privacy.auditing`. Re-running a run audit resumes
an interrupted run, and on a finished one only re-scores.
"""

from absl import app, flags

from dp_sinkhorn_tf import cli
from dp_sinkhorn_tf import main as main_lib
from dp_sinkhorn_tf.evaluation import audit_lib
from dp_sinkhorn_tf.io import files, rundir
from dp_sinkhorn_tf.train import train_flags

FLAGS = flags.FLAGS
flags.DEFINE_enum("audit", "step", ["step", "run"], "step: white-box audit of one private "
                  "step (seconds to minutes); run: black-box audit of one training run "
                  "with canaries (trains the flagfile's config).")
flags.DEFINE_string("audit_out", None, "Folder of audit.json and audit_roc.png (unset: "
                    "<workdir>/audit).")
flags.DEFINE_integer("audit_trials", 10000, "Step audit: releases per side (half fit the "
                     "test, half measure it).")
flags.DEFINE_bool("audit_controls", True, "Step audit: also audit the broken mechanisms "
                  "(each must be flagged).")
flags.DEFINE_float("audit_shift", 0.0, "Step audit: 0 = the neighbouring batches ∅ and "
                   "{canary}; s in (0, 0.5] = two synthetic clean blocks u and u + shift, "
                   "‖shift‖ = s·2C (where a Gaussian allows only the ε of multiplier σ/s).")
flags.DEFINE_float("audit_confidence", 0.95, "Confidence of the lower bounds.")
flags.DEFINE_integer("audit_canaries", 200, "Run audit: number m of canaries.")
flags.DEFINE_integer("audit_canary_copies", 1, "Run audit: records per included canary. "
                     "1 = the audit; k > 1 is the positive control of the attack: a canary "
                     "repeated k times is protected only at group level (about k·ε), so a "
                     "working attack must find it.")
flags.DEFINE_integer("audit_samples_per_class", 1000, "Run audit: generated images per "
                     "label the attacker draws from the export.")


def audit_config_from_flags(f, workdir: str) -> audit_lib.AuditConfig:
  """The --audit_* flags of `f` as an AuditConfig (ValueError naming a bad one)."""
  return audit_lib.AuditConfig(
      kind=f.audit, out=f.audit_out or rundir.path(workdir, rundir.AUDIT_DIR),
      trials=f.audit_trials, controls=f.audit_controls, shift=f.audit_shift,
      confidence=f.audit_confidence, canaries=f.audit_canaries,
      canary_copies=f.audit_canary_copies, samples_per_class=f.audit_samples_per_class)


def main(argv) -> int:
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}: all options are --flags")
  try:
    cfg = train_flags.config_from_flags(FLAGS)
    cli.require(cfg.data.privacy_unit == "record", "privacy_unit", "record (the audit's "
                "canaries are records)", cfg.data.privacy_unit)
    audit_cfg = audit_config_from_flags(FLAGS, cfg.run.workdir)
    if audit_cfg.kind == "step":
      return audit_lib.run_step(cfg, audit_cfg, log=print)
    return audit_lib.run_run(cfg, audit_cfg, FLAGS.flags_into_string(), train=main_lib.run,
                             log=print)
  except (ValueError, FileNotFoundError) as e:
    cli.fail(str(e))
  except OSError as e:
    cli.fail(files.os_error(e, FLAGS.audit_out or FLAGS.workdir))
  return 2


if __name__ == "__main__":
  app.run(main, flags_parser=cli.absl_parser(FLAGS))

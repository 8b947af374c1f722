r"""The privacy audits of a training config, as a library: `python -m dp_sinkhorn_tf.audit`
turns its flags into a `train.config.TrainConfig` and an `AuditConfig` and calls `run_step`
or `run_run`. The math (bounds, adversaries, ROC) is `dp_sinkhorn_tf.privacy.auditing`;
this module builds the settings, runs the trials and writes the reports.

Reports. <out>/audit.json (a "step" and/or a "run" section; one audit keeps the other's
section) and <out>/{step,run}_audit_roc.png: each attack's ROC curve against the region the
certified ε allows. `log` receives the lines the command prints.

Step audit (`step_setting`, `real_release`, `CONTROLS`). Neighbouring private batches: Y the
empty batch (a valid Poisson sample, and the neighbour pair in which the canary's gradient is
diluted by nothing) and Y′ = {canary}; the canary is the candidate (constant, checkerboard
or half images, each with every label; never a private record, so audit.json stays
publishable) that moves the clipped release most. The attacker sees the release BEFORE
--release_blur: the blur is post-processing, so auditing the unblurred release is the
stronger attack. `--audit_shift=s` replaces the canary pair by two synthetic clean blocks
s·2C apart (`shifted_setting`): a controlled shift at which a Gaussian allows little.

Adversaries (`adversaries`): each release is attacked by the linear (Neyman–Pearson) test
and by the lattice test on the noise grids (`noise_grids`: TF's float32 Box–Muller grid, and
γℤ for a mechanism that releases on a lattice), each bound at its Bonferroni share of
the confidence. A mechanism or control is flagged when its largest bound exceeds what the
claimed mechanism allows for the audited pair (the Gaussian at multiplier σ·2C/‖u‖ for a
one-step claim), which never exceeds the certified ε. The control `float32_gaussian` keeps
the float32 `tf.random.stateless_normal` noise the mechanism shipped before issue 35: only
the lattice test can flag it.

Run audit. --audit_canaries block canaries (`auditing.block_canaries`), each added to the
private training set with probability ½ by a secret audit key from the OS; the draw is kept
in <workdir>/audit_canaries.npz (DO NOT PUBLISH: its inclusion bits are the membership
secret) and reused on a resume. Training is the `train` the command passes (`main.run`,
as `python -m dp_sinkhorn_tf.main` trains) on the augmented set, so the run has its own
privacy key, ledger and export; the q of that run is B/N for its N, which counts the
included canaries (a public N then reveals how many are in, not which). The attacker then draws --audit_samples_per_class images per label from the
exported generator only.
Re-running the command resumes an interrupted run, and on a finished one only re-scores.

`out` and the work directory may be local or on any tf.io.gfile file system (gs://, ram://:
`io.files`); audit_canaries.npz is created 0600 locally, and on a remote store is protected
only by the store's own access control.
"""

import dataclasses
import io
import json
import math
import os
from typing import Callable, Dict, Optional

import numpy as np

from dp_sinkhorn_tf.io import errors, files, rundir
from dp_sinkhorn_tf.privacy import accounting, auditing

Log = Callable[[str], None]  # one line of the command's output
# (cfg, flags_text, dataset) → exit code: trains a run as `python -m dp_sinkhorn_tf.main`.
Train = Callable[[object, str, object], int]

AUDIT_FILE = "audit.json"
ROC_FILE = "audit_roc.png"
CANARY_FILE = rundir.AUDIT_CANARY_FILE


@dataclasses.dataclass(frozen=True)
class AuditConfig:
  """The --audit_* flags, validated; each field is the flag --audit_<name> (`kind` is
  --audit, `out` is --audit_out or <workdir>/audit)."""

  kind: str  # "step" | "run"
  out: str
  trials: int  # step audit: releases per side
  controls: bool  # step audit: also audit the broken mechanisms
  shift: float  # step audit: 0 = the canary pair; s > 0 = synthetic blocks s·2C apart
  confidence: float  # of the lower bounds
  canaries: int  # run audit: m
  canary_copies: int  # run audit: records per included canary (> 1: positive control)
  samples_per_class: int  # run audit: generated images per label the attacker draws

  def __post_init__(self):
    for name in ("trials", "canaries", "samples_per_class"):
      errors.require(getattr(self, name) >= 2, f"audit_{name}", "an integer ≥ 2",
                  getattr(self, name))
    errors.require(self.canary_copies >= 1, "audit_canary_copies", "an integer ≥ 1",
                self.canary_copies)
    errors.require(0.5 < self.confidence < 1, "audit_confidence", "a number in (0.5, 1)",
                self.confidence)
    errors.require(0 <= self.shift <= 0.5, "audit_shift", "a number in [0, 0.5]", self.shift)



# ---- the step audit ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class StepSetting:
  """Everything one audited step needs: the model (generator, loss, mechanism), n, and the
  clean image gradients of the two neighbouring batches."""

  model: object  # trainer.DPSinkhornModel
  num_private: int
  l2_norm_clip: float
  noise_multiplier: float
  grad_out: object  # tf.Tensor [n + n′, H, W, C]: G on Y
  grad_in: object  # G on Y′ = Y + canary
  canary: np.ndarray
  canary_label: int

  def clean(self, grad) -> np.ndarray:
    """clip_C(G[:n]): the noise-free release, the attack's reference points."""
    from dp_sinkhorn_tf.privacy import gaussian
    return gaussian.clip_record(grad[:self.num_private], self.l2_norm_clip).numpy()

  @property
  def fraction(self) -> float:
    """‖clip(G_Y′) − clip(G_Y)‖ / 2C ∈ [0, 1]: how far apart the two clean releases are."""
    diff = (self.clean(self.grad_in).astype(np.float64)
            - self.clean(self.grad_out).astype(np.float64))
    return min(float(np.linalg.norm(diff)) / (2 * self.l2_norm_clip), 1.0)

  @property
  def noise_stddev(self) -> float:
    """2σC: the std of the noise the accounting assumes on each private entry."""
    return 2.0 * self.noise_multiplier * self.l2_norm_clip


def step_setting(cfg, dataset, noise_multiplier: float, sample_rate: float) -> StepSetting:
  """The audited step of `cfg` on `dataset`: generator initialised from --seed, the step-0
  latents and labels, Y = ∅, and the canary that maximises ‖clip(G_Y′) − clip(G_Y)‖."""
  import tensorflow as tf

  from dp_sinkhorn_tf.privacy import gaussian
  from dp_sinkhorn_tf.train import trainer

  tf.keras.utils.set_random_seed(cfg.run.seed)
  gen = trainer.make_generator(cfg, dataset.image_shape, dataset.num_classes, build=True)
  model = trainer.DPSinkhornModel(gen, dataset.images, dataset.labels, dataset.num_classes,
                                  cfg, noise_multiplier, sample_rate)
  n, clip = cfg.num_primary, cfg.privacy.l2_norm_clip
  empty = np.zeros((0,) + tuple(dataset.image_shape), np.float32)
  no_labels = np.zeros([0], np.int64)
  best = None
  for canary in auditing.canary_candidates(dataset.image_shape):
    for label in range(dataset.num_classes):
      g_out, g_in, _ = auditing.canary_gradients(model, empty, no_labels, canary, label)
      moved = float(tf.norm(gaussian.clip_record(g_in[:n], clip)
                            - gaussian.clip_record(g_out[:n], clip)))
      if best is None or moved > best[0]:
        best = (moved, g_out, g_in, canary, label)
  _, g_out, g_in, canary, label = best
  return StepSetting(model, n, clip, noise_multiplier, g_out, g_in, canary, label)


def shifted_setting(setting: StepSetting, shift: float) -> StepSetting:
  """`setting` with two synthetic clipped blocks s·2C apart in place of the canary pair.

  a = C·(√(1 − s²)·ĝ − s·ê) and b = C·(√(1 − s²)·ĝ + s·ê), with ĝ the direction of
  clip(G_Y) and ê the part of clip(G_Y′) − clip(G_Y) orthogonal to it (the canary's own
  direction; fixed unit vectors where these vanish): ‖a‖ = ‖b‖ = C and ‖b − a‖ = s·2C. The
  gradients fed to the mechanism are ρ·a and ρ·b with ρ ≥ 2 (the larger of ‖G_Y[:n]‖ and
  ‖G_Y′[:n]‖ over C): like a real gradient they are clipped, to a and b up to float32
  rounding (which `StepSetting.clean` repeats exactly as the mechanism does), so the
  no_clip control stays broken. The public rows stay those of G_Y and G_Y′. Needs
  0 < s ≤ ½.
  """
  import tensorflow as tf

  if not 0 < shift <= 0.5:
    raise ValueError(f"--audit_shift={shift}: expected a number in (0, 0.5]")
  n, clip = setting.num_private, setting.l2_norm_clip
  out = setting.clean(setting.grad_out).astype(np.float64)
  move = setting.clean(setting.grad_in).astype(np.float64) - out
  basis = np.eye(2, out.size).reshape((2,) + out.shape)

  def unit(v, fallback):
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 1e-12 * clip else fallback

  g_hat = unit(out, unit(move, basis[0]))
  e_hat = unit(move - np.vdot(move, g_hat) * g_hat,
               unit(basis[1] - np.vdot(basis[1], g_hat) * g_hat, basis[0]))
  a = clip * (math.sqrt(1 - shift**2) * g_hat - shift * e_hat)
  b = clip * (math.sqrt(1 - shift**2) * g_hat + shift * e_hat)
  norms = [float(np.linalg.norm(np.asarray(g)[:n])) for g in (setting.grad_out, setting.grad_in)]
  rho = max(2.0, max(norms) / clip)

  def with_private(block, grad):
    return tf.concat([tf.constant(rho * block, tf.float32), tf.convert_to_tensor(grad)[n:]],
                     axis=0)

  return dataclasses.replace(setting, grad_out=with_private(a, setting.grad_out),
                             grad_in=with_private(b, setting.grad_in))


ReleaseFn = Callable[[object, object], np.ndarray]  # (grad, noise seed) → release rows [:n]


def _compiled_release(mechanism, n: int) -> ReleaseFn:
  """(grad, seed) → rows [:n] of `mechanism.privatize(grad, n, seed)`, run under tf.function
  as the train step runs it (one trace per gradient shape; ~6× faster than eagerly, which
  is what makes thousands of trials affordable)."""
  import tensorflow as tf

  compiled = tf.function(lambda grad, seed: mechanism.privatize(grad, n, seed)[0][:n],
                         autograph=False)
  return lambda grad, seed: compiled(tf.convert_to_tensor(grad), seed).numpy()


def real_release(setting: StepSetting) -> ReleaseFn:
  """The shipped mechanism, `model.mechanism.privatize`, its private rows."""
  return _compiled_release(setting.model.mechanism, setting.num_private)


def _no_noise(s: StepSetting) -> ReleaseFn:
  from dp_sinkhorn_tf.privacy import gaussian
  return _compiled_release(gaussian.ImageGradientMechanism(s.l2_norm_clip, 0.0), s.num_private)


def _no_clip(s: StepSetting) -> ReleaseFn:
  """Noise for sensitivity 2C (float32 Gaussian), but the gradient is not clipped."""
  import tensorflow as tf

  @tf.function
  def release(grad, seed):
    g = grad[:s.num_private]
    std = 2 * s.noise_multiplier * s.l2_norm_clip
    return g + tf.random.stateless_normal(tf.shape(g), seed, stddev=std, dtype=tf.float32)

  return lambda grad, seed: release(tf.convert_to_tensor(grad), seed).numpy()


def _half_noise(s: StepSetting) -> ReleaseFn:
  """The noise reaches only the first half of the private rows."""
  import tensorflow as tf

  from dp_sinkhorn_tf.privacy import gaussian
  n, half = s.num_private, s.num_private // 2

  @tf.function(autograph=False)
  def release(grad, seed):
    noised = s.model.mechanism.privatize(grad, n, seed)[0][:half]
    clean = gaussian.clip_record(grad[:n], s.l2_norm_clip)  # = s.clean(grad)
    return tf.concat([noised, clean[half:]], axis=0)

  return lambda grad, seed: release(tf.convert_to_tensor(grad), seed).numpy()


def _float32_gaussian(s: StepSetting) -> ReleaseFn:
  """Clip to C, add float32 `tf.random.stateless_normal` noise of std 2σC: the shipped
  noise until issue 35 (the old `gaussian.keyed_gaussian_noise`), kept here so it stays
  audited after the mechanism changes. Gaussian to the linear test; but TF draws it by
  Box–Muller from 23-bit uniforms, so every pair of entries lies on a finite grid
  (`auditing.BoxMullerFloat32Grid`) that the lattice adversary finds."""
  import tensorflow as tf

  from dp_sinkhorn_tf.privacy import gaussian

  @tf.function
  def release(grad, seed):
    clipped = gaussian.clip_record(grad[:s.num_private], s.l2_norm_clip)
    return clipped + tf.random.stateless_normal(tf.shape(clipped), seed,
                                                stddev=s.noise_stddev, dtype=tf.float32)

  return lambda grad, seed: release(tf.convert_to_tensor(grad), seed).numpy()


def _reused_noise(s: StepSetting) -> ReleaseFn:
  """Two steps released with the same noise: their difference is noise-free. The mechanism
  runs at 2σ, so the two steps' certified ε stays below what the trials can measure."""
  import tensorflow as tf

  from dp_sinkhorn_tf.privacy import gaussian
  other = tf.reverse(tf.convert_to_tensor(s.grad_out), axis=[1])  # another step's gradient
  mech = _compiled_release(
      gaussian.ImageGradientMechanism(s.l2_norm_clip, 2 * s.noise_multiplier), s.num_private)
  clean_other = s.clean(other)

  def release(grad, seed):
    return mech(grad, seed) - mech(other, seed) + clean_other

  return release


# A certify function gives the ε the accounting claims for a control, for clean releases
# `fraction`·2C apart: fraction = 1 is the certified ε (worst pair), the setting's own
# fraction what the claimed mechanism allows for the audited pair (the flag's reference).

def _two_steps_certified(s: StepSetting, cfg, delta: float, sample_rate: float,
                         fraction: float = 1.0) -> float:
  """Two independent Gaussian steps at 2σ: one Gaussian at 2σ/√2."""
  del cfg, sample_rate
  return auditing.pair_gaussian_epsilon(2 * s.noise_multiplier / math.sqrt(2), fraction, delta)


def _one_step_certified(s: StepSetting, cfg, delta: float, sample_rate: float,
                        fraction: float = 1.0) -> float:
  del cfg, sample_rate
  return auditing.pair_gaussian_epsilon(s.noise_multiplier, fraction, delta)


def _subsampled_certified(s: StepSetting, cfg, delta: float, sample_rate: float,
                          fraction: float = 1.0) -> float:
  """What the accountant charges a step: the Gaussian at rate q. An attacker who knows the
  batch faces the unsubsampled Gaussian, which the real mechanism's audit exceeds."""
  import dp_accounting
  del cfg
  if fraction == 0:
    return 0.0
  acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
  acc.compose(dp_accounting.PoissonSampledDpEvent(
      sample_rate, dp_accounting.GaussianDpEvent(s.noise_multiplier / fraction)))
  return float(acc.get_epsilon(delta))


# name → (release builder, certified ε of what the accounting claims, what is broken)
CONTROLS: Dict[str, tuple] = {
    "no_noise": (_no_noise, _one_step_certified, "σ = 0"),
    "no_clip": (_no_clip, _one_step_certified, "clip removed"),
    "half_noise": (_half_noise, _one_step_certified, "noise on half the private rows"),
    "float32_gaussian": (_float32_gaussian, _one_step_certified,
                         "float32 tf.random.stateless_normal noise: Box–Muller on a finite "
                         "grid"),
    "reused_noise": (_reused_noise, _two_steps_certified,
                     "the same noise at two steps (at 2σ, certified as two independent steps)"),
    "known_batches": (real_release, _subsampled_certified,
                      "the batches known to the attacker (certified at the subsampled rate)"),
}


def noise_grids(mechanism, entries: int) -> tuple:
  """The grids the lattice adversary tries on `mechanism`'s releases of a private block of
  `entries` values: TF's float32 Box–Muller grid (any `tf.random.stateless_normal` noise
  left in the path), and γℤ for a mechanism that releases on a lattice
  (`lattice_params(entries).gamma`, `privacy.lattice`)."""
  grids = [auditing.BoxMullerFloat32Grid()]
  params = getattr(mechanism, "lattice_params", None)
  if (params is not None and mechanism.is_private and mechanism.noise_multiplier > 0
      and mechanism.l2_norm_clip > 0):
    grids.append(auditing.LatticeGrid(params(entries).gamma))
  return tuple(grids)


def adversaries(setting: StepSetting) -> tuple:
  """Every adversary of the step audit, the same against the real mechanism and each
  control: the linear (Neyman–Pearson) test and the lattice test on `noise_grids` of the
  shipped mechanism, at the noise std the accounting assumes (2σC)."""
  entries = setting.num_private * int(np.prod(setting.grad_out.shape[1:]))
  return (auditing.LinearAdversary(),
          auditing.LatticeAdversary(setting.noise_stddev,
                                    noise_grids(setting.model.mechanism, entries)))


def audit_release(setting: StepSetting, release: ReleaseFn, trials: int, delta: float,
                  confidence: float, certified: Optional[float] = None,
                  reference: Optional[float] = None):
  """(StepAuditResult, {adversary: (scores_out, scores_in)}): `trials` releases per side,
  a fresh secret key per trial, every one of `adversaries(setting)`. certified / reference:
  the claimed ε for the worst pair / for this pair (default: one Gaussian step at σ)."""
  from dp_sinkhorn_tf.privacy import keys

  def make(grad):
    return lambda i: release(grad, keys.step_seed(keys.generate(), i,
                                                         keys.STREAM_NOISE))

  clean_out, clean_in = setting.clean(setting.grad_out), setting.clean(setting.grad_in)
  if certified is None:
    certified = _one_step_certified(setting, None, delta, 0.0)
    reference = _one_step_certified(setting, None, delta, 0.0, setting.fraction)
  return auditing.step_audit(make(setting.grad_out), make(setting.grad_in), clean_out, clean_in,
                          setting.noise_multiplier, setting.l2_norm_clip, delta, trials,
                          confidence, certified, return_scores=True,
                          adversaries=adversaries(setting), reference_epsilon=reference)


# ---- the run audit -------------------------------------------------------------------------

def draw_canaries(count: int, dataset):
  """(images, labels, included) from a fresh secret audit key (os.urandom)."""
  rng = np.random.default_rng(int.from_bytes(os.urandom(16), "little"))
  images, labels = auditing.block_canaries(count, dataset.image_shape, dataset.num_classes, rng)
  return images, labels, rng.random(count) < 0.5


def load_or_draw_canaries(path: str, count: int, dataset):
  """The run's canaries: read from `path` on a resume (same count), else drawn and written
  (atomically, before any training; owner-only 0600 on a local file system, a remote
  store's own access control elsewhere) so a resume trains on the same set."""
  if files.exists(path):
    try:
      with files.open_binary(path) as fh, np.load(fh) as z:
        images, labels, included = z["images"], z["labels"], z["included"]
    except (OSError, ValueError, KeyError, EOFError) as e:
      raise ValueError(f"{path}: not a canary file of this audit ({type(e).__name__})") \
          from None
    if len(images) != count or images.shape[1:] != tuple(dataset.image_shape):
      raise ValueError(f"--audit_canaries={count}: {path} holds {len(images)} canaries of "
                       f"shape {images.shape[1:]}; use its count or a new --workdir")
    return images, labels.astype(np.int32), included.astype(bool)
  images, labels, included = draw_canaries(count, dataset)
  files.makedirs(os.path.dirname(path) or ".")
  files.write_npz_atomic(path, dict(images=images, labels=labels, included=included),
                         mode=0o600)
  return images, labels, included


def with_canaries(dataset, images, labels, included, copies: int = 1):
  """The private set plus `copies` records of every included canary."""
  from dp_sinkhorn_tf.data import datasets
  extra = np.repeat(images[included], copies, axis=0)
  extra_labels = np.repeat(labels[included], copies)
  return datasets.Dataset(dataset.name, np.concatenate([dataset.images, extra]),
                      np.concatenate([dataset.labels, extra_labels]).astype(np.int32),
                      dataset.num_classes, dataset.image_shape, dataset.label_names)


def generate_from_export(version_dir: str, num_classes: int, per_class: int, seed: int):
  """(images, labels): per_class draws of every label from the export's `sample`."""
  import tensorflow as tf

  from dp_sinkhorn_tf.release import serving
  loaded = serving.load_saved_model(version_dir)
  labels = np.repeat(np.arange(num_classes, dtype=np.int32), per_class)
  images = []
  for start in range(0, len(labels), 1000):
    out = loaded.signatures[serving.SAMPLE](label=tf.constant(labels[start:start + 1000]),
                                            seed=tf.constant(seed + start, tf.int64))
    images.append(out["images"].numpy())
  return np.concatenate(images), labels



@dataclasses.dataclass(frozen=True)
class RocPanel:
  """One panel: attacks [(label, scores_out, scores_in, measured ε)] against the region
  an (ε, δ)-DP mechanism allows at the certified ε."""

  title: str
  certified: float
  delta: float
  attacks: tuple
  bound_name: str = "certified"  # what the region's ε is, for the legend


def plot_roc(path: str, panels) -> None:
  """Writes the ROC curves of `panels` (RocPanel), one panel each, to `path` (PNG)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 4.3), squeeze=False)
  grid = np.logspace(-5, 0, 400)
  colors = ("tab:red", "tab:purple", "tab:orange", "tab:brown", "tab:blue", "tab:olive",
            "tab:cyan")
  for ax, panel in zip(axes[0], panels):
    certified = panel.certified
    region = auditing.dp_region_tpr(grid, certified, panel.delta)
    bound = f"{certified:.2f}" if math.isfinite(certified) else "∞ (no DP)"
    ax.fill_between(grid, 0, region, color="tab:green", alpha=0.15,
                    label=f"allowed by {panel.bound_name} ε={bound}")
    for color, (label, s_out, s_in, measured) in zip(colors, panel.attacks):
      if not len(s_out) or not len(s_in):  # e.g. every canary drawn in: no curve to draw
        continue
      fpr, tpr = auditing.roc(np.asarray(s_out), np.asarray(s_in))
      # FPR 0 drawn at half a trial (a log axis has no 0): a perfect attack shows in the
      # corner instead of vanishing.
      fpr = np.maximum(fpr, 0.5 / len(s_out))
      ax.plot(fpr, tpr, color=color, lw=1.5, label=f"{label}: ε ≥ {measured:.2f}")
    ax.plot(grid, grid, color="0.6", lw=0.8, label="chance")
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_title(panel.title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
  fig.tight_layout()
  buf = io.BytesIO()
  try:
    fig.savefig(buf, dpi=110, format="png")
  finally:
    plt.close(fig)
  files.write_bytes_atomic(path, buf.getvalue())  # local or any tf.io.gfile path


def _write_report(out: str, section: str, payload: dict) -> str:
  files.makedirs(out)
  path = os.path.join(out, AUDIT_FILE)
  report = {}
  if files.exists(path):
    try:
      report = json.loads(files.read_text(path))
    except (OSError, ValueError):
      report = {}
  report[section] = payload
  rundir.write_json_atomic(path, report)
  return path


def _result_json(result: auditing.StepAuditResult, what: str) -> dict:
  out = auditing.summary(result, what)
  out["info"] = dataclasses.asdict(result.info)
  return out


def _verdict_line(result: auditing.StepAuditResult) -> str:
  """"ε ≥ max [adversary bound, …] vs reference / certified: verdict"."""
  each = ", ".join(f"{a.name} {a.epsilon_lower_bound:.3f}" for a in result.adversaries)
  verdict = (f"FLAGGED by {result.strongest}" if result.flagged else "not flagged")
  return (f"ε ≥ {result.epsilon_lower_bound:.3f} [{each}] vs {result.reference_epsilon:.3f} "
          f"for this pair (certified {result.certified_epsilon:.3f}): {verdict}")


def run_step(cfg, audit_cfg: AuditConfig, log: Log) -> int:
  """The step audit of `cfg`'s mechanism (`cfg`: a train.config.TrainConfig); writes the
  "step" section of audit.json and step_audit_roc.png to `audit_cfg.out`; 1 if the real
  mechanism or a control the audit can resolve is flagged, else 0."""
  from dp_sinkhorn_tf.data import datasets
  dataset = datasets.load(cfg.data)
  plan = accounting.plan_privacy(cfg, len(dataset.images))
  if not cfg.privacy.dp or cfg.privacy.mechanism != "image_grad":
    raise ValueError("--audit=step audits the image_grad mechanism of a --dp config")
  delta, conf, trials = cfg.privacy.delta, audit_cfg.confidence, audit_cfg.trials
  out = audit_cfg.out
  setting = step_setting(cfg, dataset, plan.noise_multiplier, plan.sample_rate)
  if audit_cfg.shift:
    setting = shifted_setting(setting, audit_cfg.shift)
  tried = adversaries(setting)
  names = [a.name for a in tried]
  grids = [g.name for a in tried for g in getattr(a, "grids", ())]
  log(f"step audit: σ={plan.noise_multiplier:.4g} C={cfg.privacy.l2_norm_clip:g} "
      f"δ={delta:g}, {trials} releases per side, fresh key each; adversaries "
      f"{', '.join(names)} (grids: {', '.join(grids)}), each at confidence "
      f"{1 - (1 - conf) / len(tried):.4g}")
  result, scores = audit_release(setting, real_release(setting), trials, delta, conf)
  achievable = result.reference_epsilon
  pair = (f"synthetic blocks {audit_cfg.shift:g}·2C apart" if audit_cfg.shift else
          f"the canary moves the release by {result.difference_norm / result.sensitivity:.2f}·2C")
  multiplier = plan.noise_multiplier * result.sensitivity / max(result.difference_norm, 1e-12)
  log(f"  {pair}: a Gaussian step at σ allows ε ≤ {achievable:.3f} here (multiplier "
      f"σ·2C/‖u‖ = {multiplier:.4g}); certified one step {result.certified_epsilon:.3f}")
  log(f"  real mechanism: {_verdict_line(result)}")
  half = trials // 2  # the ROC of the halves that measured the rates
  each_confidence = 1 - (1 - conf) / len(tried)  # an adversary's Bonferroni share
  controls, broken = ({}, []) if not audit_cfg.controls else _audit_controls(
      cfg, setting, plan.sample_rate, audit_cfg, each_confidence, log)
  payload = {"mechanism": _result_json(result, "real"), "reachable_epsilon": achievable,
             "adversaries": names, "grids": grids,
             "pair": {"kind": "shift" if audit_cfg.shift else "canary",
                      "shift": audit_cfg.shift, "fraction": setting.fraction},
             "canary_label": setting.canary_label, "trials_per_side": trials,
             "controls": controls}
  panels = [RocPanel(f"one private step, σ={plan.noise_multiplier:.3g}: real mechanism",
                     achievable, delta,
                     tuple((f"{a.name} attack", scores[a.name][0][half:],
                            scores[a.name][1][half:], a.epsilon_lower_bound)
                           for a in result.adversaries), "a Gaussian at this pair:")]
  if broken:
    panels.append(RocPanel("negative controls (must leave the region)", achievable, delta,
                           tuple(broken), "a Gaussian at this pair:"))
  path = _write_report(out, "step", payload)
  plot_roc(os.path.join(out, "step_" + ROC_FILE), panels)
  log(f"wrote {path} and {os.path.join(out, 'step_' + ROC_FILE)}")
  missed = [k for k, v in controls.items() if not v["flagged"] and v["resolvable"]]
  return 1 if result.flagged or missed else 0


def _audit_controls(cfg, setting: StepSetting, sample_rate: float, audit_cfg: AuditConfig,
                    each_confidence: float, log: Log):
  """({control: its audit.json entry}, [ROC attacks of the one-step controls]): every one of
  CONTROLS audited as the real mechanism is, one `log` line each; each_confidence is one
  adversary's share of the confidence (whether a control is resolvable at all)."""
  delta, conf, trials = cfg.privacy.delta, audit_cfg.confidence, audit_cfg.trials
  half = trials // 2  # the releases a side that measure the rates
  controls, broken = {}, []
  for name, (build, certify, what) in CONTROLS.items():
    certified = certify(setting, cfg, delta, sample_rate)
    reference = certify(setting, cfg, delta, sample_rate, setting.fraction)
    c, c_scores = audit_release(setting, build(setting), trials, delta, conf, certified,
                                reference)
    resolvable = _resolvable(name, setting, half, delta, each_confidence, reference)
    log(f"  control {name} ({what}): {_verdict_line(c)}"
        + ("" if c.flagged else " (the audit failed to detect it)" if resolvable else
           f" (below this audit's resolution: a perfect attack on its unsubsampled "
           f"Gaussian expects ε ≥ {resolvable.expected:.3f} at {half} releases a side)"))
    controls[name] = dict(_result_json(c, name), broken=what, resolvable=bool(resolvable))
    if certify is _one_step_certified:
      s_out, s_in = c_scores[c.strongest]
      broken.append((f"{name} ({c.strongest})", s_out[half:], s_in[half:],
                     c.epsilon_lower_bound))
  return controls, broken


class _Resolution:
  """Whether a negative control can be caught at this many trials (truthy), and the bound a
  perfect attack would expect."""

  def __init__(self, expected: float, needed: float):
    self.expected, self.needed = expected, needed

  def __bool__(self) -> bool:
    return self.expected > self.needed


def _resolvable(name: str, setting: StepSetting, trials_each: int, delta: float,
                confidence: float, needed: float) -> _Resolution:
  """known_batches leaves the unsubsampled Gaussian at multiplier σ/fraction: at a small
  --audit_shift no attack on so few trials can certify anything above the subsampled
  value. The other controls' flaws are unbounded (no noise, no clip, a half, a reuse)."""
  if name != "known_batches":
    return _Resolution(math.inf, needed)
  multiplier = setting.noise_multiplier / max(setting.fraction, 1e-12)
  return _Resolution(auditing.expected_gaussian_bound(multiplier, trials_each, delta,
                                                      confidence), needed)


def certified_run_epsilon(workdir: str) -> float:
  """The tightest ε the run's accountants prove (min over RDP and PLD in privacy.json);
  ∞ for a --nodp run."""
  report = json.loads(files.read_text(rundir.path(workdir, rundir.REPORT_FILE)))
  if not report.get("dp"):
    return math.inf
  return float(min(report["ledger"]["epsilon"].values()))


def run_run(cfg, audit_cfg: AuditConfig, flags_text: str, train: Train, log: Log) -> int:
  """The run audit: `train`s `cfg` (flags_text: its command line, for flags.txt) with
  canaries, then attacks the export; writes the "run" section of audit.json and
  run_audit_roc.png; 1 if the bound exceeds the certified ε, train's code if it fails."""
  from dp_sinkhorn_tf.data import datasets
  from dp_sinkhorn_tf.release import serving
  dataset = datasets.load(cfg.data)
  m, copies, out = audit_cfg.canaries, audit_cfg.canary_copies, audit_cfg.out
  images, labels, included = load_or_draw_canaries(
      os.path.join(cfg.run.workdir, CANARY_FILE), m, dataset)
  log(f"run audit: {m} canaries, {int(included.sum())} in the private set (secret audit "
      f"key; {os.path.join(cfg.run.workdir, CANARY_FILE)} is DO NOT PUBLISH)")
  # A finished run is re-scored, never trained further.
  cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, if_finished="skip"))
  code = train(cfg, flags_text, with_canaries(dataset, images, labels, included, copies))
  if code:
    return code
  version_dir, _ = serving.find_version_dir(
      os.path.join(cfg.run.workdir, "export", cfg.run.model_name))
  metadata = serving.read_metadata(version_dir)
  per_class = audit_cfg.samples_per_class
  gen, gen_labels = generate_from_export(version_dir, dataset.num_classes, per_class,
                                         cfg.run.seed)
  scores = auditing.nearest_distance_scores(images, labels, gen, gen_labels)
  result = auditing.one_run_audit(scores, included, cfg.privacy.delta, audit_cfg.confidence)
  certified = certified_run_epsilon(cfg.run.workdir)
  log(f"  one-run audit: ε ≥ {result.epsilon_lower_bound:.3f} ({result.correct}/"
      f"{result.guesses} guesses right) vs certified ε={certified:.3f}")
  payload = dict(dataclasses.asdict(result),
                 certified_epsilon=certified if math.isfinite(certified) else None,
                 private=metadata.get("private"), copies=copies,
                 flagged=result.epsilon_lower_bound >
                 certified, samples_per_class=per_class, run_id=metadata.get("run_id"),
                 score="−min squared distance to generated images of the canary's label",
                 auc=float(np.mean(scores[included][:, None] > scores[~included][None, :])))
  path = _write_report(out, "run", payload)
  plot_roc(os.path.join(out, "run_" + ROC_FILE),
           [RocPanel(f"one training run, {m} canaries × {copies}",
                     certified, cfg.privacy.delta,
                     (("nearest generated image", scores[~included], scores[included],
                       result.epsilon_lower_bound),))])
  log(f"wrote {path} and {os.path.join(out, 'run_' + ROC_FILE)}")
  return 1 if payload["flagged"] else 0


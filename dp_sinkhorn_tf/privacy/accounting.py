"""Privacy accounting for T Poisson-subsampled Gaussian steps, and the privacy ledger.

Each DP-Sinkhorn step is a Gaussian mechanism with noise multiplier σ (std 2σC over
sensitivity 2C, see `privacy`) applied to a Poisson sample with rate q. The run is the
T-fold composition of PoissonSampledDpEvent(q, GaussianDpEvent(σ)); dp_accounting (the
library TF Privacy 0.9.0 itself calls) turns it into ε for a given δ with

  * "rdp": Rényi-DP of the subsampled Gaussian (Mironov et al. 2019), converted to (ε, δ);
  * "pld": privacy loss distributions (tighter; slower for very long runs).

Neighbouring data sets differ by adding or removing one record (`NEIGHBOURING_RELATION`),
the only relation dp_accounting 0.4.3 accounts for Poisson sampling: both its RdpAccountant
and its PLDAccountant refuse PoissonSampledDpEvent under REPLACE_ONE or REPLACE_SPECIAL
(UnsupportedEventError: "neighboring_relation must be `ADD_OR_REMOVE_ONE` for
`PoissonSampledDpEvent`"; rdp_privacy_accountant.py and pld_privacy_accountant.py). N is
published (privacy.json), so it is treated as public.

Planning inverts ε(T) or ε(σ) by bisection; both are monotone (ε grows with T, falls with
σ). The ledger records what a run spent; it is written atomically (temp file, fsync,
rename) so a crash leaves the previous ledger, never a torn one.
"""

import dataclasses
import functools
import json
import math
import warnings
from typing import Optional, Tuple

import dp_accounting
import numpy as np

from dp_sinkhorn_tf.io import files

ACCOUNTANTS = ("rdp", "pld")
# What ε is about (printed with the plan, in privacy.json and in the export's metadata).
NEIGHBOURING_RELATION = ("add/remove one record; N treated as public, as in TF Privacy's "
                         "compute_dp_sgd_privacy")
_RELATION = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
# PLD discretisation of the privacy loss: finer is tighter and slower. The error is
# pessimistic and grows with T: at q=1/1200, σ=1, T=2,978,558, δ=1e-5 an interval of 1e-3
# reports ε=10.20 (worse than RDP's 10.00) where 1e-4 reports 9.32, in ~2 s per evaluation.
PLD_DISCRETIZATION = 1e-4
# The stage names of a run's mechanisms (`Stage`, the ledger's `stages`, privacy.json).
DP_SINKHORN_STAGE = "dp_sinkhorn"
WARM_START_STAGE = "warm_start"


def _validate(q: float, noise_multiplier: float, delta: float, accountant: str) -> None:
  if not 0 < q <= 1:
    raise ValueError(f"sample rate q must be in (0, 1], got {q}")
  if not noise_multiplier >= 0:
    raise ValueError(f"noise_multiplier σ must be ≥ 0, got {noise_multiplier}")
  if not 0 < delta < 1:
    raise ValueError(f"delta must be in (0, 1), got {delta}")
  if accountant not in ACCOUNTANTS:
    raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")


def dp_event(q: float, noise_multiplier: float, steps: int) -> dp_accounting.DpEvent:
  """T-fold self-composition of the Poisson-subsampled Gaussian with multiplier σ."""
  step = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(noise_multiplier))
  return dp_accounting.SelfComposedDpEvent(step, steps)


def compute_epsilon(q: float, noise_multiplier: float, steps: int, delta: float,
                    accountant: str = "rdp") -> float:
  """ε such that T steps of the subsampled Gaussian (q, σ) are (ε, δ)-DP under add/remove
  neighbours (`NEIGHBOURING_RELATION`)."""
  _validate(q, noise_multiplier, delta, accountant)
  if steps < 0:
    raise ValueError(f"steps must be ≥ 0, got {steps}")
  if steps == 0:
    return 0.0
  if noise_multiplier == 0:
    return math.inf
  if accountant == "rdp":
    return _epsilon_rdp(q, noise_multiplier, steps, delta)
  return _epsilon_of(dp_event(q, noise_multiplier, steps), delta, accountant)


def _epsilon_rdp(q: float, noise_multiplier: float, steps: int, delta: float) -> float:
  """RdpAccountant's ε of `dp_event(q, σ, T)`, from the one-step RDP curve kept per (q, σ).

  The accountant composes T steps as RDP(T) = 0 + T·RDP(1) at its default orders and converts
  with `compute_epsilon(orders, RDP(T), δ)`; the same two operations on the same floats here
  give the same ε bit for bit (tested), without recomputing RDP(1) — the slow part — on every
  log line and every step of a bisection."""
  orders, one_step = _one_step_rdp(q, noise_multiplier)
  return float(dp_accounting.rdp.compute_epsilon(orders, steps * one_step, delta)[0])


@functools.lru_cache(maxsize=256)
def _one_step_rdp(q: float, noise_multiplier: float):
  """(orders, RDP at each order) of one Poisson-subsampled Gaussian step, by RdpAccountant."""
  acc = dp_accounting.rdp.RdpAccountant(neighboring_relation=_RELATION)
  acc.compose(dp_event(q, noise_multiplier, 1))
  one_step = np.array(acc.rdp, dtype=np.float64)
  one_step.setflags(write=False)
  return np.array(dp_accounting.rdp.rdp_privacy_accountant.DEFAULT_RDP_ORDERS), one_step


def _epsilon_of(event: dp_accounting.DpEvent, delta: float, accountant: str) -> float:
  """ε at δ of `event` under add/remove neighbours, by the named accountant."""
  if accountant == "rdp":
    acc = dp_accounting.rdp.RdpAccountant(neighboring_relation=_RELATION)
  else:
    acc = dp_accounting.pld.PLDAccountant(neighboring_relation=_RELATION,
                                          value_discretization_interval=PLD_DISCRETIZATION)
  acc.compose(event)
  return float(acc.get_epsilon(delta))


def max_steps(target_epsilon: float, delta: float, q: float, noise_multiplier: float,
              accountant: str = "rdp", limit: int = 10**9) -> int:
  """The largest T with ε(T) ≤ target_epsilon (0 if even one step exceeds it)."""
  if not target_epsilon > 0:
    raise ValueError(f"target_epsilon must be > 0, got {target_epsilon}")
  _validate(q, noise_multiplier, delta, accountant)

  def ok(t: int) -> bool:
    return compute_epsilon(q, noise_multiplier, t, delta, accountant) <= target_epsilon

  if not ok(1):
    return 0
  lo, hi = 1, 2
  while ok(hi):
    lo, hi = hi, hi * 2
    if hi > limit:
      return limit
  while hi - lo > 1:  # invariant: ok(lo), not ok(hi)
    mid = (lo + hi) // 2
    lo, hi = (mid, hi) if ok(mid) else (lo, mid)
  return lo


def min_noise_multiplier(target_epsilon: float, delta: float, q: float, steps: int,
                         accountant: str = "rdp", tolerance: float = 1e-3) -> float:
  """The smallest σ (to within `tolerance`, rounded up) with ε(σ) ≤ target_epsilon."""
  if not target_epsilon > 0:
    raise ValueError(f"target_epsilon must be > 0, got {target_epsilon}")
  if steps < 1:
    raise ValueError(f"steps must be ≥ 1, got {steps}")
  _validate(q, 1.0, delta, accountant)

  def ok(sigma: float) -> bool:
    return compute_epsilon(q, sigma, steps, delta, accountant) <= target_epsilon

  lo, hi = 0.0, 1.0
  while not ok(hi):
    lo, hi = hi, hi * 2
    if hi > 1e6:
      raise ValueError(f"no noise multiplier reaches ε={target_epsilon} for {steps} steps")
  while hi - lo > tolerance:  # invariant: ε(hi) ≤ target < ε(lo) (or lo = 0)
    mid = 0.5 * (lo + hi)
    lo, hi = (lo, mid) if ok(mid) else (mid, hi)
  return hi


def check_delta(delta: float, dataset_size: int) -> Optional[str]:
  """A warning text when δ ≥ 1/N (then "release one record in the clear" satisfies the
  guarantee: δ should be well below 1/N), else None. Also emitted as a warning."""
  if dataset_size > 0 and delta >= 1.0 / dataset_size:
    text = (f"delta={delta:g} ≥ 1/N = {1.0 / dataset_size:.3g}: such a δ permits leaking a "
            "whole record; choose δ ≪ 1/N")
    warnings.warn(text)
    return text
  return None


@dataclasses.dataclass(frozen=True)
class PrivacyLedger:
  """What a run has spent.

  steps_taken only grows: it is the number of distinct step indices 0…steps_taken−1 that
  may have run (charged before they run). Step t's release is a deterministic function of
  (secret key, t, private data, weights at t), so a step index re-run after a crash, from a
  checkpoint of the same run on the same data (`data_fingerprint`), releases what it
  released before and is charged once. checkpoint_step is the step of the newest
  checkpoint whose outputs may have been written; a resume must start at or after it, so
  no step whose outputs anyone may have seen is ever re-run.

  run_id ties the ledger to the run's checkpoints; data_fingerprint is HMAC(key, data)
  (`privacy_key.data_fingerprint`): keep the ledger private, like the key.

  gradient_flags are the flags that shape each step's released gradient and update
  (`train.config.gradient_flags`, {name: value}) and gradient_flags_sha256 their SHA-256:
  a resume must present the same, so that re-running a step index applies its noise to the
  gradient it was drawn for. A ledger of an earlier version lacks both (None, "").

  noise describes the mechanism's exact noise (`privacy.lattice`: γ, the effective
  multiplier σ_eff ≥ noise_multiplier, …); ε is charged at noise_multiplier ≤ σ_eff, an
  upper bound. None in a ledger of an earlier version or of a run without noise.
  """

  sample_rate: float
  noise_multiplier: float
  l2_norm_clip: float
  delta: float
  target_epsilon: float
  planned_steps: int
  accountant: str
  steps_taken: int
  dataset_size: int
  run_id: str = ""
  data_fingerprint: str = ""
  checkpoint_step: int = 0
  gradient_flags: Optional[dict] = None
  gradient_flags_sha256: str = ""
  noise: Optional[dict] = None
  stages: Optional[list] = None

  def __post_init__(self):
    if self.steps_taken < 0 or self.planned_steps < 0:
      raise ValueError("ledger step counts must be ≥ 0")
    if not 0 <= self.checkpoint_step <= self.steps_taken:
      raise ValueError(f"ledger checkpoint_step={self.checkpoint_step} must be in "
                       f"[0, steps_taken={self.steps_taken}]")

  def epsilon(self, accountant: Optional[str] = None) -> float:
    """ε spent: the DP-Sinkhorn steps taken, composed with every stage charged before them."""
    if not self.stages:
      return compute_epsilon(self.sample_rate, self.noise_multiplier, self.steps_taken,
                             self.delta, accountant or self.accountant)
    return composed_epsilon(self.spent_stages(), self.delta, accountant or self.accountant)

  def spent_stages(self, planned: bool = False) -> list:
    """The run's mechanisms as `Stage`s, in order: each extra stage (charged or, with
    planned, as planned), then the DP-Sinkhorn steps (taken, or planned)."""
    out = [Stage(s["name"], s["noise_multiplier"], s["sample_rate"],
                 s["steps"] if planned else s["steps_taken"]) for s in self.stages or ()]
    steps = self.planned_steps if planned else self.steps_taken
    return out + [Stage(DP_SINKHORN_STAGE, self.noise_multiplier, self.sample_rate, steps)]

  def stage_charged(self, name: str) -> bool:
    """Whether stage `name` is charged in full (its release may have been made)."""
    return any(s["name"] == name and s["steps_taken"] >= s["steps"] for s in self.stages or ())

  def charged_stage(self, name: str, noise: Optional[dict] = None) -> "PrivacyLedger":
    """The ledger with stage `name` charged in full (write-ahead: save it before the
    release is computed), with `noise` (what the release's noise is, beside what it is
    charged as; not part of the plan a resume compares) recorded when given. KeyError for a
    stage the ledger does not plan."""
    if not any(s["name"] == name for s in self.stages or ()):
      raise KeyError(f"the privacy ledger plans no stage {name!r}")
    extra = {} if noise is None else {"noise": noise}
    stages = [dict(s, steps_taken=s["steps"], **extra) if s["name"] == name else dict(s)
              for s in self.stages]
    return dataclasses.replace(self, stages=stages)

  @property
  def is_exhausted(self) -> bool:
    return self.steps_taken >= self.planned_steps

  def advanced(self, steps: int) -> "PrivacyLedger":
    if steps < 0:
      raise ValueError(f"a ledger only advances, got {steps} steps")
    return dataclasses.replace(self, steps_taken=self.steps_taken + steps)

  def charged_through(self, end_step: int) -> "PrivacyLedger":
    """The ledger once step indices 0…end_step−1 are charged: max(steps_taken, end_step)."""
    return dataclasses.replace(self, steps_taken=max(self.steps_taken, int(end_step)))

  def checkpointed(self, step: int) -> "PrivacyLedger":
    """Records that the checkpoint of `step` is on disk (outputs up to it may follow)."""
    if step > self.steps_taken:
      raise ValueError(f"checkpoint step {step} beyond the {self.steps_taken} charged steps")
    return dataclasses.replace(self, checkpoint_step=max(self.checkpoint_step, int(step)))

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> "PrivacyLedger":
    fields = {f.name for f in dataclasses.fields(cls)}
    data = json.loads(text)
    missing = fields - set(data) - set(_ADDED_LATER)
    if missing:
      raise ValueError(f"privacy ledger lacks fields {sorted(missing)}")
    return cls(**{k: data[k] for k in fields if k in data})

  def save(self, path: str) -> None:
    """Atomic write (`files`): a reader sees the old ledger or the new one, never a part."""
    files.write_text_atomic(path, self.to_json())

  @classmethod
  def load(cls, path: str) -> "PrivacyLedger":
    try:
      return cls.from_json(files.read_text(path))
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as e:
      raise ValueError(f"{path}: not a privacy ledger ({e})") from None


# Fields an earlier version's ledger lacks: such a ledger loads with their defaults (and a
# resume then refuses it: `provenance.open_run`).
_ADDED_LATER = ("gradient_flags", "gradient_flags_sha256", "noise", "stages")
_CHECKS_ONLY = ("gradient_flags", "gradient_flags_sha256")

_PLAN_FIELDS = ("sample_rate", "noise_multiplier", "l2_norm_clip", "delta", "target_epsilon",
                "planned_steps", "accountant", "dataset_size")


def check_compatible(stored: PrivacyLedger, requested: PrivacyLedger) -> None:
  """Raises ValueError naming every plan field where a resumed run would differ."""
  diffs = [f"{name}: {getattr(stored, name)!r} in the workdir vs {getattr(requested, name)!r} "
           "now" for name in _PLAN_FIELDS
           if not _same(getattr(stored, name), getattr(requested, name))]
  if _planned(stored.stages) != _planned(requested.stages):
    diffs.append(f"stages: {_planned(stored.stages)} in the workdir vs "
                 f"{_planned(requested.stages)} now")
  if diffs:
    raise ValueError("the workdir holds a run with a different privacy plan (" +
                     "; ".join(diffs) + "); use a new --workdir or the same flags")


def _planned(stages) -> list:
  """The plan of a ledger's extra stages (what they spend), without what is charged or the
  description of its noise recorded at the charge (`train.warm_start.noise_record`)."""
  return [{k: v for k, v in s.items() if k not in ("steps_taken", "noise")}
          for s in stages or ()]


def _same(a, b) -> bool:
  if isinstance(a, float) or isinstance(b, float):
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
  return a == b


# Below this σ the PLD of the subsampled Gaussian spans so many discretisation steps that
# one evaluation takes minutes and gigabytes (σ=0.01: > 3.5 GB); such runs are not private
# in any useful sense, so the report gives RDP alone there.
PLD_MIN_NOISE_MULTIPLIER = 0.3


def report(ledger: PrivacyLedger, all_accountants: bool = True) -> dict:
  """privacy.json content: the ledger and ε under the run's accountant and, with
  all_accountants, under the other one too (PLD skipped, with a note, below σ=0.3)."""
  out = dataclasses.asdict(ledger)
  out.pop("data_fingerprint")  # keyed, but privacy.json is for publishing: keep it out
  for name in _CHECKS_ONLY:  # public (flags.txt publishes the flags), but checks, not a report
    out.pop(name)
  if ledger.noise is None:
    out.pop("noise")
  names = ACCOUNTANTS if all_accountants else (ledger.accountant,)
  out["epsilon"] = {}
  for acc in names:
    if (acc == "pld" and acc != ledger.accountant
        and ledger.noise_multiplier < PLD_MIN_NOISE_MULTIPLIER):
      out["epsilon"][acc] = None
      out["epsilon_note"] = (f"pld not computed for σ={ledger.noise_multiplier:g} < "
                             f"{PLD_MIN_NOISE_MULTIPLIER} (too costly; RDP is an upper bound)")
      continue
    out["epsilon"][acc] = ledger.epsilon(acc)
  if ledger.noise is not None and out["epsilon"].get("pld") is not None:
    out["pld_note"] = ("pld is the continuous Gaussian's curve at σ; for the exact lattice "
                       "noise the certified figure is rdp (privacy.lattice)")
  stages = stage_report(ledger)
  if stages is None:
    out.pop("stages")
    out["epsilon_planned"] = compute_epsilon(ledger.sample_rate, ledger.noise_multiplier,
                                             ledger.planned_steps, ledger.delta,
                                             ledger.accountant)
    return out
  out["epsilon_planned"] = composed_epsilon(ledger.spent_stages(planned=True), ledger.delta,
                                            ledger.accountant)
  out["stages"] = stages
  out["stages_note"] = ("each stage's epsilon_alone is its own ε at δ (spent so far); one "
                        "accountant composes them into epsilon, less than their sum")
  return out


def stage_epsilons(ledger: PrivacyLedger) -> dict:
  """{stage name: its ε alone at the ledger's δ, spent so far} (the run's accountant)."""
  return {s.name: composed_epsilon([s], ledger.delta, ledger.accountant)
          for s in ledger.spent_stages()}


def stage_report(ledger: PrivacyLedger) -> Optional[list]:
  """privacy.json's stages: each one's plan, steps taken, share of the target and ε alone;
  the DP-Sinkhorn steps last, with the share the extra stages leave. None for a run of
  DP-Sinkhorn steps alone (no extra stage)."""
  if not ledger.stages:
    return None
  alone = stage_epsilons(ledger)
  extra = [dict(s, epsilon_alone=alone[s["name"]]) for s in ledger.stages or ()]
  rest = 1.0 - sum(s.get("share", 0.0) for s in extra)
  return extra + [{"name": DP_SINKHORN_STAGE, "noise_multiplier": ledger.noise_multiplier,
                   "sample_rate": ledger.sample_rate, "steps": ledger.planned_steps,
                   "steps_taken": ledger.steps_taken, "share": rest,
                   "epsilon_alone": alone[DP_SINKHORN_STAGE]}]


def epsilon_curve(ledger, num_points: int = 50) -> Tuple[np.ndarray, np.ndarray]:
  """(steps, ε): ε after t steps of the ledger's (q, σ, δ, accountant), composed with its
  charged stages, at ≤ num_points
  distinct integer t from 1 to steps_taken (linearly spaced, both ends included)."""
  if ledger.steps_taken < 1:
    raise ValueError("the privacy ledger records no step taken")
  steps = np.unique(np.round(np.linspace(1, ledger.steps_taken, num_points)).astype(np.int64))
  eps = np.array([dataclasses.replace(ledger, steps_taken=int(t), checkpoint_step=0).epsilon()
                  for t in steps])
  return steps, eps


# ---- the plan fixed before training --------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PrivacyPlan:
  """The budget decided before training: q, σ, T and the ε they give."""

  sample_rate: float
  noise_multiplier: float
  steps: int
  epsilon: float
  delta: float
  accountant: str
  warning: Optional[str] = None
  # With a warm start (--warm_start): every stage as solved, the DP-Sinkhorn steps last
  # (σ and T as above), each stage's ε alone and its share of the target; epsilon is theirs
  # composed. Empty for a run of DP-Sinkhorn steps alone.
  stages: Tuple["Stage", ...] = ()
  stage_epsilons: Tuple[float, ...] = ()
  stage_shares: Tuple[float, ...] = ()

  def ledger_stages(self) -> Optional[list]:
    """The ledger's `stages` for this plan: every stage but the DP-Sinkhorn steps, none
    charged yet (None without extra stages, as an earlier version's ledger has it)."""
    if not self.stages:
      return None
    return [{"name": s.name, "noise_multiplier": s.noise_multiplier,
             "sample_rate": s.sample_rate, "steps": s.steps, "steps_taken": 0, "share": w}
            for s, w in zip(self.stages[:-1], self.stage_shares)]


def inclusion_probability(sample_rate: float) -> float:
  """⌈q·2⁵²⌉/2⁵²: the exact probability that `sampling.poisson_sample_indices` keeps a record
  (its float64 draws lie on the grid k/2⁵²; derivation in `sampling`), ≥ q by < 2⁻⁵²."""
  if not 0 < sample_rate <= 1:
    raise ValueError(f"sample_rate q must be in (0, 1], got {sample_rate}")
  return math.ceil(sample_rate * 2.0**52) / 2.0**52  # both steps exact in float64


def plan_privacy(cfg, dataset_size: int) -> PrivacyPlan:
  """Fixes (q, σ, T) from a run's config (`train.config.TrainConfig`: batch_size, steps and
  its privacy section) before any training step.

  q is the exact inclusion probability of the sampler for the rate B / N
  (`inclusion_probability`: ⌈(B/N)·2⁵²⌉/2⁵², never below B/N), so the accountant
  is given the rate the batches are really drawn with. With --noise_multiplier alone, T is
  the most steps within the target ε; with --steps alone, σ is the smallest multiplier
  within it; with both, the pair is checked.
  """
  p = cfg.privacy
  if cfg.batch_size > dataset_size:
    raise ValueError(f"--batch_size={cfg.batch_size}: expected at most the dataset size "
                     f"{dataset_size}")
  q = inclusion_probability(cfg.batch_size / dataset_size)
  if not p.dp:
    return PrivacyPlan(q, 0.0, cfg.steps, math.inf, p.delta, p.accountant)
  warning = check_delta(p.delta, dataset_size)
  if p.noise_multiplier is None and cfg.steps is None:
    raise ValueError("--noise_multiplier / --steps: expected at least one of them with --dp "
                     "(the other follows from --target_epsilon)")
  if getattr(p, "warm_start", "none") != "none":
    return _plan_with_warm_start(cfg, q, warning)
  if p.noise_multiplier is None:
    sigma = min_noise_multiplier(p.target_epsilon, p.delta, q, cfg.steps,
                                            p.accountant)
    steps = cfg.steps
  else:
    sigma = p.noise_multiplier
    budget = max_steps(p.target_epsilon, p.delta, q, sigma, p.accountant)
    steps = budget if cfg.steps is None else cfg.steps
    if steps > budget:
      raise ValueError(f"--steps={cfg.steps}: expected at most {budget}, the steps that "
                       f"--target_epsilon={p.target_epsilon} allows at σ={sigma}, q={q:.3g}")
    if steps < 1:
      raise ValueError(f"--noise_multiplier={sigma}: the budget --target_epsilon="
                       f"{p.target_epsilon} allows no step at q={q:.3g}; raise σ")
  eps = compute_epsilon(q, sigma, steps, p.delta, p.accountant)
  return PrivacyPlan(q, sigma, steps, eps, p.delta, p.accountant, warning)


# ---- several mechanisms, one budget (stages) ------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Stage:
  """One mechanism of a run: `steps` Gaussian releases with noise multiplier σ (noise std
  over L2 sensitivity), each on a Poisson sample of rate q; q = 1 is the whole data set, so
  Stage(name, σ) is a single Gaussian release (e.g. a warm start's statistics, released
  once), and Stage("dp_sinkhorn", σ, q, T) the training steps. σ = None or steps = None: the
  free parameter `plan_stages` solves for."""

  name: str
  noise_multiplier: Optional[float] = None
  sample_rate: float = 1.0
  steps: Optional[int] = 1

  def __post_init__(self):
    if not 0 < self.sample_rate <= 1:
      raise ValueError(f"stage {self.name}: sample rate q must be in (0, 1], got "
                       f"{self.sample_rate}")
    if self.noise_multiplier is not None and not self.noise_multiplier >= 0:
      raise ValueError(f"stage {self.name}: noise_multiplier must be ≥ 0, got "
                       f"{self.noise_multiplier}")
    if self.steps is not None and self.steps < 0:
      raise ValueError(f"stage {self.name}: steps must be ≥ 0, got {self.steps}")
    if self.noise_multiplier is None and self.steps is None:
      raise ValueError(f"stage {self.name}: fix σ or the steps (the planner solves for one)")

  def dp_event(self) -> dp_accounting.DpEvent:
    """Gaussian(σ) if q = 1, else PoissonSampled(q, Gaussian(σ)), self-composed T times."""
    if self.noise_multiplier is None or self.steps is None:
      raise ValueError(f"stage {self.name}: σ and steps must be set (plan_stages first)")
    event = dp_accounting.GaussianDpEvent(self.noise_multiplier)
    if self.sample_rate < 1:
      event = dp_accounting.PoissonSampledDpEvent(self.sample_rate, event)
    return dp_accounting.SelfComposedDpEvent(event, self.steps)


def composed_event(stages) -> dp_accounting.DpEvent:
  """The stages run one after the other (adaptively: each may depend on the releases
  before it): ComposedDpEvent of their events, in order."""
  return dp_accounting.ComposedDpEvent([s.dp_event() for s in stages])


def composed_epsilon(stages, delta: float, accountant: str = "rdp") -> float:
  """ε of all stages together at δ: one accountant composes them exactly (for RDP, orders
  add; for PLD, the loss distributions convolve), tighter than adding each stage's ε."""
  _validate(1.0, 1.0, delta, accountant)
  stages = [s for s in stages if s.steps]
  if not stages:
    return 0.0
  if any(s.noise_multiplier == 0 for s in stages):
    return math.inf
  return _epsilon_of(composed_event(stages), delta, accountant)


def _solve_stage(stage: Stage, epsilon: float, delta: float, accountant: str) -> Stage:
  """The stage with its free parameter set so that it alone spends ≤ epsilon: the smallest
  σ for its steps, or the most steps at its σ (0 if one step exceeds epsilon)."""
  if stage.noise_multiplier is None:
    sigma = min_noise_multiplier(epsilon, delta, stage.sample_rate, stage.steps, accountant)
    return dataclasses.replace(stage, noise_multiplier=sigma)
  steps = max_steps(epsilon, delta, stage.sample_rate, stage.noise_multiplier, accountant)
  return dataclasses.replace(stage, steps=steps)


@dataclasses.dataclass(frozen=True)
class StagePlan:
  """The solved stages, the ε of all of them composed, and each stage's ε alone (its share
  of the budget as printed; the shares add to more than the composed ε)."""

  stages: Tuple[Stage, ...]
  epsilon: float
  stage_epsilons: Tuple[float, ...]
  delta: float
  accountant: str


def plan_stages(stages, shares, target_epsilon: float, delta: float,
                accountant: str = "rdp", tolerance: float = 1e-3) -> StagePlan:
  """Solves each stage's free parameter (σ or T) so that the composed ε is at most
  target_epsilon and the stages split it in proportion to `shares`.

  Stage i alone spends ε_i = c·wᵢ·target (wᵢ = sharesᵢ/Σ shares) for one factor c ≥ 1:
  composition costs less than the sum of the parts, so c > 1 hands the saving back to every
  stage in the same proportion. The search runs over one stage's free parameter, the pivot
  (the first free stage with q < 1, whose ε is the costly one to evaluate; else the first
  free stage): its value fixes ε_pivot and so c = ε_pivot/(w_pivot·target); every other free
  stage is then solved for its c·wᵢ·target. The composed ε is monotone in the pivot (a smaller
  σ or more steps raises ε_pivot, so c, so every stage's ε), so bisection finds the pivot's
  least σ (to `tolerance`) or most steps within the target. Stages given both σ and T are
  fixed: they take their own ε and their share is ignored.
  """
  stages = tuple(stages)
  shares = tuple(float(w) for w in shares)
  if len(shares) != len(stages) or not stages:
    raise ValueError(f"expected one share per stage, got {len(shares)} for {len(stages)}")
  if any(not w > 0 for w in shares):
    raise ValueError(f"every share must be > 0, got {shares}")
  if not target_epsilon > 0:
    raise ValueError(f"target_epsilon must be > 0, got {target_epsilon}")
  _validate(1.0, 1.0, delta, accountant)
  weights = [w / sum(shares) for w in shares]
  free = [i for i, s in enumerate(stages) if s.noise_multiplier is None or s.steps is None]

  def finish(solved):
    eps = composed_epsilon(solved, delta, accountant)
    if eps > target_epsilon:
      raise ValueError(f"the fixed stages alone exceed target ε={target_epsilon}")
    alone = tuple(composed_epsilon([s], delta, accountant) for s in solved)
    return StagePlan(tuple(solved), eps, alone, delta, accountant)

  if not free:
    return finish(stages)
  pivot = next((i for i in free if stages[i].sample_rate < 1), free[0])
  by_sigma = stages[pivot].noise_multiplier is None

  def solve(x):
    """(stages with the pivot at x and the others solved for its c, their composed ε)."""
    p = dataclasses.replace(stages[pivot], **({"noise_multiplier": x} if by_sigma
                                              else {"steps": x}))
    c = composed_epsilon([p], delta, accountant) / (weights[pivot] * target_epsilon)
    out = [p if i == pivot else
           _solve_stage(s, c * weights[i] * target_epsilon, delta, accountant) if i in free
           else s for i, s in enumerate(stages)]
    return out, composed_epsilon(out, delta, accountant)

  if by_sigma:  # the least σ within the target: ok(hi), not ok(lo)
    lo, hi = 0.0, 1.0
    best, eps = solve(hi)
    while eps > target_epsilon:
      lo, hi = hi, 2 * hi
      if hi > 1e6:
        raise ValueError(f"no noise multiplier reaches ε={target_epsilon}")
      best, eps = solve(hi)
    while hi - lo > tolerance:
      mid = 0.5 * (lo + hi)
      solved, eps = solve(mid)
      if eps <= target_epsilon:
        hi, best = mid, solved
      else:
        lo = mid
    return finish(best)
  lo, hi = 0, 1  # the most steps within the target: ok(lo), not ok(hi)
  best = None
  while True:
    solved, eps = solve(hi)
    if eps > target_epsilon:
      break
    lo, hi, best = hi, 2 * hi, solved
    if hi > 10**9:
      break
  while hi - lo > 1:
    mid = (lo + hi) // 2
    solved, eps = solve(mid)
    if eps <= target_epsilon:
      lo, best = mid, solved
    else:
      hi = mid
  if best is None:
    raise ValueError(f"stage {stages[pivot].name}: not one step fits target "
                     f"ε={target_epsilon}")
  return finish(best)


def _plan_with_warm_start(cfg, q: float, warning: Optional[str]) -> PrivacyPlan:
  """`plan_privacy` for a run that first releases the warm start's statistics once
  (Stage(q = 1, T = 1), σ solved) and then takes the DP-Sinkhorn steps, whose free parameter
  is the one `plan_privacy` has without a warm start (T at a given σ, σ for given steps; both
  given: fixed, and the warm start gets what they leave). The target ε is split by
  --warm_start_share with `plan_stages`; the plan's ε is the two composed."""
  p = cfg.privacy
  share = p.warm_start_share
  dp_stage = Stage(DP_SINKHORN_STAGE, p.noise_multiplier, q, cfg.steps)
  fixed = dp_stage.noise_multiplier is not None and dp_stage.steps is not None
  if fixed and compute_epsilon(q, dp_stage.noise_multiplier, dp_stage.steps, p.delta,
                               p.accountant) >= p.target_epsilon:
    raise ValueError(f"--steps={cfg.steps}: with --noise_multiplier={p.noise_multiplier} the "
                     f"DP-Sinkhorn steps alone spend --target_epsilon={p.target_epsilon}, "
                     "leaving nothing for --warm_start; lower --steps or raise σ")
  try:
    solved = plan_stages([Stage(WARM_START_STAGE, None), dp_stage], [share, 1.0 - share],
                         p.target_epsilon, p.delta, p.accountant)
  except ValueError as e:
    raise ValueError(f"--warm_start_share={share:g}: {e} at q={q:.3g}") from None
  warm, steps = solved.stages
  if steps.steps < 1:
    raise ValueError(f"--noise_multiplier={p.noise_multiplier}: the DP-Sinkhorn share of "
                     f"--target_epsilon={p.target_epsilon} allows no step at q={q:.3g}")
  # Both of the steps' parameters given: the split is not --warm_start_share but what the
  # steps leave, so the shares shown are the realised ones, ε_i / Σ ε_j (which equal the
  # flag's when the planner was free: ε_i = c·w_i·target).
  shares = ((share, 1.0 - share) if not fixed else
            tuple(e / sum(solved.stage_epsilons) for e in solved.stage_epsilons))
  return PrivacyPlan(q, steps.noise_multiplier, steps.steps, solved.epsilon, p.delta,
                     p.accountant, warning, solved.stages, solved.stage_epsilons, shares)

"""Tests for dp_sinkhorn_tf.privacy.accounting."""

import dataclasses
import json
import math
import os
import types

import dp_accounting
import numpy as np
import pytest

from dp_sinkhorn_tf.privacy import accounting

# (q, σ, T, δ) → ε under RDP, pinned when written (dp_accounting 0.4.3) and re-derived
# below by calling dp_accounting directly.
PINNED_RDP = [
    ((1 / 1200, 0.9, 100_000, 1e-5), 1.793577455163493),   # paper-scale q, σ of the release
    ((0.01, 1.1, 5_000, 1e-5), 3.8470589159552704),
    ((0.02225, 1.0, 3_879, 1e-5), 9.989989961949707),      # the digits demo's plan
    ((1 / 1200, 0.55, 160_000, 1e-5), 10.061660483783939),
]
# PLD at value_discretization_interval = 1e-4, pinned the same way.
PINNED_PLD = [((1 / 1200, 0.9, 100_000, 1e-5), 1.6318756135643715),
              ((0.01, 1.1, 5_000, 1e-5), 3.527251300415949)]


def _direct_rdp(q, sigma, steps, delta):
  acc = dp_accounting.rdp.RdpAccountant()
  acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)),
              steps)
  return acc.get_epsilon(delta)


@pytest.mark.parametrize("args,expected", PINNED_RDP)
def test_rdp_epsilon_is_pinned_and_matches_dp_accounting(args, expected):
  eps = accounting.compute_epsilon(*args, accountant="rdp")
  assert eps == pytest.approx(expected, rel=1e-9)
  assert eps == pytest.approx(_direct_rdp(*args), rel=1e-12)


def test_rdp_epsilon_from_the_kept_one_step_curve_is_dp_accountings_bit_for_bit():
  # compute_epsilon keeps RDP(1) per (q, σ) and scales it by T (the accountant's own
  # composition); it must give exactly what a fresh RdpAccountant gives, at every T and δ,
  # including after other (q, σ) went through the cache.
  rng = np.random.default_rng(0)
  cases = [(1 / 1200, 0.9, 100_000, 1e-5), (0.02225, 1.0, 1, 1e-5), (1.0, 5.0, 3, 1e-3)]
  cases += [(float(rng.uniform(1e-4, 0.5)), float(rng.uniform(0.4, 8)),
             int(rng.integers(1, 10**6)), float(10 ** rng.uniform(-9, -2))) for _ in range(12)]
  for args in cases + cases[::-1]:
    assert accounting.compute_epsilon(*args, accountant="rdp") == _direct_rdp(*args), args
  q, sigma = cases[0][:2]
  for steps in (1, 2, 3, 999, 1000, 65_657):
    assert accounting.compute_epsilon(q, sigma, steps, 1e-5) == _direct_rdp(q, sigma, steps,
                                                                              1e-5)


@pytest.mark.parametrize("args,expected", PINNED_PLD)
def test_pld_epsilon_is_pinned_and_tighter_than_rdp(args, expected):
  eps = accounting.compute_epsilon(*args, accountant="pld")
  assert eps == pytest.approx(expected, rel=1e-6)
  q, sigma, steps, delta = args
  acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
  acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)),
              steps)
  assert eps == pytest.approx(acc.get_epsilon(delta), rel=1e-9)
  assert eps < accounting.compute_epsilon(*args, accountant="rdp")


def test_epsilon_grows_with_steps_and_falls_with_sigma():
  q, d = 1 / 1200, 1e-5
  by_steps = [accounting.compute_epsilon(q, 0.8, t, d) for t in (1_000, 10_000, 100_000)]
  by_sigma = [accounting.compute_epsilon(q, s, 50_000, d) for s in (0.6, 0.9, 1.5)]
  assert by_steps == sorted(by_steps) and len(set(by_steps)) == 3
  assert by_sigma == sorted(by_sigma, reverse=True) and len(set(by_sigma)) == 3


def test_degenerate_cases():
  assert accounting.compute_epsilon(0.01, 1.0, 0, 1e-5) == 0.0
  assert accounting.compute_epsilon(0.01, 0.0, 10, 1e-5) == math.inf


@pytest.mark.parametrize("sigma", [0.6, 1.0])
def test_max_steps_round_trip_at_paper_scale(sigma):
  q, d = 1 / 1200, 1e-5
  steps = accounting.max_steps(10.0, d, q, sigma)
  assert accounting.compute_epsilon(q, sigma, steps, d) <= 10.0
  assert accounting.compute_epsilon(q, sigma, steps + 1, d) > 10.0


def test_min_noise_multiplier_round_trip():
  q, d, steps = 0.01, 1e-5, 2_000
  sigma = accounting.min_noise_multiplier(5.0, d, q, steps, tolerance=1e-4)
  assert accounting.compute_epsilon(q, sigma, steps, d) <= 5.0
  assert accounting.compute_epsilon(q, sigma - 2e-4, steps, d) > 5.0
  # … and back: those steps are (about) the most σ allows.
  assert accounting.max_steps(5.0, d, q, sigma) >= steps


def test_max_steps_zero_when_one_step_is_too_much():
  assert accounting.max_steps(0.01, 1e-5, 1.0, 0.5) == 0


@pytest.mark.parametrize("kwargs,match", [
    (dict(q=0.0), "sample rate"), (dict(q=1.5), "sample rate"),
    (dict(noise_multiplier=-1.0), "noise_multiplier"), (dict(delta=1.0), "delta"),
    (dict(accountant="moments"), "accountant")])
def test_invalid_arguments(kwargs, match):
  args = dict(q=0.01, noise_multiplier=1.0, steps=10, delta=1e-5, accountant="rdp")
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    accounting.compute_epsilon(**args)
  with pytest.raises(ValueError, match="target_epsilon"):
    accounting.max_steps(0.0, 1e-5, 0.01, 1.0)


def test_delta_above_one_over_n_warns():
  with pytest.warns(UserWarning, match="1/N"):
    assert accounting.check_delta(1e-3, 2000) is not None
  assert accounting.check_delta(1e-5, 2000) is None


def _ledger(**kw):
  base = dict(sample_rate=0.01, noise_multiplier=1.0, l2_norm_clip=0.5, delta=1e-5,
              target_epsilon=10.0, planned_steps=100, accountant="rdp", steps_taken=0,
              dataset_size=5000)
  base.update(kw)
  return accounting.PrivacyLedger(**base)


def test_ledger_round_trip_and_advance(tmp_path):
  path = str(tmp_path / "ledger.json")
  ledger = _ledger().advanced(40)
  ledger.save(path)
  loaded = accounting.PrivacyLedger.load(path)
  assert loaded == ledger and loaded.steps_taken == 40
  assert loaded.epsilon() == pytest.approx(accounting.compute_epsilon(0.01, 1.0, 40, 1e-5))
  with pytest.raises(ValueError):
    ledger.advanced(-1)


def test_crash_during_save_keeps_previous_ledger(tmp_path, monkeypatch):
  path = str(tmp_path / "ledger.json")
  _ledger(steps_taken=30).save(path)

  def crash(*_):
    raise OSError("simulated crash before rename")

  monkeypatch.setattr(os, "replace", crash)
  with pytest.raises(OSError):
    _ledger(steps_taken=60).save(path)
  monkeypatch.undo()
  # The reader sees the old, complete ledger: 30 steps, never a torn or reset file.
  assert accounting.PrivacyLedger.load(path).steps_taken == 30


def test_resume_continues_and_exhaustion_is_detected(tmp_path):
  path = str(tmp_path / "ledger.json")
  _ledger().advanced(60).save(path)
  resumed = accounting.PrivacyLedger.load(path)
  accounting.check_compatible(resumed, _ledger())
  final = resumed.advanced(40)
  assert final.steps_taken == 100 and final.is_exhausted
  assert final.epsilon() > resumed.epsilon() > 0


def test_incompatible_plan_names_every_difference():
  with pytest.raises(ValueError, match="noise_multiplier.*delta"):
    accounting.check_compatible(_ledger(), _ledger(noise_multiplier=2.0, delta=1e-6))


def test_corrupt_ledger_is_an_error(tmp_path):
  path = tmp_path / "ledger.json"
  path.write_text("{not json")
  with pytest.raises(ValueError, match="not a privacy ledger"):
    accounting.PrivacyLedger.load(str(path))


def test_report_gives_both_accountants():
  rep = accounting.report(_ledger(steps_taken=50))
  assert set(rep["epsilon"]) == {"rdp", "pld"}
  assert rep["epsilon"]["pld"] <= rep["epsilon"]["rdp"]
  json.dumps(rep)


def test_report_skips_pld_for_tiny_sigma_and_can_give_the_run_accountant_alone():
  tiny = accounting.PrivacyLedger(sample_rate=0.01, noise_multiplier=0.01, l2_norm_clip=0.5,
                                  delta=1e-5, target_epsilon=1e9, planned_steps=10,
                                  accountant="rdp", steps_taken=10, dataset_size=1000)
  rep = accounting.report(tiny)
  assert rep["epsilon"]["pld"] is None and "pld not computed" in rep["epsilon_note"]
  assert rep["epsilon"]["rdp"] == pytest.approx(accounting.compute_epsilon(0.01, 0.01, 10, 1e-5))
  normal = accounting.PrivacyLedger(sample_rate=0.01, noise_multiplier=1.1, l2_norm_clip=0.5,
                                    delta=1e-5, target_epsilon=10, planned_steps=5000,
                                    accountant="rdp", steps_taken=5000, dataset_size=1000)
  assert set(accounting.report(normal, all_accountants=False)["epsilon"]) == {"rdp"}
  # q=0.01, σ=1.1, T=5000 is pinned above: PLD 3.5273 < RDP 3.8471.
  both = accounting.report(normal)["epsilon"]
  assert both["pld"] == pytest.approx(3.527251300415949, rel=1e-6)


# ---- ε against steps ------------------------------------------------------------------------

def _ledger_at(steps_taken):
  return accounting.PrivacyLedger(sample_rate=0.05, noise_multiplier=1.0, l2_norm_clip=0.5,
                                  delta=1e-5, target_epsilon=10.0, planned_steps=1000,
                                  accountant="rdp", steps_taken=steps_taken, dataset_size=1000)


def test_epsilon_curve_spans_one_to_steps_taken_and_grows():
  ledger = _ledger_at(400)
  steps, eps = accounting.epsilon_curve(ledger, num_points=4)  # the real accountant
  np.testing.assert_array_equal(steps, [1, 134, 267, 400])
  assert np.all(np.diff(eps) > 0)
  assert eps[-1] == pytest.approx(ledger.epsilon())


def test_epsilon_curve_asks_the_accountant_at_fifty_distinct_steps(monkeypatch):
  asked = []

  def fake_epsilon(q, sigma, steps, delta, accountant):
    asked.append((q, sigma, steps, delta, accountant))
    return float(steps)

  monkeypatch.setattr(accounting, "compute_epsilon", fake_epsilon)  # ~0.1 s each when real
  steps, eps = accounting.epsilon_curve(_ledger_at(400))
  assert len(steps) == 50 and steps[0] == 1 and steps[-1] == 400
  assert len(set(steps.tolist())) == 50 and np.all(np.diff(steps) > 0)
  assert asked[-1] == (0.05, 1.0, 400, 1e-5, "rdp")
  np.testing.assert_array_equal(eps, steps)
  short_steps, _ = accounting.epsilon_curve(_ledger_at(3))
  np.testing.assert_array_equal(short_steps, [1, 2, 3])
  with pytest.raises(ValueError, match="no step"):
    accounting.epsilon_curve(_ledger_at(0))


# ---- the neighbouring relation ----------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda rel: dp_accounting.rdp.RdpAccountant(neighboring_relation=rel),
    lambda rel: dp_accounting.pld.PLDAccountant(neighboring_relation=rel)])
@pytest.mark.parametrize("relation", ["REPLACE_ONE", "REPLACE_SPECIAL"])
def test_dp_accounting_has_no_replace_one_accounting_for_poisson_sampling(make, relation):
  # Why there is no --neighbouring=replace_one (docs/privacy.md, "The unit of privacy"): in
  # dp_accounting 0.4.3 neither accountant composes our event under another relation than
  # add/remove. If a release adds it, this fails: then offer the flag.
  acc = make(getattr(dp_accounting.NeighboringRelation, relation))
  event = accounting.dp_event(0.01, 1.0, 100)
  assert not acc.supports(event)
  with pytest.raises(dp_accounting.UnsupportedEventError,
                     match="neighboring_relation must be `ADD_OR_REMOVE_ONE`"):
    acc.compose(event)


def test_epsilon_is_the_add_remove_epsilon_of_dp_accounting():
  args = (0.01, 1.1, 5_000, 1e-5)
  acc = dp_accounting.rdp.RdpAccountant(
      neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
  acc.compose(accounting.dp_event(*args[:3]))
  assert accounting.compute_epsilon(*args) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-12)
  assert "add/remove one record" in accounting.NEIGHBOURING_RELATION
  assert "N treated as public" in accounting.NEIGHBOURING_RELATION


# ---- gradient flags in the ledger -------------------------------------------------------------

def test_an_earlier_ledger_without_gradient_flags_loads_and_they_stay_out_of_the_report(
    tmp_path):
  flags = {"learning_rate": 0.001}
  ledger = _ledger(steps_taken=5, gradient_flags=flags, gradient_flags_sha256="ab" * 32)
  path = tmp_path / "ledger.json"
  ledger.save(str(path))
  assert accounting.PrivacyLedger.load(str(path)) == ledger  # round trip with the flags
  old = json.loads(path.read_text())
  del old["gradient_flags"], old["gradient_flags_sha256"]  # as the previous version wrote it
  path.write_text(json.dumps(old))
  loaded = accounting.PrivacyLedger.load(str(path))
  assert loaded.gradient_flags is None and loaded.gradient_flags_sha256 == ""
  assert loaded.steps_taken == 5
  del old["run_id"]  # any other field is still required
  path.write_text(json.dumps(old))
  with pytest.raises(ValueError, match="lacks fields \\['run_id'\\]"):
    accounting.PrivacyLedger.load(str(path))
  rep = accounting.report(ledger, all_accountants=False)
  assert "gradient_flags" not in rep and "gradient_flags_sha256" not in rep


# ---- stages: several mechanisms, one budget --------------------------------------------------

def test_composed_epsilon_of_a_release_then_steps_matches_dp_accounting_directly():
  release = accounting.Stage("warm_start", 5.0)
  steps = accounting.Stage("dp_sinkhorn", 0.9, sample_rate=0.01, steps=2000)
  acc = dp_accounting.rdp.RdpAccountant()
  acc.compose(dp_accounting.GaussianDpEvent(5.0))
  acc.compose(dp_accounting.PoissonSampledDpEvent(0.01, dp_accounting.GaussianDpEvent(0.9)),
              2000)
  expected = acc.get_epsilon(1e-5)
  assert accounting.composed_epsilon([release, steps], 1e-5) == pytest.approx(expected,
                                                                              rel=1e-12)
  # The composition is tighter than adding the parts, and costlier than either part.
  alone = [accounting.composed_epsilon([s], 1e-5) for s in (release, steps)]
  assert max(alone) < expected < sum(alone)
  # One stage is the single-mechanism accountant: the training steps alone.
  assert alone[1] == pytest.approx(accounting.compute_epsilon(0.01, 0.9, 2000, 1e-5),
                                   rel=1e-12)


def test_composed_epsilon_under_pld_matches_dp_accounting_directly():
  stages = [accounting.Stage("a", 3.0), accounting.Stage("b", 1.1, 0.01, 500)]
  acc = dp_accounting.pld.PLDAccountant(
      value_discretization_interval=accounting.PLD_DISCRETIZATION)
  acc.compose(dp_accounting.GaussianDpEvent(3.0))
  acc.compose(dp_accounting.SelfComposedDpEvent(
      dp_accounting.PoissonSampledDpEvent(0.01, dp_accounting.GaussianDpEvent(1.1)), 500))
  assert accounting.composed_epsilon(stages, 1e-5, "pld") == pytest.approx(
      acc.get_epsilon(1e-5), rel=1e-9)


# A release once, then steps of the subsampled Gaussian (each plan takes seconds: the
# planner bisects c around bisections of each stage's σ).
TEMPLATE = (accounting.Stage("warm_start", None),
            accounting.Stage("dp_sinkhorn", None, sample_rate=0.01, steps=1000))
PLAN_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def plans():
  return {shares: accounting.plan_stages(TEMPLATE, shares, 8.0, 1e-5, tolerance=PLAN_TOLERANCE)
          for shares in ((1, 4), (1, 1))}


def test_plan_stages_spends_the_target_in_the_given_proportion(plans):
  for shares, plan in plans.items():
    # Round trip: the solved stages compose to the target, from below, within c's tolerance.
    assert plan.epsilon == pytest.approx(
        accounting.composed_epsilon(plan.stages, 1e-5), rel=1e-12)
    assert 0.99 * 8.0 < plan.epsilon <= 8.0
    # Each stage alone spends its share of one larger budget c·target (c ≥ 1).
    c = [eps / (w / sum(shares) * 8.0) for eps, w in zip(plan.stage_epsilons, shares)]
    assert min(c) >= 1.0 and c[0] == pytest.approx(c[1], rel=0.02), (shares, c)
    # Each σ is the least for its stage's ε: a σ one tolerance step lower overspends it.
    for stage, eps in zip(plan.stages, plan.stage_epsilons):
      lower = dataclasses.replace(stage, noise_multiplier=stage.noise_multiplier - 2e-3)
      assert accounting.composed_epsilon([lower], 1e-5) > eps


def test_plan_stages_more_share_means_less_noise(plans):
  small, large = plans[(1, 4)], plans[(1, 1)]
  assert large.stages[0].noise_multiplier < small.stages[0].noise_multiplier
  assert large.stages[1].noise_multiplier > small.stages[1].noise_multiplier


def test_plan_stages_solves_steps_at_a_fixed_sigma_and_keeps_fixed_stages():
  fixed = accounting.Stage("release", 8.0)
  free = accounting.Stage("steps", 2.0, sample_rate=0.1, steps=None)
  plan = accounting.plan_stages([fixed, free], (1, 1), 4.0, 1e-5, tolerance=PLAN_TOLERANCE)
  assert plan.stages[0] == fixed
  steps = plan.stages[1].steps
  assert steps > 0 and plan.epsilon <= 4.0
  # The most steps: one more overspends the target.
  more = [fixed, dataclasses.replace(plan.stages[1], steps=steps + 1)]
  assert accounting.composed_epsilon(more, 1e-5) > 4.0


@pytest.mark.parametrize("kwargs,needle", [
    ({"shares": (1,)}, "one share per stage"),
    ({"shares": (1, 0)}, "share"),
    ({"target_epsilon": 0.0}, "target_epsilon"),
    ({"stages": [accounting.Stage("r", 0.1), accounting.Stage("s", 0.1)]}, "exceed"),
    ({"stages": [accounting.Stage("r", 0.3), accounting.Stage("s", 1.0, 0.01, None)]},
     "not one step"),
])
def test_plan_stages_refuses_bad_input(kwargs, needle):
  args = {"stages": [accounting.Stage("r", None), accounting.Stage("s", 1.0, 0.01, None)],
          "shares": (1, 1), "target_epsilon": 5.0, "delta": 1e-5}
  args.update(kwargs)
  with pytest.raises(ValueError, match=needle):
    accounting.plan_stages(**args)


def test_a_stage_needs_one_free_parameter_at_most_and_a_valid_rate():
  with pytest.raises(ValueError, match="fix σ or the steps"):
    accounting.Stage("x", None, 0.1, None)
  with pytest.raises(ValueError, match="sample rate"):
    accounting.Stage("x", 1.0, 0.0)
  with pytest.raises(ValueError, match="plan_stages first"):
    accounting.Stage("x", None).dp_event()


# ---- the ledger of a run with a warm start ---------------------------------------------------

WARM = {"name": "warm_start", "noise_multiplier": 6.0, "sample_rate": 1.0, "steps": 1,
        "steps_taken": 0, "share": 0.1}


def _by_hand(q, sigma, steps, warm_sigma, delta=1e-5):
  """ε of Gaussian(warm σ) then T Poisson-sampled Gaussians, composed by dp_accounting."""
  acc = dp_accounting.rdp.RdpAccountant()
  acc.compose(dp_accounting.ComposedDpEvent([
      dp_accounting.GaussianDpEvent(warm_sigma),
      dp_accounting.SelfComposedDpEvent(
          dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)]))
  return acc.get_epsilon(delta)


def test_ledger_composes_the_charged_warm_start_with_the_steps_taken():
  ledger = _ledger(stages=[dict(WARM)], steps_taken=60)
  # Not charged yet: the steps alone, exactly as a ledger without stages.
  assert ledger.epsilon() == pytest.approx(_ledger(steps_taken=60).epsilon(), rel=1e-12)
  assert not ledger.stage_charged("warm_start")
  charged = ledger.charged_stage("warm_start")
  assert charged.stage_charged("warm_start") and charged.charged_stage("warm_start") == charged
  assert charged.epsilon() == pytest.approx(_by_hand(0.01, 1.0, 60, 6.0), rel=1e-9)
  assert charged.epsilon() > ledger.epsilon()
  # Charged, no step taken: the release alone, ε of one Gaussian at σ = 6.
  only = dataclasses.replace(charged, steps_taken=0)
  acc = dp_accounting.rdp.RdpAccountant()
  acc.compose(dp_accounting.GaussianDpEvent(6.0))
  assert only.epsilon() == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9) and only.epsilon() > 0
  with pytest.raises(KeyError):
    ledger.charged_stage("nope")


def test_ledger_with_stages_round_trips_and_an_old_one_loads_without(tmp_path):
  path = str(tmp_path / "ledger.json")
  ledger = _ledger(stages=[dict(WARM)]).charged_stage("warm_start").advanced(5)
  ledger.save(path)
  assert accounting.PrivacyLedger.load(path) == ledger
  old = json.loads(_ledger(steps_taken=7).to_json())
  del old["stages"]
  (tmp_path / "old.json").write_text(json.dumps(old))
  loaded = accounting.PrivacyLedger.load(str(tmp_path / "old.json"))
  assert loaded.stages is None
  assert loaded.epsilon() == accounting.compute_epsilon(0.01, 1.0, 7, 1e-5)
  assert "stages" not in accounting.report(loaded, all_accountants=False)


def test_report_shows_each_stage_its_share_and_epsilon_alone():
  ledger = _ledger(stages=[dict(WARM)], steps_taken=60).charged_stage("warm_start")
  rep = accounting.report(ledger, all_accountants=False)
  warm, steps = rep["stages"]
  assert (warm["name"], warm["share"], warm["steps_taken"]) == ("warm_start", 0.1, 1)
  assert (steps["name"], steps["steps_taken"]) == ("dp_sinkhorn", 60)
  assert steps["share"] == pytest.approx(0.9)
  assert steps["epsilon_alone"] == pytest.approx(accounting.compute_epsilon(0.01, 1.0, 60, 1e-5))
  assert max(warm["epsilon_alone"], steps["epsilon_alone"]) < rep["epsilon"]["rdp"] < (
      warm["epsilon_alone"] + steps["epsilon_alone"])
  assert rep["epsilon_planned"] == pytest.approx(_by_hand(0.01, 1.0, 100, 6.0), rel=1e-9)
  # The curve starts from the charged release.
  _, eps = accounting.epsilon_curve(ledger, num_points=3)
  assert eps[0] == pytest.approx(_by_hand(0.01, 1.0, 1, 6.0), rel=1e-9)


def test_a_resume_with_another_stage_plan_is_refused():
  stored = _ledger(stages=[dict(WARM)]).charged_stage("warm_start").advanced(5)
  accounting.check_compatible(stored, _ledger(stages=[dict(WARM)]))   # charged: same plan
  with pytest.raises(ValueError, match="stages"):
    accounting.check_compatible(stored, _ledger(stages=[dict(WARM, noise_multiplier=5.0)]))
  with pytest.raises(ValueError, match="stages"):
    accounting.check_compatible(stored, _ledger())


def _cfg(steps=None, sigma=None, warm_start="class_means", share=0.1, batch=50):
  privacy = types.SimpleNamespace(dp=True, noise_multiplier=sigma, target_epsilon=4.0,
                                  delta=1e-5, accountant="rdp", warm_start=warm_start,
                                  warm_start_share=share)
  return types.SimpleNamespace(batch_size=batch, steps=steps, privacy=privacy)


@pytest.mark.parametrize("steps, sigma", [(300, None), (None, 1.5)])
def test_plan_privacy_splits_the_target_and_round_trips(steps, sigma):
  plan = accounting.plan_privacy(_cfg(steps, sigma), 5000)
  warm, dp = plan.stages
  assert (warm.name, warm.sample_rate, warm.steps) == ("warm_start", 1.0, 1)
  assert (dp.noise_multiplier, dp.steps) == (plan.noise_multiplier, plan.steps)
  assert plan.stage_shares == (0.1, 0.9)
  # Round trip: the plan's stages, composed by hand, spend the target from below.
  by_hand = _by_hand(plan.sample_rate, plan.noise_multiplier, plan.steps, warm.noise_multiplier)
  assert plan.epsilon == pytest.approx(by_hand, rel=1e-9) and 0.97 * 4.0 < plan.epsilon <= 4.0
  # The split: each stage alone spends its share of one budget c·target.
  c = [e / (w * 4.0) for e, w in zip(plan.stage_epsilons, plan.stage_shares)]
  assert c[0] == pytest.approx(c[1], rel=0.05) and min(c) >= 1.0
  # The same run without the warm start: more DP-Sinkhorn budget than with it.
  alone = accounting.plan_privacy(_cfg(steps, sigma, warm_start="none"), 5000)
  assert alone.stages == () and alone.ledger_stages() is None
  assert (alone.noise_multiplier < plan.noise_multiplier if steps else
          alone.steps > plan.steps)
  assert plan.ledger_stages() == [{"name": "warm_start", "noise_multiplier":
                                   warm.noise_multiplier, "sample_rate": 1.0, "steps": 1,
                                   "steps_taken": 0, "share": 0.1}]


def test_plan_privacy_with_fixed_steps_and_sigma_gives_the_rest_to_the_warm_start():
  plan = accounting.plan_privacy(_cfg(200, 2.0), 5000)
  assert (plan.steps, plan.noise_multiplier) == (200, 2.0)
  assert 0.99 * 4.0 < plan.epsilon <= 4.0
  # --warm_start_share=0.1 cannot hold: the shares shown are the realised ones.
  warm_eps, dp_eps = plan.stage_epsilons
  assert plan.stage_shares == pytest.approx((warm_eps / (warm_eps + dp_eps),
                                             dp_eps / (warm_eps + dp_eps)))
  assert plan.stage_shares[0] > 0.5 and plan.ledger_stages()[0]["share"] == plan.stage_shares[0]
  with pytest.raises(ValueError, match="nothing for --warm_start"):
    accounting.plan_privacy(_cfg(100000, 0.6), 5000)

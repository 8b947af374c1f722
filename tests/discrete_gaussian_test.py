"""Tests for dp_sinkhorn_tf.privacy.discrete_gaussian: the exact keyed N_ℤ(0, s²) sampler.

The sampler is keyed, so each test draws from fixed seeds and is deterministic; the
statistical tests compare ≥ 10⁶ draws with the exact pmf P[Z = z] ∝ exp(−z²/(2s²)).
"""

import math
from fractions import Fraction

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats
from tensorflow_privacy.privacy.dp_query import discrete_gaussian_utils

from dp_sinkhorn_tf.privacy import discrete_gaussian as dg

SEED = tf.constant([12345, 678], tf.int64)


def pmf(s2: float, support: np.ndarray) -> np.ndarray:
  """The exact N_ℤ(0, s²) pmf on `support` (normalised over ℤ by θ)."""
  return np.exp(-support.astype(np.float64)**2 / (2.0 * s2)) / dg.theta(s2)


def draw(scale: dg.Scale, n: int, seed=SEED, max_abs=None):
  max_abs = max_abs or max(64, int(dg.MIN_STDS_KEPT * scale.scale) + 1)
  fn = tf.function(lambda s: dg.sample([n], scale, s, max_abs))
  z, info = fn(seed)
  return z.numpy(), info


def chi_square(z: np.ndarray, s2: float, bins: int = 60):
  """(statistic, degrees of freedom, p-value) of z against the pmf, on equal-width bins of
  integers covering ±6s (tails merged into the end bins)."""
  s = math.sqrt(s2)
  top = int(math.ceil(6 * s))
  width = max(1, int(math.ceil((2 * top + 1) / bins)))
  edges = np.arange(-top, top + width + 1, width)
  support = np.arange(-int(41 * s) - 2, int(41 * s) + 3)
  p = pmf(s2, support)
  index = np.clip(np.searchsorted(edges, support, side="right") - 1, 0, len(edges) - 2)
  expected = np.bincount(index, weights=p, minlength=len(edges) - 1) * len(z)
  zi = np.clip(np.searchsorted(edges, z, side="right") - 1, 0, len(edges) - 2)
  observed = np.bincount(zi, minlength=len(edges) - 1)
  keep = expected > 5
  stat = float(((observed[keep] - expected[keep])**2 / expected[keep]).sum())
  dof = int(keep.sum()) - 1
  return stat, dof, float(stats.chi2.sf(stat, dof))


@pytest.mark.parametrize("scale", [dg.Scale(0, 1),            # s² = 1: the lattice shows
                                   dg.scale_parameters(6.5),    # s² ≈ 44
                                   dg.scale_parameters(1500.0)])  # s² ≈ 2.25e6
def test_frequencies_match_the_pmf_over_a_million_draws(scale):
  z, info = draw(scale, 10**6)
  stat, dof, p = chi_square(z, scale.variance_parameter)
  assert p > 1e-3, (stat, dof, p)
  assert int(info.rounds) >= 1


@pytest.mark.parametrize("scale", [dg.Scale(0, 1), dg.scale_parameters(6.5),
                                   dg.scale_parameters(1500.0)])
def test_mean_variance_and_tails(scale):
  n = 10**6
  z, _ = draw(scale, n, seed=tf.constant([99, 1], tf.int64))
  s2 = scale.variance_parameter
  support = np.arange(-int(41 * math.sqrt(s2)) - 2, int(41 * math.sqrt(s2)) + 3)
  p = pmf(s2, support)
  var = float((support.astype(np.float64)**2 * p).sum())   # exact variance (< s²)
  fourth = float((support.astype(np.float64)**4 * p).sum())
  assert abs(z.mean()) < 5 * math.sqrt(var / n)
  assert abs(z.var() - var) < 5 * math.sqrt((fourth - var**2) / n)
  tail = float(p[np.abs(support) >= 2.5 * math.sqrt(s2)].sum())
  seen = float(np.mean(np.abs(z) >= 2.5 * math.sqrt(s2)))
  assert abs(seen - tail) < 5 * math.sqrt(tail * (1 - tail) / n)
  assert set(np.unique(np.sign(z))) == {-1, 0, 1}


def test_agrees_with_tf_privacys_reference_sampler():
  """Two-sample χ² against TF Privacy's (float-based, stateful) discrete Gaussian sampler,
  used here as a reference only."""
  tf.random.set_seed(3)
  scale = dg.Scale(0, 9)  # s² = 9: the reference takes an integer scale s = 3
  ours, _ = draw(scale, 200_000)
  theirs = discrete_gaussian_utils.sample_discrete_gaussian(
      scale=tf.constant(3, tf.int32), shape=[200_000], dtype=tf.int32).numpy()
  edges = np.arange(-12, 14) - 0.5
  a, _ = np.histogram(np.clip(ours, -12, 12), edges)
  b, _ = np.histogram(np.clip(theirs, -12, 12), edges)
  stat, p, _, _ = stats.chi2_contingency(np.stack([a, b]))
  assert p > 1e-3, (stat, p)


def test_same_seed_same_draws_other_steps_independent():
  scale = dg.scale_parameters(300.0)
  a, _ = draw(scale, 50_000, tf.constant([7, 100], tf.int64))
  b, _ = draw(scale, 50_000, tf.constant([7, 100], tf.int64))
  c, _ = draw(scale, 50_000, tf.constant([7, 101], tf.int64))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  corr = np.corrcoef(a.astype(np.float64), c.astype(np.float64))[0, 1]
  assert abs(corr) < 5 / math.sqrt(len(a))


def test_eager_and_graph_agree():
  scale = dg.scale_parameters(40.0)
  eager, _ = dg.sample([3000], scale, SEED, 64 * 40)
  graph, _ = draw(scale, 3000, SEED, 64 * 40)
  np.testing.assert_array_equal(eager.numpy(), graph)


def test_range_is_kept_and_checked():
  scale = dg.Scale(0, 1)
  z, _ = draw(scale, 200_000, max_abs=40)
  assert np.abs(z).max() <= 40
  with pytest.raises(ValueError, match="max_abs"):
    dg.sample([4], scale, SEED, 39)          # below 40·s
  with pytest.raises(ValueError, match="max_abs"):
    dg.sample([4], dg.scale_parameters(1e3), SEED, 2**24)


def test_a_scale_far_from_scale_parameters_is_refused():
  # t = 1, L = 10¹¹: s² < 2⁴⁰, but (X − L)² would overflow int64 and e^{−L/2t} never accepts.
  with pytest.raises(ValueError, match=r"L ≤ 16t \+ 16"):
    dg.Scale(0, 10**11)
  for s in (1.0, 1.2, 3.0, 6.5, 1e3, 2.35e5, 1e6):
    scale = dg.scale_parameters(s)
    assert scale.L <= 2 * scale.t + 2 and scale.scale >= s


def test_the_mass_left_out_by_the_range_is_below_ten_to_the_minus_347():
  # max_abs ≥ 40·s: P[|Z| > 40s] ≤ 2e^{−800}/(1 − e^{−40/s}) (module docstring), for the
  # mechanism's scales (s ~ 2¹⁸) and a small one.
  for scale in [dg.Scale(0, 1), dg.scale_parameters(235405.9)]:
    bound = dg.log10_truncated_mass_bound(scale, math.ceil(40 * scale.scale))
    assert bound < -347
  # A range of 3s leaves ~1 % out: the bound is not vacuous (> the exact tail 0.27 %).
  scale = dg.Scale(0, 9)  # s = 3
  exact = 2 * pmf(9, np.arange(10, 200)).sum()
  assert exact < 10**dg.log10_truncated_mass_bound(scale, 9) < 0.05


def test_scale_parameters_never_below_the_wanted_scale():
  for s in [1.0, 1.5, 6.5, 100.3, 2.0**17 + 0.7, 235405.9]:
    sc = dg.scale_parameters(s)
    assert sc.t == 2**sc.log2_t and sc.L >= 1
    assert sc.variance_parameter >= s * s
    assert sc.scale / s - 1 < 2 / s + 1e-12
    assert s / math.sqrt(2) <= sc.t <= s * math.sqrt(2)
  with pytest.raises(ValueError):
    dg.scale_parameters(0.5)
  with pytest.raises(ValueError):
    dg.Scale(0, 0)
  with pytest.raises(ValueError):
    dg.Scale(21, 2**20)  # s² ≥ 2⁴⁰


def test_candidates_per_sample_match_the_acceptance_probability():
  scale = dg.scale_parameters(1000.0)
  p = dg.acceptance_probability(scale)
  assert 0.42 < p < 0.49
  n = 200_000
  _, info = draw(scale, n)
  # One round proposes n/p + 6√(n/p) + 64 candidates, rounded up to m·2^j (8 ≤ m < 16) (to a
  # power of two below 2^13), and almost always suffices.
  wanted = math.ceil(n / p + 6 * math.sqrt(n / p) + 64)
  step = 2**(wanted.bit_length() - 4)
  assert int(info.rounds) == 1
  assert int(info.candidates) == -(-wanted // step) * step
  assert wanted <= int(info.candidates) <= 1.125 * wanted
  for missing in [1, 100, 3000, 12544, 10**6, 10**8]:
    size = dg.round_size(missing, p)
    assert size == int(dg.round_size(tf.constant(missing), p))
    wanted = min(math.ceil(missing / p + 6 * math.sqrt(missing / p) + 64), dg.MAX_ROUND)
    if wanted <= 2**13:
      assert size == 2**(wanted - 1).bit_length()
    else:
      assert wanted <= size <= 1.125 * wanted and size <= dg.MAX_ROUND
      assert size // 2**(size.bit_length() - 4) < 16


def test_trial_field_outcomes_by_hand():
  """A 16-bit field f is the first bits of W; K = min{k ≥ 2 : W ≥ 1/k!} and the trial
  succeeds iff K is odd. m_k = ⌊2¹⁶/k!⌋; f = m_k (k ≥ 3) leaves K ∈ {k, k + 1}, f < m_8 K > 8."""
  m, k_max, rho, fact = dg.trial_table(16)
  assert m == [32768, 10922, 2730, 546, 91, 13, 1] and k_max == 8
  assert rho[3] == 2**16 - 10922 * 6 and fact[8] == 40320
  f = tf.constant([32768, 65535, 32767, 10923, 10922, 10921, 2731, 2730, 2729, 14, 13, 12, 2, 1,
                   0], tf.int32)
  success, failure = [t.numpy().tolist() for t in dg._trial_codes(f)]
  # K:        2    2    3    3   3|4   4    4   4|5   5    7   7|8   8    8   8|9  >8
  expect = ["F", "F", "S", "S", "?", "F", "F", "?", "S", "S", "?", "F", "F", "?", "?"]
  got = ["S" if s else "F" if fl else "?" for s, fl in zip(success, failure)]
  assert got == expect


def test_trial_field_law_is_exact():
  """Over all 2¹⁶ fields (with a cell's pending comparison taken at its exact probability),
  P[K > k] = 1/k! for k ≤ 8: the fields realise CKS Algorithm 1's loop for γ = 1 exactly."""
  m, k_max, rho, fact = dg.trial_table(16)
  f = np.arange(2**16)
  below = sum((f < mk).astype(int) for mk in m)           # K − 2 where decided
  for k in range(2, k_max + 1):
    # Fields with K > k surely (beyond, f < m_8, counts as K > 8), plus the cell at m_k, where
    # K = k + 1 with probability ρ_k/k! (a cell at m_j is K > k surely for j > k, never j < k).
    exceed = Fraction(int(np.sum(below + 2 > k)), 2**16)
    if k >= 3:
      exceed += Fraction(rho[k], fact[k]) / 2**16
    assert exceed == Fraction(1, math.factorial(k)), k


def test_below_the_last_threshold_the_trial_goes_on_with_the_exact_conditional_law():
  """f < m_8 (f = 0: W < 2⁻¹⁶) leaves K > 8; the machine must then compare W with 1/9! GIVEN
  W < 2⁻¹⁶, i.e. take K > 9 with probability 2¹⁶/9! (≈ 0.18), not a fresh 1/9: over all
  fields, P[K > 9] = 1/9! and P[K > 10] = 1/10! exactly."""
  m, k_max, _, _ = dg.trial_table(16)
  c = dg._consts(dg.scale_parameters(300.0), 64 * 300)
  zeros = tf.zeros([1], tf.int64)
  st = {key: zeros for key in dg._STATE}
  st.update(stage=zeros + dg._CHAIN, prim=zeros + dg._TRIAL, k=zeros + 2)
  after = {key: int(v[0]) for key, v in dg._step(st, zeros, c).items()}   # the field f = 0
  assert (after["stage"], after["prim"], after["origin"], after["k"]) == (
      dg._CHAIN, dg._PENDING, dg._TRIAL, k_max + 1)
  beyond = Fraction(m[-1], 2**16) * Fraction(after["num"], after["den"])  # P[f < m_8, K > 9]
  assert beyond == Fraction(1, math.factorial(9))
  # When the comparison says yes, the loop goes on at radix 10: one Bernoulli(1/10).
  pending = {key: tf.constant([v], tf.int64) for key, v in after.items()}
  yes = {key: int(v[0]) for key, v in dg._step(pending, tf.constant([0], tf.int64), c).items()}
  assert (yes["prim"], yes["k"]) == (dg._TRIAL, 10)
  f = tf.range(2**16, dtype=tf.int64)
  radix = {key: tf.fill([2**16], tf.constant(v, tf.int64)) for key, v in yes.items()}
  on = dg._step(radix, f, c)
  goes_on = (on["prim"].numpy() == dg._TRIAL) & (on["k"].numpy() == 11)
  left = (on["prim"].numpy() == dg._PENDING)
  exceed = Fraction(int(goes_on.sum()), 2**16) + sum(
      Fraction(int(n), int(d)) / 2**16 for n, d in zip(on["num"].numpy()[left],
                                                      on["den"].numpy()[left]))
  assert beyond * exceed == Fraction(1, math.factorial(10))


def test_fold_and_words_use_all_128_bits_of_the_seed_with_and_without_xla():
  """A step's noise must not be a function of fewer secret bits than the key holds: each of
  the seed's 128 bits changes the words (XLA's stateless ops would read 64 of them), the
  folded seeds spread over all 128 bits (stateless_fold_in keeps 32 and the public v), and
  XLA draws what TensorFlow's kernels draw."""
  seed = tf.constant([0x7A3B_91C4_55E2_0F17, -0x1234_5678_9ABC_DEF1], tf.int64)
  plain = tf.function(lambda s: dg._words([4], s), jit_compile=False)
  xla = tf.function(lambda s: dg._words([4], s), jit_compile=True)
  base = plain(seed).numpy()
  np.testing.assert_array_equal(xla(seed).numpy(), base)
  for word in range(2):
    for bit in range(64):
      flipped = seed.numpy().copy()
      flipped[word] ^= np.int64(1) << np.int64(bit) if bit < 63 else np.int64(-2**63)
      for fn in (plain, xla):
        assert not np.array_equal(fn(tf.constant(flipped)).numpy(), base), (word, bit)
  folded = np.stack([dg.fold(seed, v).numpy() for v in range(64)])
  assert len({tuple(row) for row in folded}) == 64
  bits = (folded[:, :, None] >> np.arange(64)) & 1
  assert np.all(bits.min(axis=0) == 0) and np.all(bits.max(axis=0) == 1)  # every bit varies
  fold_xla = tf.function(lambda s: dg.fold(s, 3, 5), jit_compile=True)
  np.testing.assert_array_equal(fold_xla(seed).numpy(), dg.fold(seed, 3, 5).numpy())
  assert not np.array_equal(dg.fold(seed, 3, 5).numpy(), dg.fold(seed, 5, 3).numpy())
  # A fold is never a block of the words the same seed draws (its key differs).
  assert not set(dg._words([4096], seed).numpy()) & set(folded.reshape(-1))
  u = tf.function(lambda s: dg.uniform_float64([1000], s), jit_compile=True)(seed).numpy()
  np.testing.assert_array_equal(u, dg.uniform_float64([1000], seed).numpy())
  assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.05


@pytest.mark.parametrize("num,den", [(1, 3), (0, 7), (6, 7), (1, 2), (123456789, 2**40 - 3),
                                     (2**46 - 1, 2**46 + 5)])
def test_lazy_comparison_is_exact(num, den):
  """[W < num/den] from a 16-bit field: yes/no where decided, else the pending comparison
  num′/den with num′ = num·2¹⁶ − f·den; the three add up to num/den exactly."""
  f = tf.range(2**16, dtype=tf.int64)
  yes, no, scaled = dg.compare_field(f, tf.constant(num, tf.int64), tf.constant(den, tf.int64))
  yes, no = yes.numpy(), no.numpy()
  assert not np.any(yes & no)
  pending = np.nonzero(~yes & ~no)[0]
  assert len(pending) <= 1
  total = Fraction(int(yes.sum()), 2**16)
  for fp in pending:
    rest = int(scaled.numpy()) - int(fp) * den
    assert 0 < rest < den
    total += Fraction(rest, den) / 2**16
  assert total == Fraction(num, den)


SCALES = [dg.Scale(18, 211400),           # the Fashion-MNIST release's s ≈ 2.35·10⁵
          dg.scale_parameters(6.5), dg.Scale(0, 1), dg.Scale(30, 3)]


def _max_abs(scale):
  return max(64, int(dg.MIN_STDS_KEPT * scale.scale) + 1)


@pytest.mark.parametrize("scale", SCALES)
def test_phase1_agrees_with_the_state_machine(scale):
  """Phase 1 decides most candidates without the machine; every outcome it gives must be the
  machine's (decide(phase1=False) runs every candidate through the machine from its first
  field, with the same words)."""
  max_abs = _max_abs(scale)
  c = dg._consts(scale, max_abs)
  n = 20_000
  for seed in range(2):
    s = tf.constant([4, seed], tf.int64)
    words = dg._words(tf.stack([n, dg.PHASE1_WORDS]), dg.fold(s, 0))
    packed = dg._fast(words, c)
    status, _, _, v = [t.numpy() for t in dg._unpack(packed)]
    machine, x, _ = [t.numpy() for t in dg.decide(n, scale, max_abs, s, phase1=False)]
    decided = status != dg._UNDECIDED
    assert decided.mean() > 0.99
    np.testing.assert_array_equal(status[decided], machine[decided])
    u = words.numpy()[:, 0] & (scale.t - 1)
    accepted = decided & (status == dg._ACCEPT)
    np.testing.assert_array_equal((u + scale.t * v)[accepted], x[accepted])


@pytest.mark.parametrize("scale", [SCALES[0], SCALES[1]])
def test_phase2_resumes_in_the_machines_state(scale):
  """For every candidate phase 1 leaves undecided, `_resume` gives the state the machine
  reaches after the candidate's first `start` fields (so phase 2 goes on exactly where the
  machine would be)."""
  max_abs = _max_abs(scale)
  c = dg._consts(scale, max_abs)
  words = dg._words([60_000, dg.PHASE1_WORDS], tf.constant([6, 2], tf.int64))
  status, stage, start, v = dg._unpack(dg._fast(words, c))
  rows = np.nonzero(status.numpy() == dg._UNDECIDED)[0]
  assert len(rows) > 10
  own = tf.gather(words, rows)
  start = tf.gather(start, rows)
  resumed = dg._resume(own, tf.gather(stage, rows), start, tf.gather(v, rows), c)
  machine = dg._initial_state(own, c)
  for i in range(c.phase1_fields):
    stepped = dg._step(machine, dg._candidate_field(own, c.first_field + i), c)
    machine = {key: tf.where(i < start, stepped[key], machine[key]) for key in machine}
  for key in ("stage", "prim", "k", "v", "u", "sign"):
    np.testing.assert_array_equal(resumed[key].numpy(), machine[key].numpy(), err_msg=key)
  target = resumed["stage"].numpy() == dg._TARGET
  np.testing.assert_array_equal(resumed["need"].numpy()[target], machine["need"].numpy()[target])
  later = resumed["stage"].numpy() != dg._CHAIN
  np.testing.assert_array_equal(resumed["rest"].numpy()[later], machine["rest"].numpy()[later])


@pytest.mark.parametrize("scale", [SCALES[0], SCALES[1]])
@pytest.mark.parametrize("phase1", [True, False])
def test_candidates_chain_acceptance_and_values(scale, phase1):
  """Every candidate decided by phase 1 and 2 (phase1=True) or by the state machine alone
  (False: exercises cells, the K-loop past k = 8 and pending comparisons): V is geometric,
  the acceptance rate is `acceptance_probability`, the accepted values follow the pmf."""
  n = 400_000 if phase1 else 100_000
  status, x, sign = [t.numpy() for t in dg.decide(n, scale, _max_abs(scale),
                                                  tf.constant([8, 1], tf.int64), phase1=phase1)]
  v = x // scale.t
  counts = np.bincount(np.minimum(v, 8), minlength=9)
  probs = (1 - math.exp(-1)) * np.exp(-np.arange(9.0))
  probs[8] = math.exp(-8)
  assert stats.chisquare(counts, probs * n).pvalue > 1e-3
  p = dg.acceptance_probability(scale)
  accepted = status == dg._ACCEPT
  assert abs(accepted.mean() - p) < 5 * math.sqrt(p * (1 - p) / n)
  z = ((1 - 2 * sign) * x)[accepted]
  _, _, pvalue = chi_square(z, scale.variance_parameter)
  assert pvalue > 1e-3


def _run_machine(state, c, seed, max_steps=200):
  """Steps a state (dict of int64 [n]) with fresh 16-bit fields until every entry is done."""
  step = tf.function(lambda st, i: dg._step(
      st, dg._field(dg._words(tf.shape(st["stage"]), dg.fold(seed, i)), 0), c))
  for i in range(max_steps):
    if not np.any(state["stage"].numpy() < dg._REJECT):
      return state
    state = step(state, tf.constant(i))
  raise AssertionError("undecided after max_steps")


def _fraction_state(n, rest, k, c):
  zeros = tf.zeros([n], tf.int64)
  st = {key: zeros for key in dg._STATE}
  st.update(stage=zeros + dg._FRACTION, prim=zeros + dg._FRAC, k=zeros + k, rest=zeros + rest)
  return st


@pytest.mark.parametrize("rest,den", [(1, 3), (0, 7), (6, 7), (123456789, 2**40 - 3)])
def test_fraction_loop_accepts_with_exp_minus_r_over_d(rest, den):
  c = dg._Consts(t=1, log2_t=0, L=1, D=den, max_abs=64, v_max=64)
  n = 200_000
  st = _run_machine(_fraction_state(n, rest, 1, c), c, tf.constant([5, 6], tf.int64))
  hits = st["stage"].numpy() == dg._ACCEPT
  p = math.exp(-rest / den)
  assert abs(hits.mean() - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-12


def test_fraction_loop_past_the_direct_steps():
  """From step k = 64 (A_k in one comparison) the loop goes on as Bernoulli(1/k) then
  Bernoulli(r/D) (products stay below 2⁶³): K = 64 + (number of further successes),
  accepted iff K is odd, P[accept] = Σ_{K odd} P[K]."""
  c = dg._Consts(t=1, log2_t=0, L=1, D=2**40 - 3, max_abs=64, v_max=64)
  rest = 2**40 - 10**9
  f = rest / c.D
  n = 10**6
  st = _run_machine(_fraction_state(n, rest, 64, c), c, tf.constant([7, 7], tf.int64))
  # P[K = k | at step 64] = Π_{i=64}^{k−1} (f/i) · (1 − f/k).
  p_accept, reach = 0.0, 1.0
  for k in range(64, 80):
    if k % 2:
      p_accept += reach * (1 - f / k)
    reach *= f / k
  hits = (st["stage"].numpy() == dg._ACCEPT).mean()
  assert abs(hits - p_accept) < 5 * math.sqrt(p_accept / n)
  assert hits > 0  # the split steps (k > 64) were taken


def test_fraction_steps_by_hand():
  """A_64 = 1 → Bernoulli(1/65) next (_FRACK), then Bernoulli(r/D) (_FRACF), then k = 66."""
  c = dg._Consts(t=1, log2_t=0, L=1, D=1000, max_abs=64, v_max=64)
  st = _fraction_state(1, 999, 64, c)
  st = dg._step(st, tf.constant([0], tf.int64), c)      # W < 999/64000: A_64 = 1
  assert int(st["prim"][0]) == dg._FRACK and int(st["k"][0]) == 65
  st = dg._step(st, tf.constant([0], tf.int64), c)      # W < 1/65
  assert int(st["prim"][0]) == dg._FRACF and int(st["k"][0]) == 65
  st = dg._step(st, tf.constant([0], tf.int64), c)      # W < 999/1000
  assert int(st["prim"][0]) == dg._FRACK and int(st["k"][0]) == 66
  st = dg._step(st, tf.constant([2**16 - 1], tf.int64), c)  # W ≥ 1/66: K = 66, even
  assert int(st["stage"][0]) == dg._REJECT


def test_jit_and_plain_tensorflow_draw_the_same_values():
  """XLA and TensorFlow's kernels give the same Philox words and integer results."""
  scale = dg.scale_parameters(300.0)
  a, _ = dg.sample([20_000], scale, SEED, 64 * 300, jit=True)
  b, _ = dg.sample([20_000], scale, SEED, 64 * 300, jit=False)
  np.testing.assert_array_equal(a.numpy(), b.numpy())

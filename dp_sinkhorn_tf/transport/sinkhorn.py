"""Log-domain Sinkhorn: entropic OT cost W_λ, Sinkhorn divergence, the semi-debiased loss.

Value convention. For weights a ∈ Δ_n, b ∈ Δ_m and a cost matrix C (the cost is used as
it is: no factor ½), the entropic OT cost is

  W_λ(a, b) = min_{P ∈ Π(a,b)} ⟨P, C⟩ + λ·KL(P ‖ a⊗b)                             (1)
            = max_{f,g} ⟨a, f⟩ + ⟨b, g⟩ − λ⟨a⊗b, exp((f⊕g − C)/λ) − 1⟩           (2)

and at the optimum the last term of (2) vanishes, so we report W_λ = ⟨a, f⟩ + ⟨b, g⟩ with
converged dual potentials. With this convention W_λ(δ_x, δ_y) = c(x, y) for every λ, the
entropy term is relative to a⊗b (so W_λ ≥ 0 for a non-negative cost), and the
optimal plan is P_ij = a_i b_j exp((f_i + g_j − C_ij)/λ).

Solver. The potentials solve f = T_C(g), g = T_Cᵀ(f) with the soft-min

  T_C(g)_i = −λ · log Σ_j b_j exp((g_j − C_ij)/λ)                                   (3)

evaluated with log-sum-exp, so no exp(−C/λ) kernel ever under- or overflows. The loop runs
with ε-scaling: the temperature starts at the cost's largest entry and shrinks by `scaling`
per level down to λ; at each level above λ, alternating updates f ← T_C(g), g ← T_Cᵀ(f)
(both from one kernel pass: eq. (4) of `alternating_softmin`) run until that level's
marginal error is ≤ `anneal_threshold` (at most `anneal_max_iterations`), so each level
starts near its own fixed point. Then alternating updates at λ run until the marginal error
Σ_j |(Pᵀ1)_j − b_j| falls under `threshold` or `max_iterations` is reached. Those updates
may be over-relaxed, f ← f + ω·(T_C(g) − f) with ω = `relaxation` ∈ [1, 2) (`relax`): the
same fixed point in fewer updates where plain Sinkhorn converges slowly.

Why each level is solved: when λ is tiny against the cost's spread (λ = 0.05 against the
l1l2 costs of image features, 10³ and more) the plan is nearly a permutation, and plain
Sinkhorn at λ from a far start converges very slowly, in float64 as in float32. One
(averaged) update per level, the schedule before, reached λ far from its fixed point, and
the solves stopped at `max_iterations` with a large marginal error and a biased gradient
(measurements: docs/benchmarks.md, "The solve at λ = 0.05").

Gradients. The loop runs on tf.stop_gradient(C). The returned value is
⟨a, T_C(g*)⟩ + ⟨b, g*⟩ with g* held fixed: one last differentiable update, whose gradient
w.r.t. C is exactly the plan P (envelope theorem; Feydy et al. 2019), so the backward pass
costs one soft-min and the cost's own backward (one matmul for ‖·‖²).
"""

from typing import NamedTuple

import tensorflow as tf

from dp_sinkhorn_tf.transport import costs as costs_lib
from dp_sinkhorn_tf.transport.options import SinkhornConfig


class SinkhornInfo(NamedTuple):
  """Diagnostics of one or more solves.

  iterations: int32 scalar, soft-min update pairs run (annealing + at λ; summed over solves).
  marginal_error: float scalar, final Σ_j |(Pᵀ1)_j − b_j| (the largest over solves).
  """

  iterations: tf.Tensor
  marginal_error: tf.Tensor


def _log_weights(weights, num: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
  """log of the weights normalised to sum 1 (uniform 1/num when `weights` is None)."""
  if weights is None:
    return -tf.math.log(tf.cast(num, dtype)) * tf.ones(tf.stack([num]), dtype)
  weights = tf.cast(weights, dtype)
  return tf.math.log(weights) - tf.math.log(tf.reduce_sum(weights))


def softmin_rows(cost: tf.Tensor, log_b: tf.Tensor, g: tf.Tensor,
                 eps: tf.Tensor) -> tf.Tensor:
  """T_C(g)_i = −ε · LSE_j(log b_j + (g_j − C_ij)/ε), eq. (3).  cost: [n, m] → [n]."""
  return -eps * tf.reduce_logsumexp(log_b[tf.newaxis, :] + (g[tf.newaxis, :] - cost) / eps,
                                    axis=1)


def softmin_cols(cost: tf.Tensor, log_a: tf.Tensor, f: tf.Tensor,
                 eps: tf.Tensor) -> tf.Tensor:
  """T_Cᵀ(f)_j = −ε · LSE_i(log a_i + (f_i − C_ij)/ε).  cost: [n, m] → [m]."""
  return -eps * tf.reduce_logsumexp(log_a[:, tf.newaxis] + (f[:, tf.newaxis] - cost) / eps,
                                    axis=0)


# Smallest row / column mass the kernel form of `alternating_softmin` trusts: above it the
# mass is a normal float32 with full relative precision (normal floats start at 1.2e-38).
MIN_KERNEL_MASS = 1e-30


def alternating_softmin(cost: tf.Tensor, log_a: tf.Tensor, log_b: tf.Tensor, f: tf.Tensor,
                        g: tf.Tensor, eps: tf.Tensor):
  """One alternating update f′ = T_C(g), g′ = T_Cᵀ(f′) of eq. (3) at temperature ε, and the
  marginal error Σ_j |(Pᵀ1)_j − b_j| of the plan P(f′, g) before g moves.

  With the kernel E_ij = exp((f_i + g_j − C_ij)/ε) of the incoming potentials,

    r = E·b,   f′ = f − ε·log r,   c = Eᵀ·(a / r),   g′ = g − ε·log c,                 (4)

  since P(f′, g) = diag(a / r)·E·diag(b) has column sums b ⊙ c (so the error is
  Σ_j b_j |c_j − 1|): one exponential pass over [n, m] and two matrix–vector products,
  where the two log-sum-exps of `softmin_rows` / `softmin_cols` take about twice the time.
  Every term a_i E_ij / r_i of c is at most 1/b_j, so nothing overflows once r is in range.
  Whenever a row or column mass is not finite or below MIN_KERNEL_MASS (potentials far from
  this temperature's fixed point), the update is done by log-sum-exp instead, so the result
  is eq. (3) up to round-off either way. Zero-weight (padded) points have E rows and
  columns like any other; their weight only multiplies.
  """
  kernel = tf.exp((f[:, tf.newaxis] + g[tf.newaxis, :] - cost) / eps)
  row = tf.linalg.matvec(kernel, tf.exp(log_b))
  col = tf.linalg.matvec(kernel, tf.math.divide_no_nan(tf.exp(log_a), row), transpose_a=True)
  masses = tf.concat([row, col], axis=0)
  usable = tf.reduce_all(tf.math.is_finite(masses) & (masses >= MIN_KERNEL_MASS))

  def from_kernel():
    err = tf.reduce_sum(tf.exp(log_b) * tf.abs(col - 1.0))
    return f - eps * tf.math.log(row), g - eps * tf.math.log(col), err

  def from_logsumexp():
    f_new = softmin_rows(cost, log_b, g, eps)
    g_new = softmin_cols(cost, log_a, f_new, eps)
    return f_new, g_new, _column_marginal_error(log_b, g, g_new, eps)

  f_new, g_new, err = tf.cond(usable, from_kernel, from_logsumexp)
  f_new.set_shape(f.shape)
  g_new.set_shape(g.shape)
  return f_new, g_new, err


def _column_marginal_error(log_b, g_old, g_new, eps):
  """Σ_j |(Pᵀ1)_j − b_j| for P built from (f, g_old) with f = T_C(g_old).

  (Pᵀ1)_j = b_j · exp((g_old_j − T_Cᵀ(f)_j)/ε), and T_Cᵀ(f) is the next g.
  """
  return tf.reduce_sum(tf.exp(log_b) * tf.abs(tf.math.expm1((g_old - g_new) / eps)))


def relax(old: tf.Tensor, update: tf.Tensor, omega: float) -> tf.Tensor:
  """old + ω·(update − old): the over-relaxed step towards a soft-min update (ω = 1: the
  update itself; `SinkhornConfig.relaxation`). Points of zero weight (update −inf or the
  old value −inf) take the update as it is."""
  if omega == 1:
    return update
  finite = tf.math.is_finite(old) & tf.math.is_finite(update)
  return tf.where(finite, old + omega * (update - old), update)


def _log_phase(cost, log_a, log_b, f, g, config: SinkhornConfig):
  """Alternating log-domain updates f ← T_C(g), g ← T_Cᵀ(f) at λ until converged (each
  over-relaxed by ω = config.relaxation, `relax`)."""
  eps = tf.constant(config.epsilon, cost.dtype)
  omega = config.relaxation

  def cond(f, g, it, err):
    return tf.logical_and(it < config.max_iterations, err > config.threshold)

  def body(f, g, it, err):
    f = relax(f, softmin_rows(cost, log_b, g, eps), omega)
    g_full = softmin_cols(cost, log_a, f, eps)
    # The error is that of the plan (f, g) before g moves, as without relaxation.
    return f, relax(g, g_full, omega), it + 1, _column_marginal_error(log_b, g, g_full, eps)

  inf = tf.constant(float("inf"), cost.dtype)
  return tf.while_loop(cond, body, (f, g, 0, inf),
                       shape_invariants=(_VECTOR, _VECTOR, _SCALAR, _SCALAR))


def _plan(cost, log_a, log_b, f, g, eps):
  """P_ij = a_i b_j exp((f_i + g_j − C_ij)/ε)."""
  return tf.exp(log_a[:, tf.newaxis] + log_b[tf.newaxis, :]
                + (f[:, tf.newaxis] + g[tf.newaxis, :] - cost) / eps)


def _kernel_phase(cost, log_a, log_b, f, g, config: SinkhornConfig):
  """The same updates as `_log_phase`, on a kernel stabilised by the current potentials.

  With K = P(f, g) and scalings u, v (P = diag(u)·K·diag(v), true potentials f + λ·log u
  and g + λ·log v), the update f ← T_C(g) is u = a / (K v) and g ← T_Cᵀ(f) is
  v = b / (Kᵀ u). When an update would leave max |log u|, |log v| > absorb_threshold, or a
  row or column of K has underflowed to zero, that update is instead done exactly in the
  log domain from the true potentials and K is rebuilt around them (u = v = 1). So no
  kernel entry overflows, and every result equals the log-domain iteration up to round-off.
  """
  eps = tf.constant(config.epsilon, cost.dtype)
  a, b = tf.exp(log_a), tf.exp(log_b)
  bound = tf.constant(config.absorb_threshold, cost.dtype)
  omega = config.relaxation

  def cond(f, g, u, v, kernel, it, err):
    return tf.logical_and(it < config.max_iterations, err > config.threshold)

  def relax_scaling(old, full):
    # `relax` on the logs; zero-weight points (full = 0, log −inf) keep full.
    if omega == 1:
      return full
    return tf.exp(relax(tf.math.log(old), tf.math.log(full), omega))

  def body(f, g, u, v, kernel, it, err):
    row_mass = tf.linalg.matvec(kernel, v)
    u_new = relax_scaling(u, tf.math.divide_no_nan(a, row_mass))
    col_mass = tf.linalg.matvec(kernel, u_new, transpose_a=True)
    v_full = tf.math.divide_no_nan(b, col_mass)
    v_new = relax_scaling(v, v_full)
    drift = tf.maximum(tf.reduce_max(tf.abs(_safe_log(u_new))),
                       tf.reduce_max(tf.abs(_safe_log(v_new))))
    underflow = tf.logical_or(tf.reduce_any((row_mass <= 0) & (a > 0)),
                              tf.reduce_any((col_mass <= 0) & (b > 0)))

    def kernel_step():
      err = tf.reduce_sum(b * tf.abs(tf.math.divide_no_nan(v, v_full) - 1.0))
      return f, g, u_new, v_new, kernel, err

    def log_step():
      f_true, g_true = f + eps * _safe_log(u), g + eps * _safe_log(v)
      f_new = relax(f_true, softmin_rows(cost, log_b, g_true, eps), omega)
      g_full = softmin_cols(cost, log_a, f_new, eps)
      err = _column_marginal_error(log_b, g_true, g_full, eps)
      g_new = relax(g_true, g_full, omega)
      return (f_new, g_new, tf.ones_like(u), tf.ones_like(v),
              _plan(cost, log_a, log_b, f_new, g_new, eps), err)

    f, g, u, v, kernel, err = tf.cond(tf.logical_or(drift > bound, underflow), log_step,
                                      kernel_step)
    return f, g, u, v, kernel, it + 1, err

  inf = tf.constant(float("inf"), cost.dtype)
  # Start from an exact row update so that K's rows carry the right mass.
  f = softmin_rows(cost, log_b, g, eps)
  kernel = _plan(cost, log_a, log_b, f, g, eps)
  state = (f, g, tf.ones_like(log_a), tf.ones_like(log_b), kernel, 0, inf)
  f, g, u, v, _, it, err = tf.while_loop(
      cond, body, state,
      shape_invariants=(_VECTOR, _VECTOR, _VECTOR, _VECTOR, _MATRIX, _SCALAR, _SCALAR))
  return f + eps * _safe_log(u), g + eps * _safe_log(v), it, err


# The loops' shape invariants: a potential's length may be static on entry and unknown after
# a step (a bucket-padded batch traces with partly unknown shapes), so none is promised.
_VECTOR, _MATRIX, _SCALAR = tf.TensorShape([None]), tf.TensorShape([None, None]), tf.TensorShape([])


def _safe_log(scaling: tf.Tensor) -> tf.Tensor:
  """log of a scaling, 0 where it is 0 (points of zero weight carry no potential)."""
  return tf.math.log(tf.where(scaling > 0, scaling, tf.ones_like(scaling)))


# A tf.function even when called eagerly: an eager tf.while_loop would dispatch every op of
# every iteration from Python. Inside another tf.function it is inlined.
@tf.function(reduce_retracing=True, autograph=False)
def solve_potentials(cost: tf.Tensor, log_a: tf.Tensor, log_b: tf.Tensor,
                     config: SinkhornConfig):
  """Runs ε-scaled log-domain Sinkhorn on a fixed cost matrix (no gradients).

  Args:
    cost: [n, m] float cost matrix (treated as a constant).
    log_a: [n] log-weights summing (in exp) to 1; −inf marks a zero-weight (padded) point.
    log_b: [m] likewise.
    config: solver settings.

  Returns:
    (f [n], g [m], SinkhornInfo) with g the last update, so that (f, g) is a fixed point
    up to the reported marginal error.
  """
  cost = tf.stop_gradient(cost)
  dtype = cost.dtype
  target = tf.constant(config.epsilon, dtype)
  scaling = tf.constant(config.scaling, dtype)
  # Start at the largest cost: at that temperature the plan is nearly a⊗b and one update
  # is close to converged. Each temperature starts from the previous one's potentials and
  # runs alternating updates until its own marginal error is ≤ anneal_threshold (or
  # anneal_max_iterations), so λ's phase starts near its fixed point.
  eps0 = tf.maximum(tf.reduce_max(cost), target)
  level_threshold = tf.constant(config.anneal_threshold, dtype)

  def anneal_cond(eps, f, g, level_iterations, it):
    return eps > target

  def anneal_body(eps, f, g, level_iterations, it):
    f, g, err = alternating_softmin(cost, log_a, log_b, f, g, eps)
    level_iterations += 1
    done = tf.logical_or(err <= level_threshold,
                         level_iterations >= config.anneal_max_iterations)
    eps = tf.where(done, tf.maximum(eps * scaling, target), eps)
    return eps, f, g, tf.where(done, 0, level_iterations), it + 1

  _, f, g, _, iterations = tf.while_loop(
      anneal_cond, anneal_body, (eps0, tf.zeros_like(log_a), tf.zeros_like(log_b), 0, 0),
      shape_invariants=(_SCALAR, _VECTOR, _VECTOR, _SCALAR, _SCALAR))
  if config.stabilized_kernel:
    f, g, final_iterations, err = _kernel_phase(cost, log_a, log_b, f, g, config)
  else:
    f, g, final_iterations, err = _log_phase(cost, log_a, log_b, f, g, config)
  return f, g, SinkhornInfo(iterations + final_iterations, err)


# The same solver compiled by XLA (SinkhornConfig.compile_solver).
_solve_potentials_xla = tf.function(solve_potentials.python_function, jit_compile=True,
                                    reduce_retracing=True, autograph=False)


def ot_cost_from_matrix(cost: tf.Tensor, config: SinkhornConfig, log_a: tf.Tensor,
                        log_b: tf.Tensor):
  """W_λ(a, b) of eq. (1) for a cost matrix; differentiable w.r.t. `cost` (gradient = plan).

  Returns:
    (value scalar, SinkhornInfo).
  """
  solve = _solve_potentials_xla if config.compile_solver else solve_potentials
  _, g, info = solve(cost, log_a, log_b, config)
  g = tf.stop_gradient(g)
  eps = tf.constant(config.epsilon, cost.dtype)
  # The envelope step: only f = T_C(g*) sees C on the tape.
  f = softmin_rows(cost, log_b, g, eps)
  a, b = tf.exp(log_a), tf.exp(log_b)
  value = tf.reduce_sum(a * f) + tf.reduce_sum(b * g)
  return value, info


def _check_points(name: str, t: tf.Tensor) -> tf.Tensor:
  t = tf.convert_to_tensor(t)
  if not t.dtype.is_floating:
    raise ValueError(f"{name} must be a float tensor, got {t.dtype}")
  if t.shape.rank is not None and t.shape.rank != 2:
    raise ValueError(f"{name} must have shape [points, dim], got {t.shape}")
  return t


def ot_cost(x: tf.Tensor, y: tf.Tensor, cost: costs_lib.Cost, config: SinkhornConfig,
            x_weights=None, y_weights=None):
  """W_λ between the weighted clouds Σ a_i δ_{x_i} and Σ b_j δ_{y_j} (eq. 1).

  Args:
    x: [n, d] float points.
    y: [m, d] float points, same dtype.
    cost: a `costs` cost, c(x, y) → [n, m].
    config: solver settings; config.epsilon is λ.
    x_weights: [n] non-negative weights (normalised here) or None for uniform.
    y_weights: [m] likewise; zeros mark padding.

  Returns:
    (value scalar, SinkhornInfo). The value is differentiable w.r.t. x and y.
  """
  x, y = _check_points("x", x), _check_points("y", y)
  log_a = _log_weights(x_weights, tf.shape(x)[0], x.dtype)
  log_b = _log_weights(y_weights, tf.shape(y)[0], y.dtype)
  return ot_cost_from_matrix(cost(x, y), config, log_a, log_b)


def _combine(*infos: SinkhornInfo) -> SinkhornInfo:
  return SinkhornInfo(tf.add_n([i.iterations for i in infos]),
                      tf.reduce_max(tf.stack([i.marginal_error for i in infos])))


def sinkhorn_divergence(x: tf.Tensor, y: tf.Tensor, cost: costs_lib.Cost,
                        config: SinkhornConfig, x_weights=None, y_weights=None):
  """Debiased Sinkhorn divergence S_λ(α, β) = W_λ(α, β) − ½W_λ(α, α) − ½W_λ(β, β).

  S_λ(α, α) = 0, and S_λ ≥ 0 for costs like ‖x−y‖² (Feydy et al. 2019, Thm. 1).

  Returns:
    (value scalar, SinkhornInfo summed over the three solves).
  """
  xy, i_xy = ot_cost(x, y, cost, config, x_weights, y_weights)
  xx, i_xx = ot_cost(x, x, cost, config, x_weights, x_weights)
  yy, i_yy = ot_cost(y, y, cost, config, y_weights, y_weights)
  return xy - 0.5 * (xx + yy), _combine(i_xy, i_xx, i_yy)


def semi_debiased_loss(fake: tf.Tensor, real: tf.Tensor, num_primary, cost: costs_lib.Cost,
                       config: SinkhornConfig, real_weights=None, fake_weights=None,
                       self_weights=None):
  """The DP-Sinkhorn training loss (paper eq. 8, semi-debiased Sinkhorn).

  With X = fake holding n + n′ generated points (n = num_primary, n′ = ⌊p·n⌋) and Y the
  private batch,

    L = 2·W_λ(X[0:n], Y) − W_λ(X[0:n], X[n′:n+n′]).

  p = 0 (n′ = 0) compares X[0:n] with itself: the self-term is only the entropic offset
  and the loss is the biased 2·W_λ(X, Y) up to it; p = 1 uses an independent second
  sample, removing the finite-sample bias fully. Rows X[0:n] meet the private data; rows
  X[n:n+n′] appear only in the self-term, so their gradient depends on generated data
  alone (see `privacy`).

  An empty private batch (zero rows, or all `real_weights` zero) makes the cross term 0
  with zero gradient: the step still happens and its released gradient is pure noise.

  Args:
    fake: [n + n′, d] float generated points.
    real: [m, d] private points (m may be 0).
    num_primary: n, a Python int or int32 scalar, 1 ≤ n ≤ len(fake), len(fake) ≤ 2n.
    cost: the ground cost.
    config: solver settings.
    real_weights: [m] non-negative weights, zeros on padded rows; None = uniform.
    fake_weights: [n] weights of X[0:n] in the cross term (None = uniform); e.g. the
      class-matched weights of `features.class_matched_weights`. If they or the real
      weights are all zero the cross term is 0, as for an empty batch.
    self_weights: a pair ([n] for X[0:n], [n] for X[n′:n+n′]) for the self term, or None
      for uniform; if either is all zero the self term falls back to uniform weights. They
      must not depend on the private batch: rows X[n:] see only this term and are not
      noised.

  Returns:
    (loss scalar, SinkhornInfo over both solves).
  """
  fake, real = _check_points("fake", fake), _check_points("real", real)
  n = tf.convert_to_tensor(num_primary, tf.int32)
  extra = tf.shape(fake)[0] - n
  primary = fake[:n]
  shifted = fake[extra:extra + n]
  # One zero-weight dummy row keeps every shape non-empty: with an empty batch it takes all
  # the (then meaningless) mass, the cross term is masked to 0 and its gradient is 0. This
  # is arithmetic, not a tf.cond, so it runs under XLA and leaves no data-dependent branch.
  num_real = tf.shape(real)[0]
  weights = (tf.ones(tf.stack([num_real]), fake.dtype) if real_weights is None
             else tf.cast(real_weights, fake.dtype))
  has_data = tf.reduce_sum(weights) > 0
  uniform = tf.ones(tf.stack([n]), fake.dtype)
  if fake_weights is not None:
    fake_weights = tf.cast(fake_weights, fake.dtype)
    has_data = tf.logical_and(has_data, tf.reduce_sum(fake_weights) > 0)
  padded_real = tf.pad(real, [[0, 1], [0, 0]])
  dummy = tf.one_hot(num_real, num_real + 1, dtype=fake.dtype)
  safe_weights = tf.where(has_data, tf.pad(weights, [[0, 1]]), dummy)
  safe_fake = None if fake_weights is None else tf.where(has_data, fake_weights, uniform)
  cross, cross_info = ot_cost(primary, padded_real, cost, config, safe_fake, safe_weights)
  cross = tf.where(has_data, cross, tf.zeros_like(cross))
  if self_weights is None:
    self_term, self_info = ot_cost(primary, shifted, cost, config)
  else:
    w_primary, w_shifted = (tf.cast(w, fake.dtype) for w in self_weights)
    usable = tf.logical_and(tf.reduce_sum(w_primary) > 0, tf.reduce_sum(w_shifted) > 0)
    self_term, self_info = ot_cost(primary, shifted, cost, config,
                                   tf.where(usable, w_primary, uniform),
                                   tf.where(usable, w_shifted, uniform))
  info = _combine(cross_info, self_info)
  return 2.0 * cross - self_term, info


def loss_and_gradient_fn(cost: costs_lib.Cost, config: SinkhornConfig, num_primary: int,
                         dim: int, dtype: tf.DType = tf.float32, jit_compile: bool = False):
  """A compiled (loss, ∂loss/∂fake, info) function of the points and their weights.

  Arguments: (fake [n+n′, dim], real [m, dim], real_weights [m], fake_weights [n],
  self_primary [n], self_shifted [n]); the last three default to ones, i.e. uniform (see
  `semi_debiased_loss`).

  Its input signature leaves the number of real points open ([None, dim]), so a Poisson
  batch whose size changes every step does not retrace. With jit_compile=True, XLA compiles
  one program per distinct real-batch size: pad the batch to a bucket with zero weights.
  """
  spec = [tf.TensorSpec([None, dim], dtype), tf.TensorSpec([None, dim], dtype),
          tf.TensorSpec([None], dtype), tf.TensorSpec([num_primary], dtype),
          tf.TensorSpec([num_primary], dtype), tf.TensorSpec([num_primary], dtype)]

  @tf.function(input_signature=spec, jit_compile=jit_compile, autograph=False)
  def fn(fake, real, real_weights, fake_weights, self_primary, self_shifted):
    with tf.GradientTape() as tape:
      tape.watch(fake)
      loss, info = semi_debiased_loss(fake, real, num_primary, cost, config, real_weights,
                                      fake_weights, (self_primary, self_shifted))
    return loss, tape.gradient(loss, fake), info

  ones = tf.ones([num_primary], dtype)

  def call(fake, real, real_weights, fake_weights=None, self_primary=None, self_shifted=None):
    def pick(w):
      return ones if w is None else w

    return fn(fake, real, real_weights, pick(fake_weights), pick(self_primary),
              pick(self_shifted))

  call.experimental_get_tracing_count = fn.experimental_get_tracing_count
  return call

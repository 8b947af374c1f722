"""The transport settings `config` and the flags validate against, without TensorFlow.

`sinkhorn` solves with a `SinkhornConfig` and `costs` builds the costs named in
`COST_NAMES` with the product formats in `PRODUCTS`; both import them from here, so there is
one spelling of each, and this module imports no TensorFlow, so a bad --sinkhorn_* / --cost
flag fails before TensorFlow loads.
"""

import dataclasses
import math

# The names of `costs.COSTS` (costs_test checks that they agree): "l2" (‖x−y‖²) and "l1l2"
# (‖x−y‖² + m·‖x−y‖₁, the paper's).
COST_NAMES = ("l2", "l1l2")
# The format of the cost matrices' ⟨x, y⟩ products (`costs.inner_products`): "bfloat16" for
# the cost matrices, "bfloat16_all" for the gradient's plan products too.
PRODUCTS = ("float32", "bfloat16", "bfloat16_all")


@dataclasses.dataclass(frozen=True)
class SinkhornConfig:
  """Solver settings.

  Attributes:
    epsilon: target temperature λ > 0 (the paper's λ; 0.05 for MNIST/Fashion-MNIST).
    scaling: ratio in (0, 1) between successive annealing temperatures.
    threshold: stop at λ once the L1 marginal error is ≤ threshold.
    max_iterations: most alternating updates at λ, after annealing (≥ 1).
    stabilized_kernel: at λ, iterate on the kernel K = P(f, g) relative to the current
      potentials (two matrix-vector products per update instead of two log-sum-exps over
      [n, m]; Schmitzer 2019), folding the scalings back into f, g whenever
      |log u| or |log v| exceeds `absorb_threshold`. False: pure log-domain updates.
    absorb_threshold: bound on |log| of the scalings before they are absorbed (≤ 30 keeps
      every float32 kernel entry finite).
    compile_solver: run the potential iterations (`sinkhorn.solve_potentials`) under XLA,
      which fuses each kernel pass with its reductions, while the cost matrices and the
      gradient's products stay with TensorFlow's own (oneDNN) matmuls. Pays off from
      n ≈ 200; XLA compiles once per shape, so pad a changing batch to buckets (as the
      trainer does).
    relaxation: over-relaxation ω ∈ [1, 2) of the updates at λ, f ← f + ω·(T_C(g) − f) and
      likewise g (Thibault et al. 2017): the same fixed point, reached in fewer updates where
      plain Sinkhorn converges slowly but surely. ω = 1.5 at λ = 50 on the benchmark's l2
      problems (n = 1000 / 2000) took 35 / 28 updates to the threshold where ω = 1 took
      84 / 58, with the value equal to 1e-6. On the l1l2 problems at λ = 0.05, which then
      (one update per annealing level) stopped at `max_iterations`, it left a larger final
      error (0.33 against 0.16), so the default is plain Sinkhorn (1).
    anneal_threshold: each ε-scaling level above λ runs alternating updates until its own
      L1 marginal error is ≤ this, so that λ's updates start near their fixed point (one
      update per level left the λ = 0.05 l1l2 solves far from it: docs/benchmarks.md).
    anneal_max_iterations: most updates per ε-scaling level (≥ 1).
  """

  epsilon: float = 0.05
  scaling: float = 0.5
  threshold: float = 1e-3
  max_iterations: int = 100
  stabilized_kernel: bool = True
  absorb_threshold: float = 10.0
  compile_solver: bool = False
  relaxation: float = 1.0
  anneal_threshold: float = 1e-2
  anneal_max_iterations: int = 30

  def __post_init__(self):
    if not self.epsilon > 0:
      raise ValueError(f"epsilon (λ) must be > 0, got {self.epsilon}")
    if not 0 < self.scaling < 1:
      raise ValueError(f"scaling must be in (0, 1), got {self.scaling}")
    if not self.threshold >= 0:
      raise ValueError(f"threshold must be ≥ 0, got {self.threshold}")
    if self.max_iterations < 1:
      raise ValueError(f"max_iterations must be ≥ 1, got {self.max_iterations}")
    if not 0 < self.absorb_threshold <= 30:
      raise ValueError(f"absorb_threshold must be in (0, 30], got {self.absorb_threshold}")
    if not self.anneal_threshold >= 0:
      raise ValueError(f"anneal_threshold must be ≥ 0, got {self.anneal_threshold}")
    if self.anneal_max_iterations < 1:
      raise ValueError(f"anneal_max_iterations must be ≥ 1, got {self.anneal_max_iterations}")
    if not 1 <= self.relaxation < 2:
      raise ValueError(f"relaxation must be in [1, 2), got {self.relaxation}")


def num_extra(n: int, p: float) -> int:
  """n′ = ⌊p·n⌋, the number of extra generated points of the semi-debiased loss."""
  if not 0 <= p <= 1:
    raise ValueError(f"debias fraction p must be in [0, 1], got {p}")
  if n < 0:
    raise ValueError(f"n must be ≥ 0, got {n}")
  return int(math.floor(p * n + 1e-9))

"""Benchmarks, one JSON line per configuration.

  python -m dp_sinkhorn_tf.bench sinkhorn [--only NAME[,NAME]] [--jit] [--repeats 5]
  python -m dp_sinkhorn_tf.bench sinkhorn --compile_solver --products=bfloat16
  python -m dp_sinkhorn_tf.bench sinkhorn --compile_solver --relaxation=1.5   # over-relaxed
  python -m dp_sinkhorn_tf.bench sinkhorn --peer=geomloss [--peer_python=PY]   # side by side
  python -m dp_sinkhorn_tf.bench loop [--rounds 3]   # the training loop, K=1 vs unset
  python -m dp_sinkhorn_tf.bench noise [--steps_timed 60]   # the step, exact vs float32 noise

`train` (train/bench_train.py) times one step; `loop` (train/bench_loop.py) a launch
flagfile's whole loop, one call per step (--steps_per_call=1) against the unset flag (a
call per log interval), interleaved in fresh processes, with the loop's host syncs.

Each configuration runs in a fresh subprocess so that `peak_mb` (the child's peak resident
set size, TensorFlow's own ~0.5 GB included) belongs to that configuration alone. `ms` is the
median of the timed runs after one warm-up call, each run computing the semi-debiased loss
and its gradient w.r.t. the generated points.

The floor (`floor_ms`, and `x_floor` = ms / floor_ms): the products no exact solver of the
semi-debiased loss and its gradient can avoid, timed in the same process on the same data —
the two cross terms ⟨X[0:n], Y⟩ [n×n] and ⟨X[0:n], X[n′:n+n′]⟩ [n×n′] of the cost matrices
and the two plan products P·Y, P′·X[n′:] back to [n, d], i.e. four n×n×d float32 matmuls
(median after a warm-up). An l1l2 cost adds elementwise n·n′·d work above this floor. The
self term's gradient also needs P′ᵀ·X[0:n] for its rows X[n′:n+n′] (they are generated
points too), a fifth product of the same size: so 1.25× this floor is the least any exact
float32 path reaches, before a single Sinkhorn iteration.

Data (reproducible): rng = numpy.random.default_rng(0); X = rng.uniform(−1, 1, (n+n′, d)),
Y = rng.uniform(−1, 1, (n, d)) as float32; then the last 10 columns of X and of Y are
replaced by 15·one_hot(rng.integers(0, 10, size)) (X first, then Y); p = 0.4.
"""

import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Optional, Tuple

from absl import flags

from dp_sinkhorn_tf import cli
from dp_sinkhorn_tf.models import generator_options
from dp_sinkhorn_tf.transport import options as transport_options

SINKHORN_CONFIGS = {
    # name: (n, d, cost, λ)
    "mnist_l1l2_n50": (50, 794, "l1l2", 0.05),
    "celeba_l2_n200": (200, 3082, "l2", 50.0),
    "cifar_l2_n1000": (1000, 3082, "l2", 50.0),
    "cifar_l2_n2000": (2000, 3082, "l2", 50.0),
    "cifar_l1l2_n2000": (2000, 3082, "l1l2", 0.05),
}
SINKHORN_TARGETS = {
    "mnist_l1l2_n50": "ms <= 40",
    "celeba_l2_n200": "ms <= 21",
    "cifar_l2_n1000": "ms <= 300",
    "cifar_l2_n2000": "ms <= 1000",
    "cifar_l1l2_n2000": "peak_mb <= 1536",
}
P_EXTRA = 0.4
NUM_CLASSES = 10
ALPHA_C = 15.0


def benchmark_data(n: int, d: int, p: float = P_EXTRA):
  """The issue's reproducible problem: (X [n+n′, d], Y [n, d]) float32."""
  import numpy as np

  rng = np.random.default_rng(0)
  n_fake = n + transport_options.num_extra(n, p)
  x = rng.uniform(-1, 1, (n_fake, d)).astype(np.float32)
  y = rng.uniform(-1, 1, (n, d)).astype(np.float32)
  for arr in (x, y):
    labels = rng.integers(0, NUM_CLASSES, arr.shape[0])
    arr[:, -NUM_CLASSES:] = ALPHA_C * np.eye(NUM_CLASSES, dtype=np.float32)[labels]
  return x, y


def product_floor_ms(x, y, n: int, repeats: int) -> float:
  """Median ms of the four unavoidable n×n×d float32 products (module docstring)."""
  import tensorflow as tf

  x0, x1 = x[:n], x[x.shape[0] - n:]

  @tf.function
  def products(x0, x1, y):
    plan_y = tf.nn.softmax(tf.matmul(x0, y, transpose_b=True))   # cost cross term + a plan
    plan_x = tf.nn.softmax(tf.matmul(x0, x1, transpose_b=True))
    return tf.matmul(plan_y, y) + tf.matmul(plan_x, x1)           # the two plan products

  products(x0, x1, y).numpy()  # warm-up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    products(x0, x1, y).numpy()
    times.append(1000 * (time.perf_counter() - start))
  return statistics.median(times)


PEERS = ("none", "geomloss")
# From the TF-free option tables, so that parsing the flags imports no TensorFlow.
PRECISIONS = generator_options.PRECISIONS
PRODUCTS = transport_options.PRODUCTS
# geomloss cannot hold the l1l2 cost's n × m × d tensor at n = 2000 (out of memory, 24 GB).
PEER_SKIP = {"cifar_l1l2_n2000"}


def run_geomloss_config(name: str, repeats: int) -> dict:
  """The same loss and gradient with geomloss 0.3.1 (torch CPU, 2 threads, tensorized): for
  l2, geomloss's p=2 cost is ‖x−y‖²/2, so blur = √(λ/2) and ε-scaling 0.5 give this
  project's ‖x−y‖² problem at λ up to the factor 2 of the value; for l1l2 the same
  cost is passed as a function, at scaling 0.9."""
  import torch
  from geomloss import SamplesLoss

  torch.set_num_threads(2)
  n, d, cost_name, lam = SINKHORN_CONFIGS[name]
  x, y = benchmark_data(n, d)
  if cost_name == "l2":
    loss_fn = SamplesLoss("sinkhorn", p=2, blur=(lam / 2) ** 0.5, scaling=0.5, debias=False,
                          backend="tensorized")
  else:
    def l1l2(a, b):
      diff = a[:, :, None, :] - b[:, None, :, :]
      return (diff ** 2).sum(-1) + 3.0 * diff.abs().sum(-1)
    loss_fn = SamplesLoss("sinkhorn", p=1, blur=lam, scaling=0.9, debias=False,
                          backend="tensorized", cost=l1l2)
  fake, real = torch.tensor(x, requires_grad=True), torch.tensor(y)
  extra = x.shape[0] - n

  def step():
    fake.grad = None
    loss = 2 * loss_fn(fake[:n], real) - loss_fn(fake[:n], fake[extra:extra + n])
    loss.backward()
    return float(loss)

  step()  # warm-up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    loss = step()
    times.append(1000 * (time.perf_counter() - start))
  return {"config": name, "ms": round(statistics.median(times), 2), "loss": loss,
          "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def run_sinkhorn_config(name: str, repeats: int, jit: bool, products: str = "float32",
                        compile_solver: bool = False, relaxation: float = 1.0) -> dict:
  """Times loss + gradient for one configuration in this process."""
  import numpy as np
  import tensorflow as tf

  from dp_sinkhorn_tf.transport import costs, sinkhorn

  n, d, cost_name, lam = SINKHORN_CONFIGS[name]
  x, y = benchmark_data(n, d)
  # λ = 0.05 sits 4–5 orders of magnitude below the l1l2 costs; these configs anneal at
  # scaling 0.9, as the launch flagfiles do (with each level solved to anneal_threshold,
  # 0.5 converges too: docs/benchmarks.md, "The solve at λ = 0.05").
  config = sinkhorn.SinkhornConfig(epsilon=lam, scaling=0.9 if cost_name == "l1l2" else 0.5,
                                   compile_solver=compile_solver, relaxation=relaxation)
  cost = costs.make_cost(cost_name, l1_weight=3.0, products=products)
  fn = sinkhorn.loss_and_gradient_fn(cost, config,
                                     num_primary=n, dim=d, jit_compile=jit)
  x, y, w = tf.constant(x), tf.constant(y), tf.ones([n], tf.float32)
  loss, grad, info = fn(x, y, w)  # warm-up: tracing (and XLA compilation)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    loss, grad, info = fn(x, y, w)
    _ = grad.numpy()
    times.append(1000 * (time.perf_counter() - start))
  peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  ms = statistics.median(times)
  floor = product_floor_ms(x, y, n, max(repeats, 5))
  return {
      "config": name, "ms": round(ms, 2), "floor_ms": round(floor, 2),
      "x_floor": round(ms / floor, 2), "peak_mb": round(peak_mb, 1),
      "loss": float(loss), "iterations": int(info.iterations),
      "marginal_error": float(info.marginal_error), "grad_finite": bool(np.isfinite(grad).all()),
      "jit": jit, "compile_solver": compile_solver, "products": products,
      "relaxation": relaxation, "repeats": repeats, "target": SINKHORN_TARGETS[name],
  }


def _child(argv) -> int:
  if argv[0] == "noise":
    from dp_sinkhorn_tf.train import bench_train
    print("RESULT " + json.dumps(bench_train.noise_compare(argv[1], int(argv[2]))), flush=True)
    return 0
  if argv[0] == "loop":
    from dp_sinkhorn_tf.train import bench_loop
    steps_per_call = None if argv[2] == "unset" else int(argv[2])
    steps = int(argv[3]) if len(argv) > 3 and argv[3] else None
    print("RESULT " + json.dumps(bench_loop.run(argv[1], steps_per_call, steps)), flush=True)
    return 0
  kind, name, repeats, jit = argv[0], argv[1], int(argv[2]), argv[3] == "1"
  strategy, devices = argv[4], (int(argv[5]) if argv[5] != "0" else None)
  precision = argv[6] if argv[6] != "flagfile" else None
  products, compile_solver, relaxation = argv[7], argv[8] == "1", float(argv[9])
  if kind == "sinkhorn":
    result = run_sinkhorn_config(name, repeats, jit, products, compile_solver, relaxation)
  elif kind == "geomloss":
    result = run_geomloss_config(name, repeats)
  else:
    from dp_sinkhorn_tf.train import bench_train
    result = bench_train.run(name, repeats, strategy, devices, precision)
  print("RESULT " + json.dumps(result), flush=True)
  return 0


def _run_in_child(kind: str, name: str, repeats: int, jit: bool, strategy: str = "default",
                  num_devices: Optional[int] = None, python: Optional[str] = None,
                  precision: str = "flagfile", products: str = "float32",
                  compile_solver: bool = False, relaxation: float = 1.0) -> dict:
  return _child_result(name, [kind, name, str(repeats), "1" if jit else "0", strategy,
                              str(num_devices or 0), precision, products,
                              "1" if compile_solver else "0", repr(relaxation)], python)


def _child_result(name: str, args, python: Optional[str] = None) -> dict:
  """The RESULT line of `bench _child ARGS` in a fresh process (or an error entry)."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  if python is not None:  # another interpreter (the peer's): it imports this package's file
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
  proc = subprocess.run([python or sys.executable, "-m", "dp_sinkhorn_tf.bench", "_child",
                         *args], capture_output=True, text=True, env=env)
  for line in proc.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
  return {"config": name, "error": f"exit {proc.returncode}: {tail}"}


FLAGS = flags.FlagValues()  # private registry (cli): importable beside the training flags
flags.DEFINE_string("only", "", "Comma-separated config names (default: all of the suite).",
                    flag_values=FLAGS)
flags.DEFINE_integer("repeats", 5, "Timed repeats per config (the median is reported).",
                     lower_bound=1, flag_values=FLAGS)
flags.DEFINE_bool("jit", False, "Compile the Sinkhorn loss with XLA.", flag_values=FLAGS)
flags.DEFINE_bool("compile_solver", False, "sinkhorn suite: compile only the potential "
                  "iterations with XLA (SinkhornConfig.compile_solver); the cost matrices and "
                  "gradient products stay with TensorFlow's matmuls.", flag_values=FLAGS)
flags.DEFINE_enum("products", "float32", list(PRODUCTS), "sinkhorn suite: format of "
                  "the cost matrices' <x, y> products (costs.inner_products).",
                  flag_values=FLAGS)
flags.DEFINE_float("relaxation", 1.0, "sinkhorn suite: over-relaxation ω in [1, 2) of the "
                   "updates at λ (SinkhornConfig.relaxation).", lower_bound=1.0,
                   upper_bound=1.999, flag_values=FLAGS)
flags.DEFINE_enum("strategy", "default", ["default", "mirrored"], "train suite: the step "
                  "under this tf.distribute strategy.", flag_values=FLAGS)
flags.DEFINE_enum("peer", "none", list(PEERS), "sinkhorn suite: also time this library "
                  "on the same data, interleaved (ours, peer, ours, peer, …, --peer_rounds "
                  "each), and print both medians and the ratio in one line.", flag_values=FLAGS)
flags.DEFINE_integer("rounds", 3, "Interleaved rounds (fresh processes) with --peer, "
                     "--precision=compare and the loop suite.", lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_integer("steps_timed", 60, "noise suite: timed steps of each variant (exact and "
                     "float32 noise, interleaved in one process).", lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_integer("loop_steps", None, "loop suite: steps of each loop (default: the "
                     "config's, `train/bench_loop.CONFIGS`).", lower_bound=200,
                     flag_values=FLAGS)
flags.DEFINE_enum("precision", "flagfile", ["flagfile", *PRECISIONS, "compare"],
                  "train suite: the generator's policy (flagfile: the flagfile's --precision); "
                  "compare: float32 and --compare_with interleaved, both medians and the "
                  "speed-up in one line.", flag_values=FLAGS)
flags.DEFINE_enum("compare_with", "mixed_bfloat16", [p for p in PRECISIONS if p != "float32"],
                  "--precision=compare: the policy timed against float32.", flag_values=FLAGS)
flags.DEFINE_string("peer_python", None, "Interpreter that has the peer installed (default: "
                    "this one; e.g. a venv with torch + geomloss).", flag_values=FLAGS)
flags.DEFINE_integer("num_devices", None, "train suite, --strategy=mirrored: devices (logical "
                     "CPUs here).", lower_bound=1, flag_values=FLAGS)
SUITES = ("sinkhorn", "train", "loop", "noise", "all")


@dataclasses.dataclass(frozen=True)
class BenchConfig:
  """One `bench` invocation: the suite and every flag under its own name (`only` split into
  config names). absl has checked each flag's own range; `run` checks `only` against the
  suite's configs."""

  suite: str
  only: Tuple[str, ...]
  repeats: int
  jit: bool
  compile_solver: bool
  products: str
  relaxation: float
  strategy: str
  peer: str
  rounds: int
  steps_timed: int
  loop_steps: Optional[int]
  precision: str
  compare_with: str
  peer_python: Optional[str]
  num_devices: Optional[int]


def config_from_flags(f, suite: str) -> BenchConfig:
  """The parsed flags `f` and the suite as a BenchConfig."""
  values = {field.name: getattr(f, field.name) for field in dataclasses.fields(BenchConfig)
            if field.name not in ("suite", "only")}
  return BenchConfig(suite=suite, only=tuple(s for s in f.only.split(",") if s), **values)


def run(cfg: BenchConfig) -> int:
  jobs = []
  if cfg.suite in ("sinkhorn", "all"):
    jobs += [("sinkhorn", name) for name in SINKHORN_CONFIGS]
  if cfg.suite in ("train", "all"):
    from dp_sinkhorn_tf.train import bench_train
    jobs += [("train", name) for name in bench_train.CONFIGS]
  if cfg.suite in ("loop", "all"):
    from dp_sinkhorn_tf.train import bench_loop
    jobs += [("loop", name) for name in bench_loop.CONFIGS]
  if cfg.suite in ("noise", "all"):
    from dp_sinkhorn_tf.train import bench_train
    jobs += [("noise", name) for name in bench_train.NOISE_CONFIGS]
  unknown = set(cfg.only) - {name for _, name in jobs}
  if unknown:
    raise ValueError(f"--only: unknown config(s) {sorted(unknown)} for suite {cfg.suite}")
  failed = False
  for kind, name in jobs:
    if cfg.only and name not in cfg.only:
      continue
    if kind == "sinkhorn" and cfg.peer != "none":
      if name in PEER_SKIP:
        continue
      result = _interleaved(name, cfg)
    elif kind == "train" and cfg.precision == "compare":
      result = _precision_compare(name, cfg, cfg.compare_with)
    elif kind == "loop":
      result = _loop_compare(name, cfg.rounds, cfg.loop_steps)
    elif kind == "noise":
      result = _child_result(name, ["noise", name, str(cfg.steps_timed)])
    else:
      result = _run_in_child(kind, name, cfg.repeats, cfg.jit, cfg.strategy, cfg.num_devices,
                             precision=cfg.precision, products=cfg.products,
                             compile_solver=cfg.compile_solver, relaxation=cfg.relaxation)
    failed |= "error" in result
    print(json.dumps(result), flush=True)
  return 1 if failed else 0


def _interleaved(name: str, cfg: BenchConfig) -> dict:
  """ours, peer, ours, peer, … (cfg.rounds each, fresh processes): medians and ratio."""
  ours, peer = [], []
  for _ in range(cfg.rounds):
    ours.append(_run_in_child("sinkhorn", name, cfg.repeats, cfg.jit, products=cfg.products,
                              compile_solver=cfg.compile_solver, relaxation=cfg.relaxation))
    peer.append(_run_in_child(cfg.peer, name, cfg.repeats, False, python=cfg.peer_python))
  for result in ours + peer:
    if "error" in result:
      return {"config": name, "peer": cfg.peer, "error": result["error"]}
  ms = statistics.median(r["ms"] for r in ours)
  peer_ms = statistics.median(r["ms"] for r in peer)
  return {"config": name, "ms": ms, "peer": cfg.peer, "peer_ms": peer_ms,
          "ratio": round(ms / peer_ms, 3),
          "floor_ms": statistics.median(r["floor_ms"] for r in ours),
          "ms_rounds": [r["ms"] for r in ours], "peer_ms_rounds": [r["ms"] for r in peer],
          "loss": ours[0]["loss"], "peer_loss": peer[0]["loss"],
          "iterations": ours[0]["iterations"], "marginal_error": ours[0]["marginal_error"],
          "jit": cfg.jit,
          "compile_solver": cfg.compile_solver, "products": cfg.products,
          "relaxation": cfg.relaxation, "repeats": cfg.repeats, "target": "ratio <= 0.5"}


def _precision_compare(name: str, cfg: BenchConfig, low: str) -> dict:
  """The train step in float32 and under `low`, alternating fresh processes cfg.rounds times:
  medians of the step and its generator part, and the speed-ups (float32 / low)."""
  runs = {"float32": [], low: []}
  for _ in range(cfg.rounds):
    for precision in runs:
      runs[precision].append(_run_in_child("train", name, cfg.repeats, cfg.jit, cfg.strategy,
                                           cfg.num_devices, precision=precision))
  for result in runs["float32"] + runs[low]:
    if "error" in result:
      return {"config": name, "precision": "compare", "error": result["error"]}

  def median(precision, key):
    return round(statistics.median(r[key] for r in runs[precision]), 2)

  out = {"config": name, "flagfile": runs["float32"][0]["flagfile"], "low": low}
  for key in ("step_ms", "generator_ms", "sinkhorn_ms"):
    out[key] = median("float32", key)
    out[f"{key}_low"] = median(low, key)
  out["step_speedup"] = round(out["step_ms"] / out["step_ms_low"], 2)
  out["generator_speedup"] = round(out["generator_ms"] / out["generator_ms_low"], 2)
  out["step_ms_rounds"] = [r["step_ms"] for r in runs["float32"]]
  out["step_ms_low_rounds"] = [r["step_ms"] for r in runs[low]]
  out.update(repeats=cfg.repeats, rounds=cfg.rounds)
  return out


def _loop_compare(name: str, rounds: int, steps: Optional[int]) -> dict:
  """The whole training loop with one call per step (--steps_per_call=1) and with the flag
  unset (a call per log interval), alternating fresh processes `rounds` times: the medians
  of ms/step, the speed-up (K=1 / unset) and each variant's host syncs between log points."""
  from dp_sinkhorn_tf.train import bench_loop

  runs = {"1": [], "unset": []}
  for _ in range(rounds):
    for k in runs:
      runs[k].append(_child_result(name, ["loop", name, k, str(steps or "")]))
  for result in runs["1"] + runs["unset"]:
    if "error" in result:
      return {"config": name, "error": result["error"]}
  first = runs["unset"][0]
  ms = {k: round(statistics.median(r["ms_per_step"] for r in rs), 3) for k, rs in runs.items()}
  cpu = {k: round(statistics.median(r["cpu_ms_per_step"] for r in rs), 3)
         for k, rs in runs.items()}
  return {
      "config": name, "flagfile": first["flagfile"], "data": first["data"],
      "steps": first["steps"], "log_every": first["log_every"],
      "ms_per_step_k1": ms["1"], "ms_per_step": ms["unset"],
      "speedup": round(ms["1"] / ms["unset"], 2),
      "cpu_ms_per_step_k1": cpu["1"], "cpu_ms_per_step": cpu["unset"],
      "cpu_speedup": round(cpu["1"] / cpu["unset"], 2),
      "ms_per_step_k1_rounds": [r["ms_per_step"] for r in runs["1"]],
      "ms_per_step_rounds": [r["ms_per_step"] for r in runs["unset"]],
      "calls_k1": runs["1"][0]["calls"], "calls": first["calls"], "reads": first["reads"],
      "syncs_per_step_between_log_points_k1":
          runs["1"][0]["syncs_per_step_between_log_points"],
      "syncs_per_step_between_log_points": first["syncs_per_step_between_log_points"],
      "rounds": rounds, "target": bench_loop.TARGETS[name],
  }


def main(argv=None) -> int:
  """python -m dp_sinkhorn_tf.bench SUITE [--flags]: SUITE is one of sinkhorn, train, loop,
  noise, all."""
  argv = list(sys.argv if argv is None else argv)
  if len(argv) > 1 and argv[1] == "_child":
    return _child(argv[2:])
  suite = argv[1] if len(argv) > 1 and not argv[1].startswith("-") else None
  if suite is not None and suite not in SUITES:
    print(f"error: suite {suite!r}: expected one of {', '.join(SUITES)}", file=sys.stderr)
    return 2
  rest = [argv[0]] + [a for a in argv[1:] if a != suite]
  if suite is None and not any(a in ("--help", "-h", "--helpfull") for a in rest):
    print(f"error: expected a suite first: python -m dp_sinkhorn_tf.bench "
          f"{{{','.join(SUITES)}}} [--flags]", file=sys.stderr)
    return 2
  return cli.main_of(lambda f: run(config_from_flags(f, suite)), FLAGS,
                     "dp_sinkhorn_tf.bench")(rest)


if __name__ == "__main__":
  sys.exit(main())

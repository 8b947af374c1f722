"""Training-loop benchmark: ms/step of a launch flagfile's whole loop, and its host round-trips.

  python -m dp_sinkhorn_tf.bench loop [--rounds 3] [--only digits_loop]

One child process runs `train_lib.train` on the flagfile's configuration in a temporary
workdir: its data (synthetic data of the same image shape and size when they are not on
this machine), its batch size, q and σ (the plan of the flagfile's own step count or ε),
cut to `steps` steps with that σ kept (digits: 3,000, as issue 37 measured the loop; a
Poisson batch above 16 records, a few per thousand steps, compiles the Sinkhorn solver for a
new bucket once, which a short run would spread over few steps), and
--log_every=`log_every` (digits' own; Fashion-MNIST CPU logs every 1000, which would give
its calls 10× more steps). ms_per_step is the time
from the first log point to the last divided by the steps between them: the loop as a run
sees it (calls, reads, logging) without start-up, tracing and the final checkpoint.
cpu_ms_per_step is the same for the process's CPU time (every thread): on a machine that
other jobs load, the wall clock measures them too, the CPU time mostly this run's work.

The loop's host round-trips (`train_lib.TrainResult`): `calls` of the compiled steps and
`reads` of their state (at log, sample and checkpoint points only); a call that returns
between those points is a host sync the device waited for, so
syncs_per_step_between_log_points = (calls − reads) / steps (target 0).
"""

import dataclasses
import os
import tempfile
import time
from typing import Optional

# name: (shipped flagfile, steps, log_every, synthetic (N, image shape) if the data are absent)
CONFIGS = {
    "digits_loop": ("digits.flags", 3000, 100, (1438, (8, 8, 1))),
    "fashion_mnist_cpu_loop": ("fashion_mnist_cpu.flags", 400, 100, (60000, (28, 28, 1))),
}
# Issue 37: the loop on the device makes digits ≥ 1.3× faster and no configuration slower,
# with no host sync between log points.
TARGETS = {
    "digits_loop": "speedup >= 1.3, syncs_per_step_between_log_points == 0",
    "fashion_mnist_cpu_loop": "speedup >= 1.0, syncs_per_step_between_log_points == 0",
}
# Where the Debian package dataset-fashion-mnist puts the IDX files (`datasets.load_idx`).
FASHION_IDX_DIR = "/usr/share/datasets/fashion-mnist"


def _data(cfg, synthetic):
  """(images, labels, num_classes, pixel_max, source) of cfg.data, or synthetic ones."""
  import numpy as np

  from dp_sinkhorn_tf.data import datasets

  data = cfg.data
  if data.dataset == "fashion_mnist" and data.idx_dir is None and os.path.isdir(FASHION_IDX_DIR):
    data = dataclasses.replace(data, idx_dir=FASHION_IDX_DIR)
  try:
    dataset = datasets.load(data)
    return (dataset.pixels, dataset.labels, dataset.num_classes, dataset.pixel_max,
            dataset.name)
  except (datasets.DataNotFoundError, OSError, ValueError):
    size, shape = synthetic
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (size,) + shape).astype(np.float32)
    return images, rng.integers(0, 10, size).astype(np.int32), 10, None, "synthetic"


def run(name: str, steps_per_call: Optional[int], steps: Optional[int] = None) -> dict:
  """One timed run of config `name` with --steps_per_call=steps_per_call (None: unset), of
  `steps` steps (None: the config's)."""
  from dp_sinkhorn_tf.io import flagfiles
  from dp_sinkhorn_tf.privacy import accounting
  from dp_sinkhorn_tf.train import flagfile as flagfile_lib
  from dp_sinkhorn_tf.train import train_lib

  flagfile, default_steps, log_every, synthetic = CONFIGS[name]
  steps = steps or default_steps
  cfg, _ = flagfile_lib.parse_flags_file(flagfiles.find_flagfile(flagfile))
  images, labels, num_classes, pixel_max, source = _data(cfg, synthetic)
  sigma = accounting.plan_privacy(cfg, len(images)).noise_multiplier  # the flagfile's σ
  with tempfile.TemporaryDirectory(prefix="dp_sinkhorn_bench_loop_") as workdir:
    cfg = dataclasses.replace(
        cfg, steps=steps,
        privacy=dataclasses.replace(cfg.privacy, noise_multiplier=sigma),
        run=dataclasses.replace(cfg.run, workdir=workdir, log_every=log_every, export=False,
                                insecure_fixed_key=True, steps_per_call=steps_per_call))
    plan = accounting.plan_privacy(cfg, len(images))
    logged = {}
    result = train_lib.train(cfg, images, labels, num_classes, plan, pixel_max=pixel_max,
                             on_log=lambda step, total, logs: logged.setdefault(
                                 step, (time.perf_counter(), time.process_time())))
  first, last = min(logged), max(logged)

  def per_step(clock):
    return round(1000 * (logged[last][clock] - logged[first][clock]) / (last - first), 3)

  return {
      "config": name, "flagfile": flagfile, "data": source,
      "steps_per_call": steps_per_call, "steps": result.steps_run, "log_every": log_every,
      "ms_per_step": per_step(0), "cpu_ms_per_step": per_step(1),
      "calls": result.calls, "reads": result.reads,
      "syncs_per_step_between_log_points": round((result.calls - result.reads) /
                                                 result.steps_run, 4),
      "noise_multiplier": plan.noise_multiplier, "sample_rate": plan.sample_rate,
  }

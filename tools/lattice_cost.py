"""What the exact lattice noise costs at each shipped flagfile: prints, per flagfile, the plan
(q, σ, T, ε charged), the lattice (γ, σ_eff, noise inflation) and ε at σ_eff, the multiplier
the noise really achieves (≤ the charged ε). Run: python tools/lattice_cost.py"""

import glob
import math
import os
import sys

from absl import flags

from dp_sinkhorn_tf import cli, main
from dp_sinkhorn_tf.privacy import accounting, lattice

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {"digits": (1438, (8, 8, 1)), "mnist": (60000, (28, 28, 1)),
         "fashion_mnist": (60000, (28, 28, 1)), "cifar10": (50000, (32, 32, 3)),
         "celeb_a": (162770, (32, 32, 3))}


def main_(argv):
  del argv
  for path in sorted(glob.glob(os.path.join(ROOT, "launch", "*.flags"))):
    with open(path) as fh:
      if path.endswith("common.flags") or "dp_sinkhorn_tf.merf" in fh.read(1500):
        continue  # merf's flagfiles hold merf's flags; its release is priced in merf_lib
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["main", *cli.expand_flagfiles([f"--flagfile={path}"])])
    cfg = main.config_from_flags(flags.FLAGS)
    n_records, shape = SIZES[cfg.data.dataset]
    plan = accounting.plan_privacy(cfg, n_records)
    entries = cfg.num_primary * math.prod(shape)
    p = lattice.lattice_params(cfg.privacy.l2_norm_clip, plan.noise_multiplier, entries)
    eff = accounting.compute_epsilon(plan.sample_rate, p.effective_noise_multiplier,
                                     plan.steps, plan.delta, plan.accountant)
    print(f"{os.path.basename(path):24s} q={plan.sample_rate:.4g} σ={plan.noise_multiplier:.4f}"
          f" T={plan.steps} ε charged={plan.epsilon:.6f} | N={entries} γ=2^{p.log2_gamma} "
          f"σ_eff={p.effective_noise_multiplier:.8f} (×{p.effective_noise_multiplier / plan.noise_multiplier:.7f}) "
          f"noise std ×{p.noise_stddev / (2 * plan.noise_multiplier * cfg.privacy.l2_norm_clip):.7f} "
          f"| ε at σ_eff={eff:.6f} ({100 * (eff / plan.epsilon - 1):+.4f} %)")
  flags.FLAGS.unparse_flags()
  return 0


if __name__ == "__main__":
  from absl import app
  sys.exit(app.run(main_))

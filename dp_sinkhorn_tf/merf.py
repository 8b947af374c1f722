r"""DP-MERF alone: one private release of class-conditional random-feature sums, then a
generator trained against it for as long as wanted (no further privacy cost).

  python -m dp_sinkhorn_tf.merf --dataset=fashion_mnist \
      --idx_dir=/usr/share/datasets/fashion-mnist --epsilon=10 --delta=1e-5 \
      --workdir=runs/merf_fashion
  python -m dp_sinkhorn_tf.evaluate --model=runs/merf_fashion/export/generator

Writes <workdir>/privacy_key (SECRET, 0600: never publish), release.npz (the DP release),
release_check.json (PRIVATE, 0600: the keyed data fingerprint and the release's flags, which
a re-run checks before it reuses release.npz), privacy.json (ε of the one Gaussian release)
and export/generator/<version>/ (SavedModel). The flags: `train.merf_config`; the mechanism
and its sensitivity: `privacy.mean_embedding`; the run: `train.merf_lib`.
Exit status 0, 2 for a bad flag (one `error:` line), 1 when the work fails.
"""

import sys
import time

from absl import flags

from dp_sinkhorn_tf import cli
from dp_sinkhorn_tf.io import flagdefs
from dp_sinkhorn_tf.train import merf_config

FLAGS = flags.FlagValues()  # private registry (cli)
# One flag per field of merf_config.RunConfig, as the fields declare them (config.option).
flagdefs.define_all(merf_config.flag_specs(), FLAGS, __name__)


def config_from_flags(f) -> merf_config.RunConfig:
  """The frozen `merf_config.RunConfig` of the flags (ValueError naming a bad one)."""
  return merf_config.from_flags(lambda name: getattr(f, name))


def run(cfg) -> int:
  from dp_sinkhorn_tf.train import merf_lib

  started = time.monotonic()

  def progress(t: int, loss: float) -> None:
    if (t + 1) % 100 == 0 or t == 0:
      print(f"step {t + 1}/{cfg.train.steps} loss {loss:.6g} "
            f"({time.monotonic() - started:.0f} s)", flush=True)

  print(summary(merf_lib.run(cfg, progress), time.monotonic() - started))
  return 0


def summary(result: dict, seconds: float) -> str:
  """The last two lines a run prints: its ε and σ_eff, then the export and the time."""
  p = result["privacy"]
  return (f"released once: ε = {p['epsilon']:.4f} (δ = {p['delta']:g}, RDP), σ_eff = "
          f"{p['effective_noise_multiplier']:.4f}; final loss {result['final_loss']:.6g}\n"
          f"{result['export']} ({seconds:.0f} s in all)")


main = cli.main_of(lambda f: run(config_from_flags(f)), FLAGS, "dp_sinkhorn_tf.merf")

if __name__ == "__main__":
  sys.exit(main())

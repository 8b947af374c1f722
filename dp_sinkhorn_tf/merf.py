r"""DP-MERF alone: one private release of class-conditional random-feature sums, then a
generator trained against it for as long as wanted (no further privacy cost).

  python -m dp_sinkhorn_tf.merf --dataset=fashion_mnist \
      --idx_dir=/usr/share/datasets/fashion-mnist --epsilon=10 --delta=1e-5 \
      --workdir=runs/merf_fashion
  python -m dp_sinkhorn_tf.evaluate --model=runs/merf_fashion/export/generator

Writes <workdir>/privacy_key (SECRET, 0600: never publish), release.npz (the DP release),
privacy.json (ε of the one Gaussian release) and export/generator/<version>/ (SavedModel).
The mechanism and its sensitivity: `privacy.mean_embedding`; the run: `train.merf_lib`.
Exit status 0, 2 for a bad flag (one `error:` line), 1 when the work fails.
"""

import sys
import time

from absl import flags

from dp_sinkhorn_tf import cli

FLAGS = flags.FlagValues()  # private registry (cli)
cli.define_shared("workdir", "Run directory (created).", flag_values=FLAGS)
flags.DEFINE_string("dataset", "fashion_mnist", "Built-in private set (its training split).",
                    flag_values=FLAGS)
flags.DEFINE_string("idx_dir", None, "Folder with MNIST / Fashion-MNIST IDX files.",
                    flag_values=FLAGS)
flags.DEFINE_string("data_dir", None, "TFDS data directory.", flag_values=FLAGS)
flags.DEFINE_float("epsilon", 10.0, "Target ε of the one release.", flag_values=FLAGS)
flags.DEFINE_float("delta", 1e-5, "δ.", flag_values=FLAGS)
flags.DEFINE_integer("num_frequencies", 5000, "Random Fourier frequencies F (2F features).",
                     flag_values=FLAGS)
flags.DEFINE_float("length_scale", 22.5, "Gaussian kernel length scale ℓ (pixels in [−1, 1]).",
                   flag_values=FLAGS)
flags.DEFINE_float("count_weight", 0.1, "Weight b of the class-count entry of each record's "
                   "embedding (the features get √(1 − b²)).", flag_values=FLAGS)
cli.define_shared("seed", "Public seed: frequencies, initialisation, latents, labels.", 0,
                  flag_values=FLAGS)
flags.DEFINE_boolean("insecure_fixed_key", False, "Derive the key from --seed (tests only: NO "
                     "privacy).", flag_values=FLAGS)
flags.DEFINE_string("architecture", "dcgan", "Generator: dcgan | biggan | mlp.",
                    flag_values=FLAGS)
flags.DEFINE_integer("hidden", 32, "Generator width.", flag_values=FLAGS)
flags.DEFINE_integer("latent_dim", 16, "Latent dimension.", flag_values=FLAGS)
flags.DEFINE_integer("embed_dim", 8, "Class embedding dimension.", flag_values=FLAGS)
flags.DEFINE_string("output", "tanh", "Output head: tanh | clip.", flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 500, "Generated batch per step.", flag_values=FLAGS)
flags.DEFINE_integer("steps", 3000, "Training steps (free: post-processing).",
                     flag_values=FLAGS)
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.", flag_values=FLAGS)
flags.DEFINE_float("lr_decay", 0.9, "Learning-rate factor every --decay_every steps.",
                   flag_values=FLAGS)
flags.DEFINE_integer("decay_every", 300, "Steps between learning-rate decays.",
                     flag_values=FLAGS)


def config_from_flags(f):
  """The frozen `merf_lib.RunConfig` of the flags (ValueError naming a bad one)."""
  from dp_sinkhorn_tf.train import merf_lib

  cli.require(bool(f.workdir), "workdir", "a run directory", f.workdir)
  release = merf_lib.ReleaseConfig(
      epsilon=f.epsilon, delta=f.delta, num_frequencies=f.num_frequencies,
      length_scale=f.length_scale, count_weight=f.count_weight, seed=f.seed)
  train = merf_lib.MerfTrainConfig(
      architecture=f.architecture, latent_dim=f.latent_dim, embed_dim=f.embed_dim,
      hidden=f.hidden, output=f.output, batch_size=f.batch_size, steps=f.steps,
      learning_rate=f.learning_rate, lr_decay=f.lr_decay, decay_every=f.decay_every,
      seed=f.seed)
  return merf_lib.RunConfig(workdir=f.workdir, dataset=f.dataset, idx_dir=f.idx_dir,
                            data_dir=f.data_dir, insecure_fixed_key=f.insecure_fixed_key,
                            release=release, train=train)


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

"""The training flags of `dp_sinkhorn_tf.main` (and `dp_sinkhorn_tf.audit`) and the frozen
config they become.

Importing this module defines the flags on absl's global FLAGS; `config_from_flags` turns
parsed values (of FLAGS or of a FlagValues holding copies, as `export` reads flags.txt) into a
`config.TrainConfig` at once, checking what the config itself cannot.
"""

import math

from absl import flags

from dp_sinkhorn_tf.data import datasets
from dp_sinkhorn_tf.data import spec as data_spec
from dp_sinkhorn_tf.train import config as config_lib
from dp_sinkhorn_tf.transport import options as transport_options

FLAGS = flags.FLAGS

# Data.
flags.DEFINE_string("dataset", None,
                    f"A built-in private training set: {', '.join(datasets.DATASETS)} (unset "
                    "and no --data: digits). digits ships with scikit-learn; the others come "
                    "from TFDS under --data_dir or, for (fashion_)mnist, from IDX files in "
                    "--idx_dir.")
flags.DEFINE_string("data", None, "Your own private training set (instead of --dataset): "
                    f"{data_spec.SOURCE_HELP}. See docs/own-data.md.")
flags.DEFINE_string("data_dir", None, "TFDS data directory holding the prepared dataset.")
flags.DEFINE_string("idx_dir", None, "Folder with the original MNIST / Fashion-MNIST IDX files "
                    "(gz or raw); overrides TFDS for those datasets.")
flags.DEFINE_string("image_key", None, "--data=tfds:/tfrecord: the image feature (default "
                    "image).")
flags.DEFINE_string("label_key", None, "--data=tfds:/tfrecord: the int label feature (default "
                    "label, optional: without it the data are one class).")
flags.DEFINE_string("image_size", None, "Resize every image (antialiased, centre-cropped to "
                    "the aspect ratio first) to H or HxW pixels; unset: the data's own size, "
                    "which every image must then have.")
flags.DEFINE_integer("channels", None, "Convert every image to 1 (grayscale) or 3 (RGB) "
                     "channels; unset: the data's own (grayscale and colour must not mix).")
flags.DEFINE_string("privacy_unit", "record", "What ε protects: record (one image, the "
                    "default) or group (all images of one --groups id: user-level privacy).")
flags.DEFINE_string("groups", None, "--privacy_unit=group with --data=folder:: a CSV with "
                    "columns file,group (paths relative to the folder), or 'subfolders' (the "
                    "first sub-folder level below the classes names the group). npz: the "
                    "file's `groups` array.")
flags.DEFINE_integer("max_per_group", 1, "--privacy_unit=group: at most this many records of "
                     "a sampled group per step (a keyed random subset when it has more).")
# Model.
flags.DEFINE_enum("architecture", "dcgan", list(config_lib.ARCHITECTURES), "Generator family.")
flags.DEFINE_integer("latent_dim", 16, "Dimension of z ~ U(0,1).")
flags.DEFINE_integer("embed_dim", 8, "Label embedding size.")
flags.DEFINE_integer("hidden", 64, "Generator width (channels of the last block; units per "
                     "layer for --architecture=mlp).")
flags.DEFINE_integer("depth", 1, "Convolution blocks per resolution (hidden layers for "
                     "--architecture=mlp).")
flags.DEFINE_enum("output", "tanh", list(config_lib.OUTPUTS),
                  "Generator output head: tanh (the paper) or clip, a straight-through clip to "
                  "[-1, 1] whose gradient never vanishes (noise cannot freeze saturated pixels).")
flags.DEFINE_enum("precision", "float32", list(config_lib.PRECISIONS),
                  "The generator's Keras mixed-precision policy: mixed_bfloat16 for CPUs with "
                  "AVX-512-BF16 or AMX and TPUs, mixed_float16 (with loss scaling) for GPUs, "
                  "bfloat16_convs (only the convolutions in bfloat16) for such CPUs when "
                  "BatchNorm and activations are a large part of the generator. "
                  "Weights, the Sinkhorn loss, the clip, the noise and the accountant stay "
                  "float32; export, sample and evaluate rebuild the generator in float32.")
# Loss.
flags.DEFINE_enum("cost", "l1l2", list(config_lib.COSTS),
                  "Ground cost: l2 = ‖x−y‖², l1l2 = ‖x−y‖² + l1_weight·‖x−y‖₁.")
flags.DEFINE_float("l1_weight", 3.0, "The paper's m, weight of the L1 term in l1l2.")
flags.DEFINE_float("debias_fraction", 0.4, "p: n′ = ⌊p·n⌋ extra generated points "
                   "(0 biased, 1 fully debiased).")
flags.DEFINE_float("alpha_c", 15.0, "Weight α_c of the one-hot label block of the features.")
flags.DEFINE_float("sinkhorn_epsilon", 0.05, "Entropic regularisation λ.")
flags.DEFINE_float("sinkhorn_scaling", 0.5, "ε-scaling schedule: ratio between successive "
                   "annealing temperatures, from the cost's scale down to λ (closer to 1 = "
                   "slower, more accurate annealing; use ≈0.9 for λ far below the costs).")
flags.DEFINE_float("sinkhorn_threshold", 1e-3, "Stop once the L1 marginal error is below this.")
flags.DEFINE_integer("sinkhorn_max_iterations", 100, "Most Sinkhorn updates at λ.")
flags.DEFINE_float("sinkhorn_relaxation", 1.0, "Over-relaxation ω in [1, 2) of the updates at "
                   "λ (same fixed point): 1.5 halves the updates of the l2 problems at λ=50 "
                   "(cifar, celeba); 1 (plain Sinkhorn) for the l1l2 problems at λ=0.05, which "
                   "stop at the iteration cap either way.")
flags.DEFINE_bool("class_matching", False,
                  "Weight generated and private points so that the Sinkhorn plan moves mass "
                  "only within a class (mass per class ∝ its generated count, over the classes "
                  "present on both sides); false is the paper's uniform weights.")
flags.DEFINE_enum("sinkhorn_products", "float32", list(config_lib.PRODUCTS),
                  "Format of the ⟨x, y⟩ matmul of the cost matrices: bfloat16 is 2–3x faster "
                  "on CPUs with AVX-512-BF16; the loss stays within 1e-3, its gradient within "
                  "~0.4% at λ=50 (cifar, celeba) but ~11% at λ=0.05. Gradient sums stay float32; "
                  "bfloat16_all rounds them too (centred; +0.1% at λ=50): the whole loss "
                  "on the bfloat16 units.")
flags.DEFINE_bool("sinkhorn_jit", True, "Compile the Sinkhorn loss and its image gradient with "
                  "XLA (real batch padded to power-of-two buckets): 3–15× faster for batches "
                  "up to ~50 on CPU, slower for batches of ~1000.")
# Privacy.
flags.DEFINE_bool("dp", True, "Train privately. --nodp trains the same model without clipping "
                  "or noise (ablations, upper bounds): no privacy guarantee.")
flags.DEFINE_enum("mechanism", "image_grad", list(config_lib.MECHANISMS),
                  "image_grad: clip + noise the gradient w.r.t. generated images (DP-Sinkhorn); "
                  "param_grad: TF Privacy DP-Adam on the parameter gradient (ablation).")
flags.DEFINE_float("l2_norm_clip", 0.5, "C: clip norm of the image gradient (sensitivity 2C).")
flags.DEFINE_float("release_blur", 0.0, "Blur the released (clipped + noised) image gradient "
                   "with a Gaussian of this many pixels before it reaches the generator: "
                   "post-processing at no privacy cost that damps the white noise (std × 0.28 "
                   "at 1 pixel). 0 = off.")
flags.DEFINE_float("public_clip", None, "Clip norm of the released gradient of the generated "
                   "images that meet no private data (rows n: of the self term); unset: "
                   "--l2_norm_clip. Data-independent, so no privacy cost. Their natural "
                   "gradient is 5-6.5x smaller than the private rows' at p=0.4 (measured on "
                   "Fashion-MNIST and the digits), so clipping "
                   "both to C over-weights the self term's repulsion.")
flags.DEFINE_float("noise_multiplier", None, "σ: noise std / sensitivity. Unset with --steps "
                   "set: the smallest σ within --target_epsilon.")
flags.DEFINE_float("target_epsilon", 10.0, "ε of the (ε, δ) guarantee.")
flags.DEFINE_float("delta", 1e-5, "δ of the (ε, δ) guarantee; keep it below 1/N.")
flags.DEFINE_enum("accountant", "rdp", list(config_lib.ACCOUNTANTS),
                  "Accountant that plans the budget: rdp with --dp (the exact lattice noise is "
                  "certified by RDP); privacy.json reports the PLD figure for reference.")
# Optimisation.
flags.DEFINE_enum("optimizer", "adam", list(config_lib.OPTIMIZERS), "Generator optimiser.")
flags.DEFINE_float("learning_rate", 1e-3, "Learning rate.")
flags.DEFINE_float("beta_1", 0.5, "Adam β₁ (momentum with --optimizer=sgd).")
flags.DEFINE_float("beta_2", 0.999, "Adam β₂.")
flags.DEFINE_float("weight_decay", 0.0, "Decoupled weight decay (adamw only).")
flags.DEFINE_enum("lr_schedule", "constant", list(config_lib.LR_SCHEDULES),
                  "constant, or cosine: decay the learning rate as ½(1 + cos(π·t/T)) to 0 "
                  "over the run's T planned steps, so late noisy updates shrink.")
flags.DEFINE_float("ema_decay", 0.0, "Decay of an exponential moving average of the generator's "
                   "weights, used for samples and the export (0 = off). Post-processing of "
                   "the released gradients: no privacy cost.")
flags.DEFINE_integer("batch_size", 50, "B: expected Poisson batch of privacy units (q = B/N; "
                     "records, or groups with --privacy_unit=group, each giving up to "
                     "--max_per_group records); also n unless --fake_batch_size.")
flags.DEFINE_integer("fake_batch_size", None, "n: generated images that meet the private batch "
                     "each step (unset: n = --batch_size, as in the paper). Noise is added to "
                     "an n×d gradient, so a smaller n raises the signal-to-noise ratio.")
flags.DEFINE_integer("steps", None, "Training steps. Unset: as many as the budget allows.")
# Run.
flags.DEFINE_string("workdir", "runs/default", "Run directory (resumed if it holds a run).")
flags.DEFINE_integer("seed", 0, "Public seed of the data-independent randomness: "
                     "initialisation, latents, generated labels. The noise and the Poisson "
                     "batches never depend on it (they come from the run's secret key).")
flags.DEFINE_string("privacy_key_file", None, "A privacy key file (as <workdir>/privacy_key "
                    "of an earlier run) to drive noise and batches instead of a fresh key "
                    "from the OS: reproduces that run exactly. Keep it secret, never reuse it "
                    "on other data. Unset: a new secret key per run.")
flags.DEFINE_bool("insecure_fixed_key", False, "Derive the key from the public --seed: "
                  "reproducible and NOT private (tests, debugging); privacy.json and the "
                  "export say \"private\": false.")
flags.DEFINE_enum("strategy", "default", list(config_lib.STRATEGIES),
                  "tf.distribute strategy: default (one device), mirrored (every GPU of "
                  "this host, or --num_devices logical CPUs) or multi_worker (one process "
                  "per host, cluster in TF_CONFIG, --workdir on a file system all hosts "
                  "share; the chief writes the run directory). The private release is the "
                  "same as on one device: one Poisson sample, one clip of the whole "
                  "released block, one keyed noise draw; replicas split the generated batch.")
flags.DEFINE_integer("num_devices", None, "Devices for --strategy=mirrored (unset: every "
                     "GPU). Without GPUs the CPU is split into this many logical devices "
                     "(tests, overhead benchmarks: no speed-up on one CPU).")
flags.DEFINE_integer("log_every", 10, "Steps between progress / TensorBoard scalars.")
flags.DEFINE_integer("sample_every", 500, "Steps between sample grids.")
flags.DEFINE_integer("checkpoint_every", 200, "Steps between checkpoints (and ledger writes).")
flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints kept.")
flags.DEFINE_integer("steps_per_call", None, "At most this many steps per call of the "
                     "compiled training loop (a tf.while_loop on the device). Unset: every "
                     "step up to the next log, sample or checkpoint point, the only places "
                     "the loop reads the device; a stop signal takes effect at the end of "
                     "a call. 1: a return to Python after every step (slower, same steps).")
flags.DEFINE_bool("export", True, "Export a SavedModel for TF Serving at the end.")
flags.DEFINE_string("model_name", "generator", "Model name in the export layout.")
flags.DEFINE_enum("if_finished", "fail", ["fail", "skip"],
                  "When --workdir's budget is already spent: fail (exit 1) or skip training "
                  "and only report the artefacts.")


def data_config_from_flags(f) -> config_lib.DataConfig:
  """The data flags of `f` as a DataConfig (no --data and no --dataset: digits)."""
  dataset = f.dataset if f.dataset is not None or f.data is not None else "digits"
  return config_lib.DataConfig(
      dataset=dataset, source=f.data, data_dir=f.data_dir, idx_dir=f.idx_dir,
      image_key=f.image_key, label_key=f.label_key,
      image_size=data_spec.parse_image_size(f.image_size), channels=f.channels,
      privacy_unit=f.privacy_unit, groups=f.groups, max_per_group=f.max_per_group)


def config_from_flags(f) -> config_lib.TrainConfig:
  """Builds the frozen run config; raises ValueError naming the bad flag."""
  for name in ("sinkhorn_epsilon", "sinkhorn_scaling", "sinkhorn_threshold",
               "sinkhorn_relaxation"):
    value = getattr(f, name)
    if not math.isfinite(value):
      raise ValueError(f"--{name}={value!r}: expected a finite number")
  try:
    solver = transport_options.SinkhornConfig(
        epsilon=f.sinkhorn_epsilon, scaling=f.sinkhorn_scaling,
        threshold=f.sinkhorn_threshold, max_iterations=f.sinkhorn_max_iterations,
        relaxation=f.sinkhorn_relaxation)
  except ValueError as e:
    # SinkhornConfig's messages start with the field, which is the flag's name after
    # "sinkhorn_" ("relaxation must be in [1, 2), got 2.0" → --sinkhorn_relaxation).
    raise ValueError(f"--sinkhorn_{str(e).split()[0]}: {e}") from None
  return config_lib.TrainConfig(
      batch_size=f.batch_size, steps=f.steps,
      data=data_config_from_flags(f),
      model=config_lib.ModelConfig(f.architecture, f.latent_dim, f.embed_dim, f.hidden, f.depth,
                                   f.output, f.precision),
      loss=config_lib.LossConfig(f.cost, f.l1_weight, f.debias_fraction, f.alpha_c, solver,
                                 f.sinkhorn_jit, f.class_matching, f.sinkhorn_products),
      privacy=config_lib.PrivacyConfig(f.dp, f.mechanism, f.l2_norm_clip, f.noise_multiplier,
                                       f.target_epsilon, f.delta, f.accountant,
                                       f.release_blur, f.public_clip),
      optim=config_lib.OptimConfig(f.optimizer, f.learning_rate, f.beta_1, f.beta_2,
                                   f.weight_decay, f.ema_decay, f.lr_schedule),
      run=config_lib.RunConfig(f.workdir, f.seed, f.log_every, f.sample_every,
                               f.checkpoint_every, f.keep_checkpoints, f.export, f.model_name,
                               f.privacy_key_file, f.insecure_fixed_key, f.strategy,
                               f.num_devices, f.if_finished, f.steps_per_call),
      fake_batch_size=f.fake_batch_size)


def flags_of(flag_values) -> list:
  """The training flags held by `flag_values` (defined by this module)."""
  return flag_values.get_flags_for_module(__name__)

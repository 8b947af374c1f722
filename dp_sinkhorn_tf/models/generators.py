"""Class-conditional Keras generators g(z, y) → image in [−1, 1].

Interface (both families): `gen([z, labels], training=bool)` with
  z:      [B, latent_dim] float32, z ~ U(0, 1) as in the paper (see `sample_latent`),
  labels: [B] int32 in [0, num_classes),
  →       [B, H, W, C] float32 in [−1, 1] (tanh, or a clip; see `OUTPUTS`).
Attributes: `latent_dim`, `num_classes`, `image_shape` = (H, W, C).

Output head. "tanh" (the paper) or "clip": x ↦ min(1, max(−1, x)) in the forward pass with
the identity as its derivative (a straight-through clip). Under DP the released image
gradient is mostly noise, and tanh turns that noise into a one-way street: the noise walks a
pre-activation out to where tanh′ ≈ 0, after which no signal can bring it back, and the
images freeze into black-and-white patterns. The straight-through clip passes every
gradient, so the signal can undo what the noise did.

The condition is h = [z, embed(y)] with embed = Embedding(num_classes, embed_dim). The output
shape comes from `image_shape` alone (no dataset names): k = `num_upsamplings(image_shape)`
×2 upsamplings (8×8 → 1, 28×28 → 2, 32×32 → 3, 64×64 → 4) from a seed grid of
⌈H / 2^k⌉ × ⌈W / 2^k⌉; an overshoot (e.g. 5·2² = 20 for H = 18) is centre-cropped.

* `DCGANGenerator` (paper §5, MNIST / Fashion-MNIST: latent 12–16, embedding 4–8, hidden 64):
  h → Dense → BN → LeakyReLU(0.2) → seed × 2^k·hidden channels → k up-blocks
  [ConvTranspose 4×4 stride 2 → BN → LeakyReLU, then (depth − 1) × (Conv 3×3 → BN → LeakyReLU)],
  channels halving to `hidden` → Conv 3×3 to C → crop → tanh.
* `BigGANGenerator` (CelebA / CIFAR-10 scale): h → Dense → seed × 2^k·hidden → k residual
  up-blocks, each followed by (depth − 1) residual blocks at the same resolution, all with
  class-conditional BatchNorm BN(x)·(1 + γ(h)) + β(h) (BigGAN's shared embedding
  concatenated with z; no spectral norm) → BN → ReLU → Conv 3×3 to C → crop → tanh.
* `MLPGenerator` (no convolutions: every layer a matmul): h → depth × [Dense(hidden) → BN →
  LeakyReLU(0.2)] → Dense(H·W·C) → reshape → tanh; here `hidden` counts units, not channels.

Precision. `precision` = "float32" | "mixed_bfloat16" | "mixed_float16" builds every layer
under that Keras policy: variables stay float32, the layers compute in bfloat16 / float16
(bfloat16 runs on the AVX-512-BF16 / AMX units of recent CPUs and on TPUs; float16 on GPUs,
with loss scaling in the optimizer). "bfloat16_convs" puts only the convolutions (Conv2D,
Conv2DTranspose; for the MLP, its dense layers) under mixed_bfloat16 and keeps BatchNorm,
the activations and the conv generators' dense layers in float32: on a CPU the products run
on the bfloat16 units while the elementwise work, which CPUs without native bfloat16
arithmetic emulate, stays float32 (the paper's DCGAN, forward + backward at batch 70:
57 ms against 75–80 float32 and 65–77 mixed_bfloat16). In bfloat16 a transposed
convolution on a small input (the 7×7 seed) takes its filter gradient as one matrix product
(`conv_ops`, `Conv2DTranspose` below): oneDNN's own ran at 40 % of the matmul rate there.
The interface does not change: the condition and the output are float32 (the output is cast
before its head), so the loss, the released gradient and the privacy mechanism downstream
never see a low-precision tensor.

BatchNorm. The trainer calls the generator with training=True: BN normalises with the
statistics of the generated batch and updates its moving averages. That batch holds generated
samples only (z and labels are data-independent), so BN touches no private data and needs no
privacy accounting. With training=False (sampling, evaluation, export) BN uses the moving
averages, so a sample does not depend on the other samples in its batch.
"""

import contextlib
import contextvars
import math
import numbers
from typing import List, Sequence, Tuple, Union

import tensorflow as tf

from dp_sinkhorn_tf.models import conv_ops
from dp_sinkhorn_tf.models.generator_options import ARCHITECTURES, OUTPUTS, PRECISIONS

# The policy of the convolution layers being created: None (the global policy) except under
# policy_scope("bfloat16_convs").
_CONV_POLICY = contextvars.ContextVar("conv_policy", default=None)
LEAKY_SLOPE = 0.2
Seed = Union[int, Sequence[int], tf.Tensor, tf.random.Generator]


def num_upsamplings(image_shape: Sequence[int]) -> int:
  """k = max(1, ⌊log₂ min(H, W)⌋ − 2): 8 → 1, 28 → 2, 32 → 3, 64 → 4 (seed side 4–7)."""
  return max(1, int(math.floor(math.log2(min(image_shape[0], image_shape[1])))) - 2)


def seed_shape(image_shape: Sequence[int]) -> Tuple[int, int]:
  """(⌈H / 2^k⌉, ⌈W / 2^k⌉): the smallest grid whose k doublings cover H × W."""
  k = num_upsamplings(image_shape)
  return math.ceil(image_shape[0] / 2**k), math.ceil(image_shape[1] / 2**k)


def center_crop(x: tf.Tensor, height: int, width: int) -> tf.Tensor:
  """x: [B, h, w, C] with h ≥ height, w ≥ width → the central [B, height, width, C]."""
  top = (x.shape[1] - height) // 2
  left = (x.shape[2] - width) // 2
  return x[:, top:top + height, left:left + width, :]


class _ConditionalGenerator(tf.keras.Model):
  """Shared input handling and output head: [z, labels] → h; x → crop → tanh or clip."""

  def __init__(self, image_shape: Sequence[int], num_classes: int, *, latent_dim: int,
               embed_dim: int, hidden: int, depth: int, output: str, **kwargs):
    super().__init__(**kwargs)
    if output not in OUTPUTS:
      raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    self.output_head = output
    self.image_shape = tuple(int(s) for s in image_shape)
    self.num_classes = int(num_classes)
    self.latent_dim = int(latent_dim)
    self.embed_dim = int(embed_dim)
    self.hidden = int(hidden)
    self.depth = int(depth)
    self.num_up = num_upsamplings(self.image_shape)
    self.seed_hw = seed_shape(self.image_shape)
    self.embedding = tf.keras.layers.Embedding(self.num_classes, self.embed_dim,
                                               name="label_embedding")

  def condition(self, inputs) -> tf.Tensor:
    """[z [B, latent_dim], labels [B]] → h = [z, embed(labels)]: [B, latent_dim + embed_dim]."""
    z, labels = inputs
    z = tf.cast(z, tf.float32)
    if z.shape.rank is not None and z.shape.rank != 2:
      raise ValueError(f"z must be [B, latent_dim={self.latent_dim}], got shape {z.shape}")
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    return tf.concat([z, tf.cast(self.embedding(labels), tf.float32)], axis=1)

  def to_output(self, x: tf.Tensor) -> tf.Tensor:
    """[B, h, w, C] pre-activations (any float dtype) → [B, H, W, C] float32 in [−1, 1]."""
    x = tf.cast(x, tf.float32)
    height, width, _ = self.image_shape
    if x.shape[1] != height or x.shape[2] != width:
      x = center_crop(x, height, width)
    if self.output_head == "clip":
      return straight_through_clip(x)
    return tf.tanh(x)

  def get_config(self) -> dict:
    return {"image_shape": self.image_shape, "num_classes": self.num_classes,
            "latent_dim": self.latent_dim, "embed_dim": self.embed_dim, "hidden": self.hidden,
            "depth": self.depth, "output": self.output_head}


def batch_norm(**kwargs) -> tf.keras.layers.BatchNormalization:
  """BatchNormalization, synchronised across replicas when built under a multi-replica
  tf.distribute strategy (its batch statistics are then the whole generated batch's, as on
  one device); the same variables either way, so checkpoints move between the two."""
  synchronized = (tf.distribute.has_strategy()
                  and tf.distribute.get_strategy().num_replicas_in_sync > 1)
  return tf.keras.layers.BatchNormalization(synchronized=synchronized, **kwargs)


@tf.custom_gradient
def straight_through_clip(x: tf.Tensor):
  """y = min(1, max(−1, x)) with ∂y/∂x := 1 everywhere (straight-through estimator)."""
  return tf.clip_by_value(x, -1.0, 1.0), lambda dy: dy


# ---- DCGAN --------------------------------------------------------------------------------

class Conv2DTranspose(tf.keras.layers.Conv2DTranspose):
  """Keras's Conv2DTranspose (4×4, stride 2, SAME, no bias here), whose filter gradient is
  one matrix product (`conv_ops`) where that is faster: in bfloat16 on small inputs, e.g.
  the paper's 7×7 seed. Same variables, values and names as Keras's layer (the class keeps
  its name), so checkpoints and exports do not change."""

  def call(self, inputs):
    if (self.kernel_size == (4, 4) and self.strides == (2, 2) and self.padding == "same"
        and self.data_format == "channels_last" and self.dilation_rate == (1, 1)
        and not self.use_bias and conv_ops.use_matmul_filter_gradient(inputs)):
      return self.activation(conv_ops.conv_transpose(inputs, tf.convert_to_tensor(self.kernel)))
    return super().call(inputs)


class DCGANUpBlock(tf.keras.layers.Layer):
  """ConvT 4×4 stride 2 → BN → LeakyReLU, then (depth − 1) × (Conv 3×3 → BN → LeakyReLU)."""

  def __init__(self, channels: int, depth: int, **kwargs):
    super().__init__(**kwargs)
    L = tf.keras.layers
    self.convs = [Conv2DTranspose(channels, 4, strides=2, padding="same", use_bias=False,
                                    dtype=_conv_policy())]
    self.convs += [L.Conv2D(channels, 3, padding="same", use_bias=False, dtype=_conv_policy())
                   for _ in range(depth - 1)]
    self.norms = [batch_norm() for _ in self.convs]

  def call(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
    for conv, norm in zip(self.convs, self.norms):
      x = tf.nn.leaky_relu(norm(conv(x), training=training), LEAKY_SLOPE)
    return x


class DCGANGenerator(_ConditionalGenerator):
  """DCGAN-style conditional generator (see the module docstring)."""

  def __init__(self, image_shape: Sequence[int], num_classes: int, **kwargs):
    super().__init__(image_shape, num_classes, **kwargs)
    L = tf.keras.layers
    seed_channels = self.hidden * 2**self.num_up
    self.project = L.Dense(self.seed_hw[0] * self.seed_hw[1] * seed_channels, use_bias=False)
    self.project_norm = batch_norm()
    self.reshape = L.Reshape((*self.seed_hw, seed_channels))
    self.blocks = [DCGANUpBlock(self.hidden * 2**(self.num_up - 1 - k), self.depth)
                   for k in range(self.num_up)]
    self.to_image = L.Conv2D(self.image_shape[2], 3, padding="same", dtype=_conv_policy())

  def call(self, inputs, training: bool = False) -> tf.Tensor:
    x = self.project_norm(self.project(self.condition(inputs)), training=training)
    x = self.reshape(tf.nn.leaky_relu(x, LEAKY_SLOPE))
    for block in self.blocks:
      x = block(x, training=training)
    return self.to_output(self.to_image(x))


# ---- BigGAN -------------------------------------------------------------------------------

class ConditionalBatchNorm(tf.keras.layers.Layer):
  """BN(x)·(1 + γ(h)) + β(h), γ, β: [B, channels] linear in the condition h (zero-initialised,
  so training starts from plain BN)."""

  def __init__(self, channels: int, **kwargs):
    super().__init__(**kwargs)
    L = tf.keras.layers
    self.norm = batch_norm(center=False, scale=False)
    self.gamma = L.Dense(channels, kernel_initializer="zeros")
    self.beta = L.Dense(channels, kernel_initializer="zeros")

  def call(self, x: tf.Tensor, condition: tf.Tensor, training: bool = False) -> tf.Tensor:
    x = self.norm(x, training=training)
    gamma = self.gamma(condition)[:, tf.newaxis, tf.newaxis, :]
    beta = self.beta(condition)[:, tf.newaxis, tf.newaxis, :]
    return x * (1.0 + gamma) + beta


class ResBlock(tf.keras.layers.Layer):
  """y = Conv3(ReLU(CBN(Conv3(up(ReLU(CBN(x))))))) + skip(up(x)), up = ×2 nearest or identity;
  skip is a 1×1 conv when the block upsamples or changes channels, else the identity."""

  def __init__(self, in_channels: int, out_channels: int, upsample: bool, **kwargs):
    super().__init__(**kwargs)
    L = tf.keras.layers
    self.cbn1 = ConditionalBatchNorm(in_channels)
    self.conv1 = L.Conv2D(out_channels, 3, padding="same", dtype=_conv_policy())
    self.cbn2 = ConditionalBatchNorm(out_channels)
    self.conv2 = L.Conv2D(out_channels, 3, padding="same", dtype=_conv_policy())
    self.up = L.UpSampling2D(2) if upsample else None
    needs_projection = upsample or in_channels != out_channels
    self.skip = (L.Conv2D(out_channels, 1, dtype=_conv_policy()) if needs_projection
                 else None)

  def call(self, x: tf.Tensor, condition: tf.Tensor, training: bool = False) -> tf.Tensor:
    h = tf.nn.relu(self.cbn1(x, condition, training=training))
    if self.up is not None:
      h, x = self.up(h), self.up(x)
    h = self.conv1(h)
    h = self.conv2(tf.nn.relu(self.cbn2(h, condition, training=training)))
    return h + (self.skip(x) if self.skip is not None else x)


class BigGANGenerator(_ConditionalGenerator):
  """BigGAN-style conditional generator with class-conditional BatchNorm (module docstring)."""

  def __init__(self, image_shape: Sequence[int], num_classes: int, **kwargs):
    super().__init__(image_shape, num_classes, **kwargs)
    L = tf.keras.layers
    top = self.hidden * 2**self.num_up
    self.project = L.Dense(self.seed_hw[0] * self.seed_hw[1] * top)
    self.reshape = L.Reshape((*self.seed_hw, top))
    self.blocks: List[ResBlock] = []
    channels = top
    for k in range(self.num_up):
      out = self.hidden * 2**(self.num_up - 1 - k)
      self.blocks.append(ResBlock(channels, out, upsample=True))
      self.blocks += [ResBlock(out, out, upsample=False) for _ in range(self.depth - 1)]
      channels = out
    self.final_norm = batch_norm()
    self.to_image = L.Conv2D(self.image_shape[2], 3, padding="same", dtype=_conv_policy())

  def call(self, inputs, training: bool = False) -> tf.Tensor:
    condition = self.condition(inputs)
    x = self.reshape(self.project(condition))
    for block in self.blocks:
      x = block(x, condition, training=training)
    x = tf.nn.relu(self.final_norm(x, training=training))
    return self.to_output(self.to_image(x))


# ---- MLP ----------------------------------------------------------------------------------

class MLPGenerator(_ConditionalGenerator):
  """Fully connected conditional generator (see the module docstring)."""

  def __init__(self, image_shape: Sequence[int], num_classes: int, **kwargs):
    super().__init__(image_shape, num_classes, **kwargs)
    L = tf.keras.layers
    self.dense = [L.Dense(self.hidden, use_bias=False, dtype=_conv_policy())
                  for _ in range(self.depth)]
    self.norms = [batch_norm() for _ in self.dense]
    self.to_image = L.Dense(math.prod(self.image_shape), dtype=_conv_policy())
    self.reshape = L.Reshape(self.image_shape)

  def call(self, inputs, training: bool = False) -> tf.Tensor:
    x = self.condition(inputs)
    for dense, norm in zip(self.dense, self.norms):
      x = tf.nn.leaky_relu(norm(dense(x), training=training), LEAKY_SLOPE)
    return self.to_output(self.reshape(self.to_image(x)))


# ---- factory and noise --------------------------------------------------------------------

def _check_positive_int(name: str, value, minimum: int = 1) -> None:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
    raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value!r}")


def _check_image_shape(image_shape) -> None:
  shape = tuple(image_shape) if isinstance(image_shape, (tuple, list)) else None
  ok = shape is not None and len(shape) == 3 and all(
      isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in shape)
  if not ok or min(shape[:2]) < 4 or shape[2] < 1:
    raise ValueError(f"image_shape must be (H, W, C) integers with H, W ≥ 4 and C ≥ 1, "
                     f"got {image_shape!r}")


def make_generator(architecture: str, image_shape: Sequence[int], num_classes: int, *,
                   latent_dim: int, embed_dim: int, hidden: int, depth: int, output: str,
                   precision: str) -> _ConditionalGenerator:
  """A built generator (variables exist) for `image_shape` = (H, W, C).

  Every width has to be given: the defaults are the training config's (`train.config.
  ModelConfig`, which `trainer.make_generator` passes on), not this module's.

  architecture: "dcgan" | "biggan" | "mlp"; hidden: channels at the finest resolution
  (doubling per coarser level), or the MLP's units per layer; depth ≥ 1: conv (DCGAN) or
  residual (BigGAN) blocks per resolution, or the MLP's hidden layers;
  output: "tanh" | "clip"; precision: one of PRECISIONS, the Keras mixed-precision policy of
  every layer (see the module docstring).
  Raises ValueError naming the bad argument.
  """
  if architecture not in ARCHITECTURES:
    raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
  _check_image_shape(image_shape)
  for name, value in (("num_classes", num_classes), ("latent_dim", latent_dim),
                      ("embed_dim", embed_dim), ("hidden", hidden), ("depth", depth)):
    _check_positive_int(name, value)
  if precision not in PRECISIONS:
    raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
  cls = {"dcgan": DCGANGenerator, "biggan": BigGANGenerator, "mlp": MLPGenerator}[architecture]
  with policy_scope(precision):
    gen = cls(tuple(image_shape), num_classes, latent_dim=latent_dim, embed_dim=embed_dim,
              hidden=hidden, depth=depth, output=output, name=f"{architecture}_generator")
    gen([tf.zeros([1, latent_dim]), tf.zeros([1], tf.int32)], training=False)
  gen.precision = precision
  return gen


def _conv_policy():
  return _CONV_POLICY.get()


@contextlib.contextmanager
def policy_scope(precision: str):
  """Keras's global dtype policy set to `precision` while layers are created, then restored
  ("bfloat16_convs": float32, with the convolutions created under mixed_bfloat16). A layer
  keeps the policy it was created under, so only construction needs the scope and nothing
  outside it (other models, the loss) changes precision."""
  convs_only = precision == "bfloat16_convs"
  previous = tf.keras.mixed_precision.global_policy()
  tf.keras.mixed_precision.set_global_policy("float32" if convs_only else precision)
  token = _CONV_POLICY.set("mixed_bfloat16" if convs_only else None)
  try:
    yield
  finally:
    _CONV_POLICY.reset(token)
    tf.keras.mixed_precision.set_global_policy(previous)


def precision_of(generator: tf.keras.Model) -> str:
  """The precision a generator was built under (one of PRECISIONS)."""
  return getattr(generator, "precision", generator.dtype_policy.name)


def sample_latent(batch: int, latent_dim: int, seed: Seed) -> tf.Tensor:
  """z ~ U(0, 1): [batch, latent_dim] float32.

  seed: a tf.random.Generator (stateful: advances it), a stateless [2] int seed, or an int s
  (same as the stateless seed [s, 0]). Stateless seeds give the same z on every call.
  """
  if not tf.is_tensor(batch):
    _check_positive_int("batch", batch, minimum=0)
  _check_positive_int("latent_dim", latent_dim)
  if isinstance(seed, tf.random.Generator):
    return seed.uniform([batch, latent_dim], dtype=tf.float32)
  if isinstance(seed, numbers.Integral):
    seed = [int(seed), 0]
  return tf.random.stateless_uniform([batch, latent_dim], seed, dtype=tf.float32)

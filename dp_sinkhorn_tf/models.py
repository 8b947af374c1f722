"""Class-conditional Keras generators g(z, y) → image in [−1, 1].

Both families take z ~ U(0, 1) [B, latent_dim] (as the paper does) and integer labels [B],
and output [B, H, W, C] through tanh. The output shape comes from `image_shape` alone:
the number of ×2 upsamplings is chosen from the resolution (8×8 → 1, 28×28 → 2,
32×32 → 3), the seed grid is ⌈H / 2^k⌉ × ⌈W / 2^k⌉, and an overshoot is centre-cropped.

* `DCGANGenerator` (paper §5, MNIST/Fashion-MNIST: latent 12–16, embedding 4–8, hidden 64):
  [z, embed(y)] → dense → seed × 2^k·hidden → k × (ConvTranspose stride 2, BatchNorm,
  LeakyReLU(0.2), then depth−1 × (Conv 3×3, BN, LeakyReLU)) → Conv 3×3 → tanh.
* `BigGANGenerator` (CelebA / CIFAR-10 scale): dense → seed × 2^k·hidden → k residual
  up-blocks with class-conditional BatchNorm (γ, β from [z, embed(y)]) → BN, ReLU,
  Conv 3×3 → tanh.

BatchNorm. Training calls the generator with training=True: statistics of the generated
batch, which holds no private data. Inference (training=False, also every export) uses the
moving averages accumulated during training, so a sample does not depend on the other
samples in its batch.
"""

import math
from typing import Sequence, Tuple

import tensorflow as tf

ARCHITECTURES = ("dcgan", "biggan")


def num_upsamplings(image_shape: Sequence[int]) -> int:
  """k = max(1, ⌊log₂ min(H, W)⌋ − 2): 8 → 1, 28 → 2, 32 → 3, 64 → 4."""
  return max(1, int(math.floor(math.log2(min(image_shape[0], image_shape[1])))) - 2)


def seed_shape(image_shape: Sequence[int]) -> Tuple[int, int]:
  k = num_upsamplings(image_shape)
  return math.ceil(image_shape[0] / 2**k), math.ceil(image_shape[1] / 2**k)


def _center_crop(x: tf.Tensor, height: int, width: int) -> tf.Tensor:
  top = (x.shape[1] - height) // 2
  left = (x.shape[2] - width) // 2
  return x[:, top:top + height, left:left + width, :]


class _ConditionalGenerator(tf.keras.Model):
  """Shared input handling: z [B, latent] float, labels [B] int → h = [z, embed(labels)]."""

  def __init__(self, image_shape, num_classes, latent_dim, embed_dim, hidden, depth, **kw):
    super().__init__(**kw)
    self.image_shape = tuple(int(s) for s in image_shape)
    self.num_classes = int(num_classes)
    self.latent_dim = int(latent_dim)
    self.embed_dim = int(embed_dim)
    self.hidden = int(hidden)
    self.depth = int(depth)
    self.embedding = tf.keras.layers.Embedding(num_classes, embed_dim, name="label_embedding")
    self.num_up = num_upsamplings(self.image_shape)
    self.seed_hw = seed_shape(self.image_shape)

  def _inputs(self, inputs):
    z, labels = inputs
    z = tf.convert_to_tensor(z, tf.float32)
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    return tf.concat([z, self.embedding(labels)], axis=1)

  def _finish(self, x):
    h, w, _ = self.image_shape
    if x.shape[1] != h or x.shape[2] != w:
      x = _center_crop(x, h, w)
    return tf.tanh(x)

  def get_config(self):
    return {"image_shape": self.image_shape, "num_classes": self.num_classes,
            "latent_dim": self.latent_dim, "embed_dim": self.embed_dim, "hidden": self.hidden,
            "depth": self.depth}


class DCGANGenerator(_ConditionalGenerator):
  """DCGAN-style conditional generator (see module docstring)."""

  def __init__(self, image_shape, num_classes, latent_dim=16, embed_dim=8, hidden=64, depth=1,
               **kw):
    super().__init__(image_shape, num_classes, latent_dim, embed_dim, hidden, depth, **kw)
    L = tf.keras.layers
    seed_channels = hidden * 2**self.num_up
    self.project = L.Dense(self.seed_hw[0] * self.seed_hw[1] * seed_channels, use_bias=False)
    self.project_bn = L.BatchNormalization()
    self.reshape = L.Reshape((self.seed_hw[0], self.seed_hw[1], seed_channels))
    self.stages = []
    for k in range(self.num_up):
      channels = hidden * 2**(self.num_up - 1 - k)
      layers = [L.Conv2DTranspose(channels, 4, strides=2, padding="same", use_bias=False),
                L.BatchNormalization(), L.LeakyReLU(0.2)]
      for _ in range(depth - 1):
        layers += [L.Conv2D(channels, 3, padding="same", use_bias=False),
                   L.BatchNormalization(), L.LeakyReLU(0.2)]
      self.stages.append(layers)
    self.to_image = L.Conv2D(self.image_shape[2], 3, padding="same")

  def call(self, inputs, training=False):
    x = self.project(self._inputs(inputs))
    x = tf.nn.leaky_relu(self.project_bn(x, training=training), 0.2)
    x = self.reshape(x)
    for layers in self.stages:
      for layer in layers:
        is_bn = isinstance(layer, tf.keras.layers.BatchNormalization)
        x = layer(x, training=training) if is_bn else layer(x)
    return self._finish(self.to_image(x))


class ConditionalBatchNorm(tf.keras.layers.Layer):
  """BN(x)·(1 + γ(h)) + β(h): per-channel scale and shift predicted from the condition h."""

  def __init__(self, channels: int, **kw):
    super().__init__(**kw)
    self.bn = tf.keras.layers.BatchNormalization(center=False, scale=False)
    self.gamma = tf.keras.layers.Dense(channels, kernel_initializer="zeros")
    self.beta = tf.keras.layers.Dense(channels, kernel_initializer="zeros")

  def call(self, x, condition, training=False):
    x = self.bn(x, training=training)
    gamma = self.gamma(condition)[:, tf.newaxis, tf.newaxis, :]
    beta = self.beta(condition)[:, tf.newaxis, tf.newaxis, :]
    return x * (1.0 + gamma) + beta


class ResBlockUp(tf.keras.layers.Layer):
  """CBN → ReLU → ×2 nearest → Conv3 → CBN → ReLU → Conv3, plus ×2 → Conv1 skip."""

  def __init__(self, in_channels: int, out_channels: int, **kw):
    super().__init__(**kw)
    L = tf.keras.layers
    self.cbn1 = ConditionalBatchNorm(in_channels)
    self.conv1 = L.Conv2D(out_channels, 3, padding="same")
    self.cbn2 = ConditionalBatchNorm(out_channels)
    self.conv2 = L.Conv2D(out_channels, 3, padding="same")
    self.skip = L.Conv2D(out_channels, 1)
    self.up = L.UpSampling2D(2)

  def call(self, x, condition, training=False):
    h = tf.nn.relu(self.cbn1(x, condition, training=training))
    h = self.conv1(self.up(h))
    h = tf.nn.relu(self.cbn2(h, condition, training=training))
    h = self.conv2(h)
    return h + self.skip(self.up(x))


class BigGANGenerator(_ConditionalGenerator):
  """BigGAN-style conditional generator with class-conditional BatchNorm."""

  def __init__(self, image_shape, num_classes, latent_dim=32, embed_dim=16, hidden=64,
               depth=1, **kw):
    super().__init__(image_shape, num_classes, latent_dim, embed_dim, hidden, depth, **kw)
    L = tf.keras.layers
    top = hidden * 2**self.num_up
    self.project = L.Dense(self.seed_hw[0] * self.seed_hw[1] * top)
    self.reshape = L.Reshape((self.seed_hw[0], self.seed_hw[1], top))
    self.blocks = []
    channels = top
    for k in range(self.num_up):
      out = hidden * 2**(self.num_up - 1 - k)
      self.blocks.append(ResBlockUp(channels, out))
      channels = out
      for _ in range(depth - 1):
        self.blocks.append(ResBlockUp(channels, channels, ))
    self.blocks = [b for b in self.blocks]
    self.final_bn = L.BatchNormalization()
    self.to_image = L.Conv2D(self.image_shape[2], 3, padding="same")

  def call(self, inputs, training=False):
    condition = self._inputs(inputs)
    x = self.reshape(self.project(condition))
    for block in self.blocks:
      x = block(x, condition, training=training)
    x = tf.nn.relu(self.final_bn(x, training=training))
    return self._finish(self.to_image(x))


def make_generator(architecture: str, image_shape: Sequence[int], num_classes: int,
                   latent_dim: int = 16, embed_dim: int = 8, hidden: int = 64,
                   depth: int = 1) -> _ConditionalGenerator:
  """Builds (and calls once, so variables exist) a generator for `image_shape` (H, W, C)."""
  if architecture not in ARCHITECTURES:
    raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
  if len(image_shape) != 3 or min(image_shape) < 1 or min(image_shape[:2]) < 4:
    raise ValueError(f"image_shape must be (H, W, C) with H, W ≥ 4, got {tuple(image_shape)}")
  for name, value in (("num_classes", num_classes), ("latent_dim", latent_dim),
                      ("embed_dim", embed_dim), ("hidden", hidden), ("depth", depth)):
    if int(value) < 1:
      raise ValueError(f"{name} must be ≥ 1, got {value}")
  cls = DCGANGenerator if architecture == "dcgan" else BigGANGenerator
  gen = cls(image_shape, num_classes, latent_dim=latent_dim, embed_dim=embed_dim,
            hidden=hidden, depth=depth, name=f"{architecture}_generator")
  gen([tf.zeros([1, latent_dim]), tf.zeros([1], tf.int32)], training=False)
  return gen


def sample_latent(batch: int, latent_dim: int, seed) -> tf.Tensor:
  """z ~ U(0, 1) [batch, latent_dim] from a stateless [2] seed."""
  return tf.random.stateless_uniform([batch, latent_dim], seed)

"""The privacy mechanisms a training step can use: one entry per mechanism in MECHANISMS.

A mechanism turns one step of `trainer.DPSinkhornModel` into the released parameter
gradients of its generator (and the step's metrics); the model applies them. Adding a
mechanism means adding a class here (and its test); `config` and the flags read the names
and properties from the table.

  image_grad  DP-Sinkhorn (Cao et al. 2021): clip the gradient G = ∂L/∂X of the loss w.r.t.
              the generated images as one block to C, add keyed N(0, (2σC)²) to its private
              rows, back-propagate the release into the generator (`privacy.
              ImageGradientMechanism`). Distributes over replicas (`distribute`).
  param_grad  the paper's ablation: clip the whole parameter gradient of the batch loss to C
              and add the same keyed noise (`gaussian.privatize_parameter_gradients`).
"""

import dataclasses
from typing import Dict, Tuple

import tensorflow as tf

from dp_sinkhorn_tf.privacy import gaussian


@dataclasses.dataclass(frozen=True)
class Mechanism:
  """Interface. releases_image_gradient: the flags that shape an image-gradient release
  (--release_blur, --public_clip) apply; distributable: runs under a multi-replica
  strategy with the single-device release."""

  name: str = ""
  releases_image_gradient: bool = False
  distributable: bool = False

  def gradients(self, model, step: tf.Tensor) -> Tuple[list, Dict[str, tf.Tensor]]:
    """(released gradients of model.generator.trainable_variables, metrics) of step."""
    raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class ImageGradient(Mechanism):
  name: str = "image_grad"
  releases_image_gradient: bool = True
  distributable: bool = True

  def gradients(self, model, step):
    return model.image_grad_gradients(step)


@dataclasses.dataclass(frozen=True)
class ParameterGradient(Mechanism):
  name: str = "param_grad"

  def gradients(self, model, step):
    real, real_labels = model.private_batch(step)
    z, fake_labels = model.latent_batch(step)
    variables = model.generator.trainable_variables
    with tf.GradientTape() as tape:
      fake = model.generator([z, fake_labels], training=True)
      loss, info = model.sinkhorn_loss(fake, fake_labels, real, real_labels)
    grads = [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
             for g, v in zip(tape.gradient(loss, variables), variables)]
    p = model.cfg.privacy
    if p.dp:
      grads, clean_norm = gaussian.privatize_parameter_gradients(
          grads, p.l2_norm_clip, model.noise_multiplier, model.noise_seed(step))
    else:
      clean_norm = tf.linalg.global_norm(grads)
    return grads, {"loss": loss, "clean_grad_norm": clean_norm,
                   "noised_grad_norm": tf.linalg.global_norm(grads),
                   "sinkhorn_iterations": tf.cast(info.iterations, tf.float32),
                   "marginal_error": info.marginal_error,
                   "real_batch_size": tf.cast(tf.shape(real)[0], tf.float32)}


MECHANISMS: Dict[str, Mechanism] = {m.name: m for m in (ImageGradient(), ParameterGradient())}


def get(name: str) -> Mechanism:
  if name not in MECHANISMS:
    raise ValueError(f"--mechanism={name}: expected one of {tuple(MECHANISMS)}")
  return MECHANISMS[name]

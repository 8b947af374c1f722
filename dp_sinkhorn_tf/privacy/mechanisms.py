"""The privacy mechanisms a training step can use: one entry per mechanism in MECHANISMS.

A mechanism turns one step of `trainer.DPSinkhornModel` into the released parameter
gradients of its generator (and the step's metrics); the model applies them. Adding a
mechanism means adding a class here (and its test); `config` and the flags read the names
and properties from the table.

  image_grad  DP-Sinkhorn (Cao et al. 2021): clip the gradient G = ∂L/∂X of the loss w.r.t.
              the generated images as one block to C, add keyed N(0, (2σC)²) to its private
              rows, back-propagate the release into the generator
              (`DPSinkhornModel.image_grad_gradients`). Distributes over replicas
              (`distribute`).
  param_grad  the paper's ablation: clip the whole parameter gradient of the batch loss to C
              and add the same keyed noise (`DPSinkhornModel.param_grad_gradients`).

This module imports no TensorFlow: `config` validates --mechanism against the table while
the flags are checked, before TensorFlow loads (a bad flag costs one line, not TF's
start-up). The gradients are the model's methods.
"""

import dataclasses
from typing import Any, Dict, List, Tuple


@dataclasses.dataclass(frozen=True)
class Mechanism:
  """Interface. releases_image_gradient: the flags that shape an image-gradient release
  (--release_blur, --public_clip) apply; distributable: runs under a multi-replica
  strategy with the single-device release."""

  name: str = ""
  releases_image_gradient: bool = False
  distributable: bool = False

  def gradients(self, model, step) -> Tuple[List[Any], Dict[str, Any]]:
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
    return model.param_grad_gradients(step)


MECHANISMS: Dict[str, Mechanism] = {m.name: m for m in (ImageGradient(), ParameterGradient())}


def get(name: str) -> Mechanism:
  if name not in MECHANISMS:
    raise ValueError(f"--mechanism={name}: expected one of {tuple(MECHANISMS)}")
  return MECHANISMS[name]

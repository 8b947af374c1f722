"""The generator options `config` and the flags validate against, without TensorFlow.

`generators` builds them (see its docstring for what each means) and imports the names
from here, so there is one spelling of each; this module imports no TensorFlow, so a bad
--architecture / --output / --precision fails before TensorFlow loads.
"""

ARCHITECTURES = ("dcgan", "biggan", "mlp")
# The output head: "tanh" (the paper) or "clip" (a straight-through clip).
OUTPUTS = ("tanh", "clip")
# The Keras mixed-precision policy of the generator's layers; "bfloat16_convs" puts only the
# convolutions (the MLP's dense layers) under mixed_bfloat16.
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16", "bfloat16_convs")
# The image shapes the generators build: any height and width in IMAGE_SIDES (inclusive;
# `generators.num_upsamplings` picks the doublings, an overshoot is centre-cropped) and
# CHANNELS channels. generators_test builds every architecture at both ends.
IMAGE_SIDES = (8, 128)
CHANNELS = (1, 3)


def image_shape_problem(shape) -> str:
  """'' when the generators build images of `shape` (H, W, C), else what is wrong, e.g.
  "300×200 pixels (the generators take 8 to 128 pixels a side)"."""
  height, width, channels = (int(s) for s in shape)
  low, high = IMAGE_SIDES
  if not (low <= height <= high and low <= width <= high):
    return (f"{height}×{width} pixels (the generators take {low} to {high} pixels a side, "
            "any height and width)")
  if channels not in CHANNELS:
    return f"{channels} channels (the generators take 1: grayscale or 3: RGB)"
  return ""

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

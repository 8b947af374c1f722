"""dp_sinkhorn_tf: differentially private generators trained with the Sinkhorn divergence.

TensorFlow / Keras implementation of DP-Sinkhorn (Cao, Bie, Vahdat, Fidler, Kreis,
"Don't Generate Me: Training Differentially Private Generative Models with Sinkhorn
Divergence", NeurIPS 2021).
"""

__version__ = "0.1.0"

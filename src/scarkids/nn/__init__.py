"""Reusable torch building blocks: MLPs, the encoder, the decoder, the classifier."""

from scarkids.nn.layers import (
    BatchConditionedMLP,
    Classifier,
    Decoder,
    Encoder,
    Norm,
    make_mlp,
    wide_linear,
)

__all__ = [
    "BatchConditionedMLP",
    "Classifier",
    "Decoder",
    "Encoder",
    "Norm",
    "make_mlp",
    "wide_linear",
]

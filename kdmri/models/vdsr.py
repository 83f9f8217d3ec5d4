"""VDSR (Kim et al.): a deep plain CNN with a global residual connection."""

from __future__ import annotations

import torch
from torch import nn

from kdmri.models.blocks import activation_index, plain_cnn


class VDSR(nn.Module):
    """``convs`` 3x3 convolutions with ``channels`` features; output = input + CNN(input).

    Teacher of the paper: ``VDSR(11, 64)`` = 333,569 parameters; student ``VDSR(7, 64)`` =
    185,857. ``complex=True``: the image is complex, taken and returned as two channels
    (real, imaginary), so the first and last convolutions have two image channels
    (``18 * channels + 1`` more parameters: teacher 334,722, student 187,010).

    Initialisation: He (Kaiming normal, fan-in, ReLU) weights and zero biases, as in the
    VDSR paper, and a last convolution of zero, so every VDSR starts as the identity
    (output = input) and learns a correction. The zero last layer matters for distillation:
    the attention stage trains the layers up to the hint layer alone and scales their
    features freely (attention maps are normalised), so with a random last layer the
    untrained layers above can turn them into a residual far larger than a fresh
    network's. He weights keep the features' scale through the depth, without which the
    zero last layer can leave a deep teacher at the identity. The measurements on the demo:
    docs/results.md, "Design measurements of the demo".
    """

    def __init__(self, convs: int = 11, channels: int = 64, complex: bool = False):
        super().__init__()
        self.convs = convs
        self.complex = complex
        image_channels = 2 if complex else 1
        self.cnn = plain_cnn(image_channels, image_channels, convs, channels)
        *hidden, last = [layer for layer in self.cnn if isinstance(layer, nn.Conv2d)]
        for conv in hidden:
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, image: torch.Tensor, kspace=None, mask=None) -> torch.Tensor:
        return image + self.cnn(image)

    def feature_paths(self, conv: int) -> list[str]:
        return [f"cnn.{activation_index(conv, self.convs)}"]

"""VDSR (Kim et al.): a deep plain CNN with a global residual connection."""

from __future__ import annotations

import torch
from torch import nn

from kdmri.models.blocks import activation_index, plain_cnn


class VDSR(nn.Module):
    """``convs`` 3x3 convolutions with ``channels`` features; output = input + CNN(input).

    Teacher of the paper: ``VDSR(11, 64)`` = 333,569 parameters; student ``VDSR(7, 64)`` =
    185,857.
    """

    def __init__(self, convs: int = 11, channels: int = 64):
        super().__init__()
        self.convs = convs
        self.cnn = plain_cnn(1, 1, convs, channels)

    def forward(self, image: torch.Tensor, kspace=None, mask=None) -> torch.Tensor:
        return image + self.cnn(image)

    def feature_paths(self, conv: int) -> list[str]:
        return [f"cnn.{activation_index(conv, self.convs)}"]

"""Two small networks of one's own, for kdmri's ``family: python`` (see README.md here).

``TinyUnrolled`` reconstructs undersampled k-space: ``cascades`` x (a small residual CNN,
then hard data consistency with the measured k-space). ``TinySR`` is a residual CNN for
super-resolution: its forward takes the image alone, and kdmri passes nothing else.

Module paths, as attention pairs name them (``dict(model.named_modules())``), e.g. for
``TinyUnrolled(cascades=2, depth=3)``: ``cascades.0``, ``cascades.0.0`` (the first
convolution of the first cascade), ``cascades.0.1`` (its ReLU), ..., ``cascades.1.4`` (the
last convolution of the second cascade); for ``TinySR(depth=3)``: ``body.0`` ... ``body.4``.
"""

from __future__ import annotations

import torch
from torch import nn

from kdmri.mri import DataConsistency


def conv_stack(channels: int, depth: int, image_channels: int = 1) -> nn.Sequential:
    """``depth`` 3x3 convolutions, a ReLU after each but the last."""
    layers: list[nn.Module] = []
    for i in range(depth):
        c_in = image_channels if i == 0 else channels
        c_out = image_channels if i == depth - 1 else channels
        layers.append(nn.Conv2d(c_in, c_out, 3, padding=1))
        if i < depth - 1:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class TinyUnrolled(nn.Module):
    """Reconstruction: ``forward(image, kspace, mask)``, image ``(N, 1, H, W)`` float32."""

    def __init__(self, cascades: int = 2, channels: int = 16, depth: int = 3):
        super().__init__()
        self.cascades = nn.ModuleList(conv_stack(channels, depth) for _ in range(cascades))

    def forward(self, image: torch.Tensor, kspace: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        dc = DataConsistency(kspace, mask)  # prepared once, applied after every cascade
        for cnn in self.cascades:
            image = dc(image + cnn(image))
        return image


class TinySR(nn.Module):
    """Super-resolution: ``forward(image)``, output = input + CNN(input)."""

    def __init__(self, channels: int = 16, depth: int = 4):
        super().__init__()
        self.body = conv_stack(channels, depth)
        nn.init.zeros_(self.body[-1].weight)  # start as the identity, learn a correction
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image + self.body(image)

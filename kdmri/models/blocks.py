"""The plain CNN block both families are made of, and the 3x3 convolution it uses."""

from __future__ import annotations

import torch
from torch import nn

from kdmri.errors import KdmriError

_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch, "mkldnn_convolution")


class Conv3x3(nn.Conv2d):
    """A 3x3 convolution with padding 1 (same parameters and results as ``nn.Conv2d``).

    One difference, on the CPU: for a single slice of up to 20,480 pixels with one input
    channel (the first convolution of every block, run on one slice by the latency
    measurement and single-slice inference), PyTorch picks its slower reference kernel
    over the oneDNN kernel it uses for every batch of two or more slices (timings in
    docs/performance.md). This calls oneDNN for every batch, so a batch of one runs the
    kernel that batches run. Under ``torch.compile``, on other devices and in other dtypes
    it is ``nn.Conv2d``.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, kernel_size=3, padding=1)

    def _conv_forward(self, x, weight, bias):
        if (self.in_channels == 1 and _ONEDNN and x.device.type == "cpu"
                and x.dtype == weight.dtype == torch.float32
                and not torch.compiler.is_compiling()):
            return torch.mkldnn_convolution(x, weight, bias, (1, 1), (1, 1), (1, 1), 1)
        return super()._conv_forward(x, weight, bias)


def plain_cnn(in_channels: int, out_channels: int, convs: int, channels: int) -> nn.Sequential:
    """``convs`` 3x3 convolutions with ReLU between them (none after the last).

    Conv k (1-based) sits at index ``2 * (k - 1)`` and its activation (ReLU, in place: the
    convolution's output is needed by nothing else) at ``2 * (k - 1) + 1``; see
    :func:`activation_index`.
    """
    if convs < 2:
        raise KdmriError(f"a CNN block needs at least 2 convolutions, got convs={convs}")
    if channels < 1:
        raise KdmriError(f"channels must be >= 1, got {channels}")
    layers: list[nn.Module] = []
    for k in range(convs):
        c_in = in_channels if k == 0 else channels
        c_out = out_channels if k == convs - 1 else channels
        layers.append(Conv3x3(c_in, c_out))
        if k < convs - 1:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def activation_index(conv: int, convs: int) -> int:
    """Index in :func:`plain_cnn` of the activation after conv ``conv`` (1-based)."""
    if not 1 <= conv < convs:
        raise KdmriError(
            f"feature layer conv {conv} does not exist or has no activation: "
            f"expected 1..{convs - 1} for a block of {convs} convolutions"
        )
    return 2 * (conv - 1) + 1

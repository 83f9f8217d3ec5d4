"""The plain CNN block both families are made of, and the 3x3 convolution it uses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdmri.errors import KdmriError


def _narrow_output(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """3x3 convolution (padding 1) of ``x`` ``(N, C, H, W)`` to one channel, as one matrix
    product to the nine taps and :func:`torch.nn.functional.fold` summing them in place.

    ``fold`` adds tap ``(i, j)`` of the pixel at ``p`` into output ``p - (i, j) + (1, 1)``
    (the transpose of a convolution); with the kernel flipped that is the convolution's
    ``out(p) = sum_ij w(i, j) . x(p + (i, j) - (1, 1))``.
    """
    n, c, h, w = x.shape
    rows = x.permute(0, 2, 3, 1).reshape(n, h * w, c)  # a view for channels-last input
    taps = torch.matmul(weight.flip(-2, -1).reshape(c, 9).t(), rows.transpose(1, 2))
    out = F.fold(taps, (h, w), kernel_size=3, padding=1)
    return out if bias is None else out + bias.view(1, 1, 1, 1)


_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch, "mkldnn_convolution")


class Conv3x3(nn.Conv2d):
    """A 3x3 convolution with padding 1, computed on the CPU the fastest way measured for
    its shape (same parameters, results equal to :class:`torch.nn.Conv2d` up to float32
    rounding).

    The two narrow convolutions of every block are 2 % of its FLOPs but, run as
    ``nn.Conv2d`` in channels-last on the CPU, took as long as a 32-to-32 one:

    - to one channel (32->1, 64->1): oneDNN pads the output channels to a block of 16 and
      runs at the cost of a full convolution (0.48 ms for 32->1 at 64 x 64, against
      0.55 ms for 32->32); :func:`_narrow_output` takes 0.14 ms, and its backward pass is
      also faster (fwd + bwd 0.64 vs 1.20 ms);
    - from one channel (1->32): for a single slice of up to 20,480 pixels PyTorch picks its
      reference kernel (0.24 ms at 64 x 64) over oneDNN (0.09 ms), which it uses for every
      batch of two or more; this calls oneDNN for every batch.

    Under ``torch.compile``, on other devices and in other dtypes it is ``nn.Conv2d``.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, kernel_size=3, padding=1)

    def _conv_forward(self, x, weight, bias):
        fast = (x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
                and not torch.compiler.is_compiling())
        if fast and self.out_channels == 1 and self.in_channels > 1:
            return _narrow_output(x, weight, bias)
        if fast and self.in_channels == 1 and _ONEDNN:
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

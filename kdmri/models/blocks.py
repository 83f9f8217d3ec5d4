"""The plain CNN block both families are made of."""

from __future__ import annotations

from torch import nn

from kdmri.errors import KdmriError


def plain_cnn(in_channels: int, out_channels: int, convs: int, channels: int) -> nn.Sequential:
    """``convs`` 3x3 convolutions with ReLU between them (none after the last).

    Conv k (1-based) sits at index ``2 * (k - 1)`` and its activation (ReLU) at
    ``2 * (k - 1) + 1``; see :func:`activation_index`.
    """
    if convs < 2:
        raise KdmriError(f"a CNN block needs at least 2 convolutions, got convs={convs}")
    if channels < 1:
        raise KdmriError(f"channels must be >= 1, got {channels}")
    layers: list[nn.Module] = []
    for k in range(convs):
        c_in = in_channels if k == 0 else channels
        c_out = out_channels if k == convs - 1 else channels
        layers.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1))
        if k < convs - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def activation_index(conv: int, convs: int) -> int:
    """Index in :func:`plain_cnn` of the activation after conv ``conv`` (1-based)."""
    if not 1 <= conv < convs:
        raise KdmriError(
            f"feature layer conv {conv} does not exist or has no activation: "
            f"expected 1..{convs - 1} for a block of {convs} convolutions"
        )
    return 2 * (conv - 1) + 1

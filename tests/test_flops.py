"""Tests for kdmri.models.flops_per_slice against counts made by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdmri.models import DCCNN, UNet, build_model, flops_per_slice
from tests.test_unet import TINY


class Single(nn.Module):
    """One layer called as every network is: ``model(image, kspace, mask)``."""

    def __init__(self, layer: nn.Module, complex: bool = False):
        super().__init__()
        self.layer = layer
        self.complex = complex

    def forward(self, image, kspace=None, mask=None):
        return self.layer(image)


def test_a_single_convolution():
    # 3x3, 1 -> 8 channels, padding 1 on 20 x 12: every output pixel of every output
    # channel is 9 multiply-accumulates (the bias is not counted)
    assert flops_per_slice(Single(nn.Conv2d(1, 8, 3, padding=1)), 20, 12) == 2 * 20 * 12 * 8 * 9
    # 5x5, stride 2, no padding, 2 image channels (complex) -> 3: 8 x 4 outputs of 2 * 25 MACs
    conv = Single(nn.Conv2d(2, 3, 5, stride=2), complex=True)
    assert flops_per_slice(conv, 20, 12) == 2 * (8 * 4) * 3 * (2 * 25)
    # grouped: each output sees in_channels / groups inputs
    grouped = Single(nn.Sequential(nn.Conv2d(1, 4, 1), nn.Conv2d(4, 6, 3, padding=1, groups=2)))
    assert flops_per_slice(grouped, 10, 10) == 2 * 100 * 4 + 2 * 100 * 6 * 2 * 9


def test_a_transpose_convolution():
    # 2x2 stride 2, 4 -> 6 channels: each of the 5 x 7 input pixels of every input channel
    # is scattered to 2 x 2 pixels of every output channel
    layer = Single(nn.Sequential(nn.Conv2d(1, 4, 1, bias=False),
                                 nn.ConvTranspose2d(4, 6, 2, stride=2, bias=False)))
    assert flops_per_slice(layer, 5, 7) == 2 * 35 * 4 + 2 * 35 * 4 * 6 * 4


def test_a_linear_layer():
    layer = Single(nn.Sequential(nn.Flatten(), nn.Linear(6 * 4, 10)))
    assert flops_per_slice(layer, 6, 4) == 2 * 24 * 10


@pytest.mark.parametrize("shape", [(64, 64), (256, 256), (33, 20)])
def test_the_dccnn_teacher(shape):
    # 5 cascades x (1 -> 32, 3 x 32 -> 32, 32 -> 1) 3x3 convs at H x W; DC's FFTs not counted
    pixels = shape[0] * shape[1]
    per_cascade = 9 * (1 * 32 + 3 * 32 * 32 + 32 * 1) * pixels
    assert flops_per_slice(DCCNN(), *shape) == 2 * 5 * per_cascade


def unet_flops(chans: int, pools: int, height: int, width: int, image_channels: int = 1) -> int:
    """The U-Net's FLOPs level by level: level l works at floor(H / 2**l) x floor(W / 2**l)."""
    w = [chans * 2**level for level in range(pools + 1)]
    pixels = [(height >> level) * (width >> level) for level in range(pools + 1)]
    macs = 9 * (image_channels * w[0] + w[0] * w[0]) * pixels[0]
    for level in range(1, pools + 1):
        macs += 9 * (w[level - 1] * w[level] + w[level] * w[level]) * pixels[level]
    for level in range(pools):
        macs += 4 * w[level + 1] * w[level] * pixels[level + 1]  # transpose conv, per input
        macs += 9 * (2 * w[level] * w[level] + w[level] * w[level]) * pixels[level]
    macs += w[0] * image_channels * pixels[0]  # the final 1x1
    return 2 * macs


@pytest.mark.parametrize("chans, pools, shape, expected", [
    (32, 3, (64, 64), 1_147_666_432),  # the teacher default
    (16, 3, (64, 64), 287_571_968),  # the student default
    (4, 2, (17, 23), None),
])
def test_the_unet(chans, pools, shape, expected):
    model = UNet(chans=chans, num_pool_layers=pools)
    assert flops_per_slice(model, *shape) == unet_flops(chans, pools, *shape)
    if expected is not None:
        assert flops_per_slice(model, *shape) == expected


def test_a_complex_network_counts_its_two_image_channels_and_keeps_its_mode():
    model = build_model({**TINY, "complex": True}).train()
    assert flops_per_slice(model, 16, 16) == unet_flops(4, 2, 16, 16, image_channels=2)
    assert model.training
    assert flops_per_slice(model.eval(), 16, 16) == unet_flops(4, 2, 16, 16, 2)
    assert not model.training
    assert not any(m._forward_hooks for m in model.modules())  # no hook left behind


def test_channels_last_and_flops_do_not_depend_on_layout():
    model = DCCNN(cascades=1, convs=2, channels=4).to(memory_format=torch.channels_last)
    assert flops_per_slice(model, 8, 8) == 2 * 9 * (4 + 4) * 64

"""U-Net (Ronneberger et al.) as the fastMRI baseline (Zbontar et al.) builds it, with a
residual to the input and an optional data-consistency step.

The architecture follows the facts stated in the fastMRI paper and repository: each level
is a conv block of two (3x3 convolution without bias -> instance norm without affine
parameters -> LeakyReLU(0.2) -> channel dropout); the encoder halves the size by 2x2 max
pooling and doubles the channels (``chans`` at full size, ``chans * 2**l`` at level l);
the bottleneck block has ``chans * 2**num_pool_layers`` channels; each decoder level is a
2x2 stride-2 transpose convolution (no bias) -> instance norm -> LeakyReLU(0.2), the skip
of its encoder level concatenated, and a conv block; a final 1x1 convolution (with bias)
maps to the image channels. (fastMRI's paper describes max pooling; its repository's code
averages. kdmri takes max pooling.)

Sizes not divisible by ``2**num_pool_layers`` work as in fastMRI's U-Net: pooling floors
the size, and where a decoder level's upsampled map is one row or column short of the
skip it is reflect-padded by one on the bottom or right. So every level's maps have the
size of the input at that level (``floor(H / 2**l)``), whatever the depth, and nothing is
cropped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdmri.errors import KdmriError
from kdmri.mri import DataConsistency

NEGATIVE_SLOPE = 0.2


class ConvBlock(nn.Sequential):
    """Two (3x3 conv without bias -> instance norm -> LeakyReLU(0.2) -> dropout)."""

    def __init__(self, in_channels: int, out_channels: int, drop_prob: float):
        layers: list[nn.Module] = []
        for c_in in (in_channels, out_channels):
            layers += [
                nn.Conv2d(c_in, out_channels, kernel_size=3, padding=1, bias=False),
                nn.InstanceNorm2d(out_channels),
                nn.LeakyReLU(NEGATIVE_SLOPE, inplace=True),
                nn.Dropout2d(drop_prob),
            ]
        super().__init__(*layers)


class UpBlock(nn.Sequential):
    """2x2 stride-2 transpose conv without bias -> instance norm -> LeakyReLU(0.2)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2, bias=False),
            nn.InstanceNorm2d(out_channels),
            nn.LeakyReLU(NEGATIVE_SLOPE, inplace=True),
        )


class UNet(nn.Module):
    """fastMRI's U-Net with ``num_pool_layers`` poolings and ``chans`` features at full
    size; output = DC(input + U-Net(input)), or input + U-Net(input) with ``dc=False``.

    ``dc=True`` (the default) applies hard data consistency
    (:class:`~kdmri.mri.DataConsistency`, as each DC-CNN cascade does) to the output with
    the measured k-space and mask of the call: the undersampled k-space in reconstruction,
    the kept central block of k-space in super-resolution (its low-resolution input is that
    block, measured too). ``dc=False`` is the plain image-to-image U-Net; it ignores
    ``kspace`` and ``mask``, as VDSR does.

    ``complex=True``: the image is complex, taken and returned as two channels (real,
    imaginary); the first convolution and the final 1x1 then have two image channels and
    data consistency keeps the complex result.

    Initialisation: PyTorch's defaults, except the final 1x1 convolution, which starts at
    zero (weights and bias), so every U-Net starts as the identity (then DC) and learns a
    correction, for the reason VDSR's last layer does (:class:`~kdmri.models.vdsr.VDSR`).

    The defaults (``chans=32, num_pool_layers=3``) are the teacher at the demo size
    (64 x 64: the bottleneck works at 8 x 8); ``chans=16`` with the same depth is its
    student, a quarter of the parameters. Counts and FLOPs: docs/networks.md.

    Feature layers (``feature_paths(k)``, 1-based, in forward order) are the outputs of
    the ``2 * num_pool_layers + 1`` conv blocks: k = 1..L the encoder levels (full size
    first, ``down.{k-1}``), k = L + 1 the bottleneck (``bottleneck``), k = L + 2..2L + 1
    the decoder levels (coarsest first, ``up.{k-L-2}``; the last one is at full size).
    Block k and block 2L + 2 - k work at the same size.

    >>> model = UNet(chans=4, num_pool_layers=2)
    >>> [model.feature_paths(k)[0] for k in range(1, 6)]
    ['down.0', 'down.1', 'bottleneck', 'up.0', 'up.1']
    """

    def __init__(self, chans: int = 32, num_pool_layers: int = 3, drop_prob: float = 0.0,
                 dc: bool = True, complex: bool = False):
        super().__init__()
        if chans < 1:
            raise KdmriError(f"chans must be >= 1, got {chans}")
        if num_pool_layers < 1:
            raise KdmriError(f"num_pool_layers must be >= 1, got {num_pool_layers}")
        if not 0.0 <= drop_prob < 1.0:
            raise KdmriError(f"drop_prob must be in [0, 1), got {drop_prob}")
        self.num_pool_layers = num_pool_layers
        self.dc = dc
        self.complex = complex
        image_channels = 2 if complex else 1
        widths = [chans * 2**level for level in range(num_pool_layers + 1)]
        self.down = nn.ModuleList(
            ConvBlock(image_channels if level == 0 else widths[level - 1], widths[level],
                      drop_prob)
            for level in range(num_pool_layers))
        self.bottleneck = ConvBlock(widths[-2], widths[-1], drop_prob)
        levels = range(num_pool_layers - 1, -1, -1)  # coarsest first
        self.up_transpose = nn.ModuleList(UpBlock(widths[level + 1], widths[level])
                                          for level in levels)
        self.up = nn.ModuleList(ConvBlock(2 * widths[level], widths[level], drop_prob)
                                for level in levels)
        self.final = nn.Conv2d(chans, image_channels, kernel_size=1)
        nn.init.zeros_(self.final.weight)
        nn.init.zeros_(self.final.bias)

    def unet(self, image: torch.Tensor) -> torch.Tensor:
        """The U-Net alone (no residual, no DC)."""
        skips = []
        x = image
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, kernel_size=2, stride=2)
        x = self.bottleneck(x)
        for transpose, block in zip(self.up_transpose, self.up, strict=True):
            skip = skips.pop()
            x = transpose(x)
            pad_w = skip.shape[-1] - x.shape[-1]  # 0 or 1: pooling floors odd sizes
            pad_h = skip.shape[-2] - x.shape[-2]
            if pad_w or pad_h:
                x = F.pad(x, [0, pad_w, 0, pad_h], mode="reflect")
            x = block(torch.cat([x, skip], dim=1))
        return self.final(x)

    def forward(self, image: torch.Tensor, kspace: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        smallest = 2 ** (self.num_pool_layers + 1)  # instance norm needs 2 x 2 at the bottom
        if min(image.shape[-2:]) < smallest:
            raise KdmriError(
                f"a U-Net with num_pool_layers={self.num_pool_layers} needs images of at "
                f"least {smallest} pixels a side, got {tuple(image.shape[-2:])}")
        output = image + self.unet(image)
        if self.dc:
            if kspace is None or mask is None:
                raise KdmriError("a U-Net with dc: true needs the measured k-space and mask")
            output = DataConsistency(kspace, mask, complex=self.complex)(output)
        return output

    def feature_paths(self, conv: int) -> list[str]:
        pools = self.num_pool_layers
        if not 1 <= conv <= 2 * pools + 1:
            raise KdmriError(
                f"feature layer conv {conv} does not exist: a U-Net with num_pool_layers="
                f"{pools} has conv blocks 1..{2 * pools + 1} (1..{pools} encoder, "
                f"{pools + 1} bottleneck, {pools + 2}..{2 * pools + 1} decoder)"
            )
        if conv <= pools:
            return [f"down.{conv - 1}"]
        if conv == pools + 1:
            return ["bottleneck"]
        return [f"up.{conv - pools - 2}"]

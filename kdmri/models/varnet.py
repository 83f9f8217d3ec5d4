"""E2E-VarNet (Sriram et al., MICCAI 2020): unrolled cascades on multi-coil k-space, with
sensitivity maps estimated from the auto-calibration (ACS) lines by a network trained with
the rest, end to end.

Written from the paper's formulas on kdmri's SENSE operators (:mod:`kdmri.mri`): the
expansion ``E x = F(S_c x)`` (:func:`~kdmri.mri.sense_expand`), the reduction
``R k = sum_c conj(S_c) F^H k_c`` (:func:`~kdmri.mri.sense_reduce`), the soft
data-consistency step (:class:`~kdmri.mri.SoftDataConsistency`) and root-sum-of-squares
(:func:`~kdmri.mri.rss`). With the measured coil k-space ``k0`` and the 0/1 mask ``M``:

1. Sensitivity maps: the ACS lines of ``k0`` alone (every other column zeroed) -> coil
   images (``ifft2c``) -> a U-Net on each coil image (the coils batched, each as two
   channels, real and imaginary) -> the maps divided by their RSS over the coils, so that
   ``sum_c |S_c|^2 = 1``.
2. ``k = k0``, then each cascade t: ``k <- k - eta_t M (k - k0) - E(U_t(R(k)))``, with
   ``eta_t`` a learnt scalar (starting at 1) and ``U_t`` a U-Net on the complex image.
3. Output: ``rss(ifft2c(k))``, the magnitude image ``(N, 1, H, W)`` (fastMRI's multi-coil
   target).

Both U-Nets are kdmri's (:class:`~kdmri.models.unet.UNet` with ``complex=True``: two
channels in and out) run through its :meth:`~kdmri.models.unet.UNet.unet` (no residual, no
data consistency), inside E2E-VarNet's per-sample normalisation (:class:`NormUNet`). Its
final 1x1 convolution is re-initialised to PyTorch's default here: the U-Net zeroes it to
start as the identity through its residual, which these U-Nets do not have (a zero
regulariser would block the gradient of everything before it, and zero maps would be no
maps). Sizes not divisible by ``2**pools`` are handled by the U-Net itself (floored
pooling, a one-pixel reflect pad on the way up), so nothing is padded or cropped here.
"""

from __future__ import annotations

import torch
from torch import nn

from kdmri.errors import KdmriError
from kdmri.models.unet import UNet
from kdmri.mri import (
    SoftDataConsistency,
    from_channels,
    ifft2c,
    rss,
    sense_expand,
    sense_reduce,
    to_channels,
)

#: Added to the variance of the per-sample normalisation and to the maps' RSS.
EPS = 1e-12


class NormUNet(nn.Module):
    """A U-Net on complex images ``(B, 1, H, W)`` with E2E-VarNet's per-sample
    normalisation: the image as two channels (real, imaginary), minus its mean, divided by
    its standard deviation (both over each sample's channels and pixels), through the U-Net,
    then times that standard deviation plus that mean. So ``NormUNet(a x) = a NormUNet(x)``
    for every real ``a > 0``."""

    def __init__(self, chans: int, pools: int):
        super().__init__()
        self.unet = UNet(chans=chans, num_pool_layers=pools, dc=False, complex=True)
        self.unet.final.reset_parameters()  # no residual here: see the module's docstring

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        smallest = 2 ** (self.unet.num_pool_layers + 1)  # instance norm needs 2 x 2 at the bottom
        if min(image.shape[-2:]) < smallest:
            raise KdmriError(
                f"a VarNet U-Net with pools={self.unet.num_pool_layers} needs images of at least "
                f"{smallest} pixels a side, got {tuple(image.shape[-2:])}")
        x = to_channels(image)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = torch.sqrt(x.var(dim=(1, 2, 3), keepdim=True) + EPS)
        return from_channels(self.unet.unet((x - mean) / std) * std + mean)


class SensitivityNet(nn.Module):
    """Coil sensitivity maps from the ACS-only coil k-space ``(N, C, H, W)``: a
    :class:`NormUNet` on each coil image, the maps normalised by their RSS over the coils
    (``sum_c |S_c|^2 = 1`` wherever the RSS is well above ``EPS``)."""

    def __init__(self, chans: int, pools: int):
        super().__init__()
        self.norm_unet = NormUNet(chans, pools)

    def forward(self, acs_kspace: torch.Tensor) -> torch.Tensor:
        n, c, h, w = acs_kspace.shape
        images = ifft2c(acs_kspace).reshape(n * c, 1, h, w)  # the coils batched
        maps = self.norm_unet(images).reshape(n, c, h, w)
        return maps / (rss(maps, dim=1, keepdim=True) + EPS)


class VarNetCascade(nn.Module):
    """One cascade: ``k - eta M (k - k0) - E(U(R(k)))`` (module ``dc`` holds ``eta``,
    module ``regulariser`` is ``U``)."""

    def __init__(self, chans: int, pools: int):
        super().__init__()
        self.regulariser = NormUNet(chans, pools)
        self.dc = SoftDataConsistency()

    def forward(self, kspace: torch.Tensor, measured: torch.Tensor, mask: torch.Tensor,
                maps: torch.Tensor) -> torch.Tensor:
        update = sense_expand(self.regulariser(sense_reduce(kspace, maps)), maps)
        return self.dc(kspace, measured, mask) - update


def _mask4(mask: torch.Tensor) -> torch.Tensor:
    """The mask as a float32 4-D tensor broadcastable to ``(N, C, H, W)`` (leading ones
    prepended, as broadcasting does: ``(W,)`` -> ``(1, 1, 1, W)``)."""
    if mask.dim() > 4:
        raise KdmriError(f"mask must have at most 4 dims, got shape {tuple(mask.shape)}")
    shape = [1] * (4 - mask.dim()) + list(mask.shape)
    return mask.to(torch.float32).reshape(shape)


def acs_columns(mask: torch.Tensor, width: int,
                num_low_frequencies: int | None = None) -> torch.Tensor:
    """The ACS columns, 0/1 float32 ``(N or 1, 1, 1, W)``: with ``num_low_frequencies``
    n, the n central columns (``(W - n + 1) // 2`` onwards, fastMRI's convention); else,
    from the mask (as :func:`_mask4` reads it; a column is sampled where the mask's middle
    row is 1), the contiguous run of sampled columns around the centre column ``W // 2``
    (none if the centre is not sampled)."""
    if num_low_frequencies is not None:
        if not 1 <= num_low_frequencies <= width:
            raise KdmriError(f"num_low_frequencies must be in 1..{width}, got {num_low_frequencies}")
        start = (width - num_low_frequencies + 1) // 2
        columns = torch.zeros(width, dtype=torch.float32, device=mask.device)
        columns[start:start + num_low_frequencies] = 1.0
        return columns.reshape(1, 1, 1, width)
    m = _mask4(mask)
    m = m.expand(m.shape[0], m.shape[1], m.shape[2], width)
    sampled = (m[:, 0, m.shape[2] // 2, :] > 0.5).to(torch.float32)  # (N or 1, W)
    centre = width // 2
    # column j < centre is ACS when all of j..centre are sampled; j >= centre when centre..j are
    left = torch.flip(torch.cumprod(torch.flip(sampled[:, :centre + 1], [1]), dim=1), [1])
    right = torch.cumprod(sampled[:, centre:], dim=1)
    return torch.cat([left[:, :centre], right], dim=1).reshape(-1, 1, 1, width)


class VarNet(nn.Module):
    """E2E-VarNet on multi-coil k-space: ``cascades`` cascades, each a U-Net of ``chans``
    features at full size and ``pools`` poolings, with maps from a U-Net of ``sens_chans``
    and ``sens_pools`` (the formulas: the module's docstring).

    Called as ``model(kspace, mask)`` (not kdmri's single-coil ``model(image, kspace,
    mask)``: its registry entry says ``multicoil``): ``kspace`` the measured coil k-space
    complex64 ``(N, C, H, W)``, zero where not sampled; ``mask`` 0/1 broadcastable to it
    (``(N, 1, 1, W)``, ``(N, 1, H, W)``, ``(W,)``, ``(1, W)``, ``(H, W)``); optional
    ``num_low_frequencies``, the ACS width, else the ACS lines are read from the mask
    (:func:`acs_columns`). Returns the RSS image ``(N, 1, H, W)`` float32;
    :meth:`kspace_forward` returns the final coil k-space, :meth:`sensitivity_maps` the
    maps.

    The defaults are the teacher at the demo size (64 x 64: the U-Nets' bottlenecks work
    at 16 x 16): ``cascades=6, chans=12, pools=2, sens_chans=4, sens_pools=2``, 401,060
    parameters; the student ``chans=6`` (same cascades, so layer pairs by number match
    cascade by cascade) has 106,148; ``cascades=3, chans=6`` 56,747 (pairs then by module
    path). ``complex`` is kdmri's network flag: this network reads complex k-space and
    returns a magnitude image, and only ``complex=False`` is accepted.

    Feature layers (``feature_paths(k)``, 1-based) are the conv blocks of the regulariser
    U-Nets, numbered as :meth:`kdmri.models.unet.UNet.feature_paths` numbers them, one path
    per cascade (``cascades.<c>.regulariser.unet.<block>``).

    >>> VarNet(cascades=2, chans=4, pools=2).feature_paths(1)
    ['cascades.0.regulariser.unet.down.0', 'cascades.1.regulariser.unet.down.0']
    """

    def __init__(self, cascades: int = 6, chans: int = 12, pools: int = 2, sens_chans: int = 4,
                 sens_pools: int = 2, complex: bool = False):
        super().__init__()
        if cascades < 1:
            raise KdmriError(f"cascades must be >= 1, got {cascades}")
        if complex:
            raise KdmriError("family varnet: complex must be false (it returns the RSS "
                             "magnitude image of complex coil k-space)")
        self.complex = False
        self.sens_net = SensitivityNet(sens_chans, sens_pools)
        self.cascades = nn.ModuleList(VarNetCascade(chans, pools) for _ in range(cascades))

    def sensitivity_maps(self, kspace: torch.Tensor, mask: torch.Tensor,
                         num_low_frequencies: int | None = None) -> torch.Tensor:
        """The maps ``(N, C, H, W)`` complex64 from the ACS lines of ``kspace``."""
        acs = acs_columns(mask, kspace.shape[-1], num_low_frequencies)
        return self.sens_net(kspace * acs)

    def kspace_forward(self, kspace: torch.Tensor, mask: torch.Tensor,
                       num_low_frequencies: int | None = None) -> torch.Tensor:
        """The coil k-space ``(N, C, H, W)`` complex64 after the last cascade."""
        if kspace.dim() != 4 or not kspace.is_complex():
            raise KdmriError(f"varnet takes complex coil k-space (N, C, H, W), got "
                             f"{tuple(kspace.shape)} {kspace.dtype}")
        mask = _mask4(mask)
        maps = self.sensitivity_maps(kspace, mask, num_low_frequencies)
        k = kspace
        for cascade in self.cascades:
            k = cascade(k, kspace, mask, maps)
        return k

    def forward(self, kspace: torch.Tensor, mask: torch.Tensor,
                num_low_frequencies: int | None = None) -> torch.Tensor:
        return rss(ifft2c(self.kspace_forward(kspace, mask, num_low_frequencies)), dim=1,
                   keepdim=True)

    def feature_paths(self, conv: int) -> list[str]:
        block = self.cascades[0].regulariser.unet.feature_paths(conv)[0]
        return [f"cascades.{c}.regulariser.unet.{block}" for c in range(len(self.cascades))]

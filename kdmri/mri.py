"""MRI operators on torch tensors: centred orthonormal FFTs, undersampling, data consistency.

Conventions: images are ``(..., H, W)``; the last two dims are spatial, H is the
frequency-encode (read-out) direction and W the phase-encode direction, so a Cartesian
mask samples whole columns. k-space is complex64 with the zero frequency at the centre.
Masks are real ``(H, W)`` (or broadcastable to the data, e.g. ``(1, W)``) with values 0/1
and broadcast over any leading batch dims. Nothing here ever promotes to float64.

Images are real-valued magnitude images; a complex image is mapped back to a real one
with :func:`real_image` (the real part), the single place where that choice is made.
"""

from __future__ import annotations

import torch


def _check_spatial(x: torch.Tensor, name: str) -> None:
    if x.ndim < 2:
        raise ValueError(f"{name} must have at least 2 dims (..., H, W), got shape {tuple(x.shape)}")


def _centred(transform, data: torch.Tensor, name: str) -> torch.Tensor:
    _check_spatial(data, name)
    if not data.is_complex():
        data = data.to(torch.complex64)
    shifted = torch.fft.ifftshift(data, dim=(-2, -1))
    return torch.fft.fftshift(transform(shifted, norm="ortho"), dim=(-2, -1))


def fft2c(image: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2-D FFT over the last two dims; real input is promoted to complex64."""
    return _centred(torch.fft.fft2, image, "image")


def ifft2c(kspace: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2-D inverse FFT over the last two dims (complex in, complex out)."""
    return _centred(torch.fft.ifft2, kspace, "kspace")


def real_image(image: torch.Tensor) -> torch.Tensor:
    """The real image that kdmri's networks and metrics see for a complex image."""
    return image.real if image.is_complex() else image


def undersample(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Retrospectively undersampled k-space ``m * FFT(image)`` (complex64)."""
    return fft2c(image) * mask.to(torch.float32)


def zero_filled(kspace: torch.Tensor) -> torch.Tensor:
    """Zero-filled reconstruction: the inverse FFT of the (masked) k-space, complex64."""
    return ifft2c(kspace)


class DataConsistency:
    """Hard data consistency against one measurement: ``k = m * k0 + (1 - m) * FFT(x)``,
    returned as the real image of ``IFFT(k)``.

    ``measured`` is the measured k-space ``k0`` (zero where not sampled), ``mask`` the 0/1
    sampling mask. Both are moved to FFT order (zero frequency first) once, here, so that a
    network applying DC many times (DC-CNN's cascades) pays two shifts per call instead of
    four; the result equals the centred formula element for element (shifts are
    permutations). Always computed in float32/complex64, also under mixed precision.
    """

    def __init__(self, measured: torch.Tensor, mask: torch.Tensor):
        _check_spatial(measured, "kspace")
        m = mask.to(torch.float32)
        if m.ndim < 2:
            m = m.reshape(1, -1)  # a (W,) column mask
        m = torch.fft.ifftshift(m, dim=(-2, -1))
        self._kept = m * torch.fft.ifftshift(measured, dim=(-2, -1))
        self._free = 1.0 - m

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """DC of the network's real prediction ``image`` ``(..., H, W)``."""
        _check_spatial(image, "image")
        with torch.autocast(device_type=image.device.type, enabled=False):
            x = torch.fft.ifftshift(image.float(), dim=(-2, -1)).to(torch.complex64)
            k = self._kept + self._free * torch.fft.fft2(x, norm="ortho")
            return torch.fft.fftshift(real_image(torch.fft.ifft2(k, norm="ortho")), dim=(-2, -1))


def data_consistency(
    image: torch.Tensor, measured: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Hard data consistency of ``image`` with ``measured`` k-space: see :class:`DataConsistency`."""
    return DataConsistency(measured, mask)(image)

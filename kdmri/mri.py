"""MRI operators on torch tensors: centred orthonormal FFTs, undersampling, data consistency.

Conventions: images are ``(..., H, W)``; the last two dims are spatial, H is the
frequency-encode (read-out) direction and W the phase-encode direction, so a Cartesian
mask samples whole columns. k-space is complex64 with the zero frequency at the centre.
Masks are real ``(H, W)`` (or broadcastable to the data, e.g. ``(1, W)``) with values 0/1
and broadcast over any leading batch dims. Nothing here ever promotes to float64.

Images are real-valued magnitude images, or complex images where a dataset is prepared
from acquired k-space (``source: kspace``). On the magnitude path a complex image is
mapped back to a real one with :func:`real_image` (the real part), the single place where
that choice is made. On the complex path networks see a complex image ``(..., 1, H, W)``
as two real channels ``(..., 2, H, W)`` (real, imaginary): :func:`to_channels` and
:func:`from_channels` convert, and :class:`DataConsistency` built with ``complex=True``
keeps the whole complex result.
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


def to_channels(image: torch.Tensor) -> torch.Tensor:
    """A complex image ``(..., 1, H, W)`` as two real channels ``(..., 2, H, W)``: real and
    imaginary part (float32)."""
    return torch.cat([image.real, image.imag], dim=-3).float()


def from_channels(image: torch.Tensor) -> torch.Tensor:
    """Two real channels ``(..., 2, H, W)`` (real, imaginary) as a complex image
    ``(..., 1, H, W)`` (complex64): the inverse of :func:`to_channels`."""
    if image.ndim < 3 or image.shape[-3] != 2:
        raise ValueError(f"expected two channels (..., 2, H, W), got shape {tuple(image.shape)}")
    return torch.complex(image[..., 0:1, :, :].float(), image[..., 1:2, :, :].float())


def undersample(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Retrospectively undersampled k-space ``m * FFT(image)`` (complex64)."""
    return fft2c(image) * mask.to(torch.float32)


def zero_filled(kspace: torch.Tensor) -> torch.Tensor:
    """Zero-filled reconstruction: the inverse FFT of the (masked) k-space, complex64."""
    return ifft2c(kspace)


class DataConsistency:
    """Hard data consistency against one measurement: ``k = m * k0 + (1 - m) * FFT(x)``,
    returned as the real image of ``IFFT(k)`` or, with ``complex=True``, as the whole
    complex ``IFFT(k)`` in two channels: the image is then ``(..., 2, H, W)`` (real,
    imaginary; :func:`to_channels`) against ``measured`` ``(..., 1, H, W)``, and so is
    the result.

    ``measured`` is the measured k-space ``k0`` (zero where not sampled), ``mask`` the 0/1
    sampling mask. Both are prepared once, here, so that a network applying DC many times
    (DC-CNN's cascades) pays as little as possible per call. Always computed in
    float32/complex64, also under mixed precision.

    The centred transforms shift the image and k-space by half their size. For even H and
    W that shift is, on the other side of the transform, a multiplication by the signs
    ``(-1)^(kh + kw)``, and the signs of both transforms meet and cancel except on the
    measured part. So each call runs ``IFFT(s * m * k0 + (1 - m) * FFT(x))`` with the first
    term prepared, and no shift at all (what that saves: docs/performance.md). For H and
    W powers of two the result equals the shifted form's bit for bit with PyTorch's CPU
    FFT (MKL); other even sizes agree within float32 rounding. Odd sizes keep the shifts
    (moved to FFT order here, two shifts per call).
    """

    def __init__(self, measured: torch.Tensor, mask: torch.Tensor, complex: bool = False):
        _check_spatial(measured, "kspace")
        self.complex = complex
        m = mask.to(torch.float32)
        if m.ndim < 2:
            m = m.reshape(1, -1)  # a (W,) column mask
        m = torch.fft.ifftshift(m, dim=(-2, -1))
        self._kept = m * torch.fft.ifftshift(measured, dim=(-2, -1))
        self._free = 1.0 - m
        height, width = measured.shape[-2:]
        self._shifted = height % 2 == 1 or width % 2 == 1
        if not self._shifted:
            self._kept = self._kept * _alternating_signs(height, width, measured.device)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """DC of the network's prediction ``image``: real ``(..., H, W)``, or with
        ``complex=True`` two channels ``(..., 2, H, W)``."""
        _check_spatial(image, "image")
        with torch.autocast(device_type=image.device.type, enabled=False):
            x = from_channels(image) if self.complex else image.float()
            if self._shifted:
                x = torch.fft.ifftshift(x, dim=(-2, -1))
            k = self._kept + self._free * torch.fft.fft2(x.to(torch.complex64), norm="ortho")
            x = torch.fft.ifft2(k, norm="ortho")
            if self.complex:
                x = torch.fft.fftshift(x, dim=(-2, -1)) if self._shifted else x
                return to_channels(x)
            x = real_image(x)
            # a real view of the complex result would keep that buffer alive and be strided
            return torch.fft.fftshift(x, dim=(-2, -1)) if self._shifted else x.contiguous()


def _alternating_signs(height: int, width: int, device: torch.device) -> torch.Tensor:
    """``(-1)^(i + j)`` on an ``(height, width)`` grid: the 2-D DFT of a signal shifted by
    half its (even) size is the DFT of the signal times these signs."""
    rows = 1 - 2 * (torch.arange(height, device=device) % 2)
    cols = 1 - 2 * (torch.arange(width, device=device) % 2)
    return (rows[:, None] * cols[None, :]).to(torch.float32)


def data_consistency(
    image: torch.Tensor, measured: torch.Tensor, mask: torch.Tensor, complex: bool = False
) -> torch.Tensor:
    """Hard data consistency of ``image`` with ``measured`` k-space: see :class:`DataConsistency`."""
    return DataConsistency(measured, mask, complex=complex)(image)

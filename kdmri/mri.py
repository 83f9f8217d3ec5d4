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

Data consistency is written once: :func:`prepare_dc` (the measurement's part, once per
batch) and :func:`apply_dc` (each call), which :class:`DataConsistency` runs for the eager
networks and :mod:`kdmri.export` for the exported ones; both compile with TorchScript and
export to ONNX. The centred inverse FFT on NumPy arrays, for code that does not import
torch: :func:`kdmri.numpy_fft.ifft2c`.

Multi-coil data (fastMRI's multi-coil files) put the coils in dim -3: coil images and coil
k-space ``(..., C, H, W)`` and sensitivity maps ``S`` of the same shape. The SENSE model
and what acts on it are written here once: :func:`sense_expand` and :func:`sense_reduce`
(``F(S_c x)`` and ``sum_c conj(S_c) F^H k_c``), the masked forward operator
:func:`sense_forward` and its adjoint :func:`sense_adjoint`, coil combination
(:func:`coil_combine`) and root-sum-of-squares (:func:`rss`), hard multi-coil data
consistency (:class:`MulticoilDataConsistency`, on the single-coil core) and E2E-VarNet's
soft step (:func:`soft_data_consistency`, :class:`SoftDataConsistency`).
"""

from __future__ import annotations

import torch


def _check_spatial(x: torch.Tensor, name: str) -> None:
    if x.ndim < 2:
        raise ValueError(f"{name} must have at least 2 dims (..., H, W), got shape {tuple(x.shape)}")


def _check_channels(image: torch.Tensor) -> None:
    if image.ndim < 3 or image.shape[-3] != 2:
        raise ValueError(f"expected two channels (..., 2, H, W), got shape {tuple(image.shape)}")


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
    _check_channels(image)
    return torch.complex(image[..., 0:1, :, :].float(), image[..., 1:2, :, :].float())


def undersample(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Retrospectively undersampled k-space ``m * FFT(image)`` (complex64)."""
    return fft2c(image) * mask.to(torch.float32)


def zero_filled(kspace: torch.Tensor) -> torch.Tensor:
    """Zero-filled reconstruction: the inverse FFT of the (masked) k-space, complex64."""
    return ifft2c(kspace)


def _half_roll(x: torch.Tensor, dim: int, inverse: bool) -> torch.Tensor:
    """``ifftshift`` (``inverse``) or ``fftshift`` of ``x`` along ``dim``, written as two
    slices joined: the same permutation as :func:`torch.fft.ifftshift` / ``fftshift``,
    in a form the ONNX exporter takes (a ``torch.roll`` by a size-dependent shift fails)."""
    n = x.shape[dim]
    start = n // 2 if inverse else (n + 1) // 2
    return torch.cat([x.narrow(dim, start, n - start), x.narrow(dim, 0, start)], dim)


def _shift2(x: torch.Tensor, dim: int, inverse: bool) -> torch.Tensor:
    """:func:`_half_roll` along ``dim`` and ``dim + 1`` (the two spatial dims)."""
    return _half_roll(_half_roll(x, dim, inverse), dim + 1, inverse)


def _alternating_signs(height: int, width: int, device: torch.device) -> torch.Tensor:
    """``(-1)^(i + j)`` on an ``(height, width)`` grid: the 2-D DFT of a signal shifted by
    half its (even) size is the DFT of the signal times these signs."""
    rows = 1 - 2 * (torch.arange(height, device=device) % 2)
    cols = 1 - 2 * (torch.arange(width, device=device) % 2)
    return (rows[:, None] * cols[None, :]).to(torch.float32)


def prepare_dc(measured: torch.Tensor, mask: torch.Tensor,
               sign_form: bool = True) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """The parts of hard data consistency that depend on the measurement only, in FFT
    order (zero frequency first): ``(kept, free, shifted)`` for :func:`apply_dc`.

    ``measured``: the measured centred k-space ``k0`` as real pairs ``(..., H, W, 2)``
    (real, imaginary: :func:`torch.view_as_real`; ONNX has no complex inputs); ``mask``:
    the 0/1 sampling mask, broadcastable to ``(H, W)`` (a ``(W,)`` column mask too).
    ``free = 1 - m`` and ``kept = m * k0``, both moved to FFT order (``ifftshift``).

    The centred transforms shift the image and k-space by half their size. For even H and
    W that shift is, on the other side of the transform, a multiplication by the signs
    ``s = (-1)^(kh + kw)``, and the signs of both transforms meet and cancel except on the
    measured part. So with ``sign_form`` and even sizes, ``kept = s * m * k0`` and
    ``shifted`` is False: :func:`apply_dc` then runs ``IFFT(kept + free * FFT(x))`` with no
    shift at all. For H and W powers of two that equals the shifted form bit for bit with
    PyTorch's CPU FFT (MKL); other even sizes agree within float32 rounding. Odd sizes,
    or ``sign_form=False`` (the ONNX graph, whose sizes are not known when it is built),
    give ``shifted`` True: the image is shifted to FFT order and back around the
    transforms, two shifts per call. Scriptable by TorchScript and exportable to ONNX.
    """
    m = mask.to(torch.float32)
    if m.dim() < 2:
        m = m.reshape(1, -1)  # a (W,) column mask
    m = _shift2(m, -2, True)
    kept = m * torch.view_as_complex(_shift2(measured, -3, True).contiguous())
    free = 1.0 - m
    shifted = True
    if sign_form:
        height, width = measured.shape[-3], measured.shape[-2]
        shifted = height % 2 == 1 or width % 2 == 1
        if not shifted:
            kept = kept * _alternating_signs(height, width, measured.device)
    return kept, free, shifted


def apply_dc(image: torch.Tensor, kept: torch.Tensor, free: torch.Tensor, shifted: bool,
             two_channels: bool) -> torch.Tensor:
    """Hard data consistency of a network's image with a measurement prepared by
    :func:`prepare_dc`: ``IFFT(kept + free * FFT(x))`` in FFT order, i.e. in centred terms
    ``IFFT(m * k0 + (1 - m) * FFT(x))``, computed in float32 / complex64.

    ``image``: real ``(..., H, W)`` whose result is the real part, or with
    ``two_channels`` the complex image as channels ``(..., 2, H, W)`` (real, imaginary:
    :func:`to_channels`) whose result is the whole complex image in two channels. The
    result has the shape of ``image``. Scriptable by TorchScript and exportable to ONNX
    (with ``two_channels`` False); :class:`DataConsistency` and the exported networks of
    :mod:`kdmri.export` all run this.
    """
    x = image.to(torch.float32)
    if shifted:
        x = _shift2(x, -2, True)
    if two_channels:
        z = torch.complex(x[..., 0:1, :, :], x[..., 1:2, :, :])
    else:
        z = x.to(torch.complex64)
    z = torch.fft.ifft2(kept + free * torch.fft.fft2(z, norm="ortho"), norm="ortho")
    if two_channels:
        x = torch.cat([z.real, z.imag], dim=-3)
    else:
        x = z.real
    # a real view of the complex result would keep that buffer alive and be strided
    return _shift2(x, -2, False) if shifted else x.contiguous()


class DataConsistency:
    """Hard data consistency against one measurement: ``k = m * k0 + (1 - m) * FFT(x)``,
    returned as the real image of ``IFFT(k)`` or, with ``complex=True``, as the whole
    complex ``IFFT(k)`` in two channels: the image is then ``(..., 2, H, W)`` (real,
    imaginary; :func:`to_channels`) against ``measured`` ``(..., 1, H, W)``, and so is
    the result.

    ``measured`` is the measured k-space ``k0`` (zero where not sampled), ``mask`` the 0/1
    sampling mask. Both are prepared once, here (:func:`prepare_dc`), so that a network
    applying DC many times (DC-CNN's cascades) pays as little as possible per call
    (:func:`apply_dc`). Always computed in float32/complex64, also under mixed precision.
    For even H and W no call shifts the image (the sign form of :func:`prepare_dc`; what
    that saves: docs/performance.md); odd sizes keep the shifts.
    """

    def __init__(self, measured: torch.Tensor, mask: torch.Tensor, complex: bool = False):
        _check_spatial(measured, "kspace")
        self.complex = complex
        if not measured.is_complex():
            measured = measured.to(torch.complex64)
        self._kept, self._free, self._shifted = prepare_dc(torch.view_as_real(measured), mask)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """DC of the network's prediction ``image``: real ``(..., H, W)``, or with
        ``complex=True`` two channels ``(..., 2, H, W)``."""
        _check_spatial(image, "image")
        if self.complex:
            _check_channels(image)
        with torch.autocast(device_type=image.device.type, enabled=False):
            return apply_dc(image, self._kept, self._free, self._shifted, self.complex)


def data_consistency(
    image: torch.Tensor, measured: torch.Tensor, mask: torch.Tensor, complex: bool = False
) -> torch.Tensor:
    """Hard data consistency of ``image`` with ``measured`` k-space: see :class:`DataConsistency`."""
    return DataConsistency(measured, mask, complex=complex)(image)


# ------------------------------------------------------------------ multi-coil (SENSE)
# Multi-coil data put the coils in dim -3: coil images and coil k-space ``(..., C, H, W)``
# (complex64), sensitivity maps ``S`` of the same shape, and an image ``x`` ``(..., 1, H, W)``
# that broadcasts over the coils (a network's one complex channel).
def _check_coils(data: torch.Tensor, maps: torch.Tensor, name: str) -> None:
    if maps.ndim < 3:
        raise ValueError(f"maps must have at least 3 dims (..., C, H, W), got shape {tuple(maps.shape)}")
    if data.ndim < 3 or data.shape[-2:] != maps.shape[-2:]:
        raise ValueError(
            f"{name} of shape {tuple(data.shape)} does not match maps of shape {tuple(maps.shape)} "
            "(expected (..., C or 1, H, W) with the maps' H and W)"
        )


def rss(coil_images: torch.Tensor, dim: int = -3, keepdim: bool = False) -> torch.Tensor:
    """Root-sum-of-squares coil combination ``sqrt(sum_c |x_c|^2)`` over the coil dim ``dim``
    (fastMRI's multi-coil target), float32: ``(..., C, H, W) -> (..., H, W)`` (``(..., 1, H,
    W)`` with ``keepdim``)."""
    _check_spatial(coil_images, "coil images")
    magnitude = coil_images.abs().to(torch.float32)
    return torch.sqrt((magnitude * magnitude).sum(dim=dim, keepdim=keepdim))


def coil_combine(coil_images: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """SENSE coil combination ``sum_c conj(S_c) x_c``: coil images ``(..., C, H, W)`` and
    maps ``S`` of the same shape -> one complex image ``(..., 1, H, W)`` (complex64). With
    maps normalised (``sum_c |S_c|^2 = 1``) it inverts :func:`sense_expand`'s coil
    weighting: ``coil_combine(S x, S) = x``."""
    _check_coils(coil_images, maps, "coil images")
    return (maps.conj() * coil_images).sum(dim=-3, keepdim=True).to(torch.complex64)


def sense_expand(image: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """Sensitivity expansion ``E x = F(S_c x)`` for every coil c: an image ``(..., 1, H,
    W)`` and maps ``(..., C, H, W)`` -> coil k-space ``(..., C, H, W)`` (complex64, centred
    orthonormal FFT :func:`fft2c`). E-VarNet's ``E``; :func:`sense_forward` masks it."""
    _check_coils(image, maps, "image")
    return fft2c(maps * image)


def sense_reduce(kspace: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """Sensitivity reduction ``R k = sum_c conj(S_c) F^H k_c``: coil k-space ``(..., C, H,
    W)`` -> an image ``(..., 1, H, W)`` (complex64); the adjoint of :func:`sense_expand`
    (E-VarNet's ``R``)."""
    return coil_combine(ifft2c(kspace), maps)


def sense_forward(image: torch.Tensor, maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The SENSE forward operator ``A x = M F (S_c x)``: the measured coil k-space
    ``(..., C, H, W)`` of an image ``(..., 1, H, W)``, with the 0/1 ``mask`` broadcast over
    the coils (``(H, W)``, ``(1, W)``, ``(W,)`` or per sample ``(..., 1, H, W)``)."""
    return sense_expand(image, maps) * mask.to(torch.float32)


def sense_adjoint(kspace: torch.Tensor, maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The adjoint of :func:`sense_forward`, ``A^H y = sum_c conj(S_c) F^H (M y_c)``: coil
    k-space ``(..., C, H, W)`` -> an image ``(..., 1, H, W)``, so that ``<A x, y> = <x, A^H
    y>`` for every ``x`` and ``y``. Applied to the measurement it is the coil-combined
    zero-filled image."""
    return sense_reduce(kspace * mask.to(torch.float32), maps)


class MulticoilDataConsistency:
    """Hard multi-coil data consistency, DC-CNN's rule applied to every coil and the coils
    combined again: for an image ``x`` ``(..., 1, H, W)``,

    ``x <- sum_c conj(S_c) F^H (m k0_c + (1 - m) F(S_c x))``

    i.e. each coil's k-space keeps the measured samples ``k0_c`` where ``m = 1`` and the
    prediction's elsewhere. ``measured`` is the measured coil k-space ``(..., C, H, W)``
    (zero where not sampled), ``maps`` the sensitivities of the same shape, ``mask`` the 0/1
    mask (``(H, W)``, ``(1, W)``, ``(W,)`` or per sample ``(..., 1, H, W)``). The k-space
    replacement is the single-coil core's (:func:`prepare_dc` once here, :func:`apply_dc`
    per call, on every coil at once); the image and the result are complex64, computed in
    float32 also under mixed precision. With ``channels=True`` they are the complex image
    as two real channels ``(..., 2, H, W)`` (:func:`to_channels`) instead, as a complex
    network takes and returns it (DC-CNN on multi-coil data).
    """

    def __init__(self, measured: torch.Tensor, maps: torch.Tensor, mask: torch.Tensor,
                 channels: bool = False):
        _check_coils(measured, maps, "measured k-space")
        if not measured.is_complex():
            measured = measured.to(torch.complex64)
        mask = mask.unsqueeze(-3) if mask.dim() >= 3 else mask  # per sample: over the coils
        # each coil's k-space as one complex channel: (..., C, 1, H, W)
        self._kept, self._free, self._shifted = prepare_dc(
            torch.view_as_real(measured.unsqueeze(-3)), mask)
        self.maps = maps
        self.channels = channels

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """DC of a complex image ``(..., 1, H, W)`` (two channels ``(..., 2, H, W)`` with
        ``channels``); the result has its shape."""
        with torch.autocast(device_type=image.device.type, enabled=False):
            if self.channels:
                image = from_channels(image)
            _check_coils(image, self.maps, "image")
            coils = to_channels((self.maps * image).unsqueeze(-3))  # (..., C, 2, H, W)
            coils = apply_dc(coils, self._kept, self._free, self._shifted, True)
            combined = coil_combine(from_channels(coils).squeeze(-3), self.maps)
            return to_channels(combined) if self.channels else combined


def multicoil_data_consistency(image: torch.Tensor, measured: torch.Tensor, maps: torch.Tensor,
                               mask: torch.Tensor) -> torch.Tensor:
    """Hard multi-coil data consistency of one image: see :class:`MulticoilDataConsistency`."""
    return MulticoilDataConsistency(measured, maps, mask)(image)


def soft_data_consistency(kspace: torch.Tensor, measured: torch.Tensor, mask: torch.Tensor,
                          weight: torch.Tensor) -> torch.Tensor:
    """E2E-VarNet's soft data-consistency step on (coil) k-space: ``k - eta * m * (k - k0)``,
    which pulls the sampled entries of ``k`` towards the measurement ``k0`` by the weight
    ``eta`` (``eta = 1`` replaces them, as hard DC; ``0`` leaves ``k`` alone). ``kspace``
    and ``measured`` ``(..., C, H, W)``, ``mask`` 0/1 broadcastable to them, ``weight`` a
    scalar tensor (learnt: :class:`SoftDataConsistency`)."""
    _check_spatial(kspace, "kspace")
    return kspace - weight * mask.to(torch.float32) * (kspace - measured)


class SoftDataConsistency(torch.nn.Module):
    """:func:`soft_data_consistency` with a learnt weight ``eta`` (one scalar parameter,
    starting at 1 as E2E-VarNet's ``dc_weight``)."""

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor(float(weight)))

    def forward(self, kspace: torch.Tensor, measured: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        return soft_data_consistency(kspace, measured, mask, self.weight)

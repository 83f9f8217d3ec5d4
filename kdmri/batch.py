"""The batch contract: what every network consumes and returns, the same for training,
the teacher cache, inference and the benchmark.

A network takes ``(image, kspace, mask)`` and returns an image of ``image``'s shape: real
networks take and give ``(N, 1, H, W)``, complex networks (data prepared from k-space)
``(N, 2, H, W)``, the real and imaginary parts; k-space is complex ``(N, 1, H, W)``.
Stores hold images as ``(N, H, W)``: :func:`network_image` and :func:`stored_image`
convert between the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from kdmri.data.store import coil_count, is_complex_store
from kdmri.errors import KdmriError
from kdmri.mri import fft2c, from_channels, to_channels


@dataclass
class Batch:
    """What every network consumes: real input, measured k-space, mask, target (N,1,H,W);
    for a complex network input and target are two channels (N,2,H,W) (real, imaginary)."""

    image: torch.Tensor
    kspace: torch.Tensor
    mask: torch.Tensor
    target: torch.Tensor | None = None


def make_batch(zf: torch.Tensor, mask: torch.Tensor, target: torch.Tensor | None,
               device: torch.device, complex: bool = False) -> Batch:
    """Build a :class:`Batch` from zero-filled complex images ``(N, H, W)``: the network's
    input is their real part, or with ``complex`` the whole image in two channels."""
    zf = zf.to(device, non_blocking=True).unsqueeze(1)
    return Batch(
        image=to_channels(zf) if complex else zf.real.contiguous(),
        kspace=fft2c(zf),
        mask=mask.to(device),
        target=None if target is None else network_image(
            target.to(device, non_blocking=True), complex),
    )


def network_image(images: torch.Tensor, complex: bool) -> torch.Tensor:
    """Images ``(N, H, W)`` as a network takes and returns them: ``(N, 1, H, W)``, or for
    a complex network two channels ``(N, 2, H, W)``."""
    images = images.unsqueeze(1)
    return to_channels(images) if complex else images


def stored_image(output: torch.Tensor, complex: bool) -> torch.Tensor:
    """A network's output ``(N, C, H, W)`` as stored: ``(N, H, W)``, complex for a complex
    network (the inverse of :func:`network_image`)."""
    return (from_channels(output) if complex else output)[:, 0]


def check_complex(store: str | Path, model, what: str = "the network") -> None:
    """Refuse a store whose targets are complex for a magnitude network, or the reverse,
    and the input store of multi-coil data (its coil k-space, key ``kspace``), which no
    network is fed yet."""
    coils = coil_count(store)
    if coils:
        raise KdmriError(
            f"{store}: multi-coil inputs ({coils} coils, key 'kspace'); {what} takes "
            "single-coil images, and this version feeds no network multi-coil k-space"
        )
    data = is_complex_store(store)
    if data != model.complex:
        kind = "complex (a dataset prepared from k-space)" if data else "magnitude images"
        raise KdmriError(
            f"{store}: the targets are {kind} but {what} has complex: "
            f"{str(model.complex).lower()}; set the task's nets to complex: "
            f"{str(data).lower()}"
        )

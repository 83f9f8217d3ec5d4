"""The batch contract: what every network consumes and returns, the same for training,
the teacher cache, inference and the benchmark.

A network takes ``(image, kspace, mask)`` and returns an image of ``image``'s shape: real
networks take and give ``(N, 1, H, W)``, complex networks (data prepared from k-space)
``(N, 2, H, W)``, the real and imaginary parts; k-space is complex ``(N, 1, H, W)``.
Stores hold images as ``(N, H, W)``: :func:`network_image` and :func:`stored_image`
convert between the two.

Multi-coil data (an input store with the coil k-space ``kspace``: :func:`input_keys`) make
a batch without an image: the measured coil k-space ``(N, C, H, W)`` complex64, the mask
and the target ``(N, 1, H, W)``, the float32 root-sum-of-squares image. A network of a
multi-coil family (E2E-VarNet: its registry entry's ``multicoil``) takes it as
``(kspace, mask)`` and returns the RSS image ``(N, 1, H, W)``. :func:`forward` is the one
call of a network on a batch, either kind, for training, the teacher, inference and
latency; :func:`check_complex` refuses a network given data of the other kind.
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
    for a complex network input and target are two channels (N,2,H,W) (real, imaginary).
    A batch of multi-coil data has no ``image`` (None) and the coil k-space (N,C,H,W)."""

    image: torch.Tensor | None
    kspace: torch.Tensor
    mask: torch.Tensor
    target: torch.Tensor | None = None


def make_batch(zf: torch.Tensor | None, mask: torch.Tensor, target: torch.Tensor | None,
               device: torch.device, complex: bool = False,
               kspace: torch.Tensor | None = None) -> Batch:
    """Build a :class:`Batch` from zero-filled complex images ``(N, H, W)``: the network's
    input is their real part, or with ``complex`` the whole image in two channels. Given
    the measured coil k-space ``kspace`` ``(N, C, H, W)`` of multi-coil data, the batch
    holds it, the mask and the target instead, and no image (``zf`` is not read)."""
    if kspace is not None:
        if complex:
            raise KdmriError("multi-coil k-space is reconstructed to the RSS magnitude image; "
                             "no network with complex: true takes it")
        return Batch(
            image=None,
            kspace=kspace.to(device, non_blocking=True),
            mask=mask.to(device),
            target=None if target is None else network_image(
                target.to(device, non_blocking=True), False),
        )
    zf = zf.to(device, non_blocking=True).unsqueeze(1)
    return Batch(
        image=to_channels(zf) if complex else zf.real.contiguous(),
        kspace=fft2c(zf),
        mask=mask.to(device),
        target=None if target is None else network_image(
            target.to(device, non_blocking=True), complex),
    )


def forward(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """The network's output on ``batch``: ``model(kspace, mask)`` for a batch of multi-coil
    data (a multi-coil family's forward), else ``model(image, kspace, mask)``."""
    if batch.image is None:
        return model(batch.kspace, batch.mask)
    return model(batch.image, batch.kspace, batch.mask)


def input_keys(store: str | Path) -> list[str]:
    """The per-slice keys of an input store a batch is made from: ``zf``, and ``kspace``
    (the coil k-space, :func:`make_batch`'s ``kspace``) where the data are multi-coil."""
    return ["zf", "kspace"] if coil_count(store) else ["zf"]


def network_image(images: torch.Tensor, complex: bool) -> torch.Tensor:
    """Images ``(N, H, W)`` as a network takes and returns them: ``(N, 1, H, W)``, or for
    a complex network two channels ``(N, 2, H, W)``."""
    images = images.unsqueeze(1)
    return to_channels(images) if complex else images


def stored_image(output: torch.Tensor, complex: bool) -> torch.Tensor:
    """A network's output ``(N, C, H, W)`` as stored: ``(N, H, W)``, complex for a complex
    network (the inverse of :func:`network_image`)."""
    return (from_channels(output) if complex else output)[:, 0]


def check_complex(store: str | Path, model, what: str = "the network",
                  multicoil: bool = False) -> None:
    """Refuse a store whose targets are complex for a magnitude network, or the reverse;
    the input store of multi-coil data (its coil k-space, key ``kspace``) for a network of
    a single-coil family, and a single-coil store for one of a multi-coil family
    (``multicoil``: the caller reads it from the family's registry entry,
    :func:`kdmri.models.is_multicoil_model`)."""
    coils = coil_count(store)
    if coils and not multicoil:
        raise KdmriError(
            f"{store}: multi-coil inputs ({coils} coils, key 'kspace'); {what} takes "
            "single-coil images (a multi-coil family, varnet, takes coil k-space)"
        )
    if multicoil and not coils:
        raise KdmriError(
            f"{store}: single-coil inputs (no coil k-space, key 'kspace'); {what} "
            "reconstructs multi-coil k-space (simulated_coils of a demo dataset, or fastMRI "
            "multi-coil files)"
        )
    data = is_complex_store(store)
    if data != model.complex:
        kind = "complex (a dataset prepared from k-space)" if data else "magnitude images"
        raise KdmriError(
            f"{store}: the targets are {kind} but {what} has complex: "
            f"{str(model.complex).lower()}; set the task's nets to complex: "
            f"{str(data).lower()}"
        )

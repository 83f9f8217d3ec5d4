"""The batch contract: what every network consumes and returns, the same for training,
the teacher cache, inference and the benchmark.

A network takes ``(image, kspace, mask)`` and returns an image of ``image``'s shape: real
networks take and give ``(N, 1, H, W)``, complex networks (data prepared from k-space)
``(N, 2, H, W)``, the real and imaginary parts; k-space is complex ``(N, 1, H, W)``.
Stores hold images as ``(N, H, W)``: :func:`network_image` and :func:`stored_image`
convert between the two.

Multi-coil data (an input store with the coil k-space ``kspace``) have the float32
root-sum-of-squares (RSS) image as their target ``(N, 1, H, W)``, and every network on them
returns an estimate of it, ``(N, 1, H, W)`` float32. How a network takes them is its
coil input (:data:`kdmri.models.COIL_INPUTS`, :func:`kdmri.models.coil_input`), which
names the store's keys its batch is made of (:func:`input_keys`):

- ``kspace`` (a multi-coil family, E2E-VarNet): a batch without an image, the measured
  coil k-space ``y`` ``(N, C, H, W)`` complex64 and the mask ``m``; the network is called
  as ``model(kspace, mask)`` and returns the RSS image;
- ``sense`` (DC-CNN with ``complex: true``): the batch also holds the sensitivity maps
  ``S`` ``(N, C, H, W)`` (the store's ``maps``), and its image is the SENSE coil-combined
  zero-filled image ``A^H y = sum_c conj(S_c) F^H (m y_c)`` in two channels; the network
  is called as ``model(image, kspace, mask, maps)`` (multi-coil data consistency) and the
  magnitude of its complex output ``|x|`` is the result (with maps normalised,
  ``sum_c |S_c|^2 = 1``, ``|x|`` estimates the RSS image where the maps are kept);
- ``rss`` (the U-Net with ``dc: false``, fastMRI's baseline): the store's ``zf``, the RSS
  of the zero-filled coil images, as a real image: the single-coil magnitude batch.

:func:`forward` is the one call of a network on a batch, every kind, for training, the
teacher, inference and latency; :func:`check_complex` refuses a network given data it
does not take.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from kdmri.data.store import coil_count, is_complex_store, store_info
from kdmri.errors import KdmriError
from kdmri.models import COIL_INPUTS, EXAMPLE_COILS, coil_input, family_of
from kdmri.mri import fft2c, from_channels, sense_adjoint, to_channels

#: The per-slice keys of multi-coil data a batch may hold besides ``zf``
#: (:func:`make_batch`'s keyword arguments of those names).
COIL_KEYS = ("kspace", "maps")


@dataclass
class Batch:
    """What every network consumes: real input, measured k-space, mask, target (N,1,H,W);
    for a complex network input and target are two channels (N,2,H,W) (real, imaginary).
    A batch of multi-coil data holds the coil k-space (N,C,H,W) and the RSS target
    (N,1,H,W), and either no ``image`` (None: a multi-coil family's input) or, with the
    sensitivity ``maps`` (N,C,H,W), the SENSE-combined image in two channels."""

    image: torch.Tensor | None
    kspace: torch.Tensor
    mask: torch.Tensor
    target: torch.Tensor | None = None
    maps: torch.Tensor | None = None


def make_batch(zf: torch.Tensor | None, mask: torch.Tensor, target: torch.Tensor | None,
               device: torch.device, complex: bool = False,
               kspace: torch.Tensor | None = None, maps: torch.Tensor | None = None) -> Batch:
    """Build a :class:`Batch` from zero-filled complex images ``(N, H, W)``: the network's
    input is their real part, or with ``complex`` the whole image in two channels. Given
    the measured coil k-space ``kspace`` ``(N, C, H, W)`` of multi-coil data, the batch
    holds it, the mask and the RSS target instead (``zf`` is not read), and no image; with
    the sensitivity ``maps`` too, the image is the SENSE coil-combined zero-filled image
    ``A^H y`` in two channels (a complex network's input: ``complex`` must be set)."""
    if kspace is not None:
        sense = maps is not None
        if complex != sense:
            raise KdmriError(
                "multi-coil k-space goes to a complex network with the sensitivity maps "
                "(key 'maps': the SENSE-combined image) or, without maps, to a multi-coil "
                f"family's magnitude network; found complex: {str(complex).lower()} and "
                f"{'maps' if sense else 'no maps'}")
        kspace = kspace.to(device, non_blocking=True)
        mask = mask.to(device)
        if sense:
            maps = maps.to(device, non_blocking=True)
        return Batch(
            image=to_channels(sense_adjoint(kspace, maps, mask)) if sense else None,
            kspace=kspace,
            mask=mask,
            target=None if target is None else network_image(
                target.to(device, non_blocking=True), False),
            maps=maps,
        )
    zf = zf.to(device, non_blocking=True).unsqueeze(1)
    return Batch(
        image=to_channels(zf) if complex else zf.real.contiguous(),
        kspace=fft2c(zf),
        mask=mask.to(device),
        target=None if target is None else network_image(
            target.to(device, non_blocking=True), complex),
    )


def coil_arrays(data: dict, idx) -> dict[str, torch.Tensor]:
    """The multi-coil arrays (:data:`COIL_KEYS`) of ``data`` that it has, at ``idx``: the
    keyword arguments of :func:`make_batch` for those slices (none for single-coil data)."""
    return {key: data[key][idx] for key in COIL_KEYS if key in data}


def forward(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """The network's output on ``batch``: ``model(kspace, mask)`` for a batch of multi-coil
    data without an image (a multi-coil family's forward); ``|model(image, kspace, mask,
    maps)|`` ``(N, 1, H, W)`` float32, the magnitude of the complex output, for one with
    sensitivity maps (SENSE); else ``model(image, kspace, mask)``."""
    if batch.image is None:
        return model(batch.kspace, batch.mask)
    if batch.maps is not None:
        return from_channels(model(batch.image, batch.kspace, batch.mask, batch.maps)).abs()
    return model(batch.image, batch.kspace, batch.mask)


def input_keys(store: str | Path, net) -> list[str]:
    """The per-slice keys of an input store a batch for the network ``net`` (a net spec or
    a built network) is made from: ``zf``, and where the data are multi-coil the keys of
    its coil input (:data:`kdmri.models.COIL_INPUTS`; none for a network that takes no
    multi-coil data, which :func:`check_complex` refuses). Refuses a store without them
    (the sensitivity maps, key ``maps``, of a dataset prepared without them)."""
    kind = coil_input(net) if coil_count(store) else None
    keys = ["zf", *(COIL_INPUTS[kind].keys if kind else ())]
    missing = [key for key in keys if key not in store_info(store)["keys"]]
    if missing:
        name = net["family"] if isinstance(net, dict) else family_of(net)
        raise KdmriError(
            f"{store}: multi-coil inputs without key {missing[0]!r}; a network of family "
            f"{name} takes {COIL_INPUTS[kind].description}, which needs the sensitivity "
            "maps: set sensitivity_maps: {kind: espirit} on the dataset")
    return keys


def example_batch(model: torch.nn.Module, shape: tuple[int, int], device: torch.device,
                  batch_size: int = 1, coils: int | None = None) -> Batch:
    """A batch of ``batch_size`` random slices of ``shape`` as ``model`` takes it (its
    FLOPs and latency): single-coil, or the multi-coil input of its coil input with
    ``coils`` coils where ``coils`` is given (>0) or the model is of a multi-coil family
    (then None or 0 means :data:`kdmri.models.EXAMPLE_COILS`)."""
    kind = coil_input(model)
    if not (coils or kind == "kspace"):
        kind = None
    arrays = {key: torch.randn(batch_size, coils or EXAMPLE_COILS, *shape,
                               dtype=torch.complex64)
              for key in (COIL_INPUTS[kind].keys if kind else ())}
    zf = torch.randn(batch_size, *shape, dtype=torch.complex64)
    return make_batch(zf, torch.ones(shape), None, device,
                      complex=bool(getattr(model, "complex", False)), **arrays)


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
    """Refuse a store whose targets are complex for a magnitude network, or the reverse;
    the input store of multi-coil data (its coil k-space, key ``kspace``) for a network
    that takes none (:func:`kdmri.models.coil_input` None), or without the keys its coil
    input reads (SENSE: the sensitivity maps, key ``maps``), and a single-coil store for
    one of a multi-coil family. On multi-coil data a network is complex as its coil
    input says (the targets, RSS images, are real)."""
    coils = coil_count(store)
    kind = coil_input(model)
    if coils and kind is None:
        raise KdmriError(
            f"{store}: multi-coil inputs ({coils} coils, key 'kspace'); {what} takes "
            "single-coil images (multi-coil data go to family varnet, to dccnn with "
            "complex: true, to unet with dc: false)"
        )
    if kind == "kspace" and not coils:
        raise KdmriError(
            f"{store}: single-coil inputs (no coil k-space, key 'kspace'); {what} "
            "reconstructs multi-coil k-space (simulated_coils of a demo dataset, or fastMRI "
            "multi-coil files)"
        )
    if coils:
        input_keys(store, model)  # the keys of its coil input are there
        if bool(getattr(model, "complex", False)) != COIL_INPUTS[kind].complex:
            raise KdmriError(f"{store}: multi-coil inputs; {what} (family {family_of(model)}) "
                             f"takes {COIL_INPUTS[kind].description} with complex: "
                             f"{str(COIL_INPUTS[kind].complex).lower()}")
        return
    data = is_complex_store(store)
    if data != model.complex:
        kind = "complex (a dataset prepared from k-space)" if data else "magnitude images"
        raise KdmriError(
            f"{store}: the targets are {kind} but {what} has complex: "
            f"{str(model.complex).lower()}; set the task's nets to complex: "
            f"{str(data).lower()}"
        )

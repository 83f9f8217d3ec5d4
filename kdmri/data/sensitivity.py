"""Coil sensitivity maps of multi-coil data, computed once per slice when a dataset is
prepared (``sensitivity_maps`` of a fastmri dataset with ``source: kspace``).

ESPIRiT (Uecker et al., MRM 2014), by sigpy's :class:`sigpy.mri.app.EspiritCalib`: from
the central ``calib_width`` x ``calib_width`` block of a slice's coil k-space (the
auto-calibration region, fully sampled), the calibration matrix of every ``kernel_width`` x
``kernel_width`` patch across the coils is formed; its leading right singular vectors
(singular values above 0.02 of the largest, sigpy's default) are the k-space kernels that
the data obey. Moved to image space they give at each pixel a C x C operator whose
eigenvector of eigenvalue 1 is the coils' sensitivities there (found by power
iteration). Where the largest eigenvalue falls below ``crop`` (outside the object, where
the coil images hold only noise) the maps are zero. The maps are of unit norm across the
coils where kept (``sum_c |S_c|^2 = 1``), with the phase of the first coil taken out.

A larger ``calib_width`` gives sharper maps (more k-space behind them) but must fit in the
fully sampled centre; a larger ``kernel_width`` models sharper sensitivity changes at the
cost of a noisier, slower calibration; ``crop`` near 1 keeps only pixels that the coil
model explains well (it cuts dark parts of the object when set too high), lower values
keep more of the background, noise included.

This module imports sigpy when maps are computed, not before.
"""

from __future__ import annotations

import numpy as np

from kdmri.errors import KdmriError


def maps_settings(dataset: dict) -> dict | None:
    """A dataset's sensitivity-map settings (its ``sensitivity_maps``, defaults filled), or
    None where it asks for no maps: the key not set (it has no default, so the configs of
    studies without maps are unchanged) or ``kind: none``."""
    if "sensitivity_maps" not in dataset:  # not set: no maps (see the schema)
        return None
    settings = dataset["sensitivity_maps"]
    return settings if settings["kind"] != "none" else None


def check_settings(settings: dict, shape: tuple[int, int], where: str) -> None:
    """An error naming the key when the ESPIRiT ``settings`` do not fit slices of ``shape``."""
    width, kernel = settings["calib_width"], settings["kernel_width"]
    if width > min(shape):
        raise KdmriError(
            f"{where}: key 'sensitivity_maps.calib_width' is {width}, larger than the slices "
            f"of {shape[0]} x {shape[1]}; expected at most {min(shape)}"
        )
    if kernel >= width:
        raise KdmriError(
            f"{where}: key 'sensitivity_maps.kernel_width' is {kernel}; expected less than "
            f"calib_width ({width})"
        )


def espirit_maps(kspace: np.ndarray, settings: dict, where: str = "sensitivity maps") -> np.ndarray:
    """ESPIRiT maps ``(S, C, H, W)`` (complex64) of fully sampled, centred coil k-space
    ``(S, C, H, W)``, one slice at a time; ``settings`` is a dataset's ``sensitivity_maps``
    (``calib_width``, ``kernel_width``, ``crop``: see the module docstring). Pixels without
    maps (cropped, or where the calibration has no eigenvector) are 0."""
    if kspace.ndim != 4:
        raise KdmriError(f"{where}: expected coil k-space (slices, coils, H, W), found {kspace.shape}")
    check_settings(settings, kspace.shape[-2:], where)
    try:
        from sigpy.mri.app import EspiritCalib
    except ImportError as exc:
        raise KdmriError(
            f"{where}: ESPIRiT maps need the package sigpy ({exc}); pip install sigpy"
        ) from None
    maps = np.empty(kspace.shape, dtype=np.complex64)
    for index, slice_kspace in enumerate(kspace):
        with np.errstate(divide="ignore", invalid="ignore"):  # see below
            maps[index] = EspiritCalib(
                np.ascontiguousarray(slice_kspace, dtype=np.complex64),
                calib_width=settings["calib_width"], kernel_width=settings["kernel_width"],
                crop=settings["crop"], show_pbar=False,
            ).run()
    # a pixel without an eigenvector (a zero operator, or a first coil of zero sensitivity,
    # whose phase sigpy divides by) has no maps: 0, as a cropped one
    return np.where(np.isfinite(maps), maps, 0).astype(np.complex64)

"""Readers of source data: one function per file format (DICOM's in
:mod:`kdmri.data.dicom`), each yielding ``(split, volume name, slices)`` with ``slices`` a
float32 array ``(S, H, W)`` (complex64 for ``fastmri`` with ``source: kspace``; for
a multi-coil file the complex64 coil images ``(S, C, H, W)``).

=============  ===========================================================================
format         what one file holds
=============  ===========================================================================
``fastmri``    fastMRI HDF5 (single- or multi-coil): the magnitude target
               ``reconstruction_esc`` or ``reconstruction_rss`` of shape (slices, H, W);
               with ``source: kspace`` the image of ``kspace``: complex (single-coil,
               slices x H x W) or the coil images (multi-coil, slices x coils x H x W)
``nifti``      a NIfTI volume (``.nii``, ``.nii.gz``): 3-D, or 4-D with chosen frames
``kdmri_h5``   the original KD-MRI layout: ``volfs`` of shape (H, W, slices), or (H, W)
``dicom``      DICOM files in a folder tree, one volume per series (SeriesInstanceUID),
               split by series: :mod:`kdmri.data.dicom`
=============  ===========================================================================

The files of a dataset, their splits and their volumes' names come from
:mod:`kdmri.data.sources` (:func:`~kdmri.data.sources.plan_sources`), as do the steps every
reader shares: slices are centre-cropped or zero-padded to ``size`` x ``size``
(:func:`~kdmri.data.sources.fit_size`); without ``size`` they keep the files' size
(fastmri: 320), which all volumes must then share;
:func:`~kdmri.data.sources.normalize_volume` scales every volume to a common range.

Readers take one dataset entry of the config with the schema's defaults filled
(:func:`kdmri.config.validate`). A mistake in the data raises
:class:`~kdmri.errors.KdmriError` naming the file, what was expected and what was found.
This module does not import torch (the Snakefile imports it for :func:`source_files`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from kdmri.data.coils import coil_settings, compress_coils, compression_settings
from kdmri.data.dicom import series_files
from kdmri.data.sensitivity import maps_settings
from kdmri.data.sources import Source, as_float32, fit_size, plan_sources
from kdmri.errors import KdmriError, first_line
from kdmri.numpy_fft import ifft2c

#: In-plane size of each format when ``size`` is not set (None: keep the files' size).
DEFAULT_SIZE = {"demo": 64, "fastmri": 320, "nifti": None, "kdmri_h5": None, "dicom": None}
#: fastMRI magnitude targets, in order of preference, when ``target_key`` is ``auto``.
FASTMRI_KEYS = ("reconstruction_esc", "reconstruction_rss")
#: fastMRI's acquired k-space (``source: kspace``).
FASTMRI_KSPACE_KEY = "kspace"
#: fastMRI's sampling mask of a file's undersampled ``kspace`` (test and challenge files).
FASTMRI_MASK_KEY = "mask"
KDMRI_H5_KEY = "volfs"

Volume = tuple[str, str, np.ndarray]

_COMMON_KEYS = ("format", "size", "normalization", "max_slices")
_FILE_KEYS = ("path", "glob", "split_dirs", "split_fractions", "seed")
#: The dataset settings each format reads (the others do not change its data).
FORMAT_KEYS = {
    "demo": (*_COMMON_KEYS, "seed", "subjects", "voxel_mm", "orientations", "contrast", "noise",
             "simulated_coils", "sensitivity_maps"),
    "fastmri": (*_COMMON_KEYS, *_FILE_KEYS, "target_key", "source", "sensitivity_maps",
                "coil_compression"),
    "nifti": (*_COMMON_KEYS, *_FILE_KEYS, "axis", "frames", "frame_list"),
    "kdmri_h5": (*_COMMON_KEYS, *_FILE_KEYS, "target_key"),
    "dicom": (*_COMMON_KEYS, *_FILE_KEYS),
}


def dataset_spec(cfg: dict) -> dict:
    """The settings of a dataset that its format reads: the prepare job's spec, so a
    setting of another format does not re-run it."""
    keys = FORMAT_KEYS.get(cfg["format"], tuple(cfg))
    spec = {k: cfg[k] for k in keys if k in cfg}
    if "source" in spec and spec["source"] == "image":  # the default: the spec as before
        del spec["source"]
    if "sensitivity_maps" in spec and maps_settings(spec) is None:  # likewise
        del spec["sensitivity_maps"]
    if "simulated_coils" in spec and coil_settings(spec) is None:  # likewise
        del spec["simulated_coils"]
    return spec


def source_files(cfg: dict) -> list[str]:
    """Every file preparation reads (sources and the frame list): the Snakemake inputs."""
    if cfg["format"] == "demo":
        return []
    if cfg["format"] == "dicom":  # the DICOM files of every series (headers read)
        return series_files(cfg)
    files = [str(s.path) for s in plan_sources(cfg)]
    if cfg["format"] == "nifti" and cfg["frame_list"]:
        files.append(str(Path(os.path.expanduser(cfg["frame_list"]))))
    return files


# ------------------------------------------------------------------------ reading files
def _iter_sources(cfg: dict, progress: bool) -> Iterator[Source]:
    sources = plan_sources(cfg)
    if not progress:
        return iter(sources)
    from tqdm import tqdm

    return iter(tqdm(sources, desc=f"reading {cfg['format']}", unit="file"))


def _read_files(cfg: dict, load: Callable[[Path, dict], Iterator[tuple[str, np.ndarray]]],
                progress: bool) -> Iterator[Volume]:
    """Read every planned file once with ``load`` (-> (name suffix, (S, H, W)) per
    volume, or coil images (S, C, H, W)); crop or pad to ``size`` and check that every
    volume has one in-plane size and one number of coils."""
    size = cfg["size"] or DEFAULT_SIZE[cfg["format"]]
    first: tuple[Path, tuple[int, ...]] | None = None
    for source in _iter_sources(cfg, progress):
        for suffix, slices in load(source.path, cfg):
            if slices.shape[0] == 0 or 0 in slices.shape[1:]:
                raise KdmriError(
                    f"{source.path}: expected at least one slice, found shape {slices.shape}"
                )
            if not (slices != 0).any():
                raise KdmriError(f"{source.path}: every value is zero, expected an image")
            slices = fit_size(slices, size)
            if first is None:
                first = (source.path, slices.shape[1:])
            elif _coils(slices.shape) != _coils((0, *first[1])):
                raise KdmriError(
                    f"{source.path}: {_coils(slices.shape)}, but {first[0]} is "
                    f"{_coils((0, *first[1]))}; every file of a dataset must have the same "
                    "number of coils (set coil_compression: {coils: N} to compress each "
                    "multi-coil file to N virtual coils, or move the others to a dataset of "
                    "their own)"
                )
            elif slices.shape[1:] != first[1]:
                raise KdmriError(
                    f"{source.path}: slices of {slices.shape[1:]}, expected {first[1]} as in "
                    f"{first[0]}; set 'size' to crop or pad every volume to one size"
                )
            yield source.split, source.name + suffix, slices


def _coils(shape: tuple[int, ...]) -> str:
    """What a volume of ``shape`` is, for the error of a dataset mixing coil counts."""
    return f"multi-coil with {shape[1]} coils" if len(shape) == 4 else "single-coil"


def _open_h5(path: Path):
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise KdmriError(
            f"{path}: expected an HDF5 file, found unreadable or other data ({first_line(exc)})"
        ) from None


def _h5_dataset(handle, path: Path, keys: tuple[str, ...]):
    for key in keys:
        if key in handle and hasattr(handle[key], "shape"):
            return key, handle[key]
    expected = " or ".join(repr(k) for k in keys)
    raise KdmriError(f"{path}: missing key {expected} (found {sorted(handle.keys())})")


def _read_h5(dataset, path: Path, key: str) -> np.ndarray:
    try:
        return dataset[()]
    except (OSError, RuntimeError, ValueError) as exc:
        raise KdmriError(f"{path}: key {key!r} is unreadable ({exc})") from None


# ------------------------------------------------------------------------------ fastMRI
def _load_fastmri(path: Path, cfg: dict) -> Iterator[tuple[str, np.ndarray]]:
    if cfg["source"] == "kspace":
        yield from _load_fastmri_kspace(path, cfg)
        return
    keys = FASTMRI_KEYS if cfg["target_key"] == "auto" else (cfg["target_key"],)
    with _open_h5(path) as handle:
        key, dataset = _h5_dataset(handle, path, keys)
        if dataset.ndim != 3:
            raise KdmriError(
                f"{path}: key {key!r} must have 3 dims (slices, H, W), found shape {dataset.shape}"
            )
        data = _read_h5(dataset, path, key)
    yield "", as_float32(data, path, f"key {key!r}")


def _load_fastmri_kspace(path: Path, cfg: dict) -> Iterator[tuple[str, np.ndarray]]:
    """The image of a file's ``kspace`` by the centred orthonormal inverse FFT: the complex
    image of a single-coil file (slices, H, W), at full size (:func:`_read_files` then
    centre-crops it in image space, as fastMRI its targets); the coil images (slices, coils,
    H, W) of a multi-coil file, each slice transformed and centre-cropped to ``size`` as it
    is read (a whole multi-coil volume at full size would not fit in memory)."""
    key = FASTMRI_KSPACE_KEY
    with _open_h5(path) as handle:
        key, dataset = _h5_dataset(handle, path, (key,))
        if FASTMRI_MASK_KEY in handle:
            raise KdmriError(
                f"{path}: key {key!r} is undersampled (the file has key {FASTMRI_MASK_KEY!r}, as "
                "fastMRI's test and challenge files); a dataset needs fully sampled k-space "
                "(fastMRI's train and val files); reconstruct this file with 'kdmri apply'"
            )
        if dataset.ndim == 4:
            images = _multicoil_images(dataset, path, key, cfg["size"] or DEFAULT_SIZE["fastmri"])
            yield "", _compressed(images, cfg, path)
            return
        if dataset.ndim != 3:
            raise KdmriError(
                f"{path}: key {key!r} must have 3 dims (slices, H, W) or 4 (slices, coils, H, W), "
                f"found shape {dataset.shape}"
            )
        if maps_settings(cfg):
            raise KdmriError(
                f"{path}: key {key!r} is single-coil (slices, H, W); sensitivity_maps "
                f"{maps_settings(cfg)['kind']!r} needs multi-coil files (slices, coils, H, W)"
            )
        data = _read_h5(dataset, path, key)
    if data.dtype.kind != "c":
        raise KdmriError(f"{path}: key {key!r} must hold complex numbers, found dtype {data.dtype}")
    if not np.isfinite(data).all():
        raise KdmriError(f"{path}: key {key!r} contains NaN or infinite values")
    yield "", ifft2c(data)


def _multicoil_images(dataset, path: Path, key: str, size: int | tuple[int, int]) -> np.ndarray:
    """The coil images ``(slices, coils, size, size)`` (or ``(slices, coils, *size)``
    given a pair) (complex64) of a multi-coil
    ``kspace`` dataset, read, transformed and cropped one slice at a time."""
    if 0 in dataset.shape:
        raise KdmriError(f"{path}: expected at least one slice, found shape {dataset.shape}")
    if dataset.dtype.kind != "c":
        raise KdmriError(f"{path}: key {key!r} must hold complex numbers, found dtype {dataset.dtype}")
    slices = []
    for index in range(dataset.shape[0]):
        try:
            data = dataset[index]
        except (OSError, RuntimeError, ValueError) as exc:
            raise KdmriError(f"{path}: key {key!r} is unreadable ({first_line(exc)})") from None
        if not np.isfinite(data).all():
            raise KdmriError(f"{path}: key {key!r} contains NaN or infinite values (slice {index})")
        slices.append(fit_size(ifft2c(data), size))
    return np.stack(slices)


def _compressed(images: np.ndarray, cfg: dict, path: Path) -> np.ndarray:
    """A multi-coil volume's coil images as the dataset keeps them: compressed to
    ``coil_compression.coils`` virtual coils where set (:func:`kdmri.data.coils
    .compress_coils`; a file with fewer coils is refused naming it), else as read."""
    settings = compression_settings(cfg)
    if settings is None:
        return images
    if images.shape[1] < settings["coils"]:
        raise KdmriError(
            f"{path}: {images.shape[1]} coils, fewer than coil_compression.coils "
            f"{settings['coils']}; compress every file to at most its fewest coils, or move "
            "this file to a dataset of its own"
        )
    virtual, _ = compress_coils(images, settings["coils"])
    return virtual


def fastmri_layout(path: Path) -> tuple[tuple[int, ...] | None, list[str]]:
    """What a fastMRI file holds: the shape of its ``kspace`` (4 dims for a multi-coil
    file, 3 for a single-coil one; None where it has none) and which of the magnitude
    images :data:`FASTMRI_KEYS` it has (none in fastMRI's test and challenge files)."""
    with _open_h5(path) as handle:
        found = {key: tuple(handle[key].shape) for key in (FASTMRI_KSPACE_KEY, *FASTMRI_KEYS)
                 if key in handle and hasattr(handle[key], "shape")}
    return found.pop(FASTMRI_KSPACE_KEY, None), list(found)


def fastmri_kspace_shape(cfg: dict) -> tuple[Path, tuple[int, ...]] | None:
    """The first file of a fastmri dataset with ``source: kspace`` and the shape of its
    ``kspace`` (4 dims: multi-coil, 3: single-coil), read from the file's metadata
    without its data; None where the dataset's files cannot be found or read yet (the
    stage that reads them then says why)."""
    if cfg["format"] != "fastmri" or cfg["source"] != "kspace":
        return None
    try:
        sources = plan_sources(cfg)
        kspace, _ = fastmri_layout(sources[0].path)
    except (KdmriError, OSError, KeyError):
        return None
    return (sources[0].path, kspace) if kspace else None


def fastmri_file_mask(path: Path, width: int) -> np.ndarray | None:
    """A fastMRI file's own sampling mask (key ``mask``, which fastMRI's test and challenge
    files hold beside their undersampled ``kspace``): 0/1 float32 of shape ``(width,)``, one
    value per k-space column; None where the file has none. A mask of another shape or
    with other values is refused naming the key."""
    with _open_h5(path) as handle:
        if FASTMRI_MASK_KEY not in handle:
            return None
        key, dataset = _h5_dataset(handle, path, (FASTMRI_MASK_KEY,))
        data = _read_h5(dataset, path, key)
    if data.shape != (width,):
        raise KdmriError(f"{path}: key {key!r} has shape {data.shape}; expected ({width},), one "
                         f"value per column of key {FASTMRI_KSPACE_KEY!r} (its width {width})")
    if data.dtype.kind not in "biuf" or not np.isin(data, (0, 1)).all():
        raise KdmriError(f"{path}: key {key!r} must hold 0 and 1 only (a sampling mask), found "
                         f"dtype {data.dtype} with values {np.unique(data)[:4].tolist()}")
    return data.astype(np.float32)


def fastmri_coil_images(path: Path, size: tuple[int, int]) -> np.ndarray:
    """The coil images ``(slices, coils, height, width)`` (complex64) of a multi-coil fastMRI
    file, read as preparation reads them (each slice's ``kspace`` through the centred
    inverse FFT and centre-cropped or zero-padded to ``size`` = ``(height, width)``)."""
    with _open_h5(path) as handle:
        key, dataset = _h5_dataset(handle, path, (FASTMRI_KSPACE_KEY,))
        if dataset.ndim != 4:
            raise KdmriError(f"{path}: key {key!r} has shape {dataset.shape}; expected multi-coil "
                             "k-space of 4 dims (slices, coils, H, W)")
        return _multicoil_images(dataset, path, key, size)


def fastmri_volumes(cfg: dict, progress: bool = False) -> Iterator[Volume]:
    """fastMRI HDF5 files: the magnitude target (``reconstruction_esc``, else
    ``reconstruction_rss``, or ``target_key``), centre-cropped to ``size`` (320); with
    ``source: kspace`` the image of ``kspace`` by the centred orthonormal inverse FFT,
    centre-cropped to ``size`` in image space: the complex image (S, H, W) of a single-coil
    file, the coil images (S, C, H, W) of a multi-coil one (:func:`kdmri.data.prepare
    .prepare_dataset` makes their root-sum-of-squares the target). A dataset whose files
    differ in their number of coils (or mixes single- and multi-coil files) is refused in
    one line naming two of them."""
    return _read_files(cfg, _load_fastmri, progress)


# -------------------------------------------------------------------------- KD-MRI HDF5
def _load_kdmri_h5(path: Path, cfg: dict) -> Iterator[tuple[str, np.ndarray]]:
    key = KDMRI_H5_KEY if cfg["target_key"] == "auto" else cfg["target_key"]
    with _open_h5(path) as handle:
        key, dataset = _h5_dataset(handle, path, (key,))
        if dataset.ndim not in (2, 3):
            raise KdmriError(
                f"{path}: key {key!r} must have 3 dims (H, W, slices) or 2 (H, W), "
                f"found shape {dataset.shape}"
            )
        data = _read_h5(dataset, path, key)
    data = as_float32(data, path, f"key {key!r}")
    yield "", np.ascontiguousarray(data[None] if data.ndim == 2 else data.transpose(2, 0, 1))


def kdmri_h5_volumes(cfg: dict, progress: bool = False) -> Iterator[Volume]:
    """Files of the original KD-MRI code: ``volfs`` (H, W, slices) per file, one volume
    each; ``train/`` and ``validation/`` folders are used as the train and test splits."""
    return _read_files(cfg, _load_kdmri_h5, progress)


# -------------------------------------------------------------------------------- NIfTI
def read_frame_list(path: str | Path) -> dict[str, list[int]]:
    """A frame list: one line per file, ``<file name or path relative to 'path'> <frame>
    [<frame> ...]`` (0-based, separated by spaces or commas); ``#`` starts a comment."""
    path = Path(os.path.expanduser(str(path)))
    if not path.is_file():
        raise KdmriError(f"{path}: frame list not found (key 'frame_list')")
    frames: dict[str, list[int]] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = [f for f in re.split(r"[\s,]+", line.split("#", 1)[0].strip()) if f]
        if not fields:
            continue
        try:
            values = [int(f) for f in fields[1:]]
        except ValueError:
            values = []
        if not values:
            raise KdmriError(
                f"{path}: line {number}: expected '<file> <frame> [<frame> ...]' with integer "
                f"frames, found {line.strip()!r}"
            )
        frames[fields[0]] = values
    return frames


def _frames_for(path: Path, cfg: dict, n_frames: int, listed: dict[str, list[int]]) -> list[int]:
    relative = path.relative_to(Path(os.path.expanduser(cfg["path"]))).as_posix()
    if relative in listed or path.name in listed:
        frames = listed.get(relative, listed.get(path.name))
    elif cfg["frames"]:
        frames = cfg["frames"]
    elif n_frames == 1:
        frames = [0]
    else:
        raise KdmriError(
            f"{path}: a 4-D volume of {n_frames} frames; expected the frames to take from "
            f"'frames' or a line in 'frame_list'"
        )
    out = []
    for frame in frames:
        if not -n_frames <= frame < n_frames:
            raise KdmriError(f"{path}: frame {frame} requested, but the file has {n_frames} frames")
        out.append(frame % n_frames)
    return out


def open_nifti(path: Path):
    """The nibabel image of a NIfTI file (header only), or a one-line error naming it."""
    import nibabel as nib

    try:
        image = nib.load(path)
        image.shape  # noqa: B018 (a damaged header fails here)
    except Exception as exc:  # nibabel raises many types for a file that is not NIfTI
        raise KdmriError(
            f"{path}: expected a NIfTI file (.nii, .nii.gz), found unreadable or other data "
            f"({first_line(exc)})"
        ) from None
    return image


def nifti_data(path: Path, image) -> np.ndarray:
    """The voxels of an image from :func:`open_nifti`, or a one-line error naming the file."""
    try:
        return np.asanyarray(image.dataobj)
    except Exception as exc:  # truncated or corrupt image data (gzip, EOF, size errors)
        raise KdmriError(
            f"{path}: image data is unreadable, truncated or corrupt ({first_line(exc)})"
        ) from None


def _load_nifti(path: Path, cfg: dict, listed: dict[str, list[int]]
                ) -> Iterator[tuple[str, np.ndarray]]:
    image = open_nifti(path)
    shape = tuple(image.shape)
    if len(shape) not in (3, 4):
        raise KdmriError(f"{path}: expected a 3-D or 4-D volume, found shape {shape}")
    data = nifti_data(path, image)
    axis = cfg["axis"]
    if data.ndim == 3:
        volumes = [("", data)]
    else:
        frames = _frames_for(path, cfg, shape[3], listed)
        volumes = [(f"_f{t:02d}", data[..., t]) for t in frames]
    for suffix, volume in volumes:
        volume = as_float32(volume, path, "the image")
        yield suffix, np.ascontiguousarray(np.moveaxis(volume, axis, 0))


def nifti_volumes(cfg: dict, progress: bool = False) -> Iterator[Volume]:
    """NIfTI volumes found by ``glob`` under ``path``, sliced along ``axis``; a 4-D file
    gives one volume per frame chosen by ``frame_list`` or ``frames``."""
    listed = read_frame_list(cfg["frame_list"]) if cfg["frame_list"] else {}
    return _read_files(cfg, lambda path, c: _load_nifti(path, c, listed), progress)

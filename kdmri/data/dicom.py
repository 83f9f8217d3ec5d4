"""DICOM sources (``format: dicom``): every series (SeriesInstanceUID) is one volume.

Files
    Every file under ``path`` matching ``glob`` (default ``**/*``; names and folders
    starting with ``.`` are skipped) is read with ``pydicom.dcmread(...,
    stop_before_pixels=True)`` and grouped by its SeriesInstanceUID. A file that is not a
    DICOM Part 10 file (no ``DICM`` marker) is skipped, and so is a DICOM file without an
    image (no Rows/Columns: a DICOMDIR, a report, a presentation state); a folder with no
    DICOM image at all is an error naming it.

Slices
    The slices of a series (the files, or the frames of enhanced multi-frame files) are
    ordered by ImagePositionPatient projected on the slice normal, the cross product of
    the two direction cosines of ImageOrientationPatient (ascending), and each is scaled by
    its RescaleSlope and RescaleIntercept (per frame in enhanced files). Every slice of a
    series must have one orientation (within 1e-4), one size and its own position.

Enhanced multi-frame files
    NumberOfFrames > 1 with a PerFrameFunctionalGroupsSequence: the position of each frame
    comes from its PlanePositionSequence; orientation, pixel spacing and rescale from the
    per-frame groups, else from the SharedFunctionalGroupsSequence.

Siemens mosaics
    A file whose ImageType contains ``MOSAIC`` holds the slices of one volume as tiles of
    a square grid (row by row). The number of slices is NumberOfImagesInMosaic of the
    Siemens CSA image header (0029,xx10) when that header is readable, else the private
    element (0019,100A) (Siemens MR header), else the grid size squared, where the grid
    size is Rows divided by the acquired rows (AcquisitionMatrix): blank tiles at the end
    are then kept as zero slices. The tile positions are derived from the mosaic's
    ImagePositionPatient (the corner of the whole grid), moved to the corner of the first
    tile, then stepped by SpacingBetweenSlices (else SliceThickness) along the CSA
    SliceNormalVector (else the cross product). Every mosaic is one volume: a series of
    several mosaics (a time series) gives one volume per file, named ``<series>_t000``,
    ``_t001``, ... in InstanceNumber order; they stay in the series' split.

Splits are made by series as the other formats make them by file (``split_dirs``,
``split_fractions``, ``seed``); a series whose files sit in two split folders is an error.
A series is named after its folder relative to ``path`` (``/`` -> ``_``; the folder of
``path`` itself gives its own name), with ``_s<SeriesNumber>`` (or ``_<n>``) added where a
folder holds several series.

:func:`read_dicom_volume` reads one series (a folder, or one file) with its affine.
pydicom is imported on first use only.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdmri.data.sources import (
    as_float32,
    data_root,
    file_pattern,
    fit_size,
    split_counts,
    split_folders,
)
from kdmri.errors import KdmriError, first_line
from kdmri.keys import SPLITS

#: Largest difference of the direction cosines of two slices of one series.
ORIENTATION_TOLERANCE = 1e-4
#: Two slices closer than this (mm, along the normal) are at the same position.
POSITION_TOLERANCE = 1e-3
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
#: pydicom's names of the decoder plugins -> the package pip installs.
_PIP_NAMES = {"gdcm": "python-gdcm"}


@dataclass(frozen=True)
class Series:
    """One series: its files, the split it goes to and the name of its volume."""

    uid: str
    files: tuple[Path, ...]
    split: str
    name: str


@dataclass
class _Slice:
    pixels: np.ndarray  # (rows, cols) float32, rescaled
    orientation: np.ndarray | None  # (6,) row then column direction cosines (LPS)
    position: np.ndarray | None  # (3,) mm (LPS)
    spacing: np.ndarray  # (2,) PixelSpacing: between rows, between columns
    thickness: float | None  # SpacingBetweenSlices, else SliceThickness
    path: Path
    number: int  # InstanceNumber (frame number in multi-frame files), ties only


def _pydicom():
    try:
        import pydicom
    except ImportError:  # pragma: no cover - a dependency of the package
        raise KdmriError("format 'dicom' needs pydicom: pip install 'pydicom>=3.0'") from None
    return pydicom


# ------------------------------------------------------------------------ file listing
def _candidates(folder: Path, pattern: str, exclude: tuple[Path, ...] = ()) -> list[Path]:
    return sorted(
        p for p in folder.glob(pattern)
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and not any(p.is_relative_to(e) for e in exclude)
    )


def _header(path: Path):
    """The header of a DICOM image file, or None for other files."""
    pydicom = _pydicom()
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except pydicom.errors.InvalidDicomError:
        return None
    except Exception as exc:  # a DICM marker but a header pydicom cannot parse
        raise KdmriError(
            f"{path}: DICOM header is unreadable or truncated ({first_line(exc)})"
        ) from None
    if "Rows" not in ds or "Columns" not in ds:
        return None
    return ds


def scan_series(folder: Path, pattern: str = "**/*", exclude: tuple[Path, ...] = ()
                ) -> dict[str, tuple[list[Path], str]]:
    """SeriesInstanceUID -> (its DICOM image files under ``folder``, SeriesNumber)."""
    files = _candidates(folder, pattern, exclude)
    series: dict[str, tuple[list[Path], str]] = {}
    for path in files:
        ds = _header(path)
        if ds is None:
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or f"no-series-uid:{path}")
        series.setdefault(uid, ([], str(ds.get("SeriesNumber", "") or "")))[0].append(path)
    if not series:
        where = f" outside {[str(e) for e in exclude]}" if exclude else ""
        raise KdmriError(
            f"{folder}: no DICOM files among the {len(files)} file(s) matching "
            f"{pattern!r}{where} (expected DICOM images)"
        )
    return series


def _series_names(root: Path, found: dict[str, tuple[list[Path], str]]) -> dict[str, str]:
    folders: dict[str, str] = {}
    for uid, (files, _) in found.items():
        common = Path(os.path.commonpath([str(p.parent) for p in files]))
        relative = common.relative_to(root).as_posix()
        folders[uid] = root.name if relative == "." else relative.replace("/", "_")
    names = {}
    for folder in sorted(set(folders.values())):
        uids = sorted(u for u in folders if folders[u] == folder)
        if len(uids) == 1:
            names[uids[0]] = folder
            continue
        numbers = [found[u][1] for u in uids]
        if all(numbers) and len(set(numbers)) == len(numbers):
            names.update({u: f"{folder}_s{n}" for u, n in zip(uids, numbers, strict=True)})
        else:
            names.update({u: f"{folder}_{i}" for i, u in enumerate(uids)})
    return names


def plan_series(cfg: dict) -> list[Series]:
    """Every series with its split and volume name (reads the headers only)."""
    root, pattern = data_root(cfg), file_pattern(cfg)
    dirs = split_folders(cfg, root)
    groups: dict[str, dict[str, tuple[list[Path], str]]] = {
        split: scan_series(root / folder, pattern) for split, folder in dirs.items()}
    if "train" not in dirs:
        groups["train"] = scan_series(root, pattern, exclude=tuple(root / d for d in dirs.values()))
    found: dict[str, tuple[list[Path], str]] = {}
    home: dict[str, str] = {}
    for split, series in groups.items():
        for uid, (files, number) in series.items():
            if uid in home:
                raise KdmriError(
                    f"{files[0]}: series {uid} has files in the folders of two splits "
                    f"({home[uid]!r} and {split!r}, e.g. {found[uid][0][0]}); expected every "
                    "file of a series in one split folder"
                )
            home[uid] = split
            found[uid] = (files, number)
    names = _series_names(root, found)
    if len(set(names.values())) < len(names):
        raise KdmriError(f"{root}: two series map to the same volume name; rename a folder")
    shared = [s for s in SPLITS if s not in dirs or s == "train"]
    pool = sorted((u for u in found if home[u] == "train"), key=lambda u: names[u])
    if len(pool) < len(shared):
        raise KdmriError(
            f"{root}: {len(pool)} DICOM series to divide into splits {shared}; expected at "
            f"least {len(shared)} (a series, not a file, is the unit of a split)"
        )
    split_of = {u: home[u] for u in found}
    if len(shared) > 1:
        counts = split_counts(len(pool), cfg["split_fractions"], shared)
        order = np.random.default_rng(cfg["seed"]).permutation(len(pool))
        start = 0
        for split in shared:
            for i in order[start : start + counts[split]]:
                split_of[pool[i]] = split
            start += counts[split]
    return [Series(u, tuple(sorted(found[u][0])), split, names[u])
            for split in SPLITS for u in sorted(found, key=lambda u: names[u])
            if split_of[u] == split]


def series_files(cfg: dict) -> list[str]:
    """Every DICOM file preparation reads (the Snakemake inputs of ``prepare``)."""
    return [str(p) for series in plan_series(cfg) for p in series.files]


# ---------------------------------------------------------------------- pixel data
def _decoder_message(path: Path, ds) -> str | None:
    """A one-line error when the transfer syntax needs a decoder that is missing."""
    from pydicom.pixels import get_decoder

    uid = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if uid is None or not uid.is_compressed:
        return None
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return f"{path}: pixel data in transfer syntax {uid.name} ({uid}), which pydicom cannot decode"
    if decoder.is_available:
        return None
    options = []
    for line in decoder.missing_dependencies:  # e.g. "gdcm - requires gdcm>=3.0.10"
        needs = line.split("requires", 1)[-1].strip()
        names = [re.split(r"[<>=!~ ]", part.strip())[0] for part in needs.split(" and ")]
        options.append(" ".join(_PIP_NAMES.get(n, n) for n in names if n and n != "numpy"))
    return (f"{path}: pixel data compressed as {uid.name} ({uid}), and no decoder for it is "
            f"installed; install one: {' | '.join(f'pip install {o}' for o in options)}")


def _pixels(path: Path, ds) -> np.ndarray:
    """The stored values as (frames, rows, cols)."""
    if not any(tag in ds for tag in _PIXEL_TAGS):
        raise KdmriError(f"{path}: no pixel data (element (7FE0,0010) is missing)")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples != 1:
        raise KdmriError(f"{path}: expected a grayscale image (SamplesPerPixel 1), found {samples}")
    message = _decoder_message(path, ds)
    if message:
        raise KdmriError(message)
    try:
        array = ds.pixel_array
    except Exception as exc:  # truncated, corrupt or inconsistent pixel data
        text = first_line(exc)
        if "missing dependencies" in text or "plugins" in text:
            raise KdmriError(f"{path}: cannot decode the pixel data ({text})") from None
        raise KdmriError(f"{path}: pixel data is unreadable, truncated or corrupt ({text})") from None
    rows, cols = int(ds.Rows), int(ds.Columns)
    if array.size % (rows * cols):
        raise KdmriError(f"{path}: pixel data of shape {array.shape}, expected images of {rows} x {cols}")
    return as_float32(array, path, "the pixel data").reshape(-1, rows, cols)


def _floats(value, n: int) -> np.ndarray | None:
    if value is None:
        return None
    try:
        out = np.array([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        return None
    return out if out.shape == (n,) else None


def _number(value, default: float | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def _thickness(ds) -> float | None:
    return _number(ds.get("SpacingBetweenSlices"), _number(ds.get("SliceThickness"), None))


def _group(ds, index: int, sequence: str):
    """The item of a functional group for frame ``index``: per frame, else shared."""
    for holder in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        groups = ds.get(holder)
        if not groups:
            continue
        item = groups[index if holder.startswith("PerFrame") else 0]
        if item is not None and item.get(sequence):
            return item.get(sequence)[0]
    return None


def _multiframe_slices(path: Path, ds, pixels: np.ndarray) -> list[_Slice]:
    slices = []
    for i, frame in enumerate(pixels):
        position, orientation = _group(ds, i, "PlanePositionSequence"), _group(
            ds, i, "PlaneOrientationSequence")
        measures, rescale = _group(ds, i, "PixelMeasuresSequence"), _group(
            ds, i, "PixelValueTransformationSequence")
        source = rescale if rescale is not None else ds
        slope = _number(source.get("RescaleSlope"), 1.0)
        intercept = _number(source.get("RescaleIntercept"), 0.0)
        geometry = measures if measures is not None else ds
        slices.append(_Slice(
            pixels=(frame * np.float32(slope) + np.float32(intercept)).astype(np.float32),
            orientation=_floats(orientation.get("ImageOrientationPatient")
                                if orientation is not None else ds.get("ImageOrientationPatient"), 6),
            position=_floats(position.get("ImagePositionPatient")
                             if position is not None else None, 3),
            spacing=_floats(geometry.get("PixelSpacing"), 2) if geometry.get("PixelSpacing")
            else np.ones(2),
            thickness=_thickness(geometry) if measures is not None else _thickness(ds),
            path=path, number=i,
        ))
    return slices


# ----------------------------------------------------------------------------- mosaics
def is_mosaic(ds) -> bool:
    return "MOSAIC" in [str(v).upper() for v in (ds.get("ImageType") or [])]


def _csa_tags(raw: bytes) -> dict[str, list[str]]:
    """The tags of a Siemens CSA header (SV10 layout) -> their non-empty string items."""
    if raw[:4] != b"SV10":
        raise ValueError("not an SV10 CSA header")
    n_tags = struct.unpack_from("<I", raw, 8)[0]
    if not 0 < n_tags <= 1000:
        raise ValueError(f"{n_tags} tags")
    ptr, tags = 16, {}
    for _ in range(n_tags):
        name, _vm, _vr, _syngo, n_items, _ = struct.unpack_from("<64si4s3i", raw, ptr)
        ptr += 84
        if not 0 <= n_items <= 1000:
            raise ValueError(f"{n_items} items")
        items = []
        for _ in range(n_items):
            length = struct.unpack_from("<4i", raw, ptr)[1]
            ptr += 16
            if length < 0 or ptr + length > len(raw):
                raise ValueError("item past the end")
            text = raw[ptr : ptr + length].split(b"\0", 1)[0].decode("latin-1").strip()
            if text:
                items.append(text)
            ptr += (length + 3) // 4 * 4
        tags[name.split(b"\0", 1)[0].decode("latin-1")] = items
    return tags


def _private(ds, group: int, creator: str, element: int):
    try:
        return ds.private_block(group, creator)[element].value
    except (KeyError, ValueError):
        return None


def _mosaic_layout(path: Path, ds) -> tuple[int, np.ndarray | None]:
    """(number of slices, CSA SliceNormalVector or None) of a mosaic."""
    count, normal = None, None
    raw = _private(ds, 0x0029, "SIEMENS CSA HEADER", 0x10)
    if isinstance(raw, bytes):
        try:
            tags = _csa_tags(raw)
            items = tags.get("NumberOfImagesInMosaic") or []
            count = int(float(items[0])) if items else None
            normal = _floats(tags.get("SliceNormalVector") or None, 3)
        except (ValueError, struct.error, IndexError):
            count, normal = None, None
    if not count:
        value = _private(ds, 0x0019, "SIEMENS MR HEADER", 0x0A)
        if value is None and (0x0019, 0x100A) in ds:
            value = ds[0x0019, 0x100A].value
        if isinstance(value, bytes):
            value = int.from_bytes(value[:2], "little") if len(value) >= 2 else None
        count = int(value) if value else None
    rows, cols = int(ds.Rows), int(ds.Columns)
    if not count:
        matrix = [int(_number(v, 0) or 0) for v in (ds.get("AcquisitionMatrix") or [])]
        grid = None
        if len(matrix) == 4:  # frequency rows, frequency columns, phase rows, phase columns
            acq_rows, acq_cols = matrix[0] or matrix[2], matrix[1] or matrix[3]
            if (acq_rows and acq_cols and rows % acq_rows == 0 and cols % acq_cols == 0
                    and rows // acq_rows == cols // acq_cols):
                grid = rows // acq_rows
        if not grid:
            raise KdmriError(
                f"{path}: a mosaic without NumberOfImagesInMosaic (CSA header or (0019,100A)) "
                "or an AcquisitionMatrix that divides it into a square grid; cannot tell its tiles"
            )
        count = grid**2
    return count, normal


def _mosaic_slices(path: Path, ds, image: np.ndarray) -> list[_Slice]:
    count, csa_normal = _mosaic_layout(path, ds)
    grid = int(np.ceil(np.sqrt(count)))
    rows, cols = image.shape
    if rows % grid or cols % grid:
        raise KdmriError(
            f"{path}: a mosaic of {rows} x {cols} cannot hold a {grid} x {grid} grid of "
            f"{count} slices (NumberOfImagesInMosaic)"
        )
    tile_rows, tile_cols = rows // grid, cols // grid
    orientation = _floats(ds.get("ImageOrientationPatient"), 6)
    corner = _floats(ds.get("ImagePositionPatient"), 3)
    spacing = _floats(ds.get("PixelSpacing"), 2)
    spacing = np.ones(2) if spacing is None else spacing
    thickness = _thickness(ds)
    positions = [None] * count
    if orientation is not None and corner is not None:
        row_dir, col_dir = orientation[:3], orientation[3:]
        first = (corner + row_dir * spacing[1] * (cols - tile_cols) / 2
                 + col_dir * spacing[0] * (rows - tile_rows) / 2)
        normal = csa_normal if csa_normal is not None else np.cross(row_dir, col_dir)
        positions = [first + k * (thickness or 1.0) * normal for k in range(count)]
    slope = _number(ds.get("RescaleSlope"), 1.0)
    intercept = _number(ds.get("RescaleIntercept"), 0.0)
    out = []
    for k in range(count):
        r, c = divmod(k, grid)
        tile = image[r * tile_rows : (r + 1) * tile_rows, c * tile_cols : (c + 1) * tile_cols]
        out.append(_Slice(
            pixels=(tile * np.float32(slope) + np.float32(intercept)).astype(np.float32),
            orientation=orientation, position=positions[k], spacing=spacing,
            thickness=thickness, path=path, number=k,
        ))
    return out


# ------------------------------------------------------------------------------ series
def _read_file(path: Path) -> tuple[str, int, list[_Slice]]:
    """(kind: single, multiframe or mosaic; InstanceNumber; slices) of one file."""
    pydicom = _pydicom()
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise KdmriError(f"{path}: DICOM file is unreadable or truncated ({first_line(exc)})") from None
    pixels = _pixels(path, ds)
    number = int(_number(ds.get("InstanceNumber"), 0) or 0)
    if int(_number(ds.get("NumberOfFrames"), 1) or 1) > 1 or "PerFrameFunctionalGroupsSequence" in ds:
        return "multiframe", number, _multiframe_slices(path, ds, pixels)
    if is_mosaic(ds):
        return "mosaic", number, _mosaic_slices(path, ds, pixels[0])
    slope = _number(ds.get("RescaleSlope"), 1.0)
    intercept = _number(ds.get("RescaleIntercept"), 0.0)
    spacing = _floats(ds.get("PixelSpacing"), 2)
    return "single", number, [_Slice(
        pixels=(pixels[0] * np.float32(slope) + np.float32(intercept)).astype(np.float32),
        orientation=_floats(ds.get("ImageOrientationPatient"), 6),
        position=_floats(ds.get("ImagePositionPatient"), 3),
        spacing=np.ones(2) if spacing is None else spacing,
        thickness=_thickness(ds), path=path, number=number,
    )]


def _stack(slices: list[_Slice]) -> tuple[np.ndarray, np.ndarray]:
    """Order the slices of one volume along the normal: (S, H, W) and the RAS affine."""
    first = slices[0]
    shapes = {s.pixels.shape for s in slices}
    if len(shapes) > 1:
        other = next(s for s in slices if s.pixels.shape != first.pixels.shape)
        raise KdmriError(
            f"{other.path}: slices of {other.pixels.shape} in a series whose slices are "
            f"{first.pixels.shape} (e.g. {first.path}); expected one size per series"
        )
    located = [s for s in slices if s.orientation is not None and s.position is not None]
    if len(slices) > 1 and len(located) < len(slices):
        bad = next(s for s in slices if s.orientation is None or s.position is None)
        raise KdmriError(
            f"{bad.path}: no ImagePositionPatient or ImageOrientationPatient in a series of "
            f"{len(slices)} slices; cannot order them"
        )
    orientation = first.orientation if first.orientation is not None else np.array(
        [1.0, 0, 0, 0, 1.0, 0])
    for s in located:
        if np.abs(s.orientation - orientation).max() > ORIENTATION_TOLERANCE:
            raise KdmriError(
                f"{s.path}: mixed orientations in one series: ImageOrientationPatient "
                f"{np.round(s.orientation, 6).tolist()}, expected "
                f"{np.round(orientation, 6).tolist()} as in {first.path} (within "
                f"{ORIENTATION_TOLERANCE:g})"
            )
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    if located:
        depth = np.array([float(s.position @ normal) for s in slices])
        order = sorted(range(len(slices)), key=lambda i: (depth[i], slices[i].number))
        slices = [slices[i] for i in order]
        gaps = np.diff(depth[order])
        if (gaps < POSITION_TOLERANCE).any():
            i = int(np.argmax(gaps < POSITION_TOLERANCE))
            raise KdmriError(
                f"{slices[i + 1].path}: two images of one series at the same position "
                f"({slices[i].path} too); expected one image per position (split echoes or "
                "time points into series of their own)"
            )
    start = slices[0].position if slices[0].position is not None else np.zeros(3)
    if len(slices) > 1:
        step = (slices[-1].position - start) / (len(slices) - 1)
    else:
        step = normal * (first.thickness or 1.0)
    affine = np.eye(4)
    affine[:3, 0] = row_dir * first.spacing[1]
    affine[:3, 1] = col_dir * first.spacing[0]
    affine[:3, 2] = step
    affine[:3, 3] = start
    volume = np.ascontiguousarray(np.stack([s.pixels for s in slices]), dtype=np.float32)
    return volume, _LPS_TO_RAS @ affine


def read_series(files: list[Path] | tuple[Path, ...]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The volumes of one series: ``(name suffix, (S, H, W) float32, 4x4 RAS affine)``;
    one volume, or one per mosaic (suffix ``_t000``, ...) in a series of mosaics."""
    read = [(path, *_read_file(path)) for path in files]
    kinds = {kind for _, kind, _, _ in read}
    if "mosaic" in kinds and len(kinds) > 1:
        other = next(p for p, kind, _, _ in read if kind != "mosaic")
        raise KdmriError(f"{other}: a plain image in a series of Siemens mosaics; expected mosaics only")
    if kinds == {"mosaic"}:
        read.sort(key=lambda r: (r[2], str(r[0])))
        if len(read) == 1:
            return [("", *_stack(read[0][3]))]
        return [(f"_t{i:03d}", *_stack(slices)) for i, (_, _, _, slices) in enumerate(read)]
    return [("", *_stack([s for _, _, _, slices in read for s in slices]))]


def read_dicom_volume(path: str | Path) -> tuple[np.ndarray, np.ndarray, str]:
    """Read one DICOM volume: ``(volume, affine, name)``.

    ``path`` is a folder holding one series (searched recursively; files that are not
    DICOM images are skipped) or one file (a single image, a Siemens mosaic or an
    enhanced multi-frame file). ``volume`` is float32 ``(slices, H, W)``: the stored values
    times RescaleSlope plus RescaleIntercept, slices ordered by ImagePositionPatient
    projected on the slice normal (ascending), mosaics unpacked. ``name`` is the folder's
    name or the file's name without ``.dcm``/``.ima``.

    ``affine`` (4 x 4) maps voxel indices ``(column, row, slice)`` -- i.e. of the array
    ``volume.transpose(2, 1, 0)`` -- to millimetres in the NIfTI/RAS convention (+x right,
    +y anterior, +z superior): ``nibabel.Nifti1Image(volume.transpose(2, 1, 0), affine)``
    places the image as the scanner did. It is built in DICOM's LPS patient coordinates,
    with columns

    * ``row direction * PixelSpacing[1]`` (ImageOrientationPatient[:3]; the step from one
      column to the next),
    * ``column direction * PixelSpacing[0]`` (ImageOrientationPatient[3:]; from one row
      to the next),
    * the slice step: ``(last - first ImagePositionPatient) / (slices - 1)``, or for one
      slice the normal (row x column direction) times SpacingBetweenSlices, else
      SliceThickness, else 1,
    * the ImagePositionPatient of the first slice (the centre of its first voxel),

    and then turned to RAS by flipping the sign of its first two rows (``diag(-1, -1, 1,
    1) @ A``). Files without position or orientation (one slice only) get the identity
    direction cosines at the origin.

    Raises :class:`~kdmri.errors.KdmriError` (one line naming the file) for no DICOM file,
    several series or mosaics, no pixel data, a missing decoder, truncated pixel data,
    mixed orientations or sizes, or two images at one position.
    """
    path = Path(os.path.expanduser(str(path)))
    if path.is_file():
        if _header(path) is None:
            raise KdmriError(f"{path}: not a DICOM image file")
        files, name = [path], path.name
        for suffix in (".dcm", ".ima", ".dicom"):
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
    elif path.is_dir():
        found = scan_series(path)
        if len(found) > 1:
            examples = ", ".join(str(files[0]) for files, _ in list(found.values())[:3])
            raise KdmriError(
                f"{path}: {len(found)} DICOM series (e.g. {examples}); expected one series "
                "per folder (pass its folder or file)"
            )
        files, name = next(iter(found.values()))[0], path.name
    else:
        raise KdmriError(f"{path}: no such file or folder")
    volumes = read_series(files)
    if len(volumes) > 1:
        raise KdmriError(
            f"{path}: a series of {len(volumes)} Siemens mosaics (a time series); pass one "
            f"mosaic file, e.g. {files[0]}"
        )
    _, volume, affine = volumes[0]
    return volume, affine, name


# ----------------------------------------------------------------------------- prepare
def dicom_volumes(cfg: dict, progress: bool = False) -> Iterator[tuple[str, str, np.ndarray]]:
    """(split, volume name, slices) of every DICOM series under ``path``, cropped or
    padded to ``size``; without ``size`` every volume must have one in-plane size."""
    plan = plan_series(cfg)
    if progress:
        from tqdm import tqdm

        plan = tqdm(plan, desc="reading dicom", unit="series")
    first: tuple[Path, tuple[int, ...]] | None = None
    for series in plan:
        for suffix, slices, _ in read_series(series.files):
            where = series.files[0] if len(series.files) == 1 else series.files[0].parent
            if not (slices != 0).any():
                raise KdmriError(f"{where}: every value is zero, expected an image")
            slices = fit_size(slices, cfg["size"])
            if first is None:
                first = (series.files[0], slices.shape[1:])
            elif slices.shape[1:] != first[1]:
                raise KdmriError(
                    f"{series.files[0]}: slices of {slices.shape[1:]}, expected {first[1]} as "
                    f"in {first[0]}; set 'size' to crop or pad every volume to one size"
                )
            yield series.split, series.name + suffix, slices

"""What every reader of source files shares: the listing of a dataset's files, their
division into splits and the volumes' names, and the steps applied to each volume read.

The readers of each format (:mod:`kdmri.data.readers` for fastMRI, NIfTI and KD-MRI HDF5,
:mod:`kdmri.data.dicom` for DICOM series) build on these; this module imports neither.

Every file is one *volume* (a 4-D NIfTI gives one volume per chosen frame; a DICOM series
is the unit instead of a file) and lands in exactly one split, so no volume has slices in
two splits:

* splits named in ``split_dirs`` take the files of their folder;
* the other splits divide a *pool* of files in the ratio of ``split_fractions`` by a
  permutation seeded with ``seed`` (at least one file each: :func:`split_counts`); the
  pool is the train folder's files when train has a folder, else every file under
  ``path`` outside the named folders (all files when there are none).

``kdmri_h5`` without ``split_dirs`` uses the original layout when ``path`` holds ``train/``
and ``validation/``: train from ``train/``, test from ``validation/`` (the split the original
code reported on), val drawn from ``train/``. A file name found again in other folders of
one split (the same volume under ``acc_4x/``, ``acc_5x/``, ...) is read once.

A volume is named after its file (without extension), or after its path relative to
``path`` (``/`` -> ``_``) where file names repeat. :func:`fit_size` centre-crops or
zero-pads slices to ``size`` x ``size``; :func:`normalize_volume` scales every volume to a
common range. A mistake in the data raises :class:`~kdmri.errors.KdmriError` naming the
file, what was expected and what was found. This module does not import torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdmri.errors import KdmriError
from kdmri.keys import SPLITS

#: File pattern of each format when ``glob`` is empty.
DEFAULT_GLOB = {"fastmri": "*.h5", "nifti": "**/*.nii*", "kdmri_h5": "**/*.h5", "dicom": "**/*"}
_SUFFIXES = (".nii.gz", ".nii", ".h5", ".hdf5")


@dataclass(frozen=True)
class Source:
    """One source file, the split it goes to and the name of its volume."""

    path: Path
    split: str
    name: str


# ------------------------------------------------------------------------- file listing
def data_root(cfg: dict) -> Path:
    """The dataset's folder ``path`` (``~`` expanded); an error naming the key when it is
    not set or not a folder."""
    if not cfg["path"]:
        raise KdmriError(f"format {cfg['format']!r}: key 'path' (the data folder) is not set")
    root = Path(os.path.expanduser(cfg["path"]))
    if not root.is_dir():
        raise KdmriError(f"{root}: data folder not found (key 'path')")
    return root


def file_pattern(cfg: dict) -> str:
    """The dataset's ``glob``, else its format's :data:`DEFAULT_GLOB`."""
    return cfg["glob"] or DEFAULT_GLOB[cfg["format"]]


def _find(folder: Path, pattern: str, exclude: tuple[Path, ...] = ()) -> list[Path]:
    files = sorted(
        p for p in folder.glob(pattern)
        if p.is_file() and not p.name.startswith(".")
        and not any(p.is_relative_to(e) for e in exclude)
    )
    if not files:
        where = f" outside {[str(e) for e in exclude]}" if exclude else ""
        raise KdmriError(f"{folder}: no files match {pattern!r}{where} (empty folder?)")
    return files


def split_folders(cfg: dict, root: Path) -> dict[str, str]:
    """Split -> its folder under ``root``: the set ``split_dirs`` (for ``kdmri_h5`` without
    them, ``train/`` and ``validation/`` where both exist); each must be a folder."""
    dirs = {s: d for s, d in cfg["split_dirs"].items() if d}
    if not dirs and cfg["format"] == "kdmri_h5":
        if (root / "train").is_dir() and (root / "validation").is_dir():
            dirs = {"train": "train", "test": "validation"}
    for split, folder in dirs.items():
        if not (root / folder).is_dir():
            raise KdmriError(
                f"{root / folder}: folder of split {split!r} not found (key 'split_dirs')"
            )
    return dirs


def _dedupe_by_name(files: list[Path]) -> list[Path]:
    seen: dict[str, Path] = {}
    for path in files:
        seen.setdefault(path.name, path)
    return sorted(seen.values())


def split_counts(n_files: int, fractions: dict[str, float], splits: list[str]) -> dict[str, int]:
    """Files per split: ``n_files`` divided in the ratio of ``fractions`` (largest
    remainders get the leftover files), then at least one file per split."""
    total = sum(fractions[s] for s in splits)
    raw = {s: n_files * fractions[s] / total for s in splits}
    counts = {s: int(np.floor(raw[s])) for s in splits}
    leftover = n_files - sum(counts.values())
    for split in sorted(splits, key=lambda s: counts[s] - raw[s])[:leftover]:
        counts[split] += 1
    for split in splits:
        while counts[split] == 0:
            donor = max(splits, key=lambda s: counts[s])
            counts[donor] -= 1
            counts[split] += 1
    return counts


def plan_sources(cfg: dict) -> list[Source]:
    """Every source file with its split and volume name (reads no file's contents)."""
    root, pattern = data_root(cfg), file_pattern(cfg)
    dirs = split_folders(cfg, root)
    named = {split: _find(root / folder, pattern) for split, folder in dirs.items()}
    shared = [s for s in SPLITS if s not in dirs or s == "train"]
    if "train" in dirs:
        pool = named.pop("train")
    else:
        pool = _find(root, pattern, exclude=tuple(root / d for d in dirs.values()))
    if cfg["format"] == "kdmri_h5":
        pool = _dedupe_by_name(pool)
        named = {s: _dedupe_by_name(f) for s, f in named.items()}
    if len(pool) < len(shared):
        raise KdmriError(
            f"{root}: {len(pool)} file(s) matching {pattern!r} to divide into splits "
            f"{shared}; expected at least {len(shared)}"
        )
    assigned: dict[str, list[Path]] = dict(named)
    if len(shared) == 1:
        assigned[shared[0]] = pool
    else:
        counts = split_counts(len(pool), cfg["split_fractions"], shared)
        order = np.random.default_rng(cfg["seed"]).permutation(len(pool))
        start = 0
        for split in shared:
            picked = order[start : start + counts[split]]
            assigned[split] = sorted(pool[i] for i in picked)
            start += counts[split]
    everything = [p for files in assigned.values() for p in files]
    if len(set(everything)) < len(everything):
        raise KdmriError(
            f"{root}: a file would be in two splits; expected split_dirs {dirs} to be "
            "separate folders, none inside another"
        )
    names = _volume_names(root, everything)
    return [Source(p, split, names[p]) for split in SPLITS for p in assigned[split]]


def _strip_suffix(name: str) -> str:
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _volume_names(root: Path, files: list[Path]) -> dict[Path, str]:
    stems = [_strip_suffix(p.name) for p in files]
    if len(set(stems)) == len(stems):
        return dict(zip(files, stems, strict=True))
    names = {}
    for path in files:
        relative = path.relative_to(root).as_posix()
        names[path] = _strip_suffix(relative).replace("/", "_")
    if len(set(names.values())) < len(names):
        raise KdmriError(f"{root}: two files map to the same volume name; rename one of them")
    return names


# ------------------------------------------------------------------------- shared steps
def fit_size(slices: np.ndarray, size: int | tuple[int, int] | None) -> np.ndarray:
    """Centre-crop or zero-pad the in-plane dims (the last two) of ``(S, H, W)`` (or of
    coil images ``(S, C, H, W)``) to ``size`` x ``size``, or to ``(height, width)`` given a
    pair (a crop keeps the middle, starting at ``(n - size) // 2``)."""
    shape = (size, size) if isinstance(size, int) else None if size is None else tuple(size)
    if shape is None or slices.shape[-2:] == shape:
        return slices
    lead = slices.ndim - 2
    crop, pad = [slice(None)] * lead, [(0, 0)] * lead
    for n, want in zip(slices.shape[-2:], shape, strict=True):
        start = max(n - want, 0) // 2
        crop.append(slice(start, start + min(n, want)))
        before = max(want - n, 0) // 2
        pad.append((before, max(want - n, 0) - before))
    return np.ascontiguousarray(np.pad(slices[tuple(crop)], pad))


def volume_scale(volume: np.ndarray, settings: dict, where: str = "volume") -> float:
    """The divisor of :func:`normalize_volume`: ``max`` the volume's maximum, ``percentile``
    its ``percentile``-th percentile over all voxels (of the magnitudes of a complex
    volume). Raises :class:`KdmriError` if it is not positive."""
    kind = settings["kind"]
    values = np.abs(volume) if np.iscomplexobj(volume) else volume
    if kind == "max":
        scale = float(values.max())
    elif kind == "percentile":
        scale = float(np.percentile(values, settings["percentile"]))
    else:
        raise KdmriError(
            f"{where}: unknown normalization kind {kind!r}; expected max or percentile"
        )
    if not scale > 0:
        raise KdmriError(
            f"{where}: cannot normalise: its {kind} is {scale:g}, expected a positive value"
        )
    return scale


def scale_volume(volume: np.ndarray, scale: float) -> np.ndarray:
    """``volume / scale`` in float32 (complex64 for a complex volume); unchanged for 1."""
    if scale == 1.0:
        return volume
    dtype = np.complex64 if np.iscomplexobj(volume) else np.float32
    return (volume / np.float32(scale)).astype(dtype, copy=False)


def normalize_volume(volume: np.ndarray, settings: dict, where: str = "volume") -> np.ndarray:
    """Scale one volume: ``max`` divides by its maximum (as the paper), ``percentile``
    divides by its ``percentile``-th percentile over all voxels (brighter voxels then
    exceed 1). A complex volume is divided by the maximum (or percentile) of its
    magnitudes and stays complex. Raises :class:`KdmriError` if the scale is not positive."""
    return scale_volume(volume, volume_scale(volume, settings, where))


def as_float32(array: np.ndarray, path: Path, what: str) -> np.ndarray:
    """``array`` as float32; an error naming ``path`` and ``what`` when it does not hold
    real numbers or holds NaN or infinite values."""
    if array.dtype.kind not in "fiub":
        raise KdmriError(f"{path}: {what} must hold real numbers, found dtype {array.dtype}")
    array = np.asarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise KdmriError(f"{path}: {what} contains NaN or infinite values")
    return array

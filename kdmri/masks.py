"""Undersampling masks: Cartesian phase-encode line masks and the low-resolution box.

A mask function owns a private ``numpy.random.Generator`` seeded per call, so the same
``(shape, seed)`` always gives the same mask and the global RNG is never touched.
Masks are float32 arrays of 0/1 with shape ``(H, W)``; Cartesian masks sample whole
columns (the phase-encode direction is W, see :mod:`kdmri.mri`).

Masks are saved as ``.npy`` with a ``.json`` sidecar holding their parameters; external
2-D masks (for example the original KD-MRI ``.npy`` masks) load with :func:`load_mask`.

A mask's settings travel with what is made from it: ``kdmri undersample`` writes the
sidecar's parameters into every input store (attribute :data:`MASK_ATTR`), the trainer
copies those of its training store into ``model.pt`` (key ``mask``,
:func:`recorded_settings`), and ``kdmri apply`` makes the mask of those settings at the
size of the volume it is given (:func:`mask_from_settings`).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import ClassVar

import numpy as np

from kdmri.errors import KdmriError
from kdmri.io import atomic_path, write_json


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


class MaskFunc:
    """Base class: subclasses say which columns (or which region) are sampled."""

    name: ClassVar[str] = ""

    def __init__(self, acceleration: float, center_fraction: float = 0.08):
        if not _is_number(acceleration) or not acceleration >= 1:
            raise KdmriError(f"acceleration must be a number >= 1, got {acceleration!r}")
        if not _is_number(center_fraction) or not 0 <= center_fraction <= 1:
            raise KdmriError(f"center_fraction must be a number in [0, 1], got {center_fraction!r}")
        self.acceleration = float(acceleration)
        self.center_fraction = float(center_fraction)

    def params(self) -> dict:
        return {
            "kind": self.name,
            "acceleration": self.acceleration,
            "center_fraction": self.center_fraction,
        }

    def __call__(self, shape: tuple[int, int], seed: int = 0) -> np.ndarray:
        height, width = shape
        rng = np.random.default_rng(seed)
        columns = self.columns(width, rng)
        mask = np.zeros((height, width), dtype=np.float32)
        mask[:, columns] = 1.0
        return mask

    def _center(self, width: int) -> np.ndarray:
        n_low = min(width, max(1, round(width * self.center_fraction)))
        n_total = self._n_lines(width)
        n_low = min(n_low, n_total)
        start = (width - n_low + 1) // 2
        return np.arange(start, start + n_low)

    def _n_lines(self, width: int) -> int:
        return min(width, max(1, round(width / self.acceleration)))

    def columns(self, width: int, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError


class RandomLines(MaskFunc):
    """A fully sampled centre band plus uniformly random other lines; total width/acc lines."""

    name = "random"

    def columns(self, width: int, rng: np.random.Generator) -> np.ndarray:
        center = self._center(width)
        others = np.setdiff1d(np.arange(width), center)
        n_rest = self._n_lines(width) - center.size
        chosen = rng.choice(others, size=n_rest, replace=False) if n_rest > 0 else []
        return np.union1d(center, chosen).astype(int)


class EquispacedLines(MaskFunc):
    """A fully sampled centre band plus equally spaced lines with a random offset."""

    name = "equispaced"

    def columns(self, width: int, rng: np.random.Generator) -> np.ndarray:
        center = self._center(width)
        n_rest = self._n_lines(width) - center.size
        if n_rest <= 0:
            return center
        others = np.setdiff1d(np.arange(width), center)
        offset = rng.uniform(0, others.size / n_rest)
        picks = np.floor(offset + np.arange(n_rest) * others.size / n_rest).astype(int)
        return np.union1d(center, others[np.clip(picks, 0, others.size - 1)]).astype(int)


class LowResBox(MaskFunc):
    """Keeps only the central ``H/acc x W/acc`` block of k-space (super-resolution input).

    ``acceleration`` is the factor per axis: the paper kept 64x64 of 256x256, factor 4.
    """

    name = "lowres"

    def __call__(self, shape: tuple[int, int], seed: int = 0) -> np.ndarray:
        mask = np.zeros(shape, dtype=np.float32)
        slices = []
        for size in shape:
            keep = min(size, max(1, round(size / self.acceleration)))
            start = (size - keep + 1) // 2
            slices.append(slice(start, start + keep))
        mask[tuple(slices)] = 1.0
        return mask

    def params(self) -> dict:
        return {"kind": self.name, "acceleration": self.acceleration}


MASK_FUNCS: dict[str, type[MaskFunc]] = {
    cls.name: cls for cls in (RandomLines, EquispacedLines, LowResBox)
}


def create_mask_func(kind: str, acceleration: float, center_fraction: float = 0.08) -> MaskFunc:
    """Mask function by name; an unknown name raises, listing the known ones."""
    try:
        cls = MASK_FUNCS[kind]
    except KeyError:
        raise KdmriError(
            f"unknown mask kind {kind!r}; expected one of {sorted(MASK_FUNCS)}"
        ) from None
    return cls(acceleration, center_fraction)


def save_mask(mask: np.ndarray, path: str | Path, params: dict) -> None:
    """Write ``mask`` as ``.npy`` and its parameters as a ``.json`` sidecar, atomically."""
    path = Path(path)
    info = dict(params, shape=list(mask.shape), sampled_fraction=float(mask.mean()))
    buffer = io.BytesIO()  # numpy's own file writer hides a full disk's error number
    np.save(buffer, mask.astype(np.float32))
    with atomic_path(path, suffix=".npy") as tmp:
        tmp.write_bytes(buffer.getbuffer())
    write_json(path.with_suffix(".json"), info)


def load_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Load a 2-D 0/1 mask from ``.npy`` (any float or int dtype) as float32.

    Raises :class:`KdmriError` naming the file for a missing or unreadable file, a mask that
    is not 2-D, values other than 0 and 1, or a shape that differs from ``shape``.
    """
    path = Path(path)
    if not path.is_file():
        raise KdmriError(f"{path}: mask file not found")
    try:
        mask = np.load(path, allow_pickle=False)
    except Exception as exc:  # an untrusted file: any failure to parse it is the file's fault
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        raise KdmriError(f"{path}: not a readable .npy mask ({first})") from None
    if not isinstance(mask, np.ndarray):
        raise KdmriError(f"{path}: expected one .npy array, found a {type(mask).__name__} archive")
    if mask.dtype.kind not in "biuf":
        raise KdmriError(f"{path}: expected a real-valued 0/1 mask, found dtype {mask.dtype}")
    if mask.ndim != 2:
        raise KdmriError(f"{path}: expected a 2-D mask (H, W), found shape {mask.shape}")
    if not np.isin(mask, (0, 1)).all():
        bad = np.unique(mask[~np.isin(mask, (0, 1))])[:3]
        raise KdmriError(f"{path}: mask must contain only 0 and 1, found values {bad.tolist()}")
    if shape is not None and tuple(mask.shape) != tuple(shape):
        raise KdmriError(
            f"{path}: mask shape {tuple(mask.shape)} does not match the images {tuple(shape)}"
        )
    return mask.astype(np.float32)


def mask_params(path: str | Path) -> dict:
    """The sidecar parameters of a saved mask ({} for an external mask without one)."""
    sidecar = Path(path).with_suffix(".json")
    return json.loads(sidecar.read_text()) if sidecar.is_file() else {}


#: The input-store attribute holding, as JSON text, the sidecar parameters of the mask the
#: store was undersampled with (kind, acceleration, centre fraction, seed, shape, ...).
MASK_ATTR = "mask_params"


def recorded_settings(store: str | Path) -> dict | None:
    """The mask parameters an input store records (:data:`MASK_ATTR`), or None where it
    has none (a store undersampled from a mask without a sidecar, or by a library call)."""
    from kdmri.data.store import store_info

    text = store_info(store)["attrs"].get(MASK_ATTR)
    return None if text is None else json.loads(text)


def mask_from_settings(record: dict, shape: tuple[int, int], where: str) -> np.ndarray:
    """The mask of recorded settings (``record``: a mask sidecar's parameters, read from a
    file: kind, acceleration, centre fraction, seed) at ``shape``:
    ``create_mask_func(kind, acceleration, center_fraction)(shape, seed)``, the mask
    ``kdmri mask`` makes with them for images of that size. ``where`` (the file) heads the
    one-line error for a record that makes no mask: an external mask file's (kind
    ``file``), an unknown kind, a missing acceleration or seed, a bad value."""
    kind = record["kind"] if "kind" in record else None
    if kind not in MASK_FUNCS:
        known = f"an external mask file {record['file'] if 'file' in record else None!r}" \
            if kind == "file" else f"mask kind {kind!r}"
        raise KdmriError(f"{where}: the model was trained with {known}, which kdmri cannot "
                         f"make at another size; give a mask of shape {tuple(shape)} (--mask)")
    seed = record["seed"] if "seed" in record else None
    if "acceleration" not in record or not isinstance(seed, int) or isinstance(seed, bool) \
            or seed < 0:
        raise KdmriError(f"{where}: mask settings {record} lack an acceleration or a seed "
                         f"(an integer >= 0); give a mask of shape {tuple(shape)} (--mask)")
    options = {"center_fraction": record["center_fraction"]} \
        if "center_fraction" in record else {}  # lowres has none
    try:
        func = create_mask_func(kind, record["acceleration"], **options)
    except KdmriError as exc:
        raise KdmriError(f"{where}: mask settings: {exc}") from None
    return func(tuple(shape), seed=seed)


def effective_acceleration(mask: np.ndarray) -> float:
    return math.inf if mask.sum() == 0 else float(mask.size / mask.sum())

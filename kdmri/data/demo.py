"""Embedded demo dataset: synthetic brain MRI subjects made from the MNI152 2009 template.

Each subject is the MNI152 T1 template (and its grey/white-matter probability maps) shipped
inside nilearn, cropped to the brain, resampled, deformed by a random affine plus a smooth
elastic warp and given a random contrast, gamma and bias field. Nothing is downloaded.

The anatomy of a subject (the warp) and every random draw depend only on ``(seed, index)``,
never on ``contrast``, ``orientation`` or on which other subjects were made, so
``demo_subject(k, contrast="t1")`` and ``demo_subject(k, contrast="t2like")`` show the same
deformed brain (with the same ``voxel_mm`` and ``min_brain_fraction=0`` the slices align).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

ORIENTATIONS = ("axial", "coronal", "sagittal")
CONTRASTS = ("t1", "t2like")

_MARGIN_MM = 10.0  # empty border kept around the brain so the warp does not cut it
_ELASTIC_PEAK_MM = 6.0  # peak elastic displacement (3 voxels at 2 mm)
_BIAS_AMPLITUDE = 0.15
_T2_WEIGHTS = (1.0, 0.65, 0.4)  # CSF, GM, WM


@lru_cache(maxsize=1)
def _templates_1mm() -> np.ndarray:
    """(4, X, Y, Z) float32: T1, GM, WM, brain mask; cropped to the brain plus a margin."""
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=1).get_fdata()
    gm = datasets.load_mni152_gm_template(resolution=1).get_fdata()
    wm = datasets.load_mni152_wm_template(resolution=1).get_fdata()
    mask = (t1 > 0.2).astype(float)  # nilearn's own MNI152 brain-mask rule
    vols = np.stack([t1, gm, wm, mask]).astype(np.float32)
    idx = np.argwhere(t1 > 0)
    crop = tuple(slice(lo, hi + 1) for lo, hi in zip(idx.min(0), idx.max(0), strict=True))
    m = int(round(_MARGIN_MM))
    vols = np.pad(vols[(slice(None), *crop)], [(0, 0)] + [(m, m)] * 3)
    vols.setflags(write=False)
    return vols


@lru_cache(maxsize=4)
def _templates(voxel_mm: float) -> np.ndarray:
    """The cropped templates resampled to ``voxel_mm`` isotropic (order-1 zoom)."""
    base = _templates_1mm()
    if voxel_mm == 1.0:
        return base
    vols = np.stack([ndimage.zoom(v, 1.0 / voxel_mm, order=1) for v in base])
    vols.setflags(write=False)
    return vols


def _smooth_field(noise: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Upsample coarse noise (k, g, g, g) linearly to ``shape`` and Gaussian-smooth it.

    Both steps are separable linear maps, so they are folded into one (n, g) matrix per axis
    and applied with tensor contractions: no full-size filtering pass is needed.
    """
    g = noise.shape[1]
    mats = []
    for n in shape:
        lin = ndimage.zoom(np.eye(g), (n / g, 1.0), order=1)
        mats.append(ndimage.gaussian_filter1d(lin, 0.5 * n / (g - 1), axis=0, mode="nearest"))
    return np.einsum("kabc,xa,yb,zc->kxyz", noise, *mats, optimize=True)


def _rotation(angles_deg: np.ndarray) -> np.ndarray:
    ax, ay, az = np.deg2rad(angles_deg)
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rx @ ry @ rz


def _to_slices(vol: np.ndarray, orientation: str) -> np.ndarray:
    """(X, Y, Z) volume -> (slices, rows, cols) with anterior/superior at the top."""
    order = {"axial": (2, 1, 0), "coronal": (1, 2, 0), "sagittal": (0, 2, 1)}[orientation]
    return vol.transpose(order)[:, ::-1, :]


def _check_args(
    index: int,
    seed: int,
    size: int,
    voxel_mm: float,
    orientation: str,
    contrast: str,
    min_brain_fraction: float,
) -> None:
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {ORIENTATIONS}, got {orientation!r}")
    if contrast not in CONTRASTS:
        raise ValueError(f"contrast must be one of {CONTRASTS}, got {contrast!r}")
    if int(size) != size or size < 8:
        raise ValueError(f"size must be an integer >= 8, got {size!r}")
    if not voxel_mm > 0 or not np.isfinite(voxel_mm):
        raise ValueError(f"voxel_mm must be a finite number > 0, got {voxel_mm!r}")
    if not 0.0 <= min_brain_fraction <= 1.0:
        raise ValueError(f"min_brain_fraction must be in [0, 1], got {min_brain_fraction!r}")
    if int(index) != index or index < 0:
        raise ValueError(f"index must be a non-negative integer, got {index!r}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def demo_subject(
    index: int,
    *,
    seed: int = 0,
    size: int = 64,
    voxel_mm: float = 2.0,
    orientation: str = "axial",
    contrast: str = "t1",
    min_brain_fraction: float = 0.15,
) -> np.ndarray:
    """One synthetic subject as float32 array (slices, size, size), max 1.

    Subject ``index`` of dataset ``seed``: the MNI152 template at ``voxel_mm`` isotropic,
    warped (random affine: +-8 degrees per axis, scale 0.9-1.1 per axis; smooth elastic
    displacement peaking at 6 mm), with contrast ``"t1"`` (template modulated by GM/WM) or
    ``"t2like"`` (bright CSF, GM brighter than WM), a gamma in 0.8-1.25 and a +-15 % bias
    field. Sliced along ``orientation`` (slices run inferior->superior, posterior->anterior or
    left->right; anterior/superior at the top of each image); slices whose brain area (pixels
    above 5 % of the max) is below ``min_brain_fraction`` of the largest are dropped; each
    slice is zero-padded to a square and resized to ``size`` x ``size``.
    """
    _check_args(index, seed, size, voxel_mm, orientation, contrast, min_brain_fraction)
    size, voxel_mm = int(size), float(voxel_mm)
    rng = np.random.default_rng([int(seed), int(index)])
    # All draws in a fixed order, independent of contrast and orientation.
    angles = rng.uniform(-8.0, 8.0, 3)
    scales = rng.uniform(0.9, 1.1, 3)
    elastic_noise = rng.standard_normal((3, 5, 5, 5))
    a, b = rng.uniform(-0.25, 0.25, 2)
    t2_jitter = rng.uniform(0.9, 1.1, 3)
    gamma = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
    bias_noise = rng.standard_normal((1, 4, 4, 4))

    tmpl = _templates(voxel_mm)
    shape = tmpl.shape[1:]

    # Output voxel o samples the template at M (o - c) + c + d(o): affine and elastic in one go.
    mat = _rotation(angles) @ np.diag(scales)
    centre = (np.array(shape) - 1) / 2.0
    disp = _smooth_field(elastic_noise, shape)
    disp *= (_ELASTIC_PEAK_MM / voxel_mm) / np.sqrt((disp**2).sum(0)).max()
    axes = [np.arange(n, dtype=float) - c for n, c in zip(shape, centre, strict=True)]
    grids = np.meshgrid(*axes, indexing="ij", sparse=True)
    coords = disp
    for i in range(3):
        coords[i] += centre[i] + sum(mat[i, j] * grids[j] for j in range(3))

    def warp(vol: np.ndarray) -> np.ndarray:
        return ndimage.map_coordinates(vol, coords, order=1, mode="constant", cval=0.0)

    gm, wm = warp(tmpl[1]), warp(tmpl[2])
    if contrast == "t1":
        x = warp(tmpl[0]) * (1.0 + a * gm + b * wm)
    else:
        csf = np.clip(warp(tmpl[3]) - gm - wm, 0.0, None)
        w_csf, w_gm, w_wm = np.multiply(_T2_WEIGHTS, t2_jitter)
        x = w_csf * csf + w_gm * gm + w_wm * wm
    x = np.clip(x, 0.0, None)
    x = (x / x.max()) ** gamma
    bias = _smooth_field(bias_noise, shape)[0]
    x *= 1.0 + _BIAS_AMPLITUDE * bias / np.abs(bias).max()

    slices = _to_slices(x, orientation)
    area = (slices > 0.05 * slices.max()).sum(axis=(1, 2))
    slices = slices[area >= min_brain_fraction * area.max()]
    n, h, w = slices.shape
    s = max(h, w)
    top, left = (s - h) // 2, (s - w) // 2
    square = np.zeros((n, 1, s, s), dtype=np.float32)
    square[:, 0, top : top + h, left : left + w] = slices
    out = F.interpolate(
        torch.from_numpy(square),
        size=(size, size),
        mode="bilinear",
        align_corners=False,
        antialias=s > size,
    )[:, 0].numpy()
    out = np.clip(out, 0.0, None)
    return (out / out.max()).astype(np.float32)

"""Image-quality metrics on numpy volumes ``(slices, H, W)``.

PSNR and SSIM follow fastMRI's evaluation: the data range is the maximum of the target
volume, and SSIM (scikit-image, 7x7 window) is computed per slice and averaged.
NMSE = ||gt - pred||^2 / ||gt||^2; HFEN = ||LoG(gt) - LoG(pred)||_2 / ||LoG(gt)||_2 with a
Laplacian of Gaussian of sigma 1.5 applied per slice.

Complex images (a dataset prepared from k-space) are compared by their magnitudes ``|x|``
(fastMRI evaluates magnitude images): every function takes the magnitude of complex
inputs first, so the data range is the volume's maximum magnitude and the tables of
complex and magnitude studies measure the same thing.

The ``*_slices`` variants return one value per slice (data range still the volume's
maximum unless given) for per-slice tables and paired tests. Identical inputs give
PSNR = inf without a warning.

Two ways to average over a test set follow from them (``kdmri.stats``): *slice-pooled*,
the mean of the per-slice values over every test slice, and *volume-wise*, fastMRI's
leaderboard convention (its ``evaluate.py``): per volume ``psnr``, ``ssim`` and ``nmse``
of the whole volume, i.e. PSNR = 10 log10(max^2 / MSE of the volume), SSIM = the mean of
its slices' SSIM, NMSE = ||gt - pred||^2 / ||gt||^2 over the volume, each with the
volume's own maximum as data range, then the mean over volumes. :func:`evaluation_metrics`
gives both for one volume.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_laplace
from skimage.metrics import structural_similarity

HFEN_SIGMA = 1.5


def magnitude(image) -> np.ndarray:
    """``|x|`` of a complex array; a real array unchanged."""
    image = np.asarray(image)
    return np.abs(image) if np.iscomplexobj(image) else image


def _check(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gt = np.asarray(magnitude(gt), dtype=np.float64)
    pred = np.asarray(magnitude(pred), dtype=np.float64)
    if gt.shape != pred.shape:
        raise ValueError(f"target {gt.shape} and prediction {pred.shape} differ in shape")
    if gt.ndim != 3:
        raise ValueError(f"expected volumes (slices, H, W), got shape {gt.shape}")
    return gt, pred


def _psnr(mse: np.ndarray, data_range: float) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(data_range**2 / mse)


def psnr_slices(gt, pred, data_range: float | None = None) -> np.ndarray:
    gt, pred = _check(gt, pred)
    data_range = gt.max() if data_range is None else data_range
    return _psnr(((gt - pred) ** 2).mean(axis=(1, 2)), data_range)


def psnr(gt, pred, data_range: float | None = None) -> float:
    gt, pred = _check(gt, pred)
    data_range = gt.max() if data_range is None else data_range
    return float(_psnr(((gt - pred) ** 2).mean(), data_range))


def ssim_slices(gt, pred, data_range: float | None = None) -> np.ndarray:
    gt, pred = _check(gt, pred)
    data_range = gt.max() if data_range is None else data_range
    return np.array(
        [structural_similarity(g, p, data_range=data_range) for g, p in zip(gt, pred, strict=True)]
    )


def ssim(gt, pred, data_range: float | None = None) -> float:
    return float(ssim_slices(gt, pred, data_range).mean())


def nmse_slices(gt, pred) -> np.ndarray:
    gt, pred = _check(gt, pred)
    return ((gt - pred) ** 2).sum(axis=(1, 2)) / (gt**2).sum(axis=(1, 2))


def nmse(gt, pred) -> float:
    gt, pred = _check(gt, pred)
    return float(((gt - pred) ** 2).sum() / (gt**2).sum())


def _log(volume: np.ndarray) -> np.ndarray:
    # Per slice: with sigma 0 on the slice axis scipy skips that axis' smoothing but still
    # adds its "second derivative" term, which then is the blurred image itself.
    out = np.empty_like(volume)
    for i, image in enumerate(volume):
        out[i] = gaussian_laplace(image, sigma=HFEN_SIGMA)
    return out


def hfen_slices(gt, pred) -> np.ndarray:
    gt, pred = _check(gt, pred)
    log_gt = _log(gt)
    diff = np.sqrt(((log_gt - _log(pred)) ** 2).sum(axis=(1, 2)))
    return diff / np.sqrt((log_gt**2).sum(axis=(1, 2)))


def hfen(gt, pred) -> float:
    gt, pred = _check(gt, pred)
    log_gt = _log(gt)
    return float(np.linalg.norm(log_gt - _log(pred)) / np.linalg.norm(log_gt))


METRICS = {"psnr": psnr, "ssim": ssim, "nmse": nmse, "hfen": hfen}
SLICE_METRICS = {
    "psnr": psnr_slices,
    "ssim": ssim_slices,
    "nmse": nmse_slices,
    "hfen": hfen_slices,
}


def slice_metrics(gt: np.ndarray, pred: np.ndarray) -> dict[str, np.ndarray]:
    """All per-slice metrics of one volume, data range = the volume's target maximum
    (maximum magnitude for complex images)."""
    gt, pred = magnitude(gt), magnitude(pred)
    data_range = float(np.max(gt))
    return {
        "psnr": psnr_slices(gt, pred, data_range),
        "ssim": ssim_slices(gt, pred, data_range),
        "nmse": nmse_slices(gt, pred),
        "hfen": hfen_slices(gt, pred),
    }


def evaluation_metrics(gt: np.ndarray, pred: np.ndarray) -> tuple[dict[str, np.ndarray],
                                                                 dict[str, float]]:
    """The metrics of one test volume ``(slices, H, W)``: per slice (:func:`slice_metrics`)
    and per volume, fastMRI's leaderboard metrics ``psnr``, ``ssim`` and ``nmse``
    (:func:`psnr`, :func:`ssim`, :func:`nmse` of the whole volume, data range = the
    volume's target maximum).

    The volume's SSIM is the mean of the per-slice SSIM already computed (what
    :func:`ssim` returns), so SSIM is computed once per slice.
    """
    per_slice = slice_metrics(gt, pred)
    per_volume = {"psnr": psnr(gt, pred), "ssim": float(per_slice["ssim"].mean()),
                  "nmse": nmse(gt, pred)}
    return per_slice, per_volume

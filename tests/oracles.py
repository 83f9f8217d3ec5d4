"""Independent float64 NumPy/SciPy versions of what kdmri computes, for the tests to compare
against: centred FFTs, the zero-filled image, and the metrics written from their formulas."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

AXES = (-2, -1)
#: Sigma of the Laplacian of Gaussian of HFEN.
HFEN_SIGMA = 1.5


def np_fft2c(x: np.ndarray) -> np.ndarray:
    """Centred orthonormal 2-D FFT over the last two dims."""
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=AXES), norm="ortho"), axes=AXES)


def np_ifft2c(k: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=AXES), norm="ortho"), axes=AXES)


def np_zero_filled(target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The real zero-filled image ``Re IFFT(m * FFT(target))`` of real targets."""
    return np_ifft2c(np.asarray(mask, np.float64) * np_fft2c(np.asarray(target, np.float64))).real


def np_psnr(target: np.ndarray, prediction: np.ndarray, peak: float) -> np.ndarray:
    """``10 log10(peak^2 / MSE)`` of each slice ``(N, H, W) -> (N,)``."""
    error = np.asarray(target, np.float64) - np.asarray(prediction, np.float64)
    return 10 * np.log10(peak**2 / (error**2).mean(axis=AXES))


def np_log(image: np.ndarray) -> np.ndarray:
    """2-D Laplacian of Gaussian as the sum of the two second Gaussian derivatives."""
    return (gaussian_filter(image, HFEN_SIGMA, order=(2, 0))
            + gaussian_filter(image, HFEN_SIGMA, order=(0, 2)))


def np_hfen(gt: np.ndarray, pred: np.ndarray) -> float:
    """HFEN of a volume: ``||LoG(gt) - LoG(pred)|| / ||LoG(gt)||``, LoG per slice."""
    diff = np.stack([np_log(g) - np_log(p) for g, p in zip(gt, pred, strict=True)])
    ref = np.stack([np_log(g) for g in gt])
    return float(np.sqrt((diff**2).sum()) / np.sqrt((ref**2).sum()))

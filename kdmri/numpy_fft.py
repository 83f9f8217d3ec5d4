"""The centred orthonormal 2-D FFTs of :mod:`kdmri.mri` on NumPy arrays, for the modules
that do not import torch (the data readers, which the Snakefile imports, and the demo's
simulated coils).

Same conventions as :func:`kdmri.mri.fft2c`, :func:`kdmri.mri.ifft2c` and fastMRI's: the
last two dims are spatial, the zero frequency sits at the centre (``fftshift``), and the
transform is orthonormal (``norm="ortho"``), so it keeps the energy of the data.
"""

from __future__ import annotations

import numpy as np


def ifft2c(kspace: np.ndarray) -> np.ndarray:
    """The centred orthonormal 2-D inverse FFT over the last two dims, complex64:
    ``fftshift(ifft2(ifftshift(k), norm="ortho"))``."""
    shifted = np.fft.ifftshift(kspace, axes=(-2, -1))
    image = np.fft.ifft2(shifted, axes=(-2, -1), norm="ortho")
    return np.fft.fftshift(image, axes=(-2, -1)).astype(np.complex64)


def fft2c(image: np.ndarray) -> np.ndarray:
    """The centred orthonormal 2-D FFT over the last two dims, complex64:
    ``fftshift(fft2(ifftshift(x), norm="ortho"))``."""
    shifted = np.fft.ifftshift(image, axes=(-2, -1))
    kspace = np.fft.fft2(shifted, axes=(-2, -1), norm="ortho")
    return np.fft.fftshift(kspace, axes=(-2, -1)).astype(np.complex64)

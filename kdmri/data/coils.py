"""Simulated coil arrays: the embedded demo as a multi-coil acquisition
(``simulated_coils`` of a demo dataset).

Each demo volume of magnitude slices ``m`` (S, H, W) becomes what a fastMRI multi-coil
file gives after its inverse FFT, the coil images (S, C, H, W), in four steps:

1. **A smooth complex image** ``x = m exp(i phi)``. The background phase ``phi`` is a
   second-order polynomial of the normalised coordinates ``u`` (across the columns) and
   ``v`` (down the rows), both in [-1, 1]:
   ``phi = a0 + a1 u + a2 v + a3 u^2 + a4 u v + a5 v^2``, ``a0`` uniform in [-pi, pi), the
   others uniform in [-pi/2, pi/2], drawn once per volume (its slices share one field).
2. **Coil sensitivities** ``S_c``: sigpy's birdcage maps
   (``sigpy.mri.birdcage_maps((C, H, W))``: a ring of C coils at 1.5 times the half field
   of view, each of magnitude 1 / distance and a phase turning with the angle around it),
   normalised so that ``sum_c |S_c|^2 = 1`` at every pixel, the object included. The RSS
   of the noise-free coil images is then ``m``. The same maps serve every volume (one
   scanner, one coil array).
3. **k-space with noise**: ``k_c = F(S_c x) + n_c``, ``F`` the centred orthonormal FFT
   (:func:`kdmri.numpy_fft.fft2c`), ``n`` complex white Gaussian noise of standard deviation
   ``sigma`` (real and imaginary parts each of standard deviation ``sigma / sqrt(2)``, so
   that ``E |n|^2 = sigma^2``). The signal-to-noise ratio fixes ``sigma``:

   ``SNR_dB = 20 log10(rms(F(S x)) / sigma)``,

   ``rms`` the root-mean-square of the noise-free k-space over all the volume's slices,
   coils and samples: one ``sigma`` per volume, as one scan has one noise level (its dark
   slices have less SNR than its bright ones). ``F`` being orthonormal, ``rms`` is also the
   RMS of the noise-free coil images, and the noise of the coil images ``F^H n`` is white
   with the same ``sigma``. No SNR (``snr_db`` null) adds no noise.
4. **The coil images** ``F^H k_c`` (:func:`kdmri.numpy_fft.ifft2c`), complex64.

Every draw comes from generators seeded by the given seed (the dataset's seed, the
subject, its orientation and ``simulated_coils.seed``): the phase from one stream and the
noise from another, so a volume made with and without noise has one phase, and the same
seed gives the same data. This module imports sigpy when coils are simulated, not before,
and never imports torch (the readers, which the Snakefile imports, import it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kdmri.errors import KdmriError
from kdmri.numpy_fft import fft2c, ifft2c

#: Relative radius of the birdcage ring (sigpy's default): the coils sit outside the field
#: of view, at 1.5 times its half width.
BIRDCAGE_RADIUS = 1.5
#: Half range of the random phase coefficients: constant, then the linear and quadratic ones.
PHASE_RANGE = (np.pi, np.pi / 2)
_PHASE_STREAM, _NOISE_STREAM = 1, 2


def coil_settings(dataset: dict) -> dict | None:
    """A dataset's simulated-coil settings (its ``simulated_coils``, defaults filled), or
    None where it asks for none: the key not set (it has no default, so the configs and
    data of studies without it are unchanged) or ``count: 0``."""
    if "simulated_coils" not in dataset:  # not set: no coils (see the schema)
        return None
    settings = dataset["simulated_coils"]
    return None if settings["count"] == 0 else settings


def compression_settings(dataset: dict) -> dict | None:
    """A dataset's coil-compression settings (its ``coil_compression``), or None where it
    asks for none (the key not set: it has no default, so the configs and data of studies
    without it are unchanged)."""
    if "coil_compression" not in dataset:  # not set: no compression (see the schema)
        return None
    return dataset["coil_compression"]


def compress_coils(images: np.ndarray, count: int) -> tuple[np.ndarray, float]:
    """SVD coil compression of one volume's coil images ``X`` (S, C, H, W) to ``count``
    virtual coils (Buehrer et al., MRM 2007; Huang et al., MRI 2008): with the coil
    covariance ``R = sum over slices and pixels of x x^H`` (C x C) and ``U`` its
    ``count`` eigenvectors of largest eigenvalue (C x count, orthonormal columns), the
    virtual coils are ``Y = U^H X`` (S, count, H, W), complex64. One ``U`` per volume, as
    its slices share one coil array. ``U U^H`` is the orthogonal projection onto the
    subspace keeping the most signal energy, so the RSS of ``Y`` is at most the RSS of
    ``X`` and equals it when ``count`` = C. Returns ``(Y, kept)``, ``kept`` the share of
    the volume's energy ``sum |Y|^2 / sum |X|^2`` (the top ``count`` eigenvalues over the
    trace of ``R``)."""
    coils = images.shape[1]
    if not 1 <= count <= coils:
        raise KdmriError(f"coil compression to {count} coils needs 1 to {coils} (the coils "
                         "of the volume)")
    x = images.astype(np.complex128)
    covariance = np.einsum("schw,sdhw->cd", x, x.conj())
    values, vectors = np.linalg.eigh(covariance)  # ascending
    basis = vectors[:, ::-1][:, :count]
    virtual = np.einsum("cn,schw->snhw", basis.conj(), x)
    total = float(values.clip(min=0).sum())
    kept = float(values[::-1][:count].clip(min=0).sum()) / total if total > 0 else 1.0
    return virtual.astype(np.complex64), kept


def birdcage_sensitivities(count: int, shape: Sequence[int]) -> np.ndarray:
    """Birdcage coil sensitivities ``(count, H, W)`` (complex64) normalised so that
    ``sum_c |S_c|^2 = 1`` at every pixel."""
    if int(count) != count or count < 1:
        raise KdmriError(f"simulated coils: expected at least one coil, found {count!r}")
    try:
        from sigpy.mri import birdcage_maps
    except ImportError as exc:
        raise KdmriError(
            f"simulated coils need the package sigpy ({exc}); pip install sigpy"
        ) from None
    maps = birdcage_maps((int(count), *map(int, shape)), r=BIRDCAGE_RADIUS)
    maps = maps / np.sqrt((np.abs(maps) ** 2).sum(axis=0))
    return maps.astype(np.complex64)


def smooth_phase(shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """A smooth background phase ``(H, W)`` (radians, float64): the second-order polynomial
    of the module docstring with coefficients drawn from ``rng``."""
    height, width = shape
    v, u = np.meshgrid(np.linspace(-1, 1, height), np.linspace(-1, 1, width), indexing="ij")
    constant = rng.uniform(-PHASE_RANGE[0], PHASE_RANGE[0])
    a1, a2, a3, a4, a5 = rng.uniform(-PHASE_RANGE[1], PHASE_RANGE[1], 5)
    return constant + a1 * u + a2 * v + a3 * u * u + a4 * u * v + a5 * v * v


def noise_std(kspace: np.ndarray, snr_db: float) -> float:
    """The noise standard deviation ``sigma`` (``E |n|^2 = sigma^2``) that puts noise-free
    ``kspace`` at ``snr_db``: ``rms(kspace) / 10^(snr_db / 20)``."""
    rms = float(np.sqrt(np.mean(np.abs(kspace.astype(np.complex128)) ** 2)))
    return rms / 10.0 ** (snr_db / 20.0)


def _generator(seed, stream: int) -> np.random.Generator:
    return np.random.default_rng([*map(int, np.atleast_1d(seed)), stream])


def simulate_coils(volume: np.ndarray, count: int, snr_db: float | None, seed) -> np.ndarray:
    """The coil images ``(S, count, H, W)`` (complex64) of a simulated acquisition of the
    magnitude slices ``volume`` (S, H, W): a smooth phase, birdcage sensitivities and
    complex Gaussian k-space noise at ``snr_db`` (None: no noise), as the module docstring
    defines them; ``seed`` an integer or a sequence of them."""
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise KdmriError(f"simulated coils: expected slices (S, H, W), found {volume.shape}")
    maps = birdcage_sensitivities(count, volume.shape[1:])
    phase = smooth_phase(volume.shape[1:], _generator(seed, _PHASE_STREAM))
    image = (volume * np.exp(1j * phase)).astype(np.complex64)
    kspace = fft2c(maps[None] * image[:, None])
    if snr_db is not None:
        sigma = noise_std(kspace, snr_db)
        noise = _generator(seed, _NOISE_STREAM).standard_normal((2, *kspace.shape))
        kspace = kspace + (sigma / np.sqrt(2.0) * (noise[0] + 1j * noise[1])).astype(np.complex64)
    return ifft2c(kspace)

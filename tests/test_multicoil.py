"""Multi-coil data: the SENSE operators and multi-coil data consistency of kdmri.mri against
NumPy computations written here, their adjointness; fastMRI multi-coil files read and
prepared (coil images, the RSS target, the stores' coil data); ESPIRiT sensitivity maps."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from kdmri import mri
from kdmri.config import validate
from kdmri.data.prepare import prepare_dataset, undersample_store
from kdmri.data.readers import dataset_spec, fastmri_volumes
from kdmri.data.sensitivity import espirit_maps
from kdmri.data.store import (
    SliceDataset,
    StoreWriter,
    coil_count,
    derive_per_slice_key,
    read_store,
    store_info,
)
from kdmri.errors import KdmriError
from kdmri.keys import SPLITS
from tests.oracles import np_fft2c, np_ifft2c

# ------------------------------------------------------------------------ test data
SHAPES = [(16, 16), (15, 20), (12, 9)]


def random_complex(shape, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.complex(torch.randn(shape, generator=g), torch.randn(shape, generator=g))


def random_mask(shape, seed=0) -> torch.Tensor:
    """A column mask ``(1, W)`` with about half the columns sampled."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand((1, shape[-1]), generator=g) < 0.5).float()


def smooth_maps(coils: int, shape, seed: int = 0) -> np.ndarray:
    """Smooth coil sensitivities ``(C, H, W)``: Gaussian profiles centred around a ring
    with a slowly varying phase each, normalised so that ``sum_c |S_c|^2 = 1``."""
    rng = np.random.default_rng(seed)
    h, w = shape
    y, x = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    maps = []
    for c in range(coils):
        angle = 2 * np.pi * c / coils
        cy, cx = 0.9 * np.sin(angle), 0.9 * np.cos(angle)
        magnitude = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / 0.8)
        phase = rng.uniform(-1, 1) * x + rng.uniform(-1, 1) * y + rng.uniform(-np.pi, np.pi)
        maps.append(magnitude * np.exp(1j * phase))
    maps = np.stack(maps)
    return maps / np.sqrt((np.abs(maps) ** 2).sum(axis=0))


def phantom(shape, seed: int = 0) -> np.ndarray:
    """A complex object: an ellipse with smooth edges and some texture, a smooth phase,
    and nothing outside it."""
    rng = np.random.default_rng(seed)
    h, w = shape
    y, x = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    radius = (y / 0.7) ** 2 + (x / 0.55) ** 2
    support = 1 / (1 + np.exp((radius - 1) * 20))
    texture = 0.6 + 0.4 * np.cos(3 * np.pi * x + rng.uniform(0, np.pi)) * np.sin(2 * np.pi * y)
    phase = np.pi * (0.3 * x - 0.2 * y + rng.uniform(-0.5, 0.5))
    return support * texture * np.exp(1j * phase)


def centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return image[..., top:top + size, left:left + size]


# fastMRI's layout: a 2x oversampled read-out (H) around the object, cropped to SIZE x SIZE
SIZE, FULL = 24, (48, 28)
COILS = 4


def make_multicoil_file(path: Path, slices: int = 2, coils: int = COILS, seed: int = 0,
                        full=FULL) -> tuple[np.ndarray, np.ndarray]:
    """A fastMRI-layout multi-coil file: ``kspace`` (slices, coils, H, W) of known images
    ``x`` (slices, H, W) seen through known normalised maps ``S`` (coils, H, W):
    ``k_c = FFT(S_c x)``. Returns ``(x, S)``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    maps = smooth_maps(coils, full, seed=seed)
    images = np.stack([phantom((full[0] // 2, full[1]), seed=seed + s) for s in range(slices)])
    images = np.pad(images, ((0, 0), (full[0] // 4, full[0] // 4), (0, 0)))  # the oversampling
    kspace = np_fft2c(maps[None] * images[:, None]).astype(np.complex64)
    with h5py.File(path, "w") as handle:
        handle["kspace"] = kspace
        handle["reconstruction_rss"] = np.abs(centre_crop(images, SIZE)).astype(np.float32)
        handle.attrs["acquisition"] = "CORPD_FBK"
    return images, maps


def multicoil_dataset(path: Path, **options) -> dict:
    entry = {"format": "fastmri", "path": str(path), "source": "kspace", "size": SIZE, **options}
    return validate({"datasets": {"mc": entry}})["datasets"]["mc"]


def multicoil_files(root: Path, n: int = 3, **options) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {f"file{i}": make_multicoil_file(root / f"file{i}.h5", seed=10 * i, **options)
            for i in range(n)}


# ------------------------------------------------------- the operators against NumPy
def np_sense_forward(x, maps, mask):
    """``A x = M F (S_c x)`` in float64: x (..., 1, H, W), maps (..., C, H, W)."""
    return mask * np_fft2c(maps * x)


def np_sense_adjoint(y, maps, mask):
    """``A^H y = sum_c conj(S_c) F^H (M y_c)`` in float64."""
    return (np.conj(maps) * np_ifft2c(mask * y)).sum(axis=-3, keepdims=True)


@pytest.mark.parametrize("shape", SHAPES)
def test_sense_forward_and_adjoint_match_numpy(shape):
    maps, x = random_complex((2, 5, *shape), seed=1), random_complex((2, 1, *shape), seed=2)
    y, mask = random_complex((2, 5, *shape), seed=3), random_mask(shape, seed=4)
    got = mri.sense_forward(x, maps, mask)
    assert got.dtype == torch.complex64 and got.shape == (2, 5, *shape)
    np.testing.assert_allclose(got.numpy(), np_sense_forward(x.numpy(), maps.numpy(), mask.numpy()),
                               rtol=0, atol=2e-5)
    back = mri.sense_adjoint(y, maps, mask)
    assert back.dtype == torch.complex64 and back.shape == (2, 1, *shape)
    np.testing.assert_allclose(back.numpy(), np_sense_adjoint(y.numpy(), maps.numpy(), mask.numpy()),
                               rtol=0, atol=5e-5)
    # unmasked: the expansion E and reduction R of E2E-VarNet
    ones = np.ones(shape)
    np.testing.assert_allclose(mri.sense_expand(x, maps).numpy(),
                               np_sense_forward(x.numpy(), maps.numpy(), ones), rtol=0, atol=2e-5)
    np.testing.assert_allclose(mri.sense_reduce(y, maps).numpy(),
                               np_sense_adjoint(y.numpy(), maps.numpy(), ones), rtol=0, atol=5e-5)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mask_kind", ["columns", "per_sample", "ones"])
def test_sense_adjointness_on_random_data(shape, mask_kind):
    """``<A x, y> = <x, A^H y>`` for random complex x, y and maps (not normalised)."""
    maps, x = random_complex((3, 6, *shape), seed=5), random_complex((3, 1, *shape), seed=6)
    y = random_complex((3, 6, *shape), seed=7)
    mask = {"columns": random_mask(shape, seed=8),
            "per_sample": (torch.rand((3, 1, *shape), generator=torch.Generator().manual_seed(9))
                           < 0.4).float(),
            "ones": torch.ones(shape)}[mask_kind]
    left = torch.vdot(mri.sense_forward(x, maps, mask).flatten().to(torch.complex128),
                      y.flatten().to(torch.complex128))
    right = torch.vdot(x.flatten().to(torch.complex128),
                       mri.sense_adjoint(y, maps, mask).flatten().to(torch.complex128))
    assert abs(left - right) <= 1e-5 * abs(left)
    assert abs(left) > 1  # the inner products are not trivially zero


def test_coil_combination_and_rss_match_numpy():
    coils, maps = random_complex((2, 5, 10, 12), seed=10), random_complex((2, 5, 10, 12), seed=11)
    expected = (np.conj(maps.numpy()) * coils.numpy()).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(mri.coil_combine(coils, maps).numpy(), expected, rtol=0, atol=1e-5)
    expected_rss = np.sqrt((np.abs(coils.numpy().astype(np.complex128)) ** 2).sum(axis=1))
    got = mri.rss(coils)
    assert got.dtype == torch.float32 and got.shape == (2, 10, 12)
    np.testing.assert_allclose(got.numpy(), expected_rss, rtol=2e-6)
    assert mri.rss(coils, keepdim=True).shape == (2, 1, 10, 12)


def test_normalised_maps_make_combination_invert_the_coil_weighting():
    maps = torch.from_numpy(smooth_maps(6, (20, 18))).to(torch.complex64)
    x = random_complex((1, 1, 20, 18), seed=12)
    coils = maps * x
    torch.testing.assert_close(mri.coil_combine(coils, maps), x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mri.rss(coils, keepdim=True), x.abs(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mri.sense_reduce(mri.sense_expand(x, maps), maps), x,
                               atol=1e-5, rtol=1e-5)


def test_sense_operators_refuse_mismatched_shapes():
    maps = random_complex((4, 8, 8))
    with pytest.raises(ValueError, match="does not match maps"):
        mri.sense_expand(random_complex((1, 8, 6)), maps)
    with pytest.raises(ValueError, match="maps must have at least 3 dims"):
        mri.coil_combine(random_complex((4, 8, 8)), random_complex((8, 8)))


# ------------------------------------------------------ multi-coil data consistency
def np_hard_dc(x, k0, maps, mask):
    """``sum_c conj(S_c) F^H (m k0_c + (1 - m) F(S_c x))`` in float64."""
    k = np_fft2c(maps * x)
    return (np.conj(maps) * np_ifft2c(mask * k0 + (1 - mask) * k)).sum(axis=-3, keepdims=True)


@pytest.mark.parametrize("shape", [(16, 16), (15, 20), (12, 9)])
@pytest.mark.parametrize("per_sample", [False, True])
def test_hard_multicoil_dc_matches_numpy(shape, per_sample):
    maps, x = random_complex((2, 4, *shape), seed=13), random_complex((2, 1, *shape), seed=14)
    if per_sample:
        g = torch.Generator().manual_seed(15)
        mask = (torch.rand((2, 1, 1, shape[-1]), generator=g) < 0.5).float().expand(2, 1, *shape)
    else:
        mask = random_mask(shape, seed=15)
    k0 = random_complex((2, 4, *shape), seed=16) * mask
    got = mri.multicoil_data_consistency(x, k0, maps, mask)
    assert got.dtype == torch.complex64 and got.shape == (2, 1, *shape)
    expected = np_hard_dc(x.numpy(), k0.numpy(), maps.numpy(), mask.numpy())
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-4)


def test_hard_multicoil_dc_keeps_a_consistent_image_and_replaces_the_measured_lines():
    maps = torch.from_numpy(smooth_maps(5, (16, 14))).to(torch.complex64)
    truth, guess = random_complex((1, 1, 16, 14), seed=17), random_complex((1, 1, 16, 14), seed=18)
    mask = random_mask((16, 14), seed=19)
    k0 = mri.sense_forward(truth, maps, mask)
    dc = mri.MulticoilDataConsistency(k0, maps, mask)
    # the truth agrees with its measurement: unchanged
    torch.testing.assert_close(dc(truth), truth, atol=1e-5, rtol=1e-5)
    # fully sampled: any guess becomes the measured image
    full = mri.MulticoilDataConsistency(mri.sense_expand(truth, maps), maps, torch.ones(16, 14))
    torch.testing.assert_close(full(guess), truth, atol=1e-5, rtol=1e-5)
    # nothing sampled: the guess stays
    empty = mri.MulticoilDataConsistency(torch.zeros_like(k0), maps, torch.zeros(16, 14))
    torch.testing.assert_close(empty(guess), guess, atol=1e-5, rtol=1e-5)


def test_hard_multicoil_dc_stays_float32_under_autocast():
    maps, x = random_complex((1, 3, 8, 8), seed=20), random_complex((1, 1, 8, 8), seed=21)
    mask = random_mask((8, 8), seed=22)
    dc = mri.MulticoilDataConsistency(random_complex((1, 3, 8, 8), seed=23) * mask, maps, mask)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got = dc(x)
    assert got.dtype == torch.complex64
    torch.testing.assert_close(got, dc(x))


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_soft_dc_matches_numpy(weight):
    k, k0 = random_complex((2, 4, 10, 12), seed=24), random_complex((2, 4, 10, 12), seed=25)
    mask = random_mask((10, 12), seed=26)
    got = mri.soft_data_consistency(k, k0, mask, torch.tensor(weight))
    m = mask.numpy()
    expected = k.numpy() - m * (k.numpy() - k0.numpy()) * weight
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-6)
    if weight == 1.0:  # eta = 1 replaces the sampled entries with the measured ones
        np.testing.assert_allclose(got.numpy(), m * k0.numpy() + (1 - m) * k.numpy(), atol=1e-6)


def test_soft_dc_weight_is_learnt():
    step = mri.SoftDataConsistency()
    assert [name for name, _ in step.named_parameters()] == ["weight"]
    assert step.weight.item() == 1.0
    k, k0 = random_complex((1, 3, 8, 8), seed=27), random_complex((1, 3, 8, 8), seed=28)
    mask = random_mask((8, 8), seed=29)
    out = step(k, k0, mask)
    out.abs().pow(2).sum().backward()
    assert step.weight.grad is not None and step.weight.grad.abs() > 0
    # d/d eta of sum |k - eta m (k - k0)|^2 at eta: -2 Re <m (k - k0), k - eta m (k - k0)>
    d = mask.numpy() * (k.numpy() - k0.numpy())
    expected = -2 * np.real(np.vdot(d, k.numpy() - d))
    assert step.weight.grad.item() == pytest.approx(expected, rel=1e-4)


# --------------------------------------------------- reading fastMRI multi-coil files
def test_a_multicoil_file_comes_back_as_its_coil_images_and_rss_target(tmp_path):
    """The acceptance test: a fastMRI-layout multi-coil file made from known images and
    known normalised maps; the reader gives the cropped coil images S_c x, and the
    prepared target is their RSS, i.e. |x| cropped (normalised), within 1e-5."""
    files = multicoil_files(tmp_path / "src")
    cfg = multicoil_dataset(tmp_path / "src")
    volumes = {name: coils for _, name, coils in fastmri_volumes(cfg)}
    assert set(volumes) == set(files)
    for name, coils in volumes.items():
        images, maps = files[name]
        assert coils.dtype == np.complex64 and coils.shape == (2, COILS, SIZE, SIZE)
        np.testing.assert_allclose(coils, centre_crop(maps[None] * images[:, None], SIZE),
                                   rtol=0, atol=1e-5)
    info = prepare_dataset("mc", cfg, tmp_path / "out", progress=False)
    assert info["coils"] == COILS and info["complex"] is False
    assert info["sensitivity_maps"] is None
    assert json.loads((tmp_path / "out" / "info.json").read_text())["coils"] == COILS
    for split in SPLITS:
        path = tmp_path / "out" / f"{split}.h5"
        keys = store_info(path)["keys"]
        assert keys["target"] == ((2, SIZE, SIZE), "float32")
        assert keys["coils"] == ((2, COILS, SIZE, SIZE), "complex64")
        assert "maps" not in keys and coil_count(path) == COILS
        store = read_store(path, ["target", "coils", "volume"])
        for v, name in enumerate(store["volume_names"]):
            images, maps = files[name]
            rss = np.abs(centre_crop(images, SIZE))  # sum_c |S_c|^2 = 1: the RSS is |x|
            np.testing.assert_allclose(store["target"][store["volume"] == v], rss / rss.max(),
                                       rtol=0, atol=1e-5)
            coils = centre_crop(maps[None] * images[:, None], SIZE) / rss.max()
            np.testing.assert_allclose(store["coils"][store["volume"] == v], coils,
                                       rtol=0, atol=1e-5)
        np.testing.assert_allclose(mri.rss(torch.from_numpy(store["coils"])).numpy(),
                                   store["target"], rtol=0, atol=1e-6)


def test_the_stores_multicoil_data_read_per_slice_and_with_max_slices(tmp_path):
    multicoil_files(tmp_path / "src", n=3)
    cfg = multicoil_dataset(tmp_path / "src", max_slices=1)
    prepare_dataset("mc", cfg, tmp_path / "out", progress=False)
    full = tmp_path / "full"
    prepare_dataset("mc", multicoil_dataset(tmp_path / "src"), full, progress=False)
    for split in SPLITS:
        small = read_store(tmp_path / "out" / f"{split}.h5", ["target", "coils", "slice"])
        assert small["coils"].shape == (1, COILS, SIZE, SIZE)
        whole = read_store(full / f"{split}.h5", ["target", "coils"])
        row = int(small["slice"][0])  # the kept slice, with its coil images
        np.testing.assert_array_equal(small["target"][0], whole["target"][row])
        np.testing.assert_array_equal(small["coils"][0], whole["coils"][row])
    data = SliceDataset(full / "train.h5", keys=["target", "coils"])
    item = data[1]
    assert item["coils"].shape == (COILS, SIZE, SIZE) and item["coils"].dtype == torch.complex64


@pytest.mark.parametrize("other", ["coils", "single"])
def test_files_of_another_coil_count_are_refused_in_one_line(tmp_path, other):
    multicoil_files(tmp_path, n=2)
    if other == "coils":
        make_multicoil_file(tmp_path / "zz_other.h5", coils=COILS + 2)
    else:
        with h5py.File(tmp_path / "zz_other.h5", "w") as handle:
            handle["kspace"] = np_fft2c(phantom(FULL)[None]).astype(np.complex64)
    with pytest.raises(KdmriError) as error:
        prepare_dataset("mc", multicoil_dataset(tmp_path), tmp_path / "out", progress=False)
    message = str(error.value)
    assert "\n" not in message and "zz_other.h5" in message
    assert "file0.h5" in message or "file1.h5" in message  # the first file read
    assert "same number of coils" in message
    assert ("6 coils" in message) if other == "coils" else ("single-coil" in message)
    assert not (tmp_path / "out" / "train.h5").exists()


def np_coil_compression(x: np.ndarray, count: int) -> tuple[np.ndarray, float]:
    """The virtual coils of one volume (S, C, H, W) by the SVD of the coils-by-samples
    matrix, float64: its leading left singular vectors ``U``, ``U^H X``, and the share of
    the energy kept (the leading squared singular values over all of them)."""
    matrix = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)
    u, singular, _ = np.linalg.svd(matrix, full_matrices=False)
    virtual = np.moveaxis((u[:, :count].conj().T @ matrix).reshape(count, x.shape[0],
                                                                     *x.shape[2:]), 0, 1)
    return virtual, float((singular[:count] ** 2).sum() / (singular ** 2).sum())


@pytest.mark.parametrize("count", [1, 3, COILS + 2])
def test_coil_compression_against_the_svd(count):
    """Virtual coils ``U^H X`` with ``U`` the coil covariance's leading eigenvectors: the
    projection ``U U^H X`` (unique, whatever each vector's phase) and each virtual coil's
    energy equal those of the SVD computed here; the share of the energy kept too; with as
    many virtual coils as coils the RSS image is the original's."""
    from kdmri.data.coils import compress_coils

    rng = np.random.default_rng(3)
    x = (np.stack([smooth_maps(COILS + 2, (SIZE, SIZE), seed=s) for s in range(2)])
         * phantom((SIZE, SIZE))[None, None]
         + 0.01 * (rng.standard_normal((2, COILS + 2, SIZE, SIZE))
                   + 1j * rng.standard_normal((2, COILS + 2, SIZE, SIZE))))
    virtual, kept = compress_coils(x.astype(np.complex64), count)
    expected, expected_kept = np_coil_compression(x, count)
    assert virtual.shape == (2, count, SIZE, SIZE) and virtual.dtype == np.complex64
    np.testing.assert_allclose((np.abs(virtual) ** 2).sum(axis=(0, 2, 3)),
                               (np.abs(expected) ** 2).sum(axis=(0, 2, 3)), rtol=1e-4)
    assert kept == pytest.approx(expected_kept, rel=1e-6)
    assert kept == pytest.approx((np.abs(virtual) ** 2).sum() / (np.abs(x) ** 2).sum(), rel=1e-5)
    rss = np.sqrt((np.abs(virtual) ** 2).sum(axis=1))
    original = np.sqrt((np.abs(x) ** 2).sum(axis=1))
    assert (rss <= original * (1 + 1e-5) + 1e-6).all()
    if count == COILS + 2:
        np.testing.assert_allclose(rss, original, rtol=1e-4, atol=1e-6)
    with pytest.raises(KdmriError, match=r"coil compression to 7 coils needs 1 to 6"):
        compress_coils(x.astype(np.complex64), COILS + 3)


def test_coil_compression_makes_one_dataset_of_files_of_several_coil_arrays(tmp_path):
    """Files of 4 and 6 coils, refused together as they are, make one dataset compressed
    to 3 virtual coils: each volume's stored coils are the virtual coils of its own coil
    images, and the target is their RSS; a file with fewer coils than asked is refused
    naming it; the option is one of fastmri k-space datasets only."""
    multicoil_files(tmp_path / "src", n=3)
    make_multicoil_file(tmp_path / "src" / "zz_six.h5", coils=COILS + 2, seed=7)
    cfg = multicoil_dataset(tmp_path / "src", coil_compression={"coils": 3})
    assert dataset_spec(cfg)["coil_compression"] == {"coils": 3}
    assert "coil_compression" not in dataset_spec(multicoil_dataset(tmp_path / "src"))
    prepare_dataset("mc", cfg, tmp_path / "out", progress=False)
    stored = {split: read_store(tmp_path / "out" / f"{split}.h5", ["coils", "target", "volume"])
              for split in SPLITS}
    volumes = {}
    for split, data in stored.items():
        assert data["coils"].shape[1] == 3
        np.testing.assert_allclose(data["target"], np.sqrt((np.abs(data["coils"]) ** 2).sum(1)),
                                   rtol=1e-4, atol=1e-6)
        names = store_info(tmp_path / "out" / f"{split}.h5")["attrs"]["volume_names"]
        for index in np.unique(data["volume"]):
            volumes[names[index]] = data["coils"][data["volume"] == index]
    assert sorted(volumes) == ["file0", "file1", "file2", "zz_six"]
    for name, coils in volumes.items():  # the file's coil images, compressed, then scaled
        source = tmp_path / "src" / f"{name}.h5"
        with h5py.File(source) as handle:
            images = centre_crop(np_ifft2c(handle["kspace"][()]), SIZE)
        expected, _ = np_coil_compression(images, 3)
        energy = (np.abs(expected) ** 2).sum(axis=(0, 2, 3))
        scale = np.sqrt((np.abs(coils) ** 2).sum() / energy.sum())
        np.testing.assert_allclose((np.abs(coils) ** 2).sum(axis=(0, 2, 3)),
                                   energy * scale ** 2, rtol=1e-3)
    few = multicoil_dataset(tmp_path / "src", coil_compression={"coils": COILS + 1})
    with pytest.raises(KdmriError, match=r"file\d.h5: 4 coils, fewer than "
                                         r"coil_compression.coils 5"):
        prepare_dataset("mc", few, tmp_path / "out2", progress=False)
    with pytest.raises(KdmriError, match=r"key 'datasets.d.coil_compression': coil compression "
                                         r"is an option of format fastmri with source kspace"):
        validate({"datasets": {"d": {"format": "demo", "coil_compression": {"coils": 2}}}})


def test_bad_multicoil_data_is_refused_in_one_line(tmp_path):
    multicoil_files(tmp_path / "a", n=2)
    with h5py.File(tmp_path / "a" / "real.h5", "w") as handle:
        handle["kspace"] = np.ones((2, COILS, 8, 8), dtype=np.float32)
    with pytest.raises(KdmriError, match=r"real.h5: key 'kspace' must hold complex numbers"):
        list(fastmri_volumes(multicoil_dataset(tmp_path / "a")))
    multicoil_files(tmp_path / "b", n=2)
    kspace = np.ones((2, COILS, 8, 8), dtype=np.complex64)
    kspace[1, 2, 3, 3] = np.nan
    with h5py.File(tmp_path / "b" / "nan.h5", "w") as handle:
        handle["kspace"] = kspace
    with pytest.raises(KdmriError, match=r"nan.h5: key 'kspace' contains NaN .*slice 1"):
        list(fastmri_volumes(multicoil_dataset(tmp_path / "b")))


@pytest.mark.parametrize("coils", [COILS, None])
def test_undersampled_files_are_refused_as_a_source(tmp_path, coils):
    """fastMRI's test and challenge files hold undersampled k-space beside its ``mask``: the
    RSS of their coil images is aliased, not a target; preparation refuses them in one
    line (multi-coil and single-coil), pointing to ``kdmri apply``."""
    multicoil_files(tmp_path, n=2)
    shape = (2, COILS, *FULL) if coils else (2, *FULL)
    mask = np.zeros(FULL[1], dtype=np.float32)
    mask[::4] = 1
    with h5py.File(tmp_path / "file_test.h5", "w") as handle:
        handle["kspace"] = (np.ones(shape) * mask).astype(np.complex64)
        handle["mask"] = mask
    cfg = multicoil_dataset(tmp_path)
    with pytest.raises(KdmriError, match=r"file_test.h5: key 'kspace' is undersampled \(the "
                       r"file has key 'mask'.*fully sampled.*'kdmri apply'") as caught:
        prepare_dataset("mc", cfg, tmp_path / "out", progress=False)
    assert "\n" not in str(caught.value)


def test_a_multicoil_store_is_undersampled_coil_by_coil(tmp_path):
    """The input store of a fastMRI multi-coil file: every coil's k-space under the one
    mask, and the RSS of the zero-filled coil images (tests/test_multicoil_data.py checks
    them against NumPy in detail)."""
    multicoil_files(tmp_path / "src")
    prepare_dataset("mc", multicoil_dataset(tmp_path / "src"), tmp_path / "out", progress=False)
    mask = np.zeros((SIZE, SIZE), np.float32)
    mask[:, ::3] = 1
    undersample_store(tmp_path / "out" / "test.h5", mask, tmp_path / "in.h5")
    data = read_store(tmp_path / "out" / "test.h5", ["target", "coils"])
    inputs = read_store(tmp_path / "in.h5", ["kspace", "zf", "target", "mask"])
    assert "coils" not in store_info(tmp_path / "in.h5")["keys"]
    kspace = mask * np_fft2c(data["coils"])
    np.testing.assert_allclose(inputs["kspace"], kspace, rtol=0, atol=1e-5)
    np.testing.assert_allclose(inputs["zf"], np.sqrt((np.abs(np_ifft2c(kspace)) ** 2).sum(1)),
                               rtol=0, atol=1e-5)
    np.testing.assert_array_equal(inputs["target"], data["target"])


def test_store_writer_checks_the_coil_data(tmp_path):
    target = np.ones((2, 8, 8), np.float32)
    with pytest.raises(KdmriError, match="expected coil images of"), \
            StoreWriter(tmp_path / "a.h5", (8, 8), coils=3) as writer:
        writer.add_volume("v", target, coils=np.ones((2, 4, 8, 8), np.complex64))
    with pytest.raises(KdmriError, match="holds coil images of 3 coils, found none"), \
            StoreWriter(tmp_path / "b.h5", (8, 8), coils=3) as writer:
        writer.add_volume("v", target)
    with pytest.raises(KdmriError, match="holds no coil images"), \
            StoreWriter(tmp_path / "c.h5", (8, 8)) as writer:
        writer.add_volume("v", target, coils=np.ones((2, 3, 8, 8), np.complex64))


# ------------------------------------------------------------- ESPIRiT sensitivity maps
def test_espirit_maps_reproduce_the_coil_images_of_a_simulated_acquisition():
    """Maps from a simulated acquisition with known smooth maps: within the object the
    coil images are S_est x with x their combination by S_est, and sum_c |S_est|^2 = 1."""
    shape, coils = (64, 64), 8
    truth = smooth_maps(coils, shape, seed=3)
    image = phantom(shape, seed=4)
    coil_images = truth * image
    kspace = np_fft2c(coil_images).astype(np.complex64)
    settings = {"kind": "espirit", "calib_width": 24, "kernel_width": 6, "crop": 0.95}
    maps = espirit_maps(kspace[None], settings)[0]
    assert maps.shape == (coils, *shape) and maps.dtype == np.complex64
    inside = np.abs(image) > 0.3 * np.abs(image).max()
    power = (np.abs(maps) ** 2).sum(axis=0)
    np.testing.assert_allclose(power[inside], 1, atol=1e-3)
    combined = (np.conj(maps) * coil_images).sum(axis=0)
    residual = np.linalg.norm((maps * combined - coil_images)[:, inside])
    assert residual <= 0.02 * np.linalg.norm(coil_images[:, inside])
    # and the maps agree with the true ones up to one phase per pixel: |<S_est, S>| = 1
    overlap = np.abs((np.conj(maps) * truth).sum(axis=0))
    np.testing.assert_allclose(overlap[inside], 1, atol=0.02)


def test_prepare_stores_espirit_maps_beside_the_coil_images(tmp_path):
    multicoil_files(tmp_path / "src", n=3, full=(64, 32))
    settings = {"kind": "espirit", "calib_width": 12, "kernel_width": 4, "crop": 0.9}
    cfg = multicoil_dataset(tmp_path / "src", sensitivity_maps=settings, max_slices=1)
    info = prepare_dataset("mc", cfg, tmp_path / "out", progress=False)
    assert info["sensitivity_maps"] == settings
    for split in SPLITS:
        store = read_store(tmp_path / "out" / f"{split}.h5", ["coils", "maps"])
        assert store["maps"].shape == store["coils"].shape == (1, COILS, SIZE, SIZE)
        expected = espirit_maps(mri.fft2c(torch.from_numpy(store["coils"])).numpy(), settings)
        np.testing.assert_array_equal(store["maps"], expected)  # computed once, per slice
    spec = dataset_spec(cfg)
    assert spec["sensitivity_maps"] == settings and spec["source"] == "kspace"
    assert "sensitivity_maps" not in dataset_spec(multicoil_dataset(tmp_path / "src"))


def test_espirit_settings_and_where_maps_apply_are_checked(tmp_path):
    multicoil_files(tmp_path / "src", n=3)
    wide = multicoil_dataset(tmp_path / "src", sensitivity_maps={"kind": "espirit",
                                                                  "calib_width": SIZE + 1})
    with pytest.raises(KdmriError, match=r"'sensitivity_maps.calib_width' is 25, larger than"):
        prepare_dataset("mc", wide, tmp_path / "out", progress=False)
    kernel = multicoil_dataset(tmp_path / "src", sensitivity_maps={
        "kind": "espirit", "calib_width": 8, "kernel_width": 8})
    with pytest.raises(KdmriError, match=r"'sensitivity_maps.kernel_width' is 8; expected less"):
        prepare_dataset("mc", kernel, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "train.h5").exists()
    with pytest.raises(KdmriError, match=r"'datasets.d.sensitivity_maps': espirit maps .* "
                                         r"found format 'demo'"):
        validate({"datasets": {"d": {"format": "demo", "sensitivity_maps": {"kind": "espirit"}}}})
    single = tmp_path / "single"
    for i in range(3):
        make_single = single / f"s{i}.h5"
        make_single.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(make_single, "w") as handle:
            handle["kspace"] = np_fft2c(phantom(FULL, seed=i)[None]).astype(np.complex64)
    with pytest.raises(KdmriError, match=r"s\d.h5: key 'kspace' is single-coil .* needs multi-coil"):
        list(fastmri_volumes(multicoil_dataset(single, sensitivity_maps={"kind": "espirit"})))


def test_a_derived_key_is_added_whole_or_not_at_all(tmp_path):
    path = tmp_path / "s.h5"
    with StoreWriter(path, (8, 8), coils=3) as writer:
        writer.add_volume("v", np.ones((2, 8, 8), np.float32),
                          coils=np.full((2, 3, 8, 8), 2 + 1j, np.complex64))
    before, calls = path.read_bytes(), []

    def wrong_second_slice(coil_images):
        calls.append(1)
        return coil_images if len(calls) == 1 else coil_images[0]

    with pytest.raises(KdmriError, match=r"key 'maps': slice 1 of shape \(8, 8\), expected"):
        derive_per_slice_key(path, "maps", "coils", wrong_second_slice, "complex64")
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]
    derive_per_slice_key(path, "maps", "coils", lambda c: c / 2, "complex64")
    store = read_store(path, ["target", "coils", "maps"])
    np.testing.assert_array_equal(store["maps"], store["coils"] / 2)
    assert list(store["volume_names"]) == ["v"] and store_info(path)["attrs"]["volume_names"] == ["v"]


def test_single_coil_stores_hold_no_coil_data(tmp_path):
    from tests.test_complex import kspace_dataset, kspace_files

    kspace_files(tmp_path / "src")
    info = prepare_dataset("k", kspace_dataset(tmp_path / "src"), tmp_path / "out", progress=False)
    assert "coils" not in info and "sensitivity_maps" not in info
    assert coil_count(tmp_path / "out" / "train.h5") == 0
    assert set(store_info(tmp_path / "out" / "train.h5")["keys"]) == {"target", "volume", "slice"}

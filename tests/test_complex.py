"""The complex data path: fastMRI single-coil k-space read as the complex image
(``source: kspace``), complex networks (two channels) with complex data consistency,
metrics on magnitudes, and a tiny study through the whole DAG on complex data."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from kdmri.batch import check_complex
from kdmri.config import validate
from kdmri.data.prepare import prepare_dataset, undersample_store
from kdmri.data.readers import fastmri_volumes
from kdmri.data.store import SliceDataset, read_store, store_info
from kdmri.errors import KdmriError
from kdmri.inference import run_model, zero_filled_output
from kdmri.metrics import hfen_slices, nmse_slices, psnr, psnr_slices, slice_metrics, ssim_slices
from kdmri.models import DCCNN, VDSR, build_model, count_parameters
from kdmri.mri import DataConsistency, fft2c, from_channels, to_channels
from tests.workflow_utils import snakemake

FULL = (48, 40)  # k-space matrix of the test files
SIZE = 32  # image-space crop


def smooth_complex(slices: int, shape=FULL, seed: int = 0) -> np.ndarray:
    """A smooth complex volume: Gaussian blobs times a slowly varying phase."""
    rng = np.random.default_rng(seed)
    h, w = shape
    y, x = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    out = []
    for _ in range(slices):
        cy, cx, a = rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3), rng.uniform(0.5, 2)
        mag = a * np.exp(-((y - cy) ** 2 / 0.3 + (x - cx) ** 2 / 0.2)) + 0.1
        phase = np.pi * (rng.uniform(-1, 1) * x + rng.uniform(-1, 1) * y + rng.uniform(-1, 1))
        out.append(mag * np.exp(1j * phase))
    return np.stack(out).astype(np.complex64)


def to_kspace(image: np.ndarray) -> np.ndarray:
    """fastMRI's convention: the centred orthonormal FFT over the last two dims."""
    axes = (-2, -1)
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image, axes=axes), axes=axes,
                                       norm="ortho"), axes=axes).astype(np.complex64)


def centre_crop(image: np.ndarray, size: int = SIZE) -> np.ndarray:
    h, w = image.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return image[..., top:top + size, left:left + size]


def make_kspace_file(path: Path, image: np.ndarray, coils: int | None = None) -> None:
    """A fastMRI-layout file: ``kspace`` of ``image`` (single-coil; with ``coils`` the
    multi-coil layout slices x coils x H x W), the magnitude target and attributes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    kspace = to_kspace(image)
    with h5py.File(path, "w") as handle:
        if coils is None:
            handle["kspace"] = kspace
            handle["reconstruction_esc"] = np.abs(centre_crop(image)).astype(np.float32)
        else:
            handle["kspace"] = np.stack([kspace] * coils, axis=1)
            handle["reconstruction_rss"] = np.abs(centre_crop(image)).astype(np.float32)
        handle.attrs["acquisition"] = "CORPD_FBK"


def kspace_files(root: Path, n: int = 3, slices: int = 2) -> dict[str, np.ndarray]:
    images = {}
    for i in range(n):
        images[f"file{i}"] = smooth_complex(slices, seed=i)
        make_kspace_file(root / f"file{i}.h5", images[f"file{i}"])
    return images


def kspace_dataset(path: Path, **options) -> dict:
    entry = {"format": "fastmri", "path": str(path), "source": "kspace", "size": SIZE, **options}
    return validate({"datasets": {"k": entry}})["datasets"]["k"]


# ------------------------------------------------------------------ (a) the reader
def test_kspace_gives_the_complex_image_back_cropped(tmp_path):
    images = kspace_files(tmp_path)
    volumes = {name: slices for _, name, slices in fastmri_volumes(kspace_dataset(tmp_path))}
    assert set(volumes) == set(images)
    for name, slices in volumes.items():
        assert slices.dtype == np.complex64 and slices.shape == (2, SIZE, SIZE)
        np.testing.assert_allclose(slices, centre_crop(images[name]), rtol=0, atol=1e-5)


def test_prepared_kspace_store_is_the_normalised_complex_image(tmp_path):
    images = kspace_files(tmp_path / "src")
    info = prepare_dataset("k", kspace_dataset(tmp_path / "src"), tmp_path / "out",
                           progress=False)
    assert info["complex"] is True
    assert json.loads((tmp_path / "out" / "info.json").read_text())["complex"] is True
    for split in ("train", "val", "test"):
        assert store_info(tmp_path / "out" / f"{split}.h5")["keys"]["target"][1] == "complex64"
        store = read_store(tmp_path / "out" / f"{split}.h5", ["target", "volume"])
        for v, name in enumerate(store["volume_names"]):
            expected = centre_crop(images[name])
            expected = expected / np.abs(expected).max()  # the max rule on magnitudes
            np.testing.assert_allclose(store["target"][store["volume"] == v], expected,
                                       rtol=0, atol=1e-5)


def test_kspace_percentile_normalisation_uses_magnitudes(tmp_path):
    images = kspace_files(tmp_path / "src")
    cfg = kspace_dataset(tmp_path / "src", normalization={"kind": "percentile", "percentile": 90})
    prepare_dataset("k", cfg, tmp_path / "out", progress=False)
    store = read_store(tmp_path / "out" / "test.h5", ["target"])
    expected = centre_crop(images[store["volume_names"][0]])
    expected = expected / np.percentile(np.abs(expected), 90)
    np.testing.assert_allclose(store["target"], expected, rtol=1e-5, atol=1e-5)


def test_a_multi_coil_file_among_single_coil_ones_is_refused_in_one_line(tmp_path):
    """Multi-coil files are read (tests/test_multicoil.py), but one dataset holds one kind."""
    kspace_files(tmp_path)
    make_kspace_file(tmp_path / "multi.h5", smooth_complex(2), coils=4)
    with pytest.raises(KdmriError) as error:
        list(fastmri_volumes(kspace_dataset(tmp_path)))
    message = str(error.value)
    assert "multi.h5" in message and "same number of coils" in message and "\n" not in message
    assert "single-coil" in message and "4 coils" in message


def test_the_default_source_still_reads_the_magnitude_target(tmp_path):
    images = kspace_files(tmp_path)
    cfg = validate({"datasets": {"k": {"format": "fastmri", "path": str(tmp_path),
                                       "size": SIZE}}})["datasets"]["k"]
    assert cfg["source"] == "image"
    for _, name, slices in fastmri_volumes(cfg):
        assert slices.dtype == np.float32
        np.testing.assert_array_equal(slices, np.abs(centre_crop(images[name])).astype(np.float32))


def test_the_config_ties_complex_nets_to_complex_datasets(tmp_path):
    dataset = {"format": "fastmri", "path": str(tmp_path), "source": "kspace"}
    with pytest.raises(KdmriError, match=r"tasks\.recon\.teacher\.complex.*complex exactly"):
        validate({"datasets": {"k": dataset}, "tasks": {"recon": {"datasets": ["k"]}}})
    nets = {"teacher": {"family": "dccnn", "complex": True},
            "student": {"family": "dccnn", "convs": 3, "complex": True}}
    config = validate({"datasets": {"k": dataset}, "tasks": {"recon": {"datasets": ["k"], **nets}}})
    assert config["tasks"]["recon"]["student"]["complex"] is True
    with pytest.raises(KdmriError, match="magnitude"):
        validate({"datasets": {"demo": {"format": "demo"}},
                  "tasks": {"recon": {"datasets": ["demo"], **nets}}})
    with pytest.raises(KdmriError, match="option of format fastmri"):
        validate({"datasets": {"n": {"format": "nifti", "path": "x", "source": "kspace"}}})


# ------------------------------------------------------ (b) complex networks and DC
def _ifft2c(k: np.ndarray) -> np.ndarray:
    axes = (-2, -1)
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=axes), axes=axes, norm="ortho"),
                           axes=axes)


@pytest.mark.parametrize("shape", [(16, 12), (15, 13)])  # even: the sign form; odd: shifts
def test_complex_dc_replaces_the_measured_kspace_and_keeps_the_complex_image(shape):
    rng = np.random.default_rng(1)
    truth = (rng.standard_normal((3, 1, *shape)) + 1j * rng.standard_normal((3, 1, *shape)))
    guess = (rng.standard_normal((3, 1, *shape)) + 1j * rng.standard_normal((3, 1, *shape)))
    mask = (rng.uniform(size=shape[1]) < 0.4).astype(np.float32)[None, :]
    measured = mask * to_kspace(truth)
    # the formula: x = IFFT(m * k0 + (1 - m) * FFT(x_net)), complex, no real part taken
    expected = _ifft2c(measured + (1 - mask) * to_kspace(guess))
    dc = DataConsistency(torch.from_numpy(measured.astype(np.complex64)), torch.from_numpy(mask),
                         complex=True)
    got = dc(to_channels(torch.from_numpy(guess.astype(np.complex64))))
    assert got.shape == (3, 2, *shape) and got.dtype == torch.float32
    np.testing.assert_allclose(from_channels(got).numpy(), expected, atol=1e-5)
    assert np.abs(expected.imag).max() > 0.1  # the imaginary part matters here


def test_the_complex_dccnn_returns_the_complex_image():
    torch.manual_seed(0)
    model = DCCNN(cascades=2, convs=3, channels=4, complex=True)
    for p in model.parameters():
        torch.nn.init.zeros_(p)  # the CNNs add nothing: the output is DC of the input
    truth = torch.randn(2, 1, 16, 16, dtype=torch.complex64)
    image = torch.randn(2, 1, 16, 16, dtype=torch.complex64)
    mask = (torch.rand(16) < 0.5).float()[None, :]
    kspace = fft2c(truth) * mask
    with torch.no_grad():
        out = model(to_channels(image), kspace, mask)
    assert out.shape == (2, 2, 16, 16)
    m = mask.numpy()  # DC applied twice (idempotent): measured lines from kspace, others kept
    expected = _ifft2c(kspace.numpy() + (1 - m) * to_kspace(image.numpy()))
    np.testing.assert_allclose(from_channels(out).numpy(), expected, atol=1e-5)


def _cnn_params(convs: int, channels: int, image_channels: int) -> int:
    first = 9 * image_channels * channels + channels
    hidden = (convs - 2) * (9 * channels * channels + channels)
    last = 9 * channels * image_channels + image_channels
    return first + hidden + last


@pytest.mark.parametrize("complex_", [False, True])
def test_parameter_counts_of_magnitude_and_complex_networks(complex_):
    ic = 2 if complex_ else 1
    for cascades, convs, channels in ((5, 5, 32), (5, 3, 32), (2, 4, 7)):
        spec = {"family": "dccnn", "cascades": cascades, "convs": convs, "channels": channels}
        if complex_:
            spec["complex"] = True
        model = build_model(spec)
        assert count_parameters(model) == cascades * _cnn_params(convs, channels, ic)
        convs_ = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        assert convs_[0].in_channels == ic and convs_[convs - 1].out_channels == ic
    for convs, channels in ((11, 64), (7, 64), (3, 5)):
        model = VDSR(convs, channels, complex=complex_)
        assert count_parameters(model) == _cnn_params(convs, channels, ic)
    paper = {False: (141_765, 49_285, 333_569, 185_857), True: (144_650, 52_170, 334_722, 187_010)}
    assert (count_parameters(DCCNN(5, 5, 32, complex=complex_)),
            count_parameters(DCCNN(5, 3, 32, complex=complex_)),
            count_parameters(VDSR(11, 64, complex=complex_)),
            count_parameters(VDSR(7, 64, complex=complex_))) == paper[complex_]


def test_a_spec_without_complex_builds_todays_network():
    spec = {"family": "dccnn", "cascades": 2, "convs": 3, "channels": 8}
    torch.manual_seed(0)
    plain = build_model(spec)
    torch.manual_seed(0)
    explicit = build_model({**spec, "complex": False})
    assert not plain.complex
    assert {k: v.shape for k, v in plain.state_dict().items()} == {
        k: v.shape for k, v in explicit.state_dict().items()}
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(),
                                                 explicit.state_dict().values(), strict=True))


def _complex_inputs(tmp_path: Path) -> Path:
    kspace_files(tmp_path / "src")
    prepare_dataset("k", kspace_dataset(tmp_path / "src"), tmp_path / "data", progress=False)
    mask = np.zeros((SIZE, SIZE), dtype=np.float32)
    mask[:, ::2] = 1
    undersample_store(tmp_path / "data" / "test.h5", mask, tmp_path / "test_in.h5")
    return tmp_path / "test_in.h5"


def test_undersampling_keeps_complex_targets_and_the_complex_zero_filled_input(tmp_path):
    inputs = _complex_inputs(tmp_path)
    store = read_store(inputs, ["target", "zf", "mask"])
    assert store["target"].dtype == np.complex64 and store["zf"].dtype == np.complex64
    expected = _ifft2c(store["mask"] * to_kspace(store["target"]))
    np.testing.assert_allclose(store["zf"], expected, atol=1e-5)
    zf = zero_filled_output(inputs)["output"]
    assert zf.dtype == np.complex64
    np.testing.assert_array_equal(zf, store["zf"])


def test_store_and_network_must_agree_on_complex(tmp_path):
    inputs = _complex_inputs(tmp_path)
    magnitude_net = build_model({"family": "dccnn", "cascades": 1, "convs": 2, "channels": 2})
    with pytest.raises(KdmriError, match="targets are complex.*complex: false") as error:
        check_complex(inputs, magnitude_net)
    assert "\n" not in str(error.value)
    with pytest.raises(KdmriError, match="complex: false"):
        run_model(magnitude_net, inputs, torch.device("cpu"))
    complex_net = build_model({"family": "dccnn", "cascades": 1, "convs": 2, "channels": 2,
                               "complex": True})
    result = run_model(complex_net, inputs, torch.device("cpu"))
    assert result["output"].dtype == np.complex64
    assert result["output"].shape == (len(SliceDataset(inputs, keys=["zf"])), SIZE, SIZE)


# ------------------------------------------------------------ (c) metrics on magnitudes
def test_metrics_of_complex_images_are_those_of_their_magnitudes():
    rng = np.random.default_rng(3)
    gt = smooth_complex(3, (24, 24))
    pred = (gt + 0.05 * (rng.standard_normal(gt.shape) + 1j * rng.standard_normal(gt.shape))
            ).astype(np.complex64)
    mag_gt, mag_pred = np.abs(gt).astype(np.float64), np.abs(pred).astype(np.float64)
    data_range = mag_gt.max()
    expected = 10 * np.log10(data_range**2 / ((mag_gt - mag_pred) ** 2).mean(axis=(1, 2)))
    np.testing.assert_allclose(psnr_slices(gt, pred), expected, rtol=1e-10)
    values = slice_metrics(gt, pred)
    np.testing.assert_allclose(values["psnr"], expected, rtol=1e-10)
    np.testing.assert_allclose(values["ssim"], ssim_slices(mag_gt, mag_pred, data_range))
    np.testing.assert_allclose(values["nmse"], nmse_slices(mag_gt, mag_pred))
    np.testing.assert_allclose(values["hfen"], hfen_slices(mag_gt, mag_pred))
    # a global phase is invisible to magnitude metrics
    assert psnr(gt, gt * np.complex64(np.exp(0.7j))) > 100


# ------------------------------------------------ (d) a tiny complex study, whole DAG
def complex_config(path: Path, source: Path) -> Path:
    small = {"cascades": 2, "channels": 8, "complex": True}
    config = {
        "results": "results/complex",
        "device": "cpu",
        "seeds": [0],
        "models": ["zf", "teacher", "student", "kd"],
        "datasets": {"knee": {"format": "fastmri", "path": str(source), "source": "kspace",
                              "size": SIZE}},
        "tasks": {
            "recon": {"datasets": ["knee"], "accelerations": [4],
                      "teacher": {"family": "dccnn", "convs": 4, **small},
                      "student": {"family": "dccnn", "convs": 3, **small}},
            "sr": {"datasets": ["knee"], "accelerations": [2],
                   "teacher": {"family": "vdsr", "convs": 5, "channels": 8, "complex": True},
                   "student": {"family": "vdsr", "convs": 3, "channels": 8, "complex": True},
                   "pairs": [[3, 2]]},
        },
        "train": {"epochs": 1, "batch_size": 4},
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_a_complex_study_reaches_the_tables(tmp_path):
    kspace_files(tmp_path / "knee", n=4, slices=3)
    config = complex_config(tmp_path / "complex.yaml", tmp_path / "knee")
    snakemake(tmp_path, config)
    results = tmp_path / "results" / "complex"
    assert json.loads((results / "data" / "knee" / "info.json").read_text())["complex"] is True
    summary = pd.read_csv(results / "tables" / "summary.csv")
    assert {(t, d) for t, d in zip(summary.task, summary.dataset, strict=True)} == {
        ("recon", "knee"), ("sr", "knee")}
    assert set(summary.model) == {"zf", "teacher", "student", "kd"}
    assert summary.psnr_mean.notna().all() and np.isfinite(summary.psnr_mean).all()
    preds = sorted(results.glob("recon/knee/acc4/*/seed0/test_pred.h5"))
    assert len(preds) == 4
    for pred in preds:
        assert store_info(pred)["keys"]["output"][1] == "complex64"


def test_job_specs_keep_complex_only_where_true():
    from kdmri.config import fill_defaults
    from kdmri.specs import model_spec

    assert fill_defaults("net", {"family": "vdsr"}) == {"family": "vdsr", "convs": 11,
                                                        "channels": 64}
    assert fill_defaults("net", {"family": "vdsr", "complex": True})["complex"] is True
    dataset = {"format": "fastmri", "path": "x", "source": "kspace"}
    nets = {"teacher": {"family": "dccnn", "complex": True},
            "student": {"family": "dccnn", "convs": 3, "complex": True}}
    config = validate({"datasets": {"k": dataset}, "tasks": {"recon": {"datasets": ["k"], **nets}}})
    spec = model_spec(config, "recon", "kd", 0)
    assert spec["net"]["complex"] is True and spec["teacher_net"]["complex"] is True

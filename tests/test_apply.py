"""``kdmri apply``: one volume through a trained network, written with the source's geometry."""

from __future__ import annotations

import json

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch

from kdmri.checkpoints import load_model, write_model_file
from kdmri.cli import main
from kdmri.models import build_model
from tests.oracles import np_fft2c, np_ifft2c

NETS = {
    "dccnn": {"family": "dccnn", "cascades": 2, "convs": 3, "channels": 8},
    "vdsr": {"family": "vdsr", "convs": 4, "channels": 8},
}


def _model_file(tmp_path, family: str):
    torch.manual_seed(1)
    model = build_model(NETS[family])
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.1)
    path = tmp_path / f"{family}.pt"
    write_model_file(path, {"task": "recon" if family == "dccnn" else "sr",
                            "net": NETS[family]}, model.state_dict())
    return path, load_model(path)[0].eval()


def _volume(shape=(20, 24, 5), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random(shape, dtype=np.float32) * 300 + 10).astype(np.float32)


def _affine() -> np.ndarray:
    affine = np.array([[0.0, -0.9, 0.1, 12.0], [1.1, 0.0, 0.0, -30.0],
                       [0.0, 0.05, 2.5, 7.5], [0, 0, 0, 1]])
    return affine


def _mask(height, width, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = np.zeros((height, width), dtype=np.float32)
    mask[:, rng.random(width) < 0.4] = 1
    mask[:, width // 2 - 1: width // 2 + 2] = 1
    return mask


def _expected(model, slices: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The network slice by slice on the normalised, undersampled slices, scaled back."""
    scale = slices.max()
    out = []
    for image in slices / scale:
        if mask is None:
            zf, kspace, m = image.astype(np.complex64), np_fft2c(image), np.ones_like(image)
        else:
            kspace = np_fft2c(image) * mask
            zf, m = np_ifft2c(kspace), mask
        with torch.no_grad():
            y = model(torch.from_numpy(zf.real.astype(np.float32))[None, None],
                      torch.from_numpy(kspace.astype(np.complex64))[None, None],
                      torch.from_numpy(m.astype(np.float32)))
        out.append(y[0, 0].numpy())
    return np.stack(out) * scale


@pytest.mark.parametrize("axis", [2, 0])
def test_nifti_keeps_geometry_and_matches_the_network(tmp_path, axis):
    path, model = _model_file(tmp_path, "dccnn")
    data = _volume()
    image = nib.Nifti1Image(data, _affine())
    image.header.set_zooms((1.1, 0.9, 2.5))
    nib.save(image, tmp_path / "in.nii.gz")
    slices = np.moveaxis(data, axis, 0)
    mask = _mask(*slices.shape[1:])
    np.save(tmp_path / "mask.npy", mask)
    out = tmp_path / "out" / "recon.nii.gz"
    assert main(["apply", "--model", str(path), "--input", str(tmp_path / "in.nii.gz"),
                 "--mask", str(tmp_path / "mask.npy"), "--axis", str(axis), "--out", str(out),
                 "--device", "cpu", "--quiet"]) == 0
    written = nib.load(out)
    source = nib.load(tmp_path / "in.nii.gz")
    np.testing.assert_allclose(written.affine, source.affine)
    assert written.header.get_zooms() == source.header.get_zooms()
    assert written.shape == data.shape
    got = np.moveaxis(np.asanyarray(written.dataobj), axis, 0)
    expected = _expected(model, slices, mask)
    np.testing.assert_allclose(got, expected, atol=1e-5 * data.max(), rtol=0)


def test_hdf5_input_and_super_resolution(tmp_path):
    path, model = _model_file(tmp_path, "vdsr")
    slices = _volume((3, 16, 18), seed=2)
    with h5py.File(tmp_path / "file1000.h5", "w") as handle:
        handle["reconstruction_rss"] = slices
    out = tmp_path / "sr.nii"
    assert main(["apply", "--model", str(path), "--input", str(tmp_path / "file1000.h5"),
                 "--out", str(out), "--quiet"]) == 0
    written = nib.load(out)
    np.testing.assert_allclose(written.affine, np.eye(4))
    got = np.asanyarray(written.dataobj).transpose(2, 1, 0)  # (columns, rows, slices)
    np.testing.assert_allclose(got, _expected(model, slices, None), atol=1e-5 * slices.max(),
                               rtol=0)


def test_dicom_series_keeps_its_affine(tmp_path):
    """A real MR slice that pydicom ships, as a one-file series: the output has the affine
    kdmri.data.dicom computes from the file's geometry, and the network's output."""
    pydicom = pytest.importorskip("pydicom")
    from kdmri.data.dicom import read_dicom_volume

    path, model = _model_file(tmp_path, "dccnn")
    series = tmp_path / "series"
    series.mkdir()
    source = pydicom.data.get_testdata_file("MR_small.dcm")
    (series / "IM0001").write_bytes(open(source, "rb").read())
    volume, affine, _ = read_dicom_volume(series)
    ds = pydicom.dcmread(source)
    np.testing.assert_allclose(volume[0], ds.pixel_array * float(ds.get("RescaleSlope", 1))
                               + float(ds.get("RescaleIntercept", 0)))
    mask = _mask(*volume.shape[1:])
    np.save(tmp_path / "mask.npy", mask)
    out = tmp_path / "dicom.nii.gz"
    assert main(["apply", "--model", str(path), "--input", str(series), "--mask",
                 str(tmp_path / "mask.npy"), "--out", str(out), "--quiet"]) == 0
    written = nib.load(out)
    np.testing.assert_allclose(written.affine, affine)
    got = np.asanyarray(written.dataobj).transpose(2, 1, 0)  # (slices, rows, columns)
    np.testing.assert_allclose(got, _expected(model, volume, mask), atol=1e-5 * volume.max(),
                               rtol=0)


def _error(capsys, argv) -> str:
    assert main([*argv, "--quiet"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_errors_are_one_line_naming_the_file(tmp_path, capsys):
    path, _ = _model_file(tmp_path, "dccnn")
    data = _volume((8, 10, 3))
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "in.nii")
    np.save(tmp_path / "mask.npy", _mask(8, 10))
    np.save(tmp_path / "wrong.npy", _mask(10, 8))
    base = ["apply", "--model", str(path), "--out", str(tmp_path / "o.nii.gz")]
    line = _error(capsys, [*base, "--input", str(tmp_path / "in.nii")])
    assert "needs --mask" in line
    line = _error(capsys, [*base, "--input", str(tmp_path / "in.nii"), "--mask",
                           str(tmp_path / "wrong.npy")])
    assert "wrong.npy" in line and "does not match" in line and "in.nii" in line
    (tmp_path / "junk.nii.gz").write_bytes(b"nonsense")
    line = _error(capsys, [*base, "--input", str(tmp_path / "junk.nii.gz"), "--mask",
                           str(tmp_path / "mask.npy")])
    assert "junk.nii.gz: expected a NIfTI file" in line
    nib.save(nib.Nifti1Image(np.ones((8, 10), np.float32), np.eye(4)), tmp_path / "flat.nii")
    line = _error(capsys, [*base, "--input", str(tmp_path / "flat.nii"), "--mask",
                           str(tmp_path / "mask.npy")])
    assert "flat.nii: expected a 3-D volume" in line
    bad = data.copy()
    bad[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(bad, np.eye(4)), tmp_path / "nan.nii")
    line = _error(capsys, [*base, "--input", str(tmp_path / "nan.nii"), "--mask",
                           str(tmp_path / "mask.npy")])
    assert "nan.nii" in line and "NaN" in line
    with h5py.File(tmp_path / "nokey.h5", "w") as handle:
        handle["kspace"] = np.zeros((2, 8, 10), np.complex64)
    line = _error(capsys, [*base, "--input", str(tmp_path / "nokey.h5"), "--mask",
                           str(tmp_path / "mask.npy")])
    assert "nokey.h5: missing key 'reconstruction_esc' or 'reconstruction_rss'" in line
    line = _error(capsys, [*base, "--input", str(tmp_path / "none.nii")])
    assert "none.nii: input not found" in line
    line = _error(capsys, ["apply", "--model", str(tmp_path / "no.pt"), "--input",
                           str(tmp_path / "in.nii"), "--out", str(tmp_path / "o.nii")])
    assert "no.pt: model file not found" in line
    assert not (tmp_path / "o.nii.gz").exists()
    (tmp_path / "notdicom").mkdir()
    (tmp_path / "notdicom" / "a.txt").write_text("x")
    line = _error(capsys, [*base, "--input", str(tmp_path / "notdicom"), "--mask",
                           str(tmp_path / "mask.npy")])
    assert line.startswith("kdmri: error: ") and "notdicom" in line


# ---------------------------------------------------------------------- the model's own mask
MASK_SETTINGS = {"kind": "random", "acceleration": 4, "center_fraction": 0.1}
MASK_SEED = 3


@pytest.fixture(scope="module")
def trained_at_32(tmp_path_factory):
    """A student trained at 32 x 32 through ``kdmri mask``, ``undersample`` and ``train``
    (one epoch), as the workflow makes one."""
    from kdmri.data.store import StoreWriter
    from tests.conftest import smooth_volume
    from tests.reliability.helpers import spec

    root = tmp_path_factory.mktemp("trained_at_32")
    rng = np.random.default_rng(5)
    for split, slices in {"train": 6, "val": 2, "test": 2}.items():
        with StoreWriter(root / "data" / f"{split}.h5", (32, 32)) as writer:
            writer.add_volume(f"{split}-0", smooth_volume(rng, slices, (32, 32)))
    (root / "spec.json").write_text(json.dumps(spec(epochs=1)))
    steps = [
        ["mask", "--spec", json.dumps(MASK_SETTINGS), "--like", root / "data" / "train.h5",
         "--seed", MASK_SEED, "--out", root / "mask.npy"],
        ["undersample", "--data-dir", root / "data", "--mask", root / "mask.npy",
         "--out-dir", root / "inputs"],
        ["train", "--spec", f"@{root / 'spec.json'}", "--inputs-dir", root / "inputs",
         "--out-dir", root / "model", "--device", "cpu", "--threads", "1"],
    ]
    for argv in steps:
        assert main([str(a) for a in argv]) == 0, argv
    return root / "model" / "model.pt"


def test_the_model_file_records_its_mask_settings(trained_at_32):
    from kdmri.io import load_torch

    recorded = load_torch(trained_at_32)["mask"]
    assert {key: recorded[key] for key in MASK_SETTINGS} == MASK_SETTINGS
    assert recorded["seed"] == MASK_SEED and recorded["shape"] == [32, 32]


def _columns_as_settings_say(mask: np.ndarray) -> None:
    """Whole k-space columns, width / acceleration of them, the centre band among them."""
    height, width = mask.shape
    columns = mask[0] == 1
    assert (mask == columns[None, :]).all()
    assert columns.sum() == round(width / MASK_SETTINGS["acceleration"])
    band = round(width * MASK_SETTINGS["center_fraction"])
    start = (width - band + 1) // 2
    assert columns[start:start + band].all()


@pytest.mark.parametrize("shape", [(48, 40), (64, 64)])
def test_without_mask_apply_makes_the_models_mask_at_the_inputs_size(trained_at_32, tmp_path,
                                                                     capsys, shape):
    from kdmri.masks import create_mask_func, mask_params

    data = _volume((*shape, 3), seed=4)
    nib.save(nib.Nifti1Image(data, _affine()), tmp_path / "in.nii.gz")
    out = tmp_path / "out" / "recon.nii.gz"
    assert main(["apply", "--model", str(trained_at_32), "--input", str(tmp_path / "in.nii.gz"),
                 "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    made = tmp_path / "out" / "recon_mask.npy"
    log = capsys.readouterr().err
    assert "no --mask: made the model's random mask" in log and str(made) in log
    assert f"{shape[0]} x {shape[1]}" in log
    mask = np.load(made)
    assert mask.shape == shape
    _columns_as_settings_say(mask)
    # the mask of the recorded settings and seed at this size, as `kdmri mask` makes it
    np.testing.assert_array_equal(mask, create_mask_func(
        "random", 4, 0.1)(shape, seed=MASK_SEED))
    assert {k: mask_params(made)[k] for k in ("kind", "acceleration", "center_fraction",
                                              "seed")} == {**MASK_SETTINGS, "seed": MASK_SEED}
    model = load_model(trained_at_32)[0].eval()
    slices = np.moveaxis(data, 2, 0)
    got = np.moveaxis(np.asanyarray(nib.load(out).dataobj), 2, 0)
    np.testing.assert_allclose(got, _expected(model, slices, mask), atol=1e-5 * data.max(),
                               rtol=0)


def test_a_given_mask_wins_over_the_models_own(trained_at_32, tmp_path):
    data = _volume((48, 40, 2), seed=6)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "in.nii")
    mask = _mask(48, 40, seed=2)
    np.save(tmp_path / "mask.npy", mask)
    out = tmp_path / "recon.nii"
    assert main(["apply", "--model", str(trained_at_32), "--input", str(tmp_path / "in.nii"),
                 "--mask", str(tmp_path / "mask.npy"), "--out", str(out), "--quiet"]) == 0
    assert not (tmp_path / "recon_mask.npy").exists()
    model = load_model(trained_at_32)[0].eval()
    got = np.moveaxis(np.asanyarray(nib.load(out).dataobj), 2, 0)
    np.testing.assert_allclose(got, _expected(model, np.moveaxis(data, 2, 0), mask),
                               atol=1e-5 * data.max(), rtol=0)


@pytest.mark.parametrize("settings, words", [
    ({"kind": "file", "file": "lines.npy"}, ["external mask file 'lines.npy'", "--mask"]),
    ({"kind": "spiral", "acceleration": 4, "seed": 0}, ["mask kind 'spiral'", "--mask"]),
    ({"kind": "random", "acceleration": 4, "seed": "0"}, ["lack an acceleration or a seed"]),
    ({"kind": "random", "acceleration": 0.5, "seed": 0}, ["acceleration must be a number >= 1"]),
])
def test_mask_settings_that_make_no_mask_are_one_line_errors(tmp_path, capsys, settings, words):
    path = tmp_path / "model.pt"
    model = build_model(NETS["dccnn"])
    write_model_file(path, {"task": "recon", "net": NETS["dccnn"]}, model.state_dict(),
                     mask=settings)
    nib.save(nib.Nifti1Image(_volume((8, 10, 2)), np.eye(4)), tmp_path / "in.nii")
    line = _error(capsys, ["apply", "--model", str(path), "--input", str(tmp_path / "in.nii"),
                           "--out", str(tmp_path / "o.nii")])
    assert str(path) in line and all(word in line for word in words), line
    assert not (tmp_path / "o.nii").exists()


# ---------------------------------------------------------------------- multi-coil k-space
#: A tiny E2E-VarNet; its U-Nets pool twice, so it runs at any size divisible by 4.
VARNET = {"family": "varnet", "cascades": 2, "chans": 4, "pools": 2, "sens_chans": 4,
          "sens_pools": 2}
#: fastMRI's layout: kspace (slices, coils, H, W), H the readout; the model trained at 32 x 32.
FILE_SHAPE, COILS, TRAINED = (2, 3, 48, 40), 3, (32, 32)


def _varnet_file(tmp_path, mask: dict | None = None):
    """A tiny VarNet with non-trivial weights saved as a model.pt, with the mask settings
    ``mask`` (default: the random 4x mask recorded at 32 x 32, as training records it)."""
    torch.manual_seed(2)
    model = build_model(VARNET)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    record = {**MASK_SETTINGS, "seed": MASK_SEED, "shape": list(TRAINED)} if mask is None else mask
    path = tmp_path / "varnet.pt"
    write_model_file(path, {"task": "recon", "net": VARNET}, model.state_dict(), mask=record,
                     coils=4)  # as training records it
    return path, load_model(path)[0].eval()


def _coil_kspace(seed: int = 0, scale: float = 3e-4) -> np.ndarray:
    """Fully sampled coil k-space (slices, coils, H, W) complex64 of a known smooth image
    (an ellipse with a slow phase) seen by known smooth complex coil maps, on the tiny
    numbers of fastMRI's raw data (``scale``)."""
    slices, coils, height, width = FILE_SHAPE
    y, x = np.meshgrid(np.linspace(-1, 1, height), np.linspace(-1, 1, width), indexing="ij")
    rng = np.random.default_rng(seed)
    images = []
    for s in range(slices):
        a, b = rng.uniform(0.4, 0.7, 2)
        inside = ((x / a) ** 2 + (y / b) ** 2 < 1) * (1 + 0.5 * np.cos(3 * x + s))
        images.append(inside * np.exp(1j * (0.8 * x - 0.5 * y + s)))
    image = np.stack(images)[:, None]
    centres = [(-1.2, 0.0), (1.2, 0.3), (0.0, -1.2)]
    maps = np.stack([np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 1.5) * np.exp(1j * (cx * y - cy * x))
                     for cx, cy in centres[:coils]])
    return (np_fft2c(scale * maps[None] * image)).astype(np.complex64)


def _fastmri_file(path, kspace: np.ndarray, own_mask: np.ndarray | None = None) -> None:
    """A fastMRI multi-coil file: its k-space; with ``own_mask`` (W,) a test file, whose
    k-space is undersampled with it and which has the mask and fastMRI's attributes."""
    with h5py.File(path, "w") as handle:
        if own_mask is None:
            handle["kspace"] = kspace
            handle["reconstruction_rss"] = np.sqrt((np.abs(np_ifft2c(kspace)) ** 2).sum(1))
        else:
            handle["kspace"] = (kspace * own_mask).astype(np.complex64)
            handle["mask"] = own_mask.astype(bool)
            handle.attrs["acceleration"] = int(round(len(own_mask) / own_mask.sum()))
            handle.attrs["num_low_frequency"] = 8


def _own_mask(width: int = FILE_SHAPE[3]) -> np.ndarray:
    mask = np.zeros(width)
    mask[::3] = 1
    mask[width // 2 - 4: width // 2 + 4] = 1
    return mask


def _crop(array: np.ndarray, height: int, width: int) -> np.ndarray:
    h0, w0 = (array.shape[-2] - height) // 2, (array.shape[-1] - width) // 2
    return array[..., h0:h0 + height, w0:w0 + width]


def _varnet_expected(model, coil_images: np.ndarray, mask: np.ndarray,
                     out_shape: tuple[int, int]) -> np.ndarray:
    """The eager network on coil images (slices, coils, h, w) in NumPy's terms: divided by
    the maximum of their RSS, k-space ``mask * fft2c``, the RSS output cropped to
    ``out_shape`` and scaled back."""
    scale = np.sqrt((np.abs(coil_images) ** 2).sum(1)).max()
    kspace = np_fft2c(coil_images / scale) * mask
    with torch.no_grad():
        out = model(torch.from_numpy(kspace.astype(np.complex64)),
                    torch.from_numpy(mask.astype(np.float32)))[:, 0].numpy()
    return _crop(out, *out_shape) * scale


def _written(out) -> np.ndarray:
    return np.asanyarray(nib.load(out).dataobj).transpose(2, 1, 0)  # (slices, rows, columns)


def test_multicoil_file_with_its_own_mask_is_reconstructed_from_its_own_kspace(tmp_path, capsys):
    """A fastMRI test file: its undersampled k-space and its own mask (not the model's),
    the readout cropped to the trained 32 in image space, the 40 phase-encoding columns
    kept, the RSS output cropped to 32 x 32."""
    path, model = _varnet_file(tmp_path)
    full, own = _coil_kspace(), _own_mask()
    _fastmri_file(tmp_path / "file_test.h5", full, own)
    out = tmp_path / "out" / "recon.nii.gz"
    assert main(["apply", "--model", str(path), "--input", str(tmp_path / "file_test.h5"),
                 "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    assert not (tmp_path / "out" / "recon_mask.npy").exists()  # no mask was made
    assert "the file's own mask (key 'mask'" in capsys.readouterr().err
    written = _written(out)
    assert written.shape == (FILE_SHAPE[0], *TRAINED)
    np.testing.assert_allclose(nib.load(out).affine, np.eye(4))
    height, width = TRAINED[0], FILE_SHAPE[3]
    zero_filled = _crop(np_ifft2c(full * own), height, width)  # the readout cropped only
    mask = np.broadcast_to(own, (height, width))
    expected = _varnet_expected(model, zero_filled, mask, TRAINED)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(written, expected, atol=1e-5 * scale, rtol=0)
    # the model's own mask (at the file's width) gives another reconstruction
    from kdmri.masks import mask_from_settings

    models_mask = mask_from_settings({**MASK_SETTINGS, "seed": MASK_SEED}, (height, width), "m")
    assert not np.array_equal(models_mask, mask)
    other = _varnet_expected(model, _crop(np_ifft2c(full * models_mask[0]), height, width),
                             models_mask, TRAINED)
    assert np.abs(written - other).max() > 100 * 1e-5 * scale


def test_fully_sampled_multicoil_file_is_undersampled_as_training_inputs_are(tmp_path, capsys):
    """No mask in the file: the coil images cropped to the trained 32 x 32 and normalised
    as prepare does, undersampled with the model's own mask made at that size (written
    beside the output), or with --mask."""
    from kdmri.masks import mask_from_settings

    path, model = _varnet_file(tmp_path)
    full = _coil_kspace(seed=1)
    _fastmri_file(tmp_path / "file_train.h5", full)
    coil_images = _crop(np_ifft2c(full), *TRAINED)
    out = tmp_path / "recon.nii"
    assert main(["apply", "--model", str(path), "--input", str(tmp_path / "file_train.h5"),
                 "--out", str(out), "--quiet"]) == 0
    made = np.load(tmp_path / "recon_mask.npy")
    np.testing.assert_array_equal(made, mask_from_settings(
        {**MASK_SETTINGS, "seed": MASK_SEED}, TRAINED, "m"))
    assert "no --mask: made the model's random mask" in capsys.readouterr().err
    expected = _varnet_expected(model, coil_images, made, TRAINED)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(_written(out), expected, atol=1e-5 * scale, rtol=0)
    given = np.broadcast_to(_own_mask(TRAINED[1]), TRAINED).astype(np.float32)
    np.save(tmp_path / "given.npy", given)
    out = tmp_path / "given.nii"
    assert main(["apply", "--model", str(path), "--input", str(tmp_path / "file_train.h5"),
                 "--mask", str(tmp_path / "given.npy"), "--out", str(out), "--quiet"]) == 0
    assert not (tmp_path / "given_mask.npy").exists()
    np.testing.assert_allclose(_written(out), _varnet_expected(model, coil_images, given, TRAINED),
                               atol=1e-5 * scale, rtol=0)


def test_multicoil_refusals_name_the_file_and_the_key(tmp_path, capsys):
    varnet, _ = _varnet_file(tmp_path)
    dccnn, _ = _model_file(tmp_path, "dccnn")
    full = _coil_kspace()
    _fastmri_file(tmp_path / "test.h5", full, _own_mask())
    _fastmri_file(tmp_path / "train.h5", full)
    with h5py.File(tmp_path / "single.h5", "w") as handle:
        handle["kspace"] = full[:, 0]
    with h5py.File(tmp_path / "narrow.h5", "w") as handle:
        handle["kspace"] = full
        handle["mask"] = _own_mask(FILE_SHAPE[3] - 2)
    nib.save(nib.Nifti1Image(_volume((32, 32, 2)), np.eye(4)), tmp_path / "in.nii")
    np.save(tmp_path / "wide.npy", np.ones((32, 40), np.float32))
    np.save(tmp_path / "mask.npy", np.ones(TRAINED, np.float32))

    def error(model, name, *extra):
        return _error(capsys, ["apply", "--model", str(model), "--input", str(tmp_path / name),
                               "--out", str(tmp_path / "o.nii"), *extra])

    line = error(varnet, "single.h5")
    assert "single.h5" in line and "key 'kspace' of shape (2, 48, 40)" in line
    assert "family varnet" in line and "(slices, coils, H, W)" in line
    line = error(varnet, "in.nii")
    assert "in.nii" in line and "fastMRI multi-coil .h5" in line
    line = error(varnet, "narrow.h5")
    assert "narrow.h5: key 'mask' has shape (38,); expected (40,)" in line
    line = error(varnet, "train.h5", "--mask", str(tmp_path / "wide.npy"))
    assert "wide.npy: mask shape (32, 40); expected (32, 32)" in line and "train.h5" in line
    line = error(varnet, "test.h5", "--mask", str(tmp_path / "mask.npy"))
    assert "test.h5: holds its own sampling mask (key 'mask')" in line
    line = error(dccnn, "test.h5")  # a test file: coil k-space and no image
    assert "test.h5: multi-coil k-space (key 'kspace' of shape (2, 3, 48, 40))" in line
    assert "varnet" in line
    (tmp_path / "nomask").mkdir()
    nomask, _ = _varnet_file(tmp_path / "nomask", mask={})  # no size recorded: fastMRI's 320
    line = error(nomask, "train.h5")
    assert "records no mask settings" in line and "needs --mask, shape (320, 320)" in line
    assert not (tmp_path / "o.nii").exists()

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

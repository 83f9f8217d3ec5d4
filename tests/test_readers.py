"""Readers of every source format and the preparation stage: tiny fastMRI, NIfTI and
KD-MRI HDF5 files made here with h5py and nibabel, splits by volume, normalisation, one
clear error per kind of bad data with nothing left behind, and the throughput against a
direct read."""

from __future__ import annotations

import re
import time
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdmri.cli import main
from kdmri.config import load_config, schema, validate
from kdmri.data import readers
from kdmri.data.prepare import READERS, prepare_dataset
from kdmri.data.readers import dataset_spec, fastmri_volumes, source_files
from kdmri.data.sources import fit_size, normalize_volume, plan_sources, split_counts
from kdmri.data.store import StoreWriter, read_store
from kdmri.errors import KdmriError
from kdmri.keys import SPLITS

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------- tiny files
def _image(rng: np.random.Generator, shape) -> np.ndarray:
    """Positive random images with a varying scale (so normalisation has work to do)."""
    return (rng.random(shape) * 5 + 0.1).astype(np.float32)


def make_fastmri(path: Path, rng, slices=3, shape=(20, 20), key="reconstruction_esc",
                 data=None) -> np.ndarray:
    """A fastMRI-like file: k-space, a magnitude target under ``key``, attributes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    target = _image(rng, (slices, *shape)) if data is None else data
    with h5py.File(path, "w") as handle:
        coils = (slices, 2, *shape) if key == "reconstruction_rss" else (slices, *shape)
        handle["kspace"] = np.zeros(coils, dtype=np.complex64)
        handle[key] = target
        handle.attrs["acquisition"] = "CORPD_FBK"
        handle.attrs["max"] = float(np.max(target))
    return target


def make_nifti(path: Path, rng, shape=(16, 16, 4), data=None) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = _image(rng, shape) if data is None else data
    nib.Nifti1Image(array, np.eye(4)).to_filename(path)
    return array


def make_kdmri_h5(path: Path, rng, shape=(16, 16, 5), data=None) -> np.ndarray:
    """A file of the original KD-MRI layout: ``volfs`` (H, W, slices) and the inputs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    volfs = _image(rng, shape) if data is None else data
    with h5py.File(path, "w") as handle:
        handle["volfs"] = volfs
        handle["img_volus_4x"] = volfs * 0.5
    return volfs


def fastmri_set(root: Path, rng, n=5, slices=3, shape=(20, 20)) -> dict[str, np.ndarray]:
    """``n`` files: single-coil (reconstruction_esc) and multi-coil (reconstruction_rss)."""
    keys = ("reconstruction_esc", "reconstruction_rss")
    return {f"file{i:03d}": make_fastmri(root / f"file{i:03d}.h5", rng, slices, shape, keys[i % 2])
            for i in range(n)}


def nifti_set(root: Path, rng, shape=(16, 16, 4), cine=True) -> dict[str, np.ndarray]:
    """Subject folders with 3-D volumes (.nii and .nii.gz) and one 4-D volume of 5 frames."""
    arrays = {}
    for i in range(4):
        suffix = ".nii" if i % 2 else ".nii.gz"
        arrays[f"sub{i}"] = make_nifti(root / f"sub{i}" / f"sub{i}{suffix}", rng, shape)
    if cine:
        arrays["cine"] = make_nifti(root / "sub9" / "cine.nii.gz", rng, (*shape, 5))
    return arrays


def kdmri_h5_set(root: Path, rng, shape=(16, 16, 5)) -> dict[str, np.ndarray]:
    """train/ and validation/ with the same volumes again under acc_8x/."""
    arrays = {}
    for folder, n in (("train", 4), ("validation", 2)):
        for i in range(n):
            name = f"{folder[:2]}{i}"
            arrays[name] = make_kdmri_h5(root / folder / "acc_4x" / f"{name}.h5", rng, shape)
            make_kdmri_h5(root / folder / "acc_8x" / f"{name}.h5", rng, data=arrays[name])
    return arrays


def dataset(fmt: str, path: Path | None = None, **options) -> dict:
    """One validated dataset entry (defaults filled)."""
    entry = {"format": fmt, **options}
    if path is not None:
        entry["path"] = str(path)
    return validate({"datasets": {"d": entry}})["datasets"]["d"]


def prepared(out: Path) -> dict[str, dict]:
    return {s: read_store(out / f"{s}.h5", ["target", "volume"]) for s in SPLITS}


def volume_of(store: dict, name: str) -> np.ndarray:
    index = list(store["volume_names"]).index(name)
    return store["target"][store["volume"] == index]


def assert_nothing_written(out: Path) -> None:
    left = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert left == [], left


# ------------------------------------------------------------------------ formats
def test_registry_has_every_format_of_the_schema():
    enum = schema()["$defs"]["dataset"]["properties"]["format"]["enum"]
    assert set(READERS) == set(enum) == {"demo", "fastmri", "nifti", "kdmri_h5", "dicom"}


def test_fastmri_single_and_multi_coil_cropped_and_normalised(tmp_path):
    rng = np.random.default_rng(0)
    arrays = fastmri_set(tmp_path / "knee", rng, n=5, shape=(20, 18))
    info = prepare_dataset("knee", dataset("fastmri", tmp_path / "knee", size=16),
                           tmp_path / "out", progress=False)
    stores = prepared(tmp_path / "out")
    assert sum(info["splits"][s]["slices"] for s in SPLITS) == 15
    for split, store in stores.items():
        assert store["target"].shape[1:] == (16, 16)
        for name in store["volume_names"]:
            want = arrays[name][:, 2:18, 1:17]  # centre crop of 20 x 18
            np.testing.assert_allclose(volume_of(store, name), want / want.max(), rtol=1e-6)
        assert info["splits"][split]["volumes"] == list(store["volume_names"])


def test_fastmri_target_key_and_default_size(tmp_path):
    rng = np.random.default_rng(1)
    rss = {}
    for name in ("a", "b", "c"):  # multi-coil files that also hold an esc target
        rss[name] = make_fastmri(tmp_path / f"{name}.h5", rng, key="reconstruction_rss")
        with h5py.File(tmp_path / f"{name}.h5", "a") as handle:
            handle["reconstruction_esc"] = np.full((3, 20, 20), 2.0, dtype=np.float32)
    cfg = dataset("fastmri", tmp_path)
    (esc,) = [v for _, name, v in fastmri_volumes(cfg) if name == "a"]
    assert esc.shape == (3, 320, 320)  # fastMRI's 320 x 320 when size is not set
    np.testing.assert_array_equal(esc[:, 150:170, 150:170], 2.0)  # esc preferred, centred
    assert np.count_nonzero(esc) == 3 * 20 * 20
    picked = {name: v for _, name, v in
              fastmri_volumes({**cfg, "target_key": "reconstruction_rss", "size": 20})}
    np.testing.assert_array_equal(picked["a"], rss["a"])


def test_nifti_3d_and_4d_frames_by_index(tmp_path):
    rng = np.random.default_rng(2)
    arrays = nifti_set(tmp_path / "nii", rng)
    cfg = dataset("nifti", tmp_path / "nii", frames=[0, -1])
    prepare_dataset("brain", cfg, tmp_path / "out", progress=False)
    stores = prepared(tmp_path / "out")
    names = {s: list(stores[s]["volume_names"]) for s in SPLITS}
    everything = sorted(n for v in names.values() for n in v)
    assert everything == ["cine_f00", "cine_f04", "sub0", "sub1", "sub2", "sub3"]
    cine_split = [s for s in SPLITS if "cine_f00" in names[s]]
    assert "cine_f04" in names[cine_split[0]]  # frames of one file stay in one split
    for split, store in stores.items():
        for name in names[split]:
            source = arrays[name[:4]] if name.startswith("cine") else arrays[name]
            if name.startswith("cine"):
                source = source[..., 0 if name.endswith("f00") else 4]
            want = np.moveaxis(source, 2, 0)  # axis 2 -> (slices, H, W)
            np.testing.assert_allclose(volume_of(store, name), want / want.max(), rtol=1e-6)


def test_nifti_axis_and_frame_list(tmp_path):
    rng = np.random.default_rng(3)
    for i in range(3):
        make_nifti(tmp_path / f"p{i}" / f"p{i}_4d.nii.gz", rng, (12, 10, 16, 6))
    (tmp_path / "frames.txt").write_text(
        "# file ED ES\np0_4d.nii.gz 0 3\np1/p1_4d.nii.gz, 1, 5\np2_4d.nii.gz 2\n")
    cfg = dataset("nifti", tmp_path, glob="p*/*_4d.nii.gz", axis=0, size=16,
                  frame_list=str(tmp_path / "frames.txt"))
    volumes = {name: slices for _, name, slices in READERS["nifti"](cfg)}
    assert sorted(volumes) == ["p0_4d_f00", "p0_4d_f03", "p1_4d_f01", "p1_4d_f05", "p2_4d_f02"]
    assert all(v.shape == (12, 16, 16) for v in volumes.values())  # axis 0: 12 slices
    assert str(tmp_path / "frames.txt") in source_files(cfg)


def test_kdmri_h5_layout_train_validation_and_acc_folders(tmp_path):
    rng = np.random.default_rng(4)
    arrays = kdmri_h5_set(tmp_path / "mrbrain", rng)
    info = prepare_dataset("legacy", dataset("kdmri_h5", tmp_path / "mrbrain"),
                           tmp_path / "out", progress=False)
    stores = prepared(tmp_path / "out")
    assert sorted(stores["test"]["volume_names"]) == ["va0", "va1"]  # validation/ -> test
    train_val = [*stores["train"]["volume_names"], *stores["val"]["volume_names"]]
    assert sorted(train_val) == ["tr0", "tr1", "tr2", "tr3"]  # each read once, not per acc
    assert info["slices_read"] == 6 * 5
    volfs = arrays["va1"]
    np.testing.assert_allclose(volume_of(stores["test"], "va1"),
                               volfs.transpose(2, 0, 1) / volfs.max(), rtol=1e-6)


def test_kdmri_h5_single_slice_files(tmp_path):
    rng = np.random.default_rng(5)
    for i in range(3):
        make_kdmri_h5(tmp_path / f"s{i}.h5", rng, (16, 16))
    volumes = list(READERS["kdmri_h5"](dataset("kdmri_h5", tmp_path)))
    assert [v[2].shape for v in volumes] == [(1, 16, 16)] * 3


def test_demo_keeps_noise_and_max_slices(tmp_path):
    assert dataset("demo")["size"] is None  # demo's default 64 comes from the reader
    cfg = dataset("demo", size=16, voxel_mm=6.0, subjects={"train": 1, "val": 1, "test": 1},
                  noise=0.05, max_slices=5)
    info = prepare_dataset("demo", cfg, tmp_path, progress=False)
    for split, store in prepared(tmp_path).items():
        assert store["target"].shape[1:] == (16, 16)
        assert info["splits"][split]["slices"] == len(store["target"]) <= 5
        assert store["target"].max() <= 1.0 and (store["target"] > 0).all()  # Rician noise


def test_max_slices_for_files(tmp_path):
    rng = np.random.default_rng(6)
    fastmri_set(tmp_path / "k", rng, n=6, slices=4, shape=(16, 16))
    info = prepare_dataset("k", dataset("fastmri", tmp_path / "k", size=16, max_slices=3),
                           tmp_path / "out", progress=False)
    stores = prepared(tmp_path / "out")
    assert stores["train"]["target"].shape[0] == 3
    assert info["splits"]["train"]["volumes"] == list(stores["train"]["volume_names"])
    assert info["slices_read"] == 24


def test_progress_over_files_and_stale_staging_removed(tmp_path, capsys):
    rng = np.random.default_rng(14)
    fastmri_set(tmp_path / "k", rng, n=3, shape=(16, 16))
    stale = tmp_path / "out" / ".prepare-killed"  # what a killed run leaves behind
    stale.mkdir(parents=True)
    prepare_dataset("k", dataset("fastmri", tmp_path / "k", size=16), tmp_path / "out")
    assert "3/3" in capsys.readouterr().err  # one step per file
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "info.json", "test.h5", "train.h5", "val.h5"]


# ------------------------------------------------------------------------- splits
def _names(out: Path) -> dict[str, set]:
    return {s: set(read_store(out / f"{s}.h5", [])["volume_names"]) for s in SPLITS}


@pytest.mark.parametrize("fmt", ["fastmri", "nifti", "kdmri_h5", "demo"])
def test_a_volume_never_has_slices_in_two_splits(tmp_path, fmt):
    rng = np.random.default_rng(7)
    makers = {"fastmri": fastmri_set, "nifti": nifti_set, "kdmri_h5": kdmri_h5_set}
    if fmt == "demo":
        cfg = dataset("demo", size=16, voxel_mm=6.0, subjects={"train": 2, "val": 1, "test": 1})
    else:
        makers[fmt](tmp_path / "src", rng)
        cfg = dataset(fmt, tmp_path / "src", size=16, frames=[0, 1, 2])
    prepare_dataset("d", cfg, tmp_path / "out", progress=False)
    names = _names(tmp_path / "out")
    assert all(names[s] for s in SPLITS)
    assert not (names["train"] & names["val"] or names["train"] & names["test"]
                or names["val"] & names["test"])
    if fmt != "demo":  # every file in exactly one split
        owners = {}
        for source in plan_sources(cfg):
            owners.setdefault(source.path, set()).add(source.split)
        assert all(len(splits) == 1 for splits in owners.values())


@settings(max_examples=60, deadline=None)
@given(n=st.integers(3, 200),
       fractions=st.tuples(*[st.floats(0.01, 10) for _ in SPLITS]))
def test_split_counts_partition_the_files(n, fractions):
    counts = split_counts(n, dict(zip(SPLITS, fractions, strict=True)), list(SPLITS))
    assert sum(counts.values()) == n and min(counts.values()) >= 1
    total = sum(fractions)
    for split, fraction in zip(SPLITS, fractions, strict=True):
        if counts[split] > 1:  # never more than the share rounded up (+1 for the minimums)
            assert counts[split] <= n * fraction / total + 1 + len(SPLITS)


def test_seeded_split_is_reproducible_and_follows_fractions(tmp_path):
    for i in range(20):
        (tmp_path / f"f{i:02d}.h5").touch()
    cfg = dataset("fastmri", tmp_path, split_fractions={"train": 0.6, "val": 0.2, "test": 0.2})
    first = [(s.name, s.split) for s in plan_sources(cfg)]
    assert first == [(s.name, s.split) for s in plan_sources(cfg)]
    assert [sum(1 for _, s in first if s == split) for split in SPLITS] == [12, 4, 4]
    other = [(s.name, s.split) for s in plan_sources({**cfg, "seed": 1})]
    assert sorted(first) != sorted(other)


def test_split_dirs_named_folder_and_carved_val(tmp_path):
    for i in range(9):
        (tmp_path / "training" / f"t{i}").mkdir(parents=True)
        (tmp_path / "training" / f"t{i}" / f"t{i}.nii.gz").touch()
    for i in range(2):
        (tmp_path / "testing").mkdir(exist_ok=True)
        (tmp_path / "testing" / f"x{i}.nii.gz").touch()
    cfg = dataset("nifti", tmp_path, split_dirs={"test": "testing"})
    plan = plan_sources(cfg)
    assert sorted(s.name for s in plan if s.split == "test") == ["x0", "x1"]
    assert sum(s.split == "val" for s in plan) == 1 and sum(s.split == "train" for s in plan) == 8


# ---------------------------------------------------------------- normalisation
def test_normalisation_max_and_percentile():
    rng = np.random.default_rng(8)
    volume = _image(rng, (4, 16, 16))
    volume[0, 0, 0] = 100.0  # one bright outlier
    by_max = normalize_volume(volume, {"kind": "max"})
    assert by_max.max() == 1.0 and by_max.dtype == np.float32
    by_pct = normalize_volume(volume, {"kind": "percentile", "percentile": 99.0})
    assert np.percentile(by_pct, 99.0) == pytest.approx(1.0, rel=1e-5)
    assert by_pct.max() > 10  # the outlier is not clipped
    assert normalize_volume(by_max, {"kind": "max"}) is by_max  # a max-normalised volume
    with pytest.raises(KdmriError, match="vol-7.*positive"):
        normalize_volume(np.zeros((1, 4, 4), np.float32), {"kind": "max"}, where="vol-7")


def test_percentile_normalisation_end_to_end(tmp_path):
    rng = np.random.default_rng(9)
    fastmri_set(tmp_path / "k", rng, n=3, shape=(16, 16))
    normalization = {"kind": "percentile", "percentile": 90}
    info = prepare_dataset("k", dataset("fastmri", tmp_path / "k", size=16,
                                        normalization=normalization),
                           tmp_path / "out", progress=False)
    assert info["normalization"] == normalization
    for store in prepared(tmp_path / "out").values():
        assert np.percentile(store["target"], 90) == pytest.approx(1.0, rel=1e-4)


def test_fit_size_crops_and_pads_centred():
    x = np.arange(2 * 5 * 7, dtype=np.float32).reshape(2, 5, 7)
    out = fit_size(x, 4)
    assert out.shape == (2, 4, 4)
    np.testing.assert_array_equal(out, x[:, 0:4, 1:5])  # starts at (n - size) // 2
    padded = fit_size(x, 9)
    assert padded.shape == (2, 9, 9)
    np.testing.assert_array_equal(padded[:, 2:7, 1:8], x)
    assert padded[:, :2].sum() == 0 and padded[:, :, 0].sum() == 0


# --------------------------------------------------------------------- bad data
def _bad_fastmri_key(root, rng):
    fastmri_set(root, rng, n=3)
    with h5py.File(root / "file001.h5", "a") as handle:
        del handle["reconstruction_rss"]
    return "file001.h5", (r"missing key 'reconstruction_esc' or 'reconstruction_rss' "
                          r"\(found \['kspace'\]\)")


def _bad_fastmri_ndim(root, rng):
    fastmri_set(root, rng, n=3)
    make_fastmri(root / "file002.h5", rng, data=np.ones((20, 20), np.float32))
    return "file002.h5", r"must have 3 dims \(slices, H, W\), found shape \(20, 20\)"


def _bad_nifti_ndim(root, rng):
    nifti_set(root, rng, cine=False)
    make_nifti(root / "sub1" / "sub1.nii", rng, (16, 16))
    return "sub1.nii", r"expected a 3-D or 4-D volume, found shape \(16, 16\)"


def _bad_kdmri_ndim(root, rng):
    kdmri_h5_set(root, rng)
    make_kdmri_h5(root / "validation" / "acc_4x" / "va1.h5", rng, (16, 16, 5, 2))
    return "va1.h5", (r"must have 3 dims \(H, W, slices\) or 2 \(H, W\), "
                      r"found shape \(16, 16, 5, 2\)")


def _bad_nan(root, rng):
    kdmri_h5_set(root, rng)  # the bad file is in validation/: the test split, read last
    data = _image(rng, (16, 16, 5))
    data[3, 3, 1] = np.nan
    make_kdmri_h5(root / "validation" / "acc_4x" / "va1.h5", rng, data=data)
    return "va1.h5", "key 'volfs' contains NaN or infinite values"


def _bad_inf(root, rng):
    nifti_set(root, rng, cine=False)
    data = _image(rng, (16, 16, 4))
    data[0, 0, 0] = np.inf
    make_nifti(root / "sub3" / "sub3.nii", rng, data=data)
    return "sub3.nii", "contains NaN or infinite values"


def _bad_empty_folder(root, rng):
    root.mkdir(parents=True)
    (root / "notes.txt").write_text("no volumes here")
    return str(root), r"no files match '\*\*/\*\.nii\*' \(empty folder\?\)"


def _bad_sizes(root, rng):
    nifti_set(root, rng, cine=False)
    make_nifti(root / "sub2" / "sub2.nii.gz", rng, (16, 12, 4))
    return "sub2.nii.gz", r"slices of \(16, 12\), expected \(16, 16\) as in .*; set 'size'"


def _bad_not_hdf5(root, rng):
    fastmri_set(root, rng, n=3)
    (root / "file003.h5").write_text("this is not HDF5")
    return "file003.h5", "expected an HDF5 file, found unreadable or other data"


def _bad_not_nifti(root, rng):
    nifti_set(root, rng, cine=False)
    (root / "sub0" / "sub0.nii.gz").write_bytes(b"\x00not a nifti" * 40)
    return "sub0.nii.gz", r"expected a NIfTI file \(.nii, .nii.gz\), found unreadable or other data"


def _bad_truncated_nifti(root, rng):
    nifti_set(root, rng, cine=False)
    path = root / "sub0" / "sub0.nii.gz"
    path.write_bytes(path.read_bytes()[:-200])
    return "sub0.nii.gz", "image data is unreadable, truncated or corrupt"


def _bad_4d_without_frames(root, rng):
    nifti_set(root, rng)
    return "cine.nii.gz", r"a 4-D volume of 5 frames; expected the frames to take from 'frames'"


def _bad_zero_volume(root, rng):
    fastmri_set(root, rng, n=3)
    make_fastmri(root / "file000.h5", rng, data=np.zeros((3, 20, 20), np.float32))
    return "file000.h5", "every value is zero"


def _bad_too_few_files(root, rng):
    fastmri_set(root, rng, n=2)
    return str(root), r"2 file\(s\) matching '\*\.h5' to divide into splits .*expected at least 3"


BAD = {
    "fastmri": {"missing_key": _bad_fastmri_key, "wrong_ndim": _bad_fastmri_ndim,
                "not_hdf5": _bad_not_hdf5, "all_zero": _bad_zero_volume,
                "too_few_files": _bad_too_few_files},
    "nifti": {"wrong_ndim": _bad_nifti_ndim, "inf": _bad_inf, "empty_folder": _bad_empty_folder,
              "sizes_differ": _bad_sizes, "not_nifti": _bad_not_nifti,
              "truncated": _bad_truncated_nifti, "4d_without_frames": _bad_4d_without_frames},
    "kdmri_h5": {"wrong_ndim": _bad_kdmri_ndim, "nan": _bad_nan},
}
CASES = [(fmt, case) for fmt, cases in BAD.items() for case in cases]


@pytest.mark.parametrize(("fmt", "case"), CASES, ids=[f"{f}-{c}" for f, c in CASES])
def test_bad_data_one_clear_error_and_nothing_written(tmp_path, fmt, case):
    rng = np.random.default_rng(10)
    where, expected = BAD[fmt][case](tmp_path / "src", rng)
    out = tmp_path / "out"
    with pytest.raises(KdmriError) as info:
        prepare_dataset("d", dataset(fmt, tmp_path / "src", size=None), out, progress=False)
    message = str(info.value)
    assert "\n" not in message and where in message
    assert re.search(expected, message), message
    assert_nothing_written(out)


def test_cli_prints_one_line_and_leaves_earlier_outputs_alone(tmp_path, capsys):
    rng = np.random.default_rng(11)
    where, _ = _bad_nan(tmp_path / "src", rng)
    out = tmp_path / "out"
    spec = '{"format": "kdmri_h5", "path": "%s"}' % (tmp_path / "src")
    code = main(["prepare", "--quiet", "--name", "d", "--spec", spec, "--out-dir", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("kdmri: error: ")
    assert where in err[0] and "NaN" in err[0]
    assert_nothing_written(out)


def test_missing_path_and_split_folder(tmp_path):
    with pytest.raises(KdmriError, match=r"nowhere: data folder not found \(key 'path'\)"):
        plan_sources(dataset("nifti", tmp_path / "nowhere"))
    (tmp_path / "d").mkdir()
    with pytest.raises(KdmriError, match=r"held_out: folder of split 'test' not found"):
        plan_sources(dataset("nifti", tmp_path / "d", split_dirs={"test": "held_out"}))
    with pytest.raises(KdmriError, match="frame list not found"):
        list(READERS["nifti"](dataset("nifti", tmp_path / "d", frame_list="nope.txt")))
    (tmp_path / "bad.txt").write_text("cine.nii.gz ED\n")
    with pytest.raises(KdmriError, match=r"bad.txt: line 1: expected '<file> <frame>"):
        list(READERS["nifti"](dataset("nifti", tmp_path / "d",
                                      frame_list=str(tmp_path / "bad.txt"))))


def test_frame_out_of_range(tmp_path):
    rng = np.random.default_rng(12)
    nifti_set(tmp_path, rng)
    with pytest.raises(KdmriError, match=r"cine.nii.gz: frame 7 requested, but the file has 5"):
        list(READERS["nifti"](dataset("nifti", tmp_path, frames=[7])))


# -------------------------------------------------------------------- config side
def test_schema_accepts_every_format_and_requires_a_path(tmp_path):
    for fmt in ("fastmri", "nifti", "kdmri_h5"):
        assert dataset(fmt, tmp_path)["normalization"] == {"kind": "max", "percentile": 99.5}
        with pytest.raises(KdmriError, match="'path' is a required property"):
            dataset(fmt)
    with pytest.raises(KdmriError, match="unknown key 'datasets.d.crop'"):
        dataset("nifti", tmp_path, crop=3)
    with pytest.raises(KdmriError, match="expected one of"):
        dataset("analyze", tmp_path)


def test_dataset_spec_holds_only_the_formats_settings(tmp_path):
    spec = dataset_spec(dataset("fastmri", tmp_path, size=16))
    assert {"path", "size", "target_key", "normalization"} <= set(spec)
    assert not {"frames", "axis", "subjects", "noise"} & set(spec)
    assert "path" not in dataset_spec(dataset("demo"))
    assert source_files(dataset("demo")) == []


def test_paper_config_validates():
    config = load_config(REPO / "config" / "paper.yaml")
    assert config["train"]["epochs"] == 150 and config["train"]["batch_size"] == 4
    assert config["train"]["lr"] == 0.001 and config["train"]["optimizer"] == "adam"
    assert config["train"]["schedule"]["kind"] == "step"
    assert config["tasks"]["recon"]["accelerations"] == [4, 5, 8]
    formats = {d["format"] for d in config["datasets"].values()}
    assert formats == {"nifti", "fastmri"}
    assert config["tasks"]["sr"]["datasets"] == ["calgary"]


# ------------------------------------------------------------------- throughput
#: Loader of each file format in kdmri.data.readers (called once per file).
LOADERS = {"fastmri": "_load_fastmri", "nifti": "_load_nifti", "kdmri_h5": "_load_kdmri_h5"}


def read_directly(paths: list[Path], fmt: str) -> dict[str, np.ndarray]:
    """Each file's volume ``(slices, H, W)`` read with h5py or nibabel, without kdmri."""
    volumes = {}
    for path in paths:
        if fmt == "nifti":
            volume = np.moveaxis(np.asanyarray(nib.load(path).dataobj), 2, 0)
        else:
            with h5py.File(path, "r") as handle:
                volume = handle["volfs" if fmt == "kdmri_h5" else "reconstruction_esc"][()]
            if fmt == "kdmri_h5":
                volume = volume.transpose(2, 0, 1)
        volumes[path.name.split(".")[0]] = volume
    return volumes


def write_directly(volumes: dict[str, np.ndarray], path: Path) -> None:
    """The least any preparation does: every volume divided by its maximum, into one store."""
    shape = next(iter(volumes.values())).shape[1:]
    with StoreWriter(path, shape) as writer:
        for name, volume in volumes.items():
            writer.add_volume(name, volume / volume.max())


@pytest.mark.parametrize("fmt", ["fastmri", "nifti", "kdmri_h5"])
def test_throughput_on_2000_slices(tmp_path, fmt, monkeypatch):
    """2,040 slices of 32 x 32 in 40 files: prepare reads each file once, writes every
    slice once with the values of a direct read (normalised by the volume's maximum), and
    takes at most 4 times as long as reading the files directly with h5py or nibabel and
    writing one store (measured: 1.1 to 1.5 times; best of 3 rounds each, interleaved, so
    that a busy machine slows both)."""
    rng = np.random.default_rng(13)
    files, slices, shape = 40, 51, (32, 32)
    suffix = ".nii.gz" if fmt == "nifti" else ".h5"
    paths = [tmp_path / "src" / f"f{i:03d}{suffix}" for i in range(files)]
    for path in paths:
        if fmt == "fastmri":
            make_fastmri(path, rng, slices, shape)
        elif fmt == "nifti":
            make_nifti(path, rng, (*shape, slices))
        else:
            make_kdmri_h5(path, rng, (*shape, slices))
    loads = []
    loader = getattr(readers, LOADERS[fmt])
    monkeypatch.setattr(readers, LOADERS[fmt],
                        lambda path, *args: (loads.append(Path(path)), loader(path, *args))[1])

    rounds, times = 3, {"direct": [], "prepare": []}
    for r in range(rounds):
        start = time.perf_counter()
        direct = read_directly(paths, fmt)
        write_directly(direct, tmp_path / f"direct{r}.h5")
        times["direct"].append(time.perf_counter() - start)
        start = time.perf_counter()
        info = prepare_dataset("t", dataset(fmt, tmp_path / "src", size=32), tmp_path / f"out{r}",
                               progress=False)
        times["prepare"].append(time.perf_counter() - start)

    assert sorted(loads) == sorted(paths * rounds)  # every file read once per preparation
    assert info["slices_read"] == files * slices >= 2000
    stores = prepared(tmp_path / "out0")
    names = [name for store in stores.values() for name in store["volume_names"]]
    assert sorted(names) == sorted(direct)  # every volume in exactly one split
    for store in stores.values():
        for name in store["volume_names"]:
            np.testing.assert_array_equal(volume_of(store, name),
                                          direct[name] / direct[name].max())
    ratio = min(times["prepare"]) / min(times["direct"])
    print(f"[throughput] {fmt}: {files * slices / min(times['prepare']):.0f} slices/s, "
          f"{ratio:.2f} x the direct read and write")
    assert ratio <= 4, times

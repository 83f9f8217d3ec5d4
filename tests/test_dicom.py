"""The DICOM reader (``format: dicom``, :mod:`kdmri.data.dicom`) on the real MR files
pydicom ships (MR_small and its RLE, JPEG 2000, JPEG-LS and truncated variants, the
localiser series of dicomdirtests/98892003/MR1 and MR2) and on series, an enhanced
multi-frame file and Siemens mosaics built here from MR_small's pixels: pixel values
against pydicom's own, slice order against ImagePositionPatient, the affine against a
hand computation, splits by series, and one clear error per kind of bad data."""

from __future__ import annotations

import copy
import re
import shutil
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from kdmri.cli import main  # noqa: E402
from kdmri.config import validate  # noqa: E402
from kdmri.data.dicom import plan_series, read_dicom_volume  # noqa: E402
from kdmri.data.prepare import READERS, prepare_dataset  # noqa: E402
from kdmri.data.readers import dataset_spec, source_files  # noqa: E402
from kdmri.data.store import read_store  # noqa: E402
from kdmri.errors import KdmriError  # noqa: E402
from kdmri.keys import SPLITS  # noqa: E402

# The files pydicom ships in its wheel (no download: get_testdata_file may fetch others).
TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"
MR_SMALL = TEST_FILES / "MR_small.dcm"
LOCALISERS = TEST_FILES / "dicomdirtests" / "98892003"


def shipped(name: str) -> Path:
    path = TEST_FILES / name
    if not path.is_file():
        pytest.skip(f"pydicom does not ship {name} offline")
    return path


@pytest.fixture(autouse=True)
def _quiet_pydicom():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def dataset(path: Path, **options) -> dict:
    entry = {"format": "dicom", "path": str(path), **options}
    return validate({"datasets": {"d": entry}})["datasets"]["d"]


def rescaled(path: Path) -> np.ndarray:
    """pydicom's own reading: pixel_array * RescaleSlope + RescaleIntercept."""
    ds = pydicom.dcmread(path)
    return (ds.pixel_array * float(ds.get("RescaleSlope", 1))
            + float(ds.get("RescaleIntercept", 0))).astype(np.float32)


def small(**changes) -> Dataset:
    ds = pydicom.dcmread(MR_SMALL)
    for key, value in changes.items():
        setattr(ds, key, value)
    return ds


def set_pixels(ds: Dataset, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array.astype(np.int16))
    ds.Rows, ds.Columns = array.shape[-2:]
    ds.PixelData = array.tobytes()


# An oblique orientation: normal = row x col = (-0.6, 0.8, 0), so x falls as the slices go.
ROW, COL = np.array([0.8, 0.6, 0.0]), np.array([0.0, 0.0, -1.0])
NORMAL = np.cross(ROW, COL)
ORIGIN, STEP_MM = np.array([10.0, -20.0, 30.0]), 2.5


def make_series(folder: Path, n=5, seed=0, orientation=(ROW, COL), slope=2.5, intercept=-100.0
                ) -> list[Path]:
    """``n`` slices of one new series from MR_small's pixels (slice k: pixels + 10 k),
    written under shuffled file names and InstanceNumbers; returns the files in position
    order."""
    folder.mkdir(parents=True, exist_ok=True)
    base = pydicom.dcmread(MR_SMALL).pixel_array.astype(np.int32)
    uid, rng = generate_uid(), np.random.default_rng(seed)
    names, numbers = rng.permutation(n), rng.permutation(n) + 1
    files = []
    for k in range(n):
        ds = small(SeriesInstanceUID=uid, SOPInstanceUID=generate_uid(),
                   ImageOrientationPatient=[*orientation[0], *orientation[1]],
                   ImagePositionPatient=list(ORIGIN + k * STEP_MM * np.cross(*orientation)),
                   InstanceNumber=int(numbers[k]), RescaleSlope=slope, RescaleIntercept=intercept,
                   SeriesNumber=7)
        set_pixels(ds, base + 10 * k)
        path = folder / f"IM{names[k]:04d}"
        ds.save_as(path)
        files.append(path)
    return files


def by_position(files: list[Path]) -> list[Path]:
    """The files ordered by ImagePositionPatient on the normal, computed here."""
    def depth(path):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        iop = np.array(ds.ImageOrientationPatient, dtype=float)
        return float(np.dot(np.array(ds.ImagePositionPatient, dtype=float),
                            np.cross(iop[:3], iop[3:])))
    return sorted(files, key=depth)


# ---------------------------------------------------------------- real single files
@pytest.mark.parametrize("name", ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_implicit.dcm",
                                  "MR_small_bigendian.dcm"])
def test_real_mr_files_match_pydicom(name):
    path = shipped(name)
    volume, affine, vol_name = read_dicom_volume(path)
    assert vol_name == name[: -len(".dcm")]
    assert volume.dtype == np.float32 and volume.shape == (1, 64, 64)
    np.testing.assert_array_equal(volume[0], rescaled(path))


def test_affine_of_mr_small_by_hand():
    """MR_small: IOP (1,0,0, 0,1,0), IPP (-83.9063, -91.2, 6.6406), PixelSpacing 0.3125,
    SliceThickness 0.8; LPS -> RAS flips x and y."""
    _, affine, _ = read_dicom_volume(MR_SMALL)
    expected = np.array([[-0.3125, 0, 0, 83.9063],
                         [0, -0.3125, 0, 91.2],
                         [0, 0, 0.8, 6.6406],
                         [0, 0, 0, 1]])
    np.testing.assert_allclose(affine, expected, atol=1e-6)
    nib = pytest.importorskip("nibabel")
    assert nib.aff2axcodes(affine) == ("L", "P", "S")


def test_rescale_slope_and_intercept_applied(tmp_path):
    ds = small(RescaleSlope=2.5, RescaleIntercept=-100)
    ds.save_as(tmp_path / "scaled.dcm")
    volume, _, _ = read_dicom_volume(tmp_path / "scaled.dcm")
    raw = pydicom.dcmread(MR_SMALL).pixel_array
    np.testing.assert_allclose(volume[0], raw * 2.5 - 100)
    np.testing.assert_array_equal(volume[0], rescaled(tmp_path / "scaled.dcm"))


# ------------------------------------------------------------------- series, order
def test_series_folder_ordered_by_position_with_affine(tmp_path):
    files = make_series(tmp_path / "series")
    volume, affine, name = read_dicom_volume(tmp_path / "series")
    assert name == "series" and volume.shape == (5, 64, 64)
    ordered = by_position(list((tmp_path / "series").iterdir()))
    assert ordered == files
    for k, path in enumerate(ordered):
        np.testing.assert_array_equal(volume[k], rescaled(path))
    by_number = sorted(ordered, key=lambda p: int(pydicom.dcmread(p).InstanceNumber))
    assert by_number != ordered and sorted(ordered) != ordered  # neither names nor numbers
    # by hand: columns row*0.3125, col*0.3125, 2.5 * normal, first position; x and y negated
    expected = np.array([[-0.8 * 0.3125, 0, -(-0.6 * 2.5), -10.0],
                         [-0.6 * 0.3125, 0, -(0.8 * 2.5), 20.0],
                         [0, -0.3125, 0, 30.0],
                         [0, 0, 0, 1]])
    np.testing.assert_allclose(affine, expected, atol=1e-9)
    # voxel (column 3, row 5, slice 2) is IPP_2 + 3 * 0.3125 * row + 5 * 0.3125 * col (LPS)
    lps = ORIGIN + 2 * STEP_MM * NORMAL + 3 * 0.3125 * ROW + 5 * 0.3125 * COL
    np.testing.assert_allclose(affine @ [3, 5, 2, 1], [-lps[0], -lps[1], lps[2], 1], atol=1e-9)


def test_real_localiser_series_through_prepare(tmp_path):
    """MR1 holds three one-slice series (all SeriesNumber 1): three volumes, each equal to
    pydicom's reading of its file; the DICOMDIR beside them and a text file are skipped."""
    src = tmp_path / "src"
    shutil.copytree(LOCALISERS / "MR1", src / "MR1")
    shutil.copy(LOCALISERS.parent / "DICOMDIR", src / "DICOMDIR")
    (src / "notes.txt").write_text("not DICOM\n")
    plan = plan_series(dataset(src))
    assert sorted(s.name for s in plan) == ["MR1_0", "MR1_1", "MR1_2"]
    assert sorted(p for s in plan for p in s.files) == sorted((src / "MR1").iterdir())
    info = prepare_dataset("d", dataset(src), tmp_path / "out", progress=False)
    assert sum(len(info["splits"][s]["volumes"]) for s in SPLITS) == 3
    for series in plan:
        store = read_store(tmp_path / "out" / f"{series.split}.h5", ["target", "volume"])
        index = list(store["volume_names"]).index(series.name)
        expected = rescaled(series.files[0])
        np.testing.assert_allclose(store["target"][store["volume"] == index][0],
                                   expected / expected.max(), rtol=1e-6)


def test_real_mixed_orientation_series_is_refused(tmp_path):
    """MR2's localiser series hold a sagittal, a coronal and an axial slice each."""
    shutil.copytree(LOCALISERS / "MR2", tmp_path / "src" / "MR2")
    with pytest.raises(KdmriError) as info:
        prepare_dataset("d", dataset(tmp_path / "src"), tmp_path / "out", progress=False)
    message = str(info.value)
    assert "\n" not in message and "mixed orientations in one series" in message
    assert re.search(r"MR2/\d+: ", message)
    assert_nothing_written(tmp_path / "out")


# -------------------------------------------------------------- enhanced multi-frame
def make_enhanced(path: Path, positions_order=(2, 0, 3, 1)) -> tuple[list[np.ndarray], Dataset]:
    """An enhanced MR file of 4 frames from MR_small's pixels: frame f at slice position
    positions_order[f], with a rescale of its own; geometry in the functional groups."""
    ds = pydicom.dcmread(MR_SMALL)
    base = ds.pixel_array.astype(np.int32)
    frames, expected = [], [None] * 4
    per_frame = Sequence()
    for f, k in enumerate(positions_order):
        frame = base + 10 * k
        frames.append(frame)
        item, plane, scale = Dataset(), Dataset(), Dataset()
        plane.ImagePositionPatient = list(ORIGIN + k * STEP_MM * NORMAL)
        scale.RescaleSlope, scale.RescaleIntercept = 1.0 + f, -5.0 * f
        item.PlanePositionSequence = Sequence([plane])
        item.PixelValueTransformationSequence = Sequence([scale])
        per_frame.append(item)
        expected[k] = (frame * (1.0 + f) - 5.0 * f).astype(np.float32)
    shared, orient, measures = Dataset(), Dataset(), Dataset()
    orient.ImageOrientationPatient = [*ROW, *COL]
    measures.PixelSpacing, measures.SliceThickness = [0.5, 0.25], 2.0
    shared.PlaneOrientationSequence = Sequence([orient])
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PerFrameFunctionalGroupsSequence = per_frame
    for key in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        del ds[key]
    ds.SOPClassUID = pydicom.uid.EnhancedMRImageStorage
    ds.NumberOfFrames = 4
    ds.SeriesInstanceUID = generate_uid()
    ds.PixelData = np.stack(frames).astype(np.int16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path)
    return expected, ds


def test_enhanced_multiframe_frames_ordered_and_rescaled(tmp_path):
    expected, _ = make_enhanced(tmp_path / "enhanced.dcm")
    volume, affine, name = read_dicom_volume(tmp_path / "enhanced.dcm")
    assert name == "enhanced" and volume.shape == (4, 64, 64)
    np.testing.assert_array_equal(volume, np.stack(expected))
    # pydicom's own frames, rescaled per frame, put in position order by hand
    ds = pydicom.dcmread(tmp_path / "enhanced.dcm")
    depth = [float(np.dot(g.PlanePositionSequence[0].ImagePositionPatient, NORMAL))
             for g in ds.PerFrameFunctionalGroupsSequence]
    own = [ds.pixel_array[f] * float(g.PixelValueTransformationSequence[0].RescaleSlope)
           + float(g.PixelValueTransformationSequence[0].RescaleIntercept)
           for f, g in enumerate(ds.PerFrameFunctionalGroupsSequence)]
    np.testing.assert_array_equal(volume, np.stack([own[f] for f in np.argsort(depth)]))
    # PixelSpacing [0.5 between rows, 0.25 between columns]
    np.testing.assert_allclose(affine[:3, 0], [-0.8 * 0.25, -0.6 * 0.25, 0])
    np.testing.assert_allclose(affine[:3, 1], [0, 0, -0.5])
    np.testing.assert_allclose(affine[:3, 2], [1.5, -2.0, 0], atol=1e-9)
    np.testing.assert_allclose(affine[:3, 3], [-10, 20, 30])


# -------------------------------------------------------------------------- mosaics
def csa_header(tags: dict[str, list[str]]) -> bytes:
    """A Siemens CSA header in the SV10 layout (as scanners write element (0029,1010))."""
    out = b"SV10\x04\x03\x02\x01" + struct.pack("<2I", len(tags), 77)
    for name, items in tags.items():
        out += struct.pack("<64si4s3i", name.encode(), len(items), b"IS\0\0", 6, len(items), 77)
        for item in items:
            data = item.encode() + b"\0"
            out += struct.pack("<4i", len(data), len(data), 77, len(data))
            out += data + b"\0" * (-len(data) % 4)
    return out


def make_mosaic(path: Path, n=5, how="csa", normal_sign=1.0) -> tuple[list[np.ndarray], Dataset]:
    """A mosaic of ``n`` tiles (MR_small's pixels + 7 k) in a ceil(sqrt(n)) grid, its count
    in the CSA header (``csa``), in (0019,100A) (``private``) or nowhere (``none``)."""
    ds = pydicom.dcmread(MR_SMALL)
    base = ds.pixel_array.astype(np.int32)
    grid = int(np.ceil(np.sqrt(n)))
    image = np.zeros((64 * grid, 64 * grid), np.int32)
    tiles = []
    for k in range(n):
        r, c = divmod(k, grid)
        image[r * 64 : (r + 1) * 64, c * 64 : (c + 1) * 64] = base + 7 * k
        tiles.append((base + 7 * k).astype(np.float32))
    set_pixels(ds, image)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"]
    ds.SeriesInstanceUID = generate_uid()
    ds.SpacingBetweenSlices = 3.0
    ds.AcquisitionMatrix = [64, 0, 0, 64]
    if how == "csa":
        block = ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
        block.add_new(0x10, "OB", csa_header({
            "NumberOfImagesInMosaic": [str(n)],
            "SliceNormalVector": [str(normal_sign * v) for v in (0.0, 0.0, 1.0)]}))
    elif how == "private":
        ds.private_block(0x0019, "SIEMENS MR HEADER", create=True).add_new(0x0A, "US", n)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path)
    return tiles, ds


def test_csa_header_of_the_test_reads_with_nibabel(tmp_path):
    """The CSA header built here is the layout nibabel's reader knows."""
    csareader = pytest.importorskip("nibabel.nicom.csareader")
    header = csareader.read(csa_header({"NumberOfImagesInMosaic": ["5"]}))
    assert csareader.get_n_mosaic(header) == 5


@pytest.mark.parametrize("how", ["csa", "private"])
def test_mosaic_unpacked_from_siemens_count(tmp_path, how):
    tiles, ds = make_mosaic(tmp_path / "mosaic.dcm", n=5, how=how)
    volume, affine, _ = read_dicom_volume(tmp_path / "mosaic.dcm")
    assert volume.shape == (5, 64, 64)
    np.testing.assert_array_equal(volume, np.stack(tiles))
    # the first tile's corner: the mosaic's IPP moved by (192 - 64) / 2 pixels each way
    ipp = np.array(ds.ImagePositionPatient, dtype=float)
    first = ipp + (np.array([1, 0, 0]) + np.array([0, 1, 0])) * 0.3125 * 64
    np.testing.assert_allclose(affine[:3, 3], [-first[0], -first[1], first[2]], atol=1e-6)
    np.testing.assert_allclose(affine[:3, 2], [0, 0, 3.0], atol=1e-9)  # SpacingBetweenSlices


def test_mosaic_without_count_takes_the_whole_grid(tmp_path):
    tiles, _ = make_mosaic(tmp_path / "mosaic.dcm", n=5, how="none")
    volume, _, _ = read_dicom_volume(tmp_path / "mosaic.dcm")
    assert volume.shape == (9, 64, 64)  # a 3 x 3 grid (192 / AcquisitionMatrix 64)
    np.testing.assert_array_equal(volume[:5], np.stack(tiles))
    assert not volume[5:].any()


def test_mosaic_slices_follow_the_csa_normal(tmp_path):
    """A SliceNormalVector against row x column: the tiles run downwards, so the volume
    (ascending along row x column) holds them last to first."""
    tiles, _ = make_mosaic(tmp_path / "mosaic.dcm", n=4, how="csa", normal_sign=-1.0)
    volume, affine, _ = read_dicom_volume(tmp_path / "mosaic.dcm")
    np.testing.assert_array_equal(volume, np.stack(tiles[::-1]))
    np.testing.assert_allclose(affine[:3, 2], [0, 0, 3.0], atol=1e-9)


def test_series_of_mosaics_gives_one_volume_per_mosaic(tmp_path):
    src = tmp_path / "src" / "bold"
    uid = generate_uid()
    for t in range(3):
        _, ds = make_mosaic(src / f"vol{t}.dcm", n=4)
        ds.SeriesInstanceUID, ds.InstanceNumber = uid, 3 - t
        ds.save_as(src / f"vol{t}.dcm")
    for name in ("a", "b", "c"):
        make_series(tmp_path / "src" / name, n=2)
    info = prepare_dataset("d", dataset(tmp_path / "src", size=64), tmp_path / "out", progress=False)
    where = {v: s for s in SPLITS for v in info["splits"][s]["volumes"]}
    assert {"bold_t000", "bold_t001", "bold_t002"} <= set(where)
    assert len({where[f"bold_t00{t}"] for t in range(3)}) == 1  # one series, one split
    with pytest.raises(KdmriError, match=r"a series of 3 Siemens mosaics"):
        read_dicom_volume(src)


# ------------------------------------------------------------------- prepare, splits
def dicom_tree(root: Path, n=6) -> dict[str, list[Path]]:
    """``n`` series folders (3 to 5 slices each) and one single-file series."""
    series = {f"sub{i:02d}": make_series(root / f"sub{i:02d}", n=3 + i % 3, seed=i) for i in range(n)}
    shutil.copy(MR_SMALL, root / "MR_small.dcm")
    series["MR_small"] = [root / "MR_small.dcm"]
    (root / "README.txt").write_text("acquired 2024\n")
    (root / ".hidden").write_text("x")
    (root / ".trash").mkdir()  # a DICOM file in a hidden folder is skipped
    small(SeriesInstanceUID=generate_uid()).save_as(root / ".trash" / "old.dcm")
    return series


def assert_nothing_written(out: Path) -> None:
    left = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert left == [], left


def test_prepare_end_to_end_splits_by_series(tmp_path):
    src = tmp_path / "src"
    series = dicom_tree(src)
    series["src"] = series.pop("MR_small")  # a series in path itself takes path's name
    cfg = dataset(src)
    assert sorted(source_files(cfg)) == sorted(str(p) for files in series.values() for p in files)
    assert dataset_spec(cfg)["format"] == "dicom" and "path" in dataset_spec(cfg)
    info = prepare_dataset("d", cfg, tmp_path / "out", progress=False)
    assert info["format"] == "dicom"
    names = [v for s in SPLITS for v in info["splits"][s]["volumes"]]
    assert sorted(names) == sorted(series)
    assert all(info["splits"][s]["volumes"] for s in SPLITS)
    for split in SPLITS:
        store = read_store(tmp_path / "out" / f"{split}.h5", ["target", "volume"])
        for index, name in enumerate(store["volume_names"]):
            volume = store["target"][store["volume"] == index]
            expected = np.stack([rescaled(p) for p in by_position(series[name])])
            np.testing.assert_allclose(volume, expected / expected.max(), rtol=1e-6)
    again = prepare_dataset("d", cfg, tmp_path / "out2", progress=False)
    assert again["splits"] == info["splits"]  # seeded


def test_split_dirs_by_series_and_a_series_in_two_split_folders(tmp_path):
    src = tmp_path / "src"
    for i in range(4):
        make_series(src / "train" / f"s{i}", n=2, seed=i)
    make_series(src / "held_out" / "t0", n=2)
    cfg = dataset(src, split_dirs={"train": "train", "test": "held_out"})
    plan = plan_series(cfg)
    assert [s.name for s in plan if s.split == "test"] == ["held_out_t0"]
    assert len([s for s in plan if s.split == "val"]) >= 1
    moved = sorted((src / "train" / "s0").iterdir())[0]
    shutil.move(moved, src / "held_out" / "t0" / moved.name)
    with pytest.raises(KdmriError, match=r"has files in the folders of two splits"):
        plan_series(cfg)


def test_different_sizes_need_size(tmp_path):
    src = tmp_path / "src"
    make_series(src / "a", n=2)
    shutil.copytree(LOCALISERS / "MR1", src / "b")  # 16 x 16
    with pytest.raises(KdmriError) as info:
        prepare_dataset("d", dataset(src), tmp_path / "out", progress=False)
    message = str(info.value)
    assert "\n" not in message and "set 'size'" in message and str(src) in message
    assert_nothing_written(tmp_path / "out")
    info = prepare_dataset("d", dataset(src, size=32), tmp_path / "out", progress=False)
    assert info["splits"]["train"]["shape"] == [32, 32]


# ---------------------------------------------------------------------- bad data
def _no_pixel_data(src):
    ds = small(SeriesInstanceUID=generate_uid())
    del ds.PixelData
    ds.save_as(src / "nopix.dcm")
    return "nopix.dcm", r"nopix.dcm: no pixel data \(element \(7FE0,0010\) is missing\)"


def _mixed_orientations(src):
    files = make_series(src / "s", n=2)
    ds = pydicom.dcmread(files[1])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0.001]
    ds.save_as(files[1])
    return "s/IM", r"mixed orientations in one series"


def _empty_folder(src):
    return str(src), r"no DICOM files among the 0 file"


def _only_other_files(src):
    (src / "a.txt").write_text("x")
    (src / "b.nii").write_bytes(b"\0" * 400)
    return str(src), r"no DICOM files among the 2 file"


def _truncated(src):
    shutil.copy(shipped("MR_truncated.dcm"), src / "MR_truncated.dcm")
    return "MR_truncated.dcm", r"pixel data is unreadable, truncated or corrupt \(.*less than"


def _same_position(src):
    files = make_series(src / "s", n=2)
    ds = pydicom.dcmread(files[1])
    ds.ImagePositionPatient = pydicom.dcmread(files[0]).ImagePositionPatient
    ds.save_as(files[1])
    return "s/IM", r"two images of one series at the same position"


def _undecodable(src, name: str, skip: str):
    """Copy shipped file ``name`` into ``src``, skipping the case where its decoder exists."""
    path = shipped(name)
    if pydicom.pixels.get_decoder(pydicom.dcmread(path).file_meta.TransferSyntaxUID).is_available:
        pytest.skip(skip)
    shutil.copy(path, src / name)
    return name


def _jpeg_ls(src):
    name = _undecodable(src, "MR_small_jpeg_ls_lossless.dcm", "a JPEG-LS decoder is installed")
    return name, r"JPEG-LS.*no decoder for it is installed; install one: .*pylibjpeg-libjpeg"


def _jpeg2000(src):
    name = _undecodable(src, "MR_small_jp2klossless.dcm",
                        "a JPEG 2000 decoder is installed (see test_jpeg2000_decoded_when_installed)")
    return name, r"JPEG 2000.*install one: .*pylibjpeg-openjpeg"


BAD = {"no_pixel_data": _no_pixel_data, "mixed_orientations": _mixed_orientations,
       "empty_folder": _empty_folder, "only_other_files": _only_other_files,
       "truncated": _truncated, "same_position": _same_position, "jpeg_ls": _jpeg_ls,
       "jpeg2000": _jpeg2000}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_data_one_clear_error_and_nothing_written(tmp_path, case):
    src = tmp_path / "src"
    src.mkdir()
    where, expected = BAD[case](src)
    if "folder" not in case and "other" not in case:  # two good series: one for each split
        make_series(src / "good1", n=2, seed=1)
        make_series(src / "good2", n=2, seed=2)
    out = tmp_path / "out"
    with pytest.raises(KdmriError) as info:
        prepare_dataset("d", dataset(src), out, progress=False)
    message = str(info.value)
    assert "\n" not in message and where in message, message
    assert re.search(expected, message), message
    assert_nothing_written(out)


def test_jpeg2000_decoded_when_installed():
    path = shipped("MR_small_jp2klossless.dcm")
    uid = pydicom.dcmread(path).file_meta.TransferSyntaxUID
    if not pydicom.pixels.get_decoder(uid).is_available:
        pytest.skip("no JPEG 2000 decoder installed (see the jpeg2000 bad-data case)")
    volume, _, _ = read_dicom_volume(path)
    np.testing.assert_array_equal(volume[0], rescaled(path))
    np.testing.assert_array_equal(volume[0], rescaled(MR_SMALL))  # lossless


def test_read_dicom_volume_refuses_folders_of_several_series_and_non_dicom(tmp_path):
    with pytest.raises(KdmriError, match=r"MR1: 3 DICOM series"):
        read_dicom_volume(LOCALISERS / "MR1")
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(KdmriError, match=r"x.txt: not a DICOM image file"):
        read_dicom_volume(tmp_path / "x.txt")
    with pytest.raises(KdmriError, match=r"no such file or folder"):
        read_dicom_volume(tmp_path / "nowhere")


def test_cli_prints_one_line(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    spec = '{"format": "dicom", "path": "%s"}' % (tmp_path / "src")
    code = main(["prepare", "--quiet", "--name", "d", "--spec", spec, "--out-dir",
                 str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no DICOM files" in err[0]


def test_registered_format():
    assert "dicom" in READERS
    with pytest.raises(KdmriError, match="'path' is a required property"):
        validate({"datasets": {"d": {"format": "dicom"}}})
    cfg = copy.deepcopy(dataset(MR_SMALL.parent))
    assert cfg["glob"] == ""

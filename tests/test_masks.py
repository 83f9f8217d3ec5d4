"""Tests for kdmri.masks: Cartesian line masks, the low-resolution box, mask files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdmri.errors import KdmriError
from kdmri.masks import (
    MASK_FUNCS,
    EquispacedLines,
    LowResBox,
    RandomLines,
    create_mask_func,
    effective_acceleration,
    load_mask,
    mask_params,
    save_mask,
)

ACCELERATIONS = [4, 5, 8]
WIDTHS = [150, 240, 368, 64]
HEIGHT = 6
CENTER_FRACTION = 0.08


def sampled_columns(mask: np.ndarray) -> np.ndarray:
    return np.flatnonzero(mask[0])


def centre_band(width: int, center_fraction: float) -> np.ndarray:
    """The ``round(width * cf)`` columns around the zero frequency ``width // 2``."""
    n = max(1, round(width * center_fraction))
    return np.arange(width // 2 - n // 2, width // 2 - n // 2 + n)


@pytest.mark.parametrize("kind", ["random", "equispaced"])
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("acceleration", ACCELERATIONS)
def test_line_mask_properties(kind, width, acceleration):
    mask = create_mask_func(kind, acceleration, CENTER_FRACTION)((HEIGHT, width), seed=7)
    assert mask.shape == (HEIGHT, width)
    assert mask.dtype == np.float32
    assert set(np.unique(mask).tolist()) <= {0.0, 1.0}
    # whole columns (phase-encode lines) are sampled
    assert (mask == mask[:1]).all()
    columns = sampled_columns(mask)
    assert abs(columns.size - width / acceleration) <= 1
    # the centre band is fully sampled
    assert mask[:, centre_band(width, CENTER_FRACTION)].all()
    assert mask[:, width // 2].all()


@pytest.mark.parametrize("kind", ["random", "equispaced"])
@pytest.mark.parametrize("width", WIDTHS)
def test_same_seed_same_mask(kind, width):
    func = create_mask_func(kind, 4)
    np.testing.assert_array_equal(func((HEIGHT, width), seed=3), func((HEIGHT, width), seed=3))
    # a second instance with the same parameters agrees too
    other = create_mask_func(kind, 4)
    np.testing.assert_array_equal(func((HEIGHT, width), seed=3), other((HEIGHT, width), seed=3))


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("acceleration", ACCELERATIONS)
def test_random_different_seed_different_mask(width, acceleration):
    func = RandomLines(acceleration, CENTER_FRACTION)
    a, b = func((HEIGHT, width), seed=0), func((HEIGHT, width), seed=1)
    assert not np.array_equal(a, b)
    assert a.sum() == b.sum()


def test_masks_leave_global_rng_alone():
    state = np.random.get_state()
    mask = RandomLines(4)((HEIGHT, 64), seed=5)
    EquispacedLines(4)((HEIGHT, 64), seed=5)
    after = np.random.get_state()
    assert mask.sum() > 0
    assert state[0] == after[0] and np.array_equal(state[1], after[1]) and state[2:] == after[2:]


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("acceleration", ACCELERATIONS)
def test_equispaced_lines_are_evenly_spaced(width, acceleration):
    mask = EquispacedLines(acceleration, CENTER_FRACTION)((HEIGHT, width), seed=11)
    band = centre_band(width, CENTER_FRACTION)
    others = np.setdiff1d(np.arange(width), band)
    picked = np.flatnonzero(np.isin(others, sampled_columns(mask)))  # positions among others
    n_rest = picked.size
    assert n_rest == sampled_columns(mask).size - band.size
    spacing = others.size / n_rest
    gaps = set(np.diff(picked).tolist())
    assert gaps <= {int(np.floor(spacing)), int(np.ceil(spacing))}


def test_equispaced_offset_depends_on_seed():
    func = EquispacedLines(8, CENTER_FRACTION)
    masks = {func((HEIGHT, 240), seed=s).tobytes() for s in range(6)}
    assert len(masks) > 1


@given(
    width=st.integers(16, 400),
    acceleration=st.floats(1.0, 12.0),
    kind=st.sampled_from(["random", "equispaced"]),
    seed=st.integers(0, 2**31 - 1),
)
@settings(max_examples=40, deadline=None)
def test_line_count_property(width, acceleration, kind, seed):
    mask = create_mask_func(kind, acceleration, CENTER_FRACTION)((2, width), seed=seed)
    assert abs(sampled_columns(mask).size - width / acceleration) <= 1
    assert mask[:, width // 2].all()


@pytest.mark.parametrize(
    "shape, factor", [((32, 32), 4), ((256, 256), 4), ((24, 16), 2), ((30, 20), 5)]
)
def test_lowres_box_keeps_central_block(shape, factor):
    mask = create_mask_func("lowres", factor)(shape, seed=0)
    h, w = shape[0] // factor, shape[1] // factor
    expected = np.zeros(shape, dtype=np.float32)
    r0, c0 = shape[0] // 2 - h // 2, shape[1] // 2 - w // 2
    expected[r0 : r0 + h, c0 : c0 + w] = 1
    np.testing.assert_array_equal(mask, expected)
    assert mask.sum() == h * w
    assert LowResBox(factor).params() == {"kind": "lowres", "acceleration": float(factor)}


def test_lowres_seed_is_irrelevant():
    func = LowResBox(4)
    np.testing.assert_array_equal(func((32, 32), seed=0), func((32, 32), seed=9))


@pytest.mark.parametrize("kind", sorted(MASK_FUNCS))
@pytest.mark.parametrize("acceleration", [0.5, 0, -2, float("nan")])
def test_acceleration_below_one_raises(kind, acceleration):
    with pytest.raises(KdmriError, match="acceleration"):
        create_mask_func(kind, acceleration)


def test_bad_center_fraction_raises():
    with pytest.raises(KdmriError, match="center_fraction"):
        RandomLines(4, center_fraction=1.5)


def test_unknown_kind_names_known_kinds():
    with pytest.raises(KdmriError, match="poisson") as info:
        create_mask_func("poisson", 4)
    for name in ("random", "equispaced", "lowres"):
        assert name in str(info.value)


@pytest.mark.parametrize("kind, cls", [("random", RandomLines), ("equispaced", EquispacedLines),
                                       ("lowres", LowResBox)])
def test_factory_passes_its_settings_to_the_kind_named(kind, cls):
    """The factory's function is the named kind with the given acceleration and centre
    fraction: the same masks and parameters as the class built directly."""
    func = create_mask_func(kind, 5, 0.2)
    direct = cls(5, 0.2)
    assert type(func) is cls
    assert func.params() == direct.params()
    assert func.params()["kind"] == kind and func.params()["acceleration"] == 5.0
    for seed in (0, 3):
        np.testing.assert_array_equal(func((HEIGHT, 64), seed=seed), direct((HEIGHT, 64), seed=seed))
    if kind != "lowres":  # lowres has no centre band
        assert func.params()["center_fraction"] == 0.2
        assert np.isin(centre_band(64, 0.2), sampled_columns(func((HEIGHT, 64)))).all()
    default = create_mask_func(kind, 5)
    assert getattr(default, "center_fraction", None) == 0.08  # the documented default


def test_save_load_round_trip_with_sidecar(tmp_path):
    func = RandomLines(5, CENTER_FRACTION)
    mask = func((HEIGHT, 64), seed=2)
    path = tmp_path / "masks" / "acc5.npy"
    save_mask(mask, path, dict(func.params(), seed=2))
    assert path.is_file() and path.with_suffix(".json").is_file()
    loaded = load_mask(path, (HEIGHT, 64))
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, mask)
    params = mask_params(path)
    assert params == json.loads(path.with_suffix(".json").read_text())
    assert params["kind"] == "random" and params["acceleration"] == 5.0 and params["seed"] == 2
    assert params["center_fraction"] == CENTER_FRACTION
    assert params["shape"] == [HEIGHT, 64]
    assert params["sampled_fraction"] == pytest.approx(float(mask.mean()))
    # no temporary files left behind
    assert sorted(p.name for p in path.parent.iterdir()) == ["acc5.json", "acc5.npy"]


def test_mask_params_of_external_mask_is_empty(tmp_path):
    path = tmp_path / "ext.npy"
    np.save(path, np.ones((4, 4)))
    assert mask_params(path) == {}


def test_load_external_float64_mask(tmp_path):
    rng = np.random.default_rng(0)
    external = (rng.random((150, 150)) < 0.25).astype(np.float64)
    path = tmp_path / "mask_4x.npy"
    np.save(path, external)
    loaded = load_mask(path, (150, 150))
    assert loaded.dtype == np.float32 and loaded.shape == (150, 150)
    np.testing.assert_array_equal(loaded, external)
    assert load_mask(path).shape == (150, 150)  # no shape check requested
    assert effective_acceleration(loaded) == pytest.approx(external.size / external.sum())


def test_load_integer_and_bool_masks(tmp_path):
    for dtype in (np.int64, np.uint8, np.bool_):
        path = tmp_path / f"m_{np.dtype(dtype).name}.npy"
        np.save(path, np.eye(6, dtype=dtype))
        np.testing.assert_array_equal(load_mask(path), np.eye(6, dtype=np.float32))


@pytest.mark.parametrize(
    "array, shape, match",
    [
        (np.full((8, 8), 0.5), None, "only 0 and 1"),
        (np.array([[0, 2], [1, 1]], dtype=np.float64), None, "only 0 and 1"),
        (np.full((8, 8), np.nan), None, "only 0 and 1"),
        (np.ones((8, 8)), (8, 9), "does not match"),
        (np.ones((2, 8, 8)), None, "2-D"),
    ],
)
def test_bad_mask_file_raises_naming_file(tmp_path, array, shape, match):
    path = tmp_path / "bad_mask.npy"
    np.save(path, array)
    with pytest.raises(KdmriError, match=match) as info:
        load_mask(path, shape)
    assert str(path) in str(info.value)


def test_missing_or_unreadable_mask_file_raises(tmp_path):
    missing = tmp_path / "nope.npy"
    with pytest.raises(KdmriError, match="not found") as info:
        load_mask(missing)
    assert str(missing) in str(info.value)
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"this is not numpy")
    with pytest.raises(KdmriError) as info:
        load_mask(garbage)
    assert str(garbage) in str(info.value)


def test_effective_acceleration():
    mask = np.zeros((4, 8), dtype=np.float32)
    assert effective_acceleration(mask) == float("inf")
    mask[:, :2] = 1
    assert effective_acceleration(mask) == 4.0


@pytest.mark.parametrize("shape, factor", [((64, 64), 2), ((256, 256), 4), ((48, 40), 4)])
def test_lowres_input_keeps_exactly_the_central_band_of_kspace(shape, factor):
    """The super-resolution input IFFT(box * FFT(x)) has no energy outside the central
    H/k x W/k block of k-space (checked with numpy's FFT, independently of kdmri.mri)."""
    import torch

    from kdmri.mri import undersample, zero_filled

    rng = np.random.default_rng(0)
    image = rng.random(shape).astype(np.float32)
    mask = create_mask_func("lowres", factor)(shape, seed=0)
    lowres = zero_filled(undersample(torch.from_numpy(image), torch.from_numpy(mask))).numpy()
    spectrum = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(lowres.astype(np.complex128)),
                                           norm="ortho"))
    outside = np.abs(spectrum[mask == 0]) ** 2
    inside = np.abs(spectrum[mask == 1]) ** 2
    assert outside.sum() <= 1e-10 * inside.sum()
    rows, cols = np.nonzero(mask)
    assert rows.max() - rows.min() + 1 == round(shape[0] / factor)
    assert cols.max() - cols.min() + 1 == round(shape[1] / factor)

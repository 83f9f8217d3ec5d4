"""Tests for the embedded synthetic demo dataset (kdmri.data.demo)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from kdmri.data import demo
from kdmri.data.demo import CONTRASTS, ORIENTATIONS, demo_subject

FAST = {"size": 32, "voxel_mm": 4.0}


@pytest.mark.parametrize("contrast", CONTRASTS)
@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_shape_dtype_range(orientation: str, contrast: str) -> None:
    x = demo_subject(0, orientation=orientation, contrast=contrast, **FAST)
    assert x.ndim == 3 and x.shape[1:] == (32, 32) and x.shape[0] > 10
    assert x.dtype == np.float32
    assert np.isfinite(x).all()
    assert x.max() == 1.0 and x.min() >= 0.0
    # every kept slice contains brain
    assert ((x > 0.05).sum(axis=(1, 2)) > 0).all()


def test_size_and_voxel_arguments_respected() -> None:
    assert demo_subject(1, size=16, voxel_mm=4.0).shape[1:] == (16, 16)
    assert demo_subject(1, size=40, voxel_mm=4.0).shape[1:] == (40, 40)
    coarse = demo_subject(1, min_brain_fraction=0.0, **FAST)
    fine = demo_subject(1, size=32, voxel_mm=3.0, min_brain_fraction=0.0)
    assert fine.shape[0] > coarse.shape[0]


def test_deterministic() -> None:
    a = demo_subject(2, seed=5, **FAST)
    b = demo_subject(2, seed=5, **FAST)
    np.testing.assert_array_equal(a, b)


def test_different_index_or_seed_differs() -> None:
    a = demo_subject(0, min_brain_fraction=0.0, **FAST)
    b = demo_subject(1, min_brain_fraction=0.0, **FAST)
    c = demo_subject(0, seed=1, min_brain_fraction=0.0, **FAST)
    assert a.shape == b.shape == c.shape  # same grid when no slice is dropped
    assert np.abs(a - b).mean() > 1e-2
    assert np.abs(a - c).mean() > 1e-2


def test_subject_independent_of_call_order() -> None:
    forward = [demo_subject(i, **FAST) for i in range(4)]
    demo._templates.cache_clear()  # a cold cache must not matter either
    backward = [demo_subject(i, **FAST) for i in reversed(range(1, 4))][::-1]
    for a, b in zip(forward[1:], backward, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(demo_subject(3, **FAST), forward[3])


def test_orientation_slice_counts() -> None:
    # With no slice dropped the count is the volume's extent along the slicing axis:
    # brain (plus the fixed margin) is shortest left-right, longest anterior-posterior.
    n = {
        o: demo_subject(0, orientation=o, min_brain_fraction=0.0, **FAST).shape[0]
        for o in ORIENTATIONS
    }
    assert n["sagittal"] < n["axial"] < n["coronal"]
    for o in ORIENTATIONS:
        kept = [
            demo_subject(0, orientation=o, min_brain_fraction=f, **FAST).shape[0]
            for f in (0.15, 0.5)
        ]
        assert n[o] > kept[0] > kept[1] > 0


def _csf_to_wm_ratio(img: np.ndarray, t1: np.ndarray) -> float:
    """Mean intensity in CSF over WM, with tissues located on the T1 image of the same subject.

    Both contrasts of one (seed, index) share the warped anatomy, so with no slice dropped
    their pixels correspond. On T1 the darkest brain pixels are CSF and the brightest WM;
    eroding the brain mask removes the partial-volume rim at the brain's edge.
    """
    brain = ndimage.binary_erosion(t1 > 0.05, structure=np.ones((1, 3, 3)), iterations=2)
    lo, hi = np.quantile(t1[brain], [0.1, 0.75])
    csf, wm = brain & (t1 <= lo), brain & (t1 >= hi)
    return float(img[csf].mean() / img[wm].mean())


@pytest.mark.parametrize("index", [0, 1, 2])
def test_t2like_contrast(index: int) -> None:
    t1 = demo_subject(index, min_brain_fraction=0.0, **FAST)
    t2 = demo_subject(index, contrast="t2like", min_brain_fraction=0.0, **FAST)
    assert t1.shape == t2.shape
    brain = (t1 > 0.05) | (t2 > 0.05)
    assert np.abs(t1 - t2)[brain].mean() > 0.1
    assert (t1 > 0.05).mean() == pytest.approx((t2 > 0.05).mean(), abs=0.02)  # same anatomy
    r1, r2 = _csf_to_wm_ratio(t1, t1), _csf_to_wm_ratio(t2, t1)
    assert r1 < 0.8  # CSF dark on T1
    assert r2 > 1.2  # CSF bright on the T2-like contrast
    assert r2 > 2 * r1


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"orientation": "oblique"}, "orientation"),
        ({"contrast": "flair"}, "contrast"),
        ({"size": 7}, "size"),
        ({"size": 0}, "size"),
        ({"voxel_mm": 0.0}, "voxel_mm"),
        ({"voxel_mm": -2.0}, "voxel_mm"),
        ({"min_brain_fraction": 1.5}, "min_brain_fraction"),
        ({"index": -1}, "index"),
        ({"seed": -3}, "seed"),
    ],
)
def test_bad_arguments(kwargs: dict, name: str) -> None:
    args = {"index": 0, **kwargs}
    with pytest.raises(ValueError, match=name):
        demo_subject(args.pop("index"), **args)

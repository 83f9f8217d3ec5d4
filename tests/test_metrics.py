"""Tests for kdmri.metrics against scikit-image, numpy and scipy written out independently."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from kdmri import metrics
from kdmri.metrics import (
    METRICS,
    SLICE_METRICS,
    hfen,
    hfen_slices,
    nmse,
    nmse_slices,
    psnr,
    psnr_slices,
    slice_metrics,
    ssim,
    ssim_slices,
)
from tests.oracles import HFEN_SIGMA, np_hfen


def volumes(seed=0, shape=(3, 32, 32), noise=0.05):
    rng = np.random.default_rng(seed)
    gt = gaussian_filter(rng.random(shape), sigma=(0, 1.5, 1.5)) * 2.0
    pred = gt + noise * rng.standard_normal(shape)
    return gt.astype(np.float32), pred.astype(np.float32)


def test_identical_volumes_without_warnings():
    gt, _ = volumes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ssim(gt, gt) == pytest.approx(1.0)
        assert nmse(gt, gt) == 0.0
        assert hfen(gt, gt) == 0.0
        assert psnr(gt, gt) == math.inf
        assert np.all(psnr_slices(gt, gt) == math.inf)
        assert np.allclose(ssim_slices(gt, gt), 1.0)
        assert np.all(nmse_slices(gt, gt) == 0) and np.all(hfen_slices(gt, gt) == 0)
        assert slice_metrics(gt, gt)["psnr"].tolist() == [math.inf] * len(gt)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_psnr_matches_skimage(seed):
    gt, pred = volumes(seed)
    expected = peak_signal_noise_ratio(gt, pred, data_range=gt.max())
    assert psnr(gt, pred) == pytest.approx(expected, rel=1e-6)
    assert psnr(gt, pred, data_range=4.0) == pytest.approx(
        peak_signal_noise_ratio(gt, pred, data_range=4.0), rel=1e-6
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_ssim_matches_per_slice_skimage_mean(seed):
    gt, pred = volumes(seed)
    per_slice = [
        structural_similarity(g, p, data_range=gt.max()) for g, p in zip(gt, pred, strict=True)
    ]
    np.testing.assert_allclose(ssim_slices(gt, pred), per_slice, rtol=1e-6)
    assert ssim(gt, pred) == pytest.approx(float(np.mean(per_slice)), rel=1e-6)
    assert 0 < ssim(gt, pred) < 1


def test_nmse_matches_numpy():
    gt, pred = volumes(3)
    g, p = gt.astype(np.float64), pred.astype(np.float64)
    expected = np.linalg.norm(g - p) ** 2 / np.linalg.norm(g) ** 2
    assert nmse(gt, pred) == pytest.approx(expected, rel=1e-9)
    per_slice = [
        np.linalg.norm(a - b) ** 2 / np.linalg.norm(a) ** 2 for a, b in zip(g, p, strict=True)
    ]
    np.testing.assert_allclose(nmse_slices(gt, pred), per_slice, rtol=1e-9)


@pytest.mark.parametrize("seed", [0, 4])
def test_hfen_matches_scipy_log(seed):
    gt, pred = volumes(seed)
    g, p = gt.astype(np.float64), pred.astype(np.float64)
    assert hfen(gt, pred) == pytest.approx(np_hfen(g, p), rel=1e-6)
    per_slice = [np_hfen(g[i : i + 1], p[i : i + 1]) for i in range(len(g))]
    np.testing.assert_allclose(hfen_slices(gt, pred), per_slice, rtol=1e-6)


def test_hfen_is_blind_to_constant_offsets_but_not_to_edges():
    gt, _ = volumes(5)
    assert hfen(gt, gt + 0.5) < 1e-2  # LoG of a constant is (almost) zero, away from edges
    sharp = gt.copy()
    sharp[:, 10:12, :] += 1.0
    assert hfen(gt, sharp) > 0.1


def test_hfen_of_each_slice_independent_of_neighbours():
    gt, pred = volumes(6)
    alone = hfen_slices(gt[1:2], pred[1:2])[0]
    assert hfen_slices(gt, pred)[1] == pytest.approx(alone, rel=1e-9)
    shuffled = hfen_slices(gt[::-1].copy(), pred[::-1].copy())[::-1]
    np.testing.assert_allclose(shuffled, hfen_slices(gt, pred), rtol=1e-9)


def test_psnr_slices_use_volume_maximum():
    gt, pred = volumes(7)
    gt[0] *= 0.5  # slice maxima differ from the volume maximum
    expected = [
        peak_signal_noise_ratio(g, p, data_range=gt.max()) for g, p in zip(gt, pred, strict=True)
    ]
    np.testing.assert_allclose(psnr_slices(gt, pred), expected, rtol=1e-6)
    np.testing.assert_allclose(
        psnr_slices(gt, pred, data_range=3.0),
        [peak_signal_noise_ratio(g, p, data_range=3.0) for g, p in zip(gt, pred, strict=True)],
        rtol=1e-6,
    )


def test_slice_variants_equal_volume_versions_for_one_slice():
    gt, pred = volumes(8, shape=(1, 24, 24))
    for name, volume_metric in METRICS.items():
        per_slice = SLICE_METRICS[name](gt, pred)
        assert per_slice.shape == (1,)
        assert per_slice[0] == pytest.approx(volume_metric(gt, pred), rel=1e-9), name


def test_ssim_is_mean_of_slices_for_any_volume():
    gt, pred = volumes(9)
    assert ssim(gt, pred) == pytest.approx(float(ssim_slices(gt, pred).mean()), rel=1e-12)


def test_slice_metrics_dict():
    gt, pred = volumes(10)
    result = slice_metrics(gt, pred)
    assert sorted(result) == ["hfen", "nmse", "psnr", "ssim"]
    for name, values in result.items():
        assert values.shape == (len(gt),)
        np.testing.assert_allclose(values, SLICE_METRICS[name](gt, pred), rtol=1e-12)


def test_better_prediction_scores_better():
    gt, noisy = volumes(11, noise=0.2)
    _, clean = volumes(11, noise=0.02)
    assert psnr(gt, clean) > psnr(gt, noisy)
    assert ssim(gt, clean) > ssim(gt, noisy)
    assert nmse(gt, clean) < nmse(gt, noisy)
    assert hfen(gt, clean) < hfen(gt, noisy)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_shape_mismatch_raises(name):
    gt, pred = volumes(0)
    with pytest.raises(ValueError, match="differ in shape"):
        METRICS[name](gt, pred[:, :-1])
    with pytest.raises(ValueError, match="differ in shape"):
        SLICE_METRICS[name](gt, pred[:2])
    with pytest.raises(ValueError, match="slices, H, W"):
        METRICS[name](gt[0], pred[0])


def test_inputs_are_not_modified():
    gt, pred = volumes(12)
    gt_copy, pred_copy = gt.copy(), pred.copy()
    for function in [*METRICS.values(), *SLICE_METRICS.values()]:
        function(gt, pred)
    np.testing.assert_array_equal(gt, gt_copy)
    np.testing.assert_array_equal(pred, pred_copy)
    assert metrics.HFEN_SIGMA == HFEN_SIGMA

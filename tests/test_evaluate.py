"""The evaluate stage (kdmri.evaluate, ``kdmri evaluate``): one CSV row per test slice whose
PSNR, SSIM, NMSE and HFEN equal the formulas written out here (SSIM: scikit-image), with
each volume's target maximum as the data range, and whose volume-wise columns equal
fastMRI's evaluation of the whole volume computed here with scikit-image and NumPy (also
through ``kdmri tables`` to summary.csv); predictions of other slices are refused."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from kdmri.cli import main
from kdmri.data.store import write_store
from kdmri.errors import KdmriError
from kdmri.evaluate import evaluate
from tests.conftest import smooth_volume
from tests.oracles import np_hfen, np_psnr
from tests.reliability.helpers import assert_user_error, copy_store

METRIC_COLUMNS = ["volume", "slice", "psnr", "ssim", "nmse", "hfen", "volume_psnr",
                  "volume_ssim", "volume_nmse"]
#: Two volumes of different brightness, so that the data range of each matters.
NAMES, SLICES, SCALES = ["sub-a", "sub-b"], [3, 2], [1.0, 0.4]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A test store of two volumes and a prediction whose error differs per slice."""
    root = tmp_path_factory.mktemp("evaluate")
    rng = np.random.default_rng(5)
    target = np.concatenate([scale * smooth_volume(rng, n) for n, scale in zip(SLICES, SCALES,
                                                                               strict=True)])
    volume = np.repeat(np.arange(len(SLICES), dtype=np.int32), SLICES)
    slices = np.concatenate([np.arange(n, dtype=np.int32) for n in SLICES])
    inputs = root / "test.h5"
    write_store(inputs, {"target": target, "volume": volume, "slice": slices},
                attrs={"volume_names": NAMES})
    levels = np.array([0.01, 0.05, 0.02, 0.03, 0.005], np.float32)[:, None, None]
    output = (target + levels * rng.standard_normal(target.shape)).astype(np.float32)
    predictions = copy_store(inputs, root / "pred.h5", target=None, output=output)
    return SimpleNamespace(root=root, inputs=inputs, predictions=predictions, target=target,
                           output=output, volume=volume, slice=slices)


def expected_rows(case) -> pd.DataFrame:
    """The metrics of every slice from their formulas, data range = the volume's maximum."""
    rows = []
    for i, (gt, pred) in enumerate(zip(case.target.astype(np.float64),
                                       case.output.astype(np.float64), strict=True)):
        peak = case.target[case.volume == case.volume[i]].max()
        rows.append({
            "volume": NAMES[case.volume[i]], "slice": case.slice[i],
            "psnr": np_psnr(gt[None], pred[None], peak)[0],
            "ssim": structural_similarity(gt, pred, data_range=peak),
            "nmse": ((gt - pred) ** 2).sum() / (gt**2).sum(),
            "hfen": np_hfen(gt[None], pred[None]),
        })
    return pd.DataFrame(rows)


def assert_metrics_equal(frame: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert frame["volume"].tolist() == expected["volume"].tolist()
    assert frame["slice"].tolist() == expected["slice"].tolist()
    for name in ("psnr", "ssim", "nmse", "hfen"):
        np.testing.assert_allclose(frame[name], expected[name], rtol=1e-6, err_msg=name)


def test_one_row_per_slice_with_the_metrics_of_their_formulas(case):
    frame = evaluate(case.inputs, case.predictions)
    assert list(frame.columns) == METRIC_COLUMNS
    assert len(frame) == sum(SLICES)
    expected = expected_rows(case)
    assert_metrics_equal(frame, expected)
    # the data range is each volume's own maximum: against the maximum of both volumes
    # (sub-a's), sub-b's slices (0.4 of its brightness) would score 8 dB more
    dim = case.volume == 1
    against_all = np_psnr(case.target[dim], case.output[dim], case.target.max())
    assert (frame["psnr"][dim] + 7 < against_all).all()


def leaderboard_metrics(target: np.ndarray, output: np.ndarray) -> dict[str, float]:
    """fastMRI's evaluation of one volume, written out here: scikit-image's PSNR of the
    whole volume and the mean of its slices' SSIM, both with the volume's maximum as data
    range, and NMSE = ||gt - pred||^2 / ||gt||^2 in NumPy."""
    gt, pred = target.astype(np.float64), output.astype(np.float64)
    peak = gt.max()
    return {
        "psnr": peak_signal_noise_ratio(gt, pred, data_range=peak),
        "ssim": np.mean([structural_similarity(g, p, data_range=peak)
                         for g, p in zip(gt, pred, strict=True)]),
        "nmse": np.linalg.norm(gt - pred) ** 2 / np.linalg.norm(gt) ** 2,
    }


def test_volume_wise_columns_are_fastmris_metrics_of_the_whole_volume(case):
    frame = evaluate(case.inputs, case.predictions)
    for v, name in enumerate(NAMES):
        rows = frame[frame["volume"] == name]
        expected = leaderboard_metrics(case.target[case.volume == v], case.output[case.volume == v])
        for metric, value in expected.items():
            assert rows[f"volume_{metric}"].tolist() == pytest.approx([value] * len(rows),
                                                                      rel=1e-9), (name, metric)
        # the volume's PSNR is not the mean of its slices' PSNR (the error differs by slice)
        assert abs(rows["volume_psnr"].iloc[0] - rows["psnr"].mean()) > 0.1


def test_the_summary_averages_the_volume_wise_metrics_over_volumes_and_seeds(case, tmp_path):
    """Through the CLI as the workflow runs it: two seeds of one model, evaluated, then
    tabulated; summary.csv's volume-wise columns are the mean and population std over
    the 2 seeds x 2 volumes of fastMRI's figures, computed here from the arrays."""
    rng = np.random.default_rng(11)
    outputs = {0: case.output, 1: (case.target + 0.02 * rng.standard_normal(case.target.shape)
                                   ).astype(np.float32)}
    files = []
    for seed, output in outputs.items():
        predictions = copy_store(case.inputs, tmp_path / f"pred{seed}.h5", target=None,
                                 output=output)
        meta = {"task": "recon", "dataset": "tiny", "acceleration": 4, "model": "kd",
                "seed": seed, "params": 10, "latency_ms": 1.0}
        files.append(tmp_path / f"metrics{seed}.csv")
        assert main(["evaluate", "--inputs", str(case.inputs), "--predictions", str(predictions),
                     "--meta", json.dumps(meta), "--out", str(files[-1])]) == 0
    assert main(["tables", "--metrics", *map(str, files), "--out-dir", str(tmp_path / "t")]) == 0
    summary = pd.read_csv(tmp_path / "t" / "summary.csv")
    assert len(summary) == 1
    row = summary.iloc[0]
    per_volume = [leaderboard_metrics(case.target[case.volume == v], output[case.volume == v])
                  for output in outputs.values() for v in range(len(NAMES))]
    for metric in ("psnr", "ssim", "nmse"):
        values = np.array([entry[metric] for entry in per_volume])
        assert row[f"volume_{metric}_mean"] == pytest.approx(values.mean(), rel=1e-9), metric
        assert row[f"volume_{metric}_std"] == pytest.approx(values.std(), rel=1e-9), metric
    assert row["n_volumes"] == len(NAMES) and row["n_slices"] == sum(SLICES)
    # the slice-pooled columns stay what they were: the mean over every slice of both seeds
    pooled = pd.concat([pd.read_csv(f) for f in files])
    assert row["psnr_mean"] == pytest.approx(pooled["psnr"].mean(), rel=1e-12)
    assert abs(row["volume_psnr_mean"] - row["psnr_mean"]) > 0.1


def test_cli_writes_the_rows_with_the_meta_and_predict_info_columns(case, tmp_path):
    info = tmp_path / "predict.json"
    info.write_text(json.dumps({"model": "kd", "params": 1234, "flops": 5678, "latency_ms": 2.5,
                                "device": "cpu"}))
    out = tmp_path / "metrics" / "kd.csv"
    meta = {"task": "recon", "dataset": "tiny", "acceleration": 4, "model": "kd", "seed": 1}
    assert main(["evaluate", "--inputs", str(case.inputs), "--predictions",
                 str(case.predictions), "--meta", json.dumps(meta), "--predict-info", str(info),
                 "--out", str(out)]) == 0
    frame = pd.read_csv(out)
    assert list(frame.columns) == [*meta, "params", "flops", "latency_ms", *METRIC_COLUMNS]
    for key, value in {**meta, "params": 1234, "flops": 5678, "latency_ms": 2.5}.items():
        assert frame[key].tolist() == [value] * len(frame), key
    assert_metrics_equal(frame, expected_rows(case))
    assert sorted(p.name for p in out.parent.iterdir()) == ["kd.csv"]  # no temporary file


def mismatched(case, name: str, **changes):
    """The prediction store with some arrays replaced: predictions of other slices."""
    return copy_store(case.predictions, case.root / f"{name}.h5", **changes)


def test_predictions_of_other_slices_are_refused(case):
    n = sum(SLICES)
    cases = {
        "fewer_slices": (dict(output=case.output[:4], volume=case.volume[:4],
                              slice=case.slice[:4]), ["(4, 16, 16)", "(5, 16, 16)"]),
        "other_size": (dict(output=case.output[:, :, :12]), ["(5, 16, 12)", "(5, 16, 16)"]),
        "slices_reordered": (dict(output=case.output[[1, 0, 2, 3, 4]],
                                  slice=case.slice[[1, 0, 2, 3, 4]]),
                             ["'slice'", "row 0", "found 1, expected 0"]),
        "other_volumes": (dict(volume=np.zeros(n, np.int32)), ["'volume'", "row 3"]),
    }
    for name, (changes, words) in cases.items():
        path = mismatched(case, name, **changes)
        with pytest.raises(KdmriError) as info:
            evaluate(case.inputs, path)
        message = str(info.value)
        for word in [str(path), str(case.inputs), *words]:
            assert word in message, (name, word, message)


def test_predictions_of_other_volume_names_are_refused(case):
    path = case.root / "renamed.h5"
    write_store(path, {"output": case.output, "volume": case.volume, "slice": case.slice},
                attrs={"volume_names": ["sub-x", "sub-y"]})
    with pytest.raises(KdmriError, match=r"volumes \['sub-x', 'sub-y'\].*\['sub-a', 'sub-b'\]"):
        evaluate(case.inputs, path)


def test_cli_mismatch_is_one_error_line_and_no_csv(case, tmp_path, capsys):
    path = mismatched(case, "reordered_cli", slice=case.slice[[1, 0, 2, 3, 4]])
    out = tmp_path / "metrics.csv"
    code = main(["evaluate", "--inputs", str(case.inputs), "--predictions", str(path),
                 "--out", str(out)])
    assert_user_error(SimpleNamespace(returncode=code, stderr=capsys.readouterr().err),
                      path, "'slice'")
    assert not tmp_path.exists() or list(tmp_path.iterdir()) == []

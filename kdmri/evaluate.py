"""Per-slice metrics of one model's test predictions against the targets, with the
volume-wise (fastMRI's leaderboard) metrics of each slice's volume beside them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kdmri.data.store import read_store
from kdmri.errors import KdmriError
from kdmri.io import atomic_path
from kdmri.metrics import evaluation_metrics
from kdmri.stats import VOLUME_COLUMNS


def evaluate(inputs: str | Path, predictions: str | Path) -> pd.DataFrame:
    """One row per test slice: ``volume, slice, psnr, ssim, nmse, hfen, volume_psnr,
    volume_ssim, volume_nmse``.

    Metrics are computed per volume with the data range of that volume's target maximum
    (fastMRI's convention), then listed per slice; ``volume_*`` are the metrics of the
    slice's whole volume (:func:`kdmri.metrics.evaluation_metrics`: fastMRI's volume-wise
    PSNR, SSIM and NMSE), the same on every row of a volume. The predictions must be of
    the same slices in the same order (volume and slice indices, and volume names when they have
    them); otherwise a :class:`KdmriError` says where they differ.
    """
    truth = read_store(inputs, ["target", "volume", "slice"])
    pred = read_store(predictions, ["output", "volume", "slice"])
    if truth["target"].shape != pred["output"].shape:
        raise KdmriError(
            f"{predictions}: predictions {pred['output'].shape} do not match the test "
            f"targets {truth['target'].shape} of {inputs}"
        )
    names = truth["volume_names"]
    for key in ("volume", "slice"):
        differ = np.flatnonzero(truth[key] != pred[key])
        if differ.size:
            i = differ[0]
            raise KdmriError(
                f"{predictions}: predictions are not of the slices of {inputs}: key {key!r} "
                f"differs at row {i} (found {pred[key][i]}, expected {truth[key][i]})"
            )
    if len(pred["volume_names"]) and pred["volume_names"].tolist() != names.tolist():
        raise KdmriError(
            f"{predictions}: predictions of volumes {pred['volume_names'].tolist()}, the test "
            f"targets of {inputs} are of {names.tolist()}"
        )
    frames = []
    for v in np.unique(truth["volume"]):
        rows = truth["volume"] == v
        per_slice, per_volume = evaluation_metrics(truth["target"][rows], pred["output"][rows])
        frame = pd.DataFrame(per_slice)
        for column in VOLUME_COLUMNS:
            frame[column] = per_volume[column.removeprefix("volume_")]
        frame.insert(0, "slice", truth["slice"][rows])
        frame.insert(0, "volume", names[v] if len(names) > v else str(v))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def write_csv(frame: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path, suffix=".csv") as tmp:
        frame.to_csv(tmp, index=False)

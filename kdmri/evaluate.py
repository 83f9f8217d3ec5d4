"""Per-slice metrics of one model's test predictions against the targets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kdmri.data.store import read_store
from kdmri.errors import KdmriError
from kdmri.io import atomic_path
from kdmri.metrics import slice_metrics


def evaluate(inputs: str | Path, predictions: str | Path) -> pd.DataFrame:
    """One row per test slice: ``volume, slice, psnr, ssim, nmse, hfen``.

    Metrics are computed per volume with the data range of that volume's target maximum
    (fastMRI's convention), then listed per slice.
    """
    truth = read_store(inputs, ["target", "volume", "slice"])
    pred = read_store(predictions, ["output", "volume", "slice"])
    if truth["target"].shape != pred["output"].shape or not np.array_equal(
        truth["volume"], pred["volume"]
    ):
        raise KdmriError(
            f"{predictions}: predictions {pred['output'].shape} do not match the test "
            f"targets {truth['target'].shape} of {inputs}"
        )
    names = truth["volume_names"]
    frames = []
    for v in np.unique(truth["volume"]):
        rows = truth["volume"] == v
        values = slice_metrics(truth["target"][rows], pred["output"][rows])
        frame = pd.DataFrame(values)
        frame.insert(0, "slice", truth["slice"][rows])
        frame.insert(0, "volume", names[v] if len(names) > v else str(v))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def write_csv(frame: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path, suffix=".csv") as tmp:
        frame.to_csv(tmp, index=False)

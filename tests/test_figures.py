"""Tests for kdmri.figures: panel, curves and mask figures written as image files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kdmri import figures
from kdmri.cli import main
from kdmri.data.store import write_store
from kdmri.errors import KdmriError
from kdmri.io import parse_named
from kdmri.masks import create_mask_func, save_mask

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SHAPE = (16, 16)


def assert_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000


@pytest.fixture
def stores(tmp_path):
    """A 2-volume test store and predictions whose error grows per model and per slice."""
    rng = np.random.default_rng(0)
    n = 6
    target = rng.uniform(0.2, 1.0, (n, *SHAPE)).astype(np.float32)
    volume = np.array([0, 0, 0, 1, 1, 1], dtype=np.int32)
    slices = np.array([0, 1, 2, 0, 1, 2], dtype=np.int32)
    attrs = {"volume_names": ["a", "b"]}
    write_store(tmp_path / "test.h5", {"target": target, "volume": volume, "slice": slices},
                attrs=attrs)
    noise = rng.normal(0, 1, (n, *SHAPE)).astype(np.float32)
    # kd's noise level differs per slice: slice i has level (1 + order[i]) / 100
    order = np.array([4, 0, 5, 2, 1, 3])
    levels = {"zf": 0.3, "teacher": 0.02, "student": 0.08}
    preds = {}
    for name, level in levels.items():
        out = target + level * noise
        write_store(tmp_path / f"{name}.h5", {"output": out, "volume": volume, "slice": slices},
                    attrs=attrs)
        preds[name] = tmp_path / f"{name}.h5"
    kd = target + ((1 + order) / 100)[:, None, None].astype(np.float32) * noise
    write_store(tmp_path / "kd.h5", {"output": kd, "volume": volume, "slice": slices},
                attrs=attrs)
    preds["kd"] = tmp_path / "kd.h5"
    return tmp_path / "test.h5", preds, order


def test_median_slice_is_deterministic(stores) -> None:
    inputs, preds, order = stores
    from kdmri.data.store import read_store

    truth = read_store(inputs, ["target", "volume"])
    kd = read_store(preds["kd"], ["output"])["output"]
    index = figures.median_slice(truth["target"], kd, truth["volume"])
    # PSNR falls as the noise level rises; the lower median of six is the 3rd-lowest
    # PSNR, i.e. the 3rd-highest noise level: order value 3
    assert order[index] == 3
    assert index == figures.median_slice(truth["target"], kd, truth["volume"])


def test_panel_png(stores, tmp_path) -> None:
    inputs, preds, _ = stores
    out = tmp_path / "fig" / "panel.png"
    info = figures.panel_figure(inputs, preds, out, title="demo 4x")
    assert_png(out)
    assert info["chosen_by"] == "kd"
    assert set(info["scores"]) == {"zf", "teacher", "student", "kd"}
    psnr = {k: v[0] for k, v in info["scores"].items()}
    assert psnr["teacher"] > psnr["student"] > psnr["zf"]


def test_panel_rejects_mismatched_store(stores, tmp_path) -> None:
    inputs, preds, _ = stores
    short = tmp_path / "short.h5"
    write_store(short, {"output": np.zeros((2, *SHAPE), np.float32),
                        "volume": np.zeros(2, np.int32), "slice": np.arange(2, dtype=np.int32)})
    with pytest.raises(KdmriError, match="short.h5"):
        figures.panel_figure(inputs, {**preds, "bad": short}, tmp_path / "x.png")


def test_parse_named(tmp_path) -> None:
    path = tmp_path / "f.csv"
    path.write_text("x\n")
    assert parse_named([f"a={path}"], "--pred") == {"a": path}
    with pytest.raises(KdmriError, match="NAME=PATH"):
        parse_named(["nopath"], "--pred")
    with pytest.raises(KdmriError, match="twice"):
        parse_named([f"a={path}", f"a={path}"], "--pred")
    with pytest.raises(KdmriError, match="not found"):
        parse_named([f"a={tmp_path / 'missing'}"], "--pred")


def history(path, epochs: int, offset: float) -> None:
    rows = []
    for epoch in range(epochs):
        row = {"epoch": epoch, "lr": 1e-3, "train_loss": 1.0 / (epoch + 1) + offset,
               "seconds": 1.0, "samples_per_s": 100.0}
        if epoch % 2 == 0:  # validation only on some epochs
            row.update(val_loss=0.5 / (epoch + 1), val_psnr=25 + epoch + offset)
        rows.append(row)
    pd.DataFrame(rows).to_csv(path, index=False)


def test_cli_all_kinds(stores, tmp_path) -> None:
    inputs, preds, _ = stores
    panel = tmp_path / "panel.png"
    assert main(["figures", "--kind", "panel", "--inputs", str(inputs), "--title", "demo",
                 "--out", str(panel), "--pred", *(f"{k}={v}" for k, v in preds.items())]) == 0
    assert_png(panel)

    history(tmp_path / "student.csv", 6, 0.0)
    history(tmp_path / "kd.csv", 4, 0.1)
    curves = tmp_path / "curves.png"
    assert main(["figures", "--kind", "curves", "--title", "training", "--out", str(curves),
                 "--history", f"student={tmp_path / 'student.csv'}",
                 f"kd={tmp_path / 'kd.csv'}"]) == 0
    assert_png(curves)

    mask_path = tmp_path / "mask.npy"
    save_mask(create_mask_func("random", 4)(SHAPE, seed=0), mask_path, {"kind": "random"})
    mask_png = tmp_path / "mask.png"
    assert main(["figures", "--kind", "mask", "--mask", str(mask_path), "--title", "4x",
                 "--out", str(mask_png)]) == 0
    assert_png(mask_png)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files


def test_cli_errors(tmp_path, capsys) -> None:
    assert main(["figures", "--kind", "mask", "--out", str(tmp_path / "m.png")]) == 2
    assert "--mask is required" in capsys.readouterr().err
    bad = tmp_path / "h.csv"
    pd.DataFrame({"epoch": [0], "lr": [1.0]}).to_csv(bad, index=False)
    assert main(["figures", "--kind", "curves", "--history", f"s={bad}",
                 "--out", str(tmp_path / "c.png")]) == 2
    assert "train_loss" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()

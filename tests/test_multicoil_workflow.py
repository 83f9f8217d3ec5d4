"""A whole multi-coil study through the DAG (config/test.yaml with the demo's simulated
coils and tiny E2E-VarNet teacher and student): every model is trained, predicted and
evaluated, and the zero-filled row is the RSS of the zero-filled coil images against the
RSS target, computed here from the input store."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from kdmri.data.store import read_store
from tests.oracles import np_ifft2c
from tests.workflow_utils import ROOT, snakemake

pytestmark = pytest.mark.slow

COILS = 4
TEACHER = {"family": "varnet", "cascades": 2, "chans": 4, "pools": 2, "sens_chans": 2,
           "sens_pools": 1}
STUDENT = {**TEACHER, "chans": 2}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("multicoil_study")
    config = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    config["datasets"]["demo"].update(simulated_coils={"count": COILS, "snr_db": 30},
                                      max_slices=12)
    del config["tasks"]["sr"]  # super-resolution takes no multi-coil data
    # the pairs of a task are at one size: the U-Nets' bottlenecks (8 x 8 at 32 x 32)
    config["tasks"]["recon"].update(teacher=TEACHER, student=STUDENT, pairs=[[3, 3]])
    config["models"] = ["zf", "teacher", "student", "kd"]
    path = workdir / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    snakemake(workdir, path)
    return workdir


def test_every_model_of_a_multicoil_study_is_evaluated(study):
    summary = pd.read_csv(study / "results" / "test" / "tables" / "summary.csv")
    rows = summary.set_index("model")
    assert sorted(rows.index) == ["kd", "student", "teacher", "zf"]
    assert rows.psnr_mean.notna().all() and (rows.n_slices > 0).all()
    assert rows.loc["zf", "params"] == rows.loc["zf", "flops"] == 0
    assert rows.loc["teacher", "params"] > rows.loc["student", "params"] == rows.loc["kd", "params"]
    assert rows.loc["teacher", "flops"] > rows.loc["kd", "flops"] > 0
    assert (rows.loc[["teacher", "student", "kd"], "latency_ms"] > 0).all()


def test_zero_filled_psnr_is_that_of_the_rss_zero_filled_images(study):
    (inputs,) = (study / "results" / "test" / "recon").glob("demo/acc*/inputs/seed0/test.h5")
    store = read_store(inputs, ["kspace", "zf", "target", "volume"])
    assert store["kspace"].shape[1] == COILS and store["target"].dtype == np.float32
    zf = np.sqrt((np.abs(np_ifft2c(store["kspace"].astype(np.complex128))) ** 2).sum(1))
    np.testing.assert_allclose(store["zf"], zf, rtol=1e-5, atol=1e-6)
    target = store["target"].astype(np.float64)
    psnr = []  # per slice, with the data range of its volume's target maximum
    for volume in np.unique(store["volume"]):
        rows = store["volume"] == volume
        mse = ((zf[rows] - target[rows]) ** 2).mean(axis=(1, 2))
        psnr += list(10 * np.log10(target[rows].max() ** 2 / mse))
    summary = pd.read_csv(study / "results" / "test" / "tables" / "summary.csv")
    assert summary.set_index("model").loc["zf", "psnr_mean"] == pytest.approx(np.mean(psnr),
                                                                              rel=1e-5)

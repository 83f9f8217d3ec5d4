"""A whole study through the DAG with U-Net teachers and students (config/test.yaml with
the networks changed): the tables come out with the U-Net rows, sizes and FLOPs."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from tests.test_flops import unet_flops
from tests.test_unet import unet_params
from tests.workflow_utils import ROOT, planned_jobs, snakemake

pytestmark = pytest.mark.slow

TEACHER = {"family": "unet", "chans": 8, "num_pool_layers": 2}
STUDENT = {"family": "unet", "chans": 4, "num_pool_layers": 2}
SIZE = 32  # the demo size of config/test.yaml


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("unet_study")
    config = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    # the pairs of a task are at one size (the teacher cache stacks their maps): blocks 1
    # and 5 at full size, block 3 (the bottleneck) at a quarter
    config["tasks"]["recon"].update(teacher=TEACHER, student=STUDENT, pairs=[[1, 1], [5, 5]])
    config["tasks"]["sr"].update(teacher={**TEACHER, "dc": False},
                                 student={**STUDENT, "dc": False}, pairs=[[3, 3]])
    path = workdir / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    snakemake(workdir, path)
    return workdir, path


def test_the_tables_hold_the_unet_rows(study):
    workdir, path = study
    tables = workdir / "results" / "test" / "tables"
    summary = pd.read_csv(tables / "summary.csv")
    for task in ("recon", "sr"):
        rows = summary[summary.task == task].set_index("model")
        assert sorted(rows.index) == ["kd", "student", "teacher", "zf"]
        assert rows.loc["teacher", "params"] == unet_params(8, 2) == 29_137
        assert rows.loc["student", "params"] == rows.loc["kd", "params"] == unet_params(4, 2)
        assert rows.loc["teacher", "flops"] == unet_flops(8, 2, SIZE, SIZE)
        assert rows.loc["kd", "flops"] == unet_flops(4, 2, SIZE, SIZE)
        assert rows.loc["zf", "params"] == rows.loc["zf", "flops"] == 0
        assert rows.psnr_mean.notna().all() and (rows.n_slices > 0).all()
    gain = pd.read_csv(tables / "kd_gain.csv")
    assert sorted(gain.task) == ["recon", "sr"]
    assert planned_jobs(workdir, path) == []

"""examples/user_network end to end: networks of one's own (family python) through the DAG.

The example folder is copied into a scratch working folder and run there, as its README
says, so its ``mynets`` module imports from the working folder.
"""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest
import yaml

from kdmri.config import load_config
from tests.workflow_utils import ROOT, copy_tree, snakemake

pytestmark = pytest.mark.slow

EXAMPLE = ROOT / "examples" / "user_network"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("user_network")
    copy_tree(EXAMPLE, workdir)
    snakemake(workdir, workdir / "study.yaml")
    return workdir


def test_the_example_config_uses_python_networks_and_pairs_by_path():
    config = load_config(EXAMPLE / "study.yaml")
    for task in ("recon", "sr"):
        settings = config["tasks"][task]
        assert settings["teacher"]["family"] == settings["student"]["family"] == "python"
        assert settings["teacher"]["kwargs"] != settings["student"]["kwargs"]
        assert all(isinstance(layer, str) for pair in settings["pairs"] for layer in pair)


def test_tables_have_every_row(study):
    config = yaml.safe_load((study / "study.yaml").read_text())
    tables = study / config["results"] / "tables"
    summary = pd.read_csv(tables / "summary.csv")
    rows = set(zip(summary["task"], summary["model"], strict=True))
    assert rows == {(task, model) for task in ("recon", "sr") for model in config["models"]}
    assert summary["psnr_mean"].notna().all()
    params = summary.set_index(["task", "model"])["params"]
    assert params["recon", "teacher"] > params["recon", "student"] == params["recon", "kd"] > 0
    assert params["sr", "teacher"] > params["sr", "student"] == params["sr", "kd"] > 0
    kd_gain = pd.read_csv(tables / "kd_gain.csv")
    assert sorted(kd_gain["task"]) == ["recon", "sr"]


def test_provenance_records_target_and_source_hash(study):
    config = yaml.safe_load((study / "study.yaml").read_text())
    record = json.loads((study / config["results"] / "tables" / "provenance.json").read_text())
    source = study / "mynets.py"
    sha256 = hashlib.sha256(source.read_bytes()).hexdigest()
    targets = {"recon": "mynets:TinyUnrolled", "sr": "mynets:TinySR"}
    assert len(record["models"]) == 2 * 3  # teacher, student, kd per task
    for name, info in record["models"].items():
        assert info["source"] == {"target": targets[name.split("/")[0]],
                                  "file": str(source), "sha256": sha256}, name

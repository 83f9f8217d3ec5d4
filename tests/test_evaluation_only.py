"""Datasets a task is only evaluated on (``tasks.<task>.evaluate_on``): checked with the
config, and through the real workflow every trained model of the task runs on their test
split, with a mask made at their size, in a cell of the tables of its own with KD's gain."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from kdmri.config import validate
from kdmri.errors import KdmriError
from kdmri.provenance import recorded_config
from tests.workflow_utils import snakemake, write_config

DATASETS = {"demo": {"format": "demo"}, "t2": {"format": "demo", "contrast": "t2like"}}


@pytest.mark.parametrize("evaluate_on, message", [
    (["t3"], r"'tasks.recon.evaluate_on.0': unknown dataset 't3'"),
    (["demo"], r"'tasks.recon.evaluate_on.0': 'demo' is a dataset the task trains on"),
])
def test_evaluation_only_datasets_are_checked(evaluate_on, message):
    with pytest.raises(KdmriError, match=message):
        validate({"datasets": DATASETS,
                  "tasks": {"recon": {"datasets": ["demo"], "evaluate_on": evaluate_on}}})
    with pytest.raises(KdmriError, match=r"cell 't2_from_demo' is also the name of a dataset"):
        validate({"datasets": {**DATASETS, "t2_from_demo": {"format": "demo"}},
                  "tasks": {"recon": {"datasets": ["demo"], "evaluate_on": ["t2"]}}})


def test_the_record_of_a_study_without_the_new_keys_is_the_one_it_had():
    config = validate({"datasets": DATASETS, "tasks": {"recon": {"datasets": ["demo"]}}})
    recorded = recorded_config(config)
    assert "sweeps" not in recorded and "evaluate_on" not in recorded["tasks"]["recon"]
    assert config["tasks"]["recon"]["evaluate_on"] == [] and config["sweeps"] == {}
    config["tasks"]["recon"]["evaluate_on"] = ["t2"]
    assert recorded_config(config)["tasks"]["recon"]["evaluate_on"] == ["t2"]


@pytest.mark.slow
def test_an_evaluation_only_dataset_through_the_workflow(tmp_path):
    config = write_config(tmp_path / "study.yaml", tasks__sr__datasets=[],
                          datasets__t2={"format": "demo", "contrast": "t2like", "size": 24,
                                        "voxel_mm": 4.0, "subjects": {"train": 1, "val": 1,
                                                                      "test": 1},
                                        "max_slices": 12},
                          tasks__recon__evaluate_on=["t2"])
    snakemake(tmp_path, config)
    results = tmp_path / "results/test"
    cell = results / "recon/t2_from_demo/acc4"
    # the mask at the evaluated dataset's size, the models of the cell they were trained in
    assert np.load(cell / "inputs/seed0/mask.npy").shape[-1] == 24
    info = json.loads((cell / "kd/seed0/predict.json").read_text())
    assert "recon/demo/acc4/kd/seed0/model.pt" in json.dumps(info)
    assert not (cell / "kd/seed0/model.pt").exists()
    summary = pd.read_csv(results / "tables/summary.csv")
    block = summary[summary["dataset"] == "t2_from_demo"]
    assert sorted(block["model"]) == ["kd", "student", "teacher", "zf"]
    metrics = pd.read_csv(cell / "teacher/seed0/metrics.csv")
    assert block.loc[block["model"] == "teacher", "psnr_mean"].item() == pytest.approx(
        metrics["psnr"].mean())
    gain = pd.read_csv(results / "tables/kd_gain.csv")
    assert set(gain["dataset"]) == {"demo", "t2_from_demo"}
    row = gain[gain["dataset"] == "t2_from_demo"].iloc[0]
    psnr = block.set_index("model")["psnr_mean"]
    assert row["kd_minus_student_psnr"] == pytest.approx(psnr["kd"] - psnr["student"])
    assert "t2_from_demo" in (results / "tables/summary.md").read_text()
    assert (results / "figures/recon/t2_from_demo/acc4/seed0/panel.png").is_file()

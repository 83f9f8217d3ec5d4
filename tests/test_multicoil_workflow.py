"""Whole multi-coil studies through the DAG (config/test.yaml with the demo's simulated
coils): tiny E2E-VarNet teacher and student, and tiny DC-CNN teacher and student on the
SENSE coil-combined image (the dataset's ESPIRiT maps); every model is trained,
predicted and evaluated, the KD student from the teacher cache of magnitude outputs and
attention maps, and the zero-filled row is the RSS of the zero-filled coil images against
the RSS target, computed here from the input store."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from kdmri.data.store import read_store
from tests.oracles import np_ifft2c
from tests.workflow_utils import ROOT, snakemake

pytestmark = pytest.mark.slow

COILS = 4
TEACHER = {"family": "varnet", "cascades": 2, "chans": 4, "pools": 2, "sens_chans": 2,
           "sens_pools": 1}
STUDENT = {**TEACHER, "chans": 2}
#: DC-CNN on the SENSE coil-combined image: complex, with the dataset's ESPIRiT maps
DCCNN_TEACHER = {"family": "dccnn", "cascades": 2, "convs": 4, "channels": 6, "complex": True}
DCCNN_STUDENT = {**DCCNN_TEACHER, "convs": 3, "channels": 3}


def run_study(workdir, teacher: dict, student: dict, pairs: list, **dataset):
    """config/test.yaml's recon task on the demo with simulated coils (and ``dataset``'s
    keys), the given networks and pairs, models zf, teacher, student and kd, run by
    Snakemake in ``workdir``."""
    config = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    config["datasets"]["demo"].update(simulated_coils={"count": COILS, "snr_db": 30},
                                      max_slices=12, **dataset)
    del config["tasks"]["sr"]  # super-resolution takes no multi-coil data
    config["tasks"]["recon"].update(teacher=teacher, student=student, pairs=pairs)
    config["models"] = ["zf", "teacher", "student", "kd"]
    path = workdir / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    snakemake(workdir, path)
    return workdir


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    # the pairs of a task are at one size: the U-Nets' bottlenecks (8 x 8 at 32 x 32)
    return run_study(tmp_path_factory.mktemp("multicoil_study"), TEACHER, STUDENT, [[3, 3]])


@pytest.fixture(scope="module")
def dccnn_study(tmp_path_factory):
    return run_study(tmp_path_factory.mktemp("multicoil_dccnn_study"), DCCNN_TEACHER,
                     DCCNN_STUDENT, [[3, 2]], sensitivity_maps={"kind": "espirit"})


@pytest.mark.parametrize("name", ["study", "dccnn_study"])
def test_every_model_of_a_multicoil_study_is_evaluated(name, request):
    study = request.getfixturevalue(name)
    summary = pd.read_csv(study / "results" / "test" / "tables" / "summary.csv")
    rows = summary.set_index("model")
    assert sorted(rows.index) == ["kd", "student", "teacher", "zf"]
    assert rows.psnr_mean.notna().all() and (rows.n_slices > 0).all()
    assert rows.loc["zf", "params"] == rows.loc["zf", "flops"] == 0
    assert rows.loc["teacher", "params"] > rows.loc["student", "params"] == rows.loc["kd", "params"]
    assert rows.loc["teacher", "flops"] > rows.loc["kd", "flops"] > 0
    assert (rows.loc[["teacher", "student", "kd"], "latency_ms"] > 0).all()
    assert np.isfinite(rows.psnr_mean).all()


def test_a_multicoil_dccnn_is_distilled_from_magnitude_outputs(dccnn_study):
    """The DC-CNN teacher's cache holds float32 magnitude outputs (its predictions, the
    RSS estimate) and one attention map per cascade; the predictions of every model are
    float32 images of the RSS target's shape."""
    recon = dccnn_study / "results" / "test" / "recon"
    (inputs,) = recon.glob("demo/acc*/inputs/seed0")
    target = read_store(inputs / "train.h5", ["target", "maps"])["target"]
    (cache,) = recon.glob("demo/acc*/teacher/seed0/cache/train.h5")
    cached = read_store(cache, ["output", "attention"])
    assert cached["output"].dtype == np.float32 and cached["output"].shape == target.shape
    assert cached["attention"].shape[:2] == (len(target), DCCNN_TEACHER["cascades"])
    target = read_store(inputs / "test.h5", ["target"])["target"]
    for model in ("teacher", "student", "kd"):  # kdmri apply and export refuse them
        (path,) = recon.glob(f"demo/acc*/{model}/seed0/model.pt")
        assert torch.load(path, weights_only=False)["coils"] == COILS
    predictions = sorted(recon.glob("demo/acc*/**/test_pred.h5"))
    assert len(predictions) == 4  # zf, teacher, student, kd
    for path in predictions:
        output = read_store(path, ["output"])["output"]
        assert output.dtype == np.float32 and output.shape == target.shape
        assert np.isfinite(output).all()


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


@pytest.fixture(scope="module")
def fastmri_study(tmp_path_factory):
    """A study on fastMRI-layout multi-coil files (k-space of 4 coils at 64 x 40, cropped
    to 32 x 32 in image space): the U-Net by RSS (a magnitude network on a dataset read
    from k-space), its models also tested on the demo seen by 6 simulated coils."""
    from tests.test_multicoil import make_multicoil_file

    workdir = tmp_path_factory.mktemp("multicoil_fastmri_study")
    for i in range(4):
        make_multicoil_file(workdir / "knee" / f"file{i}.h5", slices=3, seed=10 * i,
                            full=(64, 40))
    config = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    config["datasets"]["demo"].update(simulated_coils={"count": 6, "snr_db": 30}, max_slices=6)
    config["datasets"]["knee"] = {"format": "fastmri", "path": str(workdir / "knee"),
                                  "source": "kspace", "size": 32}
    del config["tasks"]["sr"]
    unet = {"family": "unet", "dc": False, "chans": 4, "num_pool_layers": 2}
    config["tasks"]["recon"].update(datasets=["knee"], evaluate_on=["demo"], teacher=unet,
                                    student={**unet, "chans": 2}, pairs=[[1, 1]])
    config["models"] = ["zf", "teacher", "student", "kd"]
    path = workdir / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    snakemake(workdir, path)
    return workdir


def test_a_unet_by_rss_on_fastmri_multicoil_files_is_tested_on_other_coils(fastmri_study):
    results = fastmri_study / "results" / "test"
    summary = pd.read_csv(results / "tables" / "summary.csv")
    assert sorted(set(summary["dataset"])) == ["demo_from_knee", "knee"]
    for _, block in summary.groupby("dataset"):
        assert sorted(block["model"]) == ["kd", "student", "teacher", "zf"]
        assert np.isfinite(block["psnr_mean"]).all() and (block["n_slices"] > 0).all()
    (train,) = results.glob("recon/knee/acc*/inputs/seed0/train.h5")
    assert read_store(train, ["kspace"])["kspace"].shape[1:] == (4, 32, 32)
    (other,) = results.glob("recon/demo_from_knee/acc*/inputs/seed0/test.h5")
    store = read_store(other, ["kspace", "zf"])
    assert store["kspace"].shape[1] == 6  # the unseen coil array
    zf = np.sqrt((np.abs(np_ifft2c(store["kspace"].astype(np.complex128))) ** 2).sum(1))
    np.testing.assert_allclose(store["zf"], zf, rtol=1e-5, atol=1e-6)

"""The real Snakemake workflow on tiny files of every source format: the whole DAG on
fastMRI, NIfTI, KD-MRI HDF5 and demo data, and a dry run of config/paper.yaml."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from kdmri.config import load_config
from kdmri.methods import models_needed
from tests.test_readers import make_fastmri, make_kdmri_h5, make_nifti
from tests.workflow_utils import ROOT, planned_jobs, snakemake

pytestmark = pytest.mark.slow


def tiny_sources(root: Path) -> dict[str, Path]:
    """A few 16-20 px volumes of each file format, 2-3 slices each."""
    rng = np.random.default_rng(0)
    for i in range(3):
        key = "reconstruction_esc" if i % 2 else "reconstruction_rss"
        make_fastmri(root / "knee" / f"file{i}.h5", rng, slices=2, shape=(20, 20), key=key)
    for i in range(2):
        make_nifti(root / "brain" / f"sub{i}" / "T1.nii.gz", rng, (16, 16, 3))
    make_nifti(root / "brain" / "sub2" / "T1.nii.gz", rng, (16, 16, 3, 4))  # 4-D: frame 0
    for folder, n in (("train", 3), ("validation", 1)):
        for i in range(n):
            make_kdmri_h5(root / "legacy" / folder / "acc_4x" / f"{folder}{i}.h5", rng, (16, 16, 2))
    return {name: root / name for name in ("knee", "brain", "legacy")}


def formats_config(path: Path, sources: dict[str, Path]) -> Path:
    config = {
        "results": "results/formats",
        "device": "cpu",
        "seeds": [0],
        # zf and student take every format through training, prediction, evaluation,
        # tables and figures; the teacher and KD stages (format-independent) are run on the
        # demo by tests/test_workflow.py. Fewer jobs keep this run short on 2 cores.
        "models": ["zf", "student"],
        "datasets": {
            "demo": {"format": "demo", "size": 16, "voxel_mm": 6.0, "max_slices": 4,
                     "subjects": {"train": 1, "val": 1, "test": 1}},
            "knee": {"format": "fastmri", "path": str(sources["knee"]), "size": 16},
            "brain": {"format": "nifti", "path": str(sources["brain"]), "glob": "*/T1.nii.gz",
                      "frames": [0], "normalization": {"kind": "percentile", "percentile": 99}},
            "legacy": {"format": "kdmri_h5", "path": str(sources["legacy"])},
        },
        "tasks": {
            "recon": {"datasets": ["demo", "knee", "legacy"], "accelerations": [4]},
            "sr": {"datasets": ["brain"], "accelerations": [2]},
        },
        "train": {"epochs": 1, "batch_size": 4},
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Run the whole DAG once on tiny files of all four formats."""
    workdir = tmp_path_factory.mktemp("formats")
    sources = tiny_sources(workdir / "sources")
    config = formats_config(workdir / "formats.yaml", sources)
    snakemake(workdir, config)
    return workdir, config, sources


def test_every_format_reaches_the_tables(study):
    workdir, _, _ = study
    results = workdir / "results" / "formats"
    summary = pd.read_csv(results / "tables" / "summary.csv")
    cells = {(t, d) for t, d in zip(summary.task, summary.dataset, strict=True)}
    assert cells == {("recon", "demo"), ("recon", "knee"), ("recon", "legacy"), ("sr", "brain")}
    assert (summary.n_slices > 0).all() and summary.psnr_mean.notna().all()
    for name, fmt in (("demo", "demo"), ("knee", "fastmri"), ("brain", "nifti"),
                      ("legacy", "kdmri_h5")):
        info = json.loads((results / "data" / name / "info.json").read_text())
        assert info["format"] == fmt
        volumes = [set(info["splits"][s]["volumes"]) for s in ("train", "val", "test")]
        assert all(volumes) and not (volumes[0] & volumes[1] or volumes[0] & volumes[2]
                                     or volumes[1] & volumes[2])
    legacy = json.loads((results / "data" / "legacy" / "info.json").read_text())
    assert legacy["splits"]["test"]["volumes"] == ["validation0"]


def test_a_changed_source_file_reruns_only_its_preparation(study):
    workdir, config, sources = study
    assert planned_jobs(workdir, config) == []
    changed = sources["brain"] / "sub1" / "T1.nii.gz"
    make_nifti(changed, np.random.default_rng(99), (16, 16, 3))  # new content, newer file
    later = changed.stat().st_mtime + 60
    os.utime(changed, (later, later))
    jobs = planned_jobs(workdir, config)
    assert [w for rule, w in jobs if rule == "prepare"] == [{"dataset": "brain"}]
    assert {w.get("dataset") for _, w in jobs} <= {"brain", None}


# ------------------------------------------------------------------- paper.yaml
def fake_paper_data(root: Path) -> dict[str, dict]:
    """Tiny files laid out as each of the paper's datasets, and the paths to them."""
    rng = np.random.default_rng(1)
    acdc = root / "ACDC" / "database"
    lines = []
    for folder, ids in (("training", range(1, 4)), ("testing", range(101, 103))):
        for i in ids:
            name = f"patient{i:03d}"
            make_nifti(acdc / folder / name / f"{name}_4d.nii.gz", rng, (12, 12, 2, 3))
            make_nifti(acdc / folder / name / f"{name}_frame01.nii.gz", rng, (12, 12, 2))
            lines.append(f"{name}_4d.nii.gz 0 2")
    (root / "ed_es.txt").write_text("\n".join(lines) + "\n")
    for i in range(3):
        make_nifti(root / "MRBrainS13" / "TrainingData" / str(i + 1) / "T1.nii", rng, (12, 12, 2))
    for folder, n in (("singlecoil_train", 2), ("singlecoil_val", 1)):
        for i in range(n):
            make_fastmri(root / "knee" / folder / f"file{folder[11:]}{i}.h5", rng, 2, (12, 12))
    for i in range(3):
        make_nifti(root / "CC359" / f"CC{i:04d}_philips_15_55_M.nii.gz", rng, (2, 12, 12))
    return {
        "cardiac": {"path": str(acdc), "frame_list": str(root / "ed_es.txt")},
        "brain": {"path": str(root / "MRBrainS13")},
        "knee": {"path": str(root / "knee")},
        "calgary": {"path": str(root / "CC359")},
    }


def test_paper_config_dry_run_job_counts(tmp_path):
    config = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    for name, paths in fake_paper_data(tmp_path / "data").items():
        config["datasets"][name].update(paths)
    configfile = tmp_path / "paper.yaml"
    configfile.write_text(yaml.safe_dump(config))
    study = load_config(configfile)
    cells = sum(len(t["datasets"]) * len(t["accelerations"]) for t in study["tasks"].values())
    assert cells == 3 * 3 + 1  # cardiac, brain, knee at 4x/5x/8x; VDSR on Calgary-Campinas
    trained = {m for model in study["models"] if model != "zf" for m in models_needed(model)}
    assert trained == {"teacher", "student", "attention", "kd"}
    # training jobs counted together, whether one rule or one rule per stage (train_<stage>)
    counts = Counter("train" if rule.startswith("train") else rule
                     for rule, _ in planned_jobs(tmp_path, configfile))
    assert counts == {
        "prepare": 4, "mask": cells, "undersample": cells, "train": 4 * cells,
        "cache_teacher": cells, "predict": 4 * cells, "evaluate": 4 * cells,
        "figure_panel": cells, "figure_curves": cells, "figure_mask": cells,
        "tables": 1, "provenance": 1,
    }


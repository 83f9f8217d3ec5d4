"""The compression curve: students of several sizes, each trained plain and distilled from
one teacher; their config, job specs, table, figure and the whole DAG."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon

from kdmri import comparisons, tables
from kdmri.config import validate
from kdmri.errors import KdmriError
from kdmri.figures import compression_figure
from kdmri.methods import (
    compression_models,
    evaluated_models,
    models_needed,
    recipe,
    split_model,
    study_models,
)
from kdmri.specs import model_spec
from tests.test_tables import write_metrics
from tests.test_workflow_conventions import read_rules
from tests.workflow_utils import ROOT, planned_jobs, snakemake, write_config

STUDENTS = {
    "tiny": {"net": {"family": "dccnn", "cascades": 5, "convs": 2, "channels": 4},
             "pairs": [[3, 1]]},
    "mid": {"net": {"family": "dccnn", "cascades": 5, "convs": 3, "channels": 8}},
}


def study(**compression) -> dict:
    return {"models": ["zf", "teacher"],
            "tasks": {"recon": {"datasets": ["demo"], "accelerations": [4],
                                "compression": {"students": copy.deepcopy(STUDENTS),
                                                **compression}}}}


# ---------------------------------------------------------------------- config
def test_students_are_validated_and_take_the_tasks_pairs_by_default():
    config = validate(study())
    students = config["tasks"]["recon"]["compression"]["students"]
    assert students["mid"]["pairs"] == config["tasks"]["recon"]["pairs"] == [[3, 2]]
    assert students["tiny"]["pairs"] == [[3, 1]]
    assert students["mid"]["net"] == {"family": "dccnn", "cascades": 5, "convs": 3,
                                      "channels": 8, "complex": False}
    assert config["tasks"]["recon"]["compression"]["method"] == "kd"
    assert compression_models(validate({}), "recon") == []  # no compression unless asked


def test_models_of_a_compression_study():
    config = validate(study())
    assert compression_models(config, "recon") == ["student@tiny", "kd@tiny",
                                                   "student@mid", "kd@mid"]
    # the teacher is evaluated for its point on the curve even where models leaves it out
    config["models"] = ["zf"]
    assert evaluated_models(config, "recon") == ["zf", "teacher", "student@tiny", "kd@tiny",
                                                 "student@mid", "kd@mid"]
    assert {"attention@tiny", "attention@mid", "kd@mid"} <= set(study_models(config))
    assert models_needed("kd@mid") == ["attention@mid", "kd@mid"]
    assert recipe("kd@mid").stage == "imitation" and recipe("student@mid").init is None
    assert split_model("kd_imitation@x") == ("kd_imitation", "x")
    for bad in ("kd@", "nope@x", "nope"):
        with pytest.raises(KdmriError, match="unknown model"):
            split_model(bad)
    other = validate(study(method="kd_imitation"))
    assert compression_models(other, "recon")[1] == "kd_imitation@tiny"


def test_a_students_job_specs_are_the_tasks_with_its_network_and_pairs():
    config = validate(study())
    default = model_spec(config, "recon", "attention", 0)
    spec = model_spec(config, "recon", "attention@tiny", 0)
    assert spec["net"] == {"family": "dccnn", "cascades": 5, "convs": 2, "channels": 4}
    assert spec["pairs"] == [[3, 1]]
    assert spec["teacher_net"] == default["teacher_net"]
    assert spec["train"] == default["train"] and spec["loss_weights"] == default["loss_weights"]
    kd = model_spec(config, "recon", "kd@tiny", 0)
    assert kd["init"] == "attention@tiny" and kd["net"] == spec["net"]
    assert kd["loss_weights"] == model_spec(config, "recon", "kd", 0)["loss_weights"]
    assert model_spec(config, "recon", "teacher", 0)["net"] == default["teacher_net"]
    with pytest.raises(KdmriError, match="has no compression student 'big'; its students"):
        model_spec(config, "recon", "kd@big", 0)


@pytest.mark.parametrize("change, message", [
    ({"pairs": [[2, 1]]}, r"students.tiny.pairs': the teacher's side must be the task's \[3\]"),
    ({"pairs": [[3, 2]]}, r"students.tiny.pairs': the student's conv 2 has no activation; "
                          r"expected 1..1 for dccnn with 2 convolutions"),
    ({"net": {"family": "dccnn", "convs": 1}}, r"students.tiny.net.convs'"),
    ({"net": {"family": "dccnn", "complex": True}}, r"students.tiny.net.complex': expected "
                                                     r"false"),
    ({"size": 3}, r"unknown key 'tasks.recon.compression.students.tiny.size'"),
    ({"net": {"family": "dccnn", "cascades": 2, "convs": 2}},
     r"students.tiny.net.cascades': the teacher's pairs give one attention map per cascade "
     r"\(5\), a student paired by conv index needs as many, found 2"),
])
def test_bad_students_are_one_line_errors(change, message):
    config = study()
    config["tasks"]["recon"]["compression"]["students"]["tiny"].update(change)
    with pytest.raises(KdmriError, match=message):
        validate(config)


def test_bad_student_names_and_methods_are_refused():
    config = study()
    config["tasks"]["recon"]["compression"]["students"]["a-b"] = STUDENTS["mid"]
    with pytest.raises(KdmriError, match="letters, digits and underscores"):
        validate(config)
    with pytest.raises(KdmriError, match="compression.method': expected a student's method, one of"):
        validate(study(method="fitnets"))


# ---------------------------------------------------------------------- table
PARAMS = {"teacher": 9_000, "student@tiny": 100, "kd@tiny": 100, "student@mid": 2_000,
          "kd@mid": 2_000}
OFFSETS = {"teacher": 2.0, "student@tiny": 0.0, "kd@tiny": 0.4, "student@mid": 1.0,
           "kd@mid": 1.5}


def curve_metrics(models=tuple(PARAMS), seeds=(0, 1), n=20) -> pd.DataFrame:
    """Per-slice rows: psnr = base(seed, slice) + offset(model) + a model-dependent ripple."""
    rng = np.random.default_rng(1)
    rows = []
    for seed in seeds:
        base = rng.normal(28.0, 1.5, n)
        for k, model in enumerate(models):
            for i in range(n):
                rows.append({
                    "task": "recon", "dataset": "demo", "acceleration": 4.0, "model": model,
                    "seed": seed, "params": PARAMS[model], "flops": 64 * PARAMS[model],
                    "latency_ms": PARAMS[model] / 1000 + seed, "volume": f"v{i // 10}",
                    "slice": i % 10, "psnr": base[i] + OFFSETS[model] + 0.1 * np.sin(i * k + 1),
                    "ssim": 0.7 + OFFSETS[model] / 10, "nmse": 0.01, "hfen": 0.1,
                })
    return pd.DataFrame(rows)


def test_compression_table_against_the_formulas():
    frame = curve_metrics()
    table = comparisons.compression(frame)
    assert list(table.columns) == comparisons.COMPRESSION_COLUMNS
    assert list(table["student"]) == ["tiny", "mid"]  # by parameters
    mean = frame.groupby("model")["psnr"].mean()
    for _, row in table.iterrows():
        s, k = f"student@{row['student']}", f"kd@{row['student']}"
        assert row["method"] == "kd"
        assert row["params"] == PARAMS[s] and row["flops"] == 64 * PARAMS[s]
        assert row["latency_ms"] == pytest.approx(PARAMS[s] / 1000 + 0.5)  # mean of seeds
        assert row["student_psnr"] == pytest.approx(mean[s])
        assert row["kd_psnr"] == pytest.approx(mean[k])
        assert row["kd_minus_student_psnr"] == pytest.approx(mean[k] - mean[s])
        assert row["gap_closed"] == pytest.approx(
            (mean[k] - mean[s]) / (mean["teacher"] - mean[s]))
        diff = (frame[frame.model == k].sort_values(["seed", "volume", "slice"])["psnr"].to_numpy()
                - frame[frame.model == s].sort_values(["seed", "volume", "slice"])["psnr"].to_numpy())
        assert row["wilcoxon_p"] == pytest.approx(wilcoxon(diff).pvalue)
        assert row["teacher_psnr"] == pytest.approx(mean["teacher"])
        assert row["teacher_params"] == 9_000 and row["n_seeds"] == 2
    # about +0.4 and +0.5 dB of gaps of 2 and 1 dB
    assert list(table["gap_closed"].round(1)) == [0.2, 0.5]


def test_compression_table_without_a_teacher_or_a_distilled_student():
    table = comparisons.compression(curve_metrics(models=("student@tiny", "kd@tiny", "student@mid")))
    assert list(table["student"]) == ["tiny"]  # mid has no distilled model
    assert table["gap_closed"].isna().all() and table["teacher_psnr"].isna().all()
    # seeds the two models do not share are left out of the pair
    frame = curve_metrics()
    frame = frame[~((frame.model == "kd@tiny") & (frame.seed == 1))]
    assert comparisons.compression(frame).set_index("student").loc["tiny", "n_seeds"] == 1


def test_kdmri_tables_writes_the_compression_table_only_for_a_compression_study(tmp_path):
    written = tables.write_tables(write_metrics(curve_metrics(), tmp_path / "m"), tmp_path)
    assert len(written["compression"]) == 2
    text = (tmp_path / "compression.md").read_text()
    assert "| tiny | 100 |" in text and "| teacher | 9.0K |" in text
    assert pd.read_csv(tmp_path / "compression.csv").shape == (2, len(comparisons.COMPRESSION_COLUMNS))
    plain = curve_metrics(models=("teacher",))
    tables.write_tables(write_metrics(plain, tmp_path / "plain"), tmp_path)
    assert not (tmp_path / "compression.csv").exists()  # a stale table is removed


def test_compression_figure(tmp_path):
    tables.write_tables(write_metrics(curve_metrics(), tmp_path / "m"), tmp_path)
    out = tmp_path / "compression.png"
    compression_figure(tmp_path / "compression.csv", out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    with pytest.raises(KdmriError, match="compression table not found"):
        compression_figure(tmp_path / "none.csv", out)
    pd.DataFrame({"student": ["x"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(KdmriError, match="missing columns"):
        compression_figure(tmp_path / "bad.csv", out)


# ---------------------------------------------------------------------- workflow
def tiny_compression(path):
    return write_config(path, models=["zf", "teacher"], tasks__sr__datasets=[],
                        tasks__recon__compression={"students": STUDENTS})


def test_rule_tables_declares_the_compression_tables_and_the_figure_is_in_the_report(tmp_path):
    config = tiny_compression(tmp_path / "study.yaml")
    rules = {r["name"]: r for r in read_rules(tmp_path, config)["rules"]}
    declared = {name.rsplit("/", 1)[-1]: flag for name, flag in rules["tables"]["output"]}
    assert declared["compression.csv"] is True and declared["compression.md"] is False
    [(figure, in_report)] = rules["figure_compression"]["output"]
    assert figure.endswith("results/test/figures/compression.png") and in_report
    assert (ROOT / "workflow" / "report" / "compression.rst").is_file()


def test_dry_run_plans_each_student_plain_and_distilled(tmp_path):
    config = tiny_compression(tmp_path / "study.yaml")
    jobs = planned_jobs(tmp_path, config)
    trained = sorted((rule, w["model"]) for rule, w in jobs if rule.startswith("train_"))
    assert trained == sorted([
        ("train_teacher", "teacher"),
        ("train_student", "student@tiny"), ("train_attention", "attention@tiny"),
        ("train_imitation", "kd@tiny"),
        ("train_student", "student@mid"), ("train_attention", "attention@mid"),
        ("train_imitation", "kd@mid"),
    ])
    assert [r for r, _ in jobs].count("cache_teacher") == 1  # one teacher cache for all
    assert "figure_compression" in [r for r, _ in jobs]


@pytest.mark.slow
def test_a_compression_study_runs_through_the_dag(tmp_path):
    config = tiny_compression(tmp_path / "study.yaml")
    snakemake(tmp_path, config)
    out = tmp_path / "results" / "test"
    table = pd.read_csv(out / "tables" / "compression.csv")
    assert list(table["student"]) == ["tiny", "mid"]
    # 5 cascades x (conv 1->4, 4->1) and 5 x (1->8, 8->8, 8->1): counted by hand
    assert list(table["params"]) == [5 * (9 * 4 + 4 + 9 * 4 + 1), 5 * (80 + 584 + 73)]
    assert table["teacher_params"].iloc[0] == 141_765
    summary = pd.read_csv(out / "tables" / "summary.csv").set_index("model")
    for name in ("tiny", "mid"):
        assert summary.loc[f"kd@{name}", "psnr_mean"] == pytest.approx(
            table.set_index("student").loc[name, "kd_psnr"])
    assert (out / "figures" / "compression.png").stat().st_size > 10_000
    ckpt = out / "recon" / "demo" / "acc4" / "kd@mid" / "seed0" / "model.pt"
    assert ckpt.is_file()

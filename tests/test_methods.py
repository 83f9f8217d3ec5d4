"""Methods as data: the method table (shipped and a study's own), the job specs each
method gives, the table of methods with its Holm-corrected Wilcoxon test, and its figure."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon

from kdmri import comparisons, stats, tables
from kdmri.cli import main
from kdmri.config import validate
from kdmri.errors import KdmriError
from kdmri.figures import methods_figure
from kdmri.methods import MODELS, methods, models_needed, recipe
from kdmri.specs import method_description, methods_description, model_spec, teacher_sources
from tests.test_tables import write_metrics
from tests.workflow_utils import ROOT, planned_jobs, write_config

MINE = {"hint_mine": {"stage": "hint", "loss": {"sp": 2.0, "attention": 0.5}},
        "kd_mine": {"stage": "imitation", "init": "hint_mine"}}


# ---------------------------------------------------------------------- the table
def test_shipped_methods_give_the_specs_of_the_papers_stages():
    config = validate({})
    kd = model_spec(config, "recon", "kd", 0)
    assert kd["stage"] == "imitation" and kd["init"] == "attention"
    assert kd["loss_weights"] == {"reconstruction": 0.5, "imitation": 0.5}
    assert "pairs" not in kd and kd["teacher_net"]["convs"] == 5
    attention = model_spec(config, "recon", "attention", 0)
    assert attention["loss_weights"] == {"attention": 1.0} and attention["pairs"] == [[3, 2]]
    other = validate({"kd": {"alpha": 0.3, "attention_weight": 2.0}})
    assert model_spec(other, "recon", "kd", 0)["loss_weights"] == pytest.approx(
        {"reconstruction": 0.3, "imitation": 0.7})
    assert model_spec(other, "recon", "attention", 0)["loss_weights"] == {"attention": 2.0}
    assert set(model_spec(config, "recon", "student", 0)) == {
        "task", "model", "stage", "init", "net", "loss_weights", "train", "seed"}


@pytest.mark.parametrize("name, term, key", [
    ("fitnets", "fitnets", "pairs"), ("sp", "sp", "pairs"), ("fsp", "fsp", "fsp_pairs"),
    ("cc", "cc_embedded", "pairs"),  # CC as its paper computes it, on learnt embeddings
    ("vid", "vid", "pairs"), ("ab", "ab", "pairs"), ("ickd", "ickd", "pairs")])
def test_each_feature_method_is_a_hint_stage_then_imitation(name, term, key):
    config = validate({})
    hint = model_spec(config, "recon", f"hint_{name}", 0)
    assert hint["stage"] == "hint" and hint["loss_weights"] == {term: 1.0}
    assert hint[key] == config["tasks"]["recon"][key] and hint["teacher_net"]["convs"] == 5
    assert teacher_sources(config, f"hint_{name}") == {"weights"}  # the live teacher
    kd = model_spec(config, "recon", f"kd_{name}", 0)
    reference = model_spec(config, "recon", "kd", 0)
    assert kd["init"] == f"hint_{name}"
    assert {k: v for k, v in kd.items() if k not in ("model", "init")} == {
        k: v for k, v in reference.items() if k not in ("model", "init")}
    assert teacher_sources(config, f"kd_{name}") == {"cache"}
    assert models_needed(f"kd_{name}") == [f"hint_{name}", f"kd_{name}"]


def test_a_study_adds_its_own_method():
    config = validate({"methods": MINE, "models": ["zf", "teacher", "student", "kd_mine"],
                       "tasks": {"recon": {"datasets": ["demo"]}}})
    assert set(methods(config)) == set(MODELS) | {"hint_mine", "kd_mine"}
    assert "hint_mine" not in methods()  # the shipped table is unchanged
    spec = model_spec(config, "recon", "hint_mine", 0)
    assert spec["loss_weights"] == {"sp": 2.0, "attention": 0.5}
    assert spec["pairs"] == [[3, 2]] and spec["stage"] == "hint"
    assert teacher_sources(config, "hint_mine") == {"cache", "weights"}
    assert recipe("kd_mine", config).init == "hint_mine"
    assert models_needed("kd_mine", config) == ["hint_mine", "kd_mine"]
    assert method_description(config, "recon", "kd_mine") == {
        "teacher": "teacher",
        "stages": [{"stage": "hint", "loss": {"sp": 2.0, "attention": 0.5}, "epochs": 10},
                   {"stage": "imitation", "loss": {"reconstruction": 0.5, "imitation": 0.5},
                    "epochs": 10}]}
    assert methods_description(config)["recon"]["student"]["teacher"] is None


@pytest.mark.parametrize("entry, message", [
    ({"kd": {"stage": "imitation"}}, r"'methods.kd': 'kd' is a shipped method"),
    ({"m": {"stage": "hint"}}, r"'methods.m.loss': a hint stage has no loss of its own"),
    ({"m": {"stage": "hint", "loss": {"fitnet": 1}}}, r"unknown loss term 'fitnet'"),
    ({"m": {"stage": "imitation", "init": "nope"}}, r"'methods.m.init': unknown method 'nope'"),
    ({"m": {"stage": "imitation", "teacher": "student"}},
     r"'methods.m.teacher': 'student' is trained in the student stage"),
    ({"a": {"stage": "student", "init": "b"}, "b": {"stage": "student", "init": "a"}},
     r"init chain a <- b <- a comes back to itself"),
    ({"m": {"stage": "nope"}}, r"methods.m.stage': expected one of"),
    ({"m": {"stage": "hint", "loss": {"sp": -1}}}, r"methods.m.loss.sp'"),
])
def test_bad_methods_are_one_line_errors_before_any_job(entry, message):
    with pytest.raises(KdmriError, match=message):
        validate({"methods": entry})


def test_the_student_friendly_teacher_needs_cascades_before_any_job():
    sr = {"tasks": {"sr": {"datasets": ["demo"]}}}
    validate({**sr, "models": ["zf", "teacher", "student", "kd"]})
    for model in ("sft_teacher", "kd_sft", "kd_fitnets_sft"):
        with pytest.raises(KdmriError, match=rf"'models': {model} needs the student-friendly "
                                             r"teacher, which needs DC-CNN teacher and "
                                             r"student.*vdsr and vdsr"):
            validate({**sr, "models": ["zf", model]})
    with pytest.raises(KdmriError, match=r"student.cascades': the student-friendly teacher "
                                         r"needs as many student as teacher cascades \(5\)"):
        validate({"models": ["zf", "kd_sft"], "tasks": {"recon": {
            "datasets": ["demo"], "student": {"family": "dccnn", "cascades": 3}}}})


def test_models_must_name_methods():
    with pytest.raises(KdmriError, match=r"'models.2': unknown method 'kd_nope'; expected zf"):
        validate({"models": ["zf", "teacher", "kd_nope"]})


def test_the_workflow_plans_a_study_method(tmp_path):
    config = write_config(tmp_path / "study.yaml", methods=MINE, tasks__sr__datasets=[],
                          models=["zf", "teacher", "student", "kd_mine", "kd_fitnets"])
    jobs = planned_jobs(tmp_path, config)
    trained = sorted((rule, w["model"]) for rule, w in jobs if rule.startswith("train_"))
    assert trained == sorted([
        ("train_teacher", "teacher"), ("train_student", "student"),
        ("train_hint", "hint_mine"), ("train_imitation", "kd_mine"),
        ("train_hint", "hint_fitnets"), ("train_imitation", "kd_fitnets")])
    rules = [r for r, _ in jobs]
    assert "figure_methods" in rules and rules.count("cache_teacher") == 1


def test_the_workflow_reads_the_method_and_term_tables_without_torch():
    """The Snakefile builds every job's spec on each invocation: that must not import torch
    (seconds per `snakemake -n`)."""
    code = ("import sys\n"
            "from kdmri.config import load_config\n"
            "from kdmri.methods import methods\n"
            "from kdmri.specs import methods_description, model_spec\n"
            "import kdmri.comparisons, kdmri.tables\n"
            "c = load_config('config/methods.yaml')\n"
            "[model_spec(c, 'recon', m, 0) for m in methods(c)]\n"
            "methods_description(c)\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


# ---------------------------------------------------------------------- Holm
def test_holm_against_the_step_down_written_out():
    p = np.array([0.01, 0.04, 0.03, np.nan, 0.5])
    # sorted 0.01, 0.03, 0.04, 0.5 (m = 4): 4 * 0.01, 3 * 0.03, 2 * 0.04, 1 * 0.5, then the
    # running maximum keeps them non-decreasing
    expected = [0.04, 0.09, 0.09, np.nan, 0.5]
    np.testing.assert_allclose(stats.holm(p), expected)
    assert stats.holm([0.6, 0.7])[0] == 1.0  # capped
    assert stats.holm([]).size == 0


# ---------------------------------------------------------------------- methods table
OFFSETS = {"teacher": 1.0, "student": 0.0, "kd": 0.5, "kd_fitnets": 0.2, "kd_sft": 0.8,
           "sft_teacher": 0.9}
INFO = {
    "teacher": {"teacher": None, "stages": [{"stage": "teacher", "loss": {}, "epochs": 3}]},
    "student": {"teacher": None, "stages": [{"stage": "student", "loss": {}, "epochs": 3}]},
    "kd": {"teacher": "teacher", "stages": [
        {"stage": "attention", "loss": {"attention": 1.0}, "epochs": 2},
        {"stage": "imitation", "loss": {"reconstruction": 0.5, "imitation": 0.5}, "epochs": 3}]},
    "kd_fitnets": {"teacher": "teacher", "stages": [
        {"stage": "hint", "loss": {"fitnets": 1.0}, "epochs": 2},
        {"stage": "imitation", "loss": {"reconstruction": 0.5, "imitation": 0.5}, "epochs": 3}]},
    "kd_sft": {"teacher": "sft_teacher", "stages": [
        {"stage": "imitation", "loss": {"reconstruction": 0.5, "imitation": 0.5}, "epochs": 3}]},
}


def method_metrics(n=24, seeds=(0,)) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    rows = []
    for acc in (4.0, 8.0):
        for seed in seeds:
            base = rng.normal(28 - acc / 4, 1.0, n)
            for k, model in enumerate(OFFSETS):
                for i in range(n):
                    rows.append({"task": "recon", "dataset": "demo", "acceleration": acc,
                                 "model": model, "seed": seed, "params": 10, "flops": 10,
                                 "latency_ms": 1.0, "volume": f"v{i // 6}", "slice": i % 6,
                                 "psnr": base[i] + OFFSETS[model] * acc / 4
                                 + 0.2 * np.sin(3 * i + k),
                                 "ssim": 0.8, "nmse": 0.01, "hfen": 0.1})
    return pd.DataFrame(rows)


def test_methods_table_against_the_formulas():
    frame = method_metrics()
    table = comparisons.methods_table(frame, {"recon": INFO})
    assert list(table.columns) == comparisons.METHOD_COLUMNS
    assert sorted(set(table["method"])) == ["kd", "kd_fitnets", "kd_sft"]
    for acc, cell in table.groupby("acceleration"):
        part = frame[frame.acceleration == acc]
        mean = part.groupby("model")["psnr"].mean()
        ordered = {m: part[part.model == m].sort_values(["volume", "slice"])["psnr"].to_numpy()
                   for m in OFFSETS}
        raw = []
        for _, row in cell.iterrows():
            m = row["method"]
            assert row["psnr"] == pytest.approx(mean[m])
            assert row["gain_psnr"] == pytest.approx(mean[m] - mean["student"])
            # against the standard teacher, also for the method taught by the SFT teacher
            assert row["gap_closed"] == pytest.approx(
                (mean[m] - mean["student"]) / (mean["teacher"] - mean["student"]))
            p = wilcoxon(ordered[m] - ordered["student"]).pvalue
            assert row["wilcoxon_p"] == pytest.approx(p)
            raw.append(p)
        # Holm over the three methods of the cell, written out
        order = np.argsort(raw)
        adjusted = np.maximum.accumulate([min(1, (3 - r) * raw[i]) for r, i in enumerate(order)])
        expected = np.empty(3)
        expected[order] = adjusted
        np.testing.assert_allclose(cell["p_holm"], expected)
    assert table.set_index(["acceleration", "method"]).loc[(4.0, "kd_sft"), "teacher"] \
        == "sft_teacher"
    assert table["stages"].iloc[0] == "attention 2 ep -> imitation 3 ep"


def test_kdmri_tables_writes_the_methods_table_only_for_two_or_more_methods(tmp_path, capsys):
    paths = write_metrics(method_metrics(), tmp_path / "m")
    out = tmp_path / "out"
    assert main(["tables", "--metrics", *paths, "--out-dir", str(out),
                 "--methods", json.dumps({"recon": INFO})]) == 0
    written = pd.read_csv(out / "methods.csv")
    assert len(written) == 6
    text = (out / "methods.md").read_text()
    assert "| kd_sft | sft_teacher |" in text and "Holm" in text
    assert "\\begin{tabular}" in (out / "methods.tex").read_text()
    figure = tmp_path / "methods.png"
    methods_figure(out / "methods.csv", figure)
    assert figure.stat().st_size > 10_000
    one = {"recon": {k: v for k, v in INFO.items() if k in ("teacher", "student", "kd")}}
    tables.write_tables(paths, out, one)
    assert not (out / "methods.csv").exists() and not (out / "methods.md").exists()
    for bad, message in (("[1]", "--methods: expected {task: {model:"),
                         ("{", "--methods: not valid JSON")):
        assert main(["tables", "--metrics", *paths, "--out-dir", str(out),
                     "--methods", bad]) != 0
        assert message in capsys.readouterr().err


# ---------------------------------------------------------------------- the whole DAG
@pytest.mark.slow
def test_a_comparison_of_methods_runs_through_the_dag(tmp_path):
    """The feature methods, the student-friendly teacher and a study's own method, tiny,
    from the config to methods.csv and its figure."""
    from tests.workflow_utils import snakemake

    models = ["zf", "teacher", "student", "kd", "kd_fitnets", "kd_fsp", "kd_sp", "kd_cc",
              "sft_teacher", "kd_sft", "kd_mine"]
    config = write_config(tmp_path / "study.yaml", methods=MINE, tasks__sr__datasets=[],
                          models=models, stages__hint={"epochs": 1})
    snakemake(tmp_path, config)
    out = tmp_path / "results" / "test"
    table = pd.read_csv(out / "tables" / "methods.csv")
    assert sorted(table["method"]) == sorted(["kd", "kd_fitnets", "kd_fsp", "kd_sp", "kd_cc",
                                              "kd_sft", "kd_mine"])
    assert set(table.loc[table.method == "kd_sft", "teacher"]) == {"sft_teacher"}
    assert table.loc[table.method == "kd_fitnets", "stages"].item() == \
        "hint fitnets 1 ep -> imitation 2 ep"
    assert table["psnr"].notna().all() and table["p_holm"].ge(table["wilcoxon_p"]).all()
    summary = pd.read_csv(out / "tables" / "summary.csv").set_index("model")
    # FitNets' adapters and the SFT branches are not part of the saved networks
    assert summary.loc["kd_fitnets", "params"] == summary.loc["student", "params"] == 49_285
    assert summary.loc["sft_teacher", "params"] == summary.loc["teacher", "params"] == 141_765
    assert (out / "figures" / "methods.png").stat().st_size > 10_000
    cache = out / "recon" / "demo" / "acc4" / "sft_teacher" / "seed0" / "cache" / "train.h5"
    assert cache.is_file()  # kd_sft's imitation reads the student-friendly teacher's cache

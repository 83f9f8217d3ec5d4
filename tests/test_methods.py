"""Methods as data: the method table (shipped and a study's own), the job specs each
method gives, the table of methods with its Holm-corrected Wilcoxon test, and its figure."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon

from kdmri import comparisons, stats, tables
from kdmri.cli import main
from kdmri.config import validate
from kdmri.errors import KdmriError
from kdmri.figures import methods_figure
from kdmri.methods import MODELS, init_file, methods, models_needed, recipe
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
        "stages": [{"stage": "hint", "loss": {"sp": 2.0, "attention": 0.5}, "epochs": 10,
                    "model": "hint_mine"},
                   {"stage": "imitation", "loss": {"reconstruction": 0.5, "imitation": 0.5},
                    "epochs": 10, "model": "kd_mine"}]}
    assert methods_description(config)["recon"]["student"]["teacher"] is None


@pytest.mark.parametrize("term", ["attention", "fitnets", "fsp", "sp", "cc"])
def test_each_hint_stage_is_shipped_in_both_protocols(term):
    """From random weights (FitNets' protocol: ``kd_<term>``, ``kd`` for attention) and from
    the trained plain student (SFT-KD-Recon's scripts: ``<that>_fromstudent``): the same
    stages and losses, the second chain headed by the student, as its table row says."""
    config = validate({"stages": {"hint": {"epochs": 6}, "attention": {"epochs": 6}}})
    hint = "attention" if term == "attention" else f"hint_{term}"
    kd = "kd" if term == "attention" else f"kd_{term}"
    assert models_needed(kd) == [hint, kd]
    assert models_needed(f"{kd}_fromstudent") == ["student", f"{hint}_fromstudent",
                                                  f"{kd}_fromstudent"]
    scratch = model_spec(config, "recon", hint, 0)
    started = model_spec(config, "recon", f"{hint}_fromstudent", 0)
    assert scratch["init"] is None and started["init"] == "student"
    assert {k: v for k, v in started.items() if k not in ("model", "init")} == {
        k: v for k, v in scratch.items() if k not in ("model", "init")}
    assert init_file(recipe(f"{hint}_fromstudent")) == "model.pt"
    described = method_description(config, "recon", f"{kd}_fromstudent")
    assert described["teacher"] == "teacher"
    assert [(s["stage"], s["epochs"], s["model"]) for s in described["stages"]] == [
        ("student", 10, "student"), (recipe(hint).stage, 6, f"{hint}_fromstudent"),
        ("imitation", 10, f"{kd}_fromstudent")]
    text = comparisons.describe_stages(described["stages"])
    assert text.startswith("student 10 ep -> ") and text.endswith(" 6 ep -> imitation 10 ep")


def test_the_sft_methods_start_from_the_sft_stages_student():
    """SFT-KD-Recon's steps 1 and 2: each ``*_sft`` chain starts from the student cascades
    the sft stage writes (``sft_student.pt``), so its table row shows the sft stage first;
    ``student_sft`` trains those cascades on with the reconstruction loss alone."""
    config = validate({})
    assert models_needed("kd_sft") == ["sft_teacher", "attention_sft", "kd_sft"]
    assert models_needed("kd_imitation_sft") == ["sft_teacher", "kd_imitation_sft"]
    assert models_needed("student_sft") == ["sft_teacher", "student_sft"]
    assert init_file(recipe("kd_imitation_sft")) == "sft_student.pt"
    assert init_file(recipe("kd_sft")) == "model.pt"
    student = model_spec(config, "recon", "student_sft", 0)
    assert student["stage"] == "student" and student["loss_weights"] == {"reconstruction": 1.0}
    assert (student["init"], student["init_output"]) == ("sft_teacher", "student")
    assert "init_output" not in model_spec(config, "recon", "kd", 0)
    for model in ("student_sft", "kd_imitation_sft", "kd_sft"):
        described = method_description(config, "recon", model)
        assert described["teacher"] == "sft_teacher"
        assert described["stages"][0]["stage"] == "sft"
    assert method_description(config, "recon", "student")["teacher"] is None


def test_a_study_method_can_start_from_a_stage_output():
    mine = {"mine": {"stage": "imitation", "init": "sft_teacher", "init_output": "student",
                     "teacher": "sft_teacher"}}
    config = validate({"methods": mine, "models": ["zf", "student", "kd_sft", "mine"]})
    assert model_spec(config, "recon", "mine", 0)["init_output"] == "student"
    assert init_file(recipe("mine", config), config) == "sft_student.pt"
    for init, message in (("sft_teacher", r"'methods.m.init_output': the init's stage writes "
                                          r"no 'teacher'; its outputs: \['student'\]"),
                          ("student", r"the init's stage writes no 'teacher'; its outputs: "
                                      r"none besides model.pt")):
        with pytest.raises(KdmriError, match=message):
            validate({"methods": {"m": {"stage": "student", "init": init,
                                        "init_output": "teacher"}}})


def test_the_workflow_starts_the_sft_students_from_the_sft_stages_student(tmp_path):
    """The sft rule declares sft_student.pt as an output, and the jobs heading a ``*_sft``
    chain take it as their --init."""
    from tests.workflow_utils import snakemake

    config = write_config(tmp_path / "study.yaml", tasks__sr__datasets=[],
                          models=["zf", "teacher", "student", "kd_sft", "student_sft"])
    out = snakemake(tmp_path, config, "--dry-run", "--printshellcmds")
    text = out.stdout + out.stderr
    lines = (line.strip().removeprefix("Shell command: ") for line in text.splitlines())
    commands = {re.search(r'"model":"(\w+)"', line).group(1): line
                for line in lines if line.startswith("kdmri train")}
    student = r"--init \S+/acc[0-9.]+/sft_teacher/seed0/sft_student\.pt "
    assert re.search(student, commands["attention_sft"])
    assert re.search(student, commands["student_sft"])
    assert re.search(r"--init \S+/attention_sft/seed0/model\.pt ", commands["kd_sft"])
    assert "--init" not in commands["sft_teacher"]
    outputs = re.search(r"rule train_sft:.*?\n\s*output: ([^\n]+)", text, re.S).group(1)
    assert "sft_teacher/seed0/sft_student.pt" in outputs and "model.pt" in outputs


def test_the_methods_study_runs_the_reference_codes_sft_imitation_weight():
    """SFT-KD-Recon's code divides the branch-imitation L1 mean again by N H W (batch size
    times pixels); the comparison study's weight is that factor, the default the paper's 1."""
    from kdmri.config import load_config

    config = load_config(ROOT / "config" / "methods.yaml")
    spec = model_spec(config, "recon", "sft_teacher", 0)
    size = config["datasets"]["demo"]["size"]
    assert spec["loss_weights"]["sft_imitation"] == 1 / (spec["train"]["batch_size"] * size * size)
    assert model_spec(validate({}), "recon", "sft_teacher", 0)["loss_weights"] == {
        "reconstruction": 1.0, "sft_reconstruction": 1.0, "sft_imitation": 1.0}


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


def quantile(values, q: float) -> float:
    """The q-quantile by linear interpolation between the order statistics, written out."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(np.floor(position))
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])


def compared_frame(seed_sizes=((0, 7), (1, 5), (2, 6))) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    rows = []
    for seed, n in seed_sizes:
        student = rng.normal(30, 1, n)
        for i in range(n):
            rows.append({"seed": seed, "student": student[i],
                         "model": student[i] + 0.3 + 0.4 * rng.standard_normal(),
                         "teacher": student[i] + 1.0 + 0.2 * rng.standard_normal()})
    return pd.DataFrame(rows)[stats.COMPARED]


def test_seed_spread_against_the_per_seed_formulas():
    frame = compared_frame()
    gains, gaps = [], []
    for seed in (0, 1, 2):
        part = frame[frame.seed == seed]
        m, s_, t = part["model"].mean(), part["student"].mean(), part["teacher"].mean()
        gains.append(m - s_)
        gaps.append((m - s_) / (t - s_))

    def sample_std(values):  # ddof = 1, written out
        mean = sum(values) / len(values)
        return (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5

    spread = stats.seed_spread(frame)
    assert spread["gain_seed_mean"] == pytest.approx(sum(gains) / 3)
    assert spread["gain_seed_std"] == pytest.approx(sample_std(gains))
    assert spread["gap_seed_mean"] == pytest.approx(sum(gaps) / 3)
    assert spread["gap_seed_std"] == pytest.approx(sample_std(gaps))
    one = stats.seed_spread(frame[frame.seed == 1])
    assert one["gain_seed_std"] == one["gap_seed_std"] == 0.0
    assert one["gain_seed_mean"] == pytest.approx(gains[1])


def test_bootstrap_interval_resamples_seeds_then_slices():
    frame = compared_frame()
    samples = 300
    got = stats.bootstrap_interval(frame, samples=samples, seed=11)
    # written out: per resample, k seed indices, then each drawn seed's slices, in order
    rng = np.random.default_rng(11)
    per_seed = [frame[frame.seed == seed][["model", "student", "teacher"]].to_numpy()
                for seed in (0, 1, 2)]
    gains, gaps = [], []
    for _ in range(samples):
        chosen = rng.integers(0, 3, 3)
        drawn = []
        for j in chosen:
            rows = per_seed[j]
            drawn += [rows[i] for i in rng.integers(0, len(rows), len(rows))]
        m = sum(r[0] for r in drawn) / len(drawn)
        s_ = sum(r[1] for r in drawn) / len(drawn)
        t = sum(r[2] for r in drawn) / len(drawn)
        gains.append(m - s_)
        gaps.append((m - s_) / (t - s_))
    assert got["gain_ci_low"] == pytest.approx(quantile(gains, 0.025))
    assert got["gain_ci_high"] == pytest.approx(quantile(gains, 0.975))
    assert got["gap_ci_low"] == pytest.approx(quantile(gaps, 0.025))
    assert got["gap_ci_high"] == pytest.approx(quantile(gaps, 0.975))
    # reproducible, and it brackets the pooled estimate; a wider level gives a wider interval
    assert stats.bootstrap_interval(frame, samples=samples, seed=11) == got
    pooled = frame["model"].mean() - frame["student"].mean()
    assert got["gain_ci_low"] < pooled < got["gain_ci_high"]
    wide = stats.bootstrap_interval(frame, level=0.99, samples=samples, seed=11)
    assert wide["gain_ci_low"] <= got["gain_ci_low"] and wide["gain_ci_high"] >= got["gain_ci_high"]
    no_teacher = stats.bootstrap_interval(frame.assign(teacher=np.nan), samples=20)
    assert np.isnan(no_teacher["gap_ci_low"]) and np.isfinite(no_teacher["gain_ci_low"])


def test_methods_table_over_seeds_against_the_formulas():
    seeds = (0, 1, 2)
    frame = method_metrics(n=12, seeds=seeds)
    # seeds that differ: kd gains more with each seed, the teacher's gap grows
    frame["psnr"] += (np.where(frame.model == "kd", 0.1 * frame.seed, 0.0)
                      + np.where(frame.model == "teacher", 0.05 * frame.seed ** 2, 0.0))
    info = {m: dict(entry, stages=[dict(stage, model=f"{m}_{stage['stage']}")
                                   for stage in entry["stages"]])
            for m, entry in INFO.items()}
    histories = pd.DataFrame([
        {"task": "recon", "dataset": "demo", "acceleration": acc, "model": model, "seed": seed,
         "val_psnr": 20 + acc + seed + len(model)}
        for acc in (4.0, 8.0) for seed in seeds for model in ("kd_attention", "kd_fitnets_hint")],
        columns=comparisons.HISTORY_COLUMNS)
    table = comparisons.methods_table(frame, {"recon": info}, histories)
    assert list(table.columns) == comparisons.METHOD_COLUMNS
    for _, row in table.iterrows():
        part = frame[frame.acceleration == row["acceleration"]]
        keyed = {m: part[part.model == m].set_index(["seed", "volume", "slice"])["psnr"]
                 for m in ("teacher", "student", row["method"])}
        keyed = {m: values.reindex(keyed["student"].index) for m, values in keyed.items()}
        compared = pd.DataFrame({"seed": keyed["student"].index.get_level_values("seed"),
                                 "model": keyed[row["method"]].to_numpy(),
                                 "student": keyed["student"].to_numpy(),
                                 "teacher": keyed["teacher"].to_numpy()})
        per_seed = [(g["model"].mean() - g["student"].mean(),
                     (g["model"].mean() - g["student"].mean())
                     / (g["teacher"].mean() - g["student"].mean()))
                    for _, g in compared.groupby("seed")]
        gains, gaps = np.array(per_seed).T
        assert row["gain_seed_mean"] == pytest.approx(gains.mean())
        if row["method"] == "kd":
            assert row["gain_seed_std"] > 0.05 and row["gap_seed_std"] > 0.01
        assert row["gain_seed_std"] == pytest.approx(gains.std(ddof=1))
        assert row["gap_seed_mean"] == pytest.approx(gaps.mean())
        assert row["gap_seed_std"] == pytest.approx(gaps.std(ddof=1))
        interval = stats.bootstrap_interval(compared)
        assert {k: row[k] for k in interval} == pytest.approx(interval)
        assert row["gain_ci_low"] < row["gain_psnr"] < row["gain_ci_high"]
        assert row["n_seeds"] == 3
        # the validation PSNR at the end of the last hint stage, mean over seeds
        hint = {"kd": "kd_attention", "kd_fitnets": "kd_fitnets_hint"}.get(row["method"])
        if hint is None:
            assert np.isnan(row["hint_val_psnr"])
        else:
            assert row["hint_val_psnr"] == pytest.approx(
                20 + row["acceleration"] + 1 + len(hint))
    text = comparisons.methods_markdown(table)
    kd4 = table.set_index(["acceleration", "method"]).loc[(4.0, "kd")]
    assert (f"{kd4['gain_psnr']:+.2f} ({kd4['gain_seed_mean']:+.2f} ± {kd4['gain_seed_std']:.2f})"
            f" [{kd4['gain_ci_low']:+.2f}, {kd4['gain_ci_high']:+.2f}]") in text
    assert "3 seeds" in text and "bootstrap" in text


def test_final_val_psnr_is_the_last_validated_epochs():
    history = pd.DataFrame({"epoch": [1, 2, 3], "val_psnr": [20.0, 21.5, np.nan]})
    assert comparisons.final_val_psnr(history) == 21.5
    assert np.isnan(comparisons.final_val_psnr(history.drop(columns="val_psnr")))


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
    # a cell where the teacher is not above the student has no gap to close: its bars say so
    no_gap = pd.read_csv(out / "methods.csv").assign(gap_closed=np.nan, gap_ci_low=np.nan,
                                                     gap_ci_high=np.nan)
    no_gap.to_csv(tmp_path / "no_gap.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        methods_figure(tmp_path / "no_gap.csv", tmp_path / "no_gap.png")
    assert (tmp_path / "no_gap.png").stat().st_size > 10_000
    one = {"recon": {k: v for k, v in INFO.items() if k in ("teacher", "student", "kd")}}
    tables.write_tables(paths, out, one)
    assert not (out / "methods.csv").exists() and not (out / "methods.md").exists()
    for bad, message in (("[1]", "--methods: expected {task: {model:"),
                         ("{", "--methods: not valid JSON")):
        assert main(["tables", "--metrics", *paths, "--out-dir", str(out),
                     "--methods", bad]) != 0
        assert message in capsys.readouterr().err
    history = tmp_path / "history.csv"
    pd.DataFrame({"epoch": [1, 2, 3], "val_psnr": [25.0, 26.0, 26.5]}).to_csv(history,
                                                                              index=False)
    hinted = {m: dict(e, stages=[dict(st, model="h") for st in e["stages"]])
              for m, e in INFO.items()}
    assert main(["tables", "--metrics", *paths, "--out-dir", str(out), "--methods",
                 json.dumps({"recon": hinted}), "--histories", f"recon/demo/4/h/0={history}",
                 f"recon/demo/8/h/0={history}"]) == 0
    written = pd.read_csv(out / "methods.csv").set_index("method")
    assert (written.loc[["kd", "kd_fitnets"], "hint_val_psnr"] == 26.5).all()
    assert written.loc["kd_sft", "hint_val_psnr"].isna().all()
    assert main(["tables", "--metrics", *paths, "--out-dir", str(out), "--methods",
                 json.dumps({"recon": hinted}), "--histories", f"recon/demo/4/h={history}"]) != 0
    assert "expected task/dataset/acceleration/model/seed=path" in capsys.readouterr().err


# ---------------------------------------------------------------------- the whole DAG
@pytest.mark.slow
def test_a_comparison_of_methods_runs_through_the_dag(tmp_path):
    """The feature methods, the student-friendly teacher and a study's own method, tiny,
    from the config to methods.csv and its figure."""
    import torch

    from tests.workflow_utils import snakemake

    models = ["zf", "teacher", "student", "kd", "kd_fitnets", "kd_fsp", "kd_sp", "kd_cc",
              "kd_fitnets_fromstudent", "sft_teacher", "kd_sft", "student_sft", "kd_mine"]
    config = write_config(tmp_path / "study.yaml", methods=MINE, tasks__sr__datasets=[],
                          models=models, stages__hint={"epochs": 1})
    snakemake(tmp_path, config)
    out = tmp_path / "results" / "test"
    table = pd.read_csv(out / "tables" / "methods.csv")
    assert sorted(table["method"]) == sorted(["kd", "kd_fitnets", "kd_fsp", "kd_sp", "kd_cc",
                                              "kd_fitnets_fromstudent", "kd_sft",
                                              "student_sft", "kd_mine"])
    assert set(table.loc[table.method.isin(["kd_sft", "student_sft"]), "teacher"]) == {
        "sft_teacher"}
    assert table.loc[table.method == "kd_fitnets", "stages"].item() == \
        "hint fitnets 1 ep -> imitation 2 ep"
    assert table.loc[table.method == "kd_fitnets_fromstudent", "stages"].item() == \
        "student 2 ep -> hint fitnets 1 ep -> imitation 2 ep"
    # every method with a hint stage reports its final validation PSNR; student_sft has none
    hinted = table.set_index("method")["hint_val_psnr"]
    assert hinted.drop("student_sft").notna().all() and hinted.isna()["student_sft"]
    assert table[["gain_ci_low", "gain_ci_high", "gain_seed_mean"]].notna().all().all()
    assert table["psnr"].notna().all() and table["p_holm"].ge(table["wilcoxon_p"]).all()
    summary = pd.read_csv(out / "tables" / "summary.csv").set_index("model")
    # FitNets' adapters and the SFT branches are not part of the saved networks
    assert summary.loc["kd_fitnets", "params"] == summary.loc["student", "params"] == 49_285
    assert summary.loc["sft_teacher", "params"] == summary.loc["teacher", "params"] == 141_765
    assert (out / "figures" / "methods.png").stat().st_size > 10_000
    cache = out / "recon" / "demo" / "acc4" / "sft_teacher" / "seed0" / "cache" / "train.h5"
    assert cache.is_file()  # kd_sft's imitation reads the student-friendly teacher's cache
    # the sft stage's student cascades, of the teacher's best epoch, which the *_sft start from
    sft = cache.parents[1]
    assert torch.load(sft / "sft_student.pt", weights_only=True)["epoch"] == \
        torch.load(sft / "model.pt", weights_only=True)["epoch"]

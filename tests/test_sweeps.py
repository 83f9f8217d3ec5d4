"""Sweeps (kdmri.sweeps, the config's ``sweeps``): the settings a sweep makes, the
candidates' jobs (a setting that changes nothing of a job reuses it), the checks before
any job runs, the choice on validation data only, and a sweep through the real workflow
that re-runs only a new value's jobs and whose choice does not move when the test split
is swapped."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from kdmri.config import validate
from kdmri.errors import KdmriError
from kdmri.methods import recipe, study_models
from kdmri.specs import canonical, chain, evaluated, model_spec, resolved
from kdmri.sweeps import OWN, apply_choice, choose, label, setting_label, settings
from tests.workflow_utils import planned_jobs, snakemake, write_config


def study(**sweeps) -> dict:
    return validate({"models": ["zf", "teacher", "student", "kd", "kd_imitation"],
                     "tasks": {"recon": {"datasets": ["demo"], "accelerations": [4]}},
                     "sweeps": sweeps})


# ---------------------------------------------------------------------- settings
def test_grid_and_zip_settings_and_labels():
    sweep = {"models": ["kd"], "combine": "grid",
             "values": {"train.lr": [0.001, 0.0003], "kd.alpha": [0.2, 0.8]}}
    assert settings(sweep) == [
        {"train.lr": 0.001, "kd.alpha": 0.2}, {"train.lr": 0.001, "kd.alpha": 0.8},
        {"train.lr": 0.0003, "kd.alpha": 0.2}, {"train.lr": 0.0003, "kd.alpha": 0.8}]
    assert settings({**sweep, "combine": "zip"}) == [
        {"train.lr": 0.001, "kd.alpha": 0.2}, {"train.lr": 0.0003, "kd.alpha": 0.8}]
    assert setting_label({"train.lr": 1e-05, "train.amp": True}) == "1e-05,true"
    assert [label(v) for v in (0.3, 1, False, "sgd")] == ["0.3", "1", "false", "sgd"]
    with pytest.raises(KdmriError, match="zip needs lists of one length"):
        settings({"models": ["kd"], "combine": "zip",
                  "values": {"train.lr": [0.1, 0.2], "kd.alpha": [0.5]}})


# ---------------------------------------------------------------------- candidates' jobs
def test_a_candidate_trains_only_what_its_setting_changes():
    config = study(alpha={"models": ["kd"], "values": {"kd.alpha": [0.2, 0.5]}})
    # kd.alpha changes the imitation stage, not the attention stage it starts from
    assert canonical(config, "kd~alpha~0.2") == "kd~alpha~0.2"
    assert chain("kd~alpha~0.2", config) == ["attention", "kd~alpha~0.2"]
    spec = model_spec(config, "recon", "kd~alpha~0.2", 0)
    assert spec["loss_weights"] == {"reconstruction": 0.2, "imitation": 0.8}
    assert spec["init"] == "attention" and "teacher" not in spec
    # the config's own value is the model itself: one job
    assert canonical(config, "kd~alpha~0.5") == "kd"
    assert evaluated(config, "recon") == ["zf", "teacher", "student", "kd", "kd_imitation",
                                         "kd~alpha~0.2"]
    assert {"kd~alpha~0.2", "attention~alpha~0.2", "teacher~alpha~0.2"} <= set(
        study_models(config))


def test_a_setting_of_an_earlier_stage_or_the_teacher_makes_candidates_of_them():
    config = study(aw={"models": ["kd"], "values": {"kd.attention_weight": [3.0]}})
    assert chain("kd~aw~3.0", config) == ["attention~aw~3.0", "kd~aw~3.0"]
    assert model_spec(config, "recon", "attention~aw~3.0", 0)["loss_weights"] == {
        "attention": 3.0}
    assert model_spec(config, "recon", "kd~aw~3.0", 0)["init"] == "attention~aw~3.0"

    config = study(tlr={"models": ["kd"], "values": {"stages.teacher.lr": [0.01]}})
    made = resolved("kd~tlr~0.01", config)
    assert made.teacher == "teacher~tlr~0.01"  # the teacher trained under the setting
    assert model_spec(config, "recon", "teacher~tlr~0.01", 0)["train"]["lr"] == 0.01
    # the student learns from it, so its job differs from kd's even with the same loss
    spec = model_spec(config, "recon", "kd~tlr~0.01", 0)
    assert spec["teacher"] == "teacher~tlr~0.01"
    assert canonical(config, "kd~tlr~0.01") == "kd~tlr~0.01"
    # the name alone resolves the setting (kd~ over its own recipe)
    assert recipe("kd~tlr~0.01", config).overrides == (("stages.teacher.lr", 0.01),)


@pytest.mark.parametrize("sweep, message", [
    ({"models": ["kd"], "values": {"kd.alfa": [0.2]}}, r"'sweeps.s.values.kd.alfa'.*not a config key"),
    ({"models": ["kd"], "values": {"train.schedule": [1]}}, r"'sweeps.s.values.train.schedule'.*section"),
    ({"models": ["kd"], "values": {"kd.alpha": [0.2, 1.5]}}, r"'sweeps.s.values'.*'1.5'.*kd.alpha"),
    ({"models": ["kd_imitation"], "values": {"kd.attention_weight": [2.0, 4.0]}},
     r"'sweeps.s.values.kd.attention_weight': changes nothing"),
    ({"models": ["sft_teacher"], "values": {"kd.alpha": [0.2]}}, r"'sweeps.s.models.0'"),
    ({"models": ["kd"], "values": {"kd.alpha": [0.2, 0.2]}}, r"'0.2' appears twice"),
])
def test_a_sweep_is_checked_before_any_job_runs(sweep, message):
    with pytest.raises(KdmriError, match=message):
        study(s=sweep)


# ---------------------------------------------------------------------- the choice
PLAN = [{"task": "recon", "dataset": "demo", "acceleration": 4.0, "model": "kd",
         "sweep": "alpha", "keys": "kd.alpha", "setting": s, "candidate": c, "seeds": [f"{c}/0", f"{c}/1"]}
        for s, c in (("0.2", "kd~alpha~0.2"), ("0.5", "kd"), ("0.8", "kd~alpha~0.8"))]


def test_the_choice_is_the_highest_mean_validation_psnr_over_seeds():
    val = {"kd~alpha~0.2/0": 30.0, "kd~alpha~0.2/1": 31.0, "kd/0": 30.9, "kd/1": 30.9,
           "kd~alpha~0.8/0": 29.0, "kd~alpha~0.8/1": 33.0}
    table = choose(PLAN, val)
    assert list(table["val_psnr_mean"]) == [30.5, 30.9, 31.0]
    np.testing.assert_allclose(table["val_psnr_std"], [np.std([30, 31], ddof=1), 0.0,
                                                       np.std([29, 33], ddof=1)])
    assert list(table["chosen"]) == [False, False, True]
    tie = choose(PLAN, {**val, "kd/0": 31.0, "kd/1": 31.0})  # first listed wins a tie
    assert list(tie["chosen"]) == [False, True, False]


def test_the_tables_show_the_chosen_candidate_under_the_models_name_only():
    table = choose(PLAN, {"kd~alpha~0.2/0": 30.0, "kd~alpha~0.2/1": 30.0, "kd/0": 29.0,
                          "kd/1": 29.0, "kd~alpha~0.8/0": 28.0, "kd~alpha~0.8/1": 28.0})
    rows = [{"task": "recon", "dataset": "demo", "acceleration": 4.0, "model": m, "psnr": p}
            for m, p in (("student", 25.0), ("kd", 26.0), ("kd~alpha~0.2", 27.0),
                         ("kd~alpha~0.8", 28.0))]
    shown = apply_choice(pd.DataFrame(rows), table)
    assert sorted(zip(shown["model"], shown["psnr"], shown["setting"], strict=True)) == [
        ("kd", 27.0, "alpha: 0.2"), ("student", 25.0, "")]
    own = choose(PLAN[:1] + [{**PLAN[1], "sweep": "", "keys": "", "setting": OWN}],
                 {"kd~alpha~0.2/0": 20.0, "kd~alpha~0.2/1": 20.0, "kd/0": 29.0, "kd/1": 29.0})
    shown = apply_choice(pd.DataFrame(rows[:3]), own)
    assert sorted(zip(shown["model"], shown["psnr"], shown["setting"], strict=True)) == [
        ("kd", 26.0, OWN), ("student", 25.0, "")]


def test_the_sweep_figure_has_a_panel_per_cell_on_its_own_axis(tmp_path, monkeypatch):
    from kdmri import figures

    plan = PLAN + [{**e, "acceleration": 8.0} for e in PLAN]
    val = {f"{c}/{s}": v for c, v in (("kd~alpha~0.2", 30.0), ("kd", 30.5),
                                      ("kd~alpha~0.8", 30.2)) for s in (0, 1)}
    choose(plan, val).to_csv(tmp_path / "sweep.csv", index=False)
    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, out: drawn.append(fig))
    figures.sweep_figure(tmp_path / "sweep.csv", tmp_path / "sweep.png")
    axes = [ax for ax in drawn[0].axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["sweep alpha: recon demo 4x",
                                               "sweep alpha: recon demo 8x"]
    assert all(ax.get_xlabel() == "kd.alpha" for ax in axes)
    # every panel holds only its cell's curve: 3 settings, chosen 0.5 circled
    x, y = axes[1].lines[0].get_data()
    assert list(x) == [0.2, 0.5, 0.8] and list(y) == [30.0, 30.5, 30.2]


# ---------------------------------------------------------------------- the workflow
CELL = "results/test/recon/demo/acc4"


def sweep_study(path, values):
    return write_config(path, tasks__sr__datasets=[],
                        sweeps={"alpha": {"models": ["kd"], "values": {"kd.alpha": values}}})


@pytest.mark.slow
def test_a_sweep_through_the_workflow(tmp_path):
    config = sweep_study(tmp_path / "sweep.yaml", [0.2, 0.5])
    snakemake(tmp_path, config)
    tables = tmp_path / "results/test/tables"
    sweep = pd.read_csv(tables / "sweep.csv", dtype={"setting": str})
    assert list(sweep["setting"]) == ["0.2", "0.5"]
    assert list(sweep["candidate"]) == ["kd~alpha~0.2", "kd"]  # 0.5 is kd itself
    assert list(sweep["keys"]) == ["kd.alpha", "kd.alpha"]  # the swept config keys
    assert sweep["chosen"].sum() == 1
    chosen = sweep.loc[sweep["chosen"], "candidate"].item()
    summary = pd.read_csv(tables / "summary.csv", keep_default_na=False)
    assert sorted(summary["model"]) == ["kd", "student", "teacher", "zf"]
    kd = summary[summary["model"] == "kd"].iloc[0]
    assert kd["setting"] == f"alpha: {sweep.loc[sweep['chosen'], 'setting'].item()}"
    metrics = pd.read_csv(tmp_path / f"{CELL}/{chosen}/seed0/metrics.csv")
    assert kd["psnr_mean"] == pytest.approx(metrics["psnr"].mean())
    assert (tmp_path / "results/test/figures/sweep.png").stat().st_size > 0
    assert "alpha" in (tables / "summary.md").read_text()

    # a new value runs only its own jobs, and the tables after them
    more = sweep_study(tmp_path / "more.yaml", [0.2, 0.5, 0.8])
    jobs = planned_jobs(tmp_path, more)
    trained = sorted((rule, w.get("model")) for rule, w in jobs if rule.startswith("train"))
    assert trained == [("train_imitation", "kd~alpha~0.8")], jobs
    assert {rule for rule, _ in jobs} <= {"train_imitation", "predict", "evaluate", "sweep",
                                          "tables", "figure_sweep", "provenance"}, jobs

    # the choice reads no test data: with another test split it does not move, while
    # the test figures do
    inputs = tmp_path / f"{CELL}/inputs/seed0"
    before = (tables / "sweep.csv").read_bytes()
    shutil.copy(inputs / "val.h5", inputs / "test.h5")
    snakemake(tmp_path, config)
    assert (tables / "sweep.csv").read_bytes() == before
    swapped = pd.read_csv(tables / "summary.csv", keep_default_na=False)
    assert swapped.loc[swapped["model"] == "kd", "psnr_mean"].item() != kd["psnr_mean"]

"""The workflow as a Snakemake module of another workflow, run from another folder: the
tables (the ablation's too) and the report come out there."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import yaml

from tests.workflow_utils import ROOT

pytestmark = pytest.mark.slow

# What a user writes (config/README.md, "Use as a Snakemake module").
USER_SNAKEFILE = """\
configfile: "config/config.yaml"


module kdmri:
    snakefile:
        "{snakefile}"
    config:
        config


use rule * from kdmri
"""

MODELS = ["zf", "teacher", "student", "kd", "kd_imitation", "kd_attention"]


def user_snakemake(folder, *args: str) -> subprocess.CompletedProcess:
    """`snakemake` in the user's folder, on the user's Snakefile (found there by name)."""
    out = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", *args],
                         capture_output=True, text=True, timeout=900, cwd=folder)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def user_study(tmp_path_factory):
    """config/test.yaml reduced to its reconstruction task, with both ablations, run as a
    module from a folder that holds only the user's Snakefile and config."""
    folder = tmp_path_factory.mktemp("user")
    config = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    config["tasks"] = {"recon": config["tasks"]["recon"]}
    config["models"] = MODELS
    (folder / "config").mkdir()
    (folder / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "Snakefile").write_text(
        USER_SNAKEFILE.format(snakefile=ROOT / "workflow" / "Snakefile"))
    first = user_snakemake(folder)  # the default target: the module's rule all
    return folder, first


def test_module_run_writes_the_tables_in_the_users_folder(user_study):
    folder, _ = user_study
    out = folder / "results" / "test" / "tables"
    summary = pd.read_csv(out / "summary.csv")
    assert sorted(summary.model) == sorted(MODELS)
    assert set(summary.task) == {"recon"} and (summary.n_slices > 0).all()
    gain = pd.read_csv(out / "kd_gain.csv")
    assert list(gain.task) == ["recon"]
    ablation = pd.read_csv(out / "ablation.csv")
    assert len(ablation) == 1
    psnr = summary.set_index("model")["psnr_mean"]
    row = ablation.iloc[0]
    for model in ("kd_imitation", "kd_attention", "kd"):
        assert row[f"{model}_psnr_gain"] == pytest.approx(psnr[model] - psnr["student"],
                                                          abs=1e-6)
    assert (out / "provenance.json").is_file()
    for name in ("panel", "curves", "mask"):
        png = folder / "results" / "test" / "figures" / "recon" / "demo" / "acc4" / "seed0"
        assert (png / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_module_run_is_complete(user_study):
    folder, _ = user_study
    again = user_snakemake(folder, "--dry-run")
    assert "Nothing to be done" in again.stdout + again.stderr


def test_module_report_has_the_workflow_description_and_every_table(user_study):
    folder, _ = user_study
    report = folder / "report.html"
    user_snakemake(folder, "--report", str(report))
    html = report.read_text(errors="replace")
    for name in ("summary.csv", "summary.html", "kd_gain.csv", "ablation.csv",
                 "provenance.json", "panel.png"):
        assert name in html, name
    # the captions and the workflow description, read from the workflow's own folder
    assert "The ablation of the KD student" in html
    assert "kdmri study: knowledge distillation" in html

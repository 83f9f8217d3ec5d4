"""Snakemake conventions: snakefmt formatting, a clean `snakemake --lint`, one conda
environment for every job (its packages those of pyproject.toml), and every table
`kdmri tables` writes a declared output of rule tables."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml

from kdmri import tables
from kdmri.config import load_config
from kdmri.specs import methods_description
from tests.test_tables import metrics_frame, write_metrics
from tests.workflow_utils import ROOT, write_config

ENV_FILE = ROOT / "workflow" / "envs" / "kdmri.yaml"
STUDIES = sorted(p.name for p in (ROOT / "config").glob("*.yaml"))


def _run(cmd: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd)


def test_snakefiles_are_snakefmt_formatted():
    if importlib.util.find_spec("snakefmt") is None:
        pytest.skip("snakefmt is not installed (pip install -e '.[test]')")
    out = _run([sys.executable, "-m", "snakefmt", "--check", "Snakefile", "workflow"], ROOT)
    assert out.returncode == 0, (
        "run `snakefmt Snakefile workflow`:\n" + out.stdout[-3000:] + out.stderr[-3000:]
    )
    # the check saw every Snakefile and rule file, not an empty selection
    files = 2 + len(list((ROOT / "workflow" / "rules").glob("*.smk")))
    assert f"All {files} file(s) would be left unchanged" in out.stderr, out.stderr


@pytest.mark.parametrize("snakefile", ["Snakefile", "workflow/Snakefile"])
@pytest.mark.parametrize("study", [None, *STUDIES])
def test_lint_reports_nothing(tmp_path, snakefile, study):
    """`snakemake --lint` on the demo study (no --configfile) and on every study config.

    Snakemake prints each finding as "Lints for <rule or file>:" (exit status 1), and
    "Congratulations, your workflow is in a good condition!" (exit status 0) where it
    found none."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / snakefile),
           "--directory", str(tmp_path), "--lint"]
    if study:
        cmd += ["--configfile", str(ROOT / "config" / study)]
    out = _run(cmd, tmp_path)
    text = out.stdout + out.stderr
    assert "Lints for" not in text, text[-6000:]
    assert out.returncode == 0, text[-3000:]
    assert "Congratulations, your workflow is in a good condition!" in text, text[-3000:]


# A Snakefile that uses the workflow as a module and, once Snakemake has read it, prints
# each rule's name, shell command, conda environment, folder, outputs and whether it is a
# local rule (as Workflow.is_local decides under a cluster executor: in the set that
# `localrules:` and `localrule: True` fill, or without a command, as rule all; a local run
# runs every job locally, so only this tells) as one JSON line.
INTROSPECT = """\
import json
import os


configfile: {config!r}


module kdmri:
    snakefile:
        {snakefile!r}
    config:
        config


use rule * from kdmri

print("RULES " + json.dumps({{
    "KDMRI_SOURCE": os.environ.get("KDMRI_SOURCE"),
    "rules": [
        {{
            "name": r.name,
            "shell": r.shellcmd,
            "conda": r.conda_env,
            "basedir": str(r.basedir),
            "local": r.name in workflow._localrules or r.norun,
            "output": [[str(f), "report" in f.flags] for f in r.output],
        }}
        for r in workflow.rules
    ],
}}))
"""


def read_rules(folder: Path, config: Path) -> dict:
    """Every rule of the workflow, read by Snakemake itself (a parse; no job runs)."""
    (folder / "Snakefile").write_text(INTROSPECT.format(
        config=str(config), snakefile=str(ROOT / "workflow" / "Snakefile")))
    out = _run([sys.executable, "-m", "snakemake", "--snakefile", str(folder / "Snakefile"),
                "--directory", str(folder), "--list-rules"], folder)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("RULES "))
    return json.loads(line[len("RULES "):])


@pytest.fixture(scope="module")
def workflow_rules(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rules")
    return read_rules(folder, ROOT / "config" / "test.yaml")


def test_every_rule_that_runs_kdmri_names_the_conda_environment(workflow_rules):
    rules = {r["name"]: r for r in workflow_rules["rules"]}
    runs_kdmri = {name for name, r in rules.items()
                  if r["shell"] and r["shell"].lstrip().startswith("kdmri ")}
    # every rule but the target rule all runs one kdmri command
    assert runs_kdmri == set(rules) - {"all"}
    assert {"prepare", "train_teacher", "train_imitation", "cache_teacher", "predict",
            "tables", "figure_panel"} <= runs_kdmri
    for name in runs_kdmri:
        conda = rules[name]["conda"]
        assert conda, f"rule {name} names no conda environment"
        assert (Path(rules[name]["basedir"]) / conda).resolve() == ENV_FILE.resolve(), name
    assert rules["all"]["conda"] is None and rules["all"]["shell"] is None


def test_light_rules_run_in_the_snakemake_process(workflow_rules):
    """Under a cluster executor these run in the Snakemake process (`localrule: True`,
    which also holds for a module's rules under another name; test_slurm.py runs them)."""
    local = {r["name"] for r in workflow_rules["rules"] if r["local"]}
    assert local == {"all", "mask", "tables", "provenance", "figure_panel", "figure_curves",
                     "figure_mask", "figure_compression", "figure_methods", "sweep",
                     "figure_sweep"}


def _requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower()


def test_conda_environment_installs_the_package_and_its_dependencies(workflow_rules):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load(ENV_FILE.read_text())
    assert "conda-forge" in env["channels"]
    conda_specs = [d for d in env["dependencies"] if isinstance(d, str)]
    assert "python" + project["requires-python"].replace(" ", "") in conda_specs
    assert "pip" in conda_specs
    pip_lists = [d["pip"] for d in env["dependencies"] if isinstance(d, dict)]
    assert len(pip_lists) == 1
    requirements = [r for r in pip_lists[0] if not r.startswith("-e")]
    editable = [r for r in pip_lists[0] if r.startswith("-e")]
    # the package's runtime dependencies, with pyproject.toml's specifiers
    wanted = {_requirement_name(r): r.replace(" ", "") for r in project["dependencies"]}
    listed = {_requirement_name(r): r.replace(" ", "") for r in requirements}
    assert listed == wanted
    # and the package itself, editable from the checkout the workflow sets KDMRI_SOURCE to
    assert editable == ["-e ${KDMRI_SOURCE}"]
    assert workflow_rules["KDMRI_SOURCE"] == str(ROOT)
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"] == "kdmri"


def test_pip_resolves_the_editable_entry_to_this_package(tmp_path, workflow_rules):
    """pip expands ${KDMRI_SOURCE} in the requirements file conda writes from the pip list
    (in the folder of the environment file it is given): with the value the workflow sets,
    the entry is this checkout's kdmri package. Offline: no index, no build isolation."""
    if importlib.util.find_spec("pip") is None or importlib.util.find_spec("setuptools") is None:
        pytest.skip("pip and setuptools are needed to read the editable entry")
    env = yaml.safe_load(ENV_FILE.read_text())
    pip_list = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    requirements = tmp_path / "condaenv.requirements.txt"
    requirements.write_text("\n".join(r for r in pip_list if r.startswith("-e")) + "\n")
    out = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-index",
         "--no-build-isolation", "-r", str(requirements)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "KDMRI_SOURCE": workflow_rules["KDMRI_SOURCE"]})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert re.search(r"^Would install kdmri-", out.stdout, flags=re.M), out.stdout[-3000:]


@pytest.mark.parametrize("models", [
    ["zf", "teacher", "student", "kd"],
    ["zf", "teacher", "student", "kd", "kd_imitation", "kd_attention"],
    ["student", "kd_attention"],
])
def test_rule_tables_declares_every_table_kdmri_tables_writes(tmp_path, models):
    """The files `kdmri tables` writes for a study's models are the outputs of rule tables
    for that study, and the CSV and HTML tables are in the report."""
    config = write_config(tmp_path / "study.yaml", models=models)
    rules = {r["name"]: r for r in read_rules(tmp_path, config)["rules"]}
    declared = {Path(f).name: in_report for f, in_report in rules["tables"]["output"]}
    # what the tool writes from metrics of exactly these models
    written = tmp_path / "written"
    described = methods_description(load_config(config))  # what the rule passes (--methods)
    tables.write_tables(write_metrics(metrics_frame(models=models), tmp_path / "m"), written,
                        described)
    assert set(declared) == {p.name for p in written.iterdir()}
    assert ("methods.csv" in declared) == (len(set(models) & {"kd", "kd_imitation",
                                                              "kd_attention"}) >= 2)
    assert ("ablation.csv" in declared) == bool({"kd_imitation", "kd_attention"} & set(models))
    in_report = {name for name, flag in declared.items() if flag}
    assert in_report == {name for name in declared if name.endswith((".csv", ".html"))}
    assert (ROOT / "workflow" / "report" / "ablation.rst").is_file()


def _dry_run_commands(workdir: Path, config: Path) -> list[str]:
    """The shell command of every job of a study (``snakemake -n -p``: nothing runs)."""
    out = _run([sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
                "--directory", str(workdir), "--configfile", str(config), "-n", "-p",
                "--forceall"], workdir)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = (line.strip().removeprefix("Shell command: ") for line in
             (out.stdout + out.stderr).splitlines())
    return [line for line in lines if line.startswith("kdmri ")]


def test_jobs_loading_a_python_networks_model_file_pass_the_configs_consent(tmp_path):
    """The study config that names a family: python network is the consent to import it:
    the jobs that load such a model file (predict, cache-teacher, train --init/--teacher)
    get --trust-code; no other job does, and studies of built-in networks get none."""
    from tests.workflow_utils import copy_tree

    copy_tree(ROOT / "examples" / "user_network", tmp_path / "user")
    commands = _dry_run_commands(tmp_path / "user", tmp_path / "user" / "study.yaml")

    def loads_python_model_file(command: str) -> bool:
        if command.startswith("kdmri predict"):
            return "--model zf " not in command
        if command.startswith("kdmri train"):
            return "--init " in command or "--teacher " in command
        return command.startswith("kdmri cache-teacher")

    loading = [c for c in commands if loads_python_model_file(c)]
    assert loading and all("--trust-code" in c for c in loading)
    assert not any("--trust-code" in c for c in commands if c not in loading)
    (tmp_path / "test").mkdir()
    built_in = _dry_run_commands(tmp_path / "test", ROOT / "config" / "test.yaml")
    assert built_in and not any("--trust-code" in c for c in built_in)

"""The package metadata and environment.yml agree; the CLI is installed."""

import re
import subprocess
import sys
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower()


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r): r for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        wanted.update({_name(r): r for r in extra})
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_list = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {_name(r): r for r in pip_list if not r.startswith("-e")}
    assert set(listed) == set(wanted)
    for name, requirement in wanted.items():
        assert listed[name].replace(" ", "") == requirement.replace(" ", ""), name


def test_console_script_and_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "kdmri", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for command in ("prepare", "mask", "undersample", "train", "cache-teacher", "predict",
                    "evaluate", "tables", "figures"):
        assert command in out.stdout


def test_readme_gives_the_two_commands_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    commands = re.findall(r"^```(?:bash|sh)\n(.*?)\n```", readme, flags=re.S | re.M)
    setup = [c for c in commands if "pip install" in c]
    assert any("snakemake --cores all" in c for c in setup)
    test_commands = [c for c in setup if "pytest" in c]
    assert test_commands and test_commands[0].strip() in ci

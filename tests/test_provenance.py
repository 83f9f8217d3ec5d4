"""Tests for kdmri.provenance: the provenance record and its subcommand."""

from __future__ import annotations

import json
import subprocess

import pytest

from kdmri import __version__, provenance
from kdmri.cli import main
from kdmri.errors import KdmriError
from kdmri.io import save_torch
from kdmri.keys import digest

KEYS = {"kdmri_version", "git_commit", "git_dirty", "python", "torch", "snakemake",
        "platform", "models", "config_digest", "created_utc"}
CONFIG = {"tasks": {"recon": {"acceleration": [4, 8]}}, "seed": 0}


def model_file(path, device: str) -> None:
    save_torch({"format": "kdmri-model/1", "net": {"kind": "tiny"}, "state_dict": {},
                "device": device, "epoch": 3, "params": 123, "spec": {}}, path)


def test_cli_end_to_end(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # not a git repository: commit is null
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    model_file(tmp_path / "teacher.pt", "cuda:0")
    model_file(tmp_path / "student.pt", "cpu")
    out = tmp_path / "prov" / "provenance.json"
    assert main(["provenance", "--config-json", "config.json", "--out", str(out),
                 "--models", "teacher=teacher.pt", "student=student.pt"]) == 0
    record = json.loads(out.read_text())
    assert set(record) == KEYS
    assert record["kdmri_version"] == __version__
    assert record["models"]["teacher"]["device"] == "cuda:0"
    assert record["models"]["student"] == {"path": "student.pt", "device": "cpu",
                                           "epoch": 3, "params": 123}
    assert record["config_digest"] == digest(CONFIG)
    assert record["created_utc"].endswith("+00:00")
    assert record["git_commit"] is None and record["git_dirty"] is None


def test_config_forms(tmp_path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(CONFIG))
    assert provenance.read_config(str(path)) == CONFIG
    assert provenance.read_config(f"@{path}") == CONFIG
    assert provenance.read_config(json.dumps(CONFIG)) == CONFIG
    with pytest.raises(KdmriError, match="not found"):
        provenance.read_config(str(tmp_path / "missing.json"))
    path.write_text("[1, 2]")
    with pytest.raises(KdmriError, match="JSON object"):
        provenance.read_config(str(path))


def test_git_state(tmp_path) -> None:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin:/usr/local/bin"}
    try:
        subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True, env=env)
        (tmp_path / "a.txt").write_text("1")
        subprocess.run(["git", "add", "a.txt"], cwd=tmp_path, check=True, env=env)
        subprocess.run(["git", "commit", "-qm", "x"], cwd=tmp_path, check=True, env=env)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git not usable here")
    state = provenance.git_state(tmp_path)
    assert len(state["git_commit"]) == 40 and state["git_dirty"] is False
    (tmp_path / "a.txt").write_text("2")
    assert provenance.git_state(tmp_path)["git_dirty"] is True


def test_bad_model_arguments(tmp_path) -> None:
    with pytest.raises(KdmriError, match="NAME=PATH"):
        provenance.parse_models(["teacher"])
    with pytest.raises(KdmriError, match="not found"):
        provenance.collect_provenance(CONFIG, {"teacher": tmp_path / "none.pt"})

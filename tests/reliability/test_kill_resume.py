"""Kill and resume with the real Snakemake, and two Snakemake runs on one results folder.

A tiny study (recon, one acceleration, the teacher trained for a few epochs on the CPU;
its prepared data stores are written by the test, so the run starts at the mask) is
started with ``snakemake``; while it runs, a second ``snakemake`` on the same folder is
refused by Snakemake's lock. Once the teacher has finished its first epoch and begun the
next, the whole process tree is killed with SIGKILL. Running ``snakemake`` again (after
``--unlock``, with ``--rerun-incomplete``, as Snakemake tells its users) resumes the
teacher from its last epoch checkpoint, not from epoch 0, and ends with exactly the
weights of an uninterrupted run of the same job.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from kdmri.config import validate
from kdmri.io import load_torch
from kdmri.specs import model_spec
from tests.reliability.helpers import (
    ENV,
    ROOT,
    run_many,
    state_dicts_equal,
    write_prepared_stores,
)
from tests.workflow_utils import wait_for

pytestmark = pytest.mark.slow

EPOCHS = 8  # the epochs after the second are slack: the kill must land before the last
CONFIG = {
    "results": "results/kill",
    "device": "cpu",
    "seeds": [0],
    "models": ["zf", "teacher"],
    "datasets": {"demo": {"format": "demo", "size": 32}},
    "tasks": {"recon": {"datasets": ["demo"], "accelerations": [4]}},
    "train": {"epochs": EPOCHS, "batch_size": 4},
}
DATA = "results/kill/data/demo"
#: Slices per volume of the prepared stores the test writes (32 x 32 images).
VOLUMES = {"train": [8, 8, 8], "val": [8], "test": [4]}
CELL = "results/kill/recon/demo/acc4"
TARGET = f"{CELL}/teacher/seed0/model.pt"
LOG = "results/kill/logs/train/recon_demo_acc4_teacher_seed0.log"


def _snakemake_command(workdir: Path, configfile: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
            "--directory", str(workdir), "--configfile", str(configfile), "--cores", "2", *args]


def _snakemake(workdir, configfile, *args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(_snakemake_command(workdir, configfile, *args), capture_output=True,
                          text=True, timeout=timeout, env=ENV)


def _descendants(root_pid: int) -> list[int]:
    """Every process below ``root_pid`` (from /proc), children before their parents' kill."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [root_pid]
    while frontier:
        pid = frontier.pop()
        children = [p for p, parent in parents.items() if parent == pid]
        found += children
        frontier += children
    return found


def _wait_for(condition, timeout: float, what: str, process: subprocess.Popen) -> None:
    wait_for(condition, timeout, what, process, poll_s=0.02)


def _epochs_logged(log: Path) -> int:
    text = log.read_text() if log.exists() else ""
    return len(re.findall(rf"^epoch \d+/{EPOCHS} ", text, flags=re.M))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill_resume")
    workdir = root / "study"
    workdir.mkdir()
    configfile = root / "config.yaml"
    configfile.write_text(yaml.safe_dump(CONFIG))
    write_prepared_stores(workdir / DATA, VOLUMES, (32, 32))
    record: dict = {"workdir": workdir, "configfile": configfile}

    with open(root / "first.out", "w") as out, open(root / "first.err", "w") as err:
        first = subprocess.Popen(_snakemake_command(workdir, configfile, TARGET), stdout=out,
                                 stderr=err, env=ENV, start_new_session=True)
    try:
        locks = workdir / ".snakemake" / "locks"
        _wait_for(lambda: locks.is_dir() and any(locks.iterdir()), 120, "the lock", first)
        # a second run on the same results folder while the first holds the lock
        record["second"] = _snakemake(workdir, configfile, TARGET)
        record["first_alive_after_second"] = first.poll() is None

        log = workdir / LOG
        _wait_for(lambda: _epochs_logged(log) >= 1, 240, "the end of epoch 1", first)
        time.sleep(0.1)  # well inside epoch 2
        tree = _descendants(first.pid)
        record["log_at_kill"] = log.read_text()
        record["train_alive_at_kill"] = any(
            "train" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
            for pid in tree if Path(f"/proc/{pid}/cmdline").exists())
        os.killpg(first.pid, signal.SIGKILL)
        for pid in tree:  # jobs Snakemake may have started in a session of their own
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    time.sleep(0.2)
    record["alive_after_kill"] = [pid for pid in tree if Path(f"/proc/{pid}").exists()
                                  and "zombie" not in _state(pid)]
    out_dir = workdir / CELL / "teacher" / "seed0"
    record["state_at_kill"] = load_torch(out_dir / "checkpoint" / "last.pt")
    record["model_at_kill"] = (out_dir / "model.pt").exists()

    record["plain_rerun"] = _snakemake(workdir, configfile, TARGET)
    record["unlock"] = _snakemake(workdir, configfile, "--unlock")
    record["rerun"] = _snakemake(workdir, configfile, TARGET, "--rerun-incomplete")
    record["log_after"] = (workdir / LOG).read_text()

    # the uninterrupted run of the same job: the rule's own command on the same inputs
    spec = model_spec(validate(CONFIG), "recon", "teacher", 0)
    reference = root / "reference"
    record["reference"] = run_many(
        {"reference": ["train", "--spec", json.dumps(spec), "--inputs-dir",
                       workdir / CELL / "inputs" / "seed0", "--out-dir", reference,
                       "--device", "cpu", "--threads", "1"]}, root / "runs")["reference"]
    record["reference_dir"], record["out_dir"] = reference, out_dir
    return record


def _state(pid: int) -> str:
    try:
        return (Path(f"/proc/{pid}/status")).read_text().split("State:")[1].split("\n")[0]
    except (OSError, IndexError):
        return "zombie"


def test_a_second_snakemake_on_the_same_folder_is_refused(study):
    second = study["second"]
    output = second.stdout + second.stderr
    assert second.returncode != 0, output
    assert "Directory cannot be locked" in output, output
    assert "--unlock" in output
    assert study["first_alive_after_second"], "the first run did not survive the second"


def test_the_job_was_killed_in_the_middle_of_epoch_two(study):
    assert study["train_alive_at_kill"], study["log_at_kill"]
    assert study["alive_after_kill"] == []
    assert "done:" not in study["log_at_kill"]
    state = study["state_at_kill"]
    assert state["epoch"] >= 1 and state["completed"] is False
    assert state["epoch"] < EPOCHS
    assert not study["model_at_kill"]


def test_snakemake_says_how_to_go_on(study):
    plain = study["plain_rerun"]
    output = plain.stdout + plain.stderr
    assert plain.returncode != 0 and "--unlock" in output, output
    assert study["unlock"].returncode == 0, study["unlock"].stderr


def test_rerun_resumes_from_the_last_epoch_checkpoint(study):
    rerun = study["rerun"]
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    killed_at = study["state_at_kill"]["epoch"]
    assert re.search(rf"resuming from .*last\.pt after epoch {killed_at}\b", study["log_after"])
    assert killed_at >= 1
    epochs_run = re.findall(rf"^epoch (\d+)/{EPOCHS} ", study["log_after"], flags=re.M)
    assert [int(e) for e in epochs_run] == list(range(killed_at + 1, EPOCHS + 1))


def test_resumed_weights_equal_an_uninterrupted_run(study):
    assert study["reference"].returncode == 0, study["reference"].stderr
    resumed = load_torch(study["out_dir"] / "model.pt")
    reference = load_torch(study["reference_dir"] / "model.pt")
    assert state_dicts_equal(resumed["state_dict"], reference["state_dict"])
    assert resumed["epoch"] == reference["epoch"]
    assert state_dicts_equal(load_torch(study["out_dir"] / "checkpoint" / "last.pt")["model"],
                             load_torch(study["reference_dir"] / "checkpoint" / "last.pt")["model"])

"""Live training curves through the real workflow (config/test.yaml): switching
``logging.tensorboard`` changes no job's command and re-runs nothing, and a training run
with it writes a TensorBoard run, named by task, dataset, acceleration, model and seed,
whose scalars are history.csv's, with the weights of a run without it."""

from __future__ import annotations

import re

import pandas as pd
import pytest
import torch

from tests.workflow_utils import snakemake, write_config

pytestmark = pytest.mark.slow

TEACHER = "results/test/recon/demo/acc4/teacher/seed0"
RUN = "results/test/tensorboard/recon/demo/acc4/teacher/seed0"


def shell_commands(workdir, config, *targets) -> list[str]:
    """The sorted shell commands of a dry run (``-n -p``) of ``targets`` (default: all)."""
    out = snakemake(workdir, config, "-n", "-p", *targets)
    text = out.stdout + out.stderr
    commands = re.findall(r"^Shell command: (.*)$", text, re.M)
    assert commands, text[-2000:]
    return sorted(commands)


def test_switching_logging_changes_no_job_command(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard package (extras test, tracking)")
    plain = write_config(tmp_path / "plain.yaml")
    logged = write_config(tmp_path / "logged.yaml", logging__tensorboard=True,
                          logging__image_every=1)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert shell_commands(tmp_path / "a", plain) == shell_commands(tmp_path / "b", logged)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """The test study's 4x teacher trained twice, with and without logging."""
    pytest.importorskip("tensorboard", reason="the tensorboard package (extras test, tracking)")
    root = tmp_path_factory.mktemp("tracking")
    runs = {}
    for name, changes in {"plain": {}, "logged": {"logging__tensorboard": True,
                                                  "logging__image_every": 1}}.items():
        workdir = root / name
        workdir.mkdir()
        config = write_config(workdir / "study.yaml", **changes)
        snakemake(workdir, config, f"{TEACHER}/model.pt")
        runs[name] = (workdir, config)
    return runs


def test_the_run_holds_history_csv_and_the_weights_are_the_same(teachers):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    plain, _ = teachers["plain"]
    logged, _ = teachers["logged"]
    assert not (plain / "results/test/tensorboard").exists()
    a = torch.load(plain / TEACHER / "model.pt", map_location="cpu", weights_only=True)
    b = torch.load(logged / TEACHER / "model.pt", map_location="cpu", weights_only=True)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key

    events = EventAccumulator(str(logged / RUN), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    history = pd.read_csv(logged / TEACHER / "history.csv")
    steps = sorted(e.step for e in events.Scalars("step/loss"))
    steps_per_epoch = len(steps) // len(history)
    assert steps == list(range(1, len(history) * steps_per_epoch + 1))
    for column in history.columns.drop("epoch"):
        logged_values = {e.step: e.value for e in events.Scalars(f"epoch/{column}")}
        expected = {int(epoch) * steps_per_epoch: value
                    for epoch, value in zip(history["epoch"], history[column], strict=True)}
        assert logged_values.keys() == expected.keys(), column
        for step, value in expected.items():
            assert logged_values[step] == pytest.approx(value, rel=1e-6), (column, step)
    assert [p.step for p in events.Images("validation/panel")] == [
        int(e) * steps_per_epoch for e in history["epoch"]]


def test_switching_logging_either_way_reruns_nothing(teachers):
    for name, other in (("plain", {"logging__tensorboard": True}), ("logged", {})):
        workdir, _ = teachers[name]
        config = write_config(workdir / "switched.yaml", **other)
        out = snakemake(workdir, config, "-n", f"{TEACHER}/model.pt")
        assert "Nothing to be done" in out.stdout + out.stderr, (name, out.stdout[-2000:])

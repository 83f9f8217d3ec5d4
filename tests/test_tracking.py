"""Live training curves (kdmri.tracking): a training logged to TensorBoard has the same
weights as one without, its event files hold history.csv's numbers and every step's
losses, and a writer that fails does not lose the training.

The tests that read event files need the ``tensorboard`` package (the ``test`` and
``tracking`` extras) and are skipped with that reason without it; those with a stand-in
writer run everywhere.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from kdmri import tracking
from kdmri.cli import main
from kdmri.config import validate
from kdmri.errors import KdmriError
from kdmri.specs import model_spec
from kdmri.train import Trainer
from tests.reliability.helpers import study

EPOCHS = 3
#: The student-friendly teacher's stage sums three terms, and needs no teacher.
MODEL = "sft_teacher"
TERMS = ["reconstruction", "sft_reconstruction", "sft_imitation"]
#: Columns of history.csv that measure time, not the training.
TIMING = ["seconds", "samples_per_s"]


def spec() -> dict:
    return model_spec(study(epochs=EPOCHS, val_every=1), "recon", MODEL, 0)


def train(stores, out_dir: Path, tracker=None, logs: list | None = None) -> Trainer:
    inputs = stores.inputs_dir
    trainer = Trainer(spec(), inputs / "train.h5", inputs / "val.h5", out_dir,
                      log=(logs.append if logs is not None else lambda message: None),
                      progress=False, tracker=tracker)
    trainer.run()
    return trainer


def weights(path: Path, key: str = "state_dict") -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)[key]


def assert_same_training(plain: Path, logged: Path) -> None:
    """Identical model.pt and last.pt weights (every tensor, bit for bit) and history."""
    for file, key in (("model.pt", "state_dict"), ("checkpoint/last.pt", "model")):
        a, b = weights(plain / file, key), weights(logged / file, key)
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), (file, name)
    history_a = pd.read_csv(plain / "history.csv").drop(columns=TIMING)
    history_b = pd.read_csv(logged / "history.csv").drop(columns=TIMING)
    pd.testing.assert_frame_equal(history_a, history_b, check_exact=True)


@pytest.fixture(scope="module")
def plain(stores, tmp_path_factory) -> Path:
    """The training without logging that the others are compared with."""
    out = tmp_path_factory.mktemp("plain")
    train(stores, out)
    return out


# ---------------------------------------------------------------------- a failing writer
class FailingWriter:
    """A stand-in SummaryWriter that records its calls and raises OSError (a full disk)
    from call number ``fail_at`` on; ``fail_at`` None never fails."""

    def __init__(self, fail_at: int | None, calls: list):
        self.fail_at, self.calls = fail_at, calls

    def _call(self, name, *args):
        self.calls.append((name, *args))
        if self.fail_at is not None and len(self.calls) >= self.fail_at:
            raise OSError(28, "No space left on device")

    def add_scalar(self, tag, value, step):
        self._call("add_scalar", tag, value, step)

    def add_image(self, tag, image, step, dataformats):
        self._call("add_image", tag, image.shape, step)

    def flush(self):
        self._call("flush")

    def close(self):
        self._call("close")


@pytest.mark.parametrize("fail_at", [1, 7, 60])
def test_a_writer_that_raises_does_not_lose_the_training(stores, plain, tmp_path, fail_at):
    calls, logs = [], []
    tracker = tracking.TensorBoardLog(tmp_path / "tb", 1, logs.append,
                                      writer_factory=lambda d, s: FailingWriter(fail_at, calls))
    out = tmp_path / "run"
    train(stores, out, tracker, logs)
    assert_same_training(plain, out)
    warnings = [line for line in logs if "TensorBoard logging" in line]
    assert len(warnings) == 1 and "No space left on device" in warnings[0], logs
    assert "the training goes on without it" in warnings[0]
    # nothing was written after the failure, and the writer was closed once
    assert len(calls) == fail_at + 1 and calls[-1] == ("close",)
    assert not tracker.active and tracker.failed


def test_a_writer_that_cannot_be_opened_does_not_lose_the_training(stores, plain, tmp_path):
    def refuse(log_dir, purge_step):
        raise PermissionError(13, "Permission denied", str(log_dir))

    logs: list[str] = []
    out = tmp_path / "run"
    train(stores, out, tracking.TensorBoardLog(tmp_path / "tb", 1, logs.append, refuse), logs)
    assert_same_training(plain, out)
    assert sum("Permission denied" in line for line in logs) == 1


def test_the_writer_is_given_every_step_and_history_row_and_closed_after_a_crash(stores, tmp_path,
                                                                                monkeypatch):
    """A training that stops on an error still closes its run (what was logged is
    flushed); the steps logged before are those of the epochs that ran."""
    calls: list = []
    tracker = tracking.TensorBoardLog(tmp_path / "tb", 1, lambda m: None,
                                      writer_factory=lambda d, s: FailingWriter(None, calls))
    original = Trainer.train_epoch

    def crash_in_second_epoch(self, epoch):
        if epoch == 1:
            raise RuntimeError("killed")
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", crash_in_second_epoch)
    with pytest.raises(RuntimeError, match="killed"):
        train(stores, tmp_path / "run", tracker)
    assert calls[-1] == ("close",)
    steps = [c for c in calls if c[:2] == ("add_scalar", "step/loss")]
    trainer_steps = math.ceil(len(stores.targets["train"]) / 4)
    assert [c[3] for c in steps] == list(range(1, trainer_steps + 1))


# ---------------------------------------------------------------------- real event files
@pytest.fixture(scope="module")
def logged(stores, tmp_path_factory):
    """The same training with TensorBoard logging: its output folder and its run's scalars
    and images, read back with TensorBoard's EventAccumulator."""
    pytest.importorskip("tensorboard", reason="the tensorboard package (extras test, tracking)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = tmp_path_factory.mktemp("logged")
    logs: list[str] = []
    tracker = tracking.TensorBoardLog(root / "tb" / "run", 2, logs.append)
    train(stores, root / "out", tracker, logs)
    events = EventAccumulator(str(root / "tb" / "run"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return root / "out", events, logs


def scalars(events, tag: str) -> dict[int, float]:
    return {event.step: event.value for event in events.Scalars(tag)}


def test_weights_are_the_same_with_and_without_logging(plain, logged):
    out, _, logs = logged
    assert_same_training(plain, out)
    assert not [line for line in logs if "warning" in line]


def test_the_epoch_scalars_equal_history_csv(stores, logged):
    out, events, _ = logged
    history = pd.read_csv(out / "history.csv")
    steps_per_epoch = math.ceil(len(stores.targets["train"]) / 4)
    for column in history.columns.drop("epoch"):
        logged_values = scalars(events, f"epoch/{column}")
        expected = {int(e) * steps_per_epoch: v for e, v in zip(history["epoch"], history[column],
                                                               strict=True)}
        assert logged_values.keys() == expected.keys(), column
        for step, value in expected.items():  # TensorBoard stores float32
            assert logged_values[step] == pytest.approx(value, rel=1e-6), (column, step)
    assert {f"val_{t}" for t in TERMS} | {"val_loss", "val_psnr"} <= set(history.columns)


def test_every_step_logs_its_loss_terms_and_learning_rate(stores, logged):
    out, events, _ = logged
    history = pd.read_csv(out / "history.csv")
    n = len(stores.targets["train"])
    sizes = [min(4, n - start) for start in range(0, n, 4)]  # the batch sizes of an epoch
    steps = len(sizes)
    for name in ["loss", *TERMS]:
        values = scalars(events, f"step/{name}")
        assert sorted(values) == list(range(1, EPOCHS * steps + 1)), name
        for epoch in range(EPOCHS):  # history's train_<name>: the slice-weighted step mean
            epoch_values = [values[epoch * steps + b + 1] for b in range(steps)]
            mean = np.dot(epoch_values, sizes) / n
            assert mean == pytest.approx(history[f"train_{name}"][epoch], rel=1e-5), name
    lr = scalars(events, "step/lr")
    for epoch in range(EPOCHS):  # the rate of an epoch's first step is history's lr
        assert lr[epoch * steps + 1] == pytest.approx(history["lr"][epoch], rel=1e-6)
    assert lr[EPOCHS * steps] < lr[1]  # the cosine schedule decays


def test_the_validation_panel_is_written_every_few_epochs_and_at_the_end(stores, logged):
    _, events, _ = logged
    steps = math.ceil(len(stores.targets["train"]) / 4)
    panels = events.Images("validation/panel")
    assert [p.step for p in panels] == [2 * steps, 3 * steps]  # epoch 2 (every 2) and the last
    height, width = stores.shape
    assert (panels[-1].height, panels[-1].width) == (height, 4 * width)


def test_a_resumed_training_purges_the_interrupted_epoch(stores, tmp_path):
    """The events of steps from the resumed one on are dropped, so each step is drawn once."""
    pytest.importorskip("tensorboard", reason="the tensorboard package (extras test, tracking)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "tb"
    first = tracking.TensorBoardLog(run, 5, lambda m: None)
    first.start(1)
    for step in range(1, 8):
        first.step(step, 10.0 + step, {}, 0.1)
    first.close()
    second = tracking.TensorBoardLog(run, 5, lambda m: None)
    second.start(5)  # resumed after 4 steps
    for step in range(5, 9):
        second.step(step, 20.0 + step, {}, 0.1)
    second.close()
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    assert scalars(events, "step/loss") == {1: 11, 2: 12, 3: 13, 4: 14, 5: 25, 6: 26, 7: 27, 8: 28}


# ---------------------------------------------------------------------- pure parts
def test_panel_image_tiles_input_output_target_and_error_on_the_target_scale():
    rng = np.random.default_rng(0)
    target = rng.uniform(0, 2, (6, 5))
    output = target + rng.normal(0, 0.1, (6, 5))
    zf = (target + 1j * rng.normal(0, 0.5, (6, 5))).astype(np.complex64)
    panel = tracking.panel_image(zf, output, target)
    assert panel.shape == (1, 6, 20) and panel.dtype == np.float32
    peak = target.max()
    expected = [np.abs(zf) / peak, output / peak, target / peak,
                5.0 * np.abs(output - target) / peak]
    for i, tile in enumerate(expected):
        np.testing.assert_allclose(panel[0, :, 5 * i:5 * (i + 1)], np.clip(tile, 0, 1), atol=1e-6)


def test_a_run_is_named_by_its_output_folder_in_the_results_folder(tmp_path):
    results = tmp_path / "results" / "test"
    out = results / "recon" / "demo" / "acc4" / "kd" / "seed0"
    assert tracking.run_folder(results / "tensorboard", out) == (
        results / "tensorboard" / "recon" / "demo" / "acc4" / "kd" / "seed0")
    assert tracking.run_folder(tmp_path / "elsewhere" / "tb", out) == (
        tmp_path / "elsewhere" / "tb" / "seed0")


def test_the_environment_follows_the_config(monkeypatch):
    off = tracking.environment(validate({"results": "res"}))
    assert off == {tracking.ENV_DIR: "", tracking.ENV_IMAGE_EVERY: "5"}
    monkeypatch.setattr(tracking, "available", lambda: True)
    on = tracking.environment(validate({"results": "res",
                                        "logging": {"tensorboard": True, "image_every": 2}}))
    assert on == {tracking.ENV_DIR: os.path.join("res", "tensorboard"),
                  tracking.ENV_IMAGE_EVERY: "2"}
    monkeypatch.setattr(tracking, "available", lambda: False)
    with pytest.raises(KdmriError, match=r"logging\.tensorboard.*not installed.*\[tracking\]"):
        tracking.environment(validate({"logging": {"tensorboard": True}}))


def test_log_settings_read_the_options_then_the_environment(monkeypatch):
    monkeypatch.delenv(tracking.ENV_DIR, raising=False)
    monkeypatch.delenv(tracking.ENV_IMAGE_EVERY, raising=False)
    assert tracking.log_settings(None, None) == (None, 5)  # the schema's default
    monkeypatch.setenv(tracking.ENV_DIR, "results/tensorboard")
    monkeypatch.setenv(tracking.ENV_IMAGE_EVERY, "3")
    assert tracking.log_settings(None, None) == (Path("results/tensorboard"), 3)
    assert tracking.log_settings("other", 2) == (Path("other"), 2)
    assert tracking.log_settings("", None) == (None, 3)  # an empty folder: off
    monkeypatch.setenv(tracking.ENV_IMAGE_EVERY, "often")
    with pytest.raises(KdmriError, match="KDMRI_TENSORBOARD_IMAGE_EVERY.*'often'"):
        tracking.log_settings(None, None)


def test_the_cli_logs_where_the_environment_says(stores, tmp_path, monkeypatch):
    """``kdmri train`` as the workflow runs it: the folder from the environment, the run
    named by --out-dir relative to the folder's parent."""
    pytest.importorskip("tensorboard", reason="the tensorboard package (extras test, tracking)")
    import json

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(tracking.ENV_DIR, "results/tensorboard")
    monkeypatch.setenv(tracking.ENV_IMAGE_EVERY, "1")
    one_epoch = model_spec(study(epochs=1), "recon", "student", 0)
    out = Path("results/recon/tiny/acc4/student/seed0")
    assert main(["train", "--spec", json.dumps(one_epoch), "--inputs-dir", str(stores.inputs_dir),
                 "--out-dir", str(out), "--device", "cpu"]) == 0
    run = tmp_path / "results" / "tensorboard" / "recon" / "tiny" / "acc4" / "student" / "seed0"
    assert [p.name for p in run.iterdir() if p.name.startswith("events.out.tfevents")]
    assert sorted(p.name for p in (tmp_path / out).iterdir()) == [
        "checkpoint", "history.csv", "model.pt"]  # nothing else in the output folder

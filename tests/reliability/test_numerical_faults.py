"""Numerical faults: a loss (or gradient, or weight) that turns NaN or infinite stops
training with the epoch and batch named; the last good checkpoint stays usable, and
resuming from it ends with the weights of a run that never failed.

(``tests/test_train.py`` already poisons a training target in memory; here the faults
come from the loss, the gradients and the optimiser step, and the CLI is checked too.)
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from kdmri.checkpoints import load_model
from kdmri.errors import KdmriError
from kdmri.io import load_torch
from kdmri.train import Trainer
from tests.reliability.helpers import (
    assert_user_error,
    finite_state,
    run_many,
    spec,
    state_dicts_equal,
)

#: The tiny training split has 8 slices in batches of 4: 2 batches per epoch, 3 epochs.
BATCHES_PER_EPOCH = 2
FAULT_EPOCH, FAULT_BATCH = 2, 2
FAULT_CALL = (FAULT_EPOCH - 1) * BATCHES_PER_EPOCH + FAULT_BATCH

#: Child-process set-up: the reconstruction loss of the FAULT_CALL-th training batch turns
#: {value} (validation runs without gradients and is left alone).
LOSS_FAULT = """
import dataclasses
import torch
from kdmri.distill import terms

original = terms.TERMS["reconstruction"].function
calls = [0]

def reconstruction_loss(prediction, target, **options):
    loss = original(prediction, target, **options)
    if torch.is_grad_enabled():
        calls[0] += 1
        if calls[0] == {call}:
            return loss * float("{value}")
    return loss

terms.TERMS["reconstruction"] = dataclasses.replace(terms.TERMS["reconstruction"],
                                                    function=reconstruction_loss)
"""


@pytest.fixture(scope="module")
def cli_runs(stores, tmp_path_factory):
    """In one runner, each in its own process: a run that never fails, then for NaN and inf a
    run whose loss turns non-finite at epoch 2, batch 2, then the same command again."""
    root = tmp_path_factory.mktemp("numerical")
    args = ["train", "--spec", json.dumps(spec()), "--inputs-dir", stores.inputs_dir,
            "--device", "cpu", "--threads", "1"]
    commands = {"reference": [*args, "--out-dir", root / "reference"]}
    setup = {}
    for value in ("nan", "inf"):
        commands[f"{value}_fault"] = [*args, "--out-dir", root / value]
        setup[f"{value}_fault"] = LOSS_FAULT.format(call=FAULT_CALL, value=value)
        commands[f"{value}_resume"] = [*args, "--out-dir", root / value]
        setup[f"{value}_resume"] = (  # what the failed run left, seen just before resuming
            f"import os; print('model.pt before resume:', "
            f"os.path.exists({str(root / value / 'model.pt')!r}))")
    return root, run_many(commands, root / "runs", setup=setup)


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_cli_stops_naming_epoch_and_batch_and_resumes_exactly(cli_runs, value):
    root, results = cli_runs
    assert results["reference"].returncode == 0, results["reference"].stderr
    fault = results[f"{value}_fault"]
    err_lines = fault.stderr.strip().splitlines()
    assert "Traceback" not in fault.stderr and fault.returncode == 2, fault.stderr
    assert err_lines[-1].startswith("kdmri: error: training loss became")
    assert sum(line.startswith("kdmri: error:") for line in err_lines) == 1
    assert_user_error(
        type(fault)(fault.args, 2, "", err_lines[-1]),
        f"became {value}", f"epoch {FAULT_EPOCH}, batch {FAULT_BATCH}",
        "checkpoint/last.pt", f"epoch {FAULT_EPOCH - 1}")
    resume = results[f"{value}_resume"]
    assert "model.pt before resume: False" in resume.stdout
    assert resume.returncode == 0, resume.stderr
    assert re.search(rf"resuming from .*last\.pt after epoch {FAULT_EPOCH - 1}\b", resume.stderr)
    reference = load_torch(root / "reference" / "model.pt")
    resumed = load_torch(root / value / "model.pt")
    assert state_dicts_equal(resumed["state_dict"], reference["state_dict"])
    assert resumed["epoch"] == reference["epoch"]
    assert state_dicts_equal(load_torch(root / value / "checkpoint" / "last.pt")["model"],
                             load_torch(root / "reference" / "checkpoint" / "last.pt")["model"])


# ---------------------------------------------------------------------- in-process faults
def _trainer(stores, out_dir, logs=None) -> Trainer:
    return Trainer(spec(), stores.inputs_dir / "train.h5", stores.inputs_dir / "val.h5", out_dir,
                   log=(logs.append if logs is not None else lambda message: None),
                   progress=False)


@pytest.fixture(scope="module")
def reference(stores, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    _trainer(stores, out).run()
    return load_torch(out / "model.pt")["state_dict"]


def _fault_at(monkeypatch, epoch: int, batch: int, fault) -> None:
    """Call ``fault(trainer)`` right after the optimiser step of (epoch, batch), 1-based,
    or, for a gradient fault, right before it (``fault.before_step``)."""
    original_step = Trainer.train_epoch
    state = {}

    def train_epoch(self, e):
        state["epoch"], state["batch"] = e + 1, 0
        return original_step(self, e)

    original_backward = torch.Tensor.backward

    def backward(tensor, *args, **kwargs):
        original_backward(tensor, *args, **kwargs)
        state["batch"] += 1
        if (state.get("epoch"), state["batch"]) == (epoch, batch):
            fault(state["trainer"])

    original_init = Trainer.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        state["trainer"] = self

    monkeypatch.setattr(Trainer, "__init__", init)
    monkeypatch.setattr(Trainer, "train_epoch", train_epoch)
    monkeypatch.setattr(torch.Tensor, "backward", backward)


def _nan_gradient(trainer) -> None:
    """Finite loss, NaN gradient (as when a backward pass overflows)."""
    next(trainer.model.parameters()).grad[0].fill_(float("nan"))


def _assert_last_good_checkpoint_usable(out, stores, reference, monkeypatch):
    state = load_torch(out / "checkpoint" / "last.pt")
    assert state["epoch"] == FAULT_EPOCH - 1 and state["completed"] is False
    assert finite_state(state["model"]) and finite_state(state["best"]["state_dict"])
    assert not (out / "model.pt").exists()
    monkeypatch.undo()
    logs: list[str] = []
    _trainer(stores, out, logs).run()
    assert any(f"after epoch {FAULT_EPOCH - 1}" in message for message in logs), logs
    assert state_dicts_equal(load_torch(out / "model.pt")["state_dict"], reference)
    model, _ = load_model(out / "model.pt")
    assert finite_state(model.state_dict())


def test_nan_gradient_with_finite_loss_stops_before_the_weights_break(
        stores, reference, tmp_path, monkeypatch):
    """The loss is finite but its gradient is not: training stops at that step, before any
    checkpoint holds the NaN weights, so the checkpoint of the last epoch stays good."""
    _fault_at(monkeypatch, FAULT_EPOCH, BATCHES_PER_EPOCH, _nan_gradient)
    with pytest.raises(KdmriError) as info:
        _trainer(stores, tmp_path).run()
    message = str(info.value)
    assert f"epoch {FAULT_EPOCH}, batch {BATCHES_PER_EPOCH}" in message, message
    assert "gradient" in message and "nan" in message, message
    _assert_last_good_checkpoint_usable(tmp_path, stores, reference, monkeypatch)


def test_nan_gradient_in_the_last_batch_of_the_first_epoch_writes_no_checkpoint(
        stores, tmp_path, monkeypatch):
    _fault_at(monkeypatch, 1, BATCHES_PER_EPOCH, _nan_gradient)
    with pytest.raises(KdmriError, match=f"epoch 1, batch {BATCHES_PER_EPOCH}"):
        _trainer(stores, tmp_path).run()
    assert not (tmp_path / "checkpoint" / "last.pt").exists()
    assert not (tmp_path / "model.pt").exists()


def test_nan_gradient_is_caught_when_gradients_are_clipped(stores, tmp_path, monkeypatch):
    """With ``grad_clip`` the check reads the norm that clipping computed."""
    _fault_at(monkeypatch, FAULT_EPOCH, BATCHES_PER_EPOCH, _nan_gradient)
    clipped = Trainer(spec(grad_clip=1.0), stores.inputs_dir / "train.h5",
                      stores.inputs_dir / "val.h5", tmp_path, log=lambda message: None,
                      progress=False)
    with pytest.raises(KdmriError, match=f"gradient became nan at epoch {FAULT_EPOCH}, "
                                         f"batch {BATCHES_PER_EPOCH}"):
        clipped.run()
    assert load_torch(tmp_path / "checkpoint" / "last.pt")["epoch"] == FAULT_EPOCH - 1
    assert not (tmp_path / "model.pt").exists()


def test_weights_that_overflow_are_never_checkpointed(stores, reference, tmp_path, monkeypatch):
    """A weight that becomes infinite in the last step of an epoch (a finite loss, a finite
    gradient, a step too large) stops training before the epoch's checkpoint is written."""

    def overflow(trainer):
        original = trainer.optimizer.step

        def step(*args, **kwargs):
            result = original(*args, **kwargs)
            with torch.no_grad():
                next(trainer.model.parameters()).view(-1)[0] = float("inf")
            trainer.optimizer.step = original
            return result

        trainer.optimizer.step = step

    _fault_at(monkeypatch, FAULT_EPOCH, BATCHES_PER_EPOCH, overflow)
    with pytest.raises(KdmriError) as info:
        _trainer(stores, tmp_path).run()
    message = str(info.value)
    assert f"epoch {FAULT_EPOCH}" in message and "weights" in message, message
    _assert_last_good_checkpoint_usable(tmp_path, stores, reference, monkeypatch)

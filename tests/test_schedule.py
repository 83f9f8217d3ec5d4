"""The learning-rate schedule: its formula, and what a partially given schedule trains with."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from kdmri.config import validate
from kdmri.specs import model_spec
from kdmri.train import Trainer, lr_factor
from tests.reliability.helpers import PAIRS, STUDENT_NET, TEACHER_NET

STEPS = 5  # optimiser steps per epoch in the formula tests


def full(**schedule) -> dict:
    return validate({"train": {"schedule": schedule}})["train"]["schedule"]


def test_step_schedule_multiplies_by_gamma_every_step_epochs():
    schedule = full(kind="step", step_epochs=2, gamma=0.5)
    factors = [lr_factor(schedule, 1e-3, step, STEPS, 6 * STEPS) for step in range(6 * STEPS)]
    assert factors == [0.5 ** (step // (2 * STEPS)) for step in range(6 * STEPS)]


def test_cosine_schedule_with_warmup_follows_its_formula():
    lr, min_lr, total = 1e-3, 1e-4, 10 * STEPS
    schedule = full(kind="cosine", min_lr=min_lr, warmup_epochs=2)
    warmup = 2 * STEPS
    for step in range(total):
        if step < warmup:
            expected = (step + 1) / warmup
        else:
            floor, done = min_lr / lr, (step - warmup) / (total - warmup)
            expected = floor + (1 - floor) * (1 + math.cos(math.pi * done)) / 2
        assert lr_factor(schedule, lr, step, STEPS, total) == pytest.approx(expected, rel=1e-12)
    assert lr_factor(schedule, lr, total, STEPS, total) == pytest.approx(min_lr / lr)


def test_constant_schedule():
    assert {lr_factor(full(kind="constant"), 1e-3, s, STEPS, 50) for s in range(50)} == {1.0}


def _trained_lrs(stores, tmp_path, schedule: dict) -> list[float]:
    config = validate({
        "datasets": {"tiny": {"format": "demo"}},
        "tasks": {"recon": {"datasets": ["tiny"], "teacher": TEACHER_NET, "student": STUDENT_NET,
                            "pairs": PAIRS}},
        "train": {"epochs": 3, "batch_size": 4, "lr": 1e-3, "schedule": schedule},
    })
    trainer = Trainer(model_spec(config, "recon", "student", 0), stores.inputs_dir / "train.h5",
                      stores.inputs_dir / "val.h5", tmp_path, log=lambda message: None,
                      progress=False)
    trainer.run()
    return pd.read_csv(tmp_path / "history.csv")["lr"].tolist()


def test_a_partial_step_schedule_trains_with_the_documented_defaults(stores, tmp_path):
    # history.csv logs the learning rate each epoch trained with. {kind: step} decays by 0.1
    # every 40 epochs, so a 3-epoch run keeps its rate (it used to decay every epoch)
    assert _trained_lrs(stores, tmp_path / "a", {"kind": "step"}) == pytest.approx([1e-3] * 3)
    assert _trained_lrs(stores, tmp_path / "b", {"kind": "step", "step_epochs": 1}) == \
        pytest.approx([1e-3, 1e-4, 1e-5])

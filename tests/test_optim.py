"""The optimiser table (kdmri.optim): the trainer and the benchmark build the same optimiser
from the same settings, for every name the schema allows."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kdmri.bench import BareLoop
from kdmri.errors import KdmriError
from kdmri.optim import OPTIMIZERS, build_optimizer
from kdmri.train import Trainer
from tests.test_train import spec

SCHEMA = Path(__file__).resolve().parents[1] / "kdmri" / "schemas" / "config.schema.yaml"


def hyper_parameters(optimizer) -> list[dict]:
    return [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]


def test_the_table_holds_the_optimisers_the_schema_allows():
    train = yaml.safe_load(SCHEMA.read_text())["$defs"]["train"]["properties"]
    assert sorted(OPTIMIZERS) == sorted(train["optimizer"]["enum"])


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_trainer_and_benchmark_build_the_same_optimiser(stores, tmp_path, name):
    model_spec = spec("student", lr=3e-3)
    model_spec["train"] = dict(model_spec["train"], optimizer=name, weight_decay=1e-4)
    inputs = stores.inputs_dir
    trainer = Trainer(model_spec, inputs / "train.h5", inputs / "val.h5", tmp_path,
                      log=lambda message: None, progress=False)
    bare = BareLoop(model_spec, inputs / "train.h5", trainer.device)
    assert type(trainer.optimizer) is type(bare.optimizer)
    # the trainer's scheduler sets the group's lr from initial_lr; compare the base values
    trainer_groups = hyper_parameters(trainer.optimizer)
    for group in trainer_groups:
        group["lr"] = group.pop("initial_lr")
    assert trainer_groups == hyper_parameters(bare.optimizer)
    assert trainer_groups[0]["lr"] == 3e-3 and trainer_groups[0]["weight_decay"] == 1e-4
    if name == "sgd":
        assert trainer_groups[0]["momentum"] == 0.9


def test_unknown_optimiser_is_a_one_line_error():
    with pytest.raises(KdmriError, match="unknown optimizer 'lbfgs'; known: adam, adamw, sgd"):
        build_optimizer([], {"optimizer": "lbfgs", "lr": 1e-3, "weight_decay": 0.0})

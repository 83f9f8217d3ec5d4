"""The feature-distillation terms trained end to end: FitNets, FSP, SP, CC (pooled and
embedded), VID, AB, ICKD and batch-normalised attention, with the teacher run frozen in every
step (``--teacher``).

Each term trains, and decreases; the values the trainer logs equal the term's function
applied to features captured by hooks on independent copies of the teacher and the student;
the modules a term learns (FitNets' adapters, CC's embeddings, ...) train with the student,
are in the resume checkpoint but not in ``model.pt``, and come back on resume.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch

from kdmri.batch import make_batch
from kdmri.checkpoints import load_model, write_model_file
from kdmri.cli import main
from kdmri.data.store import SliceDataset
from kdmri.distill import TERMS, FeatureHooks
from kdmri.distill.terms import INPUTS
from kdmri.errors import KdmriError
from kdmri.models import build_model, count_parameters, place_model
from kdmri.train import Trainer
from tests.reliability.helpers import STUDENT_NET, TEACHER_NET
from tests.test_train import (  # noqa: F401 (teacher_cache is a fixture)
    SimulatedCrash,
    assert_same_weights,
    crash_at_epoch,
    load_weights_only,
    spec,
    teacher_cache,
)

FEATURE_TERMS = ["fitnets", "fsp", "sp", "cc", "attention_batchnorm", "cc_embedded", "vid", "ab",
                 "ickd"]
#: FSP per cascade between the first and the last hidden convolution of each network
#: (teacher 4 convs: 1 and 3; student 3 convs: 1 and 2).
FSP_PAIRS = [[[1, 3], [1, 2]]]
EPOCHS = 4


def feature_spec(term: str, epochs: int = EPOCHS, lr: float = 3e-3) -> dict:
    """A stage weighing ``term`` alone (pairs [[3, 2]]; FSP_PAIRS for fsp)."""
    base = spec("attention", lr=lr)
    base["train"] = dict(base["train"], epochs=epochs)
    base["loss_weights"] = {term: 1.0}
    if term == "fsp":
        base["fsp_pairs"] = FSP_PAIRS
    return base


def make_trainer(stores, out_dir, model_spec: dict, teacher, **kwargs) -> Trainer:
    inputs = stores.inputs_dir
    return Trainer(model_spec, inputs / "train.h5", inputs / "val.h5", out_dir, teacher=teacher,
                   log=lambda message: None, progress=False, **kwargs)


def val_batch(stores):
    dataset = SliceDataset(stores.inputs_dir / "val.h5", keys=["zf", "target"], extra=["mask"])
    data = dataset.batch(np.arange(len(dataset)))
    return make_batch(data["zf"], dataset.extra["mask"], data["target"], torch.device("cpu"))


def captured(model, paths, batch) -> list[torch.Tensor]:
    with torch.no_grad(), FeatureHooks(model, paths) as hooks:
        model(batch.image, batch.kspace, batch.mask)
        return hooks.pop()


def independent_term(term: str, student, teacher_pt, learnt: dict, batch) -> float:
    """``term`` on features captured by hooks on copies of the student and the teacher,
    at the modules the pairs name (written out here, not taken from the trainer), with the
    trainer's learnt modules (input name -> modules) where the term takes some."""
    student = copy.deepcopy(student).eval()
    teacher, _ = load_model(teacher_pt, expect_net=TEACHER_NET)
    teacher = place_model(teacher, "cpu").eval()  # the layout of every stage's networks
    if term == "fsp":
        cascades = range(TEACHER_NET["cascades"])
        # conv k of a plain CNN is followed by its ReLU at index 2k - 1
        t = captured(teacher, [f"cascades.{c}.cnn.{i}" for c in cascades for i in (1, 5)], batch)
        s = captured(student, [f"cascades.{c}.cnn.{i}" for c in cascades for i in (1, 3)], batch)
        s_pairs = list(zip(s[::2], s[1::2], strict=True))
        t_pairs = list(zip(t[::2], t[1::2], strict=True))
        value = TERMS[term].function(s_pairs, t_pairs)
    else:
        t = captured(teacher, ["cascades.0.cnn.5", "cascades.1.cnn.5"], batch)  # conv 3
        s = captured(student, ["cascades.0.cnn.3", "cascades.1.cnn.3"], batch)  # conv 2
        args = (s, t, *(learnt[i] for i in TERMS[term].inputs if INPUTS[i].learnt))
        with torch.no_grad():
            value = TERMS[term].function(*args)
    return value.item()


@pytest.mark.parametrize("term", FEATURE_TERMS)
def test_feature_term_trains_decreases_and_logs_the_term(teacher_cache, stores, tmp_path, term):  # noqa: F811
    teacher_pt, _ = teacher_cache
    trainer = make_trainer(stores, tmp_path, feature_spec(term), teacher_pt)
    before = independent_term(term, trainer.model, teacher_pt, trainer.plan.learnt,
                              val_batch(stores))
    trainer.run()
    history = pd.read_csv(tmp_path / "history.csv")
    assert {f"train_{term}", f"val_{term}"} <= set(history.columns)
    np.testing.assert_allclose(history["train_loss"], history[f"train_{term}"], rtol=1e-6)
    assert history[f"val_{term}"].iloc[-1] < history[f"val_{term}"].iloc[0] < before
    # the last row's validation value: the term of the last weights on the whole val split
    # (CC ends near 1e-7, where float32 differences of near-equal kernels are relative 1e-4)
    after = independent_term(term, trainer.model, teacher_pt, trainer.plan.learnt,
                             val_batch(stores))
    np.testing.assert_allclose(history[f"val_{term}"].iloc[-1], after, rtol=1e-5,
                               atol=1e-5 * abs(before))
    assert after > 0 or term == "vid"  # VID's log-likelihood less its constant may be < 0
    # the learnt modules: in the resume checkpoint under their input's name, not in model.pt
    last = load_weights_only(tmp_path / "checkpoint" / "last.pt")
    names = [i for i in TERMS[term].inputs if INPUTS[i].learnt]
    for name in names:
        assert_same_weights(last[name], trainer.plan.learnt[name].state_dict())
    assert set(trainer.plan.learnt) == set(names)
    student = build_model(STUDENT_NET)
    assert load_weights_only(tmp_path / "model.pt")["state_dict"].keys() == \
        student.state_dict().keys()


@pytest.mark.parametrize("term", FEATURE_TERMS)
def test_trainer_losses_equal_the_term_of_independent_features(teacher_cache, stores, tmp_path,  # noqa: F811
                                                               term):
    teacher_pt, _ = teacher_cache
    trainer = make_trainer(stores, tmp_path, feature_spec(term), teacher_pt)
    trainer.model.eval()
    batch, extra = trainer._batch(trainer.val_data, torch.arange(3))
    with torch.no_grad(), FeatureHooks(trainer.model, trainer.feature_paths) as hooks:
        total, terms, _ = trainer.losses(batch, extra, hooks)
    assert list(terms) == [term]
    expected = independent_term(term, trainer.model, teacher_pt, trainer.plan.learnt, batch)
    np.testing.assert_allclose(terms[term].item(), expected, rtol=1e-5)
    np.testing.assert_allclose(total.item(), expected, rtol=1e-5)


def test_fitnets_adapters_stay_out_of_the_student_and_resume(teacher_cache, stores, tmp_path,  # noqa: F811
                                                            monkeypatch):
    teacher_pt, _ = teacher_cache
    fitnets = feature_spec("fitnets", epochs=3)
    reference = make_trainer(stores, tmp_path / "reference", fitnets, teacher_pt)
    initial = {k: v.clone() for k, v in reference.adapters.state_dict().items()}
    reference.run()
    # one 1x1 convolution per pair and cascade: student 4 channels -> teacher 4 channels
    assert [tuple(a.weight.shape) for a in reference.adapters] == [(4, 4, 1, 1)] * 2
    assert any(not torch.equal(initial[k], v) for k, v in reference.adapters.state_dict().items())
    model_file = load_weights_only(tmp_path / "reference" / "model.pt")
    student = build_model(STUDENT_NET)
    assert model_file["params"] == count_parameters(student) == reference.params
    assert model_file["state_dict"].keys() == student.state_dict().keys()
    load_model(tmp_path / "reference" / "model.pt", expect_net=STUDENT_NET)
    last = load_weights_only(tmp_path / "reference" / "checkpoint" / "last.pt")
    assert_same_weights(last["adapters"], reference.adapters.state_dict())

    resumed = crashed_and_resumed(stores, tmp_path / "resumed", fitnets, teacher_pt, monkeypatch)
    assert_same_weights(resumed.adapters.state_dict(), reference.adapters.state_dict())
    assert_same_weights(resumed.model.state_dict(), reference.model.state_dict())


def crashed_and_resumed(stores, out, spec, teacher_pt, monkeypatch):  # noqa: F811
    """A trainer of ``spec`` stopped after its first epoch, then run again to the end from
    its checkpoint (asserted to resume at epoch 1)."""
    crash_at_epoch(monkeypatch, 1)
    with pytest.raises(SimulatedCrash):
        make_trainer(stores, out, spec, teacher_pt).run()
    monkeypatch.undo()
    resumed = make_trainer(stores, out, spec, teacher_pt)
    resumed.run()
    assert resumed.start_epoch == 1
    return resumed


@pytest.mark.parametrize("term", ["cc_embedded", "vid", "ab", "ickd"])
def test_every_terms_learnt_modules_come_back_on_resume(teacher_cache, stores, tmp_path,  # noqa: F811
                                                        monkeypatch, term):
    """A run stopped after its first epoch and resumed ends with the weights, network and
    learnt modules alike, of the run that was not stopped."""
    teacher_pt, _ = teacher_cache
    model_spec = feature_spec(term, epochs=3)
    reference = make_trainer(stores, tmp_path / "reference", model_spec, teacher_pt)
    reference.run()
    resumed = crashed_and_resumed(stores, tmp_path / "resumed", model_spec, teacher_pt,
                                  monkeypatch)
    (name,) = [i for i in TERMS[term].inputs if INPUTS[i].learnt]
    assert_same_weights(resumed.plan.learnt[name].state_dict(),
                        reference.plan.learnt[name].state_dict())
    assert_same_weights(resumed.model.state_dict(), reference.model.state_dict())


def test_the_papers_student_keeps_its_parameter_count_under_fitnets(stores, tmp_path):
    """DC-CNN 5 x 5 / 5 x 3 with 32 channels: model.pt holds the student's 49,285
    parameters; the 5 adapters (32 -> 32, 1,056 parameters each) are not in it."""
    teacher_net = {"family": "dccnn", "cascades": 5, "convs": 5, "channels": 32}
    student_net = {"family": "dccnn", "cascades": 5, "convs": 3, "channels": 32}
    torch.manual_seed(0)
    teacher_spec = dict(spec("teacher"), net=teacher_net)
    write_model_file(tmp_path / "teacher.pt", teacher_spec, build_model(teacher_net).state_dict())
    fitnets = dict(feature_spec("fitnets", epochs=1), net=student_net, teacher_net=teacher_net)
    trainer = make_trainer(stores, tmp_path / "fitnets", fitnets, tmp_path / "teacher.pt")
    trainer.run()
    assert count_parameters(trainer.adapters) == 5 * 1_056
    assert load_weights_only(tmp_path / "fitnets" / "model.pt")["params"] == 49_285


def test_a_stage_takes_cached_and_live_teacher_inputs_together(teacher_cache, stores,  # noqa: F811
                                                                tmp_path):
    """Imitation and attention from the cache, FSP from the live teacher, in one stage."""
    teacher_pt, cache = teacher_cache
    mixed = dict(feature_spec("fsp", epochs=1),
                 loss_weights={"imitation": 0.5, "attention": 1.0, "fsp": 0.25})
    trainer = make_trainer(stores, tmp_path, mixed, teacher_pt, cache_dir=cache)
    trainer.model.eval()
    batch, extra = trainer._batch(trainer.val_data, torch.arange(3))
    with torch.no_grad(), FeatureHooks(trainer.model, trainer.feature_paths) as hooks:
        total, terms, _ = trainer.losses(batch, extra, hooks)
    assert list(terms) == ["imitation", "attention", "fsp"]
    fsp = independent_term("fsp", trainer.model, teacher_pt, {}, batch)
    np.testing.assert_allclose(terms["fsp"].item(), fsp, rtol=1e-5)
    np.testing.assert_allclose(
        total.item(), 0.5 * terms["imitation"].item() + terms["attention"].item() + 0.25 * fsp,
        rtol=1e-5)
    trainer.run()
    history = pd.read_csv(tmp_path / "history.csv")
    assert {"train_imitation", "train_attention", "train_fsp"} <= set(history.columns)


def test_feature_terms_need_the_teacher_and_existing_layers(teacher_cache, stores, tmp_path):  # noqa: F811
    teacher_pt, _ = teacher_cache
    with pytest.raises(KdmriError) as error:
        make_trainer(stores, tmp_path, feature_spec("sp"), None)
    assert "\n" not in str(error.value) and "--teacher" in str(error.value)
    bad = dict(feature_spec("fsp"), fsp_pairs=[[[1, 3], [1, "cascades.0.cnn.9"]]])
    with pytest.raises(KdmriError) as error:
        make_trainer(stores, tmp_path, bad, teacher_pt)
    message = str(error.value)
    assert "\n" not in message and "'cascades.0.cnn.9'" in message
    assert "'cascades.0.cnn.3'" in message  # the modules there are, listed
    bad = dict(feature_spec("fitnets"), pairs=[[3, "cascades.0.cnn.3"]])
    with pytest.raises(KdmriError, match="teacher's layers give 2 features, the student's 1"):
        make_trainer(stores, tmp_path, bad, teacher_pt)
    bad = dict(feature_spec("fsp"), fsp_pairs=[[[1, "cascades.0.cnn.5"], [1, 2]]])
    with pytest.raises(KdmriError, match="name 2 and 1 modules"):
        make_trainer(stores, tmp_path, bad, teacher_pt)


def test_cli_trains_a_feature_stage_with_the_teacher(teacher_cache, stores, tmp_path):  # noqa: F811
    from kdmri.cli import _check_train_spec

    teacher_pt, _ = teacher_cache
    fsp = feature_spec("fsp", epochs=1)
    with pytest.raises(KdmriError, match="'fsp_pairs' is required by the fsp loss"):
        _check_train_spec({k: v for k, v in fsp.items() if k != "fsp_pairs"})
    with pytest.raises(KdmriError, match="fsp_pairs"):
        _check_train_spec(dict(fsp, fsp_pairs=[[1, 3], [1, 2]]))
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(fsp))
    argv = ["train", "--spec", f"@{spec_path}", "--inputs-dir", str(stores.inputs_dir),
            "--teacher", str(teacher_pt), "--out-dir", str(tmp_path / "out"), "--device", "cpu"]
    assert main(argv) == 0
    assert "train_fsp" in pd.read_csv(tmp_path / "out" / "history.csv").columns

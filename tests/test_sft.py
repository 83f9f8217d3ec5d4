"""The student-friendly teacher (SFT): the branches, the stage's loss, its training and the
teacher it leaves for every later stage (:mod:`kdmri.distill.sft`).

The branches and the loss are checked against compositions written out here: each cascade
as ``DC(x + cnn(x))`` with :class:`~kdmri.mri.DataConsistency`, the L1 terms as
``|a - b|.mean()``.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch

from kdmri.checkpoints import load_model
from kdmri.cli import _check_train_spec, main
from kdmri.data.store import read_store
from kdmri.distill.hooks import FeatureHooks
from kdmri.distill.sft import StudentBranches
from kdmri.errors import KdmriError
from kdmri.methods import MODELS, init_file, recipe
from kdmri.models import build_model, count_parameters, place_model
from kdmri.mri import DataConsistency
from kdmri.train import Trainer
from tests.reliability.helpers import PAIRS, STUDENT_NET, TEACHER_NET
from tests.test_feature_terms import val_batch
from tests.test_train import (
    SimulatedCrash,
    assert_same_weights,
    crash_at_epoch,
    load_weights_only,
    spec,
)

EPOCHS = 4
#: Three cascades: two branches.
TEACHER3 = dict(TEACHER_NET, cascades=3)
STUDENT3 = dict(STUDENT_NET, cascades=3)


def sft_spec(epochs: int = EPOCHS, lr: float = 3e-3, **weights) -> dict:
    base = spec("sft_teacher", lr=lr)
    base["train"] = dict(base["train"], epochs=epochs)
    base["loss_weights"] = dict(base["loss_weights"], **weights)
    return base


def make_trainer(stores, out_dir, model_spec: dict) -> Trainer:
    inputs = stores.inputs_dir
    return Trainer(model_spec, inputs / "train.h5", inputs / "val.h5", out_dir,
                   log=lambda message: None, progress=False)


def cascade(module, image, dc):
    """One DC-CNN cascade written out: data consistency of the image plus its CNN residual."""
    return dc(image + module.cnn(image))


def manual_branches(teacher, student, batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The teacher's output and the branch outputs, cascade by cascade: branch k is teacher
    cascades 1..k, then student cascades k+1..K (1-based)."""
    dc = DataConsistency(batch.kspace, batch.mask, complex=teacher.complex)
    images = [batch.image]
    for module in teacher.cascades:
        images.append(cascade(module, images[-1], dc))
    branches = []
    for k in range(1, len(teacher.cascades)):
        image = images[k]
        for module in list(student.cascades)[k:]:
            image = cascade(module, image, dc)
        branches.append(image)
    return images[-1], branches


# ---------------------------------------------------------------------- the branches
@pytest.mark.parametrize("complex_", [False, True])
def test_branch_outputs_equal_the_manual_composition(stores, complex_):
    torch.manual_seed(0)
    teacher = build_model(dict(TEACHER3, complex=complex_))
    branches = StudentBranches(teacher, dict(STUDENT3, complex=complex_))
    batch = val_batch(stores)
    if complex_:
        batch.image = torch.cat([batch.image, 0.1 * batch.image.flip(-1)], dim=1)
    with FeatureHooks(teacher, branches.teacher_paths) as hooks:
        output = teacher(batch.image, batch.kspace, batch.mask)
        outputs = branches(hooks.pop(), batch.kspace, batch.mask)
    expected_output, expected = manual_branches(teacher, branches.student, batch)
    assert len(outputs) == 2
    torch.testing.assert_close(output, expected_output, rtol=0, atol=0)
    for got, want in zip(outputs, expected, strict=True):
        assert got.shape == output.shape
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    # joint training: a branch's gradient reaches the teacher's cascades and the student's;
    # the student's first cascade lies on no branch (a plain sum would only see the DC
    # component of k-space, which data consistency takes from the measurement)
    sum(o.square().sum() for o in outputs).backward()
    assert teacher.cascades[0].cnn[0].weight.grad.abs().sum() > 0
    assert teacher.cascades[2].cnn[0].weight.grad is None  # after the last branch point
    assert all(branches.student.cascades[c].cnn[0].weight.grad.abs().sum() > 0 for c in (1, 2))
    assert branches.student.cascades[0].cnn[0].weight.grad is None


@pytest.mark.parametrize("teacher_net, student_net, message", [
    ({"family": "vdsr", "convs": 3, "channels": 4}, STUDENT_NET,
     "the teacher is VDSR, the student DCCNN"),
    (TEACHER_NET, {"family": "unet", "chans": 4, "num_pool_layers": 1},
     "the teacher is DCCNN, the student UNet"),
    (TEACHER_NET, STUDENT3, "the teacher has 2, the student 3"),
    (dict(TEACHER_NET, cascades=1), dict(STUDENT_NET, cascades=1), "at least 2 cascades"),
    (TEACHER_NET, dict(STUDENT_NET, complex=True), "both be complex or both not"),
])
def test_networks_without_matching_cascades_are_refused(teacher_net, student_net, message):
    with pytest.raises(KdmriError, match=message) as error:
        StudentBranches(build_model(teacher_net), student_net)
    assert "\n" not in str(error.value)
    if "VDSR" in message or "UNet" in message:
        assert "VDSR / U-Net / python networks have none" in str(error.value)


def test_the_trainer_refuses_a_vdsr_teacher_in_one_line(stores, tmp_path):
    vdsr = dict(sft_spec(epochs=1), net={"family": "vdsr", "convs": 3, "channels": 4})
    with pytest.raises(KdmriError, match="only DC-CNN") as error:
        make_trainer(stores, tmp_path, vdsr)
    assert "\n" not in str(error.value)


def test_train_spec_needs_and_fills_the_student_net():
    filled = _check_train_spec(sft_spec())
    assert filled["student_net"]["cascades"] == STUDENT_NET["cascades"]
    no_student = {k: v for k, v in sft_spec().items() if k != "student_net"}
    with pytest.raises(KdmriError, match="'student_net' is required by the sft_reconstruction"):
        _check_train_spec(no_student)
    plain = dict(no_student, loss_weights={"reconstruction": 1.0})
    assert "student_net" not in _check_train_spec(plain)


# ---------------------------------------------------------------------- the loss
def test_trainer_losses_equal_the_written_out_sft_loss(stores, tmp_path):
    w1, w2 = 0.5, 2.0
    sft = dict(sft_spec(sft_reconstruction=w1, sft_imitation=w2),
               net=TEACHER3, student_net=STUDENT3)
    trainer = make_trainer(stores, tmp_path, sft)
    batch, extra = trainer._batch(trainer.val_data, torch.arange(3))
    with torch.no_grad(), FeatureHooks(trainer.model, trainer.feature_paths) as hooks:
        total, terms, prediction = trainer.losses(batch, extra, hooks)
    assert list(terms) == ["reconstruction", "sft_reconstruction", "sft_imitation"]

    teacher = copy.deepcopy(trainer.model)
    student = copy.deepcopy(trainer.branches.student)
    with torch.no_grad():
        output, branches = manual_branches(teacher, student, batch)
    target = batch.target
    reconstruction = (output - target).abs().mean()
    branch_reconstruction = sum((b - target).abs().mean() for b in branches) / len(branches)
    branch_imitation = sum((b - output).abs().mean() for b in branches) / len(branches)
    torch.testing.assert_close(prediction, output, rtol=1e-6, atol=1e-7)
    for name, value in (("reconstruction", reconstruction),
                        ("sft_reconstruction", branch_reconstruction),
                        ("sft_imitation", branch_imitation)):
        np.testing.assert_allclose(terms[name].item(), value.item(), rtol=1e-5)
    np.testing.assert_allclose(
        total.item(), (reconstruction + w1 * branch_reconstruction + w2 * branch_imitation).item(),
        rtol=1e-5)


# ---------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def sft_run(stores, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft")
    trainer = make_trainer(stores, out, sft_spec())
    initial = {k: v.clone() for k, v in trainer.branches.state_dict().items()}
    trainer.run()
    return out, trainer, initial


def test_sft_stage_trains_and_logs_every_term(sft_run):
    out, trainer, initial = sft_run
    history = pd.read_csv(out / "history.csv")
    terms = ["reconstruction", "sft_reconstruction", "sft_imitation"]
    assert {f"{split}_{t}" for split in ("train", "val") for t in terms} <= set(history.columns)
    np.testing.assert_allclose(history["train_loss"], history[[f"train_{t}" for t in terms]].sum(axis=1),
                               rtol=1e-6)
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    assert history["val_loss"].iloc[-1] < history["val_loss"].iloc[0]
    # the student's cascades on a branch trained; the first (on no branch) did not
    trained = trainer.branches.state_dict()
    assert not torch.equal(trained["student.cascades.1.cnn.0.weight"],
                           initial["student.cascades.1.cnn.0.weight"])
    assert torch.equal(trained["student.cascades.0.cnn.0.weight"],
                       initial["student.cascades.0.cnn.0.weight"])


def test_model_file_holds_the_teacher_alone(sft_run):
    out, trainer, _ = sft_run
    teacher = build_model(TEACHER_NET)
    model_file = load_weights_only(out / "model.pt")
    assert model_file["net"] == TEACHER_NET
    assert model_file["params"] == count_parameters(teacher) == trainer.params
    assert model_file["state_dict"].keys() == teacher.state_dict().keys()
    model, _ = load_model(out / "model.pt", expect_net=TEACHER_NET, role="teacher")
    assert count_parameters(model) == count_parameters(teacher)
    last = load_weights_only(out / "checkpoint" / "last.pt")
    assert_same_weights(last["branches"], trainer.branches.state_dict())


def test_the_sft_stage_keeps_the_teachers_best_epoch_and_its_student_cascades(
        stores, tmp_path, monkeypatch):
    """The best epoch is the one of least teacher validation L1 (``val_reconstruction``),
    not of least weighted sum; ``model.pt`` holds the teacher and ``sft_student.pt`` the
    student cascades, both of that epoch (recorded here as each epoch is validated)."""
    # epoch -> (val_loss, val_reconstruction): the sum is least at epoch 1, the teacher's
    # own loss at epoch 2
    scripted = {1: (0.1, 0.9), 2: (0.5, 0.2), 3: (0.3, 0.5)}
    teachers, students = {}, {}
    validation = Trainer._validation  # the loop's validation: the row and the predictions

    def scripted_validation(self):
        row, prediction = validation(self)
        epoch = len(self.history) + 1
        teachers[epoch] = {k: v.clone() for k, v in self.model.state_dict().items()}
        students[epoch] = {k: v.clone() for k, v in self.branches.student.state_dict().items()}
        row["val_loss"], row["val_reconstruction"] = scripted[epoch]
        return row, prediction

    monkeypatch.setattr(Trainer, "_validation", scripted_validation)
    make_trainer(stores, tmp_path, sft_spec(epochs=3)).run()
    teacher_file = load_weights_only(tmp_path / "model.pt")
    student_file = load_weights_only(tmp_path / "sft_student.pt")
    assert teacher_file["epoch"] == student_file["epoch"] == 2
    assert_same_weights(teacher_file["state_dict"], teachers[2])
    assert_same_weights(student_file["state_dict"], students[2])
    assert not torch.equal(students[2]["cascades.1.cnn.0.weight"],
                           students[3]["cascades.1.cnn.0.weight"])
    assert student_file["net"] == STUDENT_NET and student_file["output"] == "student"
    assert student_file["params"] == count_parameters(build_model(STUDENT_NET))
    student, _ = load_model(tmp_path / "sft_student.pt", expect_net=STUDENT_NET,
                            role="initial student")
    assert count_parameters(student) == student_file["params"]


def test_a_sft_student_starts_from_the_sft_stages_student_cascades(sft_run, stores, tmp_path):
    """SFT-KD-Recon's step 2: every student taught by the student-friendly teacher starts
    its chain from the student cascades the sft stage wrote (not from random weights)."""
    out, _, _ = sft_run
    firsts = {name: m for name, m in MODELS.items() if m.teacher == "sft_teacher" and not
              (m.init and MODELS[m.init].teacher == "sft_teacher")}
    assert {"student_sft", "attention_sft", "kd_imitation_sft", "hint_fitnets_sft"} <= set(firsts)
    for name, method in firsts.items():
        assert (method.init, init_file(method)) == ("sft_teacher", "sft_student.pt"), name
    student_spec = spec("student_sft")
    assert (student_spec["init"], student_spec["init_output"]) == ("sft_teacher", "student")
    saved = load_weights_only(out / init_file(recipe("student_sft")))["state_dict"]
    inputs = stores.inputs_dir
    started = Trainer(student_spec, inputs / "train.h5", inputs / "val.h5", tmp_path / "s",
                      init=out / "sft_student.pt", log=lambda message: None, progress=False)
    assert_same_weights(started.model.state_dict(), saved)
    fresh = Trainer(spec("student"), inputs / "train.h5", inputs / "val.h5", tmp_path / "f",
                    log=lambda message: None, progress=False)
    assert not torch.equal(fresh.model.state_dict()["cascades.1.cnn.0.weight"],
                           saved["cascades.1.cnn.0.weight"])


def test_a_stage_that_writes_its_student_needs_the_branches(stores, tmp_path):
    plain = dict(sft_spec(epochs=1), loss_weights={"reconstruction": 1.0})
    with pytest.raises(KdmriError, match="writes sft_student.pt from its branches") as error:
        make_trainer(stores, tmp_path, plain)
    assert "\n" not in str(error.value)


def test_resume_after_crash_gives_the_same_teacher_and_branches(sft_run, stores, tmp_path,
                                                                 monkeypatch):
    out, reference, _ = sft_run
    crash_at_epoch(monkeypatch, 2)
    with pytest.raises(SimulatedCrash):
        make_trainer(stores, tmp_path, sft_spec()).run()
    monkeypatch.undo()
    resumed = make_trainer(stores, tmp_path, sft_spec())
    resumed.run()
    assert resumed.start_epoch == 2
    assert_same_weights(resumed.model.state_dict(), reference.model.state_dict())
    assert_same_weights(resumed.branches.state_dict(), reference.branches.state_dict())
    for file in ("model.pt", "sft_student.pt"):
        assert_same_weights(load_weights_only(tmp_path / file)["state_dict"],
                            load_weights_only(out / file)["state_dict"])


def test_the_papers_sft_teacher_keeps_the_teachers_parameter_count(stores, tmp_path):
    """DC-CNN 5 x 5 / 5 x 3 with 32 channels: model.pt holds the teacher's 141,765
    parameters; the student's cascades (49,285) stay out of it."""
    sft = dict(sft_spec(epochs=1),
               net={"family": "dccnn", "cascades": 5, "convs": 5, "channels": 32},
               student_net={"family": "dccnn", "cascades": 5, "convs": 3, "channels": 32})
    trainer = make_trainer(stores, tmp_path, sft)
    trainer.run()
    assert count_parameters(trainer.branches) == 49_285
    assert load_weights_only(tmp_path / "model.pt")["params"] == 141_765


def test_cache_teacher_runs_on_an_sft_teacher(sft_run, stores, tmp_path):
    out, _, _ = sft_run
    teacher_spec = json.dumps({"teacher_net": TEACHER_NET, "pairs": PAIRS})
    code = main(["cache-teacher", "--teacher", str(out / "model.pt"), "--spec", teacher_spec,
                 "--inputs-dir", str(stores.inputs_dir), "--out-dir", str(tmp_path / "cache"),
                 "--device", "cpu"])
    assert code == 0
    cached = read_store(tmp_path / "cache" / "val.h5", ["output"])["output"]
    model, _ = load_model(out / "model.pt", expect_net=TEACHER_NET)
    model = place_model(model, "cpu").eval()
    batch = val_batch(stores)
    with torch.no_grad():
        expected = model(batch.image, batch.kspace, batch.mask)[:, 0].numpy()
    np.testing.assert_allclose(cached, expected, rtol=1e-5, atol=1e-6)

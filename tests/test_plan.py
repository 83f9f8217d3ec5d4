"""Tests for the stage plan (kdmri.plan) and the one table of term inputs (terms.INPUTS):
what a spec's terms need, written out here per stage, and each input gathered once per
batch through its table entry."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
import torch

from kdmri.distill import terms
from kdmri.distill.hooks import FeatureHooks
from kdmri.errors import KdmriError
from kdmri.plan import StagePlan, stage_terms
from kdmri.train import Trainer
from tests.test_train import spec, teacher_cache  # noqa: F401 (a fixture)


def test_every_input_a_term_takes_is_in_the_one_table():
    for name, term in terms.TERMS.items():
        assert set(term.inputs) <= set(terms.INPUTS), name
    # the workflow's two views of the table, written out
    assert terms.TEACHER_SOURCES == {"teacher_output": "cache", "teacher_maps": "cache",
                                     "teacher_features": "weights",
                                     "teacher_feature_pairs": "weights"}
    assert terms.SPEC_KEYS == {
        "student_features": "pairs", "teacher_maps": "pairs", "teacher_features": "pairs",
        "adapters": "pairs", "cc_embeddings": "pairs", "vid_regressors": "pairs",
        "ab_connectors": "pairs", "ickd_embeddings": "pairs", "student_feature_pairs": "fsp_pairs",
        "teacher_feature_pairs": "fsp_pairs", "branch_outputs": "student_net"}
    assert terms.LEARNT_INPUTS == ("adapters", "cc_embeddings", "vid_regressors",
                                   "ab_connectors", "ickd_embeddings")


def test_a_term_taking_an_input_outside_the_table_is_refused(monkeypatch):
    odd = terms.Term(terms.TERMS["imitation"].function, ("prediction", "teacher_gradients"), "-")
    monkeypatch.setitem(terms.TERMS, "odd", odd)
    with pytest.raises(KdmriError, match="'odd' needs inputs the trainer cannot give "
                                         r"\(teacher_gradients\)"):
        stage_terms({"odd": 1.0}, "hint")


@pytest.mark.parametrize("model, weights, cache_keys, live", [
    ("teacher", {"reconstruction": 1.0}, [], []),
    ("attention", {"attention": 1.0}, ["attention"], []),
    ("kd_imitation", {"reconstruction": 0.5, "imitation": 0.5}, ["output"], []),
    ("hint_fitnets", {"fitnets": 1.0}, [], ["fitnets"]),
    ("sft_teacher", {"reconstruction": 1.0, "sft_reconstruction": 1.0, "sft_imitation": 1.0},
     [], []),
])
def test_the_plan_of_each_stage_from_its_spec(model, weights, cache_keys, live):
    plan = StagePlan(spec(model), teacher="teacher.pt" if live else None)
    assert plan.weights == weights
    assert plan.terms == list(weights)
    assert plan.cache_keys == cache_keys
    assert plan.live == live
    assert plan.needs == {i for name in weights for i in terms.TERMS[name].inputs}


def test_a_live_teacher_term_without_the_teacher_is_refused_before_any_data():
    with pytest.raises(KdmriError, match="'fitnets' needs the teacher's features.*--teacher"):
        StagePlan(spec("hint_fitnets"))


def test_each_input_is_gathered_once_per_batch(teacher_cache, stores, tmp_path,  # noqa: F811
                                               monkeypatch):
    """A stage taking every kind of input (the cache's output and maps, hooked features,
    the live teacher's features, the adapters): each input's table entry runs once per
    batch although several terms take it, and so do the hook pop and the live teacher."""
    teacher_pt, cache = teacher_cache
    mixed = spec("attention")
    mixed["teacher_net"] = spec("kd")["teacher_net"]
    mixed["loss_weights"] = {"reconstruction": 0.5, "imitation": 0.5, "attention": 1.0,
                             "fitnets": 0.3, "sp": 2.0, "cc": 1.0}
    inputs = stores.inputs_dir
    trainer = Trainer(mixed, inputs / "train.h5", inputs / "val.h5", tmp_path, cache_dir=cache,
                      teacher=teacher_pt, log=lambda message: None, progress=False)
    calls: Counter = Counter()

    def counted(name, function):
        def counting(*args):
            calls[name] += 1
            return function(*args)
        return counting

    for name, entry in terms.INPUTS.items():
        monkeypatch.setitem(terms.INPUTS, name,
                            dataclasses.replace(entry, gather=counted(name, entry.gather)))
    live = trainer.plan.teacher
    monkeypatch.setattr(live, "features", counted("live teacher", live.features))
    batch, extra = trainer._batch(trainer.val_data, torch.arange(3))
    with torch.no_grad(), FeatureHooks(trainer.model, trainer.feature_paths) as hooks:
        monkeypatch.setattr(hooks, "pop", counted("hooks", hooks.pop))
        total, values, _ = trainer.losses(batch, extra, hooks)
    assert list(values) == list(mixed["loss_weights"])
    needed = {i for name in values for i in terms.TERMS[name].inputs}
    assert needed == {"prediction", "target", "teacher_output", "student_features",
                      "teacher_maps", "teacher_features", "adapters"}
    assert calls == Counter({**dict.fromkeys(needed, 1), "live teacher": 1, "hooks": 1})
    expected = sum(w * values[name].item() for name, w in mixed["loss_weights"].items())
    assert total.item() == pytest.approx(expected, rel=1e-6)

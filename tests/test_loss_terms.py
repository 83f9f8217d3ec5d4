"""Tests for the loss-term registry (kdmri.distill.terms): each term against an independent
NumPy computation, and the trainer's loss as the weighted sum of the terms a stage names."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdmri.distill import TERMS, FeatureHooks
from kdmri.distill import losses as L
from kdmri.errors import KdmriError
from kdmri.train import Trainer
from tests.test_train import spec, teacher_cache  # noqa: F401 (a fixture)

EXPECTED = ["reconstruction", "imitation", "attention", "attention_batchnorm", "fitnets", "fsp",
            "sp", "cc", "sft_reconstruction", "sft_imitation"]
FEATURE_TERMS = ["attention_batchnorm", "fitnets", "fsp", "sp", "cc"]


def rand(*shape, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


def np_(t):
    return t.detach().double().numpy()


def close(value: torch.Tensor, expected: float) -> None:
    np.testing.assert_allclose(value.item(), expected, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------- the table
def test_registry_lists_exactly_the_expected_terms():
    assert list(TERMS) == EXPECTED
    for term in TERMS.values():
        assert callable(term.function) and term.inputs and term.formula


def test_image_terms():
    x, y = rand(3, 1, 5, 6, seed=1), rand(3, 1, 5, 6, seed=2)
    expected = sum(abs(a - b) for a, b in zip(np_(x).ravel(), np_(y).ravel(), strict=True)) / x.numel()
    close(TERMS["reconstruction"].function(x, y), expected)
    close(TERMS["imitation"].function(x, y), expected)


def test_student_friendly_teacher_terms():
    """The means over branches of the branches' L1 reconstruction and imitation (each a
    mean over pixels), written out over the NumPy arrays."""
    x, teacher = rand(2, 1, 4, 5, seed=31), rand(2, 1, 4, 5, seed=32)
    branches = [rand(2, 1, 4, 5, seed=33 + k) for k in range(3)]
    to_target = [np.abs(np_(b) - np_(x)).sum() / x.numel() for b in branches]
    to_teacher = [np.abs(np_(b) - np_(teacher)).sum() / x.numel() for b in branches]
    close(TERMS["sft_reconstruction"].function(branches, x), sum(to_target) / 3)
    close(TERMS["sft_imitation"].function(branches, teacher), sum(to_teacher) / 3)


def test_reconstruction_norms():
    x, y = rand(3, 1, 9, 10, seed=21), rand(3, 1, 9, 10, seed=22).abs()
    term = TERMS["reconstruction"]
    assert term.options == {"norm": ("l1", "l2", "ssim")}
    close(term.function(x, y, norm="l2"), ((np_(x) - np_(y)) ** 2).mean())
    assert torch.equal(term.function(x, y, norm="l1"), term.function(x, y))
    # SSIM as skimage computes it per slice (7 x 7 windows, data range the target's maximum)
    from skimage.metrics import structural_similarity

    expected = np.mean([structural_similarity(np_(y)[i, 0], np_(x)[i, 0],
                                              data_range=np_(y)[i].max()) for i in range(3)])
    close(term.function(x, y, norm="ssim"), 1 - expected)
    with pytest.raises(ValueError, match="unknown norm"):
        term.function(x, y, norm="l3")


def np_attention_distance(student, teacher, batch_normalised: bool) -> float:
    """Per layer pair: q[n, p] = sum_c a[n, c, p]^2, normalised per sample (or per pixel over
    the batch), then the batch mean of the per-sample L2 distance; summed over pairs."""
    total = 0.0
    for s, t in zip(student, teacher, strict=True):
        maps = []
        for f in (s, t):
            f = np_(f)
            n, c, h, w = f.shape
            q = np.zeros((n, h * w))
            for i in range(n):
                for p in range(h * w):
                    q[i, p] = sum(f[i, k, p // w, p % w] ** 2 for k in range(c))
            if batch_normalised:
                q = q / np.sqrt((q ** 2).sum(axis=0, keepdims=True))
            else:
                q = q / np.sqrt((q ** 2).sum(axis=1, keepdims=True))
            maps.append(q)
        total += np.mean([math.sqrt(((maps[0][i] - maps[1][i]) ** 2).sum())
                          for i in range(len(maps[0]))])
    return total


def test_attention_per_sample_and_over_the_batch():
    student = [rand(4, 3, 4, 5, seed=3), rand(4, 2, 4, 5, seed=4)]
    teacher = [rand(4, 6, 4, 5, seed=5), rand(4, 5, 4, 5, seed=6)]
    close(TERMS["attention"].function(student, teacher),
          np_attention_distance(student, teacher, batch_normalised=False))
    cached = [L.attention_map(t) for t in teacher]  # what the teacher cache holds
    close(TERMS["attention"].function(student, cached),
          np_attention_distance(student, teacher, batch_normalised=False))
    batchnorm = TERMS["attention_batchnorm"].function(student, teacher)
    close(batchnorm, np_attention_distance(student, teacher, batch_normalised=True))
    np.testing.assert_allclose(np.linalg.norm(np_(L.attention_map_batchnorm(teacher[0])), axis=0),
                               1.0, rtol=1e-6)


def test_fitnets_with_a_given_adapter():
    s, t = rand(2, 3, 4, 4, seed=7), rand(2, 5, 4, 4, seed=8)
    adapter = torch.nn.Conv2d(3, 5, 1)
    with torch.no_grad():
        adapter.weight.copy_(rand(5, 3, 1, 1, seed=9))
        adapter.bias.copy_(rand(5, seed=10))
    weight, bias = np_(adapter.weight)[:, :, 0, 0], np_(adapter.bias)
    regressed = np.einsum("oc,nchw->nohw", weight, np_(s)) + bias[None, :, None, None]
    expected = ((regressed - np_(t)) ** 2).mean()
    close(TERMS["fitnets"].function([s], [t], [adapter]), expected)


def test_fsp():
    n, h, w = 3, 4, 5
    student = [(rand(n, 2, h, w, seed=11), rand(n, 3, h, w, seed=12))]
    teacher = [(rand(n, 4, h, w, seed=13), rand(n, 6, h, w, seed=14))]
    with pytest.raises(ValueError):  # student and teacher matrices differ in shape
        TERMS["fsp"].function(student, teacher)
    teacher = [(rand(n, 2, h, w, seed=13), rand(n, 3, h, w, seed=14))]

    def gram(f1, f2):
        f1, f2 = np_(f1), np_(f2)
        g = np.zeros((n, f1.shape[1], f2.shape[1]))
        for k in range(n):
            for i in range(f1.shape[1]):
                for j in range(f2.shape[1]):
                    g[k, i, j] = (f1[k, i] * f2[k, j]).sum() / (h * w)
        return g

    diff = gram(*student[0]) - gram(*teacher[0])
    expected = np.mean([(diff[k] ** 2).sum() for k in range(n)])
    close(TERMS["fsp"].function(student, teacher), expected)


def test_sp():
    student, teacher = [rand(5, 3, 4, 4, seed=15)], [rand(5, 7, 2, 3, seed=16)]

    def similarity(f):
        q = np_(f).reshape(len(f), -1)
        g = np.einsum("ik,jk->ij", q, q)
        return g / np.sqrt((g ** 2).sum(axis=1, keepdims=True))

    expected = ((similarity(student[0]) - similarity(teacher[0])) ** 2).sum() / 5 ** 2
    close(TERMS["sp"].function(student, teacher), expected)


def test_cc_order_2_taylor():
    gamma, n = 0.4, 6
    student, teacher = [rand(n, 3, 4, 4, seed=17)], [rand(n, 8, 4, 4, seed=18)]

    def correlation(f):
        e = np_(f).mean(axis=(2, 3))
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        c = np.zeros((n, n))
        for i in range(n):
            for j in range(n):
                d = float(e[i] @ e[j])
                c[i, j] = math.exp(-2 * gamma) * (1 + 2 * gamma * d + (2 * gamma) ** 2 / 2 * d ** 2)
        return c

    expected = ((correlation(student[0]) - correlation(teacher[0])) ** 2).sum() / n ** 2
    close(TERMS["cc"].function(student, teacher), expected)
    # the order-2 expansion is near the exact kernel exp(-gamma |x - y|^2) on unit vectors
    # (its largest error, at x = y, is 1 - exp(-0.8) * 2.12 = 0.047)
    e = np_(student[0]).mean(axis=(2, 3))
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    exact = np.exp(-gamma * ((e[:, None] - e[None]) ** 2).sum(axis=2))
    np.testing.assert_allclose(np_(L.correlation_matrix(student[0])), exact, atol=0.05)


# ---------------------------------------------------------------------- the trainer
@pytest.mark.parametrize("model", ["student", "attention", "kd_imitation"])
def test_trainer_loss_is_the_weighted_sum_of_its_terms(teacher_cache, stores, tmp_path, model):  # noqa: F811
    _, cache = teacher_cache
    inputs = stores.inputs_dir
    model_spec = spec(model)
    trainer = Trainer(model_spec, inputs / "train.h5", inputs / "val.h5", tmp_path,
                      cache_dir=cache, log=lambda message: None, progress=False)
    trainer.model.eval()
    batch, extra = trainer._batch(trainer.val_data, torch.arange(3))
    with torch.no_grad(), FeatureHooks(trainer.model, trainer.feature_paths) as hooks:
        total, terms, _ = trainer.losses(batch, extra, hooks)
        prediction = trainer.model(batch.image, batch.kspace, batch.mask)
        features = hooks.pop() if trainer.feature_paths else []
    weights = {k: v for k, v in model_spec["loss_weights"].items() if v}
    assert list(terms) == [t for t in TERMS if t in weights]
    pred, target = np_(prediction), np_(batch.target)
    expected = {}
    if "reconstruction" in weights:
        expected["reconstruction"] = np.abs(pred - target).mean()
    if "imitation" in weights:
        expected["imitation"] = np.abs(pred - np_(extra["teacher_output"])).mean()
    if "attention" in weights:
        total_distance = 0.0
        for f, t_map in zip(features, extra["attention"].unbind(1), strict=True):
            q = np.einsum("nchw->nhw", np_(f) ** 2).reshape(len(f), -1)
            q = q / np.linalg.norm(q, axis=1, keepdims=True)
            total_distance += np.linalg.norm(q - np_(t_map), axis=1).mean()
        expected["attention"] = total_distance
    assert sorted(expected) == sorted(weights)
    for name, value in expected.items():
        np.testing.assert_allclose(terms[name].item(), value, rtol=1e-5)
    np.testing.assert_allclose(total.item(), sum(weights[k] * v for k, v in expected.items()),
                               rtol=1e-5)


def test_unknown_term_is_a_one_line_error_listing_the_terms(stores, tmp_path):
    bad = spec("student")
    bad["loss_weights"] = {"reconstruction": 1.0, "perceptual": 0.5}
    inputs = stores.inputs_dir
    with pytest.raises(KdmriError) as error:
        Trainer(bad, inputs / "train.h5", inputs / "val.h5", tmp_path)
    message = str(error.value)
    assert "\n" not in message and "'perceptual'" in message
    assert all(name in message for name in TERMS)
    bad["loss_weights"] = {"reconstruction": 0.0}
    with pytest.raises(KdmriError, match="every loss weight is 0"):
        Trainer(bad, inputs / "train.h5", inputs / "val.h5", tmp_path)


@pytest.mark.parametrize("term", FEATURE_TERMS)
def test_terms_needing_teacher_features_are_refused(stores, tmp_path, term):
    bad = spec("attention")
    bad["loss_weights"] = {term: 1.0}
    inputs = stores.inputs_dir
    with pytest.raises(KdmriError) as error:
        Trainer(bad, inputs / "train.h5", inputs / "val.h5", tmp_path, cache_dir=tmp_path)
    message = str(error.value)
    assert "\n" not in message and repr(term) in message and "teacher cache" in message


def test_train_spec_check_knows_the_table():
    from kdmri.cli import _check_train_spec

    sp = dict(spec("attention"), loss_weights={"sp": 1.0})
    assert _check_train_spec(sp)["loss_weights"] == {"sp": 1.0}  # trained with --teacher
    with pytest.raises(KdmriError, match="'pairs' is required by the cc loss"):
        _check_train_spec({k: v for k, v in sp.items() if k != "pairs"} | {
            "loss_weights": {"cc": 1.0}})
    with pytest.raises(KdmriError, match="perceptual"):
        _check_train_spec(dict(sp, loss_weights={"perceptual": 1.0}))
    l2 = dict(spec("student"), loss_options={"reconstruction": {"norm": "l2"}})
    assert _check_train_spec(l2)["loss_options"] == l2["loss_options"]


def test_reconstruction_options_in_a_spec(stores, tmp_path):
    inputs = stores.inputs_dir
    l2 = dict(spec("student"), loss_options={"reconstruction": {"norm": "l2"}})
    trainer = Trainer(l2, inputs / "train.h5", inputs / "val.h5", tmp_path,
                      log=lambda message: None, progress=False)
    trainer.model.eval()
    batch, extra = trainer._batch(trainer.val_data, torch.arange(3))
    with torch.no_grad(), FeatureHooks(trainer.model, []) as hooks:
        total, terms, prediction = trainer.losses(batch, extra, hooks)
    close(terms["reconstruction"], ((np_(prediction) - np_(batch.target)) ** 2).mean())
    for options, words in (({"reconstruction": {"norm": "l3"}}, ["'l3'", "l1, l2, ssim"]),
                           ({"reconstruction": {"p": 2}}, ["no option 'p'", "norm"]),
                           ({"imitation": {"norm": "l2"}}, ["'imitation'", "does not weigh"])):
        with pytest.raises(KdmriError) as error:
            Trainer(dict(l2, loss_options=options), inputs / "train.h5", inputs / "val.h5",
                    tmp_path)
        assert "\n" not in str(error.value)
        assert all(word in str(error.value) for word in words), str(error.value)

"""Tests for the loss-term registry (kdmri.distill.terms): each term against an independent
NumPy computation, and the trainer's loss as the weighted sum of the terms a stage names."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdmri.distill import TERMS, FeatureHooks, learnt
from kdmri.distill import losses as L
from kdmri.errors import KdmriError
from kdmri.train import Trainer
from tests.test_train import spec, teacher_cache  # noqa: F401 (a fixture)

EXPECTED = ["reconstruction", "imitation", "attention", "attention_batchnorm", "fitnets", "fsp",
            "sp", "cc", "cc_embedded", "vid", "ab", "ickd", "sft_reconstruction", "sft_imitation"]
FEATURE_TERMS = ["attention_batchnorm", "fitnets", "fsp", "sp", "cc", "cc_embedded", "vid", "ab",
                 "ickd"]


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


# Each feature term below is given two layer pairs of different sizes and checked against
# the sum over the pairs of its per-pair formula written out in NumPy: a mean over the pairs
# (or the first pair alone) would differ.
def conv1x1(weight, features, bias=None):
    """A 1x1 convolution written out: out[n, o] = sum_c weight[o, c] features[n, c] (+ bias)."""
    features = np_(features) if torch.is_tensor(features) else features
    out = np.einsum("oc,nchw->nohw", np_(weight).reshape(weight.shape[0], -1), features)
    return out if bias is None else out + np_(bias)[None, :, None, None]


def batchnorm_training(x, module):
    """Batch normalisation with the batch's statistics (biased variance over N, H, W)."""
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = ((x - mean) ** 2).mean(axis=(0, 2, 3), keepdims=True)
    scale, shift = np_(module.weight)[None, :, None, None], np_(module.bias)[None, :, None, None]
    return (x - mean) / np.sqrt(var + module.eps) * scale + shift


def randomise(module, seed):
    """Every parameter of ``module`` drawn from a standard normal (seeded)."""
    with torch.no_grad():
        for k, p in enumerate(module.parameters()):
            p.copy_(rand(*p.shape, seed=seed + k))


def test_fitnets_sums_over_pairs():
    student = [rand(2, 3, 4, 4, seed=7), rand(2, 2, 3, 5, seed=70)]
    teacher = [rand(2, 5, 4, 4, seed=8), rand(2, 4, 3, 5, seed=80)]
    adapters = learnt.fitnets_adapters(student, teacher)
    randomise(adapters, 9)
    expected = sum(((conv1x1(a.weight, s, a.bias) - np_(t)) ** 2).mean()
                   for s, t, a in zip(student, teacher, adapters, strict=True))
    close(TERMS["fitnets"].function(student, teacher, adapters), expected)


def test_fsp_sums_over_pairs():
    n, shapes = 3, [(2, 3, 4, 5), (3, 2, 3, 3)]  # (C1, C2, H, W) per pair
    student = [(rand(n, c1, h, w, seed=11 + 4 * k), rand(n, c2, h, w, seed=12 + 4 * k))
               for k, (c1, c2, h, w) in enumerate(shapes)]
    teacher = [(rand(n, c1, h, w, seed=13 + 4 * k), rand(n, c2, h, w, seed=14 + 4 * k))
               for k, (c1, c2, h, w) in enumerate(shapes)]

    def gram(f1, f2):
        f1, f2 = np_(f1), np_(f2)
        h, w = f1.shape[2:]
        g = np.zeros((n, f1.shape[1], f2.shape[1]))
        for k in range(n):
            for i in range(f1.shape[1]):
                for j in range(f2.shape[1]):
                    g[k, i, j] = (f1[k, i] * f2[k, j]).sum() / (h * w)
        return g

    expected = 0.0
    for s_pair, t_pair in zip(student, teacher, strict=True):
        diff = gram(*s_pair) - gram(*t_pair)
        expected += np.mean([(diff[k] ** 2).sum() for k in range(n)])
    close(TERMS["fsp"].function(student, teacher), expected)
    wrong = [(rand(n, 4, 4, 5, seed=13), rand(n, 6, 4, 5, seed=14)), teacher[1]]
    with pytest.raises(ValueError):  # student and teacher matrices differ in shape
        TERMS["fsp"].function(student, wrong)


def test_sp_sums_over_pairs():
    student = [rand(5, 3, 4, 4, seed=15), rand(5, 2, 3, 3, seed=150)]
    teacher = [rand(5, 7, 2, 3, seed=16), rand(5, 4, 3, 3, seed=160)]

    def similarity(f):
        q = np_(f).reshape(len(f), -1)
        g = np.einsum("ik,jk->ij", q, q)
        return g / np.sqrt((g ** 2).sum(axis=1, keepdims=True))

    expected = sum(((similarity(s) - similarity(t)) ** 2).sum() / 5 ** 2
                   for s, t in zip(student, teacher, strict=True))
    close(TERMS["sp"].function(student, teacher), expected)


def np_kernel(e, gamma=0.4):
    """CC's order-2 Taylor Gaussian kernel of unit rows e, entry by entry."""
    n = len(e)
    c = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            d = float(e[i] @ e[j])
            c[i, j] = math.exp(-2 * gamma) * (1 + 2 * gamma * d + (2 * gamma) ** 2 / 2 * d ** 2)
    return c


def unit_rows(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_cc_sums_over_pairs_and_approximates_the_gaussian_kernel():
    gamma, n = 0.4, 6
    student = [rand(n, 3, 4, 4, seed=17), rand(n, 2, 5, 3, seed=170)]
    teacher = [rand(n, 8, 4, 4, seed=18), rand(n, 5, 2, 2, seed=180)]
    expected = sum(
        ((np_kernel(unit_rows(np_(s).mean(axis=(2, 3))))
          - np_kernel(unit_rows(np_(t).mean(axis=(2, 3))))) ** 2).sum() / n ** 2
        for s, t in zip(student, teacher, strict=True))
    close(TERMS["cc"].function(student, teacher), expected)
    # the order-2 expansion is near the exact kernel exp(-gamma |x - y|^2) on unit vectors
    # (its largest error, at x = y, is 1 - exp(-0.8) * 2.12 = 0.047)
    e = unit_rows(np_(student[0]).mean(axis=(2, 3)))
    exact = np.exp(-gamma * ((e[:, None] - e[None]) ** 2).sum(axis=2))
    np.testing.assert_allclose(np_(L.correlation_matrix(student[0])), exact, atol=0.05)


def test_cc_embedded_on_learnt_linear_embeddings():
    n = 5
    student = [rand(n, 3, 4, 4, seed=19), rand(n, 2, 3, 5, seed=190)]
    teacher = [rand(n, 6, 4, 4, seed=20), rand(n, 4, 2, 2, seed=200)]
    embeddings = learnt.cc_embeddings(student, teacher)
    assert [(e.student.in_features, e.teacher.in_features, e.student.out_features)
            for e in embeddings] == [(3, 6, 128), (2, 4, 128)]
    randomise(embeddings, 21)

    def embedded(f, linear):
        pooled = np_(f).mean(axis=(2, 3))
        return unit_rows(pooled @ np_(linear.weight).T + np_(linear.bias))

    expected = sum(((np_kernel(embedded(s, e.student)) - np_kernel(embedded(t, e.teacher))) ** 2)
                   .sum() / n ** 2 for s, t, e in zip(student, teacher, embeddings, strict=True))
    value = TERMS["cc_embedded"].function(student, teacher, embeddings)
    close(value, expected)
    value.backward()  # both embeddings learn
    assert all(e.student.weight.grad.abs().sum() > 0 and e.teacher.weight.grad.abs().sum() > 0
               for e in embeddings)


def test_vid_is_the_gaussian_negative_log_likelihood():
    student = [rand(2, 3, 4, 4, seed=22), rand(2, 2, 3, 5, seed=220)]
    teacher = [rand(2, 5, 4, 4, seed=23), rand(2, 4, 3, 5, seed=230)]
    regressors = learnt.vid_regressors(student, teacher)
    np.testing.assert_allclose(np_(regressors[0].variance()).ravel(), 5.0, rtol=1e-6)
    randomise(regressors, 24)
    expected = 0.0
    for s, t, r in zip(student, teacher, regressors, strict=True):
        first, second, third = (m.weight for m in r.mean if isinstance(m, torch.nn.Conv2d))
        hidden = np.maximum(conv1x1(first, s), 0)
        mean = conv1x1(third, np.maximum(conv1x1(second, hidden), 0))
        variance = np.log1p(np.exp(np_(r.alpha))) + 1e-5  # softplus, then the floor
        variance = variance[None, :, None, None]
        expected += (0.5 * (np.log(variance) + (np_(t) - mean) ** 2 / variance)).mean()
    close(TERMS["vid"].function(student, teacher, regressors), expected)


def test_ab_penalises_the_wrong_side_of_each_activation_boundary():
    margin, n = 1.0, 3
    student = [rand(n, 3, 4, 4, seed=25), rand(n, 2, 3, 5, seed=250)]
    # teacher features after a ReLU: 0 where the neuron is off
    teacher = [rand(n, 5, 4, 4, seed=26).clamp(min=0), rand(n, 4, 3, 5, seed=260).clamp(min=0)]
    connectors = learnt.ab_connectors(student, teacher)
    randomise(connectors, 27)
    expected = 0.0
    for s, t, (conv, bn) in zip(student, teacher, connectors, strict=True):
        r, t = batchnorm_training(conv1x1(conv.weight, s), bn), np_(t)
        per_element = np.where((r > -margin) & (t <= 0), (r + margin) ** 2, 0.0) \
            + np.where((r <= margin) & (t > 0), (r - margin) ** 2, 0.0)
        expected += per_element.sum() / n
    close(TERMS["ab"].function(student, teacher, connectors), expected)


def test_ickd_compares_row_normalised_inter_channel_correlations():
    n = 3
    student = [rand(n, 3, 4, 4, seed=28), rand(n, 2, 3, 5, seed=280)]
    teacher = [rand(n, 5, 4, 4, seed=29), rand(n, 4, 2, 2, seed=290)]
    embeddings = learnt.ickd_embeddings(student, teacher)
    randomise(embeddings, 30)

    def correlation(f):
        f = f.reshape(f.shape[0], f.shape[1], -1)
        g = np.einsum("nip,njp->nij", f, f)
        return g / np.linalg.norm(g, axis=2, keepdims=True)

    expected = 0.0
    for s, t, (conv, bn) in zip(student, teacher, embeddings, strict=True):
        e = batchnorm_training(conv1x1(conv.weight, s), bn)
        channels = t.shape[1]
        expected += ((correlation(e) - correlation(np_(t))) ** 2).sum() / (channels * n)
    close(TERMS["ickd"].function(student, teacher, embeddings), expected)


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

"""Tests for kdmri.distill: attention maps, the KD-MRI losses and feature hooks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from kdmri.distill import (
    FeatureHooks,
    attention_map,
    attention_transfer_loss,
    imitation_objective,
)
from kdmri.errors import KdmriError
from kdmri.models import build_model
from kdmri.mri import undersample


def features(n, c, h, w, seed):
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def np_attention_loss(student: list[np.ndarray], teacher: list[np.ndarray]) -> float:
    """Paper eq. 1, written out per sample in float64."""
    total = 0.0
    for s, t in zip(student, teacher, strict=True):
        per_sample = []
        for n in range(s.shape[0]):
            q_s = (s[n].astype(np.float64) ** 2).sum(axis=0).ravel()
            q_t = (t[n].astype(np.float64) ** 2).sum(axis=0).ravel()
            per_sample.append(np.linalg.norm(q_s / np.linalg.norm(q_s) - q_t / np.linalg.norm(q_t)))
        total += float(np.mean(per_sample))
    return total


def test_attention_map_shape_and_unit_norm():
    a = features(3, 5, 6, 7, seed=0)
    q = attention_map(a)
    assert q.shape == (3, 42)
    assert q.dtype == torch.float32
    torch.testing.assert_close(q.norm(dim=1), torch.ones(3))
    expected = a.pow(2).sum(1).flatten(1)
    torch.testing.assert_close(q, expected / expected.norm(dim=1, keepdim=True))


def test_attention_map_rejects_wrong_ndim():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        attention_map(torch.zeros(3, 4, 5))


def test_attention_loss_matches_numpy_eq1():
    student = [features(4, 3, 8, 8, seed=1), features(4, 3, 6, 5, seed=2)]
    teacher = [features(4, 7, 8, 8, seed=3), features(4, 2, 6, 5, seed=4)]
    loss = attention_transfer_loss(student, teacher)
    expected = np_attention_loss([s.numpy() for s in student], [t.numpy() for t in teacher])
    assert loss.ndim == 0
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_attention_loss_normalises_per_sample_not_over_batch():
    student, teacher = features(3, 4, 5, 5, seed=5), features(3, 4, 5, 5, seed=6)
    teacher[1] *= 100.0  # a sample with much larger activations must not dominate the others
    batch = attention_transfer_loss([student], [teacher])
    singles = [
        attention_transfer_loss([student[i : i + 1]], [teacher[i : i + 1]]) for i in range(3)
    ]
    assert batch.item() == pytest.approx(float(np.mean([s.item() for s in singles])), rel=1e-5)


def test_attention_loss_zero_for_identical_features():
    a = features(2, 4, 8, 8, seed=7)
    loss = attention_transfer_loss([a, a], [a.clone(), a.clone()])
    assert loss.item() == pytest.approx(0, abs=1e-7)


@pytest.mark.parametrize("scale", [1e-3, 0.5, 7.0, 1e3])
def test_attention_loss_invariant_to_positive_scale(scale):
    student, teacher = features(2, 3, 6, 6, seed=8), features(2, 5, 6, 6, seed=9)
    base = attention_transfer_loss([student], [teacher])
    assert attention_transfer_loss([student * scale], [teacher]).item() == pytest.approx(
        base.item(), rel=1e-5
    )
    assert attention_transfer_loss([student], [teacher * scale]).item() == pytest.approx(
        base.item(), rel=1e-5
    )


def test_attention_loss_accepts_cached_teacher_maps():
    student = [features(3, 4, 8, 8, seed=10), features(3, 4, 8, 8, seed=11)]
    teacher = [features(3, 6, 8, 8, seed=12), features(3, 6, 8, 8, seed=13)]
    live = attention_transfer_loss(student, teacher)
    cached = torch.stack([attention_map(t) for t in teacher], dim=1)  # (N, P, H*W) as stored
    from_cache = attention_transfer_loss(student, list(cached.unbind(1)))
    assert from_cache.item() == pytest.approx(live.item(), rel=1e-6)


def test_attention_loss_has_gradient_for_student_only():
    student = features(2, 3, 6, 6, seed=14).requires_grad_()
    teacher = features(2, 3, 6, 6, seed=15)
    attention_transfer_loss([student], [attention_map(teacher)]).backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()
    assert student.grad.abs().sum() > 0


def test_attention_maps_of_different_size_raise():
    with pytest.raises(ValueError, match="differ in size"):
        attention_transfer_loss([features(2, 3, 8, 8, seed=0)], [features(2, 3, 6, 6, seed=1)])
    with pytest.raises(ValueError, match="differ in size"):
        attention_transfer_loss([features(2, 3, 8, 8, seed=0)], [torch.rand(2, 36)])


def test_attention_loss_layer_count_mismatch_or_empty_raises():
    a = features(2, 3, 4, 4, seed=0)
    with pytest.raises(ValueError, match="layers"):
        attention_transfer_loss([a, a], [a])
    with pytest.raises(ValueError, match="at least one"):
        attention_transfer_loss([], [])


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.3, 1.0])
def test_imitation_objective_matches_numpy(alpha):
    rng = np.random.default_rng(0)
    pred, target, teacher = (rng.random((2, 1, 8, 8)).astype(np.float32) for _ in range(3))
    expected = alpha * np.abs(target - pred).mean() + (1 - alpha) * np.abs(teacher - pred).mean()
    value = imitation_objective(
        torch.from_numpy(pred), torch.from_numpy(target), torch.from_numpy(teacher), alpha
    )
    assert value.item() == pytest.approx(float(expected), rel=1e-6)


def test_imitation_objective_default_alpha_is_half():
    pred, target = torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4)
    teacher = 3 * torch.ones(1, 1, 4, 4)
    assert imitation_objective(pred, target, teacher).item() == pytest.approx(0.5 * 1 + 0.5 * 3)


# ---------------------------------------------------------------------- hooks
def tiny_dccnn():
    torch.manual_seed(0)
    model = build_model({"family": "dccnn", "cascades": 2, "convs": 3, "channels": 4})
    target = torch.rand(2, 1, 12, 12)
    mask = torch.zeros(12, 12)
    mask[:, 4:8] = 1
    kspace = undersample(target, mask)
    return model, (target, kspace, mask)


def all_forward_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_hooks_capture_last_layer_equal_to_output():
    model, inputs = tiny_dccnn()
    with FeatureHooks(model, ["cascades.1"]) as hooks:
        out = model(*inputs)
        (captured,) = hooks.pop()
    torch.testing.assert_close(captured, out, atol=0, rtol=0)

    seq = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 1, 3))
    x = torch.rand(1, 1, 9, 9)
    with FeatureHooks(seq, ["2", "1"]) as hooks:
        out = seq(x)
        last, relu = hooks.pop()
    torch.testing.assert_close(last, out, atol=0, rtol=0)
    assert relu.shape == (1, 2, 7, 7) and (relu >= 0).all()


def test_hooks_capture_in_path_order_and_store_empties():
    model, inputs = tiny_dccnn()
    paths = model.feature_paths(2)
    with FeatureHooks(model, paths) as hooks:
        model(*inputs)
        captured = hooks.pop()
        assert [c.shape for c in captured] == [torch.Size([2, 4, 12, 12])] * 2
        assert not torch.equal(captured[0], captured[1])
        assert hooks._store == {}
        with pytest.raises(RuntimeError, match="no features captured"):
            hooks.pop()
        model(*inputs)
        again = hooks.pop()
    for a, b in zip(captured, again, strict=True):
        torch.testing.assert_close(a, b)


def test_hooks_removed_on_exit():
    model, inputs = tiny_dccnn()
    assert all_forward_hooks(model) == 0
    with FeatureHooks(model, model.feature_paths(1) + model.feature_paths(2)) as hooks:
        assert all_forward_hooks(model) == 4
    assert all_forward_hooks(model) == 0
    model(*inputs)
    assert hooks._store == {}


def test_hooks_removed_when_body_raises():
    model, _ = tiny_dccnn()
    with pytest.raises(ZeroDivisionError), FeatureHooks(model, ["cascades.0.cnn.1"]):
        raise ZeroDivisionError("body failed")
    assert all_forward_hooks(model) == 0


@pytest.mark.parametrize("bad", ["cascades.7.cnn.1", "cascades.0.cnn.99", "decoder", "convs"])
def test_bad_path_raises_and_leaves_no_hooks(bad):
    model, _ = tiny_dccnn()
    with pytest.raises(KdmriError, match="does not exist") as info:
        FeatureHooks(model, ["cascades.0.cnn.1", bad])
    assert repr(bad) in str(info.value)
    assert all_forward_hooks(model) == 0

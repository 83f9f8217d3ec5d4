"""Tests for the U-Net family: sizes, the residual and data consistency, odd image sizes,
feature layers for attention transfer, complex images and the schema's defaults."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from kdmri.config import fill_defaults, validate
from kdmri.distill import FeatureHooks, attention_transfer_loss
from kdmri.errors import KdmriError
from kdmri.models import MODEL_FAMILIES, UNet, build_model, count_parameters
from kdmri.mri import fft2c, from_channels, ifft2c, to_channels
from kdmri.specs import net_spec
from tests.test_models import tiny_inputs

TINY = {"family": "unet", "chans": 4, "num_pool_layers": 2}


def conv_params(c_in: int, c_out: int, kernel: int, bias: bool) -> int:
    return c_in * c_out * kernel * kernel + (c_out if bias else 0)


def unet_params(chans: int, pools: int, image_channels: int = 1) -> int:
    """Parameters summed layer by layer: 3x3 convs without bias (instance norm after them,
    which has no affine parameters), 2x2 transpose convs without bias, a 1x1 with bias."""
    width = [chans * 2**level for level in range(pools + 1)]
    total = conv_params(image_channels, width[0], 3, False) + conv_params(width[0], width[0], 3, False)
    for level in range(1, pools + 1):  # the encoder levels below full size, then the bottleneck
        total += conv_params(width[level - 1], width[level], 3, False)
        total += conv_params(width[level], width[level], 3, False)
    for level in range(pools - 1, -1, -1):
        total += conv_params(width[level + 1], width[level], 2, False)  # transpose conv
        total += conv_params(2 * width[level], width[level], 3, False)  # after the skip
        total += conv_params(width[level], width[level], 3, False)
    return total + conv_params(width[0], image_channels, 1, True)


@pytest.mark.parametrize("chans, pools, complex_, expected", [
    (32, 3, False, 1_923_393),  # the teacher default
    (16, 3, False, 480_929),  # the student default
    (8, 2, True, None),
    (5, 4, False, None),
])
def test_parameter_counts(chans, pools, complex_, expected):
    model = UNet(chans=chans, num_pool_layers=pools, complex=complex_)
    assert count_parameters(model) == unet_params(chans, pools, 2 if complex_ else 1)
    if expected is not None:
        assert count_parameters(model) == expected
    assert not any(isinstance(m, nn.InstanceNorm2d) and m.affine for m in model.modules())


def test_the_registry_and_the_schema_give_the_same_defaults():
    assert MODEL_FAMILIES["unet"].cls is UNet
    net = fill_defaults("net", {"family": "unet"})
    assert net == {"family": "unet", "chans": 32, "num_pool_layers": 3, "drop_prob": 0.0,
                   "dc": True}
    model = build_model(net)
    defaults = UNet()
    assert (model.dc, model.num_pool_layers, model.complex) == (defaults.dc, 3, False)
    assert count_parameters(model) == count_parameters(defaults) == 1_923_393
    config = validate({"datasets": {"demo": {"format": "demo"}}, "tasks": {"recon": {
        "datasets": ["demo"], "teacher": {"family": "unet"},
        "student": {"family": "unet", "chans": 16, "dc": False}, "pairs": [[4, 4]]}}})
    recon = config["tasks"]["recon"]
    assert net_spec(recon["student"]) == {"family": "unet", "chans": 16, "num_pool_layers": 3,
                                          "drop_prob": 0.0, "dc": False}
    assert count_parameters(build_model(net_spec(recon["student"]))) == 480_929


@pytest.mark.parametrize("options, error", [
    ({"chans": 0}, "chans"), ({"num_pool_layers": 0}, "num_pool_layers"),
    ({"drop_prob": 1.0}, "drop_prob"), ({"convs": 3}, "no option"),
])
def test_bad_options_raise(options, error):
    with pytest.raises(KdmriError, match=error):
        build_model({**TINY, **options})


@pytest.mark.parametrize("shape", [(16, 16), (17, 23), (21, 16)])
@pytest.mark.parametrize("dc", [True, False])
def test_output_shape_on_even_and_odd_sizes(shape, dc):
    torch.manual_seed(0)
    model = build_model({**TINY, "dc": dc})
    nn.init.normal_(model.final.weight)  # a U-Net that is not the identity
    image, kspace, mask = tiny_inputs(3, shape)
    out = model(image, kspace, mask)
    assert out.shape == (3, 1, *shape) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    out.abs().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_odd_sizes_keep_every_level_at_the_floored_size():
    """Pooling floors 17 x 23 to 8 x 11 and 4 x 5; the decoder reflect-pads its upsampled
    maps by one row or column to the skip's size, so no level is cropped."""
    model = build_model(TINY)
    image, kspace, mask = tiny_inputs(2, (17, 23))
    paths = [p for k in range(1, 6) for p in model.feature_paths(k)]
    with FeatureHooks(model, paths) as hooks:
        model(image, kspace, mask)
        shapes = [tuple(f.shape[1:]) for f in hooks.pop()]
    assert shapes == [(4, 17, 23), (8, 8, 11), (16, 4, 5), (8, 8, 11), (4, 17, 23)]


def test_too_small_an_image_raises():
    model = build_model(TINY)  # 2 poolings: at least 8 pixels a side
    image, kspace, mask = tiny_inputs(1, (8, 12))
    with pytest.raises(KdmriError, match="at least 8 pixels"):
        model(image[..., :7, :], kspace[..., :7, :], mask[:7])
    model(image, kspace, mask)


def test_residual_starts_as_identity_and_dc_off_ignores_kspace():
    model = build_model({**TINY, "dc": False})
    image, kspace, mask = tiny_inputs()
    torch.testing.assert_close(model(image), image, atol=0, rtol=0)  # zero final 1x1
    with torch.no_grad():
        model.final.bias.fill_(0.25)
    torch.testing.assert_close(model(image, kspace, mask), model(image))
    torch.testing.assert_close(model(image), image + 0.25)  # output = input + U-Net(input)


def test_dc_keeps_the_measured_kspace():
    torch.manual_seed(1)
    model = build_model(TINY)
    nn.init.normal_(model.final.weight)
    image, kspace, mask = tiny_inputs(2, (16, 16))
    out = model(image, kspace, mask)
    # the output is real, so its k-space is the symmetric part of the blended k-space;
    # the mask of tiny_inputs is closed under the mirror, and so is the measured data
    sampled = mask.bool().expand_as(kspace)
    torch.testing.assert_close(fft2c(out)[sampled], kspace[sampled], atol=1e-5, rtol=1e-4)
    plain = build_model({**TINY, "dc": False})
    plain.load_state_dict(model.state_dict())
    assert not torch.allclose(fft2c(plain(image))[sampled], kspace[sampled], atol=1e-3)
    with pytest.raises(KdmriError, match="k-space"):
        model(image)


def test_complex_unet_returns_the_complex_image_data_consistent():
    torch.manual_seed(2)
    model = build_model({**TINY, "complex": True})
    assert model.complex and model.final.out_channels == 2
    nn.init.normal_(model.final.weight)
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 1, 16, 12, generator=g, dtype=torch.complex64)
    mask = torch.zeros(16, 12)
    mask[:, [0, 3, 6, 7]] = 1
    kspace = fft2c(target) * mask
    image = to_channels(ifft2c(kspace))
    out = model(image, kspace, mask)
    assert out.shape == (2, 2, 16, 12)
    sampled = mask.bool().expand_as(kspace)
    torch.testing.assert_close(fft2c(from_channels(out))[sampled], kspace[sampled],
                               atol=1e-5, rtol=1e-4)


def test_feature_paths_name_the_conv_blocks_in_forward_order():
    model = UNet(chans=4, num_pool_layers=3)
    paths = [model.feature_paths(k) for k in range(1, 8)]
    assert paths == [["down.0"], ["down.1"], ["down.2"], ["bottleneck"], ["up.0"], ["up.1"],
                     ["up.2"]]
    blocks = [model.get_submodule(p[0]) for p in paths]
    assert all(type(b).__name__ == "ConvBlock" for b in blocks)
    # forward order: the blocks run one after the other in the order of k
    order = []
    handles = [b.register_forward_hook(lambda m, i, o, k=k: order.append(k))
               for k, b in enumerate(blocks, 1)]
    model(*tiny_inputs(1, (16, 16)))
    for handle in handles:
        handle.remove()
    assert order == list(range(1, 8))


@pytest.mark.parametrize("conv", [0, -1, 6])
def test_bad_feature_layer_raises(conv):
    with pytest.raises(KdmriError, match=f"conv {conv} does not exist.*1..5"):
        build_model(TINY).feature_paths(conv)


def test_attention_pairs_between_a_unet_teacher_and_student():
    teacher = build_model({**TINY, "chans": 8})
    student = build_model(TINY)
    image, kspace, mask = tiny_inputs(2, (17, 16))
    pairs = [[1, 1], [3, 3], [5, 5]]
    with FeatureHooks(teacher, [p for t, _ in pairs for p in teacher.feature_paths(t)]) as th, \
            FeatureHooks(student, [p for _, s in pairs for p in student.feature_paths(s)]) as sh:
        teacher(image, kspace, mask)
        student(image, kspace, mask)
        student_features, teacher_features = sh.pop(), th.pop()
        loss = attention_transfer_loss(student_features, teacher_features)
    # paper eq. 1 written out: per pair, Q = sum over channels of A^2, flattened and
    # normalised per sample; the batch mean of ||Q_S - Q_T||_2; summed over the three pairs
    # (the teacher has twice the student's channels at every level)
    expected = 0.0
    for s, t in zip(student_features, teacher_features, strict=True):
        assert s.shape[2:] == t.shape[2:] and t.shape[1] == 2 * s.shape[1]
        maps = []
        for f in (s, t):
            q = (f.detach().double().numpy() ** 2).sum(axis=1).reshape(len(f), -1)
            maps.append(q / np.linalg.norm(q, axis=1, keepdims=True))
        expected += np.linalg.norm(maps[0] - maps[1], axis=1).mean()
    assert expected > 0
    np.testing.assert_allclose(loss.item(), expected, rtol=1e-5)
    loss.backward()
    assert student.down[0][0].weight.grad.abs().sum() > 0


def test_dropout_acts_in_training_only():
    model = build_model({**TINY, "drop_prob": 0.5, "dc": False})
    nn.init.normal_(model.final.weight)
    image, _, _ = tiny_inputs(1, (16, 16))
    model.train()
    torch.manual_seed(0)
    first = model(image)
    assert not torch.equal(first, model(image))
    model.eval()
    torch.testing.assert_close(model(image), model(image), atol=0, rtol=0)

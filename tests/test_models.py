"""Tests for kdmri.models: the paper's parameter counts, shapes, feature paths, DC."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdmri.errors import KdmriError
from kdmri.models import DCCNN, VDSR, build_model, count_parameters
from kdmri.mri import fft2c, ifft2c, undersample

PAPER_MODELS = [
    ({"family": "dccnn", "cascades": 5, "convs": 5, "channels": 32}, 141_765),
    ({"family": "dccnn", "cascades": 5, "convs": 3, "channels": 32}, 49_285),
    ({"family": "vdsr", "convs": 11, "channels": 64}, 333_569),
    ({"family": "vdsr", "convs": 7, "channels": 64}, 185_857),
]

TINY = {
    "dccnn": {"family": "dccnn", "cascades": 2, "convs": 3, "channels": 4},
    "vdsr": {"family": "vdsr", "convs": 3, "channels": 4},
}


def tiny_inputs(n=2, shape=(16, 16), seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(n, 1, *shape, generator=g)
    width = shape[1]
    centre = width // 2
    columns = {centre, centre - 1, centre + 1, centre - 4, centre + 4}
    if width % 2 == 0:
        columns.add(0)  # the Nyquist line is its own mirror
    mask = torch.zeros(shape)
    mask[:, sorted(columns)] = 1  # conjugate-symmetric: closed under mirror()
    kspace = undersample(target, mask)
    image = ifft2c(kspace).real
    return image, kspace, mask


def mirror(index: int, size: int) -> int:
    """Index of the conjugate frequency in a centred (fftshifted) axis of ``size``."""
    return (2 * (size // 2) - index) % size


@pytest.mark.parametrize("spec, expected", PAPER_MODELS)
def test_paper_parameter_counts(spec, expected):
    model = build_model(spec)
    assert count_parameters(model) == expected
    # every parameter is trainable; buffers (none) are not counted
    assert sum(p.numel() for p in model.parameters()) == expected


def test_student_is_about_35_percent_of_teacher():
    ratio = 49_285 / 141_765
    assert 0.34 < ratio < 0.36


def test_build_model_does_not_modify_spec():
    spec = dict(TINY["dccnn"])
    build_model(spec)
    assert spec == TINY["dccnn"]


def test_defaults_are_the_paper_teachers():
    assert count_parameters(DCCNN()) == 141_765
    assert count_parameters(VDSR()) == 333_569


@pytest.mark.parametrize("family", ["dccnn", "vdsr"])
@pytest.mark.parametrize("shape", [(16, 16), (20, 12)])
def test_output_shape_and_dtype(family, shape):
    model = build_model(TINY[family])
    image, kspace, mask = tiny_inputs(3, shape)
    out = model(image, kspace, mask)
    assert out.shape == (3, 1, *shape)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_vdsr_global_residual_and_ignores_kspace():
    model = build_model(TINY["vdsr"])
    image, kspace, mask = tiny_inputs()
    torch.testing.assert_close(model(image, kspace, mask), model(image))
    torch.testing.assert_close(model(image), image, atol=0, rtol=0)  # starts as the identity
    with torch.no_grad():
        model.cnn[-1].bias.fill_(0.25)
    torch.testing.assert_close(model(image), image + 0.25)  # output = input + CNN(input)


def test_vdsr_first_step_moves_the_output():
    """The zero last layer still learns at once (its gradient is the features'), so the
    network leaves the identity on its first optimiser step."""
    torch.manual_seed(0)
    model = build_model(TINY["vdsr"])
    image, _, _ = tiny_inputs()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    (model(image) - 2 * image).abs().mean().backward()
    assert model.cnn[-1].weight.grad.abs().sum() > 0
    optimizer.step()
    assert not torch.equal(model(image), image)


@pytest.mark.parametrize(
    "spec, conv, expected",
    [
        ({"family": "dccnn", "cascades": 5, "convs": 5, "channels": 32}, 3,
         [f"cascades.{c}.cnn.5" for c in range(5)]),
        ({"family": "dccnn", "cascades": 5, "convs": 3, "channels": 32}, 2,
         [f"cascades.{c}.cnn.3" for c in range(5)]),
        ({"family": "vdsr", "convs": 11, "channels": 64}, 6, ["cnn.11"]),
        ({"family": "vdsr", "convs": 7, "channels": 64}, 4, ["cnn.7"]),
    ],
)
def test_feature_paths_of_paper_pairs(spec, conv, expected):
    model = build_model(spec)
    paths = model.feature_paths(conv)
    assert paths == expected
    for path in paths:
        # the path is the activation right after the conv-th convolution
        assert isinstance(model.get_submodule(path), nn.ReLU)
        block_path, index = path.rsplit(".", 1)
        block = model.get_submodule(block_path)
        convs_before = [m for m in list(block)[: int(index)] if isinstance(m, nn.Conv2d)]
        assert len(convs_before) == conv
        assert isinstance(block[int(index) - 1], nn.Conv2d)


@pytest.mark.parametrize("family", ["dccnn", "vdsr"])
def test_feature_shapes(family):
    model = build_model(TINY[family])
    captured = []
    handles = [model.get_submodule(p).register_forward_hook(lambda m, i, o: captured.append(o))
               for p in model.feature_paths(2)]
    image, kspace, mask = tiny_inputs(2, (16, 12))
    model(image, kspace, mask)
    for handle in handles:
        handle.remove()
    assert [f.shape for f in captured] == [torch.Size([2, 4, 16, 12])] * len(handles)


@pytest.mark.parametrize("family", ["dccnn", "vdsr"])
@pytest.mark.parametrize("conv", [0, -1, 3, 4])
def test_bad_conv_index_raises(family, conv):
    model = build_model(TINY[family])  # 3 convs: only 1 and 2 have an activation
    with pytest.raises(KdmriError, match=f"conv {conv}"):
        model.feature_paths(conv)


def test_unknown_family_raises():
    with pytest.raises(KdmriError, match="unknown model family 'resnet'") as info:
        build_model({"family": "resnet"})
    assert "dccnn" in str(info.value) and "vdsr" in str(info.value)
    with pytest.raises(KdmriError, match="unknown model family None"):
        build_model({"convs": 3})


def test_unknown_option_raises():
    with pytest.raises(KdmriError, match="depth") as info:
        build_model({"family": "vdsr", "convs": 3, "depth": 4})
    assert "channels" in str(info.value)
    with pytest.raises(KdmriError, match="cascades"):
        build_model({"family": "vdsr", "cascades": 5})


def test_too_few_convs_raises():
    with pytest.raises(KdmriError, match="at least 2"):
        build_model({"family": "dccnn", "convs": 1})


def test_dccnn_output_data_consistent_with_symmetric_mask():
    """With a conjugate-symmetric mask the real output keeps the measured k-space exactly."""
    torch.manual_seed(0)
    model = build_model(TINY["dccnn"])
    image, kspace, mask = tiny_inputs(2, (16, 16))
    columns = torch.nonzero(mask[0]).flatten().tolist()
    assert sorted(columns) == sorted(mirror(c, 16) for c in columns)
    out = model(image, kspace, mask)
    assert (out - image).abs().max() > 1e-3  # the network did change the image
    k_out = fft2c(out)
    sampled = mask.bool().expand_as(k_out)
    torch.testing.assert_close(k_out[sampled], kspace[sampled], atol=1e-5, rtol=0)


def test_dccnn_output_data_consistent_on_paired_lines_of_random_mask(stores):
    """kdmri masks are not symmetric; where a sampled line's mirror is sampled as well, the
    output's k-space equals the measured k-space (the real part keeps it exactly)."""
    torch.manual_seed(1)
    model = build_model(TINY["dccnn"])
    mask = torch.from_numpy(stores.mask)
    target = torch.from_numpy(stores.targets["train"][:2]).unsqueeze(1)
    kspace = undersample(target, mask)
    out = model(ifft2c(kspace).real, kspace, mask)
    width = mask.shape[1]
    columns = torch.nonzero(mask[0]).flatten().tolist()
    paired = [c for c in columns if mirror(c, width) in columns]
    assert paired  # at least the zero-frequency line
    k_out = fft2c(out)
    torch.testing.assert_close(k_out[..., paired], kspace[..., paired], atol=1e-5, rtol=0)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("in_channels, out_channels", [(1, 32), (32, 1), (32, 32)])
def test_conv3x3_equals_conv2d_in_values_and_gradients(in_channels, out_channels, batch,
                                                      channels_last):
    """Conv3x3 computes what ``F.conv2d`` computes, forwards and backwards, in either memory
    format and for non-square, odd sizes; for batches of two or more it runs the same
    kernel, bit for bit (training results do not depend on it)."""
    from kdmri.models.blocks import Conv3x3

    torch.manual_seed(0)
    conv = Conv3x3(in_channels, out_channels)
    x = torch.randn(batch, in_channels, 11, 14, requires_grad=True)
    xx = x
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
        xx = x.to(memory_format=torch.channels_last)
    out = conv(xx)
    expected = torch.nn.functional.conv2d(xx, conv.weight, conv.bias, padding=1)
    assert out.shape == expected.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    upstream = torch.randn_like(expected)
    got = torch.autograd.grad(out, (x, conv.weight, conv.bias), upstream)
    want = torch.autograd.grad(expected, (x, conv.weight, conv.bias), upstream)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-5)
    if batch > 1:
        assert torch.equal(out, expected)
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


def test_models_are_built_of_conv3x3_with_in_place_relu():
    from kdmri.models.blocks import Conv3x3

    for spec, _ in PAPER_MODELS:
        model = build_model(spec)
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        assert convs and all(type(m) is Conv3x3 for m in convs)
        assert all(m.inplace for m in model.modules() if isinstance(m, nn.ReLU))

"""Tests for the E2E-VarNet family (kdmri.models.varnet): parameter counts against the
architecture's arithmetic, normalised sensitivity maps from the ACS lines, a cascade's
data-consistency step against NumPy, the RSS output, gradients, scale equivariance, feature
layers and tracing; trained on multi-coil input stores (the batch it is given, its loss, its
teacher cache, its predictions, its FLOPs and latency). Tiny networks: 2 coils, 32 x 32."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from kdmri.config import fill_defaults
from kdmri.errors import KdmriError
from kdmri.models import MODEL_FAMILIES, VarNet, build_model, count_parameters, family_of
from kdmri.models.varnet import acs_columns
from tests.oracles import np_fft2c, np_ifft2c

N, C, H, W = 2, 2, 32, 32
TINY = {"cascades": 2, "chans": 4, "pools": 2, "sens_chans": 4, "sens_pools": 2}


def tiny(**changes) -> VarNet:
    torch.manual_seed(0)
    return VarNet(**{**TINY, **changes}).eval()


def column_mask() -> torch.Tensor:
    """(W,): the 7 central columns 13..19 and every 5th column (0, 5, ..., 30)."""
    mask = torch.zeros(W)
    mask[13:20] = 1
    mask[::5] = 1
    return mask


def measured(seed: int = 0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Masked coil k-space (N, C, H, W) complex64 of a random object seen by two smooth coils."""
    g = torch.Generator().manual_seed(seed)
    obj = torch.complex(torch.rand(N, 1, H, W, generator=g), 0.3 * torch.randn(N, 1, H, W, generator=g))
    y = torch.linspace(-1, 1, H)[:, None]
    x = torch.linspace(-1, 1, W)[None, :]
    coils = torch.stack([torch.exp(-((x + 1) ** 2 + y**2)) * torch.exp(0.5j * y),
                         torch.exp(-((x - 1) ** 2 + y**2)) * torch.exp(-0.3j * x)])
    kspace = torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(coils * obj, dim=(-2, -1)),
                                               norm="ortho"), dim=(-2, -1))
    return (kspace * (column_mask() if mask is None else mask)).to(torch.complex64)


# ------------------------------------------------------------------ 1. parameter counts
def unet_count(chans: int, pools: int) -> int:
    """kdmri's U-Net on two channels (real, imaginary), level l with w_l = chans * 2**l
    features: each conv block is two 3x3 convs without bias (instance norm has no
    parameters); encoder level l maps w_(l-1) (2 at l = 0) to w_l, the bottleneck
    w_(L-1) to w_L; each decoder level is a 2x2 transpose conv without bias w_(l+1) -> w_l
    and a conv block on the skip-concatenated 2 w_l -> w_l; a 1x1 conv with bias w_0 -> 2."""
    w = [chans * 2**level for level in range(pools + 1)]
    encoder = sum(9 * (2 if level == 0 else w[level - 1]) * w[level] + 9 * w[level] * w[level]
                  for level in range(pools))
    bottleneck = 9 * w[pools - 1] * w[pools] + 9 * w[pools] * w[pools]
    decoder = sum(4 * w[level + 1] * w[level] + 9 * 2 * w[level] * w[level]
                  + 9 * w[level] * w[level] for level in range(pools))
    return encoder + bottleneck + decoder + (2 * w[0] + 2)


@pytest.mark.parametrize("options", [
    TINY,
    {"cascades": 3, "chans": 6, "pools": 1, "sens_chans": 3, "sens_pools": 3},
])
def test_parameter_counts_follow_the_architecture(options):
    model = VarNet(**options)
    sens = unet_count(options["sens_chans"], options["sens_pools"])
    cascade = unet_count(options["chans"], options["pools"]) + 1  # + the DC weight eta
    assert count_parameters(model.sens_net) == sens
    assert all(count_parameters(c) == cascade for c in model.cascades)
    assert count_parameters(model) == sens + options["cascades"] * cascade


def test_the_defaults_are_the_teacher_and_the_suggested_students_sizes():
    teacher = build_model(fill_defaults("net", {"family": "varnet"}))
    assert family_of(teacher) == "varnet" and MODEL_FAMILIES["varnet"].multicoil
    # 6 cascades x (U-Net chans 12, 2 pools + eta) + the maps' U-Net (chans 4, 2 pools)
    assert count_parameters(teacher) == 6 * (unet_count(12, 2) + 1) + unet_count(4, 2) == 401_060
    assert count_parameters(VarNet(chans=6)) == 6 * (unet_count(6, 2) + 1) + 7_346 == 106_148
    assert count_parameters(VarNet(cascades=3, chans=6)) == 56_747


def test_complex_true_is_refused():
    with pytest.raises(KdmriError, match="complex must be false"):
        VarNet(complex=True)


# ------------------------------------------------------------------ ACS lines and maps
def test_the_acs_lines_are_the_sampled_run_around_the_centre():
    g = torch.Generator().manual_seed(3)
    masks = (torch.rand(6, W, generator=g) < 0.6).float()
    masks[:, W // 2] = 1
    masks[5, W // 2] = 0  # no sampled centre: no ACS lines
    found = acs_columns(masks[:, None, None, :], W)[:, 0, 0].numpy()
    for m, acs in zip(masks.numpy(), found, strict=True):
        expected = np.zeros(W)
        if m[W // 2]:
            lo = hi = W // 2
            while lo > 0 and m[lo - 1]:
                lo -= 1
            while hi < W - 1 and m[hi + 1]:
                hi += 1
            expected[lo:hi + 1] = 1
        np.testing.assert_array_equal(acs, expected)
    np.testing.assert_array_equal(acs_columns(column_mask(), W)[0, 0, 0].numpy(),
                                  (np.arange(W) >= 13) & (np.arange(W) <= 20))  # 20 = 4 x 5
    assert acs_columns(column_mask(), W, 4)[0, 0, 0].nonzero().flatten().tolist() == [14, 15, 16, 17]


def test_sensitivity_maps_are_normalised_and_read_the_acs_lines_only():
    model = tiny()
    kspace, mask = measured(), column_mask()
    with torch.no_grad():
        maps = model.sensitivity_maps(kspace, mask)
        outside = kspace.clone()
        outside[..., 0] += 5.0  # column 0 is sampled but outside the ACS run
        same = model.sensitivity_maps(outside, mask)
    assert maps.shape == (N, C, H, W) and maps.dtype == torch.complex64
    raw = model.sens_net.norm_unet(torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(
        kspace * acs_columns(mask, W), dim=(-2, -1)), norm="ortho"), dim=(-2, -1))
        .reshape(N * C, 1, H, W)).reshape(N, C, H, W).detach()
    strong = raw.abs().pow(2).sum(1).sqrt() > 1e-3 * raw.abs().max()
    energy = maps.abs().double().pow(2).sum(1)
    assert strong.float().mean() > 0.9
    np.testing.assert_allclose(energy[strong].numpy(), 1.0, atol=1e-5)
    torch.testing.assert_close(same, maps, rtol=0, atol=0)


# ------------------------------------------------------------------ 3. one cascade
class Zero(nn.Module):
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(image)


@pytest.mark.parametrize("eta", [1.0, 0.3])
def test_a_cascade_without_regulariser_is_the_data_consistency_step(eta):
    model = tiny(cascades=1)
    cascade = model.cascades[0]
    cascade.regulariser = Zero()
    with torch.no_grad():
        cascade.dc.weight.fill_(eta)
    k0, mask = measured(), column_mask()
    g = torch.Generator().manual_seed(9)
    k = torch.complex(torch.randn(N, C, H, W, generator=g), torch.randn(N, C, H, W, generator=g))
    with torch.no_grad():
        maps = model.sensitivity_maps(k0, mask)
        out = cascade(k, k0, mask.reshape(1, 1, 1, W), maps).numpy()
    k_np, k0_np, m = k.numpy(), k0.numpy(), mask.numpy().astype(bool)
    if eta == 1.0:  # hard DC: the measurement where sampled, k elsewhere
        expected = np.where(m, k0_np, k_np)
    else:
        expected = k_np - eta * m * (k_np - k0_np)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)


def test_a_cascade_subtracts_the_expanded_regulariser_output():
    # k - eta M (k - k0) - E(U(R(k))) with R and E written in NumPy; U the cascade's own
    model = tiny(cascades=1)
    cascade = model.cascades[0]
    with torch.no_grad():
        cascade.dc.weight.fill_(0.6)
    k0, mask = measured(), column_mask()
    k = measured(seed=5, mask=torch.ones(W))
    with torch.no_grad():
        maps = model.sensitivity_maps(k0, mask)
        out = cascade(k, k0, mask, maps).numpy().astype(np.complex128)
    s, k_np = maps.numpy().astype(np.complex128), k.numpy().astype(np.complex128)
    k0_np, m = k0.numpy().astype(np.complex128), mask.numpy()
    image = (np.conj(s) * np_ifft2c(k_np)).sum(1, keepdims=True)  # R(k)
    with torch.no_grad():
        u = cascade.regulariser(torch.from_numpy(image.astype(np.complex64))).numpy()
    expected = k_np - 0.6 * m * (k_np - k0_np) - np_fft2c(s * u)  # E(U(R(k)))
    assert np.abs(np_fft2c(s * u)).max() > 1e-2  # the regulariser's part is not negligible
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)


# ------------------------------------------------------------------ 4. the whole network
def test_the_output_is_the_rss_of_the_final_kspace():
    model = tiny()
    kspace, mask = measured(), column_mask()
    with torch.no_grad():
        out = model(kspace, mask)
        final = model.kspace_forward(kspace, mask)
    assert out.shape == (N, 1, H, W) and out.dtype == torch.float32
    assert final.shape == (N, C, H, W) and final.dtype == torch.complex64
    rss = np.sqrt((np.abs(np_ifft2c(final.numpy().astype(np.complex128))) ** 2).sum(1, keepdims=True))
    np.testing.assert_allclose(out.numpy(), rss, rtol=1e-5, atol=1e-6)
    assert not np.allclose(final.numpy(), kspace.numpy(), atol=1e-3)  # the cascades changed it


@pytest.mark.parametrize("shape", ["W", "1W", "HW", "N11W", "N1HW"])
def test_every_mask_form_gives_the_same_output(shape):
    model = tiny(cascades=1)
    kspace, mask = measured(), column_mask()
    forms = {"W": mask, "1W": mask[None], "HW": mask.expand(H, W),
             "N11W": mask.expand(N, 1, 1, W), "N1HW": mask.expand(N, 1, H, W)}
    with torch.no_grad():
        torch.testing.assert_close(model(kspace, forms[shape]), model(kspace, mask), rtol=0, atol=0)


def test_gradients_reach_every_parameter():
    model = tiny().train()
    model(measured(), column_mask()).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if name == "cascades.0.dc.weight":
            # the first cascade starts at the measurement: M (k - k0) = 0, so eta_1 gets none
            assert p.grad.item() == 0.0
        else:
            assert p.grad.abs().max() > 0, name


def test_scaling_the_kspace_scales_the_image():
    model = tiny()
    kspace, mask = measured(), column_mask()
    with torch.no_grad():
        out, scaled = model(kspace, mask), model(7 * kspace, mask)
        maps, scaled_maps = model.sensitivity_maps(kspace, mask), model.sensitivity_maps(7 * kspace, mask)
    assert (scaled - 7 * out).abs().max() <= 1e-4 * (7 * out).abs().max()
    assert (scaled_maps - maps).abs().max() <= 1e-4


# ------------------------------------------------------------------ 5. feature layers
def test_feature_paths_name_the_regularisers_conv_blocks():
    model = tiny()
    chans, pools = TINY["chans"], TINY["pools"]
    modules = dict(model.named_modules())
    for k in range(1, 2 * pools + 2):
        level = k - 1 if k <= pools + 1 else 2 * pools + 1 - k  # 0 = full size
        paths = model.feature_paths(k)
        assert len(paths) == TINY["cascades"]
        assert [p.split(".")[:3] for p in paths] == [["cascades", str(c), "regulariser"]
                                                     for c in range(TINY["cascades"])]
        captured = []
        hooks = [modules[p].register_forward_hook(lambda m, i, o, into=captured: into.append(o))
                 for p in paths]
        with torch.no_grad():
            model(measured(), column_mask())
        for hook in hooks:
            hook.remove()
        assert len(captured) == TINY["cascades"]
        for feature in captured:
            assert isinstance(feature, torch.Tensor)
            assert feature.shape == (N, chans * 2**level, H // 2**level, W // 2**level), k
    for k in (0, 2 * pools + 2):
        with pytest.raises(KdmriError):
            model.feature_paths(k)


# ------------------------------------------------------------------ 6. TorchScript
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
def test_the_traced_network_reproduces_the_eager_one():
    # traced, not scripted: the U-Net's forward and kdmri.mri's centred FFT (a transform
    # passed as an argument) do not compile with torch.jit.script
    model = tiny()
    kspace, mask = measured(), column_mask()
    with torch.no_grad():
        traced = torch.jit.trace(model, (kspace, mask), check_trace=False)
        torch.testing.assert_close(traced(kspace, mask), model(kspace, mask), rtol=0, atol=1e-5)
        other_mask = torch.zeros(W)
        other_mask[10:22] = 1
        other = measured(seed=4, mask=other_mask)
        torch.testing.assert_close(traced(other, other_mask), model(other, other_mask),
                                   rtol=0, atol=1e-5)


# ------------------------------------------------------------------ 7. training and inference
#: The nets of a tiny multi-coil study: teacher and student differ in their U-Nets' width
#: only, and are paired at their bottlenecks (block 3 of 5, at a quarter of the size).
TEACHER = {"family": "varnet", **TINY}
STUDENT = {"family": "varnet", **TINY, "chans": 2}
SPLIT_SLICES = {"train": 4, "val": 2}


def coil_images(slices: int, seed: int) -> np.ndarray:
    """Coil images (slices, C, H, W) complex64: a random smooth object seen by the two coils
    of :func:`measured`, without the mask."""
    kspace = torch.cat([measured(seed + i, mask=torch.ones(W)) for i in range(-(-slices // N))])
    return np_ifft2c(kspace[:slices].numpy().astype(np.complex128)).astype(np.complex64)


@pytest.fixture(scope="module")
def coil_stores(tmp_path_factory):
    """Multi-coil data stores written here (one volume per split, target = the RSS of the
    coil images) and their input stores under a random 4x mask, as kdmri undersample
    writes them."""
    from kdmri.data.prepare import undersample_store
    from kdmri.data.store import StoreWriter
    from kdmri.masks import create_mask_func

    root = tmp_path_factory.mktemp("coil_stores")
    mask = create_mask_func("random", 4)((H, W), seed=0)
    for i, (split, slices) in enumerate(SPLIT_SLICES.items()):
        coils = coil_images(slices, seed=10 * i)
        target = np.sqrt((np.abs(coils.astype(np.complex128)) ** 2).sum(1)).astype(np.float32)
        with StoreWriter(root / "data" / f"{split}.h5", (H, W), coils=C) as writer:
            writer.add_volume(f"{split}-0", target, coils=coils)
        undersample_store(root / "data" / f"{split}.h5", mask, root / "inputs" / f"{split}.h5")
    return root / "inputs"


def coil_study() -> dict:
    from kdmri.config import validate

    return validate({
        "datasets": {"mc": {"format": "demo", "size": H, "simulated_coils": {"count": C}}},
        "tasks": {"recon": {"datasets": ["mc"], "teacher": TEACHER, "student": STUDENT,
                            "pairs": [[3, 3]]}},
        "train": {"epochs": 1, "batch_size": 2}})


def trainer(inputs, out, model: str):
    from kdmri.specs import model_spec
    from kdmri.train import Trainer

    return Trainer(model_spec(coil_study(), "recon", model, 0), inputs / "train.h5",
                   inputs / "val.h5", out, log=lambda message: None, progress=False)


def test_a_multicoil_batch_reaches_varnet_as_kspace_and_mask_and_its_loss_is_the_rss_l1(
        coil_stores, tmp_path):
    from kdmri.data.store import read_store

    teacher = trainer(coil_stores, tmp_path, "teacher")
    calls = []
    teacher.model.register_forward_pre_hook(lambda module, args: calls.append(args))
    rows = [3, 0]
    batch, extra = teacher._batch(teacher.train_data, torch.tensor(rows))
    teacher.model.eval()
    with torch.no_grad():
        total, terms, prediction = teacher.losses(batch, extra, None)
    stored = read_store(coil_stores / "train.h5", ["kspace", "target", "mask"])
    assert len(calls) == 1 and len(calls[0]) == 2  # model(kspace, mask), nothing else
    kspace, mask = calls[0]
    assert kspace.dtype == torch.complex64 and kspace.shape == (2, C, H, W)
    np.testing.assert_array_equal(kspace.numpy(), stored["kspace"][rows])
    np.testing.assert_array_equal(mask.numpy(), stored["mask"])
    assert batch.image is None and prediction.shape == (2, 1, H, W)
    # the RSS of the network's final coil images, here in NumPy, against the RSS target
    with torch.no_grad():
        final = teacher.model.kspace_forward(torch.from_numpy(stored["kspace"][rows]),
                                             torch.from_numpy(stored["mask"])).numpy()
    rss = np.sqrt((np.abs(np_ifft2c(final.astype(np.complex128))) ** 2).sum(1))
    l1 = np.abs(rss - stored["target"][rows]).mean()
    assert list(terms) == ["reconstruction"]
    assert terms["reconstruction"].item() == pytest.approx(l1, rel=1e-5)
    assert total.item() == pytest.approx(l1, rel=1e-5)


def test_a_varnet_teacher_trains_and_its_cache_holds_its_rss_outputs(coil_stores, tmp_path):
    from kdmri.checkpoints import load_model
    from kdmri.data.store import read_store
    from kdmri.distill import FeatureHooks, attention_map
    from kdmri.inference import cache_teacher, run_model
    from kdmri.specs import model_spec

    history = trainer(coil_stores, tmp_path / "teacher", "teacher").run()
    assert np.isfinite(history["best"]["val_psnr"])
    spec = model_spec(coil_study(), "recon", "attention", 0)
    stores = {split: coil_stores / f"{split}.h5" for split in SPLIT_SLICES}
    cache_teacher(tmp_path / "teacher" / "model.pt", spec["teacher_net"], spec["pairs"], stores,
                  tmp_path / "cache", torch.device("cpu"))
    model, _ = load_model(tmp_path / "teacher" / "model.pt", expect_net=spec["teacher_net"])
    model.eval()
    paths = model.feature_paths(3)
    for split, slices in SPLIT_SLICES.items():
        cached = read_store(tmp_path / "cache" / f"{split}.h5", ["output", "attention"])
        inputs = read_store(stores[split], ["kspace", "mask"])
        with torch.no_grad(), FeatureHooks(model, paths) as hooks:
            direct = model(torch.from_numpy(inputs["kspace"]), torch.from_numpy(inputs["mask"]))
            maps = torch.stack([attention_map(f) for f in hooks.pop()], 1).numpy()
        assert cached["output"].dtype == np.float32 and cached["output"].shape == (slices, H, W)
        # (the cache ran the network in channels-last memory format, this in the plain one)
        np.testing.assert_allclose(cached["output"], direct[:, 0].numpy(), rtol=1e-4, atol=1e-5)
        # one map per cascade at the bottleneck, a quarter of the size per side
        assert cached["attention"].shape == (slices, TINY["cascades"], (H // 4) * (W // 4))
        np.testing.assert_allclose(cached["attention"], maps, rtol=1e-4, atol=1e-5)
    # what kdmri predict writes: the RSS prediction, float32 (N, H, W)
    predicted = run_model(model, stores["val"], torch.device("cpu"))["output"]
    assert predicted.dtype == np.float32
    np.testing.assert_allclose(predicted, read_store(
        tmp_path / "cache" / "val.h5", ["output"])["output"], rtol=1e-6, atol=1e-7)


def test_flops_and_latency_of_varnet_count_the_coils():
    from kdmri.inference import latency_ms
    from kdmri.models import EXAMPLE_COILS, flops_per_slice

    model = tiny()
    counts = {coils: flops_per_slice(model, H, W, coils=coils) for coils in (2, 4, 6)}
    # the sensitivity U-Net runs once per coil, the cascades once per slice
    assert counts[4] - counts[2] == counts[6] - counts[4] > 0
    assert flops_per_slice(model, H, W) == flops_per_slice(model, H, W, coils=EXAMPLE_COILS)
    assert latency_ms(model, (H, W), torch.device("cpu"), repeats=1, coils=C) > 0

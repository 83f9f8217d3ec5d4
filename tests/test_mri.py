"""Tests for kdmri.mri: centred orthonormal FFTs and data consistency, against numpy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kdmri import mri, numpy_fft
from kdmri.mri import DataConsistency, data_consistency, fft2c, ifft2c, real_image, undersample, zero_filled
from tests.oracles import np_fft2c, np_ifft2c

SHAPES = [(16, 16), (15, 20), (2, 3, 12, 9)]


def random_complex(shape, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.complex(torch.randn(shape, generator=g), torch.randn(shape, generator=g))


@pytest.mark.parametrize("shape", SHAPES)
def test_fft_round_trip_stays_complex64(shape):
    x = random_complex(shape)
    k = fft2c(x)
    assert k.dtype == torch.complex64
    back = ifft2c(k)
    assert back.dtype == torch.complex64
    torch.testing.assert_close(back, x, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64])
def test_fft_never_promotes_to_double(dtype):
    x = torch.rand(8, 8, dtype=torch.float32).to(dtype)
    assert fft2c(x).dtype == torch.complex64
    assert ifft2c(x).dtype == torch.complex64
    assert undersample(x.real if x.is_complex() else x, torch.ones(8, 8)).dtype == torch.complex64


@pytest.mark.parametrize("shape", SHAPES)
def test_fft_matches_numpy_float64_oracle(shape):
    x = random_complex(shape, seed=1)
    expected_k = np_fft2c(x.numpy().astype(np.complex128))
    np.testing.assert_allclose(fft2c(x).numpy(), expected_k, atol=1e-5, rtol=1e-5)
    expected_x = np_ifft2c(x.numpy().astype(np.complex128))
    np.testing.assert_allclose(ifft2c(x).numpy(), expected_x, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_numpy_ifft2c_matches_the_oracle_and_the_torch_one(shape):
    """kdmri.numpy_fft.ifft2c (the readers' inverse FFT, without torch) is kdmri.mri.ifft2c."""
    k = random_complex(shape, seed=2).numpy()
    out = numpy_fft.ifft2c(k)
    assert out.dtype == np.complex64
    np.testing.assert_allclose(out, np_ifft2c(k.astype(np.complex128)), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(out, ifft2c(torch.from_numpy(k)).numpy(), atol=1e-5, rtol=1e-5)


def test_fft_real_input_matches_numpy():
    x = torch.rand(3, 16, 16)
    np.testing.assert_allclose(
        fft2c(x).numpy(), np_fft2c(x.numpy().astype(np.float64)), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_fft_is_orthonormal(shape):
    x = random_complex(shape, seed=2)
    energy = (x.abs() ** 2).sum(dim=(-2, -1))
    torch.testing.assert_close((fft2c(x).abs() ** 2).sum(dim=(-2, -1)), energy, rtol=1e-5, atol=0)
    torch.testing.assert_close((ifft2c(x).abs() ** 2).sum(dim=(-2, -1)), energy, rtol=1e-5, atol=0)


def test_fft_centre_is_zero_frequency():
    x = torch.ones(8, 8)
    k = fft2c(x)
    assert k[4, 4].real.item() == pytest.approx(8.0)  # sum / sqrt(N) for the ortho norm
    k[4, 4] = 0
    assert k.abs().max().item() < 1e-5


def test_fft_rejects_1d_input():
    with pytest.raises(ValueError, match="at least 2 dims"):
        fft2c(torch.zeros(5))
    with pytest.raises(ValueError, match="at least 2 dims"):
        ifft2c(torch.zeros(5, dtype=torch.complex64))


def test_undersample_and_zero_filled():
    x = torch.rand(2, 12, 12)
    mask = torch.zeros(12, 12)
    mask[:, ::3] = 1
    k = undersample(x, mask)
    assert k.dtype == torch.complex64
    expected = np_fft2c(x.numpy().astype(np.float64)) * mask.numpy()
    np.testing.assert_allclose(k.numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(zero_filled(k).numpy(), np_ifft2c(expected), atol=1e-5)


def test_real_image():
    z = random_complex((4, 4))
    assert torch.equal(real_image(z), z.real)
    r = torch.rand(4, 4)
    assert real_image(r) is r


def test_dc_all_ones_mask_returns_measured_image():
    target = torch.rand(2, 1, 16, 16)
    measured = fft2c(target)
    prediction = torch.rand(2, 1, 16, 16)
    out = data_consistency(prediction, measured, torch.ones(16, 16))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, real_image(ifft2c(measured)), atol=1e-6, rtol=0)
    torch.testing.assert_close(out, target, atol=1e-5, rtol=0)


def test_dc_all_zeros_mask_returns_prediction():
    prediction = torch.rand(2, 1, 16, 16)
    measured = random_complex((2, 1, 16, 16))
    out = data_consistency(prediction, measured, torch.zeros(16, 16))
    torch.testing.assert_close(out, prediction, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", [(16, 16), (13, 10)])
def test_dc_matches_numpy_for_random_mask(shape):
    rng = np.random.default_rng(3)
    target = rng.random((3, 1, *shape))
    prediction = rng.random((3, 1, *shape))
    mask = (rng.random(shape) < 0.4).astype(np.float64)
    measured = mask * np_fft2c(target)
    expected = np_ifft2c(mask * measured + (1 - mask) * np_fft2c(prediction)).real
    out = data_consistency(
        torch.from_numpy(prediction).float(),
        torch.from_numpy(measured).to(torch.complex64),
        torch.from_numpy(mask),
    )
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)


def test_dc_mask_broadcasts_over_batch():
    rng = np.random.default_rng(4)
    columns = (rng.random(16) < 0.5).astype(np.float32)
    mask_2d = torch.from_numpy(np.tile(columns, (16, 1)))
    mask_row = torch.from_numpy(columns[None, :])  # (1, W)
    prediction = torch.rand(4, 1, 16, 16)
    measured = undersample(torch.rand(4, 1, 16, 16), mask_2d)
    batched = data_consistency(prediction, measured, mask_2d)
    for i in range(4):
        single = data_consistency(prediction[i : i + 1], measured[i : i + 1], mask_2d)
        torch.testing.assert_close(batched[i : i + 1], single, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        data_consistency(prediction, measured, mask_row), batched, atol=1e-6, rtol=0
    )
    full = mask_2d.expand(4, 1, 16, 16)
    torch.testing.assert_close(
        data_consistency(prediction, measured, full), batched, atol=1e-6, rtol=0
    )


def test_dc_under_autocast_stays_float32():
    prediction = torch.rand(2, 1, 16, 16)
    mask = torch.zeros(16, 16)
    mask[:, 6:10] = 1
    measured = undersample(torch.rand(2, 1, 16, 16), mask)
    reference = data_consistency(prediction, measured, mask)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = data_consistency(prediction.bfloat16(), measured, mask)
        assert out.dtype == torch.float32
    # only the input was rounded to bfloat16; the DC itself ran in float32
    expected = data_consistency(prediction.bfloat16().float(), measured, mask)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(out, reference, atol=1e-2, rtol=0)


def _centred_dc_case(shape, batch, seed):
    """A random mask, measurement and prediction, with the centred formula's DC output and
    its gradient (the reference every prepared DC is held to)."""
    torch.manual_seed(seed)
    mask = (torch.rand(shape) < 0.4).float()
    measured = undersample(torch.rand(batch, 1, *shape), mask)
    prediction = torch.rand(batch, 1, *shape, requires_grad=True)
    centred = real_image(ifft2c(mask * measured + (1.0 - mask) * fft2c(prediction)))
    (grad_centred,) = torch.autograd.grad(centred.square().sum(), prediction)
    return mask, measured, prediction, centred, grad_centred


@pytest.mark.parametrize("shape", [(16, 16), (64, 64), (32, 8), (13, 10), (16, 9)])
def test_prepared_dc_equals_the_centred_formula_exactly(shape):
    """Odd sizes: DataConsistency works in FFT order and shifts are permutations, so it is
    exact anywhere. Sizes that are powers of two: it runs no shift (signs instead), and
    PyTorch's CPU FFT (MKL's) gives the same numbers. Either way its output and gradient
    equal the centred formula's bit for bit, so the demo's results do not depend on it."""
    mask, measured, prediction, centred, grad_centred = _centred_dc_case(shape, 3, seed=0)
    prepared = DataConsistency(measured, mask)
    out = prepared(prediction)
    (grad_prepared,) = torch.autograd.grad(out.square().sum(), prediction)
    columns = mask[0]
    by_columns = DataConsistency(measured, columns[None, :])(prediction).detach()
    centred_columns = real_image(ifft2c(columns * measured + (1.0 - columns) * fft2c(prediction)))
    if all(n % 2 == 0 for n in shape) and not torch.backends.mkl.is_available():
        pytest.skip("bit-for-bit equality is a property of MKL's FFT (see the tolerance test)")
    assert torch.equal(out, centred)
    assert torch.equal(grad_prepared, grad_centred)
    assert torch.equal(prepared(prediction), out)  # reusable
    assert torch.equal(by_columns, centred_columns)
    assert out.dtype == torch.float32 and out.is_contiguous()


@pytest.mark.parametrize("shape", [(12, 10), (24, 36), (218, 170), (64, 64)])
def test_prepared_dc_of_even_sizes_runs_no_shift_and_matches_the_centred_formula(
        shape, monkeypatch):
    mask, measured, prediction, centred, grad_centred = _centred_dc_case(shape, 2, seed=1)
    expected = np_ifft2c(mask.double().numpy() * measured.numpy()
                         + (1 - mask.double().numpy()) * np_fft2c(prediction.detach().double().numpy())).real
    prepared = DataConsistency(measured, mask)

    def no_shift(*args, **kwargs):
        raise AssertionError("an even-size DC call shifted")

    monkeypatch.setattr(torch.fft, "fftshift", no_shift)
    monkeypatch.setattr(torch.fft, "ifftshift", no_shift)
    monkeypatch.setattr(mri, "_half_roll", no_shift)  # the shifts of kdmri.mri's DC core
    out = prepared(prediction)
    (grad_prepared,) = torch.autograd.grad(out.square().sum(), prediction)
    np.testing.assert_allclose(out.detach().numpy(), expected, atol=2e-6)
    torch.testing.assert_close(out, centred, atol=2e-6, rtol=0)
    torch.testing.assert_close(grad_prepared, grad_centred, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(16, 16), (64, 64), (24, 36), (13, 10)])
def test_the_shifted_form_of_the_dc_core_matches_the_prepared_dc(shape):
    """prepare_dc(sign_form=False), the form the ONNX graph runs at every size, against
    DataConsistency and the centred formula: the same numbers at powers of two and odd
    sizes (with MKL's FFT), within float32 rounding elsewhere."""
    mask, measured, prediction, centred, _ = _centred_dc_case(shape, 2, seed=2)
    kept, free, shifted = mri.prepare_dc(torch.view_as_real(measured), mask, sign_form=False)
    assert shifted
    out = mri.apply_dc(prediction.detach(), kept, free, shifted, False)
    reference = DataConsistency(measured, mask)(prediction).detach()
    torch.testing.assert_close(out, reference, atol=2e-6, rtol=0)
    torch.testing.assert_close(out, centred.detach(), atol=2e-6, rtol=0)
    exact = all(n & (n - 1) == 0 for n in shape) or any(n % 2 for n in shape)
    if exact and torch.backends.mkl.is_available():
        assert torch.equal(out, centred.detach())


def test_data_consistency_is_written_once():
    """The exported networks run kdmri.mri's DC core: kdmri.export has no FFT of its own."""
    from kdmri import export

    source = Path(export.__file__).read_text()
    assert "torch.fft" not in source and "view_as_complex" not in source
    assert "prepare_dc(" in source and "apply_dc(" in source

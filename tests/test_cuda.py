"""The CUDA paths: device choice and GPU slot, training with the splits kept on the GPU,
the deferred loss/gradient checks, mixed precision, the teacher cache, and a multi-coil
network (E2E-VarNet: coil k-space, sensitivity maps, FFTs) trained on the GPU.

Skipped (with the reason) where PyTorch sees no CUDA device, as in CI; run them on a GPU
machine with ``python -m pytest tests/test_cuda.py``. CPU and GPU results are compared with
TF32 off, so that both compute in float32.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from kdmri.data.store import read_store
from kdmri.device import select_device
from kdmri.inference import cache_teacher
from tests.test_train import PAIRS, TEACHER_NET, assert_nan_loss_stops_training, spec, train
from tests.test_varnet import coil_stores, coil_study  # noqa: F401 (coil_stores: a fixture)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device visible to PyTorch")

CPU, GPU = torch.device("cpu"), torch.device("cuda")


@pytest.fixture(autouse=True)
def float32_everywhere():
    """TF32 off for the comparisons with the CPU; the previous settings come back after."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_auto_picks_the_gpu_and_claims_a_slot(tmp_path, monkeypatch):
    monkeypatch.setenv("KDMRI_LOCK_DIR", str(tmp_path))
    device, slot = select_device("auto", log=lambda message: None)
    try:
        assert device.type == "cuda" and slot is not None
        assert (tmp_path / f"gpu{slot.index}.lock").exists()
    finally:
        slot.release()


def test_training_on_the_gpu_keeps_the_splits_there_and_matches_the_cpu(stores, tmp_path):
    gpu = train(stores, tmp_path / "gpu", spec(), device=GPU)
    cpu = train(stores, tmp_path / "cpu", spec(), device=CPU)
    assert all(t.device.type == "cuda" for t in gpu.train_data.values())
    assert all(t.device.type == "cuda" for t in gpu.val_data.values())
    assert gpu.check_every > 1 and cpu.check_every == 1  # deferred on the GPU only
    a = pd.read_csv(tmp_path / "gpu" / "history.csv")
    b = pd.read_csv(tmp_path / "cpu" / "history.csv")
    np.testing.assert_allclose(a["train_loss"], b["train_loss"], rtol=1e-3)
    np.testing.assert_allclose(a["val_psnr"], b["val_psnr"], atol=0.05)


def test_splits_too_large_for_the_gpu_stay_in_host_memory(stores, tmp_path, monkeypatch):
    monkeypatch.setattr("kdmri.train.DATA_ON_GPU_SHARE", 0.0)
    host = train(stores, tmp_path / "host", spec(), device=GPU)
    assert host.train_data["mask"].device.type == "cuda"
    assert all(host.train_data[key].device.type == "cpu" for key in ("zf", "target"))
    monkeypatch.undo()
    train(stores, tmp_path / "gpu", spec(), device=GPU)
    a = pd.read_csv(tmp_path / "host" / "history.csv")
    b = pd.read_csv(tmp_path / "gpu" / "history.csv")
    np.testing.assert_allclose(a["train_loss"], b["train_loss"], rtol=1e-5)


def test_mixed_precision_trains(stores, tmp_path):
    amp_spec = spec()
    amp_spec["train"].update(amp=True, epochs=8)  # (the scaler may skip its first steps)
    trainer = train(stores, tmp_path, amp_spec, device=GPU)
    assert trainer.amp and trainer.scaler.is_enabled()
    history = pd.read_csv(tmp_path / "history.csv")
    assert np.isfinite(history["train_loss"]).all()
    assert history["val_loss"].iloc[-1] < history["val_loss"].iloc[0]


def test_nan_loss_on_the_gpu_names_epoch_and_batch(stores, tmp_path, monkeypatch):
    """The checks run once per CHECK_EVERY_GPU steps, yet name the step that failed."""
    assert_nan_loss_stops_training(stores, tmp_path, monkeypatch, device=GPU)


def test_teacher_cache_on_the_gpu_equals_the_cpu(stores, tmp_path):
    train(stores, tmp_path / "teacher", spec("teacher"))
    inputs = {s: stores.inputs_dir / f"{s}.h5" for s in ("train", "val")}
    for device in (CPU, GPU):
        cache_teacher(tmp_path / "teacher" / "model.pt", TEACHER_NET, PAIRS, inputs,
                      tmp_path / device.type, device)
    for split in inputs:
        a = read_store(tmp_path / "cuda" / f"{split}.h5", ["output", "attention"])
        b = read_store(tmp_path / "cpu" / f"{split}.h5", ["output", "attention"])
        for key in ("output", "attention"):
            np.testing.assert_allclose(a[key], b[key], atol=1e-5, rtol=1e-4)


def test_cli_trains_on_the_gpu(stores, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "kdmri", "train", "--spec", json.dumps(spec()),
         "--inputs-dir", str(stores.inputs_dir), "--out-dir", str(tmp_path), "--device", "cuda"],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "gpu slot: claimed slot" in out.stderr
    model = torch.load(tmp_path / "model.pt", map_location="cpu", weights_only=True)
    assert all(torch.isfinite(v).all() for v in model["state_dict"].values())


@pytest.mark.parametrize("amp", [False, True])
def test_a_multicoil_training_step_on_the_gpu(coil_stores, tmp_path, amp):  # noqa: F811
    """A tiny VarNet teacher's epoch (two steps) on multi-coil input stores: the coil
    k-space, the mask, the sensitivity maps and the network's output on the GPU, under the
    trainer's AMP setting; in float32 the losses match the CPU's."""
    from kdmri.specs import model_spec
    from kdmri.train import Trainer

    def trainer(device, out):
        job = model_spec(coil_study(), "recon", "teacher", 0)
        job["train"].update(amp=amp)
        return Trainer(job, coil_stores / "train.h5", coil_stores / "val.h5", out,
                       device=device, log=lambda message: None, progress=False)

    gpu = trainer(GPU, tmp_path / "gpu")
    assert gpu.amp == amp and gpu.scaler.is_enabled() == amp
    assert all(t.device.type == "cuda" for t in gpu.train_data.values())
    batch, _ = gpu._batch(gpu.train_data, torch.tensor([0, 1], device=GPU))
    assert batch.image is None and batch.kspace.is_cuda and batch.mask.is_cuda
    assert batch.kspace.dtype == torch.complex64 and batch.target.is_cuda
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=amp):
        maps = gpu.model.sensitivity_maps(batch.kspace, batch.mask)
        output = gpu.model(batch.kspace, batch.mask)
    assert maps.is_cuda and maps.dtype == torch.complex64 and torch.isfinite(maps).all()
    assert output.is_cuda and output.shape == batch.target.shape
    assert torch.isfinite(output).all()
    result = gpu.run()
    history = pd.read_csv(tmp_path / "gpu" / "history.csv")
    assert np.isfinite(history["train_loss"]).all() and np.isfinite(result["best"]["val_psnr"])
    weights = torch.load(tmp_path / "gpu" / "model.pt", map_location="cpu", weights_only=True)
    assert all(torch.isfinite(v).all() for v in weights["state_dict"].values())
    if not amp:  # float32 on both: the same losses, up to the FFTs' and convolutions' rounding
        trainer(CPU, tmp_path / "cpu").run()
        cpu = pd.read_csv(tmp_path / "cpu" / "history.csv")
        np.testing.assert_allclose(history["train_loss"], cpu["train_loss"], rtol=1e-3)
        np.testing.assert_allclose(history["val_psnr"], cpu["val_psnr"], atol=0.05)

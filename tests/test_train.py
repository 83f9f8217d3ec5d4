"""Tests for the trainer, the teacher cache and device selection (the CLI: test_cli.py).

Everything runs on the CPU with the tiny stores of ``conftest.stores`` and tiny DC-CNNs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from kdmri.batch import make_batch
from kdmri.checkpoints import load_model
from kdmri.data.store import SliceDataset, read_store, store_info
from kdmri.device import claim_gpu_slot, select_device
from kdmri.distill import FeatureHooks, attention_map, attention_transfer_loss
from kdmri.distill.losses import imitation_loss
from kdmri.errors import KdmriError
from kdmri.inference import cache_teacher
from kdmri.io import load_torch
from kdmri.models import build_model
from kdmri.specs import model_spec
from kdmri.train import Trainer
from tests.oracles import np_psnr, np_zero_filled
from tests.reliability.helpers import PAIRS, STUDENT_NET, TEACHER_NET
from tests.reliability.helpers import study as tiny_study

EPOCHS = 3
#: The teacher and the distillation stages train for 2 epochs.
STAGES = {"teacher": {"epochs": 2}, "attention": {"epochs": 2}, "imitation": {"epochs": 2}}
HISTORY_COLUMNS = {"epoch", "train_loss", "val_loss", "val_psnr", "lr", "seconds", "samples_per_s"}


def study(lr: float = 1e-3, **train) -> dict:
    return tiny_study(stages=STAGES, **{"epochs": EPOCHS, "lr": lr, **train})


def spec(model: str = "student", seed: int = 0, lr: float = 1e-3, **train) -> dict:
    return model_spec(study(lr, **train), "recon", model, seed)


def train(stores, out_dir, model_spec_: dict, logs: list | None = None, **kwargs) -> Trainer:
    inputs = stores.inputs_dir
    trainer = Trainer(model_spec_, inputs / "train.h5", inputs / "val.h5", out_dir,
                      log=(logs.append if logs is not None else lambda message: None),
                      progress=False, **kwargs)
    trainer.run()
    return trainer


def load_weights_only(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


class SimulatedCrash(RuntimeError):
    pass


def crash_at_epoch(monkeypatch, epoch: int) -> None:
    """Make ``Trainer.train_epoch`` fail when epoch ``epoch`` (0-based) starts."""
    original = Trainer.train_epoch

    def train_epoch(self, e):
        if e == epoch:
            raise SimulatedCrash(f"killed at the start of epoch {e + 1}")
        return original(self, e)

    monkeypatch.setattr(Trainer, "train_epoch", train_epoch)


@pytest.fixture(scope="module")
def reference(stores, tmp_path_factory):
    """One uninterrupted student run that other tests compare against."""
    out = tmp_path_factory.mktemp("reference")
    logs: list[str] = []
    train(stores, out, spec(), logs)
    return out, logs


# ---------------------------------------------------------------------- outputs
def test_trainer_writes_model_history_and_checkpoint(reference):
    out, logs = reference
    assert (out / "model.pt").is_file()
    assert (out / "history.csv").is_file()
    assert (out / "checkpoint" / "last.pt").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "history.csv", "model.pt"]
    assert [p.name for p in (out / "checkpoint").iterdir()] == ["last.pt"]

    history = pd.read_csv(out / "history.csv")
    assert HISTORY_COLUMNS <= set(history.columns)
    assert history["epoch"].tolist() == list(range(1, EPOCHS + 1))
    assert history["lr"].iloc[0] == pytest.approx(1e-3)
    assert history["lr"].is_monotonic_decreasing  # cosine decay
    assert np.isfinite(history[sorted(HISTORY_COLUMNS)].to_numpy()).all()
    assert (history["samples_per_s"] > 0).all()

    model_file = load_weights_only(out / "model.pt")
    last = load_weights_only(out / "checkpoint" / "last.pt")
    assert model_file["net"] == STUDENT_NET
    assert model_file["spec"] == spec()
    assert model_file["params"] == sum(v.numel() for v in model_file["state_dict"].values())
    best_row = history.loc[history["val_loss"].idxmin()]
    assert model_file["epoch"] == best_row["epoch"]
    assert model_file["val_psnr"] == pytest.approx(best_row["val_psnr"])
    assert last["completed"] is True and last["epoch"] == EPOCHS
    assert len(last["history"]) == EPOCHS
    model, ckpt = load_model(out / "model.pt", expect_net=STUDENT_NET)
    assert_same_weights(model.state_dict(), model_file["state_dict"])
    assert any("training student" in message for message in logs)


def test_model_file_architecture_is_checked(reference):
    out, _ = reference
    with pytest.raises(KdmriError, match="does not match"):
        load_model(out / "model.pt", expect_net=TEACHER_NET)


@pytest.fixture(scope="module")
def trained(stores, tmp_path_factory):
    """A student trained long enough to learn something (40 epochs of 4 steps at lr 0.01;
    the 3 epochs of ``reference`` do not yet beat the zero-filled input)."""
    out = tmp_path_factory.mktemp("trained")
    train(stores, out, spec(lr=1e-2, epochs=40, batch_size=2))
    return out


def test_training_improves_on_the_zero_filled_input(trained, stores):
    """On the held-out test slices (used neither for training nor for choosing the best
    epoch) the trained student's PSNR beats that of the zero-filled input on every slice;
    both PSNRs and the zero-filled image are computed here from the targets and the mask."""
    target = stores.targets["test"]
    peak = target.max()  # the test split is one volume: its maximum, as in evaluation
    zf_psnr = np_psnr(target, np_zero_filled(target, stores.mask), peak)

    model, _ = load_model(trained / "model.pt", expect_net=STUDENT_NET)
    dataset = SliceDataset(stores.inputs_dir / "test.h5", keys=["zf"], extra=["mask"])
    batch = make_batch(dataset.batch(np.arange(len(dataset)))["zf"], dataset.extra["mask"], None,
                       torch.device("cpu"))
    with torch.no_grad():
        output = model.eval()(batch.image, batch.kspace, batch.mask)[:, 0].numpy()
    model_psnr = np_psnr(target, output, peak)

    assert len(model_psnr) == len(target) == 2
    assert (model_psnr > zf_psnr).all(), (model_psnr, zf_psnr)
    assert (model_psnr - zf_psnr).mean() > 0.3, (model_psnr, zf_psnr)  # measured: 0.7 dB
    history = pd.read_csv(trained / "history.csv")
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]


def test_same_spec_same_weights(reference, stores, tmp_path):
    out, _ = reference
    train(stores, tmp_path, spec())
    assert_same_weights(load_weights_only(tmp_path / "model.pt")["state_dict"],
                        load_weights_only(out / "model.pt")["state_dict"])
    assert_same_weights(load_weights_only(tmp_path / "checkpoint" / "last.pt")["model"],
                        load_weights_only(out / "checkpoint" / "last.pt")["model"])


def test_different_seed_different_weights(reference, stores, tmp_path):
    out, _ = reference
    train(stores, tmp_path, spec(seed=1))
    a = load_weights_only(tmp_path / "model.pt")["state_dict"]
    b = load_weights_only(out / "model.pt")["state_dict"]
    assert any(not torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------- resume
def test_resume_after_crash_equals_uninterrupted_run(reference, stores, tmp_path, monkeypatch):
    out, _ = reference
    crash_at_epoch(monkeypatch, 1)
    with pytest.raises(SimulatedCrash):
        train(stores, tmp_path, spec())
    assert not (tmp_path / "model.pt").exists()
    state = load_weights_only(tmp_path / "checkpoint" / "last.pt")
    assert state["epoch"] == 1 and state["completed"] is False

    monkeypatch.undo()
    logs: list[str] = []
    train(stores, tmp_path, spec(), logs)
    assert any("resuming" in message and "after epoch 1" in message for message in logs)
    assert_same_weights(load_weights_only(tmp_path / "checkpoint" / "last.pt")["model"],
                        load_weights_only(out / "checkpoint" / "last.pt")["model"])
    assert_same_weights(load_weights_only(tmp_path / "model.pt")["state_dict"],
                        load_weights_only(out / "model.pt")["state_dict"])
    history = pd.read_csv(tmp_path / "history.csv")
    assert history["epoch"].tolist() == list(range(1, EPOCHS + 1))
    reference_history = pd.read_csv(out / "history.csv")
    np.testing.assert_allclose(history["val_loss"], reference_history["val_loss"], rtol=1e-6)
    np.testing.assert_allclose(history["lr"], reference_history["lr"], rtol=1e-9)


def test_finished_run_is_not_resumed(reference, stores, tmp_path):
    train(stores, tmp_path, spec())
    logs: list[str] = []
    train(stores, tmp_path, spec(), logs)
    assert not any("resuming" in message for message in logs)
    assert any("training again from epoch 0" in message for message in logs)
    assert_same_weights(load_weights_only(tmp_path / "model.pt")["state_dict"],
                        load_weights_only(reference[0] / "model.pt")["state_dict"])


def test_checkpoint_of_another_spec_is_refused(stores, tmp_path, monkeypatch):
    crash_at_epoch(monkeypatch, 1)
    with pytest.raises(SimulatedCrash):
        train(stores, tmp_path, spec(lr=1e-3))
    monkeypatch.undo()
    before = (tmp_path / "checkpoint" / "last.pt").read_bytes()
    with pytest.raises(KdmriError, match=r"train\.lr") as info:
        train(stores, tmp_path, spec(lr=2e-3))
    assert "last.pt" in str(info.value)
    assert (tmp_path / "checkpoint" / "last.pt").read_bytes() == before


def check_every(monkeypatch, steps: int) -> None:
    """Check losses and gradients every ``steps`` steps, as on a GPU (the CPU checks each)."""
    original = Trainer.train_epoch

    def train_epoch(self, epoch):
        self.check_every = steps
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", train_epoch)


def test_deferred_checks_give_the_same_run(reference, stores, tmp_path, monkeypatch):
    """Checking every 3 steps (a flush mid-epoch and one at its end) or once per epoch adds
    up the same training losses and trains the same weights as checking every step."""
    out, _ = reference
    reference_history = pd.read_csv(out / "history.csv")
    for steps in (3, 1000):
        check_every(monkeypatch, steps)
        train(stores, tmp_path / str(steps), spec())
        monkeypatch.undo()
        assert_same_weights(load_weights_only(tmp_path / str(steps) / "model.pt")["state_dict"],
                            load_weights_only(out / "model.pt")["state_dict"])
        history = pd.read_csv(tmp_path / str(steps) / "history.csv")
        assert history["train_loss"].tolist() == reference_history["train_loss"].tolist()


def assert_nan_loss_stops_training(stores, tmp_path, monkeypatch, **trainer_kwargs) -> None:
    """A NaN in one training target of epoch 2 stops training naming epoch 2 and the batch
    that holds it; the checkpoint of epoch 1 stays, finite, and no model.pt is written."""
    bad_slice = 5
    found = {}
    original = Trainer.train_epoch

    def train_epoch(self, epoch):
        if epoch == 1:  # poison one training target in memory before epoch 2
            self.train_data["target"][bad_slice, 3, 3] = float("nan")
            position = int((self._epoch_order(epoch) == bad_slice).nonzero())
            found["batch"] = position // self.batch_size + 1
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", train_epoch)
    with pytest.raises(KdmriError, match="epoch 2") as info:
        train(stores, tmp_path, spec(), **trainer_kwargs)
    assert f"batch {found['batch']}" in str(info.value)
    assert "nan" in str(info.value).lower()
    state = load_weights_only(tmp_path / "checkpoint" / "last.pt")
    assert state["epoch"] == 1 and state["completed"] is False
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert load_torch(tmp_path / "checkpoint" / "last.pt")["epoch"] == 1
    assert not (tmp_path / "model.pt").exists()


@pytest.mark.parametrize("steps", [1, 1000])
def test_nan_loss_stops_with_epoch_and_batch(stores, tmp_path, monkeypatch, steps):
    check_every(monkeypatch, steps)
    assert_nan_loss_stops_training(stores, tmp_path, monkeypatch)


def test_empty_training_split_or_missing_store_raises(stores, tmp_path):
    with pytest.raises(KdmriError, match="missing.h5"):
        Trainer(spec(), tmp_path / "missing.h5", stores.inputs_dir / "val.h5", tmp_path)


# ---------------------------------------------------------------------- teacher cache
@pytest.fixture(scope="module")
def teacher_cache(stores, tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher")
    train(stores, root / "teacher", spec("teacher"))
    inputs = {s: stores.inputs_dir / f"{s}.h5" for s in ("train", "val")}
    cache_teacher(root / "teacher" / "model.pt", TEACHER_NET, PAIRS, inputs, root / "cache",
                  torch.device("cpu"))
    return root / "teacher" / "model.pt", root / "cache"


def test_cache_contents(teacher_cache, stores):
    _, cache = teacher_cache
    for split, n in (("train", 8), ("val", 3)):
        info = store_info(cache / f"{split}.h5")
        assert info["keys"]["output"] == ((n, 16, 16), "float32")
        assert info["keys"]["attention"] == ((n, 2, 256), "float32")  # 2 cascades x 1 pair
        data = read_store(cache / f"{split}.h5", ["attention", "volume", "slice"])
        np.testing.assert_allclose(np.linalg.norm(data["attention"], axis=2), 1.0, rtol=1e-5)
        source = read_store(stores.inputs_dir / f"{split}.h5", ["volume", "slice"])
        np.testing.assert_array_equal(data["volume"], source["volume"])
        np.testing.assert_array_equal(data["slice"], source["slice"])


def live_teacher(teacher_pt, batch):
    teacher, _ = load_model(teacher_pt, expect_net=TEACHER_NET)
    teacher.eval()
    paths = [p for t_conv, _ in PAIRS for p in teacher.feature_paths(t_conv)]
    with torch.no_grad(), FeatureHooks(teacher, paths) as hooks:
        output = teacher(batch.image, batch.kspace, batch.mask)
        return output, hooks.pop()


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return abs(a.item() - b.item()) / abs(b.item())


def test_cached_losses_equal_live_teacher_losses(teacher_cache, stores):
    teacher_pt, cache = teacher_cache
    dataset = SliceDataset(stores.inputs_dir / "val.h5", keys=["zf", "target"], extra=["mask"])
    data = dataset.batch(np.arange(len(dataset)))
    batch = make_batch(data["zf"], dataset.extra["mask"], data["target"], torch.device("cpu"))
    cached = read_store(cache / "val.h5", ["output", "attention"])

    torch.manual_seed(3)
    student = build_model(STUDENT_NET).eval()
    s_paths = [p for _, s_conv in PAIRS for p in student.feature_paths(s_conv)]
    with torch.no_grad(), FeatureHooks(student, s_paths) as hooks:
        prediction = student(batch.image, batch.kspace, batch.mask)
        s_features = hooks.pop()
    t_output, t_features = live_teacher(teacher_pt, batch)

    live_attention = attention_transfer_loss(s_features, t_features)
    cached_maps = list(torch.from_numpy(cached["attention"]).unbind(1))
    cached_attention = attention_transfer_loss(s_features, cached_maps)
    assert live_attention.item() > 0
    assert relative_difference(cached_attention, live_attention) <= 1e-5

    live_imitation = imitation_loss(prediction, t_output)
    cached_imitation = imitation_loss(prediction, torch.from_numpy(cached["output"]).unsqueeze(1))
    assert live_imitation.item() > 0
    assert relative_difference(cached_imitation, live_imitation) <= 1e-5
    for live_f, maps in zip(t_features, cached_maps, strict=True):
        torch.testing.assert_close(maps, attention_map(live_f), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("model", ["attention", "kd_imitation"])
def test_trainer_losses_from_cache_equal_live_teacher(teacher_cache, stores, tmp_path, model):
    teacher_pt, cache = teacher_cache
    inputs = stores.inputs_dir
    trainer = Trainer(spec(model), inputs / "train.h5", inputs / "val.h5", tmp_path,
                      cache_dir=cache, log=lambda message: None, progress=False)
    trainer.model.eval()
    batch, extra = trainer._batch(trainer.val_data, torch.arange(3))
    with torch.no_grad(), FeatureHooks(trainer.model, trainer.feature_paths) as hooks:
        _, terms, prediction = trainer.losses(batch, extra, hooks)
        trainer.model(batch.image, batch.kspace, batch.mask)
        s_features = hooks.pop() if trainer.feature_paths else []
    t_output, t_features = live_teacher(teacher_pt, batch)
    if model == "attention":
        assert sorted(terms) == ["attention"]
        live = attention_transfer_loss(s_features, t_features)
        assert relative_difference(terms["attention"], live) <= 1e-5
    else:
        assert sorted(terms) == ["imitation", "reconstruction"]
        live = imitation_loss(prediction, t_output)
        assert relative_difference(terms["imitation"], live) <= 1e-5


def test_distillation_stages_run_with_cache(teacher_cache, stores, tmp_path):
    _, cache = teacher_cache
    attention = train(stores, tmp_path / "attention", spec("attention"), cache_dir=cache)
    history = pd.read_csv(tmp_path / "attention" / "history.csv")
    assert {"train_attention", "val_attention"} <= set(history.columns)
    assert len(history) == 2 and np.isfinite(history["train_attention"]).all()
    assert attention.feature_paths == ["cascades.0.cnn.3", "cascades.1.cnn.3"]

    init = tmp_path / "attention" / "model.pt"
    inputs = stores.inputs_dir
    kd = Trainer(spec("kd"), inputs / "train.h5", inputs / "val.h5", tmp_path / "kd",
                 cache_dir=cache, init=init, log=lambda message: None, progress=False)
    assert_same_weights(kd.model.state_dict(), load_weights_only(init)["state_dict"])
    kd.run()
    history = pd.read_csv(tmp_path / "kd" / "history.csv")
    assert {"train_reconstruction", "train_imitation"} <= set(history.columns)
    assert "train_attention" not in history.columns
    expected = 0.5 * history["train_reconstruction"] + 0.5 * history["train_imitation"]
    np.testing.assert_allclose(history["train_loss"], expected, rtol=1e-6)
    assert load_weights_only(tmp_path / "kd" / "model.pt")["spec"]["init"] == "attention"


def test_distillation_without_cache_or_with_other_teacher_raises(teacher_cache, stores, tmp_path):
    _, cache = teacher_cache
    inputs = stores.inputs_dir
    with pytest.raises(KdmriError, match="teacher cache"):
        Trainer(spec("attention"), inputs / "train.h5", inputs / "val.h5", tmp_path)
    other = spec("attention")
    other["teacher_net"] = dict(TEACHER_NET, channels=8)
    with pytest.raises(KdmriError, match="teacher architecture"):
        Trainer(other, inputs / "train.h5", inputs / "val.h5", tmp_path, cache_dir=cache)


# ---------------------------------------------------------------------- devices
def test_select_cpu():
    device, slot = select_device("cpu", log=lambda message: None)
    assert device == torch.device("cpu") and slot is None


def test_select_unknown_device_raises():
    with pytest.raises(KdmriError, match="unknown device 'gpu0'"):
        select_device("gpu0")


def test_fake_gpus_claim_a_slot_but_run_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("KDMRI_FAKE_GPUS", "2")
    monkeypatch.setenv("KDMRI_LOCK_DIR", str(tmp_path))
    messages: list[str] = []
    device, slot = select_device("auto", log=messages.append)
    try:
        assert device == torch.device("cpu") and slot.index == 0
        assert (tmp_path / "gpu0.lock").read_text().strip() == str(os.getpid())
        assert "claimed slot 0 of 2" in messages[0]
    finally:
        slot.release()


def test_jobs_per_gpu_give_k_slots_per_gpu(tmp_path, monkeypatch):
    # two fake GPUs, two jobs each: four slots, slot i on GPU i // 2; a fifth job waits
    monkeypatch.setenv("KDMRI_FAKE_GPUS", "2")
    monkeypatch.setenv("KDMRI_JOBS_PER_GPU", "2")
    monkeypatch.setenv("KDMRI_LOCK_DIR", str(tmp_path))
    messages: list[str] = []
    slots = [select_device("auto", log=messages.append)[1] for _ in range(4)]
    try:
        assert [(slot.index, slot.gpu) for slot in slots] == [(0, 0), (1, 0), (2, 1), (3, 1)]
        assert [m.split(" (")[0] for m in messages] == [
            f"gpu slot: claimed slot {i} of 4" for i in range(4)]
        assert all(f"(GPU {i // 2}; " in m for i, m in enumerate(messages))
        with pytest.raises(KdmriError, match="no free GPU slot among 4"):
            claim_gpu_slot(4, poll_s=0.05, timeout_s=0.2, log=lambda message: None, per_gpu=2)
    finally:
        for slot in slots:
            slot.release()
    for bad in ("0", "two"):
        monkeypatch.setenv("KDMRI_JOBS_PER_GPU", bad)
        with pytest.raises(KdmriError, match=f"KDMRI_JOBS_PER_GPU must be an integer >= 1, found '{bad}'"):
            select_device("auto")


HOLDER = """
import sys, time
from pathlib import Path
from kdmri.device import select_device

device, slot = select_device("auto", log=lambda message: None)
print(device.type, slot.index, flush=True)
release = Path(sys.argv[1])
while not release.exists():
    time.sleep(0.02)
slot.release()
"""


def test_gpu_slots_across_processes(tmp_path, monkeypatch):
    lock_dir = tmp_path / "locks"
    monkeypatch.setenv("KDMRI_FAKE_GPUS", "2")
    monkeypatch.setenv("KDMRI_LOCK_DIR", str(lock_dir))
    env = dict(os.environ, KDMRI_FAKE_GPUS="2", KDMRI_LOCK_DIR=str(lock_dir))
    releases = [tmp_path / f"release{i}" for i in range(2)]
    holders = [
        subprocess.Popen([sys.executable, "-c", HOLDER, str(r)], env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for r in releases
    ]
    try:
        claimed = []
        for holder in holders:
            line = holder.stdout.readline().split()
            assert line, holder.stderr.read()
            assert line[0] == "cpu"
            claimed.append(int(line[1]))
        assert sorted(claimed) == [0, 1]

        # both slots are held: a third claim waits and gives up after its timeout
        messages: list[str] = []
        with pytest.raises(KdmriError, match="no free GPU slot among 2"):
            claim_gpu_slot(2, poll_s=0.05, timeout_s=0.3, log=messages.append)
        assert any("busy, waiting" in m for m in messages)

        # ... and gets the first holder's slot as soon as that holder releases it
        messages.clear()
        timer = threading.Timer(0.4, releases[0].touch)
        start = time.monotonic()
        timer.start()
        slot = claim_gpu_slot(2, poll_s=0.05, timeout_s=30, log=messages.append)
        waited = time.monotonic() - start
        slot.release()
        assert slot.index == claimed[0]
        assert waited >= 0.35
        assert "busy, waiting" in messages[0] and f"claimed slot {claimed[0]}" in messages[-2]
        assert f"released slot {claimed[0]} at " in messages[-1]  # logged by release()
    finally:
        for release in releases:
            release.touch()
        for holder in holders:
            try:
                holder.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                holder.kill()
                holder.communicate()
    assert [h.returncode for h in holders] == [0, 0]


def test_cache_of_other_layer_pairs_is_refused(teacher_cache, stores, tmp_path):
    _, cache = teacher_cache  # made for pairs [[3, 2]]
    other = spec("attention")
    other["pairs"] = [[2, 2]]  # another teacher layer, same number of maps
    inputs = stores.inputs_dir
    with pytest.raises(KdmriError, match="pairs"):
        Trainer(other, inputs / "train.h5", inputs / "val.h5", tmp_path, cache_dir=cache,
                log=lambda message: None, progress=False)


KEEP_FREED_MEMORY_SCRIPT = """
import resource, sys, torch
from kdmri.device import keep_freed_memory
from kdmri.models import DCCNN
torch.set_num_threads(1)
applied = keep_freed_memory()
model = DCCNN(5, 5, 32).eval()  # the teacher: about 240 MiB of activations per 256 x 256 pass
x = torch.rand(1, 1, 256, 256)
kspace, mask = torch.fft.fft2(x).to(torch.complex64), torch.ones(256, 256)
with torch.no_grad():
    for _ in range(3):
        model(x, kspace, mask)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(2):
        model(x, kspace, mask)
print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 2)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_makes_forward_passes_reuse_their_memory():
    """After keep_freed_memory, a warmed-up forward pass reuses the memory of the last one
    instead of faulting in fresh pages (about 60,000 pages of activations; 20,000 to 45,000
    faults per pass without the setting, 0 to a few hundred with it)."""
    out = subprocess.run([sys.executable, "-c", KEEP_FREED_MEMORY_SCRIPT], capture_output=True,
                         text=True, check=True, timeout=120).stdout.split()
    assert out[0] == "True"
    assert float(out[1]) < 2000

"""The networks' memory layout (channels-last, :func:`kdmri.models.place_model`) changes
speed only: trained weights and predictions equal those of the plain (contiguous) layout
within float32 rounding. The speed on each CPU measured: docs/performance.md."""

from __future__ import annotations

import sys

import pytest
import torch

import kdmri.models
from kdmri.config import validate
from kdmri.inference import run_model
from kdmri.models import build_model
from kdmri.specs import model_spec
from kdmri.train import Trainer
from tests.reliability.helpers import PAIRS, STUDENT_NET, TEACHER_NET

#: Networks with more channels than the helpers' tiny ones, so that the layouts differ in
#: memory (a 1-channel tensor is the same in both).
TEACHER = dict(TEACHER_NET, channels=8)
STUDENT = dict(STUDENT_NET, channels=8)


def _plain(model, device):
    return model.to(device=device, memory_format=torch.contiguous_format)


@pytest.fixture
def plain_layout(monkeypatch):
    """Every module that placed networks with kdmri.models.place_model now places them in
    the plain layout."""
    original = kdmri.models.place_model
    patched = [name for name, module in list(sys.modules.items())
               if name.startswith("kdmri") and getattr(module, "place_model", None) is original]
    for name in patched:
        monkeypatch.setattr(sys.modules[name], "place_model", _plain)
    assert "kdmri.models" in patched


def _convs(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.dim() == 4 and p.shape[1] > 1]


def _train(stores, folder, model: str) -> tuple[Trainer, dict]:
    config = validate({
        "datasets": {"tiny": {"format": "demo"}},
        "tasks": {"recon": {"datasets": ["tiny"], "teacher": TEACHER, "student": STUDENT,
                            "pairs": PAIRS}},
        "train": {"epochs": 2, "batch_size": 4, "lr": 1e-3},
    })
    spec = model_spec(config, "recon", model, 0)
    trainer = Trainer(spec, stores.inputs_dir / "train.h5", stores.inputs_dir / "val.h5", folder,
                      log=lambda message: None, progress=False)
    trainer.run()
    return trainer, torch.load(folder / "model.pt", weights_only=False)["state_dict"]


def _predict(net: dict, state: dict, stores) -> torch.Tensor:
    model = build_model(net)
    model.load_state_dict(state)
    return torch.from_numpy(run_model(model, stores.inputs_dir / "test.h5", torch.device("cpu"))
                            ["output"])


def _null_directions(net: dict, state: dict, stores) -> set[str]:
    """The parameters no output depends on: shifting one by 0.5 moves no output pixel."""
    before = _predict(net, state, stores)
    null = set()
    for key in state:
        shifted = dict(state, **{key: state[key] + 0.5})
        if torch.allclose(_predict(net, shifted, stores), before, rtol=0, atol=1e-5):
            null.add(key)
    return null


@pytest.mark.parametrize("model, net", [("teacher", TEACHER), ("student", STUDENT)])
def test_training_in_either_layout_gives_the_same_weights(stores, tmp_path, model, net, request):
    fast, fast_weights = _train(stores, tmp_path / "channels_last", model)
    assert all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
               for p in _convs(fast.model))
    request.getfixturevalue("plain_layout")
    plain, plain_weights = _train(stores, tmp_path / "plain", model)
    assert all(p.is_contiguous() for p in _convs(plain.model))
    # The layouts sum each convolution in another order, so the weights differ by float32
    # rounding (about 1e-7 after 2 epochs), except a parameter no output depends on: each
    # cascade's last bias adds a constant image, whose k-space is the centre, which the
    # data consistency replaces. Its gradient is rounding noise, which Adam's normalised
    # step turns into steps of up to lr; it changes no prediction.
    null = _null_directions(net, fast_weights, stores)
    assert null == {f"cascades.{i}.cnn.{2 * (net['convs'] - 1)}.bias" for i in range(net["cascades"])}
    assert fast_weights.keys() == plain_weights.keys()
    for key in sorted(fast_weights.keys() - null):
        torch.testing.assert_close(fast_weights[key], plain_weights[key], rtol=1e-5, atol=1e-6,
                                   msg=key)
    torch.testing.assert_close(_predict(net, fast_weights, stores),
                               _predict(net, plain_weights, stores), rtol=1e-5, atol=1e-6)


def test_prediction_in_either_layout_is_the_same(stores, request):
    torch.manual_seed(0)
    model = build_model(TEACHER)
    fast = run_model(model, stores.inputs_dir / "test.h5", torch.device("cpu"))["output"]
    request.getfixturevalue("plain_layout")
    plain = run_model(model, stores.inputs_dir / "test.h5", torch.device("cpu"))["output"]
    torch.testing.assert_close(torch.from_numpy(fast), torch.from_numpy(plain),
                               rtol=1e-5, atol=1e-6)

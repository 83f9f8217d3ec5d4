"""Prediction (kdmri.inference, ``kdmri predict``): a model's outputs over a store equal the
network run directly on inputs built here with NumPy, whatever the batch size; the zf
baseline is the zero-filled image computed here from the targets and the mask; predict
writes those outputs with the store's slice order and names, and its info file."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from kdmri.checkpoints import load_model
from kdmri.cli import main
from kdmri.data.store import read_store, store_info
from kdmri.distill import attention_map
from kdmri.distill.hooks import FeatureHooks
from kdmri.errors import KdmriError
from kdmri.inference import latency_ms, run_model, zero_filled_output
from kdmri.models import build_model, flops_per_slice
from tests.oracles import np_fft2c, np_zero_filled
from tests.reliability.helpers import STUDENT_NET, write_model_file

CPU = torch.device("cpu")
#: Two volumes of 4 slices: several batches of every size below.
SPLIT = "train"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return write_model_file(tmp_path_factory.mktemp("model") / "model.pt", STUDENT_NET, seed=3)


@pytest.fixture(scope="module")
def store(stores):
    return stores.inputs_dir / f"{SPLIT}.h5"


def direct_outputs(model_file, store, paths=()) -> tuple[np.ndarray, list[torch.Tensor]]:
    """The network of ``model_file`` run once on all slices, on inputs built with NumPy
    from the store's zero-filled images (k-space by a float64 FFT), and its attention maps
    at ``paths``."""
    ckpt = torch.load(model_file, map_location="cpu", weights_only=True)
    model = build_model(ckpt["net"])
    model.load_state_dict(ckpt["state_dict"])
    data = read_store(store, ["zf", "mask"])
    image = torch.from_numpy(np.ascontiguousarray(data["zf"].real))[:, None]
    kspace = torch.from_numpy(np_fft2c(data["zf"].astype(np.complex128)).astype(np.complex64))
    with torch.no_grad(), FeatureHooks(model.eval(), list(paths)) as hooks:
        output = model(image, kspace[:, None], torch.from_numpy(data["mask"]))
        features = hooks.pop() if paths else []
    return output[:, 0].numpy(), [attention_map(f) for f in features]


def test_outputs_equal_the_model_run_directly(model_file, store):
    model, _ = load_model(model_file)
    result = run_model(model, store, CPU)
    expected, _ = direct_outputs(model_file, store)
    assert result["output"].shape == expected.shape == (8, 16, 16)
    assert result["output"].dtype == np.float32
    np.testing.assert_allclose(result["output"], expected, rtol=0, atol=1e-5)
    source = read_store(store, ["volume", "slice"])
    np.testing.assert_array_equal(result["volume"], source["volume"])
    np.testing.assert_array_equal(result["slice"], source["slice"])
    assert result["volume_names"].tolist() == source["volume_names"].tolist()
    assert "attention" not in result


@pytest.mark.parametrize("batch_size", [1, 3, 100])
def test_batch_size_changes_no_output_or_attention_map(model_file, store, batch_size):
    """Every batch size gives the same outputs and maps in the same slice order (within
    float32 rounding: a batch of one takes other convolution kernels)."""
    model, _ = load_model(model_file)
    paths = model.feature_paths(2)
    result = run_model(model, store, CPU, batch_size=batch_size, feature_paths=paths)
    expected, maps = direct_outputs(model_file, store, paths)
    np.testing.assert_allclose(result["output"], expected, rtol=0, atol=1e-5)
    assert result["attention"].shape == (8, len(paths), 16 * 16)
    np.testing.assert_allclose(result["attention"], torch.stack(maps, 1).numpy(), rtol=0,
                               atol=1e-5)


def test_zero_filled_output_is_the_zero_filled_image_of_the_targets(stores, store):
    result = zero_filled_output(store)
    expected = np_zero_filled(stores.targets[SPLIT], stores.mask)
    assert result["output"].dtype == np.float32
    np.testing.assert_allclose(result["output"], expected, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(result["volume"], [0, 0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(result["slice"], [0, 1, 2, 3, 0, 1, 2, 3])
    assert result["volume_names"].tolist() == ["train-00", "train-01"]


def predict(tmp_path, model, store, *extra) -> tuple[dict, dict]:
    """Run ``kdmri predict``; the store it wrote and its info file."""
    out, info = tmp_path / "pred" / "pred.h5", tmp_path / "pred" / "predict.json"
    assert main(["predict", "--model", str(model), "--inputs", str(store), "--out", str(out),
                 "--info", str(info), *extra]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["pred.h5", "predict.json"]
    assert sorted(store_info(out)["keys"]) == ["output", "slice", "volume"]
    return read_store(out, ["output", "volume", "slice"]), json.loads(info.read_text())


def assert_slices_of(written: dict, store) -> None:
    source = read_store(store, ["volume", "slice"])
    for key in ("volume", "slice", "volume_names"):
        assert written[key].tolist() == source[key].tolist(), key


def test_predict_writes_the_outputs_and_the_models_info(model_file, store, tmp_path):
    written, info = predict(tmp_path, model_file, store, "--device", "cpu", "--repeats", "2",
                            "--threads", "1")
    expected, _ = direct_outputs(model_file, store)
    np.testing.assert_allclose(written["output"], expected, rtol=0, atol=1e-5)
    assert_slices_of(written, store)
    state = torch.load(model_file, map_location="cpu", weights_only=True)["state_dict"]
    assert info["params"] == sum(v.numel() for v in state.values())
    height, width = written["output"].shape[1:]
    assert info["flops"] == flops_per_slice(load_model(model_file)[0], height, width) > 0
    assert info["model"] == str(model_file) and info["device"] == "cpu"
    assert info["trained_on"] == "cpu" and info["best_epoch"] == 1  # from the model file
    assert math.isfinite(info["latency_ms"]) and info["latency_ms"] > 0
    assert info["torch_threads"] == 1


def test_predict_zf_writes_the_zero_filled_image(stores, store, tmp_path):
    written, info = predict(tmp_path, "zf", store)
    np.testing.assert_allclose(written["output"],
                               np_zero_filled(stores.targets[SPLIT], stores.mask),
                               rtol=0, atol=1e-5)
    assert_slices_of(written, store)
    assert info == {"model": "zf", "params": 0, "flops": 0, "latency_ms": 0.0, "device": "none",
                    "torch_threads": torch.get_num_threads()}


def test_latency_is_a_positive_time_and_needs_a_repeat(model_file):
    model, _ = load_model(model_file)
    for batch_size in (1, 4):
        value = latency_ms(model, (16, 16), CPU, repeats=3, batch_size=batch_size)
        assert math.isfinite(value) and 0 < value < 10_000
    with pytest.raises(KdmriError, match="at least one repeat"):
        latency_ms(model, (16, 16), CPU, repeats=0)

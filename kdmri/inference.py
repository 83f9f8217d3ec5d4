"""Running a trained network over a store: predictions, teacher cache and latency.

On the input store of multi-coil data a network is given its coil input (E2E-VarNet the
coil k-space and the mask, DC-CNN the SENSE-combined image with the maps, the U-Net
without DC the RSS zero-filled image: :mod:`kdmri.batch`) and its output, the RSS
estimate, is stored as float32 ``(N, H, W)``, as the store's ``target`` and its ``zf`` (the
RSS of the zero-filled coil images) are."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from kdmri.batch import (
    check_complex,
    coil_arrays,
    example_batch,
    forward,
    input_keys,
    make_batch,
    stored_image,
)
from kdmri.checkpoints import load_model
from kdmri.data.store import SliceDataset, is_complex_store, write_store
from kdmri.distill.hooks import FeatureHooks
from kdmri.distill.losses import attention_map
from kdmri.distill.pairs import pair_paths, pairs_attr
from kdmri.errors import KdmriError
from kdmri.keys import digest
from kdmri.models import place_model
from kdmri.mri import real_image

PREDICT_BATCH = 16  # slices per forward pass when a model runs over a test store


@torch.no_grad()
def run_model(model: torch.nn.Module, store: str | Path, device: torch.device,
              batch_size: int = PREDICT_BATCH, feature_paths: list[str] | None = None,
              amp: bool = False) -> dict[str, np.ndarray]:
    """Outputs ``(N, H, W)`` of ``model`` on every slice of an input store (complex64 for a
    complex network), and optionally the normalised attention maps ``(N, P, H*W)`` of the
    modules at ``feature_paths``."""
    check_complex(store, model)
    complex_output = is_complex_store(store)  # the targets' kind (RSS of multi-coil data)
    dataset = SliceDataset(store, keys=input_keys(store, model), extra=["mask"])
    model = place_model(model, device).eval()
    outputs, maps = [], []
    with FeatureHooks(model, feature_paths or []) as hooks:
        for idx in np.array_split(np.arange(len(dataset)), max(1, -(-len(dataset) // batch_size))):
            if idx.size == 0:
                continue
            arrays = dataset.batch(idx)
            batch = make_batch(arrays["zf"], dataset.extra["mask"], None, device,
                               complex=model.complex, **coil_arrays(arrays, slice(None)))
            with torch.autocast(device_type=device.type, dtype=torch.float16,
                                enabled=amp and device.type == "cuda"):
                out = forward(model, batch)
            outputs.append(stored_image(out.float(), complex_output).cpu())
            if feature_paths:
                maps.append(torch.stack([attention_map(f) for f in hooks.pop()], 1).cpu())
    result = {"output": torch.cat(outputs).numpy(), "volume": dataset.volume,
              "slice": dataset.slice, "volume_names": dataset.volume_names}
    if feature_paths:
        result["attention"] = torch.cat(maps).numpy()
    return result


def cache_teacher(teacher_ckpt: str | Path, teacher_net: dict, pairs: list[list[int | str]],
                  inputs: dict[str, Path], out_dir: str | Path, device: torch.device,
                  trust_code: bool | None = None) -> None:
    """Run the frozen teacher once per split; store outputs and the paired attention maps.
    ``trust_code``: the consent to build a ``family: python`` teacher
    (:func:`kdmri.checkpoints.load_model`; None: ``teacher_net``, the caller's, is it)."""
    teacher, _ = load_model(teacher_ckpt, expect_net=teacher_net, role="teacher",
                            trust_code=trust_code)
    paths = pair_paths(teacher, pairs, "teacher")
    # every split is computed before any is written: a bad input leaves no partial cache
    results = {split: run_model(teacher, store, device, feature_paths=paths)
               for split, store in inputs.items()}
    for split, result in results.items():
        write_store(
            Path(out_dir) / f"{split}.h5",
            {"output": result["output"], "attention": result["attention"],
             "volume": result["volume"], "slice": result["slice"]},
            attrs={"teacher_net": digest(teacher_net), "pairs": pairs_attr(pairs),
                   "volume_names": result["volume_names"].tolist()},
        )


def zero_filled_output(store: str | Path) -> dict[str, np.ndarray]:
    """The zero-filled baseline ``zf``: the real image of the zero-filled input, or the
    complex zero-filled image itself where the targets are complex; of multi-coil data, the
    store's ``zf`` as it is, the float32 RSS of the zero-filled coil images."""
    dataset = SliceDataset(store, keys=["zf"])
    zf = dataset.batch(np.arange(len(dataset)))["zf"]
    output = zf if is_complex_store(store) else real_image(zf)
    return {"output": output.numpy(), "volume": dataset.volume, "slice": dataset.slice,
            "volume_names": dataset.volume_names}


@torch.no_grad()
def latency_ms(model: torch.nn.Module, shape: tuple[int, int], device: torch.device,
               repeats: int = 20, batch_size: int = 1, coils: int | None = None) -> float:
    """Median wall time (ms) of one forward pass on a ``batch_size`` of ``shape`` slices:
    on the multi-coil input of ``coils`` coils where given (a multi-coil family's always,
    None or 0 then meaning :data:`kdmri.models.EXAMPLE_COILS`), else single-coil
    (:func:`kdmri.batch.example_batch`).

    The model keeps the memory format its caller gave it (the stages place every model in
    channels-last with :func:`kdmri.models.place_model`; the benchmark also times the plain
    layout)."""
    if repeats < 1:
        raise KdmriError("latency needs at least one repeat")
    model = model.to(device).eval()
    batch = example_batch(model, shape, device, batch_size=batch_size, coils=coils)
    times = []
    for i in range(repeats + 3):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        forward(model, batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 3:
            times.append((time.perf_counter() - start) * 1000 / batch_size)
    return float(np.median(times))

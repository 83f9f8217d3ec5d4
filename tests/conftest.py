"""Shared fixtures: one torch thread, and a tiny synthetic store set built once per session."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from kdmri.data.prepare import undersample_store
from kdmri.data.store import StoreWriter
from kdmri.masks import create_mask_func

REPO = Path(__file__).resolve().parents[1]

#: Image size and slices per volume of the tiny stores (train has 2 volumes).
IMAGE_SHAPE = (16, 16)
VOLUMES = {"train": [4, 4], "val": [3], "test": [2]}
ACCELERATION = 4


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """The machine is shared: every test runs torch on one thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def smooth_volume(rng: np.random.Generator, slices: int, shape=IMAGE_SHAPE) -> np.ndarray:
    """Random smooth non-negative images in [0, 1], float32."""
    noise = rng.standard_normal((slices, *shape))
    smooth = gaussian_filter(noise, sigma=(0, 2, 2), mode="wrap")
    smooth -= smooth.min(axis=(1, 2), keepdims=True)
    smooth /= smooth.max(axis=(1, 2), keepdims=True)
    return smooth.astype(np.float32)


@pytest.fixture(scope="session")
def stores(tmp_path_factory) -> SimpleNamespace:
    """Target stores (``data_dir``) and undersampled input stores (``inputs_dir``) for
    train/val/test, made from random smooth images with a random 4x line mask."""
    root = tmp_path_factory.mktemp("stores")
    data_dir, inputs_dir = root / "data", root / "inputs"
    rng = np.random.default_rng(1234)
    mask = create_mask_func("random", ACCELERATION)(IMAGE_SHAPE, seed=0)
    targets = {}
    for split, sizes in VOLUMES.items():
        volumes = [smooth_volume(rng, n) for n in sizes]
        with StoreWriter(data_dir / f"{split}.h5", IMAGE_SHAPE, attrs={"dataset": "tiny"}) as w:
            for i, volume in enumerate(volumes):
                w.add_volume(f"{split}-{i:02d}", volume)
        undersample_store(data_dir / f"{split}.h5", mask, inputs_dir / f"{split}.h5")
        targets[split] = np.concatenate(volumes)
    return SimpleNamespace(
        root=root, data_dir=data_dir, inputs_dir=inputs_dir, mask=mask,
        shape=IMAGE_SHAPE, targets=targets,
    )

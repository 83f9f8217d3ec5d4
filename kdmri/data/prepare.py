"""Preparation: read each source once and write the per-split target stores in one pass;
undersampling: turn a target store and a mask into the input store every stage reads.

Splits are made by volume (subject), never by slices of one volume.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from kdmri.config import SPLITS
from kdmri.data.store import SliceDataset, StoreWriter, write_store
from kdmri.errors import KdmriError
from kdmri.io import write_json
from kdmri.mri import undersample, zero_filled


def demo_volumes(cfg: dict) -> Iterator[tuple[str, str, np.ndarray]]:
    """(split, volume name, slices) of the embedded demo: synthetic MNI152 subjects."""
    from kdmri.data.demo import demo_subject

    index = 0
    for split in SPLITS:
        for _ in range(cfg["subjects"][split]):
            for orientation in cfg["orientations"]:
                volume = demo_subject(
                    index, seed=cfg["seed"], size=cfg["size"], voxel_mm=cfg["voxel_mm"],
                    orientation=orientation, contrast=cfg["contrast"],
                )
                yield split, f"sub-{index:03d}_{orientation}", volume
            index += 1


READERS = {"demo": demo_volumes}


def _n_volumes(cfg: dict) -> int:
    if cfg["format"] == "demo":
        return sum(cfg["subjects"].values()) * len(cfg["orientations"])
    return 0


def _subsample(volumes: list[tuple[str, np.ndarray]], max_slices: int):
    total = sum(v.shape[0] for _, v in volumes)
    if total <= max_slices:
        return volumes
    keep = set(np.linspace(0, total - 1, max_slices).round().astype(int).tolist())
    out, offset = [], 0
    for name, volume in volumes:
        idx = [i for i in range(volume.shape[0]) if offset + i in keep]
        offset += volume.shape[0]
        if idx:
            out.append((name, volume[idx]))
    return out


def prepare_dataset(name: str, cfg: dict, out_dir: str | Path, progress: bool = True) -> dict:
    """Write ``<out_dir>/{train,val,test}.h5`` and ``info.json`` for one configured dataset."""
    out_dir = Path(out_dir)
    fmt = cfg["format"]
    if fmt not in READERS:
        raise KdmriError(f"dataset {name!r}: unknown format {fmt!r}; expected one of {sorted(READERS)}")
    start = time.perf_counter()
    by_split: dict[str, list[tuple[str, np.ndarray]]] = {s: [] for s in SPLITS}
    bar = tqdm(READERS[fmt](cfg), total=_n_volumes(cfg) or None, desc=f"prepare {name}",
               unit="vol", disable=not progress)
    for split, volume_name, volume in bar:
        by_split[split].append((volume_name, volume))
    info = {"dataset": name, "format": fmt, "splits": {}}
    n_total = 0
    for split, volumes in by_split.items():
        if not volumes:
            raise KdmriError(f"dataset {name!r}: split {split!r} has no volumes")
        volumes = _subsample(volumes, cfg.get("max_slices", 10**9))
        shape = tuple(volumes[0][1].shape[1:])
        with StoreWriter(out_dir / f"{split}.h5", shape, attrs={"dataset": name}) as writer:
            for volume_name, volume in volumes:
                writer.add_volume(volume_name, volume)
        n = sum(v.shape[0] for _, v in volumes)
        n_total += n
        info["splits"][split] = {"volumes": [v for v, _ in volumes], "slices": n,
                                 "shape": list(shape)}
    seconds = time.perf_counter() - start
    info["seconds"] = round(seconds, 3)
    info["slices_per_s"] = round(n_total / seconds, 1)
    write_json(out_dir / "info.json", info)
    return info


def undersample_store(target_store: str | Path, mask: np.ndarray, out_path: str | Path) -> None:
    """Write the input store of one split: zero-filled images ``zf`` (complex64), ``target``,
    ``mask``, ``volume`` and ``slice``."""
    data = SliceDataset(target_store, keys=["target"])
    target = data.batch(np.arange(len(data)))["target"]
    if tuple(target.shape[1:]) != tuple(mask.shape):
        raise KdmriError(
            f"{target_store}: images of {tuple(target.shape[1:])} but the mask is {mask.shape}"
        )
    zf = zero_filled(undersample(target, torch.from_numpy(mask)))
    write_store(
        out_path,
        {"zf": zf.numpy(), "target": target.numpy(), "mask": mask.astype(np.float32),
         "volume": data.volume, "slice": data.slice},
        attrs={"volume_names": data.volume_names.tolist()},
    )


def read_info(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())

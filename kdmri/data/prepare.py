"""Preparation: read each source once and write the per-split target stores in one pass;
undersampling: turn a target store and a mask into the input store every stage reads.

:func:`prepare_dataset` is the one entry point (``kdmri prepare``): the reader of the
dataset's ``format`` (:data:`READERS`; the file formats live in :mod:`kdmri.data.readers`
and :mod:`kdmri.data.dicom`) yields ``(split, volume name, slices)``; every volume is
normalised by :func:`~kdmri.data.sources.normalize_volume` and appended to its split's
store. The three stores are written side by side in a hidden staging folder and moved into
place together only when every file was read without error, so a failure leaves no store
behind.

Splits are made by volume (subject), never by slices of one volume.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm import tqdm

from kdmri.config import validate
from kdmri.data.coils import coil_settings, simulate_coils
from kdmri.data.dicom import dicom_volumes
from kdmri.data.readers import DEFAULT_SIZE, fastmri_volumes, kdmri_h5_volumes, nifti_volumes
from kdmri.data.sensitivity import check_settings, espirit_maps, maps_settings
from kdmri.data.sources import normalize_volume, scale_volume, volume_scale
from kdmri.data.store import (
    SliceDataset,
    StoreWriter,
    coil_count,
    derive_per_slice_key,
    new_store,
    store_info,
    write_store,
)
from kdmri.errors import KdmriError
from kdmri.io import write_json
from kdmri.keys import SPLITS
from kdmri.masks import MASK_ATTR
from kdmri.mri import fft2c, rss, undersample, zero_filled


def demo_volumes(cfg: dict, progress: bool = False) -> Iterator[tuple[str, str, np.ndarray]]:
    """(split, volume name, slices) of the embedded demo: synthetic MNI152 subjects; with
    ``simulated_coils`` the coil images (S, C, H, W) of a simulated acquisition of each
    (:func:`kdmri.data.coils.simulate_coils`), which preparation stores as it stores a
    fastMRI multi-coil file's."""
    from kdmri.data.demo import ORIENTATIONS, demo_subject

    plan, index = [], 0
    for split in SPLITS:
        for _ in range(cfg["subjects"][split]):
            plan += [(split, index, orientation) for orientation in cfg["orientations"]]
            index += 1
    size = cfg["size"] or DEFAULT_SIZE["demo"]
    coils = coil_settings(cfg)
    for split, index, orientation in tqdm(plan, desc="demo subjects", unit="vol",
                                          disable=not progress):
        volume = demo_subject(
            index, seed=cfg["seed"], size=size, voxel_mm=cfg["voxel_mm"],
            orientation=orientation, contrast=cfg["contrast"],
        )
        if cfg["noise"] > 0:
            volume = add_rician_noise(volume, cfg["noise"], seed=(cfg["seed"], index))
        if coils:
            volume = simulate_coils(
                volume, coils["count"], coils["snr_db"],
                seed=(cfg["seed"], index, ORIENTATIONS.index(orientation), coils["seed"]))
        yield split, f"sub-{index:03d}_{orientation}", volume


def add_rician_noise(volume: np.ndarray, sigma: float, seed) -> np.ndarray:
    """``|x + sigma * (n1 + i n2)|`` with unit normal n1, n2, renormalised to maximum 1."""
    rng = np.random.default_rng(list(np.atleast_1d(seed)) + [7919])
    noise = rng.standard_normal((2, *volume.shape), dtype=np.float32) * sigma
    noisy = np.hypot(volume + noise[0], noise[1]).astype(np.float32)
    return noisy / noisy.max()


#: Hidden folder in the output folder where the split stores are written before the move.
STAGING_PREFIX = ".prepare-"

#: Format name -> reader ``(cfg, progress) -> iterator of (split, volume name, slices)``.
READERS = {
    "demo": demo_volumes,
    "fastmri": fastmri_volumes,
    "nifti": nifti_volumes,
    "kdmri_h5": kdmri_h5_volumes,
    "dicom": dicom_volumes,
}


def _subsample_store(path: Path, max_slices: int, attrs: dict) -> None:
    """Keep ``max_slices`` evenly spaced slices of a store (volumes left with none are
    dropped), rewriting it in place (multi-coil data with their slices)."""
    with h5py.File(path, "r") as src:
        volume_ids = src["volume"][()]
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in src.attrs["volume_names"]]
        keep = np.unique(np.linspace(0, len(volume_ids) - 1, max_slices).round().astype(int))
        target = src["target"]
        coils = src["coils"] if "coils" in src else None
        with StoreWriter(path.with_suffix(".sub.h5"), target.shape[1:], attrs=attrs,
                         dtype=target.dtype, coils=0 if coils is None else coils.shape[1]) as writer:
            for vid in np.unique(volume_ids[keep]):
                rows = keep[volume_ids[keep] == vid]
                extra = {} if coils is None else {"coils": coils[rows.tolist()]}
                writer.add_volume(names[vid], target[rows.tolist()], **extra)
    os.replace(path.with_suffix(".sub.h5"), path)


def multicoil_volume(coil_images: np.ndarray, normalization: dict,
                     where: str) -> tuple[np.ndarray, np.ndarray, float]:
    """The target and the coil images of one multi-coil volume ``(S, C, H, W)``: the target
    is their root-sum-of-squares (:func:`kdmri.mri.rss`, fastMRI's convention) normalised
    by the dataset's rule, and the coil images are divided by the same scale, so the target
    stays their RSS. Returns ``(target (S, H, W) float32, coil images complex64, scale)``
    (``kdmri apply`` multiplies its output by the scale)."""
    target = rss(torch.from_numpy(coil_images)).numpy()
    scale = volume_scale(target, normalization, where=where)
    return scale_volume(target, scale), scale_volume(coil_images, scale), scale


def _add_maps(path: Path, settings: dict, where: str, progress: bool) -> None:
    """Sensitivity maps of every slice of a multi-coil store (``maps`` beside ``coils``),
    from the coil images' k-space (:func:`kdmri.data.sensitivity.espirit_maps`)."""
    with tqdm(total=store_info(path)["n_slices"], desc=f"ESPIRiT maps, {path.stem}",
              unit="slice", disable=not progress) as bar:

        def maps(coil_images: np.ndarray) -> np.ndarray:
            kspace = fft2c(torch.from_numpy(coil_images[None])).numpy()
            bar.update()
            return espirit_maps(kspace, settings, where=where)[0]

        derive_per_slice_key(path, "maps", "coils", maps, "complex64")


def _write_stores(name: str, cfg: dict, staging: Path, progress: bool) -> dict:
    """Stream every volume of the dataset into its split's store in ``staging``; the
    sensitivity maps of a multi-coil dataset are added once the stores hold their final
    slices (after ``max_slices``), so no map is computed for a slice left out."""
    attrs = {"dataset": name}
    splits = {s: {"volumes": [], "slices": 0} for s in SPLITS}
    shape, dtype, coils, names = None, "float32", 0, set()
    maps = maps_settings(cfg)  # ESPIRiT, the one kind there is
    with contextlib.ExitStack() as stack:
        writers: dict[str, StoreWriter] = {}
        for split, volume_name, volume in READERS[cfg["format"]](cfg, progress=progress):
            if volume_name in names:
                raise KdmriError(f"dataset {name!r}: two volumes are named {volume_name!r}")
            names.add(volume_name)
            where = f"dataset {name!r}, volume {volume_name!r}"
            coil_data = {}
            if volume.ndim == 4:  # the coil images of a multi-coil file
                volume, coil_data["coils"], _ = multicoil_volume(volume, cfg["normalization"],
                                                                 where)
            else:
                volume = normalize_volume(volume, cfg["normalization"], where=where)
            if shape is None:
                shape = tuple(volume.shape[1:])
                dtype = "complex64" if np.iscomplexobj(volume) else "float32"
                coils = coil_data["coils"].shape[1] if coil_data else 0
                if maps and coils:  # before the other files are read
                    check_settings(maps, shape, f"dataset {name!r}")
            if split not in writers:
                writers[split] = stack.enter_context(
                    StoreWriter(staging / f"{split}.h5", shape, attrs=attrs, dtype=dtype,
                                coils=coils))
            writers[split].add_volume(volume_name, volume, **coil_data)
            splits[split]["volumes"].append(volume_name)
            splits[split]["slices"] += volume.shape[0]
        empty = [s for s in SPLITS if s not in writers]
        if empty:
            raise KdmriError(f"dataset {name!r}: no volumes for split(s) {empty}")
    read = sum(s["slices"] for s in splits.values())
    max_slices = cfg["max_slices"]
    for split, info in splits.items():
        if info["slices"] > max_slices:
            _subsample_store(staging / f"{split}.h5", max_slices, attrs)
            with h5py.File(staging / f"{split}.h5", "r") as handle:
                info["volumes"] = [n.decode() if isinstance(n, bytes) else str(n)
                                   for n in handle.attrs["volume_names"]]
                info["slices"] = int(handle["volume"].shape[0])
        info["shape"] = list(shape)
        if maps and coils:
            _add_maps(staging / f"{split}.h5", maps,
                      where=f"dataset {name!r}, split {split!r}", progress=progress)
    return {"splits": splits, "slices_read": read, "complex": dtype == "complex64", "coils": coils}


def _commit(staging: Path, out_dir: Path) -> None:
    """Move the split stores into ``out_dir`` together (info.json, written last, marks
    a complete preparation)."""
    (out_dir / "info.json").unlink(missing_ok=True)
    moved = []
    try:
        for split in SPLITS:
            os.replace(staging / f"{split}.h5", out_dir / f"{split}.h5")
            moved.append(out_dir / f"{split}.h5")
    except OSError as exc:
        for path in moved:
            path.unlink(missing_ok=True)
        raise KdmriError(f"{out_dir}: cannot move the prepared stores into place ({exc})") from None


def prepare_dataset(name: str, cfg: dict, out_dir: str | Path, progress: bool = True) -> dict:
    """Write ``<out_dir>/{train,val,test}.h5`` and ``info.json`` for one configured dataset.

    ``info.json`` records ``complex``: whether the targets are complex images (fastmri with
    ``source: kspace``; the stores' ``target`` is then complex64). A multi-coil dataset
    (fastmri files with ``kspace`` of slices x coils x H x W, ``source: kspace``, or the
    demo with ``simulated_coils``) has the
    RSS of its coil images as the float32 ``target`` and the coil images as ``coils``
    (:mod:`kdmri.data.store`), and with ``sensitivity_maps`` their ``maps``;
    ``info.json`` then also records ``coils`` (their number) and ``sensitivity_maps``
    (the settings).

    ``cfg`` is checked against the schema's dataset entry and its defaults filled. Every
    source file is read once; all three stores appear together, or none does.
    """
    out_dir = Path(out_dir)
    cfg = validate({"datasets": {name: cfg}}, source=f"dataset {name!r}")["datasets"][name]
    fmt = cfg["format"]
    if fmt not in READERS:
        raise KdmriError(
            f"dataset {name!r}: unknown format {fmt!r}; expected one of {sorted(READERS)}"
        )
    start = time.perf_counter()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in out_dir.glob(f"{STAGING_PREFIX}*"):  # left by a killed run
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_dir))
    except OSError as exc:
        raise KdmriError(f"{out_dir}: cannot write here ({exc.strerror or exc})") from None
    try:
        written = _write_stores(name, cfg, staging, progress)
        _commit(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    seconds = time.perf_counter() - start
    info = {
        "dataset": name, "format": fmt, "splits": written["splits"],
        "normalization": cfg["normalization"], "complex": written["complex"],
        "slices_read": written["slices_read"], "seconds": round(seconds, 3),
        "slices_per_s": round(written["slices_read"] / seconds, 1),
    }
    if written["coils"]:  # single-coil and magnitude datasets: the record as before
        info["coils"] = written["coils"]
        info["sensitivity_maps"] = maps_settings(cfg)  # null: none
    write_json(out_dir / "info.json", info)
    return info


def undersample_store(target_store: str | Path, mask: np.ndarray, out_path: str | Path,
                      mask_params: dict | None = None) -> None:
    """Write the input store of one split: zero-filled images ``zf`` (complex64), ``target``,
    ``mask``, ``volume`` and ``slice``; ``mask_params`` (the mask's sidecar, where it has
    one) as the attribute :data:`kdmri.masks.MASK_ATTR`. A complex target (a dataset
    prepared from k-space) stays complex, and ``zf`` is then its complex zero-filled image
    as for any target. A multi-coil store (key ``coils``) gives the inputs of multi-coil
    data instead (:func:`undersample_multicoil_store`)."""
    if coil_count(target_store):
        undersample_multicoil_store(target_store, mask, out_path, mask_params)
        return
    data = SliceDataset(target_store, keys=["target"])
    target = data.batch(np.arange(len(data)))["target"]
    _check_mask(target_store, tuple(target.shape[1:]), mask)
    zf = zero_filled(undersample(target, torch.from_numpy(mask)))
    write_store(
        out_path,
        {"zf": zf.numpy(), "target": target.numpy(), "mask": mask.astype(np.float32),
         "volume": data.volume, "slice": data.slice},
        attrs=_input_attrs(data, mask_params),
    )


def _check_mask(target_store: str | Path, shape: tuple[int, ...], mask: np.ndarray) -> None:
    if tuple(shape) != tuple(mask.shape):
        raise KdmriError(
            f"{target_store}: images of {tuple(shape)} but the mask is {mask.shape}"
        )


def _input_attrs(data: SliceDataset, mask_params: dict | None) -> dict:
    return {"volume_names": data.volume_names.tolist(),
            **({MASK_ATTR: json.dumps(mask_params, sort_keys=True)} if mask_params else {})}


#: Slices a multi-coil store is undersampled in at a time (their coil data in memory).
MULTICOIL_BLOCK = 8


def undersample_multicoil_store(target_store: str | Path, mask: np.ndarray,
                                out_path: str | Path, mask_params: dict | None = None) -> None:
    """Write the input store of one split of multi-coil data (a store with ``coils``): the
    same mask ``m`` (H, W) applied to every coil's k-space ``k_c = fft2c(coils_c)``
    (:func:`kdmri.mri.undersample`). The store holds

    - ``kspace`` (N, C, H, W) complex64: the measured coil k-space ``m * k_c``, exactly 0
      where not sampled, what a multi-coil network is given with the mask;
    - ``zf`` (N, H, W) float32: the zero-filled input image, the root-sum-of-squares of the
      zero-filled coil images ``rss(ifft2c(m * k_c))`` (fastMRI's zero-filled baseline);
    - ``target`` (the RSS of the fully sampled coils, as in the data store), ``mask``,
      ``volume``, ``slice``, ``maps`` where the data store has them, and the attributes
      of :func:`undersample_store`.

    The fully sampled coil images are not copied. Slices are read, transformed and written
    :data:`MULTICOIL_BLOCK` at a time, so no split's coil data is held whole in memory."""
    keys = store_info(target_store)["keys"]
    extra = ["maps"] if "maps" in keys else []
    data = SliceDataset(target_store, keys=["target", "coils", *extra], in_memory=False)
    coils, height, width = keys["coils"][0][1:]
    _check_mask(target_store, (height, width), mask)
    per_slice = {"kspace": ((coils, height, width), "complex64"),
                 "zf": ((height, width), "float32"),
                 "target": ((height, width), keys["target"][1])}
    per_slice |= {key: ((coils, height, width), "complex64") for key in extra}
    m = torch.from_numpy(mask)
    with new_store(out_path, len(data), per_slice,
                   arrays={"mask": mask.astype(np.float32), "volume": data.volume,
                           "slice": data.slice},
                   attrs=_input_attrs(data, mask_params)) as out:
        for start in range(0, len(data), MULTICOIL_BLOCK):
            rows = np.arange(start, min(start + MULTICOIL_BLOCK, len(data)))
            block = data.batch(rows)
            kspace = undersample(block["coils"], m)
            out["kspace"][rows[0]:rows[-1] + 1] = kspace.numpy()
            out["zf"][rows[0]:rows[-1] + 1] = rss(zero_filled(kspace)).numpy()
            for key in ("target", *extra):
                out[key][rows[0]:rows[-1] + 1] = block[key].numpy()


def read_info(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())

"""The teacher as the distillation stages see it: the teacher cache, read and checked.

The cache (written once per task by ``kdmri cache-teacher``,
:func:`kdmri.inference.cache_teacher`) is one store per split, ``<cache>/<split>.h5``,
with the frozen teacher's ``output`` ``(N, H, W)`` and its per-sample normalised attention
maps ``attention`` ``(N, P, H*W)`` at the P teacher layers of the pairs; attributes
``teacher_net`` (the digest of the teacher's architecture) and ``pairs``. A stage reads
only the keys its terms take (:data:`CACHE_KEYS`) and refuses a cache of another teacher
architecture, of other teacher layers, or of another number of slices.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kdmri.config import digest
from kdmri.data.store import SliceDataset, store_info
from kdmri.distill.pairs import plain_pairs
from kdmri.errors import KdmriError

#: The loss-term inputs the teacher cache holds, and the cache key of each.
CACHE_KEYS = {"teacher_output": "output", "teacher_maps": "attention"}


def read_teacher_cache(cache_dir: str | Path | None, split: str, spec: dict, keys: list[str],
                       slices: int, store: str | Path, stage: str) -> dict[str, torch.Tensor]:
    """The cache ``keys`` of one split, all slices, keyed as the trainer holds them
    (``output`` as ``teacher_output``); checked against the spec's teacher and pairs and
    against ``slices``, the number of slices of the split's ``store``."""
    if cache_dir is None:
        raise KdmriError(f"stage {stage!r} needs the teacher cache (--cache-dir)")
    cache_path = Path(cache_dir) / f"{split}.h5"
    info = store_info(cache_path)
    teacher_net = info["attrs"].get("teacher_net")
    if teacher_net is not None and teacher_net != digest(spec["teacher_net"]):
        raise KdmriError(
            f"{cache_path}: cached teacher architecture differs from the config's "
            f"teacher {spec['teacher_net']}"
        )
    # the maps depend on the teacher's side of the pairs only: students of other
    # shapes (a compression study's) pair their own layers with the same maps
    cached_pairs = info["attrs"].get("pairs")
    if "pairs" in spec and cached_pairs is not None and [
            p[0] for p in plain_pairs(cached_pairs)] != [
            p[0] for p in plain_pairs(spec["pairs"])]:
        raise KdmriError(
            f"{cache_path}: cached attention maps are for teacher layers "
            f"{[p[0] for p in plain_pairs(cached_pairs)]} (pairs {cached_pairs}), "
            f"the config asks for pairs {spec['pairs']}"
        )
    cache = SliceDataset(cache_path, keys=keys)
    if len(cache) != slices:
        raise KdmriError(f"{cache_path}: {len(cache)} slices but {store} has {slices}")
    cached = cache.batch(np.arange(len(cache)))
    return {("teacher_output" if k == "output" else k): v for k, v in cached.items()}

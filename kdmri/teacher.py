"""The teacher as the distillation stages see it: the teacher cache, and the live teacher.

**The cache** (written once per task by ``kdmri cache-teacher``,
:func:`kdmri.inference.cache_teacher`) is one store per split, ``<cache>/<split>.h5``,
with the frozen teacher's ``output`` ``(N, H, W)`` (of multi-coil data, a multi-coil
teacher's RSS image, float32) and its per-sample normalised attention maps ``attention``
``(N, P, H*W)`` at the P teacher layers of the pairs (E2E-VarNet: one per cascade, each
of its feature layer's size); attributes
``teacher_net`` (the digest of the teacher's architecture) and ``pairs``. A stage reads
only the keys its terms take (:data:`CACHE_KEYS`) and refuses a cache of another teacher
architecture, of other teacher layers, or of another number of slices.

**The live teacher** (:class:`LiveTeacher`, ``kdmri train --teacher model.pt``) gives the
terms that take the teacher's raw features (``teacher_features`` at the pairs,
``teacher_feature_pairs`` at the FSP pairs: FitNets, FSP, SP, CC, batch-normalised
attention): the frozen teacher runs forward, without gradients, on every batch of the
stage. The cache does not hold features because of their size: at one pair layer of the
demo's DC-CNN (531 training slices of 64 x 64, 5 cascades x 32 channels) they take
1.39 GB in float32, 0.70 GB in float16, twice that for FSP's two layers per cascade, and
they grow with the dataset (a fastMRI split would not fit in memory). Measured on the
2-core machine (one thread, batch 4, teacher 5 x 5 / student 5 x 3): a FitNets step with
the live teacher takes 1.42 times as long as with float16 features held in memory (127 vs
90 ms; the attention stage from cached maps: 68 ms), the price of one teacher forward per
step. Outputs and attention maps still come from the cache, so the paper's stages never
run the teacher; a stage weighing both kinds (imitation and FitNets) takes both.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kdmri.batch import Batch, forward
from kdmri.checkpoints import load_model
from kdmri.data.store import SliceDataset, store_info
from kdmri.distill.hooks import FeatureHooks
from kdmri.distill.pairs import fsp_paths, pair_paths, plain_pairs
from kdmri.errors import KdmriError
from kdmri.keys import digest
from kdmri.models import place_model

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


class LiveTeacher:
    """The frozen teacher of ``model.pt`` at ``path`` (its architecture checked against
    ``net``) on ``device``, hooked at the teacher's side of ``pairs`` and of ``fsp_pairs``
    (either may be None: not needed); ``trust_code`` as for
    :func:`kdmri.checkpoints.load_model`. :meth:`features` runs it on a batch."""

    def __init__(self, path: str | Path, net: dict, device: torch.device,
                 pairs: list | None, fsp_pairs: list | None, amp: bool = False,
                 trust_code: bool | None = None):
        model, _ = load_model(path, expect_net=net, role="teacher", trust_code=trust_code)
        self.model = place_model(model, device).eval().requires_grad_(False)
        paths = pair_paths(self.model, pairs, "teacher") if pairs else []
        self.n_features = len(paths)
        fsp = fsp_paths(self.model, fsp_pairs, "teacher") if fsp_pairs else []
        self.n_pairs = len(fsp)
        self.hooks = FeatureHooks(self.model, paths + [p for pair in fsp for p in pair])
        self.device = device
        self.amp = amp

    @torch.no_grad()
    def features(self, batch: Batch) -> dict[str, list]:
        """``teacher_features``: the features at the pairs, a list of ``(N, C, H, W)``;
        ``teacher_feature_pairs``: ``(F1, F2)`` at each FSP pair (float32, no gradient)."""
        with torch.autocast(device_type=self.device.type, dtype=torch.float16,
                            enabled=self.amp):
            forward(self.model, batch)
        features = [f.float() for f in self.hooks.pop()]
        pairs = features[self.n_features:]
        return {"teacher_features": features[:self.n_features],
                "teacher_feature_pairs": list(zip(pairs[::2], pairs[1::2], strict=True))}

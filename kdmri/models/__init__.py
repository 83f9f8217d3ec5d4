"""Network families by name: DC-CNN for reconstruction, VDSR for super-resolution, the
U-Net for either (the families, options and sizes: docs/networks.md).

Every model is called as ``model(image, kspace, mask)`` with ``image`` the real input
``(N, 1, H, W)``, ``kspace`` the measured complex k-space ``(N, 1, H, W)`` and ``mask``
broadcastable to it (VDSR, and the U-Net with ``dc: false``, ignore the last two). A
network built with ``complex: true`` takes and returns the complex image as two channels
``(N, 2, H, W)`` (real, imaginary) instead; its ``complex`` attribute says which. Every
model names the module whose output is the activation after its k-th convolution via
``feature_paths(k)`` (1-based, one path per cascade for DC-CNN; the k-th conv block for
the U-Net), which is all distillation needs to know. :func:`flops_per_slice` counts a
network's FLOPs. Family ``python`` builds a class of the user's own code
(:mod:`kdmri.models.python_family`); its feature layers are named by module path.
"""

from __future__ import annotations

import inspect

from torch import nn

from kdmri.errors import KdmriError
from kdmri.models.dccnn import DCCNN
from kdmri.models.flops import flops_per_slice
from kdmri.models.python_family import UserNetwork
from kdmri.models.unet import UNet
from kdmri.models.vdsr import VDSR

MODEL_FAMILIES: dict[str, type] = {"dccnn": DCCNN, "vdsr": VDSR, "unet": UNet,
                                  "python": UserNetwork}  # the user's own class


def build_model(spec: dict) -> nn.Module:
    """Build a network from ``{"family": name, **constructor arguments}``."""
    spec = dict(spec)
    family = spec.pop("family", None)
    if family not in MODEL_FAMILIES:
        raise KdmriError(
            f"unknown model family {family!r}; expected one of {sorted(MODEL_FAMILIES)}"
        )
    cls = MODEL_FAMILIES[family]
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise KdmriError(
            f"model family {family!r} has no option(s) {unknown}; expected some of {sorted(allowed)}"
        )
    return cls(**spec)


def place_model(model: nn.Module, device) -> nn.Module:
    """Move ``model`` to ``device`` in channels-last memory format, the layout every stage
    uses (the faster one for these convolutions on the CPU; figures in docs/performance.md)."""
    import torch

    return model.to(device=device, memory_format=torch.channels_last)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["DCCNN", "VDSR", "UNet", "MODEL_FAMILIES", "build_model", "count_parameters",
           "flops_per_slice", "place_model"]

"""Network families by name: DC-CNN for reconstruction, VDSR for super-resolution, the
U-Net for either, E2E-VarNet for multi-coil reconstruction (the families, options and
sizes: docs/networks.md).

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
E2E-VarNet (family ``varnet``) is the exception to the call: ``model(kspace, mask)`` on
multi-coil k-space (its entry's ``multicoil``; :func:`kdmri.batch.forward` makes either
call, :func:`is_multicoil_model` says which a network takes). DC-CNN and the U-Net take
multi-coil data too, through a coil combination (an entry's ``coil_input``: SENSE for
DC-CNN, root-sum-of-squares for the U-Net without DC; :data:`COIL_INPUTS`,
:func:`coil_input`).
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kdmri.errors import KdmriError

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Family:
    """A network family's registry entry: the class that builds it and what it can do.

    The config checks, the teacher's branches, ``kdmri export`` and ``kdmri apply`` read
    what a family can do here, never from its name; the class is imported at its first
    use (:attr:`cls`), so the table is read without torch (the Snakefile checks a study
    with it on every invocation).
    """

    #: The class, as ``"package.module:Class"``: ``cls(**options)`` builds the network.
    builder: str
    #: The task kinds it serves (the config's tasks: ``recon``, ``sr``).
    tasks: tuple[str, ...]
    #: A chain of cascades (option ``cascades``): the student-friendly teacher branches
    #: after each cascade (:mod:`kdmri.distill.sft`), and layer pairs given by conv index
    #: are taken per cascade, so teacher and student need as many.
    cascades: bool = False
    #: Layers numbered by convolution (option ``convs``): a pair's conv index k has an
    #: activation for 1 <= k < convs.
    convs: bool = False
    #: Feature layers named by 1-based number (``feature_paths(k)``); else by module path only.
    numbered: bool = True
    #: The formats ``kdmri export`` writes it in.
    exports: tuple[str, ...] = ()
    #: Its forward reads the measured k-space and the mask (data consistency); a family
    #: that only reads the image is exported to ONNX with the image as its one input.
    reads_kspace: bool = True
    #: Its forward is ``model(kspace, mask)`` on measured multi-coil k-space ``(N, C, H, W)``
    #: and returns the RSS image ``(N, 1, H, W)``, instead of the single-coil
    #: ``model(image, kspace, mask)``: the reconstruction task feeds it the input stores of
    #: multi-coil data, and only it takes them (:mod:`kdmri.crosschecks`,
    #: :func:`kdmri.batch.check_complex`).
    multicoil: bool = False
    #: How a single-coil family's networks take multi-coil data, a key of
    #: :data:`COIL_INPUTS` (None: they do not), given the options ``coil_options``
    #: (``(option, value)`` pairs) and the kind's ``complex``.
    coil_input: str | None = None
    coil_options: tuple[tuple[str, Any], ...] = ()

    @property
    def cls(self) -> type:
        module, _, name = self.builder.partition(":")
        return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class CoilInput:
    """How a network takes multi-coil data (the input store of a multi-coil dataset): the
    per-slice keys of the store its batch is made of besides ``zf``, passed by name to
    :func:`kdmri.batch.make_batch`, whether the network is complex on them, and what the
    input is (the config checks' messages)."""

    keys: tuple[str, ...]
    complex: bool
    description: str


#: The ways of taking multi-coil data (:func:`coil_input`). Every network returns the
#: magnitude image of the RSS target, ``(N, 1, H, W)`` float32 (:func:`kdmri.batch.forward`).
COIL_INPUTS: dict[str, CoilInput] = {
    # model(kspace, mask) on the measured coil k-space (a multi-coil family, E2E-VarNet)
    "kspace": CoilInput(("kspace",), False, "the measured coil k-space"),
    # the SENSE coil-combined zero-filled image A^H y in two channels, multi-coil DC with
    # the maps; the magnitude of its complex output
    "sense": CoilInput(("kspace", "maps"), True,
                       "the SENSE coil-combined image, with multi-coil data consistency"),
    # the RSS of the zero-filled coil images (the store's zf), image to image
    "rss": CoilInput((), False, "the root-sum-of-squares zero-filled image"),
}

#: The network families by name.
MODEL_FAMILIES: dict[str, Family] = {
    "dccnn": Family("kdmri.models.dccnn:DCCNN", tasks=("recon",), cascades=True, convs=True,
                    exports=("torchscript", "onnx"), coil_input="sense"),
    "vdsr": Family("kdmri.models.vdsr:VDSR", tasks=("sr",), convs=True,
                   exports=("torchscript", "onnx"), reads_kspace=False),
    "unet": Family("kdmri.models.unet:UNet", tasks=("recon", "sr"), coil_input="rss",
                   coil_options=(("dc", False),)),
    # E2E-VarNet on multi-coil k-space (multicoil)
    "varnet": Family("kdmri.models.varnet:VarNet", tasks=("recon",), cascades=True,
                     exports=("torchscript",), multicoil=True),
    # the user's own class (kdmri.models.python_family)
    "python": Family("kdmri.models.python_family:UserNetwork", tasks=("recon", "sr"),
                     numbered=False),
}


#: The coil count a multi-coil family's FLOPs and latency are counted with where no store
#: gives one (the job priorities, computed from the config alone): the default of a demo
#: dataset's ``simulated_coils``.
EXAMPLE_COILS = 8


def family(net: dict) -> Family:
    """The registry entry of a network spec's ``family`` (a key every net spec has)."""
    return _entry(net["family"])


def _entry(name: Any) -> Family:
    if name not in MODEL_FAMILIES:
        raise KdmriError(f"unknown model family {name!r}; expected one of {sorted(MODEL_FAMILIES)}")
    return MODEL_FAMILIES[name]


def family_of(model: nn.Module) -> str | None:
    """The name of the family whose class ``model`` is an instance of (None for any other
    module, a ``python`` family's network included: it is the user's class)."""
    return next((name for name, entry in MODEL_FAMILIES.items()
                 if isinstance(model, entry.cls)), None)


def is_multicoil_model(model: nn.Module) -> bool:
    """Whether ``model`` is of a family whose forward takes multi-coil k-space (its
    registry entry's ``multicoil``); a ``python`` family's network never is."""
    name = family_of(model)
    return name is not None and MODEL_FAMILIES[name].multicoil


def _option(net: dict | nn.Module, entry: Family, key: str) -> Any:
    """Option ``key`` of a net spec (its class's default where the spec leaves it out) or
    of a built network (its attribute of that name)."""
    if not isinstance(net, dict):
        return getattr(net, key, None)
    if key in net:
        return net[key]
    return inspect.signature(entry.cls.__init__).parameters[key].default


def coil_requirements(net: dict | nn.Module) -> list[tuple[str, Any]]:
    """The options (``(option, value)`` pairs) a network of a single-coil family needs to
    take multi-coil data (:data:`COIL_INPUTS`: the kind's ``complex``, then the entry's
    ``coil_options``); empty for a family that takes none, or a multi-coil family."""
    name = net["family"] if isinstance(net, dict) else family_of(net)
    entry = MODEL_FAMILIES.get(name)
    if entry is None or entry.coil_input is None:
        return []
    return [("complex", COIL_INPUTS[entry.coil_input].complex), *entry.coil_options]


def coil_input(net: dict | nn.Module) -> str | None:
    """How a network (a net spec or a built network) takes multi-coil data, a key of
    :data:`COIL_INPUTS`: ``kspace`` for a multi-coil family, its entry's ``coil_input``
    for a single-coil family whose options meet :func:`coil_requirements`, else None (it
    takes none; a ``python`` family's network never does)."""
    name = net["family"] if isinstance(net, dict) else family_of(net)
    entry = MODEL_FAMILIES.get(name)
    if entry is None:
        return None
    if entry.multicoil:
        return "kspace"
    needed = coil_requirements(net)
    if entry.coil_input is None or any(_option(net, entry, key) != value
                                       for key, value in needed):
        return None
    return entry.coil_input


def family_options(name: str) -> set[str]:
    """The options a family's network takes: its class's constructor arguments."""
    return set(inspect.signature(_entry(name).cls.__init__).parameters) - {"self"}


def build_model(spec: dict) -> nn.Module:
    """Build a network from ``{"family": name, **constructor arguments}``."""
    spec = dict(spec)
    name = spec.pop("family", None)
    cls = _entry(name).cls
    allowed = family_options(name)
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise KdmriError(
            f"model family {name!r} has no option(s) {unknown}; expected some of {sorted(allowed)}"
        )
    return cls(**spec)


def place_model(model: nn.Module, device) -> nn.Module:
    """Move ``model`` to ``device`` in channels-last memory format, the layout every stage
    uses (the faster one for these convolutions on the CPU; figures in docs/performance.md)."""
    import torch

    return model.to(device=device, memory_format=torch.channels_last)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


#: Names this package gives that import torch: imported at their first use.
_LAZY = {"DCCNN": "kdmri.models.dccnn", "VDSR": "kdmri.models.vdsr", "UNet": "kdmri.models.unet",
         "VarNet": "kdmri.models.varnet", "flops_per_slice": "kdmri.models.flops"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["COIL_INPUTS", "DCCNN", "VDSR", "UNet", "VarNet", "EXAMPLE_COILS", "MODEL_FAMILIES",
           "CoilInput", "Family", "build_model", "coil_input", "coil_requirements",
           "count_parameters", "family", "family_of", "flops_per_slice", "is_multicoil_model",
           "place_model"]

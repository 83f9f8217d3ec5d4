"""``family: python``: a network class from the user's own code.

``net: {family: python, target: "package.module:Class", kwargs: {...}}`` imports
``package.module`` (installed, on ``sys.path``, or in the working folder: the working folder
is appended to ``sys.path``, after the installed packages, before the import) and builds
``Class(**kwargs)``. The contract (docs/networks.md, "Your own network"):

* ``forward(image, kspace, mask)`` for reconstruction, ``forward(image)`` for
  super-resolution; ``image`` ``(N, 1, H, W)`` float32 (two channels, real and imaginary,
  for a class whose ``complex`` attribute is true), ``kspace`` the measured centred
  k-space ``(N, 1, H, W)`` complex64, ``mask`` the 0/1 sampling mask, broadcastable to it.
  The output is float32 of the image's shape.
* kdmri calls every network as ``model(image, kspace, mask)``: a class whose forward takes
  one argument is built as a subclass whose forward drops the other two (:func:`adapter`,
  the one place that decides), so its module paths and state dict are the class's own.
* ``complex`` is false unless the class sets it; the parameters are counted as for the
  built-in families; attention pairs name the class's modules by path.

The model file stores only the net spec and the state dict, never code: loading a model
imports the class again, and only with the user's consent (:func:`check_consent`): a model
file is data, and the module its ``net`` names is imported only where the user named that
network (a spec, the study config) or passed :data:`TRUST_FLAG`. The trainer records the
target and the sha256 of the file that defines the class (:func:`source_record`) in the
model file, and the study's provenance copies it.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import sys

import torch
from torch import nn

from kdmri.errors import KdmriError
from kdmri.keys import TRUST_FLAG

#: The spec key every message names (a model spec's ``net``; a cache spec's ``teacher_net``).
KEY = "net"


def check_consent(net: dict, trusted: bool, where: str) -> None:
    """Refuse, before any import, to build a ``family: python`` ``net`` read from a file
    (``where`` names it) unless ``trusted``: building it imports the module its target
    names, which runs that module's code. Networks of the built-in families pass."""
    if trusted or not isinstance(net, dict) or "family" not in net or net["family"] != "python":
        return
    target = net["target"] if "target" in net else None
    raise KdmriError(
        f"{where}'s network is family python with target {target!r}: loading it "
        f"imports that module and runs its code; give {TRUST_FLAG} to allow it (only for a "
        "model file and code you trust)"
    )


def add_working_folder() -> str:
    """Append the working folder to ``sys.path`` (after the installed packages) unless it
    is searched already; return it."""
    cwd = os.getcwd()
    searched = {os.path.abspath(p or os.curdir) for p in sys.path}
    if cwd not in searched:
        sys.path.append(cwd)
        importlib.invalidate_caches()
    return cwd


def load_class(target) -> type:
    """The class named by ``target`` (``"package.module:Class"``), an ``nn.Module`` subclass."""
    if not isinstance(target, str) or target.count(":") != 1 or not all(target.split(":")):
        raise KdmriError(f"{KEY}.target: expected 'package.module:Class', found {target!r}")
    module_name, qualname = target.split(":")
    cwd = add_working_folder()
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise KdmriError(
            f"{KEY}.target {target!r}: module {module_name!r} is not importable ({exc}); "
            f"searched the installed packages, sys.path and the working folder {cwd}"
        ) from None
    except SyntaxError as exc:
        raise KdmriError(f"{KEY}.target {target!r}: module {module_name!r} has a syntax error "
                         f"({exc.filename}, line {exc.lineno}: {exc.msg})") from None
    obj = module
    for part in qualname.split("."):
        if not hasattr(obj, part):
            defined = sorted(name for name, value in vars(module).items()
                             if inspect.isclass(value) and issubclass(value, nn.Module)
                             and value.__module__ == module.__name__)
            raise KdmriError(
                f"{KEY}.target {target!r}: module {module_name!r} ({_file(module)}) has no "
                f"class {qualname!r}; its nn.Module classes: {defined or 'none'}"
            )
        obj = getattr(obj, part)
    if not (inspect.isclass(obj) and issubclass(obj, nn.Module)):
        kind = f"a class with bases {[b.__name__ for b in obj.__bases__]}" \
            if inspect.isclass(obj) else f"a {type(obj).__name__}"
        raise KdmriError(f"{KEY}.target {target!r}: {qualname} is {kind}, "
                         "not a torch.nn.Module subclass")
    return obj


def _file(module) -> str:
    return getattr(module, "__file__", None) or "no file"


def takes_kspace(cls: type, target: str) -> bool:
    """Whether ``cls.forward`` is called as ``forward(image, kspace, mask)``
    (reconstruction) or as ``forward(image)`` (super-resolution); any other signature is
    refused."""
    try:
        signature = inspect.signature(cls.forward)
    except (TypeError, ValueError):  # a forward inspect cannot read: take it as it says
        return True
    params = list(signature.parameters.values())[1:]  # without self
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in params if p.default is p.empty
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    varargs = any(p.kind == p.VAR_POSITIONAL for p in params)
    keyword_only = [p for p in required if p.kind == p.KEYWORD_ONLY]
    if not keyword_only and len(required) <= 3 and (len(positional) >= 3 or varargs):
        return True
    if not keyword_only and len(required) == 1 and positional:
        return False
    raise KdmriError(
        f"{KEY}.target {target!r}: {cls.__name__}.forward{signature} has the wrong signature; "
        "expected forward(image, kspace, mask) (reconstruction) or forward(image) "
        "(super-resolution)"
    )


def adapter(cls: type, target: str) -> type:
    """The class kdmri builds for ``cls``: a subclass (same name, module paths and state
    dict) that records its target and, for a one-argument forward, takes and drops the
    k-space and mask kdmri passes to every network."""
    namespace = {"__module__": cls.__module__, "__qualname__": cls.__qualname__,
                 "__doc__": cls.__doc__, "kdmri_target": target}
    if not takes_kspace(cls, target):
        def forward(self, image, kspace=None, mask=None):
            return cls.forward(self, image)

        namespace["forward"] = forward
    return type(cls.__name__, (cls,), namespace)


class UserNetwork:
    """The ``python`` family in :data:`kdmri.models.MODEL_FAMILIES`: ``UserNetwork(target,
    kwargs, complex)`` returns the built instance of the user's class (not a
    ``UserNetwork``). ``complex`` is the spec's, checked against the class's own."""

    def __new__(cls, target: str | None = None, kwargs: dict | None = None,
                complex: bool = False) -> nn.Module:
        if target is None:
            raise KdmriError(f"{KEY}.target: required by family python ('package.module:Class')")
        kwargs = {} if kwargs is None else kwargs
        if not isinstance(kwargs, dict):
            raise KdmriError(f"{KEY}.kwargs: expected a mapping of constructor arguments, "
                             f"found {type(kwargs).__name__}")
        user_cls = load_class(target)
        built = adapter(user_cls, target)
        try:
            inspect.signature(user_cls).bind(**kwargs)
        except TypeError as exc:
            raise KdmriError(f"{KEY}.kwargs {kwargs}: {user_cls.__name__}() does not take them "
                             f"({exc})") from None
        except ValueError:  # no signature to check against: let the call say
            pass
        model = built(**kwargs)
        model_complex = bool(getattr(model, "complex", False))
        model.complex = model_complex
        if model_complex != bool(complex):
            raise KdmriError(
                f"{KEY}.complex: the spec says {str(bool(complex)).lower()} but {target} has "
                f"complex = {model_complex}; set the net's complex to "
                f"{str(model_complex).lower()} (and its datasets to match)"
            )
        return model

    def __init__(self, target: str | None = None, kwargs: dict | None = None,
                 complex: bool = False):  # the options build_model checks (never called)
        raise AssertionError("unreachable")  # pragma: no cover


def is_user_network(model: nn.Module) -> bool:
    return hasattr(type(model), "kdmri_target")


def source_record(model: nn.Module) -> dict | None:
    """``{"target", "file", "sha256"}`` of a ``family: python`` network (the file that
    defines its class, from ``inspect.getsourcefile``; null where there is none), else
    None."""
    if not is_user_network(model):
        return None
    user_cls = type(model).__mro__[1]
    try:
        path = inspect.getsourcefile(user_cls)
    except TypeError:
        path = None
    sha256 = None
    if path and os.path.isfile(path):
        with open(path, "rb") as handle:
            sha256 = hashlib.sha256(handle.read()).hexdigest()
    return {"target": type(model).kdmri_target, "file": path and os.path.abspath(path),
            "sha256": sha256}


@torch.no_grad()
def check_forward(model: nn.Module, image: torch.Tensor, kspace: torch.Tensor,
                  mask: torch.Tensor) -> None:
    """Run ``model`` once on a batch and refuse an output that is not a float32 tensor of
    the image's shape, in one line naming the target. Eval mode, and the RNG state is
    restored, so training afterwards is exactly as without the check."""
    target = getattr(type(model), "kdmri_target", type(model).__name__)
    was_training = model.training
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    model.eval()
    try:
        output = model(image, kspace, mask)
    finally:
        model.train(was_training)
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    expected = f"expected a float32 tensor of the input image's shape {tuple(image.shape)}"
    if not isinstance(output, torch.Tensor):
        raise KdmriError(f"{KEY}.target {target!r}: forward returned a "
                         f"{type(output).__name__}; {expected}")
    if tuple(output.shape) != tuple(image.shape) or output.dtype != torch.float32:
        raise KdmriError(
            f"{KEY}.target {target!r}: forward returned shape {tuple(output.shape)} "
            f"{str(output.dtype).removeprefix('torch.')}; {expected}"
        )

"""Capture intermediate activations by dotted module path, without touching the model."""

from __future__ import annotations

import torch
from torch import nn

from kdmri.errors import KdmriError


class FeatureHooks:
    """Forward hooks on the modules at ``paths`` of ``model``.

    Use as a context manager; after each forward, :meth:`pop` returns the captured outputs
    in the order of ``paths`` and empties the store. Hooks are removed on exit.

    >>> model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    >>> with FeatureHooks(model, ["1"]) as hooks:
    ...     out = model(torch.zeros(1, 1, 5, 5))
    ...     [f.shape for f in hooks.pop()]
    [torch.Size([1, 2, 3, 3])]
    """

    def __init__(self, model: nn.Module, paths: list[str]):
        self.model = model
        self.paths = list(paths)
        self._store: dict[str, torch.Tensor] = {}
        self._handles: list = []
        modules = []
        for path in self.paths:  # resolve every path before registering any hook
            try:
                modules.append(model.get_submodule(path))
            except AttributeError:
                raise KdmriError(
                    f"feature layer {path!r} does not exist in {type(model).__name__}"
                ) from None
        for path, module in zip(self.paths, modules, strict=True):
            self._handles.append(module.register_forward_hook(self._hook(path)))

    def _hook(self, path: str):
        def hook(module, inputs, output):
            self._store[path] = output

        return hook

    def pop(self) -> list[torch.Tensor]:
        missing = [p for p in self.paths if p not in self._store]
        if missing:
            raise RuntimeError(f"no features captured for {missing}; was the model run?")
        features = [self._store[p] for p in self.paths]
        self._store.clear()
        return features

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._store.clear()

    def __enter__(self) -> FeatureHooks:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

"""The optimisers a spec's ``train.optimizer`` names: one table, used by the trainer and
the benchmark (:mod:`kdmri.bench`), so both build the same optimiser from the same settings."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from kdmri.errors import KdmriError

#: Optimiser name -> ``factory(params, settings)``; ``settings`` is a spec's ``train``
#: (``lr`` and ``weight_decay`` are read; SGD uses momentum 0.9).
OPTIMIZERS: dict[str, Callable[[Iterable, dict], torch.optim.Optimizer]] = {
    "adam": lambda params, s: torch.optim.Adam(params, lr=s["lr"],
                                               weight_decay=s["weight_decay"]),
    "adamw": lambda params, s: torch.optim.AdamW(params, lr=s["lr"],
                                                 weight_decay=s["weight_decay"]),
    "sgd": lambda params, s: torch.optim.SGD(params, lr=s["lr"], momentum=0.9,
                                             weight_decay=s["weight_decay"]),
}


def build_optimizer(params: Iterable, settings: dict) -> torch.optim.Optimizer:
    """The optimiser ``settings["optimizer"]`` names over ``params``."""
    name = settings["optimizer"]
    if name not in OPTIMIZERS:
        raise KdmriError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](params, settings)

"""Distillation: feature capture by module path, the loss terms and the KD-MRI losses.

The names below are imported on first use (PEP 562), so that reading the term table
(:mod:`kdmri.distill.terms`, which the workflow reads on every invocation) does not import
torch.
"""

import importlib

_NAMES = {
    "FeatureHooks": "kdmri.distill.hooks",
    "attention_map": "kdmri.distill.losses",
    "attention_transfer_loss": "kdmri.distill.losses",
    "imitation_objective": "kdmri.distill.losses",
    "LOSS_TERMS": "kdmri.distill.terms",
    "TERMS": "kdmri.distill.terms",
    "Term": "kdmri.distill.terms",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'kdmri.distill' has no attribute {name!r}")

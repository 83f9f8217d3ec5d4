"""Distillation: feature capture by module path and the KD-MRI losses."""

from kdmri.distill.hooks import FeatureHooks
from kdmri.distill.losses import (
    attention_map,
    attention_transfer_loss,
    imitation_objective,
)
from kdmri.distill.terms import LOSS_TERMS, TERMS, Term

__all__ = [
    "FeatureHooks",
    "LOSS_TERMS",
    "attention_map",
    "attention_transfer_loss",
    "imitation_objective",
    "TERMS",
    "Term",
]

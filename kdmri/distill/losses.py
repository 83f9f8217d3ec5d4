"""The KD-MRI losses: attention transfer (paper eq. 1) and the imitation objective (eq. 2).

All L1 terms are means over pixels (``F.l1_loss``), for both the reconstruction and the
imitation term, so ``alpha`` weighs like against like.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention_map(features: torch.Tensor) -> torch.Tensor:
    """Spatial attention map of ``features (N, C, H, W)``: ``vec(sum_c A_c^2)`` normalised
    to unit L2 norm per sample, shape ``(N, H*W)``."""
    if features.ndim != 4:
        raise ValueError(f"features must be (N, C, H, W), got shape {tuple(features.shape)}")
    q = features.float().pow(2).sum(dim=1).flatten(1)
    return F.normalize(q, p=2, dim=1, eps=1e-12)


def attention_distance(student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the per-sample L2 distance of two normalised maps."""
    if student_map.shape != teacher_map.shape:
        raise ValueError(
            "attention maps differ in size: student "
            f"{tuple(student_map.shape)} vs teacher {tuple(teacher_map.shape)}"
        )
    return (student_map - teacher_map).norm(p=2, dim=1).mean()


def attention_transfer_loss(
    student_features: list[torch.Tensor], teacher_features: list[torch.Tensor]
) -> torch.Tensor:
    """Paper eq. 1: sum over layer pairs of ``|| Q_S/|Q_S| - Q_T/|Q_T| ||_2``, batch-averaged.

    The teacher side may be given as features ``(N, C, H, W)`` or as ready attention maps
    ``(N, H*W)`` (what the teacher cache stores). Maps of different spatial size raise.
    """
    if len(student_features) != len(teacher_features):
        raise ValueError(
            f"{len(student_features)} student layers vs {len(teacher_features)} teacher layers"
        )
    if not student_features:
        raise ValueError("attention transfer needs at least one layer pair")
    total = student_features[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student_features, teacher_features, strict=True):
        t_map = t if t.ndim == 2 else attention_map(t)
        total = total + attention_distance(attention_map(s), t_map)
    return total


def reconstruction_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``||x - x_S||_1`` as a mean over pixels."""
    return F.l1_loss(prediction, target)


def imitation_loss(prediction: torch.Tensor, teacher_output: torch.Tensor) -> torch.Tensor:
    """``||x_T - x_S||_1`` as a mean over pixels."""
    return F.l1_loss(prediction, teacher_output)


def imitation_objective(
    prediction: torch.Tensor,
    target: torch.Tensor,
    teacher_output: torch.Tensor,
    alpha: float = 0.5,
) -> torch.Tensor:
    """Paper eq. 2: ``alpha * ||x - x_S||_1 + (1 - alpha) * ||x_T - x_S||_1``."""
    return alpha * reconstruction_loss(prediction, target) + (1 - alpha) * imitation_loss(
        prediction, teacher_output
    )


#: Named loss terms a training stage combines with weights (see :mod:`kdmri.train`).
LOSS_TERMS = ("reconstruction", "imitation", "attention")

"""The modules some loss terms learn with the student: one per layer pair, trained with the
network and kept out of ``model.pt`` (the trainer keeps them in its resume checkpoint).

:data:`BUILDERS` maps each such input of :data:`kdmri.distill.terms.INPUTS` (those with
``learnt=True``) to the function that builds its modules from one forward of both networks
(:class:`kdmri.plan.StagePlan` calls it with the student's and the teacher's features at
the layer pairs, each ``(N, C, H, W)``). Every module here holds its per-pair parts in a
``ModuleList``, in the order of the pairs.

=====================  ===========================================================
input                  per pair
=====================  ===========================================================
``adapters``           FitNets' regressor: a 1x1 convolution C_S -> C_T (with bias)
``cc_embeddings``      CC's embeddings: a linear map of the student's pooled features
                       C_S -> d and one of the teacher's C_T -> d (both with bias)
``vid_regressors``     VID's Gaussian: mean by three 1x1 convolutions C_S -> C_T ->
                       C_T -> C_T (ReLU between, no bias), a variance per channel
``ab_connectors``      AB's connector: a 1x1 convolution C_S -> C_T (no bias), then
                       batch normalisation
``ickd_embeddings``    ICKD's embedding: a 1x1 convolution C_S -> C_T (no bias), then
                       batch normalisation
=====================  ===========================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from kdmri.distill.options import CC_EMBEDDING_DIM, VID_INIT_VARIANCE, VID_MIN_VARIANCE
from kdmri.errors import KdmriError


class PairEmbedding(nn.Module):
    """CC's embeddings of one layer pair: ``student`` (C_S -> d) and ``teacher`` (C_T -> d)
    linear maps of globally average-pooled features."""

    def __init__(self, student_channels: int, teacher_channels: int, dim: int = CC_EMBEDDING_DIM):
        super().__init__()
        self.student = nn.Linear(student_channels, dim)
        self.teacher = nn.Linear(teacher_channels, dim)


class GaussianRegressor(nn.Module):
    """VID's variational Gaussian q(t | s) of one layer pair: ``forward(F_S)`` is the mean
    ``mu`` (N, C_T, H, W), three 1x1 convolutions without bias with ReLU between them, and
    the variance per teacher channel ``softplus(alpha_c) + VID_MIN_VARIANCE`` shaped
    (1, C_T, 1, 1), ``alpha`` set so that it starts at ``VID_INIT_VARIANCE``."""

    def __init__(self, student_channels: int, teacher_channels: int):
        super().__init__()
        hidden = teacher_channels
        self.mean = nn.Sequential(
            nn.Conv2d(student_channels, hidden, 1, bias=False), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1, bias=False), nn.ReLU(),
            nn.Conv2d(hidden, teacher_channels, 1, bias=False))
        start = math.log(math.expm1(VID_INIT_VARIANCE - VID_MIN_VARIANCE))  # softplus^-1
        self.alpha = nn.Parameter(torch.full((teacher_channels,), start))

    def variance(self) -> torch.Tensor:
        return (F.softplus(self.alpha) + VID_MIN_VARIANCE).view(1, -1, 1, 1)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean(features), self.variance()


def _same_size(student: list, teacher: list, what: str) -> None:
    for s, t in zip(student, teacher, strict=True):
        if s.shape[2:] != t.shape[2:]:
            raise KdmriError(f"pairs: a student feature of size {tuple(s.shape[2:])} is paired "
                             f"with a teacher feature of size {tuple(t.shape[2:])}; {what} "
                             "need the same size")


def _channels(student: list, teacher: list) -> list[tuple[int, int]]:
    return [(s.shape[1], t.shape[1]) for s, t in zip(student, teacher, strict=True)]


def fitnets_adapters(student: list, teacher: list) -> nn.ModuleList:
    _same_size(student, teacher, "FitNets' 1x1 adapters")
    return nn.ModuleList(nn.Conv2d(c_s, c_t, kernel_size=1)
                         for c_s, c_t in _channels(student, teacher))


def cc_embeddings(student: list, teacher: list) -> nn.ModuleList:
    return nn.ModuleList(PairEmbedding(c_s, c_t) for c_s, c_t in _channels(student, teacher))


def vid_regressors(student: list, teacher: list) -> nn.ModuleList:
    _same_size(student, teacher, "VID's 1x1 regressors")
    return nn.ModuleList(GaussianRegressor(c_s, c_t) for c_s, c_t in _channels(student, teacher))


def _conv_batchnorm(c_s: int, c_t: int) -> nn.Sequential:
    """A 1x1 convolution without bias, then batch normalisation by the batch's statistics in
    training and validation alike (no running statistics: the module serves training only,
    and a hint stage's validation value is the term as it trains)."""
    return nn.Sequential(nn.Conv2d(c_s, c_t, kernel_size=1, bias=False),
                         nn.BatchNorm2d(c_t, track_running_stats=False))


def ab_connectors(student: list, teacher: list) -> nn.ModuleList:
    _same_size(student, teacher, "AB's 1x1 connectors")
    return nn.ModuleList(_conv_batchnorm(c_s, c_t) for c_s, c_t in _channels(student, teacher))


def ickd_embeddings(student: list, teacher: list) -> nn.ModuleList:
    return nn.ModuleList(_conv_batchnorm(c_s, c_t) for c_s, c_t in _channels(student, teacher))


#: The builder of each learnt input, by its name in :data:`kdmri.distill.terms.INPUTS`.
BUILDERS: dict[str, Callable[[list, list], nn.Module]] = {
    "adapters": fitnets_adapters,
    "cc_embeddings": cc_embeddings,
    "vid_regressors": vid_regressors,
    "ab_connectors": ab_connectors,
    "ickd_embeddings": ickd_embeddings,
}

"""Loss functions: the KD-MRI terms (attention transfer, paper eq. 1; the imitation
objective, eq. 2) and other feature-distillation losses (FitNets, FSP, SP, CC).

All L1 terms are means over pixels (``F.l1_loss``), for both the reconstruction and the
imitation term, so ``alpha`` weighs like against like. The named terms a stage combines
are in :mod:`kdmri.distill.terms`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kdmri.distill.options import RECONSTRUCTION_NORMS


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


def reconstruction_loss(prediction: torch.Tensor, target: torch.Tensor,
                        norm: str = RECONSTRUCTION_NORMS[0]) -> torch.Tensor:
    """``||x - x_S||_1`` as a mean over pixels; with ``norm="l2"`` the mean squared error,
    with ``norm="ssim"`` ``1 - ssim(x, x_S)`` (:func:`ssim_index`)."""
    if norm == "l1":
        return F.l1_loss(prediction, target)
    if norm == "l2":
        return F.mse_loss(prediction, target)
    if norm == "ssim":
        return 1 - ssim_index(prediction, target)
    raise ValueError(f"unknown norm {norm!r}; expected one of {RECONSTRUCTION_NORMS}")


def ssim_index(prediction: torch.Tensor, target: torch.Tensor, window: int = 7,
               k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Differentiable mean SSIM of images ``(N, C, H, W)`` as ``skimage``'s
    ``structural_similarity`` computes it per channel (the image metric of
    :mod:`kdmri.metrics`): uniform ``window x window`` means, sample covariances
    (``window^2 / (window^2 - 1)``), the windows inside the image only, and
    ``data_range`` the target's maximum per sample; averaged over channels and the batch."""
    x, y = prediction.float(), target.float()
    data_range = y.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    cov_norm = window ** 2 / (window ** 2 - 1)

    def mean(t):
        return F.avg_pool2d(t, window, stride=1)

    ux, uy = mean(x), mean(y)
    vx = cov_norm * (mean(x * x) - ux * ux)
    vy = cov_norm * (mean(y * y) - uy * uy)
    vxy = cov_norm * (mean(x * y) - ux * uy)
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean()


def imitation_loss(prediction: torch.Tensor, teacher_output: torch.Tensor) -> torch.Tensor:
    """``||x_T - x_S||_1`` as a mean over pixels."""
    return F.l1_loss(prediction, teacher_output)


def branch_reconstruction_loss(branches: list[torch.Tensor],
                               target: torch.Tensor) -> torch.Tensor:
    """Student-friendly teacher: ``mean_k ||x - x_k||_1`` over its branches' outputs
    ``x_k`` (each an L1 mean over pixels)."""
    return torch.stack([reconstruction_loss(b, target) for b in branches]).mean()


def branch_imitation_loss(branches: list[torch.Tensor],
                          teacher_output: torch.Tensor) -> torch.Tensor:
    """Student-friendly teacher: ``mean_k ||x_T - x_k||_1`` between each branch's output and
    the teacher's (each an L1 mean over pixels, as SFT-KD-Recon states it; the authors'
    released code divides that mean once more by the number of pixels)."""
    return torch.stack([imitation_loss(b, teacher_output) for b in branches]).mean()


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


def attention_map_batchnorm(features: torch.Tensor) -> torch.Tensor:
    """Attention map of ``features (N, C, H, W)`` as the authors' released code computes it:
    ``vec(sum_c A_c^2)`` of shape ``(N, H*W)`` normalised with ``F.normalize(..., dim=0)``,
    i.e. each pixel's column is scaled to unit L2 norm over the batch (not per sample)."""
    if features.ndim != 4:
        raise ValueError(f"features must be (N, C, H, W), got shape {tuple(features.shape)}")
    q = features.float().pow(2).sum(dim=1).flatten(1)
    return F.normalize(q, p=2, dim=0, eps=1e-12)


def attention_batchnorm_loss(
    student_features: list[torch.Tensor], teacher_features: list[torch.Tensor]
) -> torch.Tensor:
    """Eq. 1 with the batch-normalised maps of :func:`attention_map_batchnorm` on both sides:
    sum over layer pairs of the batch mean of the per-sample L2 distance of the maps. The
    teacher side must be features ``(N, C, H, W)``: per-sample normalised maps (what the
    teacher cache stores) cannot be renormalised over the batch."""
    _check_layers(student_features, teacher_features)
    total = student_features[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student_features, teacher_features, strict=True):
        total = total + attention_distance(attention_map_batchnorm(s),
                                           attention_map_batchnorm(t))
    return total


def _check_layers(student: list, teacher: list) -> None:
    if len(student) != len(teacher):
        raise ValueError(f"{len(student)} student layers vs {len(teacher)} teacher layers")
    if not student:
        raise ValueError("the loss needs at least one layer pair")


def fitnets_loss(student_features: list[torch.Tensor], teacher_features: list[torch.Tensor],
                 adapters) -> torch.Tensor:
    """FitNets hint regression (Romero et al., 2015): sum over layer pairs of
    ``mean((r(F_S) - F_T)^2)`` (``F.mse_loss``, a mean over all elements), where ``r`` is the
    pair's learnt regressor, e.g. a 1x1 ``nn.Conv2d(C_S, C_T, 1)``; ``adapters`` holds one
    per pair (a list or ``nn.ModuleList``)."""
    _check_layers(student_features, teacher_features)
    if len(adapters) != len(student_features):
        raise ValueError(f"{len(adapters)} adapters for {len(student_features)} layer pairs")
    total = student_features[0].new_zeros((), dtype=torch.float32)
    for s, t, adapter in zip(student_features, teacher_features, adapters, strict=True):
        total = total + F.mse_loss(adapter(s).float(), t.float())
    return total


def fsp_matrix(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """FSP ("flow of solution procedure", Yim et al., 2017) matrix of two layers' features
    ``(N, C1, H, W)`` and ``(N, C2, H, W)``: ``G_ij = sum_{x,y} F1_i(x,y) F2_j(x,y) / (H*W)``,
    i.e. ``G = F1^T F2 / (H*W)`` per sample, shape ``(N, C1, C2)``."""
    if first.ndim != 4 or first.shape[0] != second.shape[0] or first.shape[2:] != second.shape[2:]:
        raise ValueError(f"FSP needs two (N, C, H, W) features of the same N, H, W, got "
                         f"{tuple(first.shape)} and {tuple(second.shape)}")
    n, _, h, w = first.shape
    return torch.bmm(first.float().flatten(2), second.float().flatten(2).transpose(1, 2)) / (h * w)


def fsp_loss(student_pairs: list[tuple[torch.Tensor, torch.Tensor]],
             teacher_pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """FSP distillation: sum over layer pairs ``(F1, F2)`` of the batch mean of
    ``||G_S - G_T||_2^2`` (squared L2 over the matrix entries), ``G`` from :func:`fsp_matrix`."""
    _check_layers(student_pairs, teacher_pairs)
    total = student_pairs[0][0].new_zeros((), dtype=torch.float32)
    for (s1, s2), (t1, t2) in zip(student_pairs, teacher_pairs, strict=True):
        g_s, g_t = fsp_matrix(s1, s2), fsp_matrix(t1, t2)
        if g_s.shape != g_t.shape:
            raise ValueError(f"FSP matrices differ in size: student {tuple(g_s.shape)} vs "
                             f"teacher {tuple(g_t.shape)}")
        diff = g_s - g_t
        total = total + diff.pow(2).sum(dim=(1, 2)).mean()
    return total


def similarity_matrix(features: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving (Tung & Mori, 2019) matrix of ``features (N, C, H, W)``:
    ``G = Q Q^T`` with ``Q`` the ``(N, C*H*W)`` flattened features, each row of ``G`` then
    L2-normalised; shape ``(N, N)``."""
    q = features.float().flatten(1)
    return F.normalize(q @ q.t(), p=2, dim=1, eps=1e-12)


def sp_loss(student_features: list[torch.Tensor],
            teacher_features: list[torch.Tensor]) -> torch.Tensor:
    """Similarity-preserving KD: sum over layer pairs of ``||G_S - G_T||_F^2 / N^2``, ``G``
    from :func:`similarity_matrix` (student and teacher may differ in C, H, W)."""
    _check_layers(student_features, teacher_features)
    total = student_features[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student_features, teacher_features, strict=True):
        n = s.shape[0]
        total = total + (similarity_matrix(s) - similarity_matrix(t)).pow(2).sum() / (n * n)
    return total


def correlation_matrix(features: torch.Tensor, gamma: float = 0.4, order: int = 2) -> torch.Tensor:
    """Correlation congruence (Peng et al., ICCV 2019) matrix of ``features (N, C, H, W)``:
    embeddings ``f (N, C)`` by global average pooling, L2-normalised, then the Gaussian RBF
    kernel ``k(x, y) = exp(-gamma ||x - y||^2)``, which for unit vectors equals
    ``exp(-2 gamma) exp(2 gamma x.y)``, approximated by its Taylor expansion of order ``P``:
    ``k(x, y) ~ exp(-2 gamma) * sum_{p=0}^{P} (2 gamma)^p / p! * (x . y)^p``; shape ``(N, N)``."""
    f = F.normalize(features.float().mean(dim=(2, 3)), p=2, dim=1, eps=1e-12)
    dot = f @ f.t()
    kernel = torch.zeros_like(dot)
    for p in range(order + 1):
        kernel = kernel + (2 * gamma) ** p / math.factorial(p) * dot.pow(p)
    return math.exp(-2 * gamma) * kernel


def cc_loss(student_features: list[torch.Tensor], teacher_features: list[torch.Tensor],
            gamma: float = 0.4) -> torch.Tensor:
    """Correlation congruence: sum over layer pairs of ``||C_S - C_T||_F^2 / N^2`` (the paper's
    ``L_CC = 1/n^2 ||psi(F_t) - psi(F_s)||_2^2``), ``C`` from :func:`correlation_matrix` with
    ``gamma`` (0.4) and the order-2 Taylor expansion."""
    _check_layers(student_features, teacher_features)
    total = student_features[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student_features, teacher_features, strict=True):
        n = s.shape[0]
        diff = correlation_matrix(s, gamma) - correlation_matrix(t, gamma)
        total = total + diff.pow(2).sum() / (n * n)
    return total

"""Loss functions: the KD-MRI terms (attention transfer, paper eq. 1; the imitation
objective, eq. 2) and other feature-distillation losses (FitNets, FSP, SP, CC, VID, AB,
ICKD).

All L1 terms are means over pixels (``F.l1_loss``), for both the reconstruction and the
imitation term, so ``alpha`` weighs like against like. The named terms a stage combines
are in :mod:`kdmri.distill.terms`, whose ``TERMS[name].formula`` is the one statement of
each term's formula: a term's function here says which term it computes and its contract
(shapes, options, what it refuses); the helpers define the quantities the formulas name
(attention maps Q, FSP and similarity matrices G, correlation matrices C). This module does
not import the table (the table names these functions and is read without torch).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kdmri.distill.options import AB_MARGIN, CC_GAMMA, RECONSTRUCTION_NORMS


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
    """The ``attention`` term (paper eq. 1; formula: ``TERMS["attention"].formula``), maps
    from :func:`attention_map`.

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
    """The ``reconstruction`` term (formula: ``TERMS["reconstruction"].formula``) of images
    ``(N, C, H, W)`` with ``norm`` one of :data:`~kdmri.distill.options.RECONSTRUCTION_NORMS`
    (SSIM by :func:`ssim_index`); another norm raises."""
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
    """The ``imitation`` term (formula: ``TERMS["imitation"].formula``): the prediction
    against the teacher's output, images of one shape."""
    return F.l1_loss(prediction, teacher_output)


def branch_reconstruction_loss(branches: list[torch.Tensor],
                               target: torch.Tensor) -> torch.Tensor:
    """The student-friendly teacher's ``sft_reconstruction`` term (formula:
    ``TERMS["sft_reconstruction"].formula``) of its branches' outputs ``x_k`` (a list)."""
    return torch.stack([reconstruction_loss(b, target) for b in branches]).mean()


def branch_imitation_loss(branches: list[torch.Tensor],
                          teacher_output: torch.Tensor) -> torch.Tensor:
    """The student-friendly teacher's ``sft_imitation`` term (formula:
    ``TERMS["sft_imitation"].formula``, as SFT-KD-Recon states it; the authors' released
    code divides that mean once more by the number of pixels) of its branches' outputs
    ``x_k`` (a list) against the teacher's output."""
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
    """The ``attention_batchnorm`` term (formula: ``TERMS["attention_batchnorm"].formula``),
    maps from :func:`attention_map_batchnorm` on both sides. The teacher side must be
    features ``(N, C, H, W)``: per-sample normalised maps (what the teacher cache stores)
    cannot be renormalised over the batch."""
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
    """The ``fitnets`` term, FitNets' hint regression (Romero et al., 2015; formula:
    ``TERMS["fitnets"].formula``, the mean over all elements): ``adapters`` holds each
    pair's learnt regressor ``r``, e.g. a 1x1 ``nn.Conv2d(C_S, C_T, 1)`` (a list or
    ``nn.ModuleList``, one per pair)."""
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
    """The ``fsp`` term (formula: ``TERMS["fsp"].formula``, the squared L2 norm over the
    matrix entries) of lists of layer pairs ``(F1, F2)``, ``G`` from :func:`fsp_matrix`;
    matrices of different sizes raise."""
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
    """The ``sp`` term, similarity-preserving KD (formula: ``TERMS["sp"].formula``), ``G``
    from :func:`similarity_matrix` (student and teacher may differ in C, H, W)."""
    _check_layers(student_features, teacher_features)
    total = student_features[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student_features, teacher_features, strict=True):
        n = s.shape[0]
        total = total + (similarity_matrix(s) - similarity_matrix(t)).pow(2).sum() / (n * n)
    return total


def gaussian_kernel(embeddings: torch.Tensor, gamma: float = CC_GAMMA, order: int = 2) -> torch.Tensor:
    """CC's kernel matrix of unit vectors ``embeddings (N, D)``: the Gaussian RBF
    ``k(x, y) = exp(-gamma ||x - y||^2)``, which for unit vectors equals
    ``exp(-2 gamma) exp(2 gamma x.y)``, approximated by its Taylor expansion of order ``P``:
    ``k(x, y) ~ exp(-2 gamma) * sum_{p=0}^{P} (2 gamma)^p / p! * (x . y)^p``; shape ``(N, N)``."""
    dot = embeddings @ embeddings.t()
    kernel = torch.zeros_like(dot)
    for p in range(order + 1):
        kernel = kernel + (2 * gamma) ** p / math.factorial(p) * dot.pow(p)
    return math.exp(-2 * gamma) * kernel


def correlation_matrix(features: torch.Tensor, gamma: float = CC_GAMMA, order: int = 2) -> torch.Tensor:
    """Correlation congruence (Peng et al., ICCV 2019) matrix of ``features (N, C, H, W)``
    without a learnt embedding: embeddings ``f (N, C)`` by global average pooling,
    L2-normalised, then :func:`gaussian_kernel`; shape ``(N, N)``."""
    f = F.normalize(features.float().mean(dim=(2, 3)), p=2, dim=1, eps=1e-12)
    return gaussian_kernel(f, gamma, order)


def cc_loss(student_features: list[torch.Tensor], teacher_features: list[torch.Tensor],
            gamma: float = CC_GAMMA) -> torch.Tensor:
    """The ``cc`` term, correlation congruence of pooled features (formula:
    ``TERMS["cc"].formula``, the paper's ``L_CC`` without its embedding), ``C`` from
    :func:`correlation_matrix` with ``gamma`` and the order-2 Taylor expansion."""
    _check_layers(student_features, teacher_features)
    total = student_features[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student_features, teacher_features, strict=True):
        n = s.shape[0]
        diff = correlation_matrix(s, gamma) - correlation_matrix(t, gamma)
        total = total + diff.pow(2).sum() / (n * n)
    return total


def _check_modules(modules, features: list, what: str) -> None:
    if len(modules) != len(features):
        raise ValueError(f"{len(modules)} {what} for {len(features)} layer pairs")


def cc_embedded_loss(student_features: list[torch.Tensor], teacher_features: list[torch.Tensor],
                     embeddings, gamma: float = CC_GAMMA) -> torch.Tensor:
    """The ``cc_embedded`` term, correlation congruence as its paper (Peng et al., ICCV 2019,
    ``L_CC``) and torchdistill compute it, on learnt embeddings (formula:
    ``TERMS["cc_embedded"].formula``): ``embeddings`` holds per pair a module with linear
    maps ``student`` (C_S -> d) and ``teacher`` (C_T -> d)
    (:class:`kdmri.distill.learnt.PairEmbedding`), applied to the globally average-pooled
    features; each embedding is L2-normalised (the kernel's Taylor form holds for unit
    vectors) and ``C`` is :func:`gaussian_kernel` of them. The teacher's map learns too: its
    gradient comes through this term alone."""
    _check_layers(student_features, teacher_features)
    _check_modules(embeddings, student_features, "embeddings")
    total = student_features[0].new_zeros((), dtype=torch.float32)
    for s, t, embed in zip(student_features, teacher_features, embeddings, strict=True):
        n = s.shape[0]
        f_s = F.normalize(embed.student(s.float().mean(dim=(2, 3))), p=2, dim=1, eps=1e-12)
        f_t = F.normalize(embed.teacher(t.float().mean(dim=(2, 3))), p=2, dim=1, eps=1e-12)
        diff = gaussian_kernel(f_s, gamma) - gaussian_kernel(f_t, gamma)
        total = total + diff.pow(2).sum() / (n * n)
    return total


def vid_loss(student_features: list[torch.Tensor], teacher_features: list[torch.Tensor],
             regressors) -> torch.Tensor:
    """The ``vid`` term, variational information distillation (Ahn et al., CVPR 2019;
    formula: ``TERMS["vid"].formula``): the negative log-likelihood of the teacher's
    feature under each pair's learnt Gaussian ``regressor(F_S) -> (mu, s)``
    (:class:`kdmri.distill.learnt.GaussianRegressor`: ``mu`` shaped as ``F_T``, ``s`` a
    variance per channel), less its constant ``log(2 pi) / 2``, averaged over the
    elements; it can be negative (where ``s < 1``)."""
    _check_layers(student_features, teacher_features)
    _check_modules(regressors, student_features, "regressors")
    total = student_features[0].new_zeros((), dtype=torch.float32)
    for s, t, regressor in zip(student_features, teacher_features, regressors, strict=True):
        mean, variance = regressor(s.float())
        nll = 0.5 * (torch.log(variance) + (t.float() - mean).pow(2) / variance)
        total = total + nll.mean()
    return total


def ab_loss(student_features: list[torch.Tensor], teacher_features: list[torch.Tensor],
            connectors, margin: float = AB_MARGIN) -> torch.Tensor:
    """The ``ab`` term, distillation of activation boundaries (Heo et al., AAAI 2019;
    formula: ``TERMS["ab"].formula``): ``connectors`` holds per pair the learnt map ``r``
    of the student's feature to the teacher's channels; only the sign of the teacher's
    feature enters (a teacher feature after its ReLU is 0 exactly where the response before
    it is <= 0, so post-activation features give the same target). A squared hinge per
    element, summed over the elements of a sample and averaged over the batch."""
    _check_layers(student_features, teacher_features)
    _check_modules(connectors, student_features, "connectors")
    total = student_features[0].new_zeros((), dtype=torch.float32)
    for s, t, connector in zip(student_features, teacher_features, connectors, strict=True):
        r, t = connector(s.float()), t.float()
        off = ((r > -margin) & (t <= 0)).float()
        on = ((r <= margin) & (t > 0)).float()
        per_element = (r + margin).pow(2) * off + (r - margin).pow(2) * on
        total = total + per_element.sum() / r.shape[0]
    return total


def inter_channel_matrix(features: torch.Tensor) -> torch.Tensor:
    """Inter-channel correlation (ICKD, Liu et al., ICCV 2021) matrix of ``features (N, C,
    H, W)``: ``G = F F^T`` per sample with ``F`` the ``(C, H*W)`` flattened feature, each
    row of ``G`` then L2-normalised; shape ``(N, C, C)``."""
    f = features.float().flatten(2)
    return F.normalize(torch.bmm(f, f.transpose(1, 2)), p=2, dim=2, eps=1e-12)


def ickd_loss(student_features: list[torch.Tensor], teacher_features: list[torch.Tensor],
              embeddings) -> torch.Tensor:
    """The ``ickd`` term, inter-channel correlation (formula: ``TERMS["ickd"].formula``, the
    normalisation of the authors' released code): ``embeddings`` holds per pair the learnt
    map of the student's feature to the teacher's channels; ``G`` from
    :func:`inter_channel_matrix` (the spatial sizes may differ)."""
    _check_layers(student_features, teacher_features)
    _check_modules(embeddings, student_features, "embeddings")
    total = student_features[0].new_zeros((), dtype=torch.float32)
    for s, t, embed in zip(student_features, teacher_features, embeddings, strict=True):
        e = embed(s.float())
        if e.shape[1] != t.shape[1]:
            raise ValueError(f"ICKD: the student's embedding has {e.shape[1]} channels, the "
                             f"teacher's feature {t.shape[1]}")
        n, c = e.shape[:2]
        total = total + (inter_channel_matrix(e) - inter_channel_matrix(t)).pow(2).sum() / (c * n)
    return total

"""The loss terms a training stage can name: a table of name -> :class:`Term`.

A stage's spec weights terms by name (``"loss_weights": {"reconstruction": 0.5,
"imitation": 0.5}``), and may set a term's options (``"loss_options": {"reconstruction":
{"norm": "l2"}}``; without it each term takes its defaults); the trainer
(:mod:`kdmri.train`) computes the named terms in the table's order and sums them,
weighted. Each term says which inputs its function takes, in order, from :data:`INPUTS`,
and each input how it is gathered, so the trainer gathers them without knowing the term:
the teacher's output and attention maps from the teacher cache, the teacher's features
from the frozen teacher run on each batch (``kdmri train --teacher``; :mod:`kdmri.teacher`
says why), the modules learnt per layer pair (FitNets' adapters, CC's embeddings, VID's
regressors, AB's connectors, ICKD's embeddings: :mod:`kdmri.distill.learnt`) and the
student-friendly teacher's branch outputs (:mod:`kdmri.distill.sft`) from the stage plan
(:mod:`kdmri.plan`), which builds those modules and the branches for the stage; they train
with it and stay out of ``model.pt``.

Each term's ``formula`` is the one statement of its maths: the docstring of its function
(:mod:`kdmri.distill.losses`) states the contract and points here. This module and the
option values (:mod:`kdmri.distill.options`) do not import torch: the workflow reads the
table on every invocation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from kdmri.distill.options import (
    AB_MARGIN,
    CC_EMBEDDING_DIM,
    CC_GAMMA,
    RECONSTRUCTION_NORMS,
    VID_INIT_VARIANCE,
)


@dataclass(frozen=True)
class Input:
    """One input a term's function may take: what it is, how the trainer gathers it for a
    batch, and what a stage taking it needs from outside the batch.

    ``gather(step)`` returns the input for one batch from a :class:`kdmri.plan.Step`, which
    holds the network's ``prediction``, the ``batch``, the teacher cache's slices
    (``cached``), the features hooked on the network (``hooked(input)``), the live
    teacher's (``live(input)``), the stage's learnt modules (``learnt(input)``) and its SFT
    branches' outputs (``branch_outputs()``); the step calls it at most once per batch.
    """

    description: str
    gather: Callable
    #: Where an input read from the teacher comes from: ``cache`` (the teacher cache,
    #: written once per task, :mod:`kdmri.teacher`) or ``weights`` (the frozen teacher run
    #: on every batch, ``kdmri train --teacher``); None for the others.
    teacher: str | None = None
    #: The spec key naming the layers of an input taken at layers
    #: (:mod:`kdmri.distill.pairs`), or the branches' network (``student_net``).
    spec_key: str | None = None
    #: Modules learnt with the network, one per layer pair, built from one forward of both
    #: networks by :data:`kdmri.distill.learnt.BUILDERS` under this input's name; they are
    #: in the resume checkpoint under that name, not in ``model.pt``.
    learnt: bool = False


def _pairs(features: list) -> list[tuple]:
    """``[F1, F2, F1, F2, ...]`` as ``[(F1, F2), ...]``."""
    return list(zip(features[::2], features[1::2], strict=True))


def _learnt(name: str, description: str) -> Input:
    """The input ``name``: modules learnt with the network at the layer pairs
    (:data:`kdmri.distill.learnt.BUILDERS`), gathered from the stage plan."""
    return Input(description, lambda step: step.learnt(name), spec_key="pairs", learnt=True)


#: The inputs a term's function may take, and how the trainer gathers each: the one list
#: of them (:mod:`kdmri.plan` builds what they need; the workflow reads ``teacher`` and
#: ``spec_key`` through :data:`TEACHER_SOURCES` and :data:`SPEC_KEYS`).
INPUTS: dict[str, Input] = {
    "prediction": Input("the student's output (N, 1, H, W), or (N, 2, H, W) when complex",
                        lambda step: step.prediction),
    "target": Input("the reference image, as the prediction", lambda step: step.batch.target),
    "teacher_output": Input("the teacher's output, as the prediction (teacher cache: output)",
                            lambda step: step.cached["teacher_output"], teacher="cache"),
    "student_features": Input("the student's features at the layer pairs, a list of "
                              "(N, C, H, W)", lambda step: step.hooked("student_features"),
                              spec_key="pairs"),
    "teacher_maps": Input("the teacher's per-sample normalised attention maps at the layer "
                          "pairs, a list of (N, H*W) (teacher cache: attention)",
                          lambda step: list(step.cached["attention"].unbind(1)),
                          teacher="cache", spec_key="pairs"),
    "teacher_features": Input("the teacher's features at the layer pairs, a list of "
                              "(N, C, H, W) (the live teacher)",
                              lambda step: step.live("teacher_features"), teacher="weights",
                              spec_key="pairs"),
    "student_feature_pairs": Input("pairs (F1, F2) of the student's features at the FSP "
                                   "pairs, a list",
                                   lambda step: _pairs(step.hooked("student_feature_pairs")),
                                   spec_key="fsp_pairs"),
    "teacher_feature_pairs": Input("pairs (F1, F2) of the teacher's features at the FSP pairs, "
                                   "a list (the live teacher)",
                                   lambda step: step.live("teacher_feature_pairs"),
                                   teacher="weights", spec_key="fsp_pairs"),
    "adapters": _learnt("adapters", "one learnt 1x1 convolution per layer pair mapping student "
                        "to teacher channels (trained with the student, not saved with it)"),
    "cc_embeddings": _learnt("cc_embeddings", "per layer pair, learnt linear maps of the "
                             "student's and of the teacher's pooled features into "
                             f"{CC_EMBEDDING_DIM} dimensions"),
    "vid_regressors": _learnt("vid_regressors", "per layer pair, a learnt Gaussian of the "
                              "teacher's feature given the student's: a mean by 1x1 "
                              "convolutions, a variance per channel"),
    "ab_connectors": _learnt("ab_connectors", "per layer pair, a learnt 1x1 convolution with "
                             "batch normalisation mapping student to teacher channels"),
    "ickd_embeddings": _learnt("ickd_embeddings", "per layer pair, a learnt 1x1 convolution "
                               "with batch normalisation mapping student to teacher channels"),
    "branch_outputs": Input("student-friendly teacher: the output of each branch k = 1..K-1 "
                            "(the teacher's image after its cascade k through the student's "
                            "cascades k+1..K), a list of tensors shaped as the prediction",
                            lambda step: step.branch_outputs(), spec_key="student_net"),
}

#: Where the inputs read from the teacher come from (:attr:`Input.teacher`): the workflow
#: gives a stage the teacher cache, the teacher's weights or both.
TEACHER_SOURCES = {name: i.teacher for name, i in INPUTS.items() if i.teacher}

#: The spec key of each input taken at layers (:attr:`Input.spec_key`).
SPEC_KEYS = {name: i.spec_key for name, i in INPUTS.items() if i.spec_key}

#: The inputs learnt with the network (:attr:`Input.learnt`), in the table's order: the order in
#: which :class:`kdmri.plan.StagePlan` builds them.
LEARNT_INPUTS = tuple(name for name, i in INPUTS.items() if i.learnt)


class _Loss:
    """A function of :mod:`kdmri.distill.losses` by name, imported at its first call: the
    workflow reads this table (which terms a method weighs, what they take) on every
    invocation, and must not import torch to do so."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, *args, **kwargs):
        from kdmri.distill import losses

        return getattr(losses, self.name)(*args, **kwargs)

    def __repr__(self) -> str:
        return f"kdmri.distill.losses.{self.name}"


@dataclass(frozen=True)
class Term:
    """One loss term: ``function(*inputs)`` is a scalar tensor, each input named in
    :data:`INPUTS`; ``formula`` is the one statement of its maths (the function's
    docstring names the term and gives its contract)."""

    function: Callable
    inputs: tuple[str, ...]
    formula: str
    #: Keyword options of the function, each with its allowed values (the first: default).
    options: dict[str, tuple] = field(default_factory=dict)


#: The loss terms by name, in the order the trainer computes and sums them.
TERMS: dict[str, Term] = {
    "reconstruction": Term(_Loss("reconstruction_loss"), ("prediction", "target"),
                           "mean |x - x_S| over pixels (L1); norm l2: mean (x - x_S)^2; "
                           "norm ssim: 1 - SSIM(x, x_S)",
                           {"norm": RECONSTRUCTION_NORMS}),
    "imitation": Term(_Loss("imitation_loss"), ("prediction", "teacher_output"),
                      "mean |x_T - x_S| over pixels (L1)"),
    "attention": Term(_Loss("attention_transfer_loss"), ("student_features", "teacher_maps"),
                      "sum over pairs of batch mean || Q_S/|Q_S| - Q_T/|Q_T| ||_2, "
                      "Q = vec(sum_c A_c^2) normalised per sample (paper eq. 1)"),
    "attention_batchnorm": Term(_Loss("attention_batchnorm_loss"),
                                ("student_features", "teacher_features"),
                                "as attention, Q (N, H*W) normalised over the batch "
                                "(F.normalize(Q, dim=0), the authors' released code)"),
    "fitnets": Term(_Loss("fitnets_loss"), ("student_features", "teacher_features", "adapters"),
                    "sum over pairs of mean (r(F_S) - F_T)^2, r a learnt 1x1 convolution"),
    "fsp": Term(_Loss("fsp_loss"), ("student_feature_pairs", "teacher_feature_pairs"),
                "sum over pairs of batch mean ||G_S - G_T||_2^2, G = F1^T F2 / (H*W)"),
    "sp": Term(_Loss("sp_loss"), ("student_features", "teacher_features"),
               "sum over pairs of ||G_S - G_T||_F^2 / N^2, G = Q Q^T row-normalised"),
    "cc": Term(_Loss("cc_loss"), ("student_features", "teacher_features"),
               "sum over pairs of ||C_S - C_T||_F^2 / N^2, C the order-2 Taylor "
               f"Gaussian kernel (gamma {CC_GAMMA}) of pooled, normalised embeddings"),
    "cc_embedded": Term(_Loss("cc_embedded_loss"),
                        ("student_features", "teacher_features", "cc_embeddings"),
                        "as cc, the embeddings e(pool(F)) normalised, e a learnt linear map "
                        f"per side and pair into {CC_EMBEDDING_DIM} dimensions"),
    "vid": Term(_Loss("vid_loss"), ("student_features", "teacher_features", "vid_regressors"),
                "sum over pairs of mean over elements of (log s_c + (F_T - mu(F_S))^2 / s_c) / 2, "
                "mu learnt 1x1 convolutions, s_c a learnt variance per channel (starts at "
                f"{VID_INIT_VARIANCE:g})"),
    "ab": Term(_Loss("ab_loss"), ("student_features", "teacher_features", "ab_connectors"),
               "sum over pairs of batch mean of the sum over elements of (r + m)^2 "
               "[r > -m, F_T <= 0] + (r - m)^2 [r <= m, F_T > 0], r = BN(conv1x1(F_S)) "
               f"learnt, margin m {AB_MARGIN:g}"),
    "ickd": Term(_Loss("ickd_loss"), ("student_features", "teacher_features", "ickd_embeddings"),
                 "sum over pairs of batch mean ||G_S - G_T||_F^2 / C, G = F F^T (C x C, over "
                 "pixels) row-normalised, F_S through BN(conv1x1) learnt to the teacher's C"),
    # the student-friendly teacher's stage: the prediction is the teacher's output
    "sft_reconstruction": Term(_Loss("branch_reconstruction_loss"), ("branch_outputs", "target"),
                               "mean over branches k of mean |x - x_k| (L1)"),
    "sft_imitation": Term(_Loss("branch_imitation_loss"), ("branch_outputs", "prediction"),
                          "mean over branches k of mean |x_T - x_k| (L1, not divided by the "
                          "number of pixels again)"),
}

#: Names of the loss terms.
LOSS_TERMS = tuple(TERMS)

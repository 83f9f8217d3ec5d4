"""The student-friendly teacher's branches (SFT-KD-Recon, Gayathri et al., MIDL 2023).

A DC-CNN teacher of K cascades trains together with the cascades of a DC-CNN student of
K cascades: for k = 1..K-1, branch k takes the teacher's image after its cascade k (after
that cascade's data consistency) and runs the student's cascades k+1..K on it, each
followed by data consistency against the batch's k-space and mask. One set of student
cascades serves every branch; the student's first cascade lies on no branch, so it never
gets a gradient and keeps its initial weights. The stage's loss (:mod:`kdmri.distill.terms`:
``reconstruction`` of the teacher, ``sft_reconstruction``, ``sft_imitation``) is

    L1(x_T, x) + w1 mean_k L1(x_k, x) + w2 mean_k L1(x_k, x_T)

with x_T the teacher's output, x the target and x_k branch k's output. Training is joint:
the gradient of every branch term flows into the student's cascades and, through the
branch's input, into the teacher's cascades 1..k (and the imitation term's also into the
whole teacher through x_T), so the teacher learns outputs that the student's cascades can
follow. The branches train with the teacher and are kept in the resume checkpoint;
``model.pt`` holds the teacher alone, an ordinary teacher for every later stage, and the
stage writes the student cascades beside it (``sft_student.pt``, a model file of the
student network: :attr:`kdmri.methods.Stage.outputs`), which the students taught by this
teacher start from (SFT-KD-Recon's step 2). Both hold the epoch of least teacher
validation loss (the first term alone, :attr:`kdmri.methods.Stage.select`), as the
reference code chooses it.

The reference code divides the imitation term once more by N H W (the batch's pixel
count): its effective w2 is 1 / (N H W), 1 / 16,384 at batch 4 and 64 x 64, which
``kd.sft_branch_imitation`` reproduces; the default, 1, is the formula the paper states.

Cost: the K-1 branches run (K-1)K/2 student cascades per step (10 for K = 5) beside the
teacher's K. Measured on the 2-core machine (one thread, batch 4, 64 x 64, teacher 5 x 5 /
student 5 x 3, 32 channels): an sft step takes 1.99 times as long as a teacher step (323 vs
163 ms).

Only DC-CNN networks have cascades to branch from (:func:`check_sft_networks`); the
teacher and the student must have as many of them, and at least two (one branch).
"""

from __future__ import annotations

import torch
from torch import nn

from kdmri.errors import KdmriError
from kdmri.models import MODEL_FAMILIES, build_model, family_of
from kdmri.mri import DataConsistency


def check_sft_networks(teacher: nn.Module, student: nn.Module) -> None:
    """Refuse, in one line, networks the branches cannot join: not both of a family with
    cascades (:data:`kdmri.models.MODEL_FAMILIES`), different or too few cascades, a
    complex network with a magnitude one, a network of a multi-coil family (E2E-VarNet's
    cascades update coil k-space, not an image a branch can start from)."""
    coil = next((net for net in (teacher, student)
                 if family_of(net) and MODEL_FAMILIES[family_of(net)].multicoil), None)
    if coil is not None:
        raise KdmriError(
            "the student-friendly teacher (sft) branches DC-CNN cascades on images; family "
            f"{family_of(coil)} ({type(coil).__name__}) reconstructs multi-coil k-space and "
            "is not supported")
    if not all(family_of(net) and MODEL_FAMILIES[family_of(net)].cascades
               for net in (teacher, student)):
        raise KdmriError(
            "the student-friendly teacher (sft) needs cascades, which only DC-CNN (family "
            "dccnn) networks have (VDSR / U-Net / python networks have none): the teacher is "
            f"{type(teacher).__name__}, the student {type(student).__name__}")
    cascades = len(teacher.cascades), len(student.cascades)
    if cascades[0] != cascades[1]:
        raise KdmriError(
            f"the student-friendly teacher (sft) pairs the cascades one to one: the teacher "
            f"has {cascades[0]}, the student {cascades[1]}; give both nets the same number "
            "of cascades")
    if cascades[0] < 2:
        raise KdmriError("the student-friendly teacher (sft) needs at least 2 cascades "
                         f"(one branch); the nets have {cascades[0]}")
    if teacher.complex != student.complex:
        raise KdmriError("the student-friendly teacher (sft): the teacher and the student "
                         "must both be complex or both not; set the same complex on both nets")


class StudentBranches(nn.Module):
    """The student's cascades (``student_net``) on the intermediate images of ``teacher``
    (a built DC-CNN, not held here): see the module docstring.

    ``teacher_paths`` names the teacher's modules whose outputs the branches take (hooked
    by the trainer, :class:`~kdmri.distill.hooks.FeatureHooks`, so the teacher runs once per
    step); ``forward(teacher_images, kspace, mask)`` gives the K-1 branch outputs, each
    shaped as the teacher's output.

    >>> net = {"family": "dccnn", "cascades": 3, "convs": 3, "channels": 4}
    >>> StudentBranches(build_model(dict(net, convs=5)), net).teacher_paths
    ['cascades.0', 'cascades.1']
    """

    def __init__(self, teacher: nn.Module, student_net: dict):
        super().__init__()
        self.student = build_model(student_net)
        check_sft_networks(teacher, self.student)
        self.teacher_paths = teacher.cascade_paths()[:-1]

    def forward(self, teacher_images: list[torch.Tensor], kspace: torch.Tensor,
                mask: torch.Tensor) -> list[torch.Tensor]:
        """Branch k = 1..K-1: the teacher's image after cascade k through the student's
        cascades k+1..K (0-based: cascades k to K-1)."""
        if len(teacher_images) != len(self.teacher_paths):
            raise ValueError(f"{len(self.teacher_paths)} branches, given "
                             f"{len(teacher_images)} teacher images")
        dc = DataConsistency(kspace, mask, complex=self.student.complex)
        return [self.student.run_cascades(image, dc, first=k)
                for k, image in enumerate(teacher_images, start=1)]

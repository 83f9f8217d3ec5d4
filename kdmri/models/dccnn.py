"""DC-CNN (Schlemper et al.): cascades of a residual plain CNN and hard data consistency."""

from __future__ import annotations

import torch
from torch import nn

from kdmri.errors import KdmriError
from kdmri.models.blocks import activation_index, plain_cnn
from kdmri.mri import DataConsistency, MulticoilDataConsistency


class Cascade(nn.Module):
    def __init__(self, convs: int, channels: int, image_channels: int = 1):
        super().__init__()
        self.cnn = plain_cnn(image_channels, image_channels, convs, channels)

    def forward(self, image: torch.Tensor, dc: DataConsistency | MulticoilDataConsistency):
        return dc(image + self.cnn(image))


class DCCNN(nn.Module):
    """``cascades`` x (CNN of ``convs`` 3x3 convs with ``channels`` features + DC).

    Teacher of the paper: ``DCCNN(5, 5, 32)`` = 141,765 parameters;
    student: ``DCCNN(5, 3, 32)`` = 49,285.

    ``complex=True`` (data prepared from acquired k-space): the image is complex, taken and
    returned as two channels (real, imaginary), so each cascade's first and last
    convolutions have two image channels (``18 * channels + 1`` more parameters per
    cascade: teacher 144,650, student 52,170), and data consistency keeps the complex
    result (:class:`~kdmri.mri.DataConsistency`).

    Multi-coil data (``maps`` given, ``complex=True``): ``image`` is the SENSE
    coil-combined zero-filled image ``A^H y = sum_c conj(S_c) F^H (m y_c)`` in two
    channels, ``kspace`` the measured coil k-space ``y`` ``(N, C, H, W)`` and ``maps`` the
    sensitivities ``S`` of its shape; each cascade's data consistency is then the
    multi-coil one, ``x <- sum_c conj(S_c) F^H (m y_c + (1 - m) F(S_c x))``
    (:class:`~kdmri.mri.MulticoilDataConsistency`), and the output is the complex image
    in two channels (:func:`kdmri.batch.forward` takes its magnitude).

    The cascades can also run apart (the student-friendly teacher's branches,
    :mod:`kdmri.distill.sft`): :meth:`run_cascades` runs some of them from an image, and
    :meth:`cascade_paths` names the modules whose outputs are the images between them.

    >>> model = DCCNN(cascades=2, convs=3, channels=8)
    >>> model.feature_paths(2)
    ['cascades.0.cnn.3', 'cascades.1.cnn.3']
    >>> model.cascade_paths()
    ['cascades.0', 'cascades.1']
    """

    def __init__(self, cascades: int = 5, convs: int = 5, channels: int = 32,
                 complex: bool = False):
        super().__init__()
        self.convs = convs
        self.complex = complex
        self.cascades = nn.ModuleList(
            Cascade(convs, channels, 2 if complex else 1) for _ in range(cascades))

    def forward(self, image: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor,
                maps: torch.Tensor | None = None):
        # prepared once, applied by every cascade
        return self.run_cascades(image, self.data_consistency(kspace, mask, maps))

    def data_consistency(self, kspace: torch.Tensor, mask: torch.Tensor,
                         maps: torch.Tensor | None = None
                         ) -> DataConsistency | MulticoilDataConsistency:
        """The data consistency of every cascade against the measured ``kspace``:
        single-coil, or with the sensitivity ``maps`` the multi-coil one (a complex
        network only: its image is the SENSE-combined complex image)."""
        if maps is None:
            return DataConsistency(kspace, mask, complex=self.complex)
        if not self.complex:
            raise KdmriError("a DC-CNN on multi-coil data takes the complex SENSE-combined "
                             "image; build it with complex: true")
        return MulticoilDataConsistency(kspace, maps, mask, channels=True)

    def run_cascades(self, image: torch.Tensor, dc: DataConsistency | MulticoilDataConsistency,
                     first: int = 0,
                     stop: int | None = None) -> torch.Tensor:
        """Cascades ``first`` to ``stop - 1`` (0-based, as the slice ``first:stop``; all of
        them by default) on ``image``, each followed by the data consistency ``dc``."""
        for cascade in self.cascades[first:stop]:
            image = cascade(image, dc)
        return image

    def cascade_paths(self) -> list[str]:
        """The module path of each cascade: its output is the image after that cascade's
        data consistency."""
        return [f"cascades.{c}" for c in range(len(self.cascades))]

    def feature_paths(self, conv: int) -> list[str]:
        index = activation_index(conv, self.convs)
        return [f"cascades.{c}.cnn.{index}" for c in range(len(self.cascades))]

"""Floating-point operations of one forward pass on one slice, counted in one place.

:func:`flops_per_slice` runs the network once on a dummy slice with forward hooks on its
convolutions, transposed convolutions and linear layers, and counts 2 FLOPs (a multiply
and an add) per multiply-accumulate of their weights:

- convolution: ``2 * out_pixels * out_channels * (in_channels / groups) * kh * kw``;
- transposed convolution: ``2 * in_pixels * in_channels * (out_channels / groups) * kh * kw``
  (every input pixel is scattered through the whole kernel);
- linear: ``2 * rows * in_features * out_features``.

Not counted: biases, normalisations, activations, pooling, dropout, padding, the
residual additions, concatenations and the data consistency (its two FFTs and the
k-space blend). On the networks here these are a few per cent of the count at most: a
complex FFT of N pixels is about ``5 N log2 N`` FLOPs, so DC-CNN's ten FFTs at 64 x 64
are about 2.5 MFLOP against its 1.2 GFLOP of convolutions (docs/networks.md).

Every layer is counted over its whole batch, which is one slice's work: a batch of one
slice for every network, and a network of a multi-coil family (E2E-VarNet), run on the
coil k-space of one slice, ``model(kspace, mask)`` with ``kspace`` ``(1, coils, H, W)``,
runs its sensitivity U-Net on a batch of one image per coil, so its count grows with the
coil count (the store's, where there is one; else :data:`kdmri.models.EXAMPLE_COILS`).
"""

from __future__ import annotations

import torch
from torch import nn

from kdmri.batch import Batch, forward


def _conv_flops(module: nn.Conv2d, inputs, output: torch.Tensor) -> int:
    kh, kw = module.kernel_size
    per_output = (module.in_channels // module.groups) * kh * kw
    return 2 * output.numel() * per_output


def _transpose_flops(module: nn.ConvTranspose2d, inputs, output: torch.Tensor) -> int:
    kh, kw = module.kernel_size
    per_input = (module.out_channels // module.groups) * kh * kw
    return 2 * inputs[0].numel() * per_input


def _linear_flops(module: nn.Linear, inputs, output: torch.Tensor) -> int:
    rows = output.numel() // module.out_features
    return 2 * rows * module.in_features * module.out_features


#: What is counted, by layer type (subclasses included: kdmri's Conv3x3 is a Conv2d).
COUNTED = ((nn.ConvTranspose2d, _transpose_flops), (nn.Conv2d, _conv_flops),
           (nn.Linear, _linear_flops))


@torch.no_grad()
def flops_per_slice(model: nn.Module, height: int, width: int, coils: int | None = None) -> int:
    """FLOPs of ``model(image, kspace, mask)`` on one ``height x width`` slice (see the
    module's docstring for what is counted); for a multi-coil family, of
    ``model(kspace, mask)`` on ``coils`` coils (None or 0:
    :data:`kdmri.models.EXAMPLE_COILS`; ignored for other families). The model is run
    once, in eval mode, on the device and in the dtype of its parameters, and left in the
    mode it was in."""
    from kdmri.models import EXAMPLE_COILS, is_multicoil_model

    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    channels = 2 if getattr(model, "complex", False) else 1
    multicoil = is_multicoil_model(model)
    image = torch.zeros(1, channels, height, width, device=device, dtype=dtype)
    kspace = torch.zeros(1, (coils or EXAMPLE_COILS) if multicoil else 1, height, width,
                         device=device, dtype=torch.complex64)
    mask = torch.ones(height, width, device=device)
    total = [0]
    handles = []
    for module in model.modules():
        for kind, count in COUNTED:
            if isinstance(module, kind):
                handles.append(module.register_forward_hook(
                    lambda m, i, o, count=count: total.__setitem__(0, total[0] + count(m, i, o))))
                break
    training = model.training
    try:
        model.eval()
        forward(model, Batch(image=None if multicoil else image, kspace=kspace, mask=mask))
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    return int(total[0])

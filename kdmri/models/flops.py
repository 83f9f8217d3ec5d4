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
DC-CNN and the U-Net on multi-coil data run their layers on one image per slice (the
SENSE-combined or the RSS image): their count does not depend on the coils.
"""

from __future__ import annotations

import torch
from torch import nn

from kdmri.batch import example_batch, forward


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
    module's docstring for what is counted); on the multi-coil input of ``coils`` coils
    where given, and always for a multi-coil family, ``model(kspace, mask)`` (None or 0:
    :data:`kdmri.models.EXAMPLE_COILS`) (:func:`kdmri.batch.example_batch`). The model is run
    once, in eval mode, on the device and in the dtype of its parameters, and left in the
    mode it was in."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    batch = example_batch(model, (height, width), device, coils=coils)
    if batch.image is not None:
        batch.image = batch.image.to(dtype)
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
        forward(model, batch)
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    return int(total[0])

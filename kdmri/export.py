"""``kdmri export``: a trained network as one self-contained file, data consistency included.

==============  ==========================================================================
format          what the file is
==============  ==========================================================================
``torchscript`` a scripted module (``torch.jit.script``): ``torch.jit.load(FILE)`` runs it
                with PyTorch alone (no kdmri). Called ``model(image, kspace, mask)`` as the
                eager network: image float32 ``(N, 1, H, W)``, kspace complex64
                ``(N, 1, H, W)``, mask float32 0/1 broadcastable to ``(H, W)`` (``(H, W)``,
                ``(1, W)``, ``(W,)`` or ``(N, 1, H, W)``); VDSR ignores kspace and mask.
                Any N, H and W, odd sizes too (the data consistency branches at run time).
                E2E-VarNet (a multi-coil family) is traced instead (``torch.jit.trace``,
                :func:`trace_multicoil`; scripting fails on its U-Net and FFT helpers) and
                called ``model(kspace, mask)``: coil k-space complex64 ``(N, C, H, W)``,
                mask float32 0/1 exactly ``(H, W)``; it returns the RSS image
                ``(N, 1, H, W)``. Traced at the training size: any N and coil count, and
                H and W divisible by ``2**pools`` (where the traced size is), run as the
                eager network (checked within :data:`MULTICOIL_TOLERANCE`).
``onnx``        an ONNX graph (``torch.onnx.export(..., dynamo=True)``, run by onnxruntime).
                ONNX has no complex type: k-space enters as float32 ``(N, 1, H, W, 2)``
                (real, imaginary: ``torch.view_as_real``), the mask as ``(H, W)``, and the
                data consistency runs on ONNX's ``DFT`` op. Dynamic N, H and W. VDSR's graph
                takes ``image`` only. Refused for E2E-VarNet (complex coil k-space).
==============  ==========================================================================

DC-CNN's and VDSR's files hold a copy of the network built here from plain operators
(``nn.Conv2d``, ReLU, the FFTs), with the trained weights: the same arithmetic as
:class:`kdmri.models.DCCNN` and :class:`kdmri.models.VDSR` (tests/test_export.py compares
them within 1e-5), the data consistency being the eager networks' own
(:func:`kdmri.mri.prepare_dc` and :func:`kdmri.mri.apply_dc`, which TorchScript compiles
into the file), without the CPU-only oneDNN call of :class:`kdmri.models.blocks.Conv3x3`,
so the file runs on any device. A JSON sidecar ``FILE.json`` describes the file: network,
task, input contract, the source model's sha256 and the check made after writing it (the
reloaded file against the eager network on random inputs).

Reaching the ONNX graph took two changes to the module torch's exporter sees (torch 2.13,
onnxscript 0.7): the k-space input must be real (a complex graph input fails in the
translation step: ``No ONNX function found for <OpOverload(op='aten.sym_size',
overload='int')>. Failure message: No decompositions registered for the complex-valued
input``), and the centring shifts are slices and concatenations (``torch.roll`` with a
shift that depends on the image size fails: ``Unsupported attribute type: '<class
'list'>'`` in ``aten_roll``), as :mod:`kdmri.mri` writes them. Neither changes a number.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from kdmri.errors import KdmriError
from kdmri.models import family, is_multicoil_model
from kdmri.mri import apply_dc, fft2c, prepare_dc

EXPORT_FORMAT = "kdmri-export/1"
FORMATS = ("torchscript", "onnx")
#: Size of the example input the exporters see and of the check after writing.
EXAMPLE_SIZE = (32, 32)
#: Largest difference allowed between the written file and the eager network in that check.
CHECK_TOLERANCE = 1e-4


# ------------------------------------------------------------------ exportable networks
def _plain_cnn(block: nn.Sequential) -> nn.Sequential:
    """A copy of a :func:`kdmri.models.blocks.plain_cnn` with ``nn.Conv2d`` layers."""
    layers: list[nn.Module] = []
    for layer in block:
        if isinstance(layer, nn.Conv2d):
            conv = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                             padding=layer.padding)
            conv.load_state_dict(layer.state_dict())
            layers.append(conv)
        elif isinstance(layer, nn.ReLU):
            layers.append(nn.ReLU(inplace=True))
        else:
            raise KdmriError(f"cannot export a network layer of type {type(layer).__name__}")
    return nn.Sequential(*layers)


class ScriptedDCCNN(nn.Module):
    """DC-CNN in TorchScript: :class:`kdmri.models.DCCNN`'s cascades, each followed by the
    data consistency of :class:`kdmri.mri.DataConsistency` (:func:`kdmri.mri.prepare_dc`
    and :func:`kdmri.mri.apply_dc`, compiled into the file: the sign form for even sizes,
    the shifted form for odd ones, chosen per call)."""

    def __init__(self, cnns: list[nn.Sequential], complex: bool = False):
        super().__init__()
        self.cnns = nn.ModuleList(cnns)
        self.complex = complex

    def forward(self, image: torch.Tensor, kspace: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        measured = torch.view_as_real(kspace.to(torch.complex64))
        kept, free, shifted = prepare_dc(measured, mask)
        x = image.to(torch.float32)
        for cnn in self.cnns:
            x = apply_dc(x + cnn(x), kept, free, shifted, self.complex)
        return x


class OnnxDCCNN(nn.Module):
    """DC-CNN for the ONNX exporter: k-space as float ``(N, 1, H, W, 2)``, the mask
    ``(H, W)``; the data consistency of :func:`kdmri.mri.apply_dc` in its shifted form
    (right for any size, which the graph does not know), every shift on a real tensor."""

    def __init__(self, cnns: list[nn.Sequential]):
        super().__init__()
        self.cnns = nn.ModuleList(cnns)

    def forward(self, image: torch.Tensor, kspace: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        kept, free, shifted = prepare_dc(kspace, mask, sign_form=False)
        x = image
        for cnn in self.cnns:
            x = apply_dc(x + cnn(x), kept, free, shifted, False)
        return x


class ScriptedVDSR(nn.Module):
    """VDSR: ``image + CNN(image)``; k-space and mask are accepted and ignored."""

    def __init__(self, cnn: nn.Sequential):
        super().__init__()
        self.cnn = cnn

    def forward(self, image: torch.Tensor, kspace: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        return image + self.cnn(image)


class OnnxVDSR(nn.Module):
    def __init__(self, cnn: nn.Sequential):
        super().__init__()
        self.cnn = cnn

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image + self.cnn(image)


def exportable(model: nn.Module, fmt: str = "torchscript") -> nn.Module:
    """The plain-operator copy of a kdmri network for ``fmt`` (eval mode, CPU, float32), for
    a family whose registry entry lists ``fmt`` in its exports
    (:data:`kdmri.models.MODEL_FAMILIES`), made by :data:`PLAIN_COPIES`."""
    from kdmri.models import MODEL_FAMILIES, family_of

    model = model.to("cpu", memory_format=torch.contiguous_format)
    complex_net = bool(getattr(model, "complex", False))
    if complex_net and fmt == "onnx":
        raise KdmriError("--format onnx: networks with complex: true (two image channels) are "
                         "exported as torchscript only; use --format torchscript")
    name = family_of(model)
    if name is None or fmt not in MODEL_FAMILIES[name].exports or name not in PLAIN_COPIES:
        raise KdmriError(f"cannot export a network of type {type(model).__name__} as a "
                         "plain-operator copy (a multi-coil network is traced: "
                         "trace_multicoil)")
    return PLAIN_COPIES[name](model, fmt, complex_net).eval()


def _plain_dccnn(model: nn.Module, fmt: str, complex_net: bool) -> nn.Module:
    cnns = [_plain_cnn(cascade.cnn) for cascade in model.cascades]
    return OnnxDCCNN(cnns) if fmt == "onnx" else ScriptedDCCNN(cnns, complex=complex_net)


def _plain_vdsr(model: nn.Module, fmt: str, complex_net: bool) -> nn.Module:
    cnn = _plain_cnn(model.cnn)
    return OnnxVDSR(cnn) if fmt == "onnx" else ScriptedVDSR(cnn)


#: The plain-operator copy of each exportable family: ``(model, fmt, complex) -> module``.
PLAIN_COPIES = {"dccnn": _plain_dccnn, "vdsr": _plain_vdsr}


def script(model: nn.Module) -> torch.jit.ScriptModule:
    """The TorchScript module of a kdmri network (what ``--format torchscript`` saves)."""
    return torch.jit.script(exportable(model, "torchscript"))


# ------------------------------------------------------------------ inputs and checks
def example_inputs(height: int, width: int, batch: int = 2, seed: int = 0, channels: int = 1):
    """Random inputs of the models' contract: image in [0, 1) (``channels`` 2 for a complex
    network), complex k-space, 0/1 mask."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, channels, height, width, generator=generator)
    parts = torch.randn(2, batch, 1, height, width, generator=generator)
    kspace = torch.complex(parts[0], parts[1])
    mask = (torch.rand(height, width, generator=generator) < 0.5).to(torch.float32)
    return image, kspace, mask


#: The sidecar's name of each task kind.
KINDS = {"recon": "reconstruction", "sr": "super-resolution"}


def _kind(net: dict) -> str:
    """What an exported network does: the task its family serves (an exportable family
    serves one, :data:`kdmri.models.MODEL_FAMILIES`)."""
    return KINDS[family(net).tasks[0]]


def contract(fmt: str, net: dict, complex_image: bool) -> dict:
    """The input and output contract of an exported file, for the sidecar (``complex_image``:
    the network takes the complex image as two channels)."""
    dims = ["N", 2 if complex_image else 1, "H", "W"]
    image = {"name": "image", "dtype": "float32", "shape": dims,
             "meaning": "the network input: the real part of the zero-filled image "
                        "(reconstruction) or the low-resolution image (super-resolution), "
                        "of a volume divided by its maximum; a complex: true network takes "
                        "the complex image as two channels (real, imaginary)"}
    if fmt == "torchscript":
        kspace = {"name": "kspace", "dtype": "complex64", "shape": ["N", 1, "H", "W"],
                  "meaning": "measured centred k-space (zero where not sampled)"}
        mask = {"name": "mask", "dtype": "float32", "shape": ["H", "W"],
                "meaning": "0/1 sampling mask, broadcastable: (H, W), (1, W), (W,) or (N, 1, H, W)"}
    else:
        kspace = {"name": "kspace", "dtype": "float32", "shape": ["N", 1, "H", "W", 2],
                  "meaning": "measured centred k-space as (real, imaginary) in the last dim "
                             "(torch.view_as_real)"}
        mask = {"name": "mask", "dtype": "float32", "shape": ["H", "W"],
                "meaning": "0/1 sampling mask"}
    inputs = [image, kspace, mask]
    if not family(net).reads_kspace:
        if fmt == "onnx":
            inputs = [image]
        else:
            for entry in inputs[1:]:
                entry["meaning"] = f"ignored by {net['family']} (may be omitted)"
    return {
        "inputs": inputs,
        "outputs": [{"name": "output", "dtype": "float32", "shape": dims,
                     "meaning": "the network's image on the input's scale"}],
        "size": "dynamic: any N, H and W (fully convolutional; the data consistency "
                "works at the input's size, odd sizes included)",
    }


def _run_exported(fmt: str, exported, image, kspace, mask) -> torch.Tensor:
    """Run what was exported: the TorchScript module that was saved (kdmri never loads a
    TorchScript file, which can hold code: tests/reliability/test_unsafe_checkpoints.py; the
    tests load the written files without kdmri), or the written ONNX file in onnxruntime."""
    if fmt == "torchscript":
        with torch.no_grad():
            return exported(image, kspace, mask)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    feeds = {"image": image.numpy(), "kspace": torch.view_as_real(kspace).numpy(),
             "mask": mask.numpy()}
    names = [i.name for i in session.get_inputs()]
    return torch.from_numpy(session.run(None, {n: feeds[n] for n in names})[0])


def _worst_difference(path: Path, outputs, tolerance: float) -> float:
    """The largest difference over ``outputs``, pairs ``(eager output, exported file's
    output)``; an error naming ``path`` for an output of another shape, or a difference
    above ``tolerance``."""
    worst = 0.0
    for expected, got in outputs:
        if got.shape != expected.shape:
            raise KdmriError(f"{path}: the exported file returned shape {tuple(got.shape)}, "
                             f"expected {tuple(expected.shape)}")
        worst = max(worst, float((got - expected).abs().max()))
    if not worst <= tolerance:
        raise KdmriError(f"{path}: the exported file differs from the network by {worst:.3g} "
                         f"(more than {tolerance:g}); nothing written")
    return worst


def _check(fmt: str, path: Path, model: nn.Module, exported) -> dict:
    """What was exported (``exported``: the saved TorchScript module, or the ONNX file at
    ``path``) against the eager network at two sizes (one of them odd)."""
    sizes = [EXAMPLE_SIZE, (EXAMPLE_SIZE[0] + 9, EXAMPLE_SIZE[1] - 3)]
    channels = 2 if getattr(model, "complex", False) else 1

    def outputs():
        for i, (height, width) in enumerate(sizes):
            image, kspace, mask = example_inputs(height, width, seed=i, channels=channels)
            with torch.no_grad():
                expected = model(image, kspace, mask)
            yield expected, _run_exported(fmt, exported, image, kspace, mask)

    worst = _worst_difference(path, outputs(), CHECK_TOLERANCE)
    return {"sizes": [list(s) for s in sizes], "max_abs_diff": worst,
            "runtime": "the saved TorchScript module" if fmt == "torchscript" else "onnxruntime"}


# ------------------------------------------------------------------ multi-coil networks
#: Largest difference allowed between a traced multi-coil network and the eager one.
MULTICOIL_TOLERANCE = 1e-5
#: Coil counts and batch sizes of the trace's example input and of the checks after it.
TRACE_COILS, CHECK_COILS = (4, 2), (3, 1)
MULTICOIL_NORMALISATION = ("coil images divided by the maximum of the volume's root-sum-of-"
                           "squares image (kdmri prepare's 'max'); multiply the output by it")


def size_step(model: nn.Module) -> int:
    """``2**pools`` of a multi-coil network's deepest U-Net: a traced module's U-Nets pad
    no level at a size divisible by it, as at the traced size (see :func:`trace_multicoil`)."""
    pools = [m.num_pool_layers for m in model.modules() if hasattr(m, "num_pool_layers")]
    return 2 ** max(pools, default=0)


def trace_shape(model: nn.Module, ckpt: dict) -> tuple[int, int]:
    """The ``(H, W)`` a multi-coil network is traced at: its training size (the shape of
    its training mask, model.pt's ``mask``), else the smallest square of at least
    :data:`EXAMPLE_SIZE` divisible by :func:`size_step` (twice it: the U-Nets' bottleneck
    is 2 x 2 at least)."""
    recorded = ckpt.get("mask") or {}
    shape = recorded.get("shape") if isinstance(recorded, dict) else None
    if shape and len(shape) == 2:
        return int(shape[0]), int(shape[1])
    side = max(EXAMPLE_SIZE[0], 2 * size_step(model))
    return side, side


def multicoil_inputs(height: int, width: int, coils: int, batch: int = 2, seed: int = 0):
    """Random inputs of a multi-coil network's contract: measured coil k-space complex64
    ``(batch, coils, H, W)`` (the k-space of random coil images whose RSS has maximum 1,
    as normalised data, zero where not sampled) and a 0/1 column mask ``(H, W)`` float32
    (the central 8 columns, the ACS lines, and about a third of the others)."""
    generator = torch.Generator().manual_seed(seed)
    parts = torch.randn(2, batch, coils, height, width, generator=generator)
    images = torch.complex(parts[0], parts[1])
    images = images / torch.sqrt((images.abs() ** 2).sum(1)).max()
    columns = (torch.rand(width, generator=generator) < 0.33).to(torch.float32)
    columns[width // 2 - 4: width // 2 + 4] = 1.0
    mask = columns.expand(height, width).contiguous()
    return (fft2c(images) * mask).to(torch.complex64), mask


def trace_multicoil(model: nn.Module, shape: tuple[int, int]) -> torch.jit.ScriptModule:
    """The TorchScript module of a multi-coil network (E2E-VarNet), by ``torch.jit.trace``
    on an example input of ``shape`` (scripting fails: the U-Net's forward and the centred
    FFT helpers do not compile). Tracing records the operations one call made, so what the
    Python code decided is fixed: the mask's form (exactly 2-D ``(H, W)``) and the U-Nets'
    one-pixel pads (none at a size divisible by :func:`size_step`); sizes read from the
    tensors stay dynamic, so N, the coil count and, within that divisibility, H and W
    may differ from the traced ones (:func:`_check_multicoil` checks it)."""
    model = model.to("cpu", memory_format=torch.contiguous_format).eval()
    coils, batch = TRACE_COILS
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return torch.jit.trace(model, multicoil_inputs(*shape, coils, batch), check_trace=False)


def _check_sizes(shape: tuple[int, int], step: int) -> list[tuple[int, int]]:
    """The traced size, and one other ``step`` larger each side where the traced size is
    divisible by ``step`` (the sizes the module holds at)."""
    if shape[0] % step or shape[1] % step:
        return [shape]
    return [shape, (shape[0] + step, shape[1] + step)]


def _check_multicoil(path: Path, model: nn.Module, exported, shape: tuple[int, int]) -> dict:
    """The traced module against the eager network at the traced size and coil count, and
    at another batch size and coil count (and another size where :func:`_check_sizes` gives
    one), each within :data:`MULTICOIL_TOLERANCE`."""
    sizes = _check_sizes(shape, size_step(model))
    runs = [(shape, *TRACE_COILS), (shape, *CHECK_COILS)]
    runs += [(size, *CHECK_COILS) for size in sizes[1:]]

    def outputs():
        for seed, ((height, width), coils, batch) in enumerate(runs, start=1):
            kspace, mask = multicoil_inputs(height, width, coils, batch, seed=seed)
            with torch.no_grad():
                yield model(kspace, mask), exported(kspace, mask)

    worst = _worst_difference(path, outputs(), MULTICOIL_TOLERANCE)
    return {"sizes": [list(s) for s in sizes], "coils": sorted({TRACE_COILS[0], CHECK_COILS[0]}),
            "traced": {"size": list(shape), "coils": TRACE_COILS[0], "batch": TRACE_COILS[1]},
            "size_step": size_step(model), "max_abs_diff": worst,
            "runtime": "the saved TorchScript module (traced)"}


def multicoil_contract(check: dict) -> dict:
    """The input and output contract of a traced multi-coil network, for the sidecar."""
    height, width = check["traced"]["size"]
    step = check["size_step"]
    return {
        "inputs": [
            {"name": "kspace", "dtype": "complex64", "shape": ["N", "C", "H", "W"],
             "meaning": "measured centred coil k-space (zero where not sampled), H the "
                        "readout, W the phase encoding"},
            {"name": "mask", "dtype": "float32", "shape": ["H", "W"],
             "meaning": "0/1 sampling mask, exactly 2-D (a column mask (W,) expanded to "
                        "(H, W)); its contiguous sampled columns around W // 2 are the ACS lines"},
        ],
        "outputs": [{"name": "output", "dtype": "float32", "shape": ["N", 1, "H", "W"],
                     "meaning": "the root-sum-of-squares image on the input's scale"}],
        "size": f"traced at {height} x {width} with {check['traced']['coils']} coils: any N and "
                "coil count; " + (
                    f"H and W divisible by {step}, at least {2 * step} (the U-Nets then pad "
                    "no level, as at the traced size)" if len(check["sizes"]) > 1 else
                    f"H and W as traced (at a size not divisible by {step} the U-Nets' "
                    "one-pixel pads are fixed in the trace)"),
    }


# ------------------------------------------------------------------ writing
def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_out(out: Path) -> None:
    if out.is_dir():
        raise KdmriError(f"{out}: is a folder; expected the path of the file to write (--out)")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise KdmriError(f"{out}: cannot write: {parent} is a file, not a folder (--out)")
    if not os.access(parent, os.W_OK):
        raise KdmriError(f"{out}: cannot write in {parent} (permission denied) (--out)")


def _onnx_modules():
    missing = [name for name in ("onnx", "onnxscript") if _find_spec(name) is None]
    if missing:
        raise KdmriError(f"--format onnx needs the package(s) {', '.join(missing)}: "
                         "pip install 'kdmri[export]' (or use --format torchscript)")


def _find_spec(name: str):
    import importlib.util

    return importlib.util.find_spec(name)


def _export_onnx(model: nn.Module, net: dict, tmp: Path) -> dict:
    from torch.export import Dim

    _onnx_modules()
    module = exportable(model, "onnx")
    height, width = EXAMPLE_SIZE
    image, kspace, mask = example_inputs(height, width)
    batch, h, w = Dim("batch"), Dim("height", min=2), Dim("width", min=2)
    if not family(net).reads_kspace:
        args, names = (image,), ["image"]
        shapes: dict = {"image": {0: batch, 2: h, 3: w}}
    else:
        args, names = (image, torch.view_as_real(kspace), mask), ["image", "kspace", "mask"]
        shapes = {"image": {0: batch, 2: h, 3: w}, "kspace": {0: batch, 2: h, 3: w},
                  "mask": {0: h, 1: w}}
    chatter = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(chatter):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, args, dynamo=True, input_names=names,
                                        output_names=["output"], dynamic_shapes=shapes)
            program.save(str(tmp))
    except Exception as exc:  # the exporter's errors are many types, each a wall of text
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        step = next((line for line in lines if "step" in line.lower()), lines[0] if lines else "")
        cause = next((line for line in reversed(lines) if "Error" in line and ":" in line), "")
        raise KdmriError(
            f"ONNX cannot express this {net['family']} network: torch.onnx.export failed "
            f"({type(exc).__name__}: {step} {cause}); use --format torchscript"
        ) from None
    import onnx

    proto = onnx.load(str(tmp))
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"opset": opset, "onnx_ops": sorted({node.op_type for node in proto.graph.node})}


def export_model(model_path: str | Path, fmt: str, out: str | Path,
                 trust_code: bool = False) -> dict:
    """Write ``model_path`` (a ``model.pt``) as ``fmt`` to ``out`` and the sidecar
    ``out.json``; return the sidecar's content. ``trust_code``: the user's consent to build
    a ``family: python`` network (:func:`kdmri.checkpoints.load_model`)."""
    from kdmri import __version__
    from kdmri.checkpoints import check_single_coil, load_model
    from kdmri.io import atomic_path, write_json

    model_path, out = Path(model_path), Path(out)
    if fmt not in FORMATS:
        raise KdmriError(f"unknown export format {fmt!r}; expected one of {list(FORMATS)}")
    if not model_path.is_file():
        raise KdmriError(f"{model_path}: model file not found (--model)")
    _check_out(out)
    model, ckpt = load_model(model_path, trust_code=trust_code)
    model = model.eval()
    net = ckpt["net"]
    multicoil = is_multicoil_model(model)
    if not multicoil:  # a multi-coil family is traced on coil k-space below
        check_single_coil(model_path, ckpt, "kdmri export")
    if multicoil and fmt not in family(net).exports:
        raise KdmriError(f"--format {fmt}: family {net['family']} takes complex coil k-space, "
                         "which ONNX has no type for; use --format torchscript")
    if fmt == "onnx":
        _onnx_modules()
    extra: dict = {}
    with atomic_path(out, suffix=f".{fmt}.tmp") as tmp, warnings.catch_warnings():
        # torch 2.13 marks TorchScript deprecated (in favour of torch.export); it works
        warnings.simplefilter("ignore", DeprecationWarning)
        if multicoil:
            shape = trace_shape(model, ckpt)
            exported = trace_multicoil(model, shape)
            torch.jit.save(exported, str(tmp))
            check = _check_multicoil(tmp, model, exported, shape)
        else:
            if fmt == "torchscript":
                exported = script(model)
                torch.jit.save(exported, str(tmp))
            else:
                extra, exported = _export_onnx(model, net, tmp), tmp
            check = _check(fmt, tmp, model, exported)
    trained = ckpt.get("spec") or {}  # the job spec the model file records
    info = {
        "format": EXPORT_FORMAT,
        "export_format": fmt,
        "file": out.name,
        "file_sha256": sha256(out),
        "net": net,
        "kind": _kind(net),
        "task": trained.get("task"),
        "model": trained.get("model"),
        "stage": trained.get("stage"),
        "params": ckpt.get("params"),
        "source_model": {
            "path": str(model_path),
            "sha256": sha256(model_path),
            "format": ckpt.get("format"),
            "kdmri_version": ckpt.get("kdmri_version"),
            "epoch": ckpt.get("epoch"),
            "val_psnr": ckpt.get("val_psnr"),
            "spec_digest": ckpt.get("spec_digest"),
        },
        "normalisation": MULTICOIL_NORMALISATION if multicoil else
                         "each volume divided by its maximum before the network (kdmri "
                         "prepare's 'max'); multiply the output by it",
        **(multicoil_contract(check) if multicoil else contract(fmt, net, model.complex)),
        "check": check,
        "exported_with": {"kdmri": __version__, "torch": torch.__version__, **extra},
    }
    write_json(Path(f"{out}.json"), info)
    return info


def summary(info: dict) -> str:
    """The line ``kdmri export`` prints."""
    sizes = " and ".join("x".join(map(str, s)) for s in info["check"]["sizes"])
    return (f"exported {info['net']['family']} ({info['kind']}, {info['params']} parameters) as "
            f"{info['export_format']} -> {info['file']} (+ .json); reloaded with "
            f"{info['check']['runtime']} and checked at {sizes}: max difference "
            f"{info['check']['max_abs_diff']:.2g}")

"""``kdmri apply``: run a trained network on one volume file and write a NIfTI.

Inputs (by what ``--input`` is)

* a NIfTI file (``.nii``, ``.nii.gz``, 3-D): slices across ``--axis`` (default 2, as the
  nifti reader's ``axis``);
* a fastMRI HDF5 file (``.h5``, ``.hdf5``): the image ``reconstruction_esc`` (else
  ``reconstruction_rss``), slices along its first dim, as the fastmri reader; its k-space
  is not used;
* a DICOM series (a folder holding one series, or one DICOM file):
  :func:`kdmri.data.dicom.read_dicom_volume`.

What runs (the steps of ``kdmri prepare``, ``undersample`` and ``predict`` for one volume)

1. the volume is divided by its maximum (prepare's ``max`` normalisation);
2. reconstruction (DC-CNN): every slice is undersampled with the mask ``m``: ``k = m *
   FFT(slice)``, zero-filled image ``IFFT(k)``; the network gets its real part, ``k`` and
   ``m`` (:func:`kdmri.mri.undersample`, :func:`kdmri.mri.zero_filled`,
   :func:`kdmri.batch.make_batch`). ``m`` is ``--mask`` (a ``.npy`` of the slices' shape
   (H, W), e.g. the study's ``mask.npy``) where given; else the mask of the model's own
   settings (``model.pt``'s ``mask``: kind, acceleration, centre fraction, seed) made at
   the slices' size (:func:`kdmri.masks.mask_from_settings`), which is written beside the
   output (:func:`made_mask_path`);
   super-resolution (VDSR): the slices are the low-resolution input as they are, on the
   grid of the output. The workflow makes that input from a full-resolution slice by
   keeping the central box of its k-space (the ``lowres`` mask) and zero-filling the rest,
   which is sinc interpolation onto the full grid; a low-resolution scan must be brought
   to the output grid the same way (or by another interpolation) first. With ``--mask``
   (the SR study's ``lowres`` mask.npy) the slices are taken as full-resolution images
   and the low-resolution input is made from them as the workflow does;
3. the network runs at the slices' own size (fully convolutional), in batches, with a
   progress bar on stderr;
4. the output is multiplied by the maximum of step 1 (the input's range) and written as
   float32 NIfTI with the source's geometry: a NIfTI input's affine and header (voxel
   sizes), the slices put back across ``--axis``; DICOM: the affine of
   :func:`~kdmri.data.dicom.read_dicom_volume`, data ``(columns, rows, slices)``; HDF5:
   the identity affine (fastMRI files carry no geometry), data ``(columns, rows, slices)``.

A network of a multi-coil family (E2E-VarNet) is refused in one line: it reconstructs
coil k-space, which none of these inputs gives.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdmri.errors import KdmriError

APPLY_BATCH = 16


@dataclass
class Volume:
    """Slices ``(S, H, W)`` float32, and how to write an output of the same shape back."""

    slices: np.ndarray
    kind: str  # nifti | hdf5 | dicom
    affine: np.ndarray
    header: object = None
    axis: int = 0
    note: str = ""

    def to_array(self, slices: np.ndarray) -> np.ndarray:
        """The NIfTI data array of output ``slices`` (S, H, W)."""
        if self.kind == "nifti":
            return np.moveaxis(slices, 0, self.axis)
        return slices.transpose(2, 1, 0)  # (columns, rows, slices)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in (".nii.gz", ".nii", ".h5", ".hdf5"):
        if name.endswith(suffix):
            return suffix
    return ""


def read_volume(path: str | Path, axis: int = 2) -> Volume:
    """Read one volume file (NIfTI, fastMRI HDF5, DICOM folder or file)."""
    path = Path(path)
    if not path.exists():
        raise KdmriError(f"{path}: input not found (--input)")
    suffix = _suffix(path)
    if path.is_file() and suffix in (".nii", ".nii.gz"):
        return _read_nifti(path, axis)
    if path.is_file() and suffix in (".h5", ".hdf5"):
        return _read_hdf5(path)
    return _read_dicom(path)


def _read_nifti(path: Path, axis: int) -> Volume:
    from kdmri.data.readers import nifti_data, open_nifti
    from kdmri.data.sources import as_float32

    image = open_nifti(path)
    shape = tuple(image.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise KdmriError(f"{path}: expected a 3-D volume, found shape {tuple(image.shape)}"
                         + (" (a 4-D file: write one frame to its own file)"
                            if len(shape) == 4 else ""))
    if axis not in (0, 1, 2):
        raise KdmriError(f"--axis must be 0, 1 or 2, found {axis}")
    data = as_float32(nifti_data(path, image).reshape(shape), path, "the image")
    return Volume(np.ascontiguousarray(np.moveaxis(data, axis, 0)), "nifti",
                  image.affine, header=image.header, axis=axis)


def _read_hdf5(path: Path) -> Volume:
    from kdmri.data.readers import _load_fastmri

    _, slices = next(_load_fastmri(path, {"target_key": "auto", "source": "image"}))
    return Volume(np.ascontiguousarray(slices), "hdf5", np.eye(4),
                  note="HDF5 has no geometry: identity affine (1 mm voxels)")


def _read_dicom(path: Path) -> Volume:
    from kdmri.data.dicom import read_dicom_volume
    from kdmri.data.sources import as_float32

    volume, affine, _ = read_dicom_volume(path)
    return Volume(as_float32(volume, path, "the image"), "dicom", np.asarray(affine))


def _check_slices(path: Path, slices: np.ndarray) -> None:
    if slices.ndim != 3 or 0 in slices.shape:
        raise KdmriError(f"{path}: expected at least one slice of at least 1 x 1, found shape "
                         f"{slices.shape}")


@dataclass
class Result:
    output: np.ndarray  # (S, H, W), on the input's scale
    scale: float
    task: str
    volume: Volume
    mask: np.ndarray | None = None  # the mask used, (H, W)
    made_mask: dict | None = None  # the model's settings, where apply made the mask


def made_mask_path(out: str | Path) -> Path:
    """Where apply writes the mask it made for output ``out``: ``NAME_mask.npy`` beside
    ``NAME.nii(.gz)`` (with its ``.json`` sidecar, as ``kdmri mask`` writes)."""
    out = Path(out)
    name = out.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return out.with_name(f"{name}_mask.npy")


def apply_model(model_path: str | Path, input_path: str | Path, mask_path: str | Path | None = None,
                axis: int = 2, device=None, progress: bool = True,
                batch_size: int = APPLY_BATCH, trust_code: bool = False) -> Result:
    """Run the network of ``model_path`` on the volume ``input_path`` (see the module);
    ``trust_code``: the user's consent to build a ``family: python`` network
    (:func:`kdmri.checkpoints.load_model`)."""
    import torch
    from tqdm import tqdm

    from kdmri.batch import forward, make_batch
    from kdmri.checkpoints import check_single_coil, load_model
    from kdmri.data.sources import normalize_volume
    from kdmri.masks import load_mask, mask_from_settings
    from kdmri.models import family_of, is_multicoil_model, place_model
    from kdmri.mri import real_image, undersample, zero_filled

    model_path, input_path = Path(model_path), Path(input_path)
    if not model_path.is_file():
        raise KdmriError(f"{model_path}: model file not found (--model)")
    model, ckpt = load_model(model_path, trust_code=trust_code)
    if is_multicoil_model(model):
        raise KdmriError(f"{model_path}: family {family_of(model)} reconstructs multi-coil "
                         "k-space; kdmri apply reads single-coil images and does not apply it")
    check_single_coil(model_path, ckpt, "kdmri apply")
    task = ckpt["spec"]["task"]  # recon or sr, as the model was trained (any family)
    volume = read_volume(input_path, axis)
    _check_slices(input_path, volume.slices)
    shape = tuple(volume.slices.shape[1:])
    mask, made = None, None
    if mask_path is not None:
        try:
            mask = torch.from_numpy(load_mask(mask_path, shape))
        except KdmriError as exc:
            raise KdmriError(f"{exc} (slices of {input_path})") from None
    elif task == "recon":
        made = ckpt.get("mask")
        if not made:
            raise KdmriError(f"{model_path}: records no mask settings (trained on inputs "
                             "undersampled without a kdmri mask sidecar); a reconstruction "
                             f"network needs --mask, shape {shape} for {input_path}")
        mask = torch.from_numpy(mask_from_settings(made, shape, str(model_path)))
    scale = float(volume.slices.max())
    normalised = normalize_volume(volume.slices, {"kind": "max"}, where=str(input_path))
    device = torch.device(device or "cpu")
    complex_net = bool(getattr(model, "complex", False))
    model = place_model(model, device).eval()
    options = {"complex": True} if complex_net else {}
    outputs = []
    batches = np.array_split(np.arange(len(normalised)), -(-len(normalised) // batch_size))
    bar = tqdm(total=len(normalised), desc=f"apply {input_path.name}", unit="slice",
               disable=not progress, file=sys.stderr)
    with torch.no_grad(), bar:
        for idx in batches:
            images = torch.from_numpy(normalised[idx])
            if mask is not None:
                zf = zero_filled(undersample(images, mask))
                used = mask
            else:  # super-resolution input as it is; DC is not part of VDSR
                zf = images.to(torch.complex64)
                used = torch.ones(shape)
            batch = make_batch(zf, used, None, device, **options)
            out = forward(model, batch).float()
            if complex_net:  # two channels (real, imaginary): write the magnitude
                out = torch.complex(out[:, 0], out[:, 1]).abs()
            else:
                out = real_image(out[:, 0])
            outputs.append(out.cpu().numpy())
            bar.update(len(idx))
    output = np.concatenate(outputs).astype(np.float32) * np.float32(scale)
    return Result(output, scale, task, volume, None if mask is None else mask.numpy(), made)


def write_output(result: Result, out: str | Path) -> Path:
    """Write ``result`` as NIfTI with the input's geometry (atomically), and the mask apply
    made, where it made one, beside it (:func:`made_mask_path`)."""
    import nibabel as nib

    from kdmri.io import atomic_path

    out = Path(out)
    if not out.name.lower().endswith((".nii", ".nii.gz")):
        raise KdmriError(f"{out}: expected a NIfTI output name ending in .nii or .nii.gz (--out)")
    if out.is_dir():
        raise KdmriError(f"{out}: is a folder; expected the file to write (--out)")
    volume = result.volume
    data = np.ascontiguousarray(volume.to_array(result.output), dtype=np.float32)
    if volume.header is not None:
        header = volume.header.copy()
        header.set_data_dtype(np.float32)
        image = nib.Nifti1Image(data, volume.affine, header=header)
        image.header["scl_slope"], image.header["scl_inter"] = 1.0, 0.0
    else:
        image = nib.Nifti1Image(data, volume.affine)
        image.header.set_xyzt_units("mm")
    image.header["descrip"] = f"kdmri apply ({result.task})".encode()[:79]
    suffix = ".nii.gz" if out.name.lower().endswith(".gz") else ".nii"
    with atomic_path(out, suffix=suffix) as tmp:
        nib.save(image, tmp)
    if result.made_mask:
        from kdmri.masks import save_mask

        params = {k: v for k, v in result.made_mask.items() if k not in ("shape", "sampled_fraction")}
        save_mask(result.mask, made_mask_path(out), params)
    return out

"""``kdmri apply``: run a trained network on one volume file and write a NIfTI.

Inputs (by what ``--input`` is)

* a NIfTI file (``.nii``, ``.nii.gz``, 3-D): slices across ``--axis`` (default 2, as the
  nifti reader's ``axis``);
* a fastMRI HDF5 file (``.h5``, ``.hdf5``): the image ``reconstruction_esc`` (else
  ``reconstruction_rss``), slices along its first dim, as the fastmri reader; its k-space
  is not used (for a multi-coil network it is: "Multi-coil k-space" below);
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

A fastMRI multi-coil file holding no image (fastMRI's test and challenge files) is refused
for these networks in one line; one with ``reconstruction_rss`` gives that image, as above.

Multi-coil k-space (a network of a multi-coil family, E2E-VarNet: ``model(kspace, mask)``)

The input must be a fastMRI multi-coil HDF5 file: ``kspace`` of (slices, coils, H, W),
H the readout (frequency-encoding) direction, W the phase-encoding one, whose columns a
mask samples. Anything else (a NIfTI or DICOM image, a single-coil file) is refused in one
line naming the file and the key. The network was trained on coil images brought to the
size ``(h, w)`` of its training mask (``model.pt``'s ``mask`` shape; without one, the
shape of ``--mask``, else 320 x 320, the fastMRI reader's size without ``size``), and apply
brings the file to it as preparation does (:func:`kdmri.data.readers.fastmri_coil_images`:
each slice's k-space through the centred inverse FFT, centre-cropped or zero-padded in image
space; :func:`kdmri.data.prepare.multicoil_volume`: divided by the maximum of the volume's
root-sum-of-squares image). Where the mask comes from decides the rest:

* the file's own ``mask`` (W,) (fastMRI's test and challenge files, whose ``kspace`` is
  already undersampled with it; a mask of another length is refused naming the key): the
  measured k-space is used as it is, never re-sampled, and ``--mask`` is refused. Only the
  readout is fitted to ``h``: a crop (or pad) in image space along H acts on each k-space
  column alone, so the sampled columns stay exactly those of the mask (the unsampled ones
  are zeroed again after the transforms, removing rounding). A crop along W would mix
  sampled and unsampled columns (every column of the cropped grid is a sinc-weighted sum
  of all the file's columns), so W is kept: the network, fully convolutional, runs at
  ``h`` x the file's W with the file's mask, and its RSS output is then centre-cropped (or
  zero-padded) to ``h`` x ``w`` in image space, as fastMRI crops its reconstructions.
  The scale is the maximum of the RSS of the zero-filled coil images (the fully sampled
  ones are not in the file); E2E-VarNet is scale-equivariant (its U-Nets normalise each
  input, its maps are normalised, its data consistency is linear), so the scale changes
  the output by rounding only;
* otherwise the file is fully sampled: its coil images are fitted to ``h`` x ``w`` and
  normalised exactly as preparation does, then undersampled with ``--mask`` (shape
  ``(h, w)``; another shape is refused) or the mask of the model's settings made at that
  size (written beside the output, :func:`made_mask_path`): ``k_c = m * fft2c(coil_c)``,
  what training inputs are (:func:`kdmri.data.prepare.undersample_multicoil_store`).

The network gets the coil k-space and the mask (:func:`kdmri.batch.make_batch` with
``kspace``) in batches, with a progress bar; its RSS image, multiplied by the scale, is
written as for an HDF5 input above (identity affine, ``(columns, rows, slices)``).
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
    """Slices ``(S, H, W)`` float32, and how to write an output of the same shape back (for
    a multi-coil file: the RSS of its coil images as read, fully sampled or zero-filled)."""

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
    from kdmri.data.readers import FASTMRI_KEYS, _load_fastmri, fastmri_layout

    kspace, images = fastmri_layout(path)
    if kspace is not None and len(kspace) == 4 and not images:
        keys = " or ".join(repr(key) for key in FASTMRI_KEYS)
        raise KdmriError(f"{path}: multi-coil k-space (key 'kspace' of shape {kspace}) and no "
                         f"image (key {keys}); a single-coil network reads the image, a "
                         "network of a multi-coil family (varnet) reconstructs the k-space")
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


def _run_network(model, count: int, batch_of, stored, desc: str, progress: bool,
                 batch_size: int) -> np.ndarray:
    """The network on ``count`` slices in batches of ``batch_size`` with a progress bar on
    stderr: ``batch_of(indices)`` gives the :class:`~kdmri.batch.Batch` of those slices,
    ``stored(output)`` the images ``(N, H, W)`` (a tensor) of the network's output."""
    import torch
    from tqdm import tqdm

    from kdmri.batch import forward

    outputs = []
    batches = np.array_split(np.arange(count), -(-count // batch_size))
    bar = tqdm(total=count, desc=desc, unit="slice", disable=not progress, file=sys.stderr)
    with torch.no_grad(), bar:
        for idx in batches:
            outputs.append(stored(forward(model, batch_of(idx)).float()).cpu().numpy())
            bar.update(len(idx))
    return np.concatenate(outputs).astype(np.float32)


def apply_model(model_path: str | Path, input_path: str | Path, mask_path: str | Path | None = None,
                axis: int = 2, device=None, progress: bool = True,
                batch_size: int = APPLY_BATCH, trust_code: bool = False) -> Result:
    """Run the network of ``model_path`` on the volume ``input_path`` (see the module);
    ``trust_code``: the user's consent to build a ``family: python`` network
    (:func:`kdmri.checkpoints.load_model`)."""
    import torch

    from kdmri.batch import make_batch
    from kdmri.checkpoints import check_single_coil, load_model
    from kdmri.data.sources import normalize_volume
    from kdmri.masks import load_mask, mask_from_settings
    from kdmri.models import is_multicoil_model, place_model
    from kdmri.mri import real_image, undersample, zero_filled

    model_path, input_path = Path(model_path), Path(input_path)
    if not model_path.is_file():
        raise KdmriError(f"{model_path}: model file not found (--model)")
    model, ckpt = load_model(model_path, trust_code=trust_code)
    device = torch.device(device or "cpu")
    if is_multicoil_model(model):
        return _apply_multicoil(model, ckpt, model_path, input_path, mask_path, device,
                                progress, batch_size)
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
    complex_net = bool(getattr(model, "complex", False))
    model = place_model(model, device).eval()
    options = {"complex": True} if complex_net else {}

    def batch_of(idx):
        images = torch.from_numpy(normalised[idx])
        if mask is not None:
            return make_batch(zero_filled(undersample(images, mask)), mask, None, device,
                              **options)
        # super-resolution input as it is; DC is not part of VDSR
        return make_batch(images.to(torch.complex64), torch.ones(shape), None, device, **options)

    def stored(out):
        if complex_net:  # two channels (real, imaginary): write the magnitude
            return torch.complex(out[:, 0], out[:, 1]).abs()
        return real_image(out[:, 0])

    output = _run_network(model, len(normalised), batch_of, stored, f"apply {input_path.name}",
                          progress, batch_size) * np.float32(scale)
    return Result(output, scale, task, volume, None if mask is None else mask.numpy(), made)


#: How ``kdmri apply`` scales a volume (prepare's default ``normalization``).
NORMALISATION = {"kind": "max"}


def _trained_shape(ckpt: dict) -> tuple[int, int] | None:
    """The slices' size the network was trained on: the shape of the mask its training
    inputs were undersampled with (model.pt's ``mask``), where recorded."""
    recorded = ckpt.get("mask") or {}
    shape = recorded.get("shape") if isinstance(recorded, dict) else None
    return (int(shape[0]), int(shape[1])) if shape and len(shape) == 2 else None


def _apply_multicoil(model, ckpt: dict, model_path: Path, input_path: Path,
                     mask_path: str | Path | None, device, progress: bool,
                     batch_size: int) -> Result:
    """A multi-coil network (``model(kspace, mask)``) on a fastMRI multi-coil file (see the
    module docstring, "Multi-coil k-space")."""
    import torch

    from kdmri.batch import make_batch
    from kdmri.data.prepare import multicoil_volume
    from kdmri.data.readers import (
        DEFAULT_SIZE,
        fastmri_coil_images,
        fastmri_file_mask,
        fastmri_layout,
    )
    from kdmri.data.sources import fit_size
    from kdmri.masks import load_mask, mask_from_settings
    from kdmri.models import family_of, place_model
    from kdmri.mri import undersample

    name = family_of(model)
    if not input_path.exists():
        raise KdmriError(f"{input_path}: input not found (--input)")
    if not (input_path.is_file() and _suffix(input_path) in (".h5", ".hdf5")):
        raise KdmriError(f"{input_path}: family {name} ({model_path}) reconstructs multi-coil "
                         "k-space; expected a fastMRI multi-coil .h5 file (key 'kspace' of "
                         "(slices, coils, H, W))")
    kspace_shape, _ = fastmri_layout(input_path)
    if kspace_shape is None or len(kspace_shape) != 4:
        found = "no key 'kspace'" if kspace_shape is None else \
            f"key 'kspace' of shape {kspace_shape} (single-coil: slices, H, W)"
        raise KdmriError(f"{input_path}: {found}; family {name} ({model_path}) reconstructs "
                         "multi-coil k-space: expected key 'kspace' of 4 dims (slices, coils, "
                         "H, W)")
    width = kspace_shape[-1]
    own = fastmri_file_mask(input_path, width)
    trained = _trained_shape(ckpt)
    made = None
    if own is not None:  # measured undersampled: its own columns, the readout fitted only
        if mask_path is not None:
            raise KdmriError(f"{input_path}: holds its own sampling mask (key 'mask') and the "
                             f"k-space measured with it; --mask {mask_path} cannot apply (leave "
                             "it out)")
        grid = trained or (DEFAULT_SIZE["fastmri"],) * 2
        read = (grid[0], width)
        mask = np.ascontiguousarray(np.broadcast_to(own, read))
        how = (f"the file's own mask (key 'mask', {int(own.sum())} of {width} columns): "
               f"reconstructed at {read[0]} x {width}, the output cropped to "
               f"{grid[0]} x {grid[1]}")
    elif mask_path is not None:
        mask = load_mask(mask_path)
        if trained is not None and mask.shape != trained:
            raise KdmriError(f"{mask_path}: mask shape {mask.shape}; expected {trained}: the "
                             f"network was trained on slices of {trained} ({model_path}'s "
                             f"mask), the size the coil images of {input_path} are brought to")
        grid = read = tuple(mask.shape)
        how = f"coil images fitted to {grid[0]} x {grid[1]}, mask {mask_path}"
    else:
        made = ckpt.get("mask")
        grid = read = trained or (DEFAULT_SIZE["fastmri"],) * 2
        if not made:
            raise KdmriError(f"{model_path}: records no mask settings; {input_path} is fully "
                             "sampled (no key 'mask'), so the network needs --mask, shape "
                             f"{grid}")
        mask = mask_from_settings(made, grid, str(model_path))
        how = f"coil images fitted to {grid[0]} x {grid[1]}"
    images, coils, scale = multicoil_volume(fastmri_coil_images(input_path, read), NORMALISATION,
                                            where=str(input_path))
    model = place_model(model, device).eval()
    m = torch.from_numpy(mask)

    def batch_of(idx):
        return make_batch(None, m, None, device, kspace=undersample(torch.from_numpy(coils[idx]), m))

    output = _run_network(model, len(coils), batch_of, lambda out: out[:, 0],
                          f"apply {input_path.name}", progress, batch_size)
    output = fit_size(output, grid) * np.float32(scale)
    volume = Volume(images * np.float32(scale), "hdf5", np.eye(4),
                    note=f"{how}; HDF5 has no geometry: identity affine (1 mm voxels)")
    return Result(output, scale, ckpt["spec"]["task"], volume, mask, made)


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

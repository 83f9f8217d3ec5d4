"""HDF5 slice stores.

A store holds per-slice arrays that share their first dim (slices), chunked one slice per
chunk, plus ``volume`` (int32, index into the ``volume_names`` attribute) and ``slice``
(int32, index within its volume). The keys in use:

=============  =============================  ===========================================
key            shape / dtype                  written by
=============  =============================  ===========================================
``target``     (N, H, W) float32/complex64    prepare (data stores), undersample (inputs)
``zf``         (N, H, W) complex64            undersample: zero-filled image ``IFFT(m*k)``;
               (float32 for multi-coil data)  multi-coil: the RSS of the zero-filled coil
                                              images ``IFFT(m*k_c)``
``kspace``     (N, C, H, W) complex64         undersample (multi-coil data): the coils'
                                              k-space under the mask, ``m * FFT(coils)``
``mask``       (H, W) float32, not per slice  undersample
``output``     (N, H, W) float32/complex64    cache-teacher, predict
``attention``  (N, P, H*W) float32            cache-teacher: normalised teacher maps
``coils``      (N, C, H, W) complex64         prepare (multi-coil data): the coil images
``maps``       (N, C, H, W) complex64         prepare (multi-coil data, where asked for):
                                              the coils' sensitivity maps; undersample
                                              keeps them
=============  =============================  ===========================================

``target`` and ``output`` are complex64 in the stores of a complex dataset (fastmri with
``source: kspace``: :func:`is_complex_store`), float32 (magnitude images) otherwise.

The data stores of a multi-coil dataset (fastmri files with ``kspace`` of slices x coils x
H x W, ``source: kspace``, or the demo with ``simulated_coils``: :func:`coil_count`) hold
beside the float32 ``target`` (the root-sum-of-squares of the coil images, fastMRI's
target) the coil images ``coils``
(``target`` = :func:`kdmri.mri.rss` of ``coils`` within float32 rounding; their k-space is
:func:`kdmri.mri.fft2c` of them) and, where the dataset asks for sensitivity maps,
``maps`` (normalised, ``sum_c |S_c|^2 = 1`` inside the object, 0 where ESPIRiT cropped
them), one slice per chunk. Their input stores (:func:`kdmri.data.prepare.undersample_store`)
hold the coil k-space under the mask ``kspace``, the ``mask``, the unchanged ``target``,
as ``zf`` the float32 RSS of the zero-filled coil images (fastMRI's zero-filled baseline)
and the ``maps`` where the data store has them; no fully sampled coil data.

Files are written under a temporary name and renamed when complete
(:func:`kdmri.io.atomic_path`). Reading validates keys, dimensions and finiteness and
raises :class:`~kdmri.errors.KdmriError` naming the file and key.

Every byte of a store is covered by a checksum, so a corrupted file is refused instead of
read as wrong numbers: the file format of HDF5 1.10 (checksummed superblock, object
headers and chunk indices), a Fletcher-32 checksum on every chunk of every dataset, and
strings stored as fixed-length attributes (variable-length strings would live in HDF5's
global heap, which has no checksum). HDF5 crashes the process when the disk fills during a
write (h5py issue #914), so a store checks the free space before it writes.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import h5py
import numpy as np

from kdmri.errors import KdmriError, first_line
from kdmri.io import atomic_path

#: Expected number of dims per known key (``mask`` is not per slice).
KEY_NDIM = {"target": 3, "zf": 3, "output": 3, "attention": 3, "mask": 2, "volume": 1, "slice": 1,
            "coils": 4, "maps": 4, "kspace": 4}
PER_SLICE_EXEMPT = {"mask"}
#: Splits load fully into memory below this size (bytes); larger ones are read per batch.
IN_MEMORY_LIMIT = 4 * 1024**3
#: HDF5 file format of written stores: 1.10 or later (every metadata block checksummed).
LIBVER = "v110"
#: Free space a store needs beyond its array bytes (metadata, chunk index, checksums).
SPACE_MARGIN = 1024**2


@contextlib.contextmanager
def _open(path: Path) -> Iterator[h5py.File]:
    if not path.is_file():
        raise KdmriError(f"{path}: store not found")
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise KdmriError(f"{path}: not a readable HDF5 file ({first_line(exc)})") from None
    try:
        yield handle
    finally:
        handle.close()


def _check_key(path: Path, handle: h5py.File, key: str) -> h5py.Dataset:
    if key not in handle or not isinstance(handle[key], h5py.Dataset):
        raise KdmriError(f"{path}: missing key {key!r} (found {sorted(handle.keys())})")
    ds = handle[key]
    want = KEY_NDIM.get(key)
    if want is not None and ds.ndim != want:
        raise KdmriError(
            f"{path}: key {key!r} must have {want} dims, found shape {tuple(ds.shape)}"
        )
    return ds


def _check_values(path: Path, key: str, array: np.ndarray) -> np.ndarray:
    if array.dtype.kind in "fc" and not np.isfinite(array).all():
        raise KdmriError(f"{path}: key {key!r} contains NaN or infinite values")
    return array


def store_info(path: str | Path) -> dict:
    """Keys with shapes and dtypes, the number of slices and the attributes."""
    path = Path(path)
    try:
        with _open(path) as handle:
            keys = {}
            for key in handle.keys():
                value = handle.get(key)
                if not isinstance(value, h5py.Dataset):
                    raise KdmriError(f"{path}: key {key!r} is not a readable dataset "
                                     f"(found {type(value).__name__}); corrupt store?")
                keys[key] = (tuple(value.shape), str(value.dtype))
            attrs = {k: _plain(v) for k, v in handle.attrs.items()}
            n = handle["volume"].shape[0] if "volume" in handle else None
    except (OSError, RuntimeError, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise KdmriError(f"{path}: corrupt or unreadable HDF5 store ({first_line(exc)})") from None
    return {"keys": keys, "attrs": attrs, "n_slices": n}


def image_shape(path: str | Path, key: str = "target") -> tuple[int, int]:
    """``(H, W)`` of the slices of ``key`` in a store, checking that the key exists and is 3-D."""
    path = Path(path)
    info = store_info(path)
    if key not in info["keys"]:
        raise KdmriError(f"{path}: missing key {key!r} (found {sorted(info['keys'])})")
    shape = info["keys"][key][0]
    if len(shape) != KEY_NDIM[key]:
        raise KdmriError(f"{path}: key {key!r} must have {KEY_NDIM[key]} dims, found shape {shape}")
    return tuple(shape[1:])


def is_complex_store(path: str | Path, key: str = "target") -> bool:
    """Whether ``key`` of a store holds complex images (a dataset prepared from k-space)."""
    path = Path(path)
    info = store_info(path)
    if key not in info["keys"]:
        raise KdmriError(f"{path}: missing key {key!r} (found {sorted(info['keys'])})")
    return np.dtype(info["keys"][key][1]).kind == "c"


def coil_count(path: str | Path) -> int:
    """The number of coils of a store's multi-coil data (the ``coils`` of a data store, the
    ``kspace`` of an input store), 0 for a store without (single-coil and magnitude data)."""
    keys = store_info(path)["keys"]
    for key in ("coils", "kspace"):
        if key in keys:
            return int(keys[key][0][1])
    return 0


def _plain(value):
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_store(path: str | Path, keys: Iterable[str]) -> dict[str, np.ndarray]:
    """Read whole arrays of ``keys`` (validated), plus ``volume_names`` from the attributes."""
    path = Path(path)
    out: dict[str, np.ndarray] = {}
    try:
        with _open(path) as handle:
            for key in keys:
                out[key] = _check_values(path, key, _check_key(path, handle, key)[()])
            out["volume_names"] = np.array(_plain(handle.attrs.get("volume_names", [])))
            _check_lengths(path, out)
    except (OSError, RuntimeError, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise KdmriError(f"{path}: corrupt or unreadable HDF5 store ({first_line(exc)})") from None
    return out


def _check_lengths(path: Path, arrays: dict[str, np.ndarray]) -> None:
    lengths = {
        k: v.shape[0] for k, v in arrays.items() if k not in PER_SLICE_EXEMPT | {"volume_names"}
    }
    if len(set(lengths.values())) > 1:
        raise KdmriError(f"{path}: per-slice keys differ in length: {lengths}")


def ensure_space(path: str | Path, nbytes: int) -> None:
    """Refuse to write ``nbytes`` (plus :data:`SPACE_MARGIN`) where the disk has less free."""
    path = Path(path)
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # the write itself will report what is wrong with the folder
    need = int(nbytes) + SPACE_MARGIN
    if free < need:
        raise KdmriError(
            f"{path}: no space left on the device: the store needs about "
            f"{need / 1024**2:.1f} MB, {free / 1024**2:.1f} MB free (disk full)"
        )


def _chunks(key: str, value: np.ndarray) -> tuple[int, ...] | None:
    """One slice per chunk for per-slice keys; one chunk for the rest (checksums need chunks)."""
    if value.size == 0:
        return None
    if value.ndim >= 2 and key not in PER_SLICE_EXEMPT:
        return (1, *value.shape[1:])
    return value.shape if value.ndim else None


def write_store(path: str | Path, arrays: dict[str, np.ndarray], attrs: dict | None = None) -> None:
    """Write a complete store atomically (arrays as given; per-slice keys chunked by slice)."""
    path = Path(path)
    arrays = {key: np.asarray(value) for key, value in arrays.items()}
    ensure_space(path, sum(value.nbytes for value in arrays.values()))
    with atomic_path(path, suffix=".h5") as tmp, h5py.File(tmp, "w", libver=LIBVER) as handle:
        for key, value in arrays.items():
            chunks = _chunks(key, value)
            handle.create_dataset(key, data=value, chunks=chunks, fletcher32=chunks is not None)
        for key, value in (attrs or {}).items():
            handle.attrs[key] = _attr(value)


@contextlib.contextmanager
def new_store(path: str | Path, n_slices: int, per_slice: dict[str, tuple[tuple[int, ...], str]],
              arrays: dict[str, np.ndarray] | None = None,
              attrs: dict | None = None) -> Iterator[dict[str, h5py.Dataset]]:
    """Write a store whose large per-slice keys are filled piece by piece, so that none is
    ever held whole in memory: ``per_slice`` maps each such key to the shape of one slice
    and its dtype, and the block yields their (empty) HDF5 datasets of ``n_slices`` slices
    for the caller to fill; ``arrays`` are written whole as :func:`write_store` writes them
    (``volume``, ``slice``, ``mask``). Chunked one slice per chunk and checksummed as every
    key; renamed into place when the block ends without error (:func:`kdmri.io.atomic_path`),
    nothing left behind otherwise."""
    path = Path(path)
    arrays = {key: np.asarray(value) for key, value in (arrays or {}).items()}
    nbytes = sum(value.nbytes for value in arrays.values()) + sum(
        n_slices * int(np.prod(shape)) * np.dtype(dtype).itemsize
        for shape, dtype in per_slice.values())
    ensure_space(path, nbytes)
    with atomic_path(path, suffix=".h5") as tmp, h5py.File(tmp, "w", libver=LIBVER) as handle:
        for key, value in arrays.items():
            chunks = _chunks(key, value)
            handle.create_dataset(key, data=value, chunks=chunks, fletcher32=chunks is not None)
        yield {key: handle.create_dataset(key, shape=(n_slices, *shape), dtype=dtype,
                                          chunks=(1, *shape), fletcher32=True)
               for key, (shape, dtype) in per_slice.items()}
        for key, value in (attrs or {}).items():
            handle.attrs[key] = _attr(value)


def derive_per_slice_key(path: str | Path, key: str, source_key: str,
                         transform: Callable[[np.ndarray], np.ndarray], dtype: str) -> None:
    """Add the per-slice ``key`` to an existing store: ``transform`` of each slice of
    ``source_key`` (same shape), one slice at a time so neither key is ever held whole in
    memory; chunked and checksummed as every key. The store is rewritten: its keys and
    attributes copied as they are (HDF5's object copy keeps chunks and checksums) into a new
    file, renamed over the store when complete (:func:`kdmri.io.atomic_path`)."""
    path = Path(path)
    ensure_space(path, 2 * path.stat().st_size)  # the copy, and the new key (as large)
    with (atomic_path(path, suffix=".h5") as tmp, h5py.File(path, "r") as src,
          h5py.File(tmp, "w", libver=LIBVER) as dst):
        source = _check_key(path, src, source_key)
        for name in src:
            src.copy(src[name], dst, name=name)
        for name, value in src.attrs.items():
            dst.attrs[name] = value
        dataset = dst.create_dataset(key, shape=source.shape, dtype=dtype,
                                     chunks=(1, *source.shape[1:]), fletcher32=True)
        for index in range(source.shape[0]):
            value = transform(source[index])
            if np.shape(value) != source.shape[1:]:
                raise KdmriError(f"{path}: key {key!r}: slice {index} of shape {np.shape(value)}, "
                                 f"expected {source.shape[1:]} as key {source_key!r}")
            dataset[index] = value


def _fixed_strings(values: list[str]) -> np.ndarray:
    encoded = [v.encode("utf-8") for v in values]
    length = max(1, *map(len, encoded)) if encoded else 1
    return np.array(encoded, dtype=h5py.string_dtype("utf-8", length))


def _attr(value):
    """Strings and string lists as fixed-length UTF-8 (stored in the checksummed header)."""
    if isinstance(value, (str, np.str_)):
        return _fixed_strings([str(value)])[0]
    if isinstance(value, (list, tuple, np.ndarray)) and len(value) and isinstance(
        np.asarray(value).flat[0], (str, np.str_)
    ):
        return _fixed_strings([str(v) for v in value])
    return value


class StoreWriter:
    """Append volumes to a new store slice-block by slice-block; renamed into place on close.

    ``target`` is float32, or complex64 with ``dtype="complex64"`` (a complex dataset).
    With ``coils`` (a number of coils) the store also holds the coil images of every slice,
    ``coils`` (N, C, H, W) complex64, which :meth:`add_volume` then takes beside the target.

    >>> with StoreWriter(path, (64, 64)) as writer:  # doctest: +SKIP
    ...     writer.add_volume("sub-01", volume)
    """

    def __init__(self, path: str | Path, image_shape: tuple[int, int], attrs: dict | None = None,
                 dtype: str = "float32", coils: int = 0):
        self.path = Path(path)
        self.image_shape = tuple(image_shape)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.complex64):
            raise KdmriError(f"{self.path}: target dtype {self.dtype}; expected float32 or complex64")
        self.coils = int(coils)
        self.attrs = attrs or {}
        self.names: list[str] = []
        self._ctx = atomic_path(self.path, suffix=".h5")

    def __enter__(self) -> StoreWriter:
        ensure_space(self.path, 0)
        tmp = self._ctx.__enter__()
        try:
            self._h5 = h5py.File(tmp, "w", libver=LIBVER)
        except BaseException as exc:
            self._ctx.__exit__(type(exc), exc, exc.__traceback__)
            raise
        h, w = self.image_shape
        self._target = self._h5.create_dataset(
            "target", shape=(0, h, w), maxshape=(None, h, w), dtype=self.dtype, chunks=(1, h, w),
            fletcher32=True,
        )
        self._volume = self._h5.create_dataset("volume", shape=(0,), maxshape=(None,),
                                               dtype="int32", chunks=(1024,), fletcher32=True)
        self._slice = self._h5.create_dataset("slice", shape=(0,), maxshape=(None,),
                                              dtype="int32", chunks=(1024,), fletcher32=True)
        self._coils = None
        if self.coils:
            self._coils = self._h5.create_dataset(
                "coils", shape=(0, self.coils, h, w), maxshape=(None, self.coils, h, w),
                dtype="complex64", chunks=(1, self.coils, h, w), fletcher32=True,
            )
        return self

    def add_volume(self, name: str, volume: np.ndarray, coils: np.ndarray | None = None) -> None:
        """Append one volume's slices ``(S, H, W)``, with its coil images ``(S, C, H, W)``
        in a store made with ``coils``."""
        if np.iscomplexobj(volume) and self.dtype.kind != "c":
            raise KdmriError(f"volume {name!r}: complex images, but the store holds real ones")
        volume = np.asarray(volume, dtype=self.dtype)
        if volume.ndim != 3 or tuple(volume.shape[1:]) != self.image_shape:
            raise KdmriError(
                f"volume {name!r}: expected slices of {self.image_shape}, found {volume.shape}"
            )
        if (coils is None) != (self._coils is None):
            held = f"coil images of {self.coils} coils" if self.coils else "no coil images"
            raise KdmriError(f"volume {name!r}: the store holds {held}, "
                             f"found {'none' if coils is None else 'coil images'}")
        extra = 0
        if coils is not None:
            coils = np.asarray(coils, dtype=np.complex64)
            want = (volume.shape[0], self.coils, *self.image_shape)
            if coils.shape != want:
                raise KdmriError(f"volume {name!r}: expected coil images of {want}, found {coils.shape}")
            extra = coils.nbytes
        ensure_space(self.path, 2 * (volume.nbytes + extra))  # plus what is not flushed yet
        n0, n = self._target.shape[0], volume.shape[0]
        for ds in (self._target, self._volume, self._slice):
            ds.resize(n0 + n, axis=0)
        self._target[n0:] = volume
        self._volume[n0:] = len(self.names)
        self._slice[n0:] = np.arange(n, dtype=np.int32)
        if coils is not None:
            self._coils.resize(n0 + n, axis=0)
            self._coils[n0:] = coils
        self.names.append(name)

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self._h5.attrs["volume_names"] = _attr(self.names)
                for key, value in self.attrs.items():
                    self._h5.attrs[key] = _attr(value)
        finally:
            self._h5.close()
        return self._ctx.__exit__(exc_type, exc, tb)


class SliceDataset:
    """Slices of one store as a map-style dataset that never reopens the file per item.

    The listed per-slice ``keys`` are loaded into memory once when they fit under
    ``IN_MEMORY_LIMIT`` (the usual case); otherwise one file handle is kept open and
    batches are read as chunks. :meth:`batch` returns a dict of stacked tensors.
    ``extra`` holds non-per-slice arrays (e.g. ``mask``) loaded once.
    """

    def __init__(self, path: str | Path, keys: Iterable[str], extra: Iterable[str] = (),
                 in_memory: bool | None = None):
        self.path = Path(path)
        self.keys = list(keys)
        info = store_info(self.path)
        for key in [*self.keys, *extra]:
            if key not in info["keys"]:
                raise KdmriError(f"{self.path}: missing key {key!r} (found {sorted(info['keys'])})")
            shape, want = info["keys"][key][0], KEY_NDIM.get(key)
            if want is not None and len(shape) != want:  # also checked when read per batch
                raise KdmriError(
                    f"{self.path}: key {key!r} must have {want} dims, found shape {shape}"
                )
        nbytes = sum(
            int(np.prod(info["keys"][k][0])) * np.dtype(info["keys"][k][1]).itemsize
            for k in self.keys
        )
        self.in_memory = nbytes <= IN_MEMORY_LIMIT if in_memory is None else in_memory
        arrays = read_store(self.path, [*extra, "volume", "slice", *(self.keys if self.in_memory else [])])
        self.volume = arrays["volume"]
        self.slice = arrays["slice"]
        self.volume_names = arrays["volume_names"]
        torch = self._torch()
        self.extra = {k: torch.from_numpy(arrays[k]) for k in extra}
        self._tensors = {k: torch.from_numpy(arrays[k]) for k in self.keys} if self.in_memory else {}
        self._handle: h5py.File | None = None

    @staticmethod
    def _torch():
        import torch  # imported here so that readers of stores start without torch

        return torch

    def __len__(self) -> int:
        return int(self.volume.shape[0])

    def __getitem__(self, index: int) -> dict:
        return {k: v[0] for k, v in self.batch([index]).items()}

    def batch(self, indices) -> dict:
        torch = self._torch()
        if self.in_memory:
            idx = torch.as_tensor(indices, dtype=torch.long)
            return {k: v[idx] for k, v in self._tensors.items()}
        order = np.argsort(indices)
        sorted_idx = np.asarray(indices)[order]
        if self._handle is None:
            try:
                self._handle = h5py.File(self.path, "r")
            except OSError as exc:
                raise KdmriError(
                    f"{self.path}: not a readable HDF5 file ({first_line(exc)})"
                ) from None
        inverse = np.empty_like(order)
        inverse[order] = np.arange(order.size)
        out = {}
        for key in self.keys:
            try:
                data = self._handle[key][sorted_idx.tolist()]
            except (OSError, RuntimeError, ValueError, KeyError, TypeError) as exc:
                raise KdmriError(
                    f"{self.path}: corrupt or unreadable HDF5 store ({first_line(exc)})"
                ) from None
            out[key] = torch.from_numpy(_check_values(self.path, key, data)[inverse])
        return out

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_handle"] = None
        return state

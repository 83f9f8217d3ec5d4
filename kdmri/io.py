"""Atomic file output and safe torch serialisation.

Every file kdmri writes goes through :func:`atomic_path`: it is written under a temporary
name in the destination folder and renamed over the destination only when complete, so a
killed process never leaves a truncated file that a later stage would accept.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import pickle
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kdmri.errors import KdmriError


def _describe_os_error(exc: OSError, path: Path) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{path}: no space left on the device while writing (disk full)"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{path}: cannot write here (permission denied or read-only file system)"
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return f"{path}: cannot write: expected a folder above it, found a file ({exc.filename})"
    text = str(exc.strerror or exc).strip()
    return f"{path}: cannot write: {text.splitlines()[0] if text else type(exc).__name__}"


def _file_mode() -> int:
    """Permissions a plain ``open(path, "w")`` would give (``mkstemp`` gives 0600)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def ensure_dir(path: str | os.PathLike) -> Path:
    """Create the folder ``path`` (and its parents), or raise a :class:`KdmriError`."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KdmriError(_describe_os_error(exc, path)) from None
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left untouched.
    Disk-full and permission errors become a :class:`KdmriError` naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent
        )
        os.fchmod(fd, _file_mode())
        os.close(fd)
    except OSError as exc:
        raise KdmriError(_describe_os_error(exc, path)) from None
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise KdmriError(_describe_os_error(exc, path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_bytes(path: str | os.PathLike, data: bytes | memoryview) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def save_torch(obj: dict, path: str | os.PathLike) -> None:
    """Save plain data (dicts, lists, numbers, strings, tensors) atomically.

    The file is serialised in memory and written by Python, so a full disk is reported as
    such (torch's own file writer reports it as an opaque ``RuntimeError``).
    """
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer.getbuffer())


def load_torch(path: str | os.PathLike) -> dict:
    """Load a kdmri torch file with ``weights_only=True``: never runs pickled code.

    A file that is missing, truncated, not a torch file, or that carries anything but
    plain data (for example a pickled object that would execute code) is refused with a
    :class:`KdmriError`.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise KdmriError(f"{path}: checkpoint not found")
    _check_archive(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message starts with advice to load unsafely; keep only what was refused
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        what = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line),
                    "content other than tensors and plain data")
        raise KdmriError(
            f"{path}: refused to load: not a plain-data kdmri checkpoint, it could run code "
            f"({what})"
        ) from None
    except Exception as exc:  # an untrusted file: any failure to parse it is the file's fault
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise KdmriError(f"{path}: not a readable torch checkpoint ({first})") from None
    if not isinstance(obj, dict):
        raise KdmriError(f"{path}: expected a checkpoint dict, found {type(obj).__name__}")
    return obj


def _check_archive(path: Path) -> None:
    """Verify the CRC-32 of every record of a torch zip archive (torch does not on load).

    A truncated or corrupted checkpoint is refused here instead of loading wrong numbers.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except Exception as exc:  # zipfile raises many types on a damaged archive
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        raise KdmriError(f"{path}: not a readable torch checkpoint ({first})") from None
    if bad is not None:
        raise KdmriError(f"{path}: corrupt checkpoint: checksum of record {bad!r} does not match")


def parse_named(items, option: str) -> dict[str, Path]:
    """``["a=PATH", ...]`` -> ``{"a": Path}``; names must be unique and files exist."""
    named: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise KdmriError(f"{option}: expected NAME=PATH, found {item!r}")
        if name in named:
            raise KdmriError(f"{option}: name {name!r} given twice")
        if not Path(path).is_file():
            raise KdmriError(f"{path}: file not found (given as {option} {name}=...)")
        named[name] = Path(path)
    return named

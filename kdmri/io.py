"""Atomic file output and safe torch serialisation.

Every file kdmri writes goes through :func:`atomic_path`: it is written under a temporary
name in the destination folder and renamed over the destination only when complete, so a
killed process never leaves a truncated file that a later stage would accept.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from kdmri.errors import KdmriError


def _describe_os_error(exc: OSError, path: Path) -> str:
    if exc.errno == errno.ENOSPC:
        return f"{path}: no space left on the device while writing (disk full)"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{path}: cannot write here (permission denied or read-only file system)"
    return f"{path}: cannot write: {exc.strerror or exc}"


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


def save_torch(obj: dict, path: str | os.PathLike) -> None:
    """Save plain data (dicts, lists, numbers, strings, tensors) atomically."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_torch(path: str | os.PathLike) -> dict:
    """Load a kdmri torch file with ``weights_only=True``: never runs pickled code.

    A file that is missing, truncated, not a torch file, or that carries anything but
    plain data (for example a pickled object that would execute code) is refused with a
    :class:`KdmriError`.
    """
    path = Path(path)
    if not path.is_file():
        raise KdmriError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe content"
        raise KdmriError(
            f"{path}: refused to load: not a plain-data kdmri checkpoint ({first})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise KdmriError(f"{path}: not a readable torch checkpoint ({first})") from None
    if not isinstance(obj, dict):
        raise KdmriError(f"{path}: expected a checkpoint dict, found {type(obj).__name__}")
    return obj

"""Provenance record of a pipeline run: versions, git state, devices and config digest.

``kdmri provenance --config-json CONFIG --models name=model.pt ... --out provenance.json``
writes one JSON object:

=====================  ==================================================================
key                    value
=====================  ==================================================================
``kdmri_version``      ``kdmri.__version__``
``git_commit``         ``git rev-parse HEAD`` of the working directory, or null
``git_dirty``          tracked files differ from HEAD (untracked files are ignored), or
                       null without a commit
``python``             Python version
``torch``              torch version
``snakemake``          snakemake version (from the installed metadata), or null
``platform``           ``platform.platform()``
``models``             per name: ``path``, ``device`` it was trained on, ``epoch`` (best)
                       and ``params`` as stored in the model file; for a ``family:
                       python`` network also ``source``: its ``target``, the ``file``
                       defining the class and that file's ``sha256`` when trained
``config_digest``      :func:`kdmri.keys.digest` of the config: sha256 of its sorted
                       JSON, first 16 hex digits (the digest used for specs elsewhere)
``created_utc``        ISO 8601 UTC time of this record
=====================  ==================================================================
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from kdmri.errors import KdmriError
from kdmri.io import parse_named, write_json

#: Config keys the record leaves out (:func:`recorded_config`).
UNRECORDED_KEYS = ("logging",)
#: Keys added after studies were recorded, left out where they hold their default (no
#: sweep, no evaluation-only dataset), so that such a study's record and digest stay the
#: ones it had: dotted paths, ``*`` for every entry of a mapping.
NEW_KEYS = {"sweeps": {}, "tasks.*.evaluate_on": []}


def recorded_config(config: dict) -> dict:
    """The config as the workflow gives it to this record: without ``logging``, which only
    says whether the trainings also write TensorBoard runs (no job's command reads it:
    the environment carries it, :mod:`kdmri.tracking`, so switching it re-runs nothing,
    this record included), and without the :data:`NEW_KEYS` that hold their defaults."""
    recorded = {key: value for key, value in config.items() if key not in UNRECORDED_KEYS}
    for path, default in NEW_KEYS.items():
        _drop_default(recorded, path.split("."), default)
    return recorded


def _drop_default(node: dict, parts: list[str], default) -> None:
    """Remove the key at ``parts`` (``*``: each entry) of ``node`` where it equals
    ``default``, copying the mappings on the way (the config itself is left alone)."""
    head, rest = parts[0], parts[1:]
    keys = list(node) if head == "*" else [head] if head in node else []
    for key in keys:
        if not rest:
            if node[key] == default:
                del node[key]
        elif isinstance(node[key], dict):
            node[key] = dict(node[key])
            _drop_default(node[key], rest, default)


def read_config(text: str) -> dict:
    """The config from a JSON file path, ``@file``, or inline JSON text."""
    path = Path(text[1:] if text.startswith("@") else text)
    if text.startswith("@") or not text.lstrip().startswith("{"):
        if not path.is_file():
            raise KdmriError(f"{path}: config JSON file not found")
        source, text = str(path), path.read_text()
    else:
        source = "--config-json"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KdmriError(f"{source}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise KdmriError(f"{source}: expected a JSON object, found {type(value).__name__}")
    return value


def _git(args: Sequence[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                              timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(cwd: str | Path = ".") -> dict:
    """``{"git_commit": sha or None, "git_dirty": bool or None}`` of ``cwd``."""
    cwd = Path(cwd)
    commit = _git(["rev-parse", "HEAD"], cwd)
    if not commit:
        return {"git_commit": None, "git_dirty": None}
    status = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def model_info(path: str | Path) -> dict:
    """Where a ``model.pt`` was trained, its best epoch and parameter count."""
    from kdmri.io import load_torch

    ckpt = load_torch(path)
    info = {
        "path": str(path),
        "device": ckpt.get("device"),
        "epoch": ckpt.get("epoch"),
        "params": ckpt.get("params"),
    }
    if ckpt.get("source"):  # a family: python network (kdmri.models.python_family)
        info["source"] = ckpt["source"]
    return info


def collect_provenance(config: dict, models: dict[str, str | Path], cwd: str | Path = ".") -> dict:
    """The provenance record (see the module docstring for its keys)."""
    import torch

    from kdmri import __version__
    from kdmri.keys import digest

    return {
        "kdmri_version": __version__,
        **git_state(cwd),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "snakemake": _package_version("snakemake"),
        "platform": platform.platform(),
        "models": {name: model_info(path) for name, path in models.items()},
        "config_digest": digest(config),
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def parse_models(items: Sequence[str]) -> dict[str, Path]:
    """``["name=PATH", ...]`` -> ``{name: Path}`` (unique names, existing files)."""
    return parse_named(items, "--models")


def cmd_provenance(args) -> int:
    record = collect_provenance(read_config(args.config_json), parse_models(args.models or []))
    write_json(args.out, record)
    commit = record["git_commit"] or "no git commit"
    print(f"provenance: kdmri {record['kdmri_version']}, {commit}, "
          f"{len(record['models'])} models -> {args.out}", file=sys.stderr)
    return 0

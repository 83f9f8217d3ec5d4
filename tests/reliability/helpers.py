"""Shared helpers of the reliability suite: run the real CLI, check a user error, tiny specs."""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from kdmri.checkpoints import MODEL_FORMAT
from kdmri.config import validate
from kdmri.data.store import read_store, write_store
from kdmri.io import save_torch
from kdmri.models import build_model
from kdmri.specs import model_spec

ROOT = Path(__file__).resolve().parents[2]
TEACHER_NET = {"family": "dccnn", "cascades": 2, "convs": 4, "channels": 4}
STUDENT_NET = {"family": "dccnn", "cascades": 2, "convs": 3, "channels": 4}
PAIRS = [[3, 2]]

#: Subprocesses stay on one thread: the machine is shared.
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
#: Parallel subprocesses when a test module runs many (each is mostly torch's import time).
WORKERS = 2


def study(stages: dict | None = None, **train) -> dict:
    """A validated tiny study: recon task, tiny DC-CNNs, 3 epochs unless ``train`` says else,
    and the per-stage settings ``stages`` if given."""
    config = {
        "datasets": {"tiny": {"format": "demo"}},
        "tasks": {"recon": {"datasets": ["tiny"], "teacher": TEACHER_NET,
                            "student": STUDENT_NET, "pairs": PAIRS}},
        "train": {"epochs": 3, "batch_size": 4, **train},
    }
    if stages:
        config["stages"] = stages
    return validate(config)


def spec(model: str = "student", seed: int = 0, **train) -> dict:
    return model_spec(study(**train), "recon", model, seed)


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "kdmri", *map(str, args)]


def run_cli(*args: str, env: dict | None = None, timeout: float = 300,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m kdmri ARGS`` and capture its output."""
    return subprocess.run(cli_command(*args), capture_output=True, text=True, timeout=timeout,
                          env=env or ENV, cwd=cwd or ROOT)


class _Runner:
    """One ``cli_runner.py --serve`` process for the whole test session (imports paid once)."""

    process: subprocess.Popen | None = None
    lock = threading.Lock()

    @classmethod
    def run(cls, batch: dict, timeout: float) -> dict[str, int]:
        with cls.lock:
            if cls.process is None or cls.process.poll() is not None:
                cls.process = subprocess.Popen(
                    [sys.executable, str(Path(__file__).with_name("cli_runner.py")), "--serve"],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)
                atexit.register(cls.close)
            cls.process.stdin.write(json.dumps(batch) + "\n")
            cls.process.stdin.flush()
            timer = threading.Timer(timeout, cls.process.kill)
            timer.start()
            try:
                line = cls.process.stdout.readline()
            finally:
                timer.cancel()
            assert line, f"the CLI runner died (exit status {cls.process.poll()})"
            return json.loads(line)

    @classmethod
    def close(cls) -> None:
        if cls.process is not None and cls.process.poll() is None:
            cls.process.stdin.close()
            cls.process.wait(timeout=60)


def run_many(commands: dict[str, Sequence], workdir: Path, timeout: float = 300,
             setup: dict[str, str] | None = None, parallel: bool = False) -> dict:
    """Run many CLI calls in order (or all at once), each in its own process forked by
    ``cli_runner.py`` (which imports kdmri once per test session); ``{name:
    CompletedProcess}`` with the exit status, stdout and stderr. ``setup[name]`` is Python
    code that call's process runs first."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    jobs = [{"name": name, "argv": [str(a) for a in argv], "setup": (setup or {}).get(name),
             "stdout": str(workdir / f"{name}.out"), "stderr": str(workdir / f"{name}.err")}
            for name, argv in commands.items()]
    statuses = _Runner.run({"jobs": jobs, "parallel": parallel}, timeout)
    return {
        job["name"]: subprocess.CompletedProcess(
            cli_command(*job["argv"]), statuses[job["name"]],
            Path(job["stdout"]).read_text(), Path(job["stderr"]).read_text())
        for job in jobs
    }


def run_parallel(commands: dict[str, Sequence], timeout: float = 300) -> dict:
    """Run ``python -m kdmri ARGS`` for each entry, ``WORKERS`` at a time."""
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        futures = {name: pool.submit(run_cli, *args, timeout=timeout)
                   for name, args in commands.items()}
        return {name: future.result() for name, future in futures.items()}


def assert_user_error(result: subprocess.CompletedProcess, *names: str) -> str:
    """Exit status 2, no traceback, and stderr exactly one line ``kdmri: error: ...`` that
    contains every one of ``names`` (the file, the key, what was expected or found)."""
    stderr = result.stderr
    assert "Traceback" not in stderr, stderr
    assert result.returncode == 2, (result.returncode, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    line = lines[0]
    assert line.startswith("kdmri: error: "), line
    for name in names:
        assert str(name) in line, f"{name!r} not in {line!r}"
    return line


def files_under(path: Path) -> list[str]:
    """Every file below ``path`` (hidden temporary files included), relative, sorted."""
    path = Path(path)
    if not path.exists():
        return []
    if path.is_file():
        return [path.name]
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def write_model_file(path: Path, net: dict, seed: int = 0, **extra) -> Path:
    """A valid ``model.pt`` of network ``net`` (random weights), as the trainer writes it."""
    torch.manual_seed(seed)
    model = build_model(net)
    save_torch({"format": MODEL_FORMAT, "net": net, "state_dict": model.state_dict(),
                "epoch": 1, "device": "cpu", **extra}, path)
    return path


def copy_store(source: Path, dest: Path, **changes) -> Path:
    """Rewrite a store with some arrays replaced (``key=array``) or dropped (``key=None``)."""
    keys = [k for k in ("target", "zf", "mask", "output", "volume", "slice")
            if k in _keys(source)]
    arrays = read_store(source, keys)
    names = arrays.pop("volume_names").tolist()
    for key, value in changes.items():
        if value is None:
            arrays.pop(key, None)
        else:
            arrays[key] = value
    write_store(dest, arrays, attrs={"volume_names": names})
    return dest


def _keys(path: Path) -> list[str]:
    import h5py

    with h5py.File(path, "r") as handle:
        return list(handle.keys())


def truncate(path: Path, fraction: float) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(int(path.stat().st_size * fraction))


def state_dicts_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def finite_state(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def write_prepared_stores(folder: Path, volumes: dict[str, list[int]], shape,
                          seed: int = 0) -> None:
    """What ``kdmri prepare`` writes (split stores and info.json), from smooth random images,
    so a workflow test can start after the (slow) preparation of the demo data."""
    from scipy.ndimage import gaussian_filter

    from kdmri.data.store import StoreWriter
    from kdmri.io import write_json

    rng = np.random.default_rng(seed)
    for split, sizes in volumes.items():
        with StoreWriter(Path(folder) / f"{split}.h5", shape, attrs={"dataset": "demo"}) as w:
            for i, n in enumerate(sizes):
                image = gaussian_filter(rng.standard_normal((n, *shape)), sigma=(0, 2, 2))
                image -= image.min(axis=(1, 2), keepdims=True)
                image /= image.max(axis=(1, 2), keepdims=True)
                w.add_volume(f"{split}-{i:02d}", image.astype(np.float32))
    write_json(Path(folder) / "info.json", {"dataset": "demo", "written_by": "the tests"})

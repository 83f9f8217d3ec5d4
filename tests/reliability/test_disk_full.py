"""An output disk that is full: one clear line naming the file, exit status 2, no output.

The disk is made full three ways: the operating system's ``ENOSPC`` injected into the one
place every writer passes through (:func:`kdmri.io.atomic_path` syncs the finished file
before renaming it), a free-space figure too small for an HDF5 store (HDF5 crashes the
process on a full disk, h5py issue #914, so stores check the space first), and, where the
test may mount one, a real tmpfs of a few kilobytes that is filled up.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import kdmri.data.store
from kdmri.cli import main
from kdmri.data.store import read_store, write_store
from tests.reliability.helpers import files_under, run_many, spec


def _inject_enospc(monkeypatch, under: Path) -> list[str]:
    """``os.fsync`` of any file below ``under`` fails as on a full disk."""
    original = os.fsync
    hits: list[str] = []

    def fsync(fd):
        target = os.readlink(f"/proc/self/fd/{fd}")
        if target.startswith(str(under)):
            hits.append(target)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return hits


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("kdmri: error: ")]
    assert len(errors) == 1, err
    assert err.strip().splitlines()[-1] == errors[0], err
    return errors[0]


@pytest.fixture(scope="module")
def predictions(stores, tmp_path_factory):
    path = tmp_path_factory.mktemp("pred") / "pred.h5"
    test = read_store(stores.inputs_dir / "test.h5", ["target", "volume", "slice"])
    write_store(path, {"output": test["target"] * 0.9, "volume": test["volume"],
                       "slice": test["slice"]})
    return path


def _commands(stores, predictions, mask_file, out: Path) -> dict[str, tuple[list, Path]]:
    """name -> (CLI arguments, the output they would write)."""
    data, inputs = stores.data_dir, stores.inputs_dir
    return {
        "mask_npy": (["mask", "--spec", '{"kind": "random", "acceleration": 4}', "--like",
                      data / "train.h5", "--out", out / "mask.npy"], out / "mask.npy"),
        "store_h5": (["undersample", "--data-dir", data, "--mask", mask_file,
                      "--out-dir", out / "inputs"], out / "inputs" / "train.h5"),
        "metrics_csv": (["evaluate", "--inputs", inputs / "test.h5", "--predictions",
                         predictions, "--out", out / "metrics.csv"], out / "metrics.csv"),
        "figure_png": (["figures", "--kind", "mask", "--mask", mask_file, "--out",
                        out / "mask.png"], out / "mask.png"),
    }


@pytest.mark.parametrize("writer", ["mask_npy", "store_h5", "metrics_csv", "figure_png"])
def test_enospc_while_writing(writer, stores, predictions, tmp_path, monkeypatch, capsys):
    mask_file = tmp_path / "mask.npy"
    np.save(mask_file, stores.mask)
    out = tmp_path / "out"
    args, output = _commands(stores, predictions, mask_file, out)[writer]
    hits = _inject_enospc(monkeypatch, out)
    assert main([str(a) for a in args]) == 2
    line = _error_line(capsys)
    assert hits, "the injected fault was never reached"
    assert str(output) in line and "no space left on the device" in line, line
    assert files_under(out) == []


def test_enospc_while_saving_a_checkpoint(stores, tmp_path, monkeypatch, capsys):
    """Training stops at its first checkpoint with the disk-full line; nothing is left."""
    import json

    out = tmp_path / "student"
    hits = _inject_enospc(monkeypatch, out)
    code = main(["train", "--spec", json.dumps(spec()), "--inputs-dir", str(stores.inputs_dir),
                 "--out-dir", str(out), "--device", "cpu", "--threads", "1"])
    assert code == 2
    line = _error_line(capsys)
    assert hits and "checkpoint/last.pt" in line and "no space left" in line, line
    assert files_under(out) == []


def test_store_refused_when_free_space_is_too_small(stores, tmp_path, monkeypatch, capsys):
    """HDF5 would crash on a full disk: a store checks the free space before it writes."""
    mask_file = tmp_path / "mask.npy"
    np.save(mask_file, stores.mask)
    out = tmp_path / "inputs"
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(kdmri.data.store.shutil, "disk_usage",
                        lambda path: usage._replace(free=64 * 1024))
    assert main(["undersample", "--data-dir", str(stores.data_dir), "--mask", str(mask_file),
                 "--out-dir", str(out)]) == 2
    line = _error_line(capsys)
    assert str(out / "train.h5") in line and "0.1 MB free" in line and "disk full" in line, line
    assert files_under(out) == []


# ---------------------------------------------------------------------- a real full disk
@pytest.fixture
def full_tmpfs(tmp_path):
    """A 64 KiB tmpfs filled to the last byte; skipped where mounting is not allowed."""
    mount = tmp_path / "full"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        with open(mount / "filler", "wb", buffering=0) as handle:
            try:
                while True:
                    handle.write(b"\0" * 512)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_real_full_disk(full_tmpfs, stores, predictions, tmp_path):
    mask_file = tmp_path / "mask.npy"
    np.save(mask_file, stores.mask)
    commands = _commands(stores, predictions, mask_file, full_tmpfs / "out")
    results = run_many({name: args for name, (args, _) in commands.items()}, tmp_path / "runs")
    for name, (_, output) in commands.items():
        result = results[name]
        assert "Traceback" not in result.stderr and result.returncode == 2, (name, result.stderr)
        line = result.stderr.strip()
        assert "\n" not in line and line.startswith("kdmri: error: "), (name, line)
        assert str(output) in line and "no space left on the device" in line, (name, line)
    assert files_under(full_tmpfs) == ["filler"]


def test_a_later_stage_refuses_what_a_full_disk_left(full_tmpfs, stores, tmp_path):
    """Nothing half-written is ever at the output's name: a later stage finds no file."""
    from kdmri.errors import KdmriError

    data = {"target": np.zeros((4, 64, 64), np.float32)}
    with pytest.raises(KdmriError, match="no space left"):
        write_store(full_tmpfs / "x.h5", data)
    with pytest.raises(KdmriError, match="store not found"):
        read_store(full_tmpfs / "x.h5", ["target"])
    frame = pd.DataFrame({"a": np.arange(10_000)})
    from kdmri.evaluate import write_csv

    with pytest.raises(KdmriError, match="no space left"):
        write_csv(frame, full_tmpfs / "metrics.csv")
    assert files_under(full_tmpfs) == ["filler"]

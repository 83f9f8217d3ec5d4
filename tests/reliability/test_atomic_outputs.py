"""Atomic outputs: every file kdmri writes is written under a temporary name and renamed
when complete, so a process killed while writing never leaves, under an output's name, a
truncated file that a later stage would accept.

Two kinds of evidence: a static check of the package (every call that writes a file writes
to a name given by :func:`kdmri.io.atomic_path` or to memory), and real processes killed
with SIGKILL in the middle of writing each kind of output (HDF5 store, checkpoint, mask,
CSV, figure), after which the output's name holds nothing (or its previous complete
version) and the next stage refuses it or resumes from the last complete one.
"""

from __future__ import annotations

import ast
import json
import os
import stat

import numpy as np
import pytest

from kdmri.data.store import read_store, write_store
from kdmri.io import load_torch, save_torch, write_json
from tests.reliability.helpers import ROOT, assert_user_error, run_many, spec

PACKAGE = ROOT / "kdmri"

#: Writers that are not outputs, with the reason.
NOT_OUTPUTS = {
    ("kdmri/device.py", "claim_gpu_slot"): "the GPU slot's lock file (a lock, not an output)",
    # the store writer opens h5py on the temporary name that atomic_path gave in __init__
    ("kdmri/data/store.py", "__enter__"): "StoreWriter: h5py.File on self._ctx's temp name",
}
WRITE_MODES = set("wax+")


def _writer_target(node: ast.Call) -> ast.AST | None | bool:
    """The expression a call writes to; None if the call does not write a file."""
    func = ast.unparse(node.func)
    args = node.args
    mode = None
    for keyword in node.keywords:
        if keyword.arg == "mode":
            mode = keyword.value
    if func in ("open", "io.open", "os.open", "gzip.open", "bz2.open"):
        mode = mode or (args[1] if len(args) > 1 else None)
        if func == "os.open":
            return args[0]  # flags are not literal: always treated as a write
        if isinstance(mode, ast.Constant) and not set(str(mode.value)) & WRITE_MODES:
            return None
        return args[0] if args and mode is not None else None
    if func.endswith("h5py.File") or func == "File":
        mode = mode or (args[1] if len(args) > 1 else None)
        if isinstance(mode, ast.Constant) and mode.value == "r":
            return None
        return args[0]
    if func in ("np.save", "np.savez", "np.savez_compressed", "np.savetxt", "numpy.save"):
        return args[0]
    if func == "torch.save":
        return args[1]
    if func.endswith((".to_csv", ".savefig", ".to_parquet", ".to_json", ".to_hdf")):
        return args[0] if args else None
    if func.endswith((".write_text", ".write_bytes")):
        return node.func.value
    if func in ("shutil.copy", "shutil.copyfile", "shutil.copy2", "shutil.copytree",
                "shutil.move", "json.dump", "yaml.dump", "pickle.dump"):
        return True  # copies and dumps write in place (os.replace of a complete file is fine)
    return None


def _bound_names(function: ast.AST) -> tuple[set[str], set[str]]:
    """Names bound by ``with atomic_path(...) as NAME`` and names of in-memory buffers."""
    atomic, memory = set(), set()
    for node in ast.walk(function):
        if isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                call = item.context_expr
                if (isinstance(call, ast.Call) and ast.unparse(call.func).endswith("atomic_path")
                        and isinstance(item.optional_vars, ast.Name)):
                    atomic.add(item.optional_vars.id)
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            if ast.unparse(node.value.func) in ("io.BytesIO", "BytesIO", "io.StringIO"):
                memory |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return atomic, memory


def _functions(tree: ast.Module):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_every_writer_in_the_package_writes_through_atomic_path():
    problems, seen = [], 0
    for file in sorted(PACKAGE.rglob("*.py")):
        rel = str(file.relative_to(ROOT))
        tree = ast.parse(file.read_text(), filename=rel)
        in_function = set()
        for function in _functions(tree):
            atomic, memory = _bound_names(function)
            for node in ast.walk(function):
                if not isinstance(node, ast.Call):
                    continue
                in_function.add(id(node))
                target = _writer_target(node)
                if target is None:
                    continue
                seen += 1
                where = f"{rel}:{node.lineno} ({function.name}): {ast.unparse(node)[:80]}"
                if (rel, function.name) in NOT_OUTPUTS:
                    continue
                if rel == "kdmri/io.py" and function.name == "atomic_path":
                    continue  # the one place that renames into place
                if target is not True and ast.unparse(target) == "os.devnull":
                    continue
                if target is True:
                    problems.append(f"{where}: copies or dumps into a file in place")
                elif not (isinstance(target, ast.Name) and target.id in atomic | memory):
                    problems.append(f"{where}: does not write to an atomic_path name")
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and id(node) not in in_function:
                if _writer_target(node) is not None:
                    problems.append(f"{rel}:{node.lineno}: writes a file at import time")
    assert problems == [], "\n".join(problems)
    assert seen >= 10  # the check did find the package's writers


def test_atomic_files_get_the_usual_permissions(tmp_path):
    """A temporary file is private (0600); the finished output gets what open() would give."""
    umask = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"a": 1})
        write_store(tmp_path / "a.h5", {"target": np.zeros((1, 4, 4), np.float32)})
        save_torch({"a": 1}, tmp_path / "a.pt")
    finally:
        os.umask(umask)
    for name in ("a.json", "a.h5", "a.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


# ---------------------------------------------------------------------- killed while writing
#: Child set-up: SIGKILL this process during the n-th write below ``under``: the complete
#: temporary file is cut to half its size first, as if the process had died half-way.
KILL_AT_SYNC = """
import os, signal
original = os.fsync
count = [0]
def fsync(fd):
    path = os.readlink(f"/proc/self/fd/{{fd}}")
    if path.startswith({under!r}) and os.path.basename(path).startswith("."):
        count[0] += 1
        if count[0] == {nth}:
            os.ftruncate(fd, os.fstat(fd).st_size // 2)
            os.kill(os.getpid(), signal.SIGKILL)
    return original(fd)
os.fsync = fsync
"""

#: Child set-up: the store writer of ``prepare`` is killed after its first volume, with the
#: HDF5 file open and half written (then main() is never reached).
KILL_STORE_WRITER = """
import os, signal
import numpy as np
from kdmri.data.store import StoreWriter
with StoreWriter({path!r}, (16, 16)) as writer:
    writer.add_volume("sub-01", np.ones((3, 16, 16), np.float32))
    writer._h5.flush()
    os.kill(os.getpid(), signal.SIGKILL)
"""

#: Child set-up: a thread kills the process at a moment it does not choose, once the
#: temporary file of a large store has grown past 1 MB (the store is still being written).
KILL_LARGE_STORE = """
import os, signal, threading, time
import numpy as np
from kdmri.data.store import write_store
folder, name = {folder!r}, {name!r}
def killer():
    while True:
        for entry in os.scandir(folder):
            if entry.name.startswith("." + name) and entry.stat().st_size > 1_000_000:
                os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.001)
threading.Thread(target=killer, daemon=True).start()
rng = np.random.default_rng(0)
write_store(os.path.join(folder, name), {{"target": rng.random((400, 128, 128), np.float32)}})
time.sleep(30)
"""


def _hidden_only(folder, output_name: str) -> list[str]:
    """What is left in ``folder``: only hidden temporary names, never ``output_name``."""
    names = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
    assert output_name not in names
    assert all(n.startswith(".") for n in names), names
    return names


@pytest.fixture(scope="module")
def killed(stores, tmp_path_factory):
    root = tmp_path_factory.mktemp("killed")
    data, inputs = stores.data_dir, stores.inputs_dir
    mask_file = root / "mask.npy"
    np.save(mask_file, stores.mask)
    pred = root / "pred.h5"
    test = read_store(inputs / "test.h5", ["target", "volume", "slice"])
    write_store(pred, {"output": test["target"], "volume": test["volume"],
                       "slice": test["slice"]})
    train = ["train", "--spec", json.dumps(spec()), "--inputs-dir", inputs, "--device", "cpu",
             "--threads", "1", "--out-dir", root / "train"]
    (root / "large").mkdir()
    commands = {
        "mask": ["mask", "--spec", '{"kind": "random", "acceleration": 4}', "--like",
                 data / "train.h5", "--out", root / "mask" / "mask.npy"],
        "mask_next_stage": ["undersample", "--data-dir", data, "--mask",
                            root / "mask" / "mask.npy", "--out-dir", root / "mask" / "inputs"],
        "store": ["undersample", "--data-dir", data, "--mask", mask_file,
                  "--out-dir", root / "store"],
        "store_next_stage": [*train[:3], "--inputs-dir", root / "store", "--out-dir",
                             root / "store" / "model"],
        "csv": ["evaluate", "--inputs", inputs / "test.h5", "--predictions", pred,
                "--out", root / "csv" / "metrics.csv"],
        "csv_next_stage": ["tables", "--metrics", root / "csv" / "metrics.csv",
                           "--out-dir", root / "csv" / "tables"],
        "figure": ["figures", "--kind", "mask", "--mask", mask_file,
                   "--out", root / "figure" / "mask.png"],
        "checkpoint": train,  # killed while overwriting last.pt after epoch 2
        "checkpoint_next_stage": train,
        "store_writer": ["--version"],
        "store_writer_next_stage": ["mask", "--spec", '{"kind": "random", "acceleration": 4}',
                                    "--like", root / "prepare" / "train.h5",
                                    "--out", root / "prepare" / "mask.npy"],
        "large_store": ["--version"],
    }
    setup = {name: KILL_AT_SYNC.format(under=str(root / name), nth=1)
             for name in ("mask", "store", "csv", "figure")}
    setup["checkpoint"] = KILL_AT_SYNC.format(under=str(root / "train" / "checkpoint"), nth=2)
    setup["checkpoint_next_stage"] = (
        "import os\nfrom kdmri.io import load_torch\n"
        f"state = load_torch({str(root / 'train' / 'checkpoint' / 'last.pt')!r})\n"
        "print('before resuming: last.pt epoch', state['epoch'], 'complete', state['completed'],"
        f" 'model.pt', os.path.exists({str(root / 'train' / 'model.pt')!r}))\n")
    setup["store_writer"] = KILL_STORE_WRITER.format(path=str(root / "prepare" / "train.h5"))
    setup["large_store"] = KILL_LARGE_STORE.format(folder=str(root / "large"), name="big.h5")
    return root, run_many(commands, root / "runs", setup=setup)


@pytest.mark.parametrize("name", ["mask", "store", "csv", "figure", "checkpoint",
                                  "store_writer", "large_store"])
def test_killed_while_writing(killed, name):
    _, results = killed
    assert results[name].returncode == -9, (name, results[name].stderr)


def test_killed_mask_is_not_accepted(killed):
    root, results = killed
    _hidden_only(root / "mask", "mask.npy")
    assert not (root / "mask" / "mask.json").exists()
    assert_user_error(results["mask_next_stage"], root / "mask" / "mask.npy", "not found")


def test_killed_store_is_not_accepted(killed):
    root, results = killed
    left = _hidden_only(root / "store", "train.h5")
    assert left and left[0].startswith(".train.h5.")
    assert_user_error(results["store_next_stage"], root / "store", "no train.h5")


def test_killed_csv_is_not_accepted(killed):
    root, results = killed
    left = _hidden_only(root / "csv", "metrics.csv")
    assert len(left) == 1 and left[0].startswith(".metrics.csv."), left  # killed mid-write
    assert_user_error(results["csv_next_stage"], root / "csv" / "metrics.csv", "not found")


def test_killed_figure_leaves_no_figure(killed):
    root, _ = killed
    left = _hidden_only(root / "figure", "mask.png")
    assert len(left) == 1 and left[0].startswith(".mask.png."), left  # killed mid-write


def test_killed_checkpoint_overwrite_keeps_the_previous_one(killed):
    """Killed while writing epoch 2's checkpoint: last.pt is still epoch 1's, complete, and
    the next run resumes from it."""
    root, results = killed
    assert "epoch 1/3" in results["checkpoint"].stderr
    assert "epoch 2/3" not in results["checkpoint"].stderr
    resumed = results["checkpoint_next_stage"]
    assert "before resuming: last.pt epoch 1 complete False model.pt False" in resumed.stdout
    assert resumed.returncode == 0, resumed.stderr
    assert "after epoch 1" in resumed.stderr
    assert load_torch(root / "train" / "model.pt")["epoch"] >= 1


def test_killed_store_writer_is_not_accepted(killed):
    root, results = killed
    left = _hidden_only(root / "prepare", "train.h5")
    assert len(left) == 1 and (root / "prepare" / left[0]).stat().st_size > 0
    assert_user_error(results["store_writer_next_stage"], root / "prepare" / "train.h5",
                      "store not found")


def test_large_store_killed_at_an_arbitrary_moment(killed):
    root, _ = killed
    left = _hidden_only(root / "large", "big.h5")
    assert len(left) == 1
    size = (root / "large" / left[0]).stat().st_size
    assert 1_000_000 < size < 400 * 128 * 128 * 4  # really cut off in the middle

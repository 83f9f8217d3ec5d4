"""Unsafe checkpoints: torch files are only loaded with ``weights_only=True``, so a crafted
``.pt`` carrying a pickle payload is refused wherever kdmri reads a checkpoint, and its
payload never runs (the marker file it would create stays absent)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from kdmri.checkpoints import MODEL_FORMAT, STATE_FORMAT
from kdmri.io import load_torch
from kdmri.keys import digest
from kdmri.models import build_model
from tests.reliability.helpers import (
    PAIRS,
    ROOT,
    STUDENT_NET,
    TEACHER_NET,
    assert_user_error,
    files_under,
    run_many,
    spec,
)

PACKAGE = ROOT / "kdmri"


class Payload:
    """Unpickling this object runs ``exec(code)``: here, code that creates a marker file."""

    def __init__(self, marker: Path):
        self.code = f"open({str(marker)!r}, 'w').write('the payload ran')"

    def __reduce__(self):
        return (exec, (self.code,))


def crafted(path: Path, marker: Path, fmt: str, **fields) -> Path:
    """A checkpoint that looks like kdmri's (format, net, weights) with a payload inside."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": fmt, **fields, "note": Payload(marker)}, path)
    return path


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def _keyword(node: ast.Call, name: str):
    for keyword in node.keywords:
        if keyword.arg == name:
            return keyword.value
    return None


def test_every_torch_load_in_the_package_is_weights_only():
    """Static check of the whole package: torch.load only with weights_only=True, and no
    other loader that can run code (pickle, torch.jit, yaml.load, np.load with pickles)."""
    loads, problems = [], []
    for file in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(file.read_text(), filename=str(file))
        for node in ast.walk(tree):  # a loader imported under another name would hide
            if isinstance(node, ast.ImportFrom) and node.module in ("torch", "pickle", "dill"):
                names = {alias.name for alias in node.names}
                if names & {"load", "loads"}:
                    problems.append(f"{file.relative_to(ROOT)}:{node.lineno}: imports a loader")
        for node, func in _calls(tree):
            where = f"{file.relative_to(ROOT)}:{node.lineno}"
            if func.endswith("torch.load"):
                loads.append(where)
                value = _keyword(node, "weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    problems.append(f"{where}: torch.load without weights_only=True")
            if func in ("pickle.load", "pickle.loads", "torch.jit.load", "yaml.load",
                        "yaml.unsafe_load", "dill.load", "joblib.load", "marshal.loads"):
                problems.append(f"{where}: {func} can run code from a file")
            if func.endswith("np.load") or func.endswith("numpy.load"):
                value = _keyword(node, "allow_pickle")
                if not (isinstance(value, ast.Constant) and value.value is False):
                    problems.append(f"{where}: np.load without allow_pickle=False")
    assert problems == []
    assert loads == ["kdmri/io.py:" + loads[0].split(":")[1]], loads  # one place loads


def test_the_payload_is_real(tmp_path):
    """Loaded unsafely (as the authors' code had to), the file does run its payload."""
    marker = tmp_path / "marker"
    path = crafted(tmp_path / "evil.pt", marker, MODEL_FORMAT, net=STUDENT_NET)
    torch.load(path, weights_only=False)  # our own harmless payload: it writes the marker
    assert marker.read_text() == "the payload ran"


def test_load_torch_refuses_the_payload(tmp_path):
    from kdmri.errors import KdmriError

    marker = tmp_path / "marker"
    path = crafted(tmp_path / "evil.pt", marker, MODEL_FORMAT, net=STUDENT_NET)
    with pytest.raises(KdmriError, match="refused to load") as info:
        load_torch(path)
    assert str(path) in str(info.value) and "exec" in str(info.value)
    assert not marker.exists()


@pytest.fixture(scope="module")
def refused(stores, tmp_path_factory):
    """Every CLI path that reads a checkpoint, given a crafted one; each run in its own process."""
    root = tmp_path_factory.mktemp("unsafe")
    marker = root / "marker"
    weights = build_model(STUDENT_NET).state_dict()
    model_pt = crafted(root / "evil" / "model.pt", marker, MODEL_FORMAT, net=STUDENT_NET,
                       state_dict=weights)
    teacher_pt = crafted(root / "evil_teacher" / "model.pt", marker, MODEL_FORMAT,
                         net=TEACHER_NET, state_dict=build_model(TEACHER_NET).state_dict())
    resume_dir = root / "resume"
    state_spec = spec()
    last_pt = crafted(resume_dir / "checkpoint" / "last.pt", marker, STATE_FORMAT,
                      spec=state_spec, spec_digest=digest(state_spec), epoch=1, completed=False,
                      model=weights)
    inputs = stores.inputs_dir
    out = root / "out"
    train = ["train", "--inputs-dir", inputs, "--device", "cpu", "--threads", "1"]
    commands = {
        "predict": (["predict", "--model", model_pt, "--inputs", inputs / "test.h5", "--out",
                     out / "predict" / "pred.h5", "--info", out / "predict" / "info.json",
                     "--device", "cpu"], model_pt, out / "predict"),
        "train_init": ([*train, "--spec", json.dumps(spec("kd_attention")), "--init", model_pt,
                        "--out-dir", out / "init"], model_pt, out / "init"),
        "cache_teacher": (["cache-teacher", "--teacher", teacher_pt, "--spec",
                           json.dumps({"teacher_net": TEACHER_NET, "pairs": PAIRS}),
                           "--inputs-dir", inputs, "--out-dir", out / "cache", "--device", "cpu"],
                          teacher_pt, out / "cache"),
        "train_resume": ([*train, "--spec", json.dumps(state_spec), "--out-dir", resume_dir],
                         last_pt, resume_dir / "model.pt"),
    }
    results = run_many({name: c[0] for name, c in commands.items()}, root / "runs")
    return marker, {name: (results[name], c[1], c[2]) for name, c in commands.items()}


@pytest.mark.parametrize("path", ["predict", "train_init", "cache_teacher", "train_resume"])
def test_cli_refuses_a_crafted_checkpoint(refused, path):
    marker, results = refused
    result, checkpoint, output = results[path]
    assert_user_error(result, checkpoint, "refused to load", "could run code")
    assert not marker.exists(), "the pickle payload ran"
    assert files_under(output) == []

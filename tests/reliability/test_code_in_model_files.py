"""A model file never chooses the code that runs: a ``model.pt`` whose ``net`` is
``{family: python, target: "<module>:Net"}``, beside a ``<module>.py`` whose import writes a
marker file, is refused by every command that loads a model until the user passes
``--trust-code``, and the marker never appears; with the flag the same commands load it.
Each command runs in its own process, in the folder that holds the module."""

from __future__ import annotations

import ast
import json
import textwrap

import nibabel as nib
import numpy as np
import pytest

from kdmri.checkpoints import write_model_file
from kdmri.config import fill_defaults
from kdmri.io import load_torch
from kdmri.models import build_model
from tests.reliability.helpers import ROOT, assert_user_error, files_under, run_many

PACKAGE = ROOT / "kdmri"
MODULE = "downloaded_net"
NET = fill_defaults("net", {"family": "python", "target": f"{MODULE}:Net",
                            "kwargs": {"cascades": 2, "convs": 3, "channels": 4}})
PAIRS = [["cascades.0.cnn.1", "cascades.0.cnn.1"]]


@pytest.fixture(scope="module")
def folder(stores, tmp_path_factory):
    """A folder as a user might receive it: the crafted model.pt, the module it names (a
    working DC-CNN, whose import writes ``marker``), a volume and a mask to apply it to."""
    root = tmp_path_factory.mktemp("downloaded")
    marker = root / "marker"
    (root / f"{MODULE}.py").write_text(textwrap.dedent(f"""
        open({str(marker)!r}, "w").write("imported")

        from kdmri.models.dccnn import DCCNN


        class Net(DCCNN):
            pass
    """))
    model_pt = root / "model.pt"  # the weights of the DC-CNN that Net is
    write_model_file(model_pt, {"task": "recon", "net": NET}, build_model(
        {"family": "dccnn", **NET["kwargs"]}).state_dict())
    data = np.random.default_rng(0).random((*stores.shape, 3), dtype=np.float32) + 0.1
    nib.save(nib.Nifti1Image(data, np.eye(4)), root / "volume.nii.gz")
    np.save(root / "mask.npy", stores.mask)
    return root, marker, model_pt


def commands(root, model_pt, inputs, out, trust: list[str]) -> dict[str, list]:
    """Every command that loads ``model_pt``, writing under ``out``."""
    return {
        "apply": ["apply", "--model", model_pt, "--input", root / "volume.nii.gz", "--mask",
                  root / "mask.npy", "--out", out / "apply" / "out.nii.gz", "--device", "cpu",
                  "--quiet", *trust],
        "export": ["export", "--model", model_pt, "--out", out / "export" / "net.pt", *trust],
        "predict": ["predict", "--model", model_pt, "--inputs", inputs / "test.h5", "--out",
                    out / "predict" / "pred.h5", "--info", out / "predict" / "info.json",
                    "--device", "cpu", *trust],
        "cache_teacher": ["cache-teacher", "--teacher", model_pt, "--spec",
                          json.dumps({"teacher_net": NET, "pairs": PAIRS}), "--inputs-dir",
                          inputs, "--out-dir", out / "cache_teacher", "--device", "cpu", *trust],
    }


@pytest.fixture(scope="module")
def runs(folder, stores):
    """The commands without the flag (marker checked after them), then with it."""
    root, marker, model_pt = folder
    setup = f"import os; os.chdir({str(root)!r})"  # the module sits in the working folder
    refused_cmds = commands(root, model_pt, stores.inputs_dir, root / "refused", [])
    refused = run_many(refused_cmds, root / "runs_refused",
                       setup=dict.fromkeys(refused_cmds, setup))
    imported_without_flag = marker.exists()
    trusted_cmds = commands(root, model_pt, stores.inputs_dir, root / "trusted", ["--trust-code"])
    trusted = run_many(trusted_cmds, root / "runs_trusted", setup=dict.fromkeys(trusted_cmds, setup))
    return refused, imported_without_flag, trusted


@pytest.mark.parametrize("command", ["apply", "export", "predict", "cache_teacher"])
def test_refused_without_the_flag_before_any_import(folder, runs, command):
    root, _, model_pt = folder
    refused, imported_without_flag, _ = runs
    assert_user_error(refused[command], model_pt, f"{MODULE}:Net", "--trust-code")
    assert not imported_without_flag, "a command imported the module the model file names"
    assert files_under(root / "refused" / command) == []


@pytest.mark.parametrize("command", ["apply", "export", "predict", "cache_teacher"])
def test_loaded_with_the_flag(folder, runs, command):
    root, marker, _ = folder
    result = runs[2][command]
    assert result.returncode == 0, result.stderr
    assert files_under(root / "trusted" / command) != []
    assert marker.read_text() == "imported"


def test_bench_refuses_a_model_file_put_in_place_of_its_teacher(folder, tmp_path):
    """``kdmri bench`` loads only the teacher it trains from the study config, whose network
    the file must hold: a crafted file in its place is refused before any import."""
    root, marker, model_pt = folder
    marker.unlink(missing_ok=True)  # written by the runs with the flag
    swap = textwrap.dedent(f"""
        import os, shutil
        import kdmri.train

        os.chdir({str(root)!r})
        write = kdmri.train.Trainer._write_outputs

        def crafted(self):
            write(self)
            shutil.copy({str(model_pt)!r}, self.out_dir / "model.pt")

        kdmri.train.Trainer._write_outputs = crafted
    """)
    out = tmp_path / "bench.csv"
    result = run_many({"bench": ["bench", "--quick", "--device", "cpu", "--out", out,
                                 "--workdir", tmp_path / "work"]}, tmp_path / "runs",
                      setup={"bench": swap})["bench"]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("kdmri: error: ") and "model.pt" in line and f"{MODULE}:Net" in line
    assert not marker.exists() and not out.exists()


def test_the_consent_of_load_model(folder, tmp_path, monkeypatch):
    """The library's rule: the caller's own ``expect_net`` is consent unless the caller
    says ``trust_code=False`` (a command without the flag); ``trust_code=True`` is."""
    from kdmri.checkpoints import load_model
    from kdmri.errors import KdmriError

    _, _, model_pt = folder
    marker = tmp_path / "marker"
    module = "consent_net"
    (tmp_path / f"{module}.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\n"
        "from kdmri.models.dccnn import DCCNN as Net\n")
    monkeypatch.chdir(tmp_path)
    net = dict(NET, target=f"{module}:Net")
    path = tmp_path / "model.pt"
    write_model_file(path, {"task": "recon", "net": net}, load_torch(model_pt)["state_dict"])
    for options in ({}, {"trust_code": False}, {"expect_net": net, "trust_code": False}):
        with pytest.raises(KdmriError, match=f"{module}:Net.*give --trust-code"):
            load_model(path, **options)
    with pytest.raises(KdmriError, match="does not match"):  # another net: never built
        load_model(path, expect_net=NET, trust_code=True)
    assert not marker.exists()
    model, _ = load_model(path, expect_net=net)
    assert type(model).kdmri_target == f"{module}:Net" and marker.exists()
    marker.unlink()
    assert type(load_model(path, trust_code=True)[0]).kdmri_target == f"{module}:Net"


def test_every_loader_of_model_files_says_whose_consent_it_has():
    """Static check of the package: model files are loaded only by load_model, and every
    call of it passes ``trust_code`` (the command's flag, or the caller's own)."""
    calls, problems = [], []
    for file in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(file.read_text(), filename=str(file))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "load_model":
                where = f"{file.relative_to(ROOT)}:{node.lineno}"
                calls.append(where)
                if "trust_code" not in {keyword.arg for keyword in node.keywords}:
                    problems.append(f"{where}: load_model without trust_code")
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "build_model" \
                    and "ckpt" in ast.unparse(node) and file.name != "checkpoints.py":
                problems.append(f"{file.relative_to(ROOT)}:{node.lineno}: builds a file's net")
    assert problems == []
    assert {c.split(":")[0] for c in calls} >= {"kdmri/apply.py", "kdmri/export.py",
                                                 "kdmri/cli.py", "kdmri/inference.py",
                                                 "kdmri/teacher.py", "kdmri/train.py"}

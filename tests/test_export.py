"""``kdmri export``: the written file runs without kdmri and matches the eager network."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from kdmri.checkpoints import load_model, write_model_file
from kdmri.cli import main
from kdmri.export import example_inputs, sha256
from kdmri.models import build_model

NETS = {
    "dccnn": {"family": "dccnn", "cascades": 2, "convs": 3, "channels": 8},
    "vdsr": {"family": "vdsr", "convs": 4, "channels": 8},
}


def _model_file(tmp_path, family: str) -> tuple:
    """A small untrained network with non-trivial weights, saved as the trainer saves it."""
    torch.manual_seed(0)
    model = build_model(NETS[family])
    with torch.no_grad():
        for param in model.parameters():  # VDSR's last layer starts at zero: perturb all
            param.normal_(0, 0.1)
    path = tmp_path / family / "model.pt"
    spec = {"task": "recon" if family == "dccnn" else "sr", "model": "student",
            "stage": "student", "net": NETS[family]}
    write_model_file(path, spec, model.state_dict(), epoch=1, params=7)
    return path, load_model(path)[0].eval()


def _eager(model, image, kspace, mask):
    with torch.no_grad():
        return model(image, kspace, mask)


@pytest.mark.parametrize("family", sorted(NETS))
def test_torchscript_matches_the_eager_network_at_two_sizes(tmp_path, family):
    path, model = _model_file(tmp_path, family)
    out = tmp_path / "export" / f"{family}.pt"
    assert main(["export", "--model", str(path), "--format", "torchscript", "--out", str(out)]) == 0
    loaded = torch.jit.load(str(out))
    for seed, (height, width) in enumerate([(32, 32), (48, 40), (33, 31)]):  # dynamic, odd too
        image, kspace, mask = example_inputs(height, width, batch=3, seed=seed + 10)
        expected = _eager(model, image, kspace, mask)
        with torch.no_grad():
            got = loaded(image, kspace, mask)
        assert got.shape == expected.shape
        assert (got - expected).abs().max() <= 1e-5, (height, width)
    # a column mask (W,) broadcasts as in the eager network
    image, kspace, mask = example_inputs(32, 24, seed=3)
    column = mask[0]
    with torch.no_grad():
        assert (loaded(image, kspace, column) - _eager(model, image, kspace, column)
                ).abs().max() <= 1e-5
    info = json.loads((tmp_path / "export" / f"{family}.pt.json").read_text())
    assert info["source_model"]["sha256"] == sha256(path)
    assert info["file_sha256"] == sha256(out)
    assert info["net"] == NETS[family]
    assert info["kind"] == ("reconstruction" if family == "dccnn" else "super-resolution")
    assert info["task"] == ("recon" if family == "dccnn" else "sr")
    assert [i["name"] for i in info["inputs"]] == ["image", "kspace", "mask"]
    assert info["inputs"][1]["dtype"] == "complex64"
    assert info["check"]["max_abs_diff"] <= 1e-5


def test_torchscript_file_loads_without_kdmri(tmp_path):
    path, model = _model_file(tmp_path, "dccnn")
    out = tmp_path / "dccnn.ts"
    assert main(["export", "--model", str(path), "--out", str(out)]) == 0
    image, kspace, mask = example_inputs(40, 36, batch=1, seed=5)
    torch.save({"image": image, "kspace": kspace, "mask": mask}, tmp_path / "inputs.pt")
    script = (
        "import sys, torch\n"
        "sys.modules['kdmri'] = None  # importing kdmri now fails\n"
        f"net = torch.jit.load({str(out)!r})\n"
        f"x = torch.load({str(tmp_path / 'inputs.pt')!r})\n"
        f"torch.save(net(x['image'], x['kspace'], x['mask']), {str(tmp_path / 'out.pt')!r})\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    got = torch.load(tmp_path / "out.pt")
    assert (got - _eager(model, image, kspace, mask)).abs().max() <= 1e-5


@pytest.mark.parametrize("family", sorted(NETS))
def test_onnx_matches_the_eager_network(tmp_path, family):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    path, model = _model_file(tmp_path, family)
    out = tmp_path / f"{family}.onnx"
    assert main(["export", "--model", str(path), "--format", "onnx", "--out", str(out)]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert names == (["image", "kspace", "mask"] if family == "dccnn" else ["image"])
    # onnxruntime's DFT is exact to float32 rounding at powers of two; at other sizes it
    # rounds more (a few 1e-5 on outputs of about 4: docs/deploy.md)
    for seed, ((height, width), tolerance) in enumerate([((32, 32), 1e-5), ((64, 64), 1e-5),
                                                         ((48, 40), 1e-4)]):
        image, kspace, mask = example_inputs(height, width, batch=2, seed=seed)
        feeds = {"image": image.numpy(), "kspace": torch.view_as_real(kspace).numpy(),
                 "mask": mask.numpy()}
        got = torch.from_numpy(session.run(None, {n: feeds[n] for n in names})[0])
        assert (got - _eager(model, image, kspace, mask)).abs().max() <= tolerance, (height, width)
    info = json.loads(out.with_name(out.name + ".json").read_text())
    assert info["export_format"] == "onnx" and info["exported_with"]["opset"] >= 17
    if family == "dccnn":
        assert "DFT" in info["exported_with"]["onnx_ops"]
        assert info["inputs"][1]["shape"] == ["N", 1, "H", "W", 2]


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("kdmri: error: ")
    return lines[0]


def test_errors_are_one_line(tmp_path, capsys):
    path, _ = _model_file(tmp_path, "vdsr")
    line = _error(capsys, ["export", "--model", str(tmp_path / "none.pt"), "--out",
                           str(tmp_path / "x.pt")])
    assert "none.pt: model file not found" in line
    line = _error(capsys, ["export", "--model", str(path), "--format", "tflite", "--out",
                           str(tmp_path / "x.pt")])
    assert "unknown export format 'tflite'" in line
    (tmp_path / "afile").write_text("")
    line = _error(capsys, ["export", "--model", str(path), "--out",
                           str(tmp_path / "afile" / "sub" / "x.pt")])
    assert "afile is a file, not a folder" in line
    line = _error(capsys, ["export", "--model", str(path), "--out", str(tmp_path)])
    assert "is a folder" in line
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    line = _error(capsys, ["export", "--model", str(tmp_path / "junk.pt"), "--out",
                           str(tmp_path / "x.pt")])
    assert "junk.pt" in line
    assert not (tmp_path / "x.pt").exists()


# ---------------------------------------------------------------------- E2E-VarNet (traced)
VARNET = {"family": "varnet", "cascades": 2, "chans": 4, "pools": 2, "sens_chans": 4,
          "sens_pools": 2}


def _varnet_file(tmp_path, shape=(32, 24)) -> tuple:
    """A tiny VarNet with perturbed weights, saved with the shape of its training mask."""
    torch.manual_seed(0)
    model = build_model(VARNET)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    path = tmp_path / "varnet" / "model.pt"
    spec = {"task": "recon", "model": "student", "stage": "student", "net": VARNET}
    write_model_file(path, spec, model.state_dict(), epoch=1, params=7,
                     mask={"kind": "random", "acceleration": 4, "center_fraction": 0.1,
                           "seed": 0, "shape": list(shape)}, coils=4)  # as training records it
    return path, load_model(path)[0].eval()


def test_torchscript_varnet_is_traced_and_matches_the_eager_network(tmp_path):
    from kdmri.export import multicoil_inputs

    path, model = _varnet_file(tmp_path)
    out = tmp_path / "varnet.ts"
    assert main(["export", "--model", str(path), "--format", "torchscript", "--out", str(out)]) == 0
    loaded = torch.jit.load(str(out))
    # the training size (traced there with 4 coils), other batch sizes and coil counts, and
    # another size divisible by 2**pools: within 1e-5
    for seed, (height, width, coils, batch) in enumerate([(32, 24, 4, 2), (32, 24, 2, 1),
                                                          (32, 24, 6, 3), (40, 36, 3, 2)]):
        kspace, mask = multicoil_inputs(height, width, coils, batch, seed=seed + 20)
        with torch.no_grad():
            expected, got = model(kspace, mask), loaded(kspace, mask)
        assert got.shape == expected.shape == (batch, 1, height, width)
        assert (got - expected).abs().max() <= 1e-5, (height, width, coils)
    info = json.loads((tmp_path / "varnet.ts.json").read_text())
    assert [i["name"] for i in info["inputs"]] == ["kspace", "mask"]
    assert info["inputs"][0] == {**info["inputs"][0], "dtype": "complex64",
                                 "shape": ["N", "C", "H", "W"]}
    assert info["inputs"][1]["shape"] == ["H", "W"]
    assert info["outputs"][0]["shape"] == ["N", 1, "H", "W"]
    assert info["check"]["traced"] == {"size": [32, 24], "coils": 4, "batch": 2}
    assert info["check"]["sizes"] == [[32, 24], [36, 28]] and info["check"]["size_step"] == 4
    assert info["check"]["max_abs_diff"] <= 1e-5
    assert "divisible by 4" in info["size"] and info["kind"] == "reconstruction"
    assert info["file_sha256"] == sha256(out)


def test_varnet_to_onnx_is_refused_in_one_line(tmp_path, capsys):
    path, _ = _varnet_file(tmp_path)
    line = _error(capsys, ["export", "--model", str(path), "--format", "onnx", "--out",
                           str(tmp_path / "v.onnx")])
    assert "--format onnx: family varnet takes complex coil k-space" in line
    assert "--format torchscript" in line and not (tmp_path / "v.onnx").exists()

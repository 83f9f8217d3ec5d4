"""The network family registry: what each family declares it can do (kdmri.models.MODEL_FAMILIES)
agrees with the network its class builds, and the config checks, export and apply read the
declaration, not the family's name."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdmri import export
from kdmri.config import fill_defaults, schema, validate
from kdmri.errors import KdmriError
from kdmri.models import MODEL_FAMILIES, build_model, family_of, family_options

ROOT = Path(__file__).resolve().parents[1]
#: A small network of each built-in family (the python family builds a user's class).
SMALL = {
    "dccnn": {"family": "dccnn", "cascades": 2, "convs": 3, "channels": 4},
    "vdsr": {"family": "vdsr", "convs": 4, "channels": 4},
    "unet": {"family": "unet", "chans": 4, "num_pool_layers": 1},
    "varnet": {"family": "varnet", "cascades": 2, "chans": 4, "pools": 1, "sens_chans": 2,
               "sens_pools": 1},
}


def test_the_registry_names_the_schemas_families_and_tasks():
    root = schema()
    assert list(MODEL_FAMILIES) == root["$defs"]["net"]["properties"]["family"]["enum"]
    tasks = set(root["properties"]["tasks"]["properties"])
    for name, entry in MODEL_FAMILIES.items():
        assert entry.tasks and set(entry.tasks) <= tasks, name
        assert set(entry.exports) <= set(export.FORMATS), name


@pytest.mark.parametrize("name", sorted(SMALL))
def test_each_declaration_holds_for_the_built_network(name):
    entry = MODEL_FAMILIES[name]
    net = fill_defaults("net", SMALL[name])
    model = build_model(net)
    assert family_of(model) == name and isinstance(model, entry.cls)
    # cascades: one feature path per cascade, and the student-friendly teacher's cascades
    assert entry.cascades == ("cascades" in net)
    if entry.cascades:
        assert len(model.cascades) == net["cascades"]
        assert len(model.feature_paths(1)) == net["cascades"]
    # convs: exactly the conv indices 1 .. convs - 1 have an activation
    assert entry.convs == ("convs" in net)
    if entry.convs:
        for conv in range(1, net["convs"]):
            model.feature_paths(conv)
        with pytest.raises(KdmriError):
            model.feature_paths(net["convs"])
    # numbered: the first layer is addressed by number
    assert entry.numbered
    assert model.feature_paths(1)
    # exports: exactly the declared formats have a plain-operator copy; a multi-coil
    # network has none (it is traced: export.trace_multicoil), as TorchScript only
    if entry.multicoil:
        assert name not in export.PLAIN_COPIES and entry.exports == ("torchscript",)
    else:
        assert (name in export.PLAIN_COPIES) == bool(entry.exports)
    for fmt in export.FORMATS:
        if fmt in entry.exports and not entry.multicoil:
            assert export.exportable(model, fmt) is not None
        else:
            with pytest.raises(KdmriError, match="cannot export"):
                export.exportable(model, fmt)
    # reads_kspace: the output depends on the measured k-space exactly where declared (a
    # U-Net's depends on its dc option: only its default is checked)
    image, kspace, mask = export.example_inputs(16, 16, channels=2 if model.complex else 1)
    if entry.multicoil:  # model(kspace, mask) on coil k-space (two coils), the RSS image out
        kspace = torch.cat([kspace, 1j * kspace.flip(-1)], dim=1)
        def call(k):
            return model(k, mask)
        assert call(kspace).shape == (image.shape[0], 1, *image.shape[-2:])
    else:
        def call(k):
            return model(image, k, mask)
    with torch.no_grad():
        changed = call(kspace) - call(2 * kspace + 1)
    assert entry.reads_kspace == bool(changed.abs().max() > 0), name


def test_the_python_family_is_addressed_by_path_and_not_exported():
    entry = MODEL_FAMILIES["python"]
    assert not entry.numbered and not entry.cascades and not entry.convs and not entry.exports


def test_the_registry_is_read_without_torch():
    code = ("import sys\nfrom kdmri.models import MODEL_FAMILIES, family\n"
            "assert family({'family': 'dccnn'}).cascades\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def _declare(monkeypatch, name: str, **changes) -> None:
    monkeypatch.setitem(MODEL_FAMILIES, name, dataclasses.replace(MODEL_FAMILIES[name], **changes))


def test_the_config_checks_read_the_declarations(monkeypatch):
    unet = {"tasks": {"recon": {
        "datasets": ["demo"], "teacher": {"family": "unet"}, "student": {"family": "unet"}}}}
    validate({**unet, "models": ["zf", "kd"]})  # numbered U-Net blocks pair by index
    _declare(monkeypatch, "unet", numbered=False)
    with pytest.raises(KdmriError, match=r"\(family unet\) is addressed by module path"):
        validate({**unet, "models": ["zf", "kd"]})
    # a student-friendly teacher needs families with cascades
    sr = {"tasks": {"sr": {"datasets": ["demo"]}}, "models": ["zf", "sft_teacher"]}
    with pytest.raises(KdmriError, match="families without cascades: vdsr, unet, python"):
        validate(sr)
    # a conv index is checked against convs only where the family numbers convolutions
    tiny = {"tasks": {"sr": {"datasets": ["demo"], "compression": {"students": {
        "s": {"net": {"family": "vdsr", "convs": 3}, "pairs": [[6, 5]]}}}}}}
    with pytest.raises(KdmriError, match="conv 5 has no activation"):
        validate(tiny)
    _declare(monkeypatch, "vdsr", convs=False)
    validate(tiny)
    # a family on multi-coil k-space is refused on a single-coil dataset (the demo's)
    varnet = {"tasks": {"recon": {"datasets": ["demo"], "teacher": {"family": "varnet"}}},
              "models": ["zf", "teacher"]}
    with pytest.raises(KdmriError, match=r"'tasks\.recon\.teacher\.family': family varnet "
                                         r"reconstructs multi-coil k-space"):
        validate(varnet)
    _declare(monkeypatch, "varnet", multicoil=False)
    validate(varnet)


def test_export_reads_the_declarations(monkeypatch):
    vdsr = fill_defaults("net", SMALL["vdsr"])
    assert export._kind(vdsr) == "super-resolution"
    assert export._kind(fill_defaults("net", SMALL["dccnn"])) == "reconstruction"
    _declare(monkeypatch, "vdsr", tasks=("recon",), exports=("torchscript",))
    assert export._kind(vdsr) == "reconstruction"
    model = build_model(vdsr)
    export.exportable(model, "torchscript")
    with pytest.raises(KdmriError, match="cannot export a network of type VDSR"):
        export.exportable(model, "onnx")


#: For each family, an integer option of another family's that it does not take.
FOREIGN = {"dccnn": "pools", "vdsr": "cascades", "unet": "sens_pools", "varnet": "convs"}


def _schema_options(name: str) -> set[str]:
    """The keys the config schema allows a network of family ``name`` (its branch's
    ``propertyNames``)."""
    branches = schema()["$defs"]["net"]["allOf"]
    (branch,) = [b for b in branches if b["if"]["properties"]["family"].get("const") == name]
    return set(branch["then"]["propertyNames"]["enum"])


@pytest.mark.parametrize("name", sorted(FOREIGN))
def test_the_schema_allows_each_family_exactly_its_constructors_options(name):
    """The schema is read without torch (the Snakefile validates a study on every
    invocation), so it lists each family's options itself; here they are compared with
    the class's constructor arguments, so the two cannot drift apart."""
    # target and kwargs pass here to be refused as "an option of family python only"
    assert _schema_options(name) == family_options(name) | {"family", "target", "kwargs"}


@pytest.mark.parametrize("name", sorted(FOREIGN))
def test_an_option_of_another_family_is_refused_before_any_job_naming_the_key(name):
    """The schema holds every family's options together; each network may use only its own
    family's, said at validation with the key, not when a job first builds the network."""
    option = FOREIGN[name]
    assert option not in family_options(name)
    task = MODEL_FAMILIES[name].tasks[0]
    validate({"tasks": {task: {"teacher": {"family": name}}}})
    with pytest.raises(KdmriError, match=rf"unknown key 'tasks.{task}.teacher.{option}'; "
                                         r"allowed keys here: \[.*'family'"):
        validate({"tasks": {task: {"teacher": {"family": name, option: 2}}}})


def test_every_family_but_python_is_covered_by_the_option_tests():
    assert sorted(FOREIGN) == sorted(n for n in MODEL_FAMILIES if n != "python")

"""docs/architecture.md against the code: its recipes done as the page says, and the page
itself.

Each "how to add" recipe is followed here with a toy entry, registered for one test with
``monkeypatch``, and run through the real code: a loss term and a network family through
``kdmri train`` (the spec check, the trainer, ``model.pt``) for an epoch on the tiny stores,
a method through a study config's spec building, a data format through ``kdmri prepare``.
What each run gives is checked against a computation written out here. The page's layer
tables must name every module of ``kdmri`` once, its list of imports against the layers
must be the import graph's, and every name and path it cites must exist.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch import nn
from torch.nn import functional as F

from kdmri.checkpoints import load_model
from kdmri.cli import _check_train_spec, main
from kdmri.config import schema, validate
from kdmri.data import readers, sources
from kdmri.data.prepare import READERS
from kdmri.data.sources import as_float32, fit_size, plan_sources
from kdmri.data.store import read_store
from kdmri.distill import losses
from kdmri.distill.terms import TERMS, Term, _Loss
from kdmri.errors import KdmriError
from kdmri.keys import SPLITS
from kdmri.methods import MODELS, Method, models_needed, study_models
from kdmri.models import MODEL_FAMILIES, Family, family_of
from kdmri.specs import model_spec, teacher_sources
from tests.oracles import np_fft2c, np_zero_filled
from tests.reliability.helpers import PAIRS, STUDENT_NET, TEACHER_NET
from tests.reliability.helpers import study as tiny_study
from tests.test_imports import import_graph, module_names

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "architecture.md"


# ---------------------------------------------------------------------- shared steps
def train_one_epoch(stores, spec: dict, out_dir) -> pd.DataFrame:
    """Run ``kdmri train`` in this process on the tiny stores; return its history."""
    code = main(["train", "--spec", json.dumps(spec), "--inputs-dir", str(stores.inputs_dir),
                 "--out-dir", str(out_dir), "--device", "cpu"])
    assert code == 0
    return pd.read_csv(out_dir / "history.csv")


def val_inputs(stores) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
    """The validation split as a network takes it, made here from the targets and the mask
    (the real zero-filled image, the measured k-space ``m * FFT(x)``, the mask), and the
    targets."""
    target, mask = stores.targets["val"], stores.mask
    image = torch.from_numpy(np_zero_filled(target, mask)[:, None].astype(np.float32))
    kspace = torch.from_numpy((mask * np_fft2c(target.astype(np.float64)))[:, None]
                              .astype(np.complex64))
    return image, kspace, torch.from_numpy(mask.astype(np.float32)), target


def predict(model_pt, stores) -> tuple[np.ndarray, np.ndarray]:
    """The saved network's output on the validation split, and the targets."""
    model, _ = load_model(model_pt)
    image, kspace, mask, target = val_inputs(stores)
    with torch.no_grad():
        output = model.eval()(image, kspace, mask)
    return output[:, 0].double().numpy(), target.astype(np.float64)


def with_schema_entry(monkeypatch, node: dict, key: str, entry) -> None:
    """Append ``entry`` to the list ``node[key]`` of the schema (restored after the test)."""
    monkeypatch.setitem(node, key, [*node[key], entry])


# ---------------------------------------------------------------------- a loss term
def edge_loss(prediction: torch.Tensor, target: torch.Tensor, axis: str = "both") -> torch.Tensor:
    """The toy term ``edge``: the L1 distance of the images' forward differences."""
    dims = {"both": (-2, -1), "h": (-2,), "w": (-1,)}[axis]
    return sum(F.l1_loss(prediction.diff(dim=d), target.diff(dim=d)) for d in dims) / len(dims)


def test_a_loss_term_added_to_the_table_trains(stores, tmp_path, monkeypatch):
    # the recipe: the function in kdmri.distill.losses, its entry in TERMS
    monkeypatch.setattr(losses, "edge_loss", edge_loss, raising=False)
    monkeypatch.setitem(TERMS, "edge", Term(
        _Loss("edge_loss"), inputs=("prediction", "target"),
        formula="mean over axes of mean |D x - D x_S|, D the forward difference",
        options={"axis": ("both", "h", "w")}))
    spec = model_spec(tiny_study(epochs=1), "recon", "student", 0)
    spec["loss_weights"] = {"reconstruction": 1.0, "edge": 0.5}
    spec["loss_options"] = {"edge": {"axis": "w"}}
    history = train_one_epoch(stores, spec, tmp_path)

    assert len(history) == 1
    row = history.iloc[0]
    prediction, target = predict(tmp_path / "model.pt", stores)
    edge_w = np.mean(np.abs(np.diff(prediction, axis=-1) - np.diff(target, axis=-1)))
    edge_h = np.mean(np.abs(np.diff(prediction, axis=-2) - np.diff(target, axis=-2)))
    assert row["val_edge"] == pytest.approx(edge_w, rel=1e-4)
    assert edge_w != pytest.approx(edge_h, rel=1e-2)  # the option reached the function
    assert row["val_reconstruction"] == pytest.approx(np.mean(np.abs(prediction - target)),
                                                      rel=1e-4)
    assert row["val_loss"] == pytest.approx(row["val_reconstruction"] + 0.5 * row["val_edge"],
                                            rel=1e-6)
    assert np.isfinite(row["train_edge"]) and row["train_edge"] > 0


def test_a_term_outside_the_table_is_refused_by_the_spec_check():
    spec = model_spec(tiny_study(epochs=1), "recon", "student", 0)
    spec["loss_weights"] = {"edge": 1.0}
    with pytest.raises(KdmriError, match="unknown loss term 'edge'"):
        _check_train_spec(spec)


# ---------------------------------------------------------------------- a network family
class ToyNet(nn.Module):
    """The toy family ``toy``: image + conv(ReLU(conv(image))), ``channels`` features."""

    def __init__(self, channels: int = 8, complex: bool = False):
        super().__init__()
        self.complex = complex
        self.body = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(channels, 1, 3, padding=1))

    def forward(self, image, kspace=None, mask=None):
        return image + self.body(image)

    def feature_paths(self, conv: int) -> list[str]:
        if conv != 1:
            raise KdmriError(f"toy: conv {conv} has no activation; expected 1")
        return ["body.1"]


def test_a_network_family_added_to_the_registry_trains(stores, tmp_path, monkeypatch):
    # the recipe: the entry in MODEL_FAMILIES; the name and its defaults in the schema
    monkeypatch.setitem(MODEL_FAMILIES, "toy", Family(f"{__name__}:ToyNet", tasks=("recon",),
                                                      reads_kspace=False))
    net = schema()["$defs"]["net"]
    with_schema_entry(monkeypatch, net["properties"]["family"], "enum", "toy")
    with_schema_entry(monkeypatch, net, "allOf", {
        "if": {"properties": {"family": {"const": "toy"}}},
        "then": {"properties": {"channels": {"default": 3}}}})
    config = validate({
        "datasets": {"tiny": {"format": "demo"}},
        "tasks": {"recon": {"datasets": ["tiny"], "teacher": TEACHER_NET,
                            "student": {"family": "toy"}, "pairs": PAIRS}},
        "models": ["zf", "teacher", "student"],
        "train": {"epochs": 1, "batch_size": 4},
    })
    spec = model_spec(config, "recon", "student", 0)
    assert spec["net"] == {"family": "toy", "channels": 3}  # the schema's default
    history = train_one_epoch(stores, spec, tmp_path)

    model, saved = load_model(tmp_path / "model.pt")
    assert isinstance(model, ToyNet) and family_of(model) == "toy"
    assert model.body[0].out_channels == 3
    # two 3x3 convolutions with biases: 1 -> 3 -> 1 channels
    assert saved["params"] == (9 * 1 * 3 + 3) + (9 * 3 * 1 + 1) == 58
    assert saved["net"] == spec["net"]
    prediction, target = predict(tmp_path / "model.pt", stores)
    assert history["val_loss"].iloc[0] == pytest.approx(np.mean(np.abs(prediction - target)),
                                                        rel=1e-4)


# ---------------------------------------------------------------------- a method
#: The toy method: the paper's imitation stage from the attention stage, with its own loss.
STRONG = {"stage": "imitation", "init": "attention",
          "loss": {"reconstruction": 0.2, "imitation": 0.8}}


def toy_study(**extra) -> dict:
    return validate({
        "datasets": {"tiny": {"format": "demo"}},
        "tasks": {"recon": {"datasets": ["tiny"], "teacher": TEACHER_NET,
                            "student": STUDENT_NET, "pairs": PAIRS}},
        "models": ["zf", "teacher", "student", "kd_strong"],
        "train": {"epochs": 1, "batch_size": 4},
        **extra,
    })


def test_a_method_added_to_a_study_or_the_table_gives_its_specs(monkeypatch):
    config = toy_study(methods={"kd_strong": STRONG})
    spec = model_spec(config, "recon", "kd_strong", 0)
    assert spec == {
        "task": "recon", "model": "kd_strong", "stage": "imitation", "init": "attention",
        "net": STUDENT_NET, "loss_weights": {"reconstruction": 0.2, "imitation": 0.8},
        "train": config["train"], "seed": 0,
        "teacher_net": TEACHER_NET,  # imitation reads the teacher (its cache)
    }
    assert models_needed("kd_strong", config) == ["attention", "kd_strong"]
    assert teacher_sources(config, "kd_strong") == {"cache"}
    assert "kd_strong" in study_models(config)
    assert _check_train_spec(spec) == spec  # what kdmri train accepts, complete already

    # the same method shipped: an entry of MODELS gives the same spec without methods:
    monkeypatch.setitem(MODELS, "kd_strong", Method(**STRONG))
    assert model_spec(toy_study(), "recon", "kd_strong", 0) == spec
    with pytest.raises(KdmriError, match="'kd_strong' is a shipped method"):
        toy_study(methods={"kd_strong": STRONG})


# ---------------------------------------------------------------------- a data format
def npy_volumes(cfg: dict, progress: bool = False):
    """The toy format ``npy``: one volume (S, H, W) per ``.npy`` file."""
    for source in plan_sources(cfg):
        slices = as_float32(np.load(source.path), source.path, "the array")
        yield source.split, source.name, fit_size(slices, cfg["size"])


def test_a_data_format_added_to_the_readers_prepares(tmp_path, monkeypatch):
    # the recipe: the entry in READERS; the name in the schema; its file pattern and keys
    monkeypatch.setitem(READERS, "npy", npy_volumes)
    dataset = schema()["$defs"]["dataset"]
    with_schema_entry(monkeypatch, dataset["properties"]["format"], "enum", "npy")
    with_schema_entry(monkeypatch, dataset["if"]["properties"]["format"], "enum", "npy")
    monkeypatch.setitem(sources.DEFAULT_GLOB, "npy", "*.npy")
    keys = ("format", "size", "normalization", "max_slices", "path", "glob", "split_dirs",
            "split_fractions", "seed")
    monkeypatch.setitem(readers.FORMAT_KEYS, "npy", keys)

    rng = np.random.default_rng(5)
    folder = tmp_path / "npy"
    folder.mkdir()
    arrays = {}
    for i in range(5):
        arrays[f"vol{i}"] = (rng.random((2 + i % 2, 12, 12)) * (i + 1)).astype(np.float32)
        np.save(folder / f"vol{i}.npy", arrays[f"vol{i}"])
    given = {"format": "npy", "path": str(folder)}
    filled = validate({"datasets": {"toy": given}})["datasets"]["toy"]
    assert readers.dataset_spec(filled) == {k: filled[k] for k in keys}
    assert sorted(readers.source_files(filled)) == [str(folder / f"vol{i}.npy") for i in range(5)]

    out = tmp_path / "prepared"
    assert main(["prepare", "--name", "toy", "--spec", json.dumps(given), "--out-dir", str(out),
                 "--quiet"]) == 0
    seen = []
    for split in SPLITS:
        store = read_store(out / f"{split}.h5", ["target", "volume", "slice"])
        names = [str(n) for n in store["volume_names"]]
        assert names, split
        seen += names
        for index, name in enumerate(names):
            volume = store["target"][store["volume"] == index]
            np.testing.assert_allclose(volume, arrays[name] / arrays[name].max(), rtol=1e-6)
    assert sorted(seen) == sorted(arrays)  # every file in exactly one split


def test_a_reader_without_its_name_in_the_schema_is_refused(tmp_path, monkeypatch):
    monkeypatch.setitem(READERS, "npy", npy_volumes)
    with pytest.raises(KdmriError, match=r"key 'datasets\.toy\.format'.*found 'npy'"):
        validate({"datasets": {"toy": {"format": "npy", "path": str(tmp_path)}}})


# ---------------------------------------------------------------------- the page
def page() -> str:
    return PAGE.read_text()


def section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def layer_rows() -> list[list[tuple[str, str]]]:
    """Per layer (a ``###`` heading of "Layers"), its rows: (path, what it owns)."""
    parts = section(page(), "Layers").split("\n### ")[1:]
    return [re.findall(r"^\| `([^`]+)` \| (.*) \|$", part, re.M) for part in parts]


def dotted(path: str) -> str:
    parts = path.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_layers_name_every_module_once():
    listed = [dotted(path) for rows in layer_rows() for path, _ in rows if path.endswith(".py")]
    assert sorted(listed) == sorted(module_names()), "docs/architecture.md's layer tables"


def test_the_imports_follow_the_layers_but_for_the_listed_exceptions():
    layer = {dotted(path): i for i, rows in enumerate(layer_rows())
             for path, _ in rows if path.endswith(".py")}
    against = {(module, imported) for module, imports in import_graph().items()
               for imported in imports if layer[imported] > layer[module]}
    listed = {(dotted(a), dotted(b)) for a, b in
              re.findall(r"^- `(kdmri/\S+\.py)` imports `(kdmri/\S+\.py)`", page(), re.M)}
    assert against == listed, "docs/architecture.md's exceptions to the layers"


def resolve(name: str):
    """The object a dotted name ``kdmri.module.attr.attr`` names (the longest importable
    module, then attributes)."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            target = getattr(target, attr)
        return target
    raise AssertionError(f"{name}: no module")


def test_every_name_the_page_cites_exists():
    text = page()
    cited = re.findall(r"`([^`\n]+)`", text)
    for name in {c for c in cited if re.fullmatch(r"kdmri(\.\w+)+", c)}:
        resolve(name)
    for rows in layer_rows():
        for path, owns in rows:
            names = [c for c in re.findall(r"`([^`]+)`", owns) if re.fullmatch(r"\w+", c)]
            if not names:  # (kdmri.__main__ runs the command line when imported)
                continue
            if path.endswith(".py"):
                module = importlib.import_module(dotted(path))
                missing = [n for n in names if not hasattr(module, n)]
            elif path.endswith(".yaml"):
                defs = yaml.safe_load((ROOT / path).read_text())["$defs"]
                missing = [n for n in names if n not in defs]
            else:
                continue
            assert not missing, f"{path}: the page cites {missing}"
    common = (ROOT / "workflow" / "rules" / "common.smk").read_text()
    for name in re.findall(r"`common\.smk`'s `(\w+)`", text):
        assert f"\ndef {name}(" in common, name


def test_every_path_the_page_cites_exists():
    for cited in set(re.findall(r"`((?:kdmri|tests|workflow|docs|config)/[^`\s]*)`", page())):
        path, _, test = cited.partition("::")
        found = sorted(ROOT.glob(path)) if "*" in path else [ROOT / path]
        assert found and all(p.exists() for p in found), cited
        if test:
            assert f"\ndef {test}(" in found[0].read_text(), cited


def anchors(path) -> set[str]:
    """The anchors of a Markdown page's headings, as GitHub makes them."""
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
            for heading in re.findall(r"^#+ (.*)$", path.read_text(), re.M)}


def test_every_link_of_the_page_leads_to_a_page_and_heading():
    for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]+))?\)", page()):
        linked = (PAGE.parent / target) if target else PAGE
        assert linked.is_file(), target
        assert not anchor or anchor in anchors(linked), f"{target}#{anchor}"

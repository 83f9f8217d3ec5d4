"""Tests for ``family: python`` (a network class of the user's own code): building, the
one-line errors, attention pairs by module path, and training through the one trainer.

Each test writes its module under a name of its own into its ``tmp_path`` and works from
there (the working folder is on the import path), so no two tests share a cached module.
"""

from __future__ import annotations

import hashlib
import itertools
import textwrap

import pytest
import torch
from torch import nn

from kdmri.checkpoints import load_model
from kdmri.config import validate
from kdmri.distill.pairs import layer_paths, pair_paths
from kdmri.errors import KdmriError
from kdmri.inference import cache_teacher
from kdmri.io import load_torch
from kdmri.models import build_model, count_parameters
from kdmri.models.python_family import check_forward
from kdmri.provenance import model_info
from kdmri.specs import model_spec
from kdmri.train import Trainer

_names = itertools.count()

#: A module of networks: a reconstruction net, a one-argument SR net and broken ones.
NETS = """
import torch
from torch import nn

from kdmri.mri import DataConsistency
from kdmri.models.vdsr import VDSR


class Recon(nn.Module):
    def __init__(self, channels=4):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(channels, 1, 3, padding=1))

    def forward(self, image, kspace, mask):
        return DataConsistency(kspace, mask)(image + self.body(image))


class OneArgVDSR(VDSR):
    "VDSR by hand behind a one-argument forward (what a super-resolution net has)."

    def forward(self, image):
        return image + self.cnn(image)


class Complex(Recon):
    complex = True


class TwoArgs(Recon):
    def forward(self, image, kspace):
        return image


class KeywordOnly(Recon):
    def forward(self, image, *, scale):
        return image


class WrongShape(Recon):
    def forward(self, image, kspace, mask):
        return image[:, :, 1:]


class WrongDtype(Recon):
    def forward(self, image, kspace, mask):
        return image.double()


class Pair(Recon):
    def forward(self, image, kspace, mask):
        return image, image


class Dropping(Recon):
    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.5)

    def forward(self, image, kspace, mask):
        return self.drop(image)


def helper():
    return None


class NotAModule:
    pass
"""


@pytest.fixture
def nets(tmp_path, monkeypatch) -> str:
    """The name of a fresh module holding NETS, importable from the working folder."""
    name = f"usernets_{next(_names)}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(NETS))
    monkeypatch.chdir(tmp_path)
    return name


def net(target: str, **kwargs) -> dict:
    return {"family": "python", "target": target, "kwargs": kwargs}


def error_of(spec: dict) -> str:
    with pytest.raises(KdmriError) as info:
        build_model(spec)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------- building
def test_builds_the_class_with_its_kwargs(nets):
    model = build_model(net(f"{nets}:Recon", channels=3))
    assert type(model).__name__ == "Recon" and type(model).__module__ == nets
    assert model.complex is False
    assert count_parameters(model) == (9 * 3 + 3) + (9 * 3 + 1)
    assert list(dict(model.named_modules())) == ["", "body", "body.0", "body.1", "body.2"]


def test_a_one_argument_forward_is_called_with_the_image_alone(nets):
    model = build_model(net(f"{nets}:OneArgVDSR", convs=3, channels=4))
    image = torch.rand(2, 1, 8, 8)
    out = model(image, torch.zeros(2, 1, 8, 8, dtype=torch.complex64), torch.ones(8, 8))
    torch.testing.assert_close(out, image)  # VDSR starts as the identity
    assert [k for k in model.state_dict()] == [k for k in build_model(
        {"family": "vdsr", "convs": 3, "channels": 4}).state_dict()]


def test_the_class_says_whether_it_is_complex(nets):
    assert build_model({**net(f"{nets}:Complex"), "complex": True}).complex is True
    message = error_of(net(f"{nets}:Complex"))
    assert message.startswith("net.complex:") and "has complex = True" in message


# ---------------------------------------------------------------------- errors
def test_module_not_importable(nets):
    message = error_of(net("no_such_module_here:Net"))
    assert message.startswith("net.target 'no_such_module_here:Net': module")
    assert "is not importable (No module named 'no_such_module_here')" in message
    assert "working folder" in message


def test_class_missing_from_the_module(nets):
    message = error_of(net(f"{nets}:Missing"))
    assert f"module {nets!r}" in message and "has no class 'Missing'" in message
    assert "'OneArgVDSR'" in message and "'Recon'" in message  # what it defines


@pytest.mark.parametrize("name, kind", [("helper", "a function"),
                                        ("NotAModule", "a class with bases ['object']")])
def test_not_an_nn_module_subclass(nets, name, kind):
    message = error_of(net(f"{nets}:{name}"))
    assert message == (f"net.target '{nets}:{name}': {name} is {kind}, "
                       "not a torch.nn.Module subclass")


@pytest.mark.parametrize("name", ["TwoArgs", "KeywordOnly"])
def test_wrong_forward_signature(nets, name):
    message = error_of(net(f"{nets}:{name}"))
    assert f"{name}.forward(" in message and "has the wrong signature" in message
    assert "forward(image, kspace, mask)" in message and "forward(image)" in message


def test_kwargs_the_class_does_not_take(nets):
    message = error_of(net(f"{nets}:Recon", width=3))
    assert message.startswith("net.kwargs {'width': 3}: Recon() does not take them")


def test_options_of_other_families_are_refused(nets):
    message = error_of({**net(f"{nets}:Recon"), "channels": 3})
    assert "no option(s) ['channels']" in message


@pytest.mark.parametrize("name, found", [
    ("WrongShape", "forward returned shape (2, 1, 7, 8) float32"),
    ("WrongDtype", "forward returned shape (2, 1, 8, 8) float64"),
    ("Pair", "forward returned a tuple"),
])
def test_wrong_output_is_refused_on_one_batch(nets, name, found):
    model = build_model(net(f"{nets}:{name}"))
    image = torch.rand(2, 1, 8, 8)
    with pytest.raises(KdmriError) as info:
        check_forward(model, image, torch.zeros(2, 1, 8, 8, dtype=torch.complex64),
                      torch.ones(8, 8))
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"net.target '{nets}:{name}': {found}")
    assert "expected a float32 tensor of the input image's shape (2, 1, 8, 8)" in message


def test_the_trainer_checks_the_output_before_epoch_1(nets, stores, tmp_path):
    spec = model_spec(study(nets, teacher=net(f"{nets}:WrongShape")), "recon", "teacher", 0)
    with pytest.raises(KdmriError, match="forward returned shape"):
        Trainer(spec, stores.inputs_dir / "train.h5", stores.inputs_dir / "val.h5",
                tmp_path / "out", log=lambda message: None, progress=False)
    assert not (tmp_path / "out").exists()


def test_the_check_leaves_training_as_it_was(nets):
    model = build_model(net(f"{nets}:Dropping")).train()
    image = torch.rand(2, 1, 8, 8)
    state = torch.get_rng_state()
    check_forward(model, image, torch.zeros(2, 1, 8, 8, dtype=torch.complex64), torch.ones(8, 8))
    assert model.training and torch.equal(torch.get_rng_state(), state)


# ---------------------------------------------------------------------- pairs
def test_a_pair_path_that_names_no_module_lists_the_modules(nets):
    model = build_model(net(f"{nets}:Recon"))
    with pytest.raises(KdmriError) as info:
        layer_paths(model, "body.7", "student")
    message = str(info.value)
    assert "\n" not in message
    assert message == ("pairs: the student (Recon) has no module 'body.7'; its modules: "
                       "['body', 'body.0', 'body.1', 'body.2']")


def test_pairs_by_index_need_numbered_convolutions(nets):
    model = build_model(net(f"{nets}:Recon"))
    with pytest.raises(KdmriError, match="give each pair as two module paths"):
        layer_paths(model, 2, "teacher")


def test_pairs_by_path_work_for_the_built_in_families_too():
    model = build_model({"family": "dccnn", "cascades": 2, "convs": 4, "channels": 4})
    pairs = [["cascades.1.cnn.3", "cascades.0.cnn.1"], [3, 2]]
    assert pair_paths(model, pairs, "teacher") == [
        "cascades.1.cnn.3", "cascades.0.cnn.5", "cascades.1.cnn.5"]
    assert pair_paths(model, pairs, "student") == [
        "cascades.0.cnn.1", "cascades.0.cnn.3", "cascades.1.cnn.3"]


def study(nets: str, **nets_by_role) -> dict:
    recon = {"datasets": ["tiny"], "pairs": [["body.1", "body.1"]],
             "teacher": net(f"{nets}:Recon", channels=6), "student": net(f"{nets}:Recon"),
             **nets_by_role}
    return validate({"datasets": {"tiny": {"format": "demo"}}, "tasks": {"recon": recon},
                     "train": {"epochs": 2, "batch_size": 4},
                     "stages": {"attention": {"epochs": 1}}})


def test_config_wants_pairs_by_path_for_a_python_network(nets):
    with pytest.raises(KdmriError) as info:
        study(nets, pairs=[[3, 2]])
    message = str(info.value)
    assert message.startswith("config: key 'tasks.recon.pairs': the teacher and student network "
                              "(family python) is addressed by module path")
    assert "found [3, 2]" in message


@pytest.mark.parametrize("net_, message", [
    ({"family": "python"}, "'target' is a required property"),
    ({"family": "python", "target": "mynets.Net"}, 'expected "package.module:Class"'),
    ({"family": "python", "target": "m:Net", "channels": 4},
     "unknown key 'tasks.recon.teacher.channels'; allowed keys here: "
     "['complex', 'family', 'kwargs', 'target']"),
    ({"family": "dccnn", "kwargs": {}}, "key 'tasks.recon.teacher.kwargs': an option of family "
                                        "python only"),
])
def test_schema_of_a_python_network(nets, net_, message):
    with pytest.raises(KdmriError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        study(nets, teacher=net_)


# ---------------------------------------------------------------------- training
def train(spec, stores, out, **kwargs):
    trainer = Trainer(spec, stores.inputs_dir / "train.h5", stores.inputs_dir / "val.h5", out,
                      log=lambda message: None, progress=False, **kwargs)
    trainer.run()
    return load_torch(out / "model.pt")


@pytest.mark.parametrize("by_hand, built_in", [
    (lambda nets: net("kdmri.models.dccnn:DCCNN", cascades=2, convs=3, channels=4),
     {"family": "dccnn", "cascades": 2, "convs": 3, "channels": 4}),
    (lambda nets: net(f"{nets}:OneArgVDSR", convs=3, channels=4),
     {"family": "vdsr", "convs": 3, "channels": 4}),
])
def test_a_user_network_trains_to_the_same_weights_as_the_built_in(nets, stores, tmp_path,
                                                                    by_hand, built_in):
    config = study(nets, teacher=by_hand(nets))
    user = train(model_spec(config, "recon", "teacher", 0), stores, tmp_path / "user")
    config = study(nets, teacher=built_in, student=built_in, pairs=[[1, 1]])
    reference = train(model_spec(config, "recon", "teacher", 0), stores, tmp_path / "built_in")
    assert user["state_dict"].keys() == reference["state_dict"].keys()
    for key, value in reference["state_dict"].items():
        assert torch.equal(user["state_dict"][key], value), key
    assert user["params"] == reference["params"]
    assert user["net"] == by_hand(nets) and "source" not in reference


def test_model_file_holds_the_spec_weights_and_source_never_code(nets, stores, tmp_path):
    spec = model_spec(study(nets), "recon", "teacher", 0)
    ckpt = train(spec, stores, tmp_path / "teacher")
    source = tmp_path / f"{nets}.py"
    assert ckpt["net"] == {"family": "python", "target": f"{nets}:Recon",
                           "kwargs": {"channels": 6}}
    assert ckpt["source"] == {"target": f"{nets}:Recon", "file": str(source),
                              "sha256": hashlib.sha256(source.read_bytes()).hexdigest()}
    # weights only: the file loads without unpickling any class of the user's module
    torch.load(tmp_path / "teacher" / "model.pt", map_location="cpu", weights_only=True)
    model, _ = load_model(tmp_path / "teacher" / "model.pt", expect_net=spec["net"])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                   ckpt["state_dict"].values(), strict=True))
    assert model_info(tmp_path / "teacher" / "model.pt")["source"] == ckpt["source"]


def test_attention_stage_with_pairs_by_path(nets, stores, tmp_path):
    config = study(nets)
    teacher = tmp_path / "teacher"
    train(model_spec(config, "recon", "teacher", 0), stores, teacher)
    inputs = {s: stores.inputs_dir / f"{s}.h5" for s in ("train", "val")}
    cache_teacher(teacher / "model.pt", model_spec(config, "recon", "attention", 0)["teacher_net"],
                  config["tasks"]["recon"]["pairs"], inputs, tmp_path / "cache",
                  torch.device("cpu"))
    spec = model_spec(config, "recon", "attention", 0)
    ckpt = train(spec, stores, tmp_path / "attention", cache_dir=tmp_path / "cache")
    assert ckpt["spec"]["pairs"] == [["body.1", "body.1"]]

    other = dict(spec, pairs=[["body.2", "body.1"]])  # the cache was made for body.1
    with pytest.raises(KdmriError, match=r"cached attention maps are for teacher layers "
                                         r"\['body.1'\]"):
        Trainer(other, inputs["train"], inputs["val"], tmp_path / "other",
                cache_dir=tmp_path / "cache", log=lambda message: None, progress=False)
    # the student's side is the student's own: another student layer uses the same maps
    Trainer(dict(spec, pairs=[["body.1", "body.2"]]), inputs["train"], inputs["val"],
            tmp_path / "student_side", cache_dir=tmp_path / "cache", log=lambda message: None,
            progress=False)
    with pytest.raises(KdmriError, match=r"pairs: the teacher \(Recon\) has no module 'head'"):
        cache_teacher(teacher / "model.pt", spec["teacher_net"], [["head", "body.1"]], inputs,
                      tmp_path / "other_cache", torch.device("cpu"))
    assert not (tmp_path / "other_cache").exists()


def test_an_nn_module_is_what_the_registry_returns(nets):
    assert isinstance(build_model(net(f"{nets}:Recon")), nn.Module)

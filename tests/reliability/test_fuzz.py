"""Fuzzing with hypothesis: malformed configs, and stores and checkpoints with random bytes
overwritten or cut off, give either a correct result or one clear error line, never
anything else (another exception, a crash, or wrong numbers read without complaint).

Stores can promise this because every byte of a kdmri store is checksummed (see
:mod:`kdmri.data.store`); checkpoints because :func:`kdmri.io.load_torch` verifies the
CRC-32 of every record of the archive before torch reads it.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kdmri.config import load_config, validate
from kdmri.data.store import SliceDataset, read_store, store_info, write_store
from kdmri.errors import KdmriError
from kdmri.io import load_torch, save_torch
from kdmri.masks import load_mask
from kdmri.methods import MODELS, STAGES
from kdmri.specs import model_spec, net_spec
from tests.reliability.helpers import ROOT

FUZZ = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
BASE_TEXT = (ROOT / "config" / "test.yaml").read_text()
BASE = yaml.safe_load(BASE_TEXT)


def _assert_clear(error: KdmriError, source: str) -> None:
    message = str(error)
    assert message and "\n" not in message, message
    assert source in message, message


# ---------------------------------------------------------------------- configs
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
yaml_keys = st.text(max_size=10) | st.integers(-3, 3) | st.booleans() | st.none()


def _paths(node, prefix=()):
    """Every (path, value) in a nested config, the root included."""
    yield prefix, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*prefix, i))


@st.composite
def malformed_configs(draw):
    """The test config after 1 to 4 random edits: a value replaced by anything, a key
    deleted, renamed (a typo) or added, a list emptied, a mapping replaced by a scalar."""
    config = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 4))):
        paths = list(_paths(config))
        path, value = draw(st.sampled_from(paths))
        edit = draw(st.sampled_from(["replace", "delete", "typo", "add", "empty"]))
        if not path:
            if edit == "replace":
                config = draw(json_values)
            continue
        parent = config
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        if edit == "replace":
            parent[key] = draw(json_values)
        elif edit == "delete":
            del parent[key]
        elif edit == "typo" and isinstance(parent, dict):
            parent[f"{key}{draw(st.sampled_from(['s', '_', 'x']))}"] = parent.pop(key)
        elif edit == "add" and isinstance(value, dict):
            value[draw(yaml_keys)] = draw(json_values)
        elif edit == "empty" and isinstance(value, (list, dict)):
            parent[key] = type(value)()
        if not isinstance(config, (dict, list)):
            break
    return config


def _same(a, b) -> bool:
    return a is b or a == b  # ``is``: a NaN given is the NaN kept


def _assert_keeps(filled, given, where="config") -> None:
    """Everything ``given`` says is in ``filled`` unchanged; defaults only add keys."""
    if isinstance(given, dict):
        assert isinstance(filled, dict), where
        for key, value in given.items():
            assert key in filled, f"{where}.{key} was dropped"
            _assert_keeps(filled[key], value, f"{where}.{key}")
    else:
        assert type(filled) is type(given) and _same(filled, given), (where, filled, given)


def _assert_valid_study(filled: dict, given: dict) -> None:
    """A config that validated: it keeps what was given, is stable, and every model's spec
    is made of its settings."""
    _assert_keeps(filled, given)
    assert validate(filled) == filled  # defaults filled: valid and stable
    for task, model in itertools.product(filled["tasks"], MODELS):
        spec = model_spec(filled, task, model, filled["seeds"][0])
        assert spec["task"] == task and spec["model"] == model
        role = STAGES[MODELS[model].stage].network
        assert spec["net"] == net_spec(filled["tasks"][task][role])  # as jobs see the net
        assert spec["train"]["epochs"] >= 1 and spec["train"]["batch_size"] >= 1


@FUZZ
@given(malformed_configs())
@example(copy.deepcopy(BASE))  # the unedited config: the valid branch always runs
def test_malformed_config_gives_a_clear_error_or_a_valid_study(config):
    given_config = copy.deepcopy(config)
    try:
        filled = validate(config, source="fuzzed.yaml")
    except KdmriError as error:
        _assert_clear(error, "fuzzed.yaml")
        return
    assert config == given_config  # the caller's dict is not modified
    _assert_valid_study(filled, given_config)


@st.composite
def edited_yaml(draw):
    """The test config's YAML text with a run of characters replaced by random text."""
    start = draw(st.integers(0, len(BASE_TEXT)))
    end = draw(st.integers(start, min(len(BASE_TEXT), start + 8)))
    return BASE_TEXT[:start] + draw(st.text(max_size=8)) + BASE_TEXT[end:]


@FUZZ
@given(st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1"))
       | edited_yaml())
@example(BASE_TEXT)
def test_random_yaml_text_gives_a_clear_error_or_a_valid_study(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("yaml") / "config.yaml"
    path.write_text(text)
    try:
        loaded = load_config(path)
    except KdmriError as error:
        _assert_clear(error, str(path))
        return
    _assert_valid_study(loaded, yaml.safe_load(path.read_text()) or {})


# ---------------------------------------------------------------------- stores
def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "target": rng.random((4, 8, 8)).astype(np.float32),
        "zf": (rng.standard_normal((4, 8, 8)) + 1j * rng.standard_normal((4, 8, 8))
               ).astype(np.complex64),
        "mask": (rng.random((8, 8)) < 0.5).astype(np.float32),
        "volume": np.array([0, 0, 1, 1], np.int32),
        "slice": np.array([0, 1, 0, 1], np.int32),
    }


ATTRS = {"volume_names": ["sub-01", "sub-02"], "dataset": "demo", "pairs": [[3, 2]],
         "teacher_net": "0123456789abcdef"}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "pristine.h5"
    write_store(path, _arrays(), attrs=ATTRS)
    return path, store_info(path)


def _read_everything(path: Path) -> tuple[dict, dict, dict]:
    info = store_info(path)
    arrays = read_store(path, ["target", "zf", "mask", "volume", "slice"])
    chunked = SliceDataset(path, keys=["target", "zf"], extra=["mask"], in_memory=False)
    try:
        batch = chunked.batch(np.array([3, 0, 2, 1]))
    finally:
        if chunked._handle is not None:
            chunked._handle.close()
    return info, arrays, batch


@st.composite
def damage(draw, size: int):
    """Overwrite 1 to 8 runs of random bytes, or cut the file off somewhere."""
    if draw(st.booleans()) and draw(st.booleans()):
        return ("cut", draw(st.integers(0, size - 1)))
    runs = draw(st.lists(st.tuples(st.integers(0, size - 1), st.binary(min_size=1, max_size=8)),
                         min_size=1, max_size=8))
    return ("overwrite", runs)


def _apply(data: bytes, change) -> bytes:
    kind, detail = change
    if kind == "cut":
        return data[:detail]
    raw = bytearray(data)
    for offset, patch in detail:
        raw[offset: offset + len(patch)] = patch[: len(raw) - offset]
    return bytes(raw[: len(data)])


@FUZZ
@given(data=st.data())
def test_damaged_store_gives_a_clear_error_or_the_right_numbers(pristine, tmp_path_factory,
                                                                data):
    original_path, original_info = pristine
    original = original_path.read_bytes()
    change = data.draw(damage(len(original)))
    path = tmp_path_factory.mktemp("damaged") / "store.h5"  # a new file: HDF5 caches by inode
    path.write_bytes(_apply(original, change))
    try:
        info, arrays, batch = _read_everything(path)
    except KdmriError as error:
        _assert_clear(error, str(path))
        return
    expected = _arrays()
    assert info == original_info
    for key, value in expected.items():
        assert arrays[key].dtype == value.dtype and np.array_equal(arrays[key], value), key
    assert arrays["volume_names"].tolist() == ATTRS["volume_names"]
    order = np.array([3, 0, 2, 1])
    assert np.array_equal(batch["target"].numpy(), expected["target"][order])
    assert np.array_equal(batch["zf"].numpy(), expected["zf"][order])


# ---------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    obj = {"format": "kdmri-model/1", "net": {"family": "dccnn", "convs": 3},
           "state_dict": {"w": torch.arange(64, dtype=torch.float32).reshape(8, 8)},
           "epoch": 3, "history": [{"epoch": 1, "val_psnr": 21.5}]}
    save_torch(obj, path)
    return path, obj


@FUZZ
@given(data=st.data())
def test_damaged_checkpoint_gives_a_clear_error_or_the_right_weights(checkpoint,
                                                                     tmp_path_factory, data):
    original_path, obj = checkpoint
    original = original_path.read_bytes()
    path = tmp_path_factory.mktemp("damaged") / "model.pt"
    path.write_bytes(_apply(original, data.draw(damage(len(original)))))
    try:
        loaded = load_torch(path)
    except KdmriError as error:
        _assert_clear(error, str(path))
        return
    assert loaded.keys() == obj.keys()
    assert torch.equal(loaded["state_dict"]["w"], obj["state_dict"]["w"])
    assert {k: v for k, v in loaded.items() if k != "state_dict"} == {
        k: v for k, v in obj.items() if k != "state_dict"}


# ---------------------------------------------------------------------- masks
@pytest.fixture(scope="module")
def mask_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("mask") / "mask.npy"
    mask = np.zeros((8, 8), np.float32)
    mask[:, ::3] = 1
    np.save(path, mask)
    return path


@FUZZ
@given(data=st.data())
def test_damaged_mask_gives_a_clear_error_or_a_binary_mask_of_the_right_shape(
        mask_file, tmp_path_factory, data):
    """A .npy file has no checksum: a damaged mask may still be a valid mask, but the
    reader never returns anything other than a 0/1 float32 mask of the expected shape,
    holding the values the file holds."""
    original = mask_file.read_bytes()
    path = tmp_path_factory.mktemp("damaged") / "mask.npy"
    path.write_bytes(_apply(original, data.draw(damage(len(original)))))
    try:
        mask = load_mask(path, (8, 8))
    except KdmriError as error:
        _assert_clear(error, str(path))
        return
    assert mask.shape == (8, 8) and mask.dtype == np.float32
    assert set(np.unique(mask).tolist()) <= {0.0, 1.0}
    np.testing.assert_array_equal(mask, np.load(path))  # what the file holds, as it holds it
    if path.read_bytes() == original:
        np.testing.assert_array_equal(mask, np.load(mask_file))

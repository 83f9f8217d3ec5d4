"""Bad input, clear errors: every user mistake below runs the real CLI and must end with
exit status 2, exactly one stderr line ``kdmri: error: ...`` naming the file or key and
what was expected or found, no traceback, and no output file.

Each call runs ``kdmri.cli.main`` (the ``kdmri`` console script) in a process of its own,
forked by ``cli_runner.py`` so that torch is imported once; two cases run again through
``python -m kdmri`` and must answer the same. The list of bad inputs covered here and in
``test_config_errors.py`` and ``test_disk_full.py``, with the count: ``tests/reliability/README.md``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest

from kdmri.checkpoints import STATE_FORMAT
from kdmri.data.store import read_store, write_store
from kdmri.io import save_torch
from kdmri.keys import digest
from tests.reliability.helpers import (
    PAIRS,
    STUDENT_NET,
    TEACHER_NET,
    assert_user_error,
    copy_store,
    files_under,
    run_many,
    run_parallel,
    spec,
    truncate,
    write_model_file,
)


@dataclass
class Case:
    args: list
    names: list  # what the one error line must contain
    outputs: list = field(default_factory=list)  # must hold no file afterwards
    unchanged: dict = field(default_factory=dict)  # path -> bytes it must still hold


def _json(obj) -> str:
    return json.dumps(obj)


def build_cases(root: Path, stores) -> dict[str, Case]:
    inputs, data = stores.inputs_dir, stores.data_dir
    out = root / "out"
    bad = root / "bad"
    bad.mkdir()
    mask_spec = _json({"kind": "random", "acceleration": 4})
    cases: dict[str, Case] = {}

    def predict_zf(name, store, *names):
        o = out / name
        cases[name] = Case(["predict", "--model", "zf", "--inputs", store, "--out", o / "pred.h5",
                            "--info", o / "predict.json"], [store, *names], [o])

    def undersample(name, data_dir, mask, *names):
        o = out / name
        cases[name] = Case(["undersample", "--data-dir", data_dir, "--mask", mask,
                            "--out-dir", o], list(names), [o])

    def evaluate(name, predictions, *names):
        o = out / name
        cases[name] = Case(["evaluate", "--inputs", inputs / "test.h5", "--predictions",
                            predictions, "--out", o / "metrics.csv"], [predictions, *names], [o])

    def mask(name, spec_text, like, *names):
        o = out / name
        cases[name] = Case(["mask", "--spec", spec_text, "--like", like, "--out", o / "mask.npy"],
                           list(names), [o])

    def train(name, spec_obj, *names, extra=(), out_dir=None, inputs_dir=inputs):
        o = out_dir or out / name
        text = spec_obj if isinstance(spec_obj, str) else _json(spec_obj)
        cases[name] = Case(["train", "--spec", text, "--inputs-dir", inputs_dir, "--out-dir", o,
                            "--device", "cpu", "--threads", "1", *extra], list(names), [o])

    # ---- HDF5 stores
    truncated = bad / "truncated.h5"
    shutil.copy(inputs / "test.h5", truncated)
    truncate(truncated, 0.6)
    predict_zf("truncated_hdf5", truncated, "HDF5")

    corrupt = bad / "corrupt_pred.h5"
    test = read_store(inputs / "test.h5", ["target", "volume", "slice"])
    write_store(corrupt, {"output": test["target"], "volume": test["volume"],
                          "slice": test["slice"]})
    with h5py.File(corrupt, "r") as handle:  # flip bytes inside the first data chunk
        offset = handle["output"].id.get_chunk_info(0).byte_offset
    raw = bytearray(corrupt.read_bytes())
    raw[offset + 100: offset + 104] = bytes(b ^ 0xFF for b in raw[offset + 100: offset + 104])
    corrupt.write_bytes(bytes(raw))
    evaluate("corrupt_hdf5_checksum", corrupt, "corrupt or unreadable HDF5 store")

    not_hdf5 = bad / "notes.h5"
    not_hdf5.write_text("subject,slice\nsub-01,3\n")
    mask("not_hdf5", mask_spec, not_hdf5, not_hdf5, "not a readable HDF5 file")

    no_zf = copy_store(inputs / "test.h5", bad / "no_zf.h5", zf=None)
    predict_zf("missing_key", no_zf, "missing key 'zf'")

    four_d = copy_store(data / "train.h5", bad / "four_d.h5",
                        target=read_store(data / "train.h5", ["target"])["target"][:, None])
    mask("wrong_dimensionality", mask_spec, four_d, four_d, "'target' must have 3 dims",
         "(8, 1, 16, 16)")

    nan_dir = bad / "nan_data"
    shutil.copytree(data, nan_dir)
    target = read_store(data / "val.h5", ["target"])["target"]
    target[1, 2, 3] = np.nan
    copy_store(data / "val.h5", nan_dir / "val.h5", target=target)  # train.h5 stays good
    mask_file = bad / "mask.npy"
    np.save(mask_file, stores.mask)
    undersample("nan_values", nan_dir, mask_file, nan_dir / "val.h5", "'target'", "NaN")

    inf_pred = bad / "inf_pred.h5"
    output = test["target"].copy()
    output[0, 5, 5] = np.inf
    write_store(inf_pred, {"output": output, "volume": test["volume"], "slice": test["slice"]})
    evaluate("infinite_values", inf_pred, "'output'", "infinite")

    short_pred = bad / "short_pred.h5"
    write_store(short_pred, {"output": test["target"][:1], "volume": test["volume"][:1],
                             "slice": test["slice"][:1]})
    evaluate("predictions_do_not_match_targets", short_pred, "(1, 16, 16)", "(2, 16, 16)")

    # ---- masks and mask settings
    small = bad / "mask_8x8.npy"
    np.save(small, np.ones((8, 8), np.float32))
    undersample("mask_wrong_shape", data, small, small, "(8, 8)", "(16, 16)")

    half = bad / "mask_half.npy"
    np.save(half, np.full((16, 16), 0.5, np.float32))
    undersample("mask_not_binary", data, half, half, "only 0 and 1", "0.5")

    cube = bad / "mask_3d.npy"
    np.save(cube, np.ones((2, 16, 16), np.float32))
    undersample("mask_not_2d", data, cube, cube, "2-D", "(2, 16, 16)")

    text_mask = bad / "mask_text.npy"
    text_mask.write_text("1 0 1 0\n")
    undersample("mask_not_npy", data, text_mask, text_mask, "not a readable .npy mask")

    mask("acceleration_below_1", _json({"kind": "random", "acceleration": 0.5}),
         data / "train.h5", "acceleration", ">= 1", "0.5")
    mask("unknown_mask_kind", _json({"kind": "spiral", "acceleration": 4}), data / "train.h5",
         "'spiral'", "equispaced")
    mask("spec_not_json", "{kind: random", data / "train.h5", "--spec", "not valid JSON")
    missing_spec = bad / "missing_spec.json"
    mask("missing_spec_file", f"@{missing_spec}", data / "train.h5", missing_spec, "not found")

    # ---- training specs, folders and checkpoints
    # a model's name is a method's, shipped or a study's own: any name of letters, digits
    # and underscores (the stage decides how it trains), never a path or a blank
    train("bad_model_name", dict(spec(), model="kd/../student"), "--spec", "'model'",
          "'kd/../student'", "a method's name")
    train("unknown_stage", dict(spec(), stage="distill"), "--spec", "'stage'", "'distill'",
          "imitation")
    wrong_type = spec()
    wrong_type["train"]["epochs"] = "ten"
    train("wrong_value_type", wrong_type, "'train.epochs'", "integer", "'ten'")

    empty = bad / "empty_folder"
    empty.mkdir()
    train("empty_data_folder", spec(), empty, "no train.h5", "nothing", inputs_dir=empty)
    undersample("empty_data_folder_undersample", empty, mask_file, empty, "no train.h5")

    student_pt = write_model_file(bad / "student" / "model.pt", STUDENT_NET)
    teacher_pt = write_model_file(bad / "teacher" / "model.pt", TEACHER_NET)
    o = out / "wrong_teacher_architecture"
    cases["wrong_teacher_architecture"] = Case(
        ["cache-teacher", "--teacher", student_pt, "--spec",
         _json({"teacher_net": TEACHER_NET, "pairs": PAIRS}), "--inputs-dir", inputs,
         "--out-dir", o, "--device", "cpu"],
        [student_pt, "teacher architecture", "'convs': 3", "'convs': 4"], [o])
    train("wrong_init_architecture", spec("kd_attention"), teacher_pt,
          "initial student architecture", "'convs': 4", "'convs': 3",
          extra=["--init", teacher_pt])

    resumed = out / "checkpoint_of_another_config"
    other = spec(lr=2e-3)
    last = resumed / "checkpoint" / "last.pt"
    save_torch({"format": STATE_FORMAT, "spec": other, "spec_digest": digest(other), "epoch": 1,
                "completed": False}, last)
    train("checkpoint_of_another_config", spec(), last, "different config", "train.lr", "0.002",
          "0.001", out_dir=resumed)
    cases["checkpoint_of_another_config"].outputs = [resumed / "model.pt",
                                                     resumed / "history.csv"]
    cases["checkpoint_of_another_config"].unchanged = {last: last.read_bytes()}

    truncated_pt = bad / "truncated_model.pt"
    shutil.copy(student_pt, truncated_pt)
    truncate(truncated_pt, 0.5)
    o = out / "truncated_checkpoint"
    cases["truncated_checkpoint"] = Case(
        ["predict", "--model", truncated_pt, "--inputs", inputs / "test.h5", "--out",
         o / "pred.h5", "--info", o / "predict.json", "--device", "cpu"],
        [truncated_pt, "not a readable torch checkpoint"], [o])
    foreign = bad / "foreign.pt"
    save_torch({"weights": {"w": np.zeros(3).tolist()}}, foreign)
    o = out / "not_a_kdmri_model"
    cases["not_a_kdmri_model"] = Case(
        ["predict", "--model", foreign, "--inputs", inputs / "test.h5", "--out", o / "pred.h5",
         "--info", o / "predict.json", "--device", "cpu"],
        [foreign, "not a kdmri model file"], [o])

    train("unknown_device", spec(), "'gpu0'", "cpu", extra=["--device", "gpu0"])

    a_file = bad / "results_is_a_file"
    a_file.write_text("not a folder\n")
    cases["unwritable_results_folder"] = Case(
        ["mask", "--spec", mask_spec, "--like", data / "train.h5", "--out",
         a_file / "recon" / "mask.npy"],
        [a_file / "recon" / "mask.npy", "expected a folder", "found a file"], [a_file / "recon"])
    cases["unwritable_results_folder"].unchanged = {a_file: a_file.read_bytes()}
    train("unwritable_training_folder", spec(), a_file / "student", "expected a folder",
          "found a file", out_dir=a_file / "student")

    undersample("good_undersample", data, mask_file)  # the control: good inputs succeed
    return cases


@pytest.fixture(scope="module")
def bad_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bad_inputs")


@pytest.fixture(scope="module")
def outcomes(stores, bad_root):
    """Build every bad input, then run every CLI call in its own process."""
    cases = build_cases(bad_root, stores)
    results = run_many({name: case.args for name, case in cases.items()}, bad_root / "runs")
    return {name: (case, results[name]) for name, case in cases.items()}


CASE_NAMES = [
    "truncated_hdf5", "corrupt_hdf5_checksum", "not_hdf5", "missing_key", "wrong_dimensionality",
    "nan_values", "infinite_values", "predictions_do_not_match_targets", "mask_wrong_shape",
    "mask_not_binary", "mask_not_2d", "mask_not_npy", "acceleration_below_1", "unknown_mask_kind",
    "spec_not_json", "missing_spec_file", "bad_model_name", "unknown_stage", "wrong_value_type",
    "empty_data_folder", "empty_data_folder_undersample", "wrong_teacher_architecture",
    "wrong_init_architecture", "checkpoint_of_another_config", "truncated_checkpoint",
    "not_a_kdmri_model", "unknown_device", "unwritable_results_folder",
    "unwritable_training_folder",
]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_gives_one_clear_line_and_no_output(outcomes, name):
    case, result = outcomes[name]
    assert_user_error(result, *case.names)
    for path in case.outputs:
        assert files_under(path) == [], f"{name}: partial output {files_under(path)} in {path}"
    for path, content in case.unchanged.items():
        assert path.read_bytes() == content, f"{name}: {path} was modified"


def test_every_case_is_checked(outcomes):
    assert sorted(outcomes) == sorted([*CASE_NAMES, "good_undersample"])


def test_nan_in_one_split_leaves_no_store_of_the_others(outcomes):
    """undersample checks all three splits before it writes the first output."""
    case, result = outcomes["nan_values"]
    assert result.returncode == 2
    assert not case.outputs[0].exists()


#: Cases run again through ``python -m kdmri`` itself (the interpreter's own entry point).
ENTRY_POINT_CASES = ["missing_key", "unknown_stage"]


def test_python_m_kdmri_gives_the_same_answers(outcomes, bad_root, stores, tmp_path_factory):
    """The forked runner behaves as ``python -m kdmri``: same status, same one line."""
    root = tmp_path_factory.mktemp("entry_point")
    cases = build_cases(root, stores)
    results = run_parallel({name: cases[name].args for name in ENTRY_POINT_CASES})
    for name in ENTRY_POINT_CASES:
        line = assert_user_error(results[name], *cases[name].names)
        forked = outcomes[name][1].stderr.strip()
        assert line.replace(str(root), "ROOT") == forked.replace(str(bad_root), "ROOT")
        for path in cases[name].outputs:
            assert files_under(path) == []


def test_a_good_call_of_the_same_commands_succeeds(outcomes):
    """The bad-input calls fail because of the input: the same call with good files works."""
    case, result = outcomes["good_undersample"]
    assert result.returncode == 0, result.stderr
    assert files_under(case.outputs[0]) == ["test.h5", "train.h5", "val.h5"]

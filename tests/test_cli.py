"""The ``kdmri`` command line (kdmri.cli), run in this process through ``main``: argument
parsing and help of every subcommand, one error line ``kdmri: error: ...`` with exit status
2 naming the option, file or key for bad input to each subcommand, and the data stages on
the tiny stores of ``conftest.stores``.

The bad inputs run through the real entry point, each in a process of its own, are in
``reliability/test_bad_inputs.py``; the cases here are the others (options and specs of
every subcommand). ``predict`` and ``evaluate`` succeeding: ``test_inference.py`` and
``test_evaluate.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kdmri import __version__, cli
from kdmri.checkpoints import load_model
from kdmri.cli import build_parser, main
from kdmri.data.store import read_store, store_info
from kdmri.errors import KdmriError
from kdmri.inference import run_model
from kdmri.io import load_torch
from kdmri.masks import create_mask_func, mask_params
from kdmri.train import Trainer
from tests.oracles import np_fft2c, np_ifft2c
from tests.reliability.helpers import (
    PAIRS,
    TEACHER_NET,
    assert_user_error,
    copy_store,
    files_under,
    spec,
    write_model_file,
)

SUBCOMMANDS = {"prepare", "mask", "undersample", "train", "cache-teacher", "predict", "evaluate",
               "tables", "sweep", "figures", "provenance", "bench", "export", "apply"}
MASK_SPEC = json.dumps({"kind": "random", "acceleration": 4})


def run(capsys, *argv) -> SimpleNamespace:
    """``main(argv)`` in this process: exit status (argparse's too), stdout and stderr."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)


def subcommands() -> dict:
    """Every subcommand's parser by name."""
    parser = build_parser()
    (action,) = [a for a in parser._actions if a.dest == "command"]
    return action.choices


# ---------------------------------------------------------------------- parsing and help
def test_the_parser_imports_no_subcommand_module():
    """Building the parser (every call does) imports none of the modules a subcommand runs:
    ``kdmri bench``, the tables and the figures are imported only when they run."""
    code = ("import sys; from kdmri.cli import build_parser; build_parser(); "
            "print(sorted(m for m in sys.modules if m.startswith('kdmri.') or m == 'torch'))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout
    for module in ("kdmri.bench", "kdmri.tables", "kdmri.figures", "kdmri.provenance",
                   "kdmri.train", "torch"):
        assert f"'{module}'" not in loaded, loaded


def test_help_lists_every_subcommand_with_its_summary(capsys):
    result = run(capsys, "--help")
    assert result.returncode == 0
    choices = subcommands()
    assert set(choices) == SUBCOMMANDS
    for name, sub in choices.items():
        summary = sub.description.split(" (")[0]
        assert name in result.stdout and summary[:30] in " ".join(result.stdout.split()), name


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_subcommand_help_shows_its_usage_and_required_options(capsys, name):
    result = run(capsys, name, "--help")
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith(f"usage: kdmri {name}")
    required = [a.option_strings[0] for a in subcommands()[name]._actions if a.required]
    for option in required:
        assert option in result.stdout.split("options:")[0], option  # in the usage line
    assert "--help" in result.stdout


def test_version(capsys):
    result = run(capsys, "--version")
    assert result.returncode == 0 and result.stdout.strip() == f"kdmri {__version__}"


@pytest.mark.parametrize("argv, words", [
    ([], ["the following arguments are required: COMMAND"]),
    (["reconstruct"], ["invalid choice: 'reconstruct'", "prepare"]),
    (["predict", "--model", "zf", "--inputs", "x.h5"], ["required: --out, --info"]),
    (["train", "--spec", "{}", "--inputs-dir", ".", "--out-dir", "o", "--threads", "0"],
     ["argument --threads: expected a positive integer, found '0'"]),
    (["predict", "--model", "zf", "--inputs", "x.h5", "--out", "p.h5", "--info", "i.json",
      "--repeats", "some"], ["argument --repeats: expected a positive integer, found 'some'"]),
    (["mask", "--spec", "{}", "--like", "x.h5", "--out", "m.npy", "--seed", "1.5"],
     ["argument --seed: invalid int value: '1.5'"]),
    (["figures", "--kind", "movie", "--out", "f.png"], ["argument --kind: invalid choice"]),
])
def test_bad_arguments_are_argparse_errors_naming_the_option(capsys, argv, words):
    """Exit status 2, the subcommand's usage, then one error line naming the argument."""
    result = run(capsys, *argv)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("usage: kdmri")
    assert lines[-1].startswith("kdmri") and ": error: " in lines[-1]
    for word in words:
        assert word in lines[-1], (word, lines[-1])


# ---------------------------------------------------------------------- user errors
def error_cases(data: Path, inputs: Path, tmp: Path) -> dict[str, tuple[list, list, Path]]:
    """name -> (argv, what the error line must contain, path that must not appear), for
    the target stores in ``data``, the input stores in ``inputs`` and a scratch folder."""
    out = tmp / "out"
    student = spec(epochs=1)
    no_weights = {k: v for k, v in student.items() if k != "loss_weights"}
    imitation = dict(spec("kd_imitation", epochs=1))
    imitation.pop("teacher_net")
    attention = dict(spec("attention", epochs=1))
    attention.pop("pairs")
    teacher_spec = json.dumps({"teacher_net": TEACHER_NET, "pairs": PAIRS})

    def train(spec_obj):
        return ["train", "--spec", json.dumps(spec_obj), "--inputs-dir", inputs,
                "--out-dir", out, "--device", "cpu"]

    def evaluate(*extra):
        return ["evaluate", "--inputs", inputs / "test.h5", "--predictions", tmp / "pred.h5",
                "--out", out / "metrics.csv", *extra]

    return {
        "prepare_spec_not_an_object": (["prepare", "--name", "d", "--spec", "[1]",
                                        "--out-dir", out], ["--spec must be a JSON object"], out),
        "prepare_unknown_format": (["prepare", "--name", "d", "--spec", '{"format": "analyze"}',
                                    "--out-dir", out],
                                   ["'datasets.d.format'", "'analyze'", "nifti"], out / "info.json"),
        "prepare_missing_path": (["prepare", "--name", "d", "--spec",
                                  json.dumps({"format": "nifti", "path": str(tmp / "nowhere")}),
                                  "--out-dir", out],
                                 [tmp / "nowhere", "data folder not found", "'path'"],
                                 out / "info.json"),
        "mask_without_acceleration": (["mask", "--spec", '{"kind": "random"}', "--like",
                                       data / "train.h5", "--out", out / "m.npy"],
                                      ["--spec", "'acceleration'"], out),
        "mask_like_missing": (["mask", "--spec", MASK_SPEC, "--like", tmp / "none.h5",
                               "--out", out / "m.npy"], [tmp / "none.h5", "store not found"],
                              out),
        "undersample_no_data_folder": (["undersample", "--data-dir", tmp / "no_data", "--mask",
                                        tmp / "m.npy", "--out-dir", out],
                                       [tmp / "no_data", "data folder not found"], out),
        "undersample_no_mask": (["undersample", "--data-dir", data, "--mask", tmp / "none.npy",
                                 "--out-dir", out], [tmp / "none.npy", "mask file not found"],
                                out),
        "train_spec_file_missing": (["train", "--spec", f"@{tmp / 'spec.json'}", "--inputs-dir",
                                     inputs, "--out-dir", out],
                                    [tmp / "spec.json", "--spec file not found"], out),
        "train_spec_without_loss_weights": (train(no_weights), ["--spec", "'loss_weights'",
                                                                "required"], out),
        "train_imitation_without_teacher": (train(imitation), ["'teacher_net'",
                                                               "imitation loss"], out),
        "train_attention_without_pairs": (train(attention), ["'pairs'", "attention loss"], out),
        "cache_teacher_without_pairs": (["cache-teacher", "--teacher", tmp / "t.pt", "--spec",
                                         json.dumps({"teacher_net": TEACHER_NET}),
                                         "--inputs-dir", inputs, "--out-dir", out],
                                        ["--spec", "'pairs'", "required"], out),
        "cache_teacher_missing_model": (["cache-teacher", "--teacher", tmp / "t.pt", "--spec",
                                         teacher_spec, "--inputs-dir", inputs, "--out-dir", out,
                                         "--device", "cpu"],
                                        [tmp / "t.pt", "not found"], out),
        "predict_missing_model": (["predict", "--model", tmp / "none.pt", "--inputs",
                                   inputs / "test.h5", "--out", out / "p.h5", "--info",
                                   out / "i.json", "--device", "cpu"],
                                  [tmp / "none.pt", "not found"], out),
        "predict_missing_inputs": (["predict", "--model", "zf", "--inputs", tmp / "none.h5",
                                    "--out", out / "p.h5", "--info", out / "i.json"],
                                   [tmp / "none.h5", "store not found"], out),
        "evaluate_meta_not_json": (evaluate("--meta", "{task: recon}"),
                                   ["--meta is not valid JSON"], out),
        "evaluate_meta_not_an_object": (evaluate("--meta", "[1]"),
                                        ["--meta must be a JSON object"], out),
        "evaluate_meta_replaces_a_metric": (evaluate("--meta", '{"psnr": 40}'),
                                            ["--meta", "'psnr'", "metrics column"], out),
        "evaluate_predict_info_missing": (evaluate("--predict-info", tmp / "none.json"),
                                          [tmp / "none.json", "--predict-info"], out),
        "evaluate_predict_info_not_json": (evaluate("--predict-info", tmp / "broken.json"),
                                           [tmp / "broken.json", "not valid JSON"], out),
        "evaluate_predict_info_a_list": (evaluate("--predict-info", tmp / "list.json"),
                                         [tmp / "list.json", "JSON object", "list"], out),
        "tables_missing_metrics": (["tables", "--metrics", tmp / "none.csv", "--out-dir", out],
                                   [tmp / "none.csv", "not found"], out),
        "sweep_missing_model_file": (["sweep", "--plan", json.dumps([{
            "task": "recon", "dataset": "demo", "acceleration": 4, "model": "kd",
            "sweep": "alpha", "keys": "kd.alpha", "setting": "0.3", "candidate": "kd~alpha~0.3",
            "seeds": ["0"]}]), "--models", f"0={tmp / 'none.pt'}", "--out-dir", out],
            [tmp / "none.pt", "not found"], out),
        "figures_panel_without_inputs": (["figures", "--kind", "panel", "--out",
                                          out / "f.png"], ["--kind panel", "--inputs"], out),
        "figures_missing_mask": (["figures", "--kind", "mask", "--mask", tmp / "none.npy",
                                  "--out", out / "f.png"], [tmp / "none.npy", "not found"], out),
        "provenance_missing_config": (["provenance", "--config-json", tmp / "none.json",
                                       "--out", out / "p.json"],
                                      [tmp / "none.json", "not found"], out),
        "provenance_bad_model_argument": (["provenance", "--config-json", "{}", "--models",
                                           "teacher", "--out", out / "p.json"],
                                          ["--models", "NAME=PATH", "'teacher'"], out),
    }


CASES = sorted(error_cases(Path("data"), Path("inputs"), Path("tmp")))


@pytest.mark.parametrize("name", CASES)
def test_user_error_is_one_line_naming_what_is_wrong(stores, tmp_path, capsys, name):
    argv, names, must_not_exist = error_cases(stores.data_dir, stores.inputs_dir, tmp_path)[name]
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "broken.json").write_text("{'single': 'quotes'}")
    copy_store(stores.inputs_dir / "test.h5", tmp_path / "pred.h5", target=None, zf=None,
               mask=None, output=stores.targets["test"])  # perfect predictions
    result = run(capsys, *argv)
    assert_user_error(result, *names)
    assert files_under(must_not_exist) == [], files_under(must_not_exist)


def test_every_subcommand_has_an_error_case():
    """bench's are in tests/test_bench.py, export's and apply's in tests/test_export.py and
    tests/test_apply.py."""
    covered = {name.split("_")[0] for name in CASES}
    assert covered == {name.split("-")[0] for name in SUBCOMMANDS - {"bench", "export", "apply"}}


def test_a_library_message_is_printed_on_one_line(capsys, monkeypatch):
    def fails(args):
        raise KdmriError("data.h5: first line\n  second   line")

    monkeypatch.setattr(cli, "cmd_mask", fails)
    result = run(capsys, "mask", "--spec", "{}", "--like", "x", "--out", "y")
    assert result.returncode == 2
    assert result.stderr == "kdmri: error: data.h5: first line second line\n"


def test_interrupt_exits_130_and_a_bug_keeps_its_traceback(capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_mask", interrupted)
    result = run(capsys, "mask", "--spec", "{}", "--like", "x", "--out", "y")
    assert result.returncode == 130 and result.stderr == "kdmri: interrupted\n"

    def bug(args):
        raise ZeroDivisionError("a bug, not a user error")

    monkeypatch.setattr(cli, "cmd_mask", bug)
    with pytest.raises(ZeroDivisionError):
        main(["mask", "--spec", "{}", "--like", "x", "--out", "y"])


# ---------------------------------------------------------------------- the data stages
@pytest.fixture(scope="module")
def stages(stores, tmp_path_factory):
    """mask, undersample and train run through the CLI on the tiny target stores, and a
    student trained with the same spec by the library."""
    root = tmp_path_factory.mktemp("cli")
    spec_file = root / "spec.json"
    spec_file.write_text(json.dumps(spec(epochs=1)))
    steps = {
        "mask": ["mask", "--spec", MASK_SPEC, "--like", stores.data_dir / "train.h5",
                 "--seed", "0", "--out", root / "mask" / "acc4.npy"],
        "undersample": ["undersample", "--data-dir", stores.data_dir, "--mask",
                        root / "mask" / "acc4.npy", "--out-dir", root / "inputs"],
        "train": ["train", "--spec", f"@{spec_file}", "--inputs-dir", root / "inputs",
                  "--out-dir", root / "student", "--device", "cpu", "--threads", "1"],
    }
    codes = {name: main([str(a) for a in argv]) for name, argv in steps.items()}
    library = root / "library"
    Trainer(spec(epochs=1), stores.inputs_dir / "train.h5", stores.inputs_dir / "val.h5",
            library, log=lambda message: None, progress=False).run()
    return SimpleNamespace(root=root, codes=codes, library=library)


def test_mask_writes_the_mask_of_its_spec_and_seed(stages, stores):
    assert stages.codes["mask"] == 0
    path = stages.root / "mask" / "acc4.npy"
    expected = create_mask_func("random", 4)(stores.shape, seed=0)
    np.testing.assert_array_equal(np.load(path), expected)
    params = mask_params(path)
    assert params["kind"] == "random" and params["acceleration"] == 4.0 and params["seed"] == 0
    assert params["shape"] == list(stores.shape)
    assert params["sampled_fraction"] == pytest.approx(expected.mean())


def test_undersample_writes_the_zero_filled_inputs_of_every_split(stages, stores):
    assert stages.codes["undersample"] == 0
    folder = stages.root / "inputs"
    assert sorted(p.name for p in folder.iterdir()) == ["test.h5", "train.h5", "val.h5"]
    mask = np.load(stages.root / "mask" / "acc4.npy")
    for split, target in stores.targets.items():
        written = read_store(folder / f"{split}.h5", ["target", "zf", "mask", "volume"])
        np.testing.assert_array_equal(written["target"], target)
        np.testing.assert_array_equal(written["mask"], mask)
        assert written["zf"].dtype == np.complex64
        np.testing.assert_allclose(written["zf"], np_ifft2c(mask * np_fft2c(target)), atol=1e-5)


def test_train_from_a_spec_file_equals_the_library_run(stages, stores):
    """``--spec @file`` trains the same weights as the Trainer given that spec (the CLI's
    undersampled stores equal conftest's: same mask)."""
    assert stages.codes["train"] == 0
    out = stages.root / "student"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "history.csv", "model.pt"]
    cli_model = load_torch(out / "model.pt")
    library_model = load_torch(stages.library / "model.pt")
    assert cli_model["spec"] == spec(epochs=1)
    assert cli_model["state_dict"].keys() == library_model["state_dict"].keys()
    for key, value in cli_model["state_dict"].items():
        assert torch.equal(value, library_model["state_dict"][key]), key


def test_cache_teacher_stores_the_teachers_outputs(stages, stores, tmp_path, capsys):
    teacher = write_model_file(tmp_path / "teacher.pt", TEACHER_NET, seed=1)
    result = run(capsys, "cache-teacher", "--teacher", teacher, "--spec",
                 json.dumps({"teacher_net": TEACHER_NET, "pairs": PAIRS}), "--inputs-dir",
                 stores.inputs_dir, "--out-dir", tmp_path / "cache", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["train.h5", "val.h5"]
    model, _ = load_model(teacher)
    for split in ("train", "val"):
        expected = run_model(model, stores.inputs_dir / f"{split}.h5", torch.device("cpu"))
        written = read_store(tmp_path / "cache" / f"{split}.h5", ["output", "attention"])
        np.testing.assert_array_equal(written["output"], expected["output"])
        assert store_info(tmp_path / "cache" / f"{split}.h5")["attrs"]["pairs"] == PAIRS


def test_prepare_demo_writes_the_three_stores_and_info(tmp_path, capsys):
    spec_file = tmp_path / "demo.json"
    spec_file.write_text(json.dumps({"format": "demo", "size": 16, "voxel_mm": 6.0,
                                     "subjects": {"train": 1, "val": 1, "test": 1},
                                     "max_slices": 4}))
    result = run(capsys, "prepare", "--quiet", "--name", "demo", "--spec", f"@{spec_file}",
                 "--out-dir", tmp_path / "demo")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == [
        "info.json", "test.h5", "train.h5", "val.h5"]
    info = json.loads((tmp_path / "demo" / "info.json").read_text())
    for split in ("train", "val", "test"):
        n = store_info(tmp_path / "demo" / f"{split}.h5")["n_slices"]
        assert n == info["splits"][split]["slices"] and 1 <= n <= 4
    assert result.stderr.startswith("prepared demo: train ")

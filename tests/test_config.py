"""Tests for kdmri.config: schema validation, defaults, descriptions and model specs."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from kdmri.config import check_spec, load_config, schema, spec_schema, validate
from kdmri.errors import KdmriError
from kdmri.methods import MODELS, STAGES, VARIANT, models_needed, study_models
from kdmri.specs import model_spec, spec_keys, teacher_cache_spec, train_settings

REPO = Path(__file__).resolve().parents[1]

MINIMAL = {"datasets": {"demo": {"format": "demo"}}, "tasks": {"recon": {"datasets": ["demo"]}}}


def minimal(**overrides) -> dict:
    config = copy.deepcopy(MINIMAL)
    config.update(copy.deepcopy(overrides))
    return config


def test_defaults_filled():
    config = validate(minimal())
    assert config["train"]["batch_size"] == 4
    assert config["train"]["lr"] == 0.001
    assert config["train"]["optimizer"] == "adam"
    assert config["train"]["schedule"]["kind"] == "cosine"
    assert config["kd"] == {"alpha": 0.5, "attention_weight": 1.0,
                            "sft_branch_reconstruction": 1.0, "sft_branch_imitation": 1.0}
    assert config["seeds"] == [0]
    assert config["datasets"]["demo"]["size"] is None  # the format decides (demo: 64)
    assert config["datasets"]["demo"]["subjects"] == {"train": 8, "val": 2, "test": 2}
    recon = config["tasks"]["recon"]
    assert recon["teacher"] == {"family": "dccnn", "cascades": 5, "convs": 5, "channels": 32,
                                "complex": False}
    assert recon["student"] == {"family": "dccnn", "cascades": 5, "convs": 3, "channels": 32,
                                "complex": False}
    assert recon["pairs"] == [[3, 2]]
    assert recon["mask"] == {"kind": "random", "center_fraction": 0.08, "file": ""}
    assert config["tasks"]["sr"]["pairs"] == [[6, 4]]


def test_validate_does_not_modify_input():
    config = minimal()
    before = copy.deepcopy(config)
    validate(config)
    assert config == before


def test_given_values_are_kept():
    config = validate(minimal(train={"batch_size": 2, "schedule": {"kind": "step"}}))
    assert config["train"]["batch_size"] == 2
    assert config["train"]["epochs"] == 10
    assert config["train"]["schedule"]["kind"] == "step"


def test_mistyped_key_names_the_key():
    with pytest.raises(KdmriError, match="train.epoch") as info:
        validate(minimal(train={"epoch": 3}), source="study.yaml")
    message = str(info.value)
    assert message.startswith("study.yaml")
    assert "epochs" in message  # the allowed keys are listed
    with pytest.raises(KdmriError, match="'learning_rate'"):
        validate(minimal(learning_rate=0.1))


def test_nested_mistyped_key_names_the_full_path():
    config = minimal()
    config["tasks"]["recon"]["teacher"] = {"family": "dccnn", "cascade": 5}
    with pytest.raises(KdmriError, match=r"tasks\.recon\.teacher\.cascade"):
        validate(config)


def test_wrong_type_names_key_and_type():
    with pytest.raises(KdmriError, match="train.batch_size") as info:
        validate(minimal(train={"batch_size": "four"}))
    assert "integer" in str(info.value) and "four" in str(info.value)
    with pytest.raises(KdmriError, match="kd.alpha") as info:
        validate(minimal(kd={"alpha": "half"}))
    assert "number" in str(info.value)


def test_out_of_range_and_enum_values_raise():
    with pytest.raises(KdmriError, match="kd.alpha"):
        validate(minimal(kd={"alpha": 1.5}))
    with pytest.raises(KdmriError, match="train.optimizer") as info:
        validate(minimal(train={"optimizer": "lion"}))
    assert "adam" in str(info.value)
    with pytest.raises(KdmriError, match="device"):
        validate(minimal(device="tpu"))


def test_unknown_dataset_reference():
    config = minimal()
    config["tasks"]["recon"]["datasets"] = ["demo", "knee"]
    with pytest.raises(KdmriError, match="unknown dataset 'knee'") as info:
        validate(config)
    assert "tasks.recon.datasets" in str(info.value) and "demo" in str(info.value)


def test_not_a_mapping_raises():
    with pytest.raises(KdmriError, match="mapping"):
        validate(["not", "a", "dict"])


def test_load_config_errors(tmp_path):
    with pytest.raises(KdmriError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(KdmriError, match="not valid YAML") as info:
        load_config(bad)
    assert str(bad) in str(info.value)


# ---------------------------------------------------------------------- the schema itself
def _resolved(node: dict, root: dict) -> dict:
    while "$ref" in node:
        target = root
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _undescribed(node, root, where: str) -> list[str]:
    """Every key (property) without a description, walking properties, items and $defs."""
    missing = []
    if not isinstance(node, dict):
        return missing
    for key, sub in node.get("properties", {}).items():
        path = f"{where}.{key}" if where else key
        if "description" not in _resolved(sub, root):
            missing.append(path)
        missing += _undescribed(sub, root, path)
    for keyword in ("items", "additionalProperties"):
        if isinstance(node.get(keyword), dict):
            missing += _undescribed(node[keyword], root, f"{where}[{keyword}]")
    return missing


def test_every_schema_key_has_a_description():
    root = schema()
    missing = _undescribed(root, root, "")
    for name, definition in root["$defs"].items():
        if definition.get("type") == "object" and "description" not in definition:
            missing.append(f"$defs.{name}")
        missing += _undescribed(definition, root, f"$defs.{name}")
    assert not missing, f"schema keys without a description: {missing}"


def test_schema_objects_reject_unknown_keys():
    root = schema()

    def objects(node, where):
        if not isinstance(node, dict):
            return
        if node.get("type") == "object" and "properties" in node:
            yield where, node
        for key, sub in node.get("properties", {}).items():
            yield from objects(sub, f"{where}.{key}")
        for name, sub in node.get("$defs", {}).items():
            yield from objects(sub, f"$defs.{name}")

    for where, node in objects(root, "(top)"):
        assert node.get("additionalProperties") is False, where


def test_key_given_twice_is_an_error(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("results: out\ntrain:\n  epochs: 5\nseeds: [0]\ntrain:\n  lr: 0.1\n")
    with pytest.raises(KdmriError) as info:
        load_config(path)
    assert "study.yaml" in str(info.value) and "'train' appears twice" in str(info.value)
    assert "line 5" in str(info.value)  # the second one


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "config").glob("*.yaml")))
def test_every_shipped_config_loads(name):
    """Every study file loads with duplicate keys refused and passes the schema."""
    config = load_config(REPO / "config" / name)
    for task, settings in config["tasks"].items():
        for dataset in settings["datasets"]:
            assert dataset in config["datasets"], (name, task, dataset)


@pytest.mark.parametrize("name", ["config.yaml", "test.yaml"])
def test_shipped_configs_validate(name):
    path = REPO / "config" / name
    config = load_config(path)
    raw = yaml.safe_load(path.read_text())
    assert config["results"] == raw["results"]
    assert config["tasks"]["recon"]["datasets"] == ["demo"]
    for task, settings in config["tasks"].items():
        for model in config["models"]:
            if model in MODELS and settings["datasets"]:
                assert model_spec(config, task, model, seed=0)["task"] == task


# ---------------------------------------------------------------------- model specs
def test_kd_depends_on_alpha_and_teacher_does_not():
    base = validate(minimal())
    other = validate(minimal(kd={"alpha": 0.3}))
    assert model_spec(base, "recon", "kd", 0) != model_spec(other, "recon", "kd", 0)
    assert model_spec(other, "recon", "kd", 0)["loss_weights"] == pytest.approx(
        {"reconstruction": 0.3, "imitation": 0.7}
    )
    for model in ("teacher", "student", "attention"):
        assert model_spec(base, "recon", model, 0) == model_spec(other, "recon", model, 0), model


def test_spec_depends_on_seed_and_stage_settings():
    config = validate(minimal())
    assert model_spec(config, "recon", "student", 0) != model_spec(config, "recon", "student", 1)
    changed = validate(minimal(stages={"teacher": {"epochs": 3}}))
    assert model_spec(changed, "recon", "teacher", 0)["train"]["epochs"] == 3
    assert model_spec(changed, "recon", "student", 0) == model_spec(config, "recon", "student", 0)


def test_imitation_stage_has_student_epochs_by_default():
    config = validate(minimal())
    student = model_spec(config, "recon", "student", 0)
    kd = model_spec(config, "recon", "kd", 0)
    assert kd["stage"] == "imitation" and kd["init"] == "attention"
    assert kd["train"]["epochs"] == student["train"]["epochs"]
    assert kd["train"] == student["train"]  # same budget and settings: a fair comparison
    shipped = load_config(REPO / "config" / "config.yaml")
    assert (
        model_spec(shipped, "recon", "kd", 0)["train"]["epochs"]
        == model_spec(shipped, "recon", "student", 0)["train"]["epochs"]
    )


def test_spec_contents_per_stage():
    config = validate(minimal())
    teacher = model_spec(config, "recon", "teacher", 0)
    # a magnitude net's spec leaves out complex: false (the spec as before the option)
    assert teacher["net"] == {"family": "dccnn", "cascades": 5, "convs": 5, "channels": 32}
    assert teacher["loss_weights"] == {"reconstruction": 1.0}
    assert "teacher_net" not in teacher and "pairs" not in teacher
    attention = model_spec(config, "recon", "attention", 0)
    assert attention["net"] == {"family": "dccnn", "cascades": 5, "convs": 3, "channels": 32}
    assert attention["loss_weights"] == {"attention": 1.0}
    assert attention["pairs"] == [[3, 2]]
    assert attention["teacher_net"] == teacher["net"]
    assert models_needed("kd") == ["attention", "kd"]
    assert models_needed("teacher") == ["teacher"]


def test_train_settings_precedence():
    config = validate(minimal(
        train={"lr": 0.01, "epochs": 5},
        stages={"imitation": {"lr": 0.02}},
        tasks={"recon": {"datasets": ["demo"], "train": {"epochs": 6},
                         "stages": {"imitation": {"epochs": 7}}}},
    ))
    assert train_settings(config, "recon", "imitation")["lr"] == 0.02
    assert train_settings(config, "recon", "imitation")["epochs"] == 7
    assert train_settings(config, "recon", "student")["epochs"] == 6
    assert train_settings(config, "recon", "student")["lr"] == 0.01


def test_model_spec_errors():
    config = validate(minimal())
    with pytest.raises(KdmriError, match="unknown model 'huge'"):
        model_spec(config, "recon", "huge", 0)
    del config["tasks"]["sr"]
    with pytest.raises(KdmriError, match="task 'sr' is not configured"):
        model_spec(config, "sr", "teacher", 0)


# ------------------------------------------------------------ partial objects get defaults
def test_a_partial_schedule_gets_the_documented_defaults():
    # the paper's "step decay" as a user writes it: decays by 0.1 every 40 epochs
    config = validate(minimal(train={"schedule": {"kind": "step"}}))
    assert config["train"]["schedule"] == {"kind": "step", "step_epochs": 40, "gamma": 0.1,
                                           "min_lr": 0.0, "warmup_epochs": 0}
    assert train_settings(config, "recon", "teacher")["schedule"]["step_epochs"] == 40


def test_a_partial_override_keeps_the_settings_it_overrides():
    config = validate(minimal(
        train={"schedule": {"kind": "step", "step_epochs": 3}},
        stages={"teacher": {"schedule": {"gamma": 0.5}}},
        tasks={"recon": {"datasets": ["demo"], "stages": {"student": {"schedule": {"kind": "cosine"}}}}},
    ))
    assert config["stages"]["teacher"] == {"schedule": {"gamma": 0.5}}  # left as given
    assert train_settings(config, "recon", "teacher")["schedule"] == {
        "kind": "step", "step_epochs": 3, "gamma": 0.5, "min_lr": 0.0, "warmup_epochs": 0}
    assert train_settings(config, "recon", "student")["schedule"]["kind"] == "cosine"
    assert train_settings(config, "recon", "imitation")["schedule"]["gamma"] == 0.1


def test_a_partial_network_gets_its_family_defaults():
    config = validate(minimal(tasks={
        "recon": {"datasets": ["demo"], "student": {"family": "dccnn", "convs": 2}},
        "sr": {"datasets": ["demo"], "student": {"family": "vdsr", "channels": 16}},
    }))
    assert config["tasks"]["recon"]["student"] == {"family": "dccnn", "cascades": 5, "convs": 2,
                                                   "channels": 32, "complex": False}
    assert config["tasks"]["sr"]["student"] == {"family": "vdsr", "convs": 11, "channels": 16,
                                                "complex": False}


def test_the_family_defaults_build_the_papers_teachers():
    from kdmri.models import build_model, count_parameters

    config = validate(minimal(tasks={"recon": {"datasets": ["demo"], "teacher": {"family": "dccnn"}},
                                     "sr": {"datasets": ["demo"], "teacher": {"family": "vdsr"}}}))
    assert count_parameters(build_model(config["tasks"]["recon"]["teacher"])) == 141_765
    assert count_parameters(build_model(config["tasks"]["sr"]["teacher"])) == 333_569


# ---------------------------------------------------------- command-line overrides typed
def test_overrides_of_nested_keys_are_typed_by_the_schema():
    from kdmri.config import apply_overrides

    # as Snakemake hands over --config 'kd={alpha: 0.3}' 'train={amp: true, ...}' seeds=[0,1]
    given = {"kd": {"alpha": "0.3"}, "seeds": ["0", "1"],
             "train": {"amp": "true", "epochs": "3", "schedule": {"gamma": "0.5"}},
             "datasets": {"demo": {"format": "demo", "size": "32"}}}
    config = validate(apply_overrides(minimal(**given), given))
    assert config["kd"]["alpha"] == 0.3 and config["seeds"] == [0, 1]
    assert config["train"]["amp"] is True and config["train"]["epochs"] == 3
    assert config["train"]["schedule"]["gamma"] == 0.5
    assert config["datasets"]["demo"]["size"] == 32


def test_overrides_type_only_what_the_command_line_gave():
    from kdmri.config import apply_overrides

    config = minimal(kd={"alpha": "0.3"}, train={"epochs": "3"})
    # a string that is no number stays a string, and validation names it
    with pytest.raises(KdmriError, match=r"key 'kd.alpha': expected number, found str 'x'"):
        validate(apply_overrides(minimal(kd={"alpha": "x"}), {"kd": {"alpha": "x"}}))
    # a quoted string in the config file itself is still an error
    with pytest.raises(KdmriError, match="key 'train.epochs'"):
        validate(apply_overrides(config, {"kd": {"alpha": "0.3"}}))
    # a string key stays a string even when it looks like a number
    typed = apply_overrides(minimal(results="2024"), {"results": "2024"})
    assert typed["results"] == "2024"


def test_snakemake_config_overrides_reach_the_jobs(tmp_path):
    """``--config`` with nested keys on the real workflow: the planned jobs' specs."""
    import json
    import subprocess
    import sys

    configfile = tmp_path / "study.yaml"
    configfile.write_text(yaml.safe_dump(minimal(kd={"attention_weight": 2.0})))
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
         "--directory", str(tmp_path), "--configfile", str(configfile), "--cores", "1",
         "--dry-run", "--printshellcmds", "--config", "kd={alpha: 0.3}",
         "train={epochs: 3, schedule: {kind: step}}"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    specs = [json.loads(m) for m in re.findall(r"--spec '(\{.*?\})'", out.stdout)
             if '"loss_weights"' in m]
    weights = {s["model"]: s["loss_weights"] for s in specs}
    assert weights["kd"] == {"reconstruction": 0.3, "imitation": pytest.approx(0.7)}
    assert weights["attention"] == {"attention": 2.0}  # the config file's nested key is kept
    assert {s["train"]["epochs"] for s in specs} == {3}
    assert {s["train"]["schedule"]["step_epochs"] for s in specs} == {40}


# ---------------------------------------------------------------------- job specs' schema
def test_the_stage_names_are_the_stage_table_everywhere_in_the_schema():
    root = schema()
    assert root["$defs"]["stage"]["enum"] == list(STAGES)
    assert list(root["properties"]["stages"]["properties"]) == list(STAGES)
    assert list(root["$defs"]["stage_overrides"]["properties"]) == list(STAGES)


def test_the_spec_schema_rules_are_the_ones_the_specs_are_written_by():
    """Every job spec the shipped studies write passes the schema the CLI checks it by."""
    assert re.fullmatch(spec_schema()["$defs"]["model_name"]["pattern"], f"kd{VARIANT}s1")
    for path in sorted((REPO / "config").glob("*.yaml")):
        config = load_config(path)
        for task, settings in config["tasks"].items():
            if not settings["datasets"]:
                continue
            check_spec("teacher_cache_spec", teacher_cache_spec(config, task))
            for model in study_models(config):
                if model == "zf" or model.partition(VARIANT)[2] not in (
                        "", *settings["compression"]["students"]):
                    continue
                spec = model_spec(config, task, model, 0)
                check_spec("train_spec", spec)
                assert set(spec_keys(spec["loss_weights"])) <= set(spec)


def test_a_spec_error_names_the_key():
    spec = {"model": "kd", "stage": "imitation", "net": {"family": "dccnn"},
            "loss_weights": {"imitation": 1.0}, "train": {}, "seed": 0}
    check_spec("train_spec", spec)
    for bad, words in [({"stage": "distil"}, ["key 'stage'", "'distil'", "teacher"]),
                       ({"model": "kd@"}, ["key 'model'", "@<student name>"]),
                       ({"seed": -1}, ["key 'seed'"]),
                       ({"loss_weights": {}}, ["key 'loss_weights'"])]:
        with pytest.raises(KdmriError) as error:
            check_spec("train_spec", {**spec, **bad}, source="--spec")
        message = str(error.value)
        assert message.startswith("--spec: ") and all(w in message for w in words), message
    with pytest.raises(KdmriError, match="--spec: .*'pairs' is a required property"):
        check_spec("teacher_cache_spec", {"teacher_net": {"family": "dccnn"}})

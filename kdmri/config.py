"""The one config schema: loading, validation with defaults, and typed overrides.

The schema (``kdmri/schemas/config.schema.yaml``, also at ``workflow/schemas/``) gives every
key a type, a description and a default and rejects unknown keys. :func:`load_config`
validates a YAML file (or a dict, :func:`validate`), fills the defaults and runs the checks
across keys (:mod:`kdmri.crosschecks`); the Snakefile and the CLI both call it.
:func:`check_spec` checks a job's ``--spec`` against a definition of the same schema. What
each job is given is :mod:`kdmri.specs`'s, the stage and method tables
:mod:`kdmri.methods`'.

This module must not import torch: the Snakefile imports it on every invocation.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from kdmri.crosschecks import check_study
from kdmri.errors import KdmriError
from kdmri.specs import net_spec
from kdmri.sweeps import setting_label, settings, with_overrides

SCHEMA_PATH = Path(__file__).with_name("schemas") / "config.schema.yaml"
#: The job specs' definitions, beside the study schema's (:func:`check_spec`).
SPEC_SCHEMA_PATH = SCHEMA_PATH.with_name("spec.schema.yaml")


@lru_cache(maxsize=1)
def schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


@lru_cache(maxsize=1)
def spec_schema() -> dict:
    return yaml.safe_load(SPEC_SCHEMA_PATH.read_text())


def _resolve(node: dict, root: dict) -> dict:
    while "$ref" in node:
        ref = node["$ref"]
        target = root
        for part in ref.lstrip("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _branches(node: dict, instance: dict, root: dict) -> list[dict]:
    """``node`` and the ``then`` of each ``if`` (its own or under ``allOf``) that ``instance``
    satisfies: the family-dependent defaults of a network live in such branches."""
    conditionals = [node, *node.get("allOf", [])]
    branches = [node]
    for cond in conditionals:
        if "if" in cond and "then" in cond:
            test = jsonschema.Draft202012Validator({**cond["if"], "$defs": root.get("$defs", {})})
            if test.is_valid(instance):
                branches.append(_resolve(cond["then"], root))
    return branches


def _fill_defaults(node: dict, instance: Any, root: dict) -> None:
    """Fill every default of ``node`` into ``instance`` in place, recursively: a key not
    given takes its ``default``, and a given object gets the defaults of its own keys. An
    object marked ``x-partial`` (an override of settings given elsewhere) is left as given."""
    node = _resolve(node, root)
    if not isinstance(instance, dict) or node.get("x-partial"):
        return
    for branch in _branches(node, instance, root):
        for key, sub in branch.get("properties", {}).items():
            sub_resolved = _resolve(sub, root)
            if key not in instance and "default" in sub_resolved:
                instance[key] = copy.deepcopy(sub_resolved["default"])
            if key in instance:
                _fill_defaults(sub, instance[key], root)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        for key, value in instance.items():
            if key not in node.get("properties", {}):
                _fill_defaults(extra, value, root)


def _printable(text: str) -> str:
    """A key as one printable line (a YAML key may hold a newline)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _format_error(error: jsonschema.ValidationError, source: str) -> str:
    where = _printable(".".join(str(p) for p in error.absolute_path)) or "(top level)"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unexpected = sorted(map(str, set(error.instance) - set(allowed)))  # YAML keys may be ints
        key = where
        if unexpected:
            key = _printable(".".join([*map(str, error.absolute_path), unexpected[0]]))
        hint = f"; allowed keys here: {allowed}" if allowed else ""
        return f"{source}: unknown key '{key}'{hint}"
    if error.validator == "required":
        return f"{source}: key '{where}': {error.message}"
    if error.validator == "enum" and "propertyNames" in error.schema_path:  # a family's keys
        key = _printable(".".join([*map(str, error.absolute_path), str(error.instance)]))
        return (f"{source}: unknown key '{key}'; allowed keys here: "
                f"{sorted(error.validator_value)}")
    if error.validator == "not" and error.validator_value == {} and "description" in error.schema:
        return f"{source}: key '{where}': {error.schema['description']}"
    if error.validator == "pattern" and error.schema.get("x-expected"):
        return (f"{source}: key '{where}': expected {error.schema['x-expected']}, "
                f"found {error.instance!r}")
    if error.validator == "enum":
        return f"{source}: key '{where}': expected one of {error.validator_value}, found {error.instance!r}"
    if error.validator == "type":
        return (
            f"{source}: key '{where}': expected {error.validator_value}, "
            f"found {type(error.instance).__name__} {error.instance!r}"
        )
    return f"{source}: key '{where}': {error.message}"


def validate(config: dict, source: str = "config") -> dict:
    """Validate ``config`` against the schema and return a copy with every default filled.

    Raises :class:`KdmriError` with one line naming the key, what was expected and found.
    """
    if not isinstance(config, dict):
        raise KdmriError(f"{source}: expected a mapping of keys, found {type(config).__name__}")
    root = schema()
    validator = jsonschema.Draft202012Validator(root)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), e.path))
    if errors:
        raise KdmriError(_format_error(jsonschema.exceptions.best_match(errors), source))
    filled = copy.deepcopy(config)
    _fill_defaults(root, filled, root)
    _fill_student_pairs(filled)
    _check_sweep_values(config, filled, source)
    check_study(filled, source)
    return filled


def _check_sweep_values(config: dict, filled: dict, source: str) -> None:
    """Each key a sweep names is a setting of the schema (not a section), and the study
    with each of its settings is a valid study (:func:`validate` of the config with the
    setting's values and no sweeps); one line naming the sweep's key otherwise."""
    root = schema()
    for name, sweep in filled["sweeps"].items():
        for key in sweep["values"]:
            where = f"sweeps.{name}.values.{key}"
            node, instance = root, filled
            for part in key.split("."):
                child = _child(node, part, instance, root) if isinstance(instance, dict) else None
                if child is None:
                    raise KdmriError(f"{source}: key '{where}': {key!r} is not a config key "
                                     f"({part!r} is unknown there)")
                node, instance = child, instance.get(part) if isinstance(instance, dict) else None
            if "object" in ([node.get("type")] if isinstance(node.get("type"), str)
                            else node.get("type", [])):
                raise KdmriError(f"{source}: key '{where}': {key!r} is a section; a sweep sets "
                                 "a value (e.g. kd.alpha)")
        labels = set()
        for setting in settings(sweep, f"sweeps.{name}"):
            label = setting_label(setting)
            if label in labels:
                raise KdmriError(f"{source}: key 'sweeps.{name}.values': the setting {label!r} "
                                 "appears twice")
            labels.add(label)
            trial = with_overrides({k: v for k, v in config.items() if k != "sweeps"},
                                   setting.items())
            try:
                validate(trial, source)
            except KdmriError as exc:
                raise KdmriError(f"{source}: key 'sweeps.{name}.values': the setting "
                                 f"{label!r} makes the study invalid: {exc}") from None


def _fill_student_pairs(config: dict) -> None:
    """The defaults the schema cannot give: a compression student's ``pairs`` and
    ``fsp_pairs`` default to its task's (filled in place)."""
    for task in config["tasks"].values():
        for student in task["compression"]["students"].values():
            student.setdefault("pairs", copy.deepcopy(task["pairs"]))
            student.setdefault("fsp_pairs", copy.deepcopy(task["fsp_pairs"]))


def fill_defaults(definition: str, instance: dict) -> dict:
    """A copy of ``instance`` with the defaults of the schema's ``$defs/<definition>`` filled
    in (for a job's ``--spec`` written by hand: ``train``, ``net``; a network as
    :func:`kdmri.specs.net_spec` writes it, as :func:`kdmri.specs.model_spec` does)."""
    root = schema()
    filled = copy.deepcopy(instance)
    _fill_defaults(root["$defs"][definition], filled, root)
    return net_spec(filled) if definition == "net" else filled


def check_spec(definition: str, spec: dict, source: str = "--spec") -> None:
    """Check a job's spec against ``$defs/<definition>`` of ``spec.schema.yaml``
    (``train_spec``, ``teacher_cache_spec``), whose references name the definitions of
    either schema file. Raises :class:`KdmriError` with one line naming the key, as
    :func:`validate` does; the defaults are not filled here (:func:`fill_defaults`)."""
    defs = {**schema()["$defs"], **spec_schema()["$defs"]}
    validator = jsonschema.Draft202012Validator({"$defs": defs, **defs[definition]})
    errors = list(validator.iter_errors(spec))
    if errors:
        raise KdmriError(_format_error(jsonschema.exceptions.best_match(errors), source))


def _child(node: dict, key: str, instance: dict, root: dict) -> dict | None:
    """The schema of ``instance[key]`` within ``node`` (None where the schema has none)."""
    node = _resolve(node, root)
    for branch in _branches(node, instance, root):
        if key in branch.get("properties", {}):
            return _resolve(branch["properties"][key], root)
    extra = node.get("additionalProperties")
    return _resolve(extra, root) if isinstance(extra, dict) else None


def _scalar(node: dict, text: str) -> Any:
    """``text`` as the number or boolean that ``node`` asks for, else ``text`` unchanged."""
    types = node.get("type", [])
    types = [types] if isinstance(types, str) else types
    if "string" in types:
        return text
    value = yaml.safe_load(text) if text.strip() else text
    if "boolean" in types and isinstance(value, bool):
        return value
    if ("integer" in types or "number" in types) and isinstance(value, int) and not isinstance(value, bool):
        return value
    if "number" in types and isinstance(value, float):
        return value
    if "null" in types and value is None:
        return None
    return text


def _typed(node: dict | None, value: Any, root: dict) -> Any:
    if node is None:
        return value
    if "oneOf" in node and "type" not in node:  # the first choice the typed value fits
        for choice in node["oneOf"]:
            choice = _resolve(choice, root)
            typed = _typed(choice, value, root)
            if jsonschema.Draft202012Validator({**choice, "$defs": root["$defs"]}).is_valid(typed):
                return typed
        return value
    if isinstance(value, str):
        return _scalar(node, value)
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        items = _resolve(node["items"], root)
        return [_typed(items, item, root) for item in value]
    if isinstance(value, dict):
        return {k: _typed(_child(node, k, value, root), v, root) for k, v in value.items()}
    return value


def apply_overrides(config: dict, overrides: dict) -> dict:
    """``config`` with the command line's ``--config`` values typed as the schema says.

    Snakemake gives the values of nested keys (``--config 'kd={alpha: 0.3}'``) and of list
    items (``seeds=[0,1]``) as strings; each such string where the schema asks for a
    number, an integer or a boolean is read as YAML and kept if it is one (else it is left
    for :func:`validate` to report). Only the keys given in ``overrides`` are touched, so a
    quoted string in a config file is still an error.
    """
    root = schema()
    typed = copy.deepcopy(config)

    def walk(node: dict | None, target: dict, given: dict) -> None:
        for key, value in given.items():
            if key not in target:
                continue
            sub = _child(node, key, target, root) if node is not None else None
            if isinstance(value, dict) and isinstance(target[key], dict):
                walk(sub, target[key], value)
            else:
                target[key] = _typed(sub, target[key], root)

    walk(root, typed, overrides)
    return typed


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (plain
    YAML keeps the last one silently, hiding half of what the file says)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping "
                    f"(line {key_node.start_mark.line + 1})", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path) -> dict:
    """Read a YAML config file, validate it and fill the defaults."""
    path = Path(path)
    if not path.is_file():
        raise KdmriError(f"{path}: config file not found")
    try:
        loader = _StrictLoader(path.read_text())  # a SafeLoader: plain data only
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise KdmriError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return validate(data if data is not None else {}, source=str(path))

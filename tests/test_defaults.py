"""Every config key the code reads has its default in the schema, and only there.

The schema (``kdmri/schemas/config.schema.yaml``) fills every default before a job runs, so
code reads config keys by subscript. This test walks the package's and the workflow's
source: a ``.get(key, ...)`` of a schema key (a second default, which could disagree with
the schema's) fails, and so does a subscript read of a config object whose key the schema
neither defaults nor requires.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from kdmri.config import schema

ROOT = Path(__file__).resolve().parents[1]

#: Names under which the code holds (parts of) a validated config or a job's spec made from it.
CONFIG_NAMES = {"config", "cfg", "settings", "task_cfg", "schedule", "res", "task"}
#: Names of plain data that is not config (checkpoints and the spec a model file records
#: as ``trained``, stored file attributes, job info,
#: a stage's loss weights, which list only its own terms): ``.get`` may read fields absent.
NOT_CONFIG = {"ckpt", "state", "info", "attrs", "environ", "loss_weights", "trained"}


def _schema_keys(node, defaulted: set, defined: set) -> None:
    """Collect every property name (``defined``) and those with a default or required."""
    if isinstance(node, dict):
        for key, sub in node.get("properties", {}).items():
            defined.add(key)
            if isinstance(sub, dict) and ("default" in sub or "$ref" in sub and _ref_default(sub)):
                defaulted.add(key)
        defaulted.update(node.get("required", []))
        for value in node.values():
            _schema_keys(value, defaulted, defined)
    elif isinstance(node, list):
        for value in node:
            _schema_keys(value, defaulted, defined)


def _ref_default(node: dict) -> bool:
    target = schema()
    for part in node["$ref"].lstrip("#/").split("/"):
        target = target[part]
    return "default" in target


def schema_keys() -> tuple[set, set]:
    defaulted, defined = set(), set()
    _schema_keys(schema(), defaulted, defined)
    return defaulted, defined


def _base_name(node: ast.AST) -> str | None:
    """The variable a chain like ``self.settings["schedule"]["kind"]`` starts from."""
    while isinstance(node, ast.Subscript | ast.Attribute | ast.Call):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            return node.attr
        node = node.value if not isinstance(node, ast.Call) else node.func
    return node.id if isinstance(node, ast.Name) else None


def _receiver(node: ast.AST) -> str | None:
    """The innermost name of what ``.get`` is called on: ``loss_weights`` for
    ``spec["loss_weights"].get``, ``attrs`` for ``handle.attrs.get``."""
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
        return str(node.slice.value)
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else None


def _python_reads(path: Path):
    """(line, kind, receiver, key) of every string-keyed ``.get`` and subscript read."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get" and node.args
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            yield node.lineno, "get", _receiver(node.func.value), node.args[0].value
        elif (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load)
              and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str)):
            yield node.lineno, "subscript", _base_name(node.value), node.slice.value


def _workflow_reads(path: Path):
    """The same reads in a rule file (Snakemake syntax is not Python): by pattern."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        for name, key in re.findall(r"\b(\w+)\.get\(\s*\"(\w+)\"", line):
            yield number, "get", name, key
        for name, keys in re.findall(r"\b(\w+)((?:\[\"\w+\"\])+)", line):
            for key in re.findall(r"\[\"(\w+)\"\]", keys):
                yield number, "subscript", name, key


def code_reads():
    for path in sorted((ROOT / "kdmri").rglob("*.py")):
        for read in _python_reads(path):
            yield path.relative_to(ROOT), *read
    for path in [ROOT / "Snakefile", *sorted((ROOT / "workflow").rglob("*.smk"))]:
        for read in _workflow_reads(path):
            yield path.relative_to(ROOT), *read


def test_the_schema_walk_finds_defaults_and_required_keys():
    defaulted, defined = schema_keys()
    assert {"alpha", "step_epochs", "gamma", "center_fraction", "cascades", "train_threads"} <= defaulted
    assert "format" in defaulted  # required, so always there
    assert {"family", "kind"} <= defined


def test_the_reads_are_found():
    reads = {(str(path), kind, name, key) for path, _, kind, name, key in code_reads()}
    assert ("kdmri/train.py", "subscript", "schedule", "step_epochs") in reads
    assert ("workflow/rules/common.smk", "subscript", "config", "resources") in reads
    assert ("kdmri/cli.py", "subscript", "spec", "center_fraction") in reads


def test_no_config_key_has_a_second_default_in_code():
    defaulted, defined = schema_keys()
    found = [f"{path}:{line}: {name}.get({key!r})" for path, line, kind, name, key in code_reads()
             if kind == "get" and key in defined and name not in NOT_CONFIG]
    assert not found, "config keys read with .get (the schema holds their defaults):\n" + "\n".join(found)


def test_every_config_key_the_code_reads_is_defaulted_by_the_schema():
    defaulted, _ = schema_keys()
    missing = [f"{path}:{line}: {name}[{key!r}]" for path, line, kind, name, key in code_reads()
               if kind == "subscript" and name in CONFIG_NAMES and key not in defaulted]
    assert not missing, ("config keys read that the schema neither defaults nor requires:\n"
                         + "\n".join(missing))

"""The one config schema: loading, validation with defaults, and what each job needs.

The schema (``kdmri/schemas/config.schema.yaml``, also at ``workflow/schemas/``) gives every
key a type, a description and a default and rejects unknown keys. :func:`load_config`
validates a YAML file (or a dict) and fills the defaults; the Snakefile and the CLI both
call it. :func:`model_spec` resolves, for one trained model, exactly the settings that
affect it: the Snakefile passes it to ``kdmri train`` and uses it as the rule's params, so
a change re-runs only the jobs it touches.

This module must not import torch: the Snakefile imports it on every invocation.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from kdmri.distill.terms import SPEC_KEYS, TEACHER_SOURCES, TERMS
from kdmri.errors import KdmriError

SCHEMA_PATH = Path(__file__).with_name("schemas") / "config.schema.yaml"
TASKS = ("recon", "sr")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Stage:
    """A training stage: the network it trains, and its loss (term name -> weight) as a
    function of the study's ``kd`` settings, for the models that do not give their own
    (None: every model of the stage gives its loss). A stage's train settings are
    ``train`` merged with its ``stages.<name>`` overrides (:func:`train_settings`)."""

    network: str
    loss: Callable[[dict], dict[str, float]] | None


#: The training stages by name; each has a rule of its own (``train_<name>``).
STAGES: dict[str, Stage] = {
    "teacher": Stage("teacher", lambda kd: {"reconstruction": 1.0}),
    "student": Stage("student", lambda kd: {"reconstruction": 1.0}),
    # the paper's attention-transfer stage (eq. 1) and imitation stage (eq. 2)
    "attention": Stage("student", lambda kd: {"attention": kd["attention_weight"]}),
    "imitation": Stage("student", lambda kd: {"reconstruction": kd["alpha"],
                                              "imitation": 1 - kd["alpha"]}),
    # a feature-distillation stage: the model names the term (fitnets, fsp, sp, cc, ...)
    "hint": Stage("student", None),
    # the student-friendly teacher (SFT-KD-Recon): the teacher trained with branches through
    # the student's cascades; its teacher cascades then teach any method
    "sft": Stage("teacher", lambda kd: {"reconstruction": 1.0,
                                        "sft_reconstruction": kd["sft_branch_reconstruction"],
                                        "sft_imitation": kd["sft_branch_imitation"]}),
}


@dataclass(frozen=True)
class Method:
    """How one trained model is made: its stage, the model it starts from (``init``), its
    loss where it is not its stage's, and the model whose outputs and features the
    distillation terms read (``teacher``)."""

    stage: str
    init: str | None = None
    loss: dict[str, float] | None = None
    teacher: str = "teacher"


#: The shipped methods: every trained model by name (``zf``, the zero-filled input, is
#: evaluated but not trained). A study adds its own under ``methods`` (:func:`methods`).
#: ``kd_<term>`` is SFT-KD-Recon's comparison: a hint stage with that feature loss, then
#: the imitation stage, as ``kd`` is the paper's attention stage then imitation.
_STANDARD: dict[str, Method] = {
    "attention": Method("attention"),
    "kd": Method("imitation", init="attention"),
    "kd_imitation": Method("imitation"),
    "kd_attention": Method("student", init="attention"),
    **{name: method for term in ("fitnets", "fsp", "sp", "cc") for name, method in (
        (f"hint_{term}", Method("hint", loss={term: 1.0})),
        (f"kd_{term}", Method("imitation", init=f"hint_{term}")),
    )},
}
MODELS: dict[str, Method] = {
    "teacher": Method("teacher"),
    "student": Method("student"),
    "sft_teacher": Method("sft"),
    **_STANDARD,
    # each distilling method again, learning from the student-friendly teacher: ``<name>_sft``
    **{f"{name}_sft": Method(m.stage, f"{m.init}_sft" if m.init else None, m.loss,
                             teacher="sft_teacher")
       for name, m in _STANDARD.items()},
}
#: Between a model and a compression student's name: ``kd@d5c3f16`` is the model ``kd``
#: trained with the student network ``d5c3f16`` of its task's ``compression.students``.
VARIANT = "@"
#: The schema of a trained model's name (a job spec's ``model``).
MODEL_NAME = {
    "type": "string",
    "pattern": f"^[A-Za-z][A-Za-z0-9_]*({VARIANT}[A-Za-z0-9_]+)?$",
    "x-expected": f"a method's name, optionally followed by {VARIANT}<student name>",
}


def methods(config: dict | None = None) -> dict[str, Method]:
    """The method table of a study: the shipped :data:`MODELS` and the study's own
    ``methods`` (None: the shipped ones)."""
    table = dict(MODELS)
    for name, entry in (config["methods"] if config is not None else {}).items():
        table[name] = Method(entry["stage"], entry["init"], entry["loss"], entry["teacher"])
    return table


def split_model(model: str, config: dict | None = None) -> tuple[str, str | None]:
    """``(method, student)`` of a model name: ``("kd", "d5c3f16")`` for ``kd@d5c3f16``,
    ``("kd", None)`` for ``kd``. Raises :class:`KdmriError` for a name that is neither."""
    return _split(model, methods(config))


def _split(model: str, table: dict[str, Method]) -> tuple[str, str | None]:
    base, sep, variant = model.partition(VARIANT)
    if base not in table or (sep and not variant):
        raise KdmriError(f"unknown model {model!r}; expected one of {sorted(table)}, "
                         f"optionally followed by {VARIANT}<student name>")
    return base, variant or None


def recipe(model: str, config: dict | None = None) -> Method:
    """The method of a model name (the study's table where ``config`` is given); a
    compression student's model starts from the model of the same student (``kd@s`` from
    ``attention@s``)."""
    table = methods(config)
    base, variant = _split(model, table)
    found = table[base]
    if variant and found.init:
        return Method(found.stage, f"{found.init}{VARIANT}{variant}", found.loss, found.teacher)
    return found


def compression_models(config: dict, task: str) -> list[str]:
    """The models a task's compression study evaluates: per student ``s``, ``student@s``
    and ``<method>@s`` (in the order the students are listed)."""
    comp = config["tasks"][task]["compression"]
    return [f"{m}{VARIANT}{s}" for s in comp["students"] for m in ("student", comp["method"])]


def evaluated_models(config: dict, task: str) -> list[str]:
    """Every model evaluated in a task's cells: the study's ``models``, then, where the task
    has a compression study, the teacher (its point on the curve) and the students'."""
    models = list(config["models"])
    extra = compression_models(config, task)
    if extra and "teacher" not in models:
        models.append("teacher")
    return models + extra


def study_models(config: dict) -> list[str]:
    """Every model name any task of the study may train or evaluate (with each
    compression model's init chain), for the workflow's wildcards."""
    names = {"zf", *methods(config)}
    for task in config["tasks"]:
        names.update(m for model in compression_models(config, task)
                     for m in models_needed(model, config))
    return sorted(names)


@lru_cache(maxsize=1)
def schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


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
    _check_references(filled, source)
    return filled


def fill_defaults(definition: str, instance: dict) -> dict:
    """A copy of ``instance`` with the defaults of the schema's ``$defs/<definition>`` filled
    in (for a job's ``--spec`` written by hand: ``train``, ``net``; a network as
    :func:`net_spec` writes it, as :func:`model_spec` does)."""
    root = schema()
    filled = copy.deepcopy(instance)
    _fill_defaults(root["$defs"][definition], filled, root)
    return net_spec(filled) if definition == "net" else filled


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


def _check_methods(config: dict, source: str) -> None:
    """The study's methods extend the shipped table (a shipped name keeps its meaning);
    every name a method, ``models`` or a compression study gives must be a method, each
    init chain must end, a teacher must be trained in the teacher stage, and a loss may
    name only known terms (a hint stage's must be given)."""
    for name in config["methods"]:
        if name in MODELS or name == "zf":
            raise KdmriError(f"{source}: key 'methods.{name}': {name!r} is a shipped method "
                             f"and cannot be redefined; choose another name")
    table = methods(config)
    known = sorted(table)
    for name, entry in config["methods"].items():
        where = f"methods.{name}"
        for key in ("init", "teacher"):
            if entry[key] is not None and entry[key] not in table:
                raise KdmriError(f"{source}: key '{where}.{key}': unknown method "
                                 f"{entry[key]!r}; methods: {known}")
        if STAGES[table[entry["teacher"]].stage].network != "teacher":
            raise KdmriError(f"{source}: key '{where}.teacher': {entry['teacher']!r} is "
                             f"trained in the {table[entry['teacher']].stage} stage, not as a "
                             "teacher")
        if entry["loss"] is None and STAGES[entry["stage"]].loss is None:
            raise KdmriError(f"{source}: key '{where}.loss': a {entry['stage']} stage has no "
                             f"loss of its own; give the terms, e.g. {{fitnets: 1.0}}")
        for term in entry["loss"] or {}:
            if term not in TERMS:
                raise KdmriError(f"{source}: key '{where}.loss': unknown loss term {term!r}; "
                                 f"terms: {list(TERMS)}")
        chain, current = [name], entry["init"]
        while current is not None:
            if current in chain:
                raise KdmriError(f"{source}: key '{where}.init': the init chain "
                                 f"{' <- '.join([*chain, current])} comes back to itself")
            chain.append(current)
            current = table[current].init
    for i, name in enumerate(config["models"]):
        if name != "zf" and name not in table:
            raise KdmriError(f"{source}: key 'models.{i}': unknown method {name!r}; "
                             f"expected zf or one of {known}")
    for task, settings in config["tasks"].items():
        method = settings["compression"]["method"]
        students = sorted(m for m in table if STAGES[table[m].stage].network == "student")
        if method not in students:
            raise KdmriError(f"{source}: key 'tasks.{task}.compression.method': expected a "
                             f"student's method, one of {students}, found {method!r}")


def _check_sft(config: dict, source: str) -> None:
    """A task that trains a student-friendly teacher (a model whose chain has an sft stage
    or learns from one) needs DC-CNN teacher and student with as many cascades: the
    branches cut the teacher after each cascade (kdmri.distill.sft)."""
    for task, settings in config["tasks"].items():
        if not settings["datasets"]:
            continue
        def sft(name: str) -> bool:
            made = recipe(name, config)
            return made.stage == "sft" or recipe(made.teacher, config).stage == "sft"

        uses = [m for m in evaluated_models(config, task) if m != "zf"
                and any(sft(n) for n in models_needed(m, config))]
        if not uses:
            continue
        teacher, student = settings["teacher"], settings["student"]
        if teacher["family"] != "dccnn" or student["family"] != "dccnn":
            raise KdmriError(
                f"{source}: key 'models': {uses[0]} needs the student-friendly teacher, which "
                f"needs DC-CNN teacher and student (cascades to branch at); task {task!r} has "
                f"{teacher['family']} and {student['family']} (VDSR / U-Net / python networks "
                "have no cascades)")
        if teacher["cascades"] != student["cascades"]:
            raise KdmriError(
                f"{source}: key 'tasks.{task}.student.cascades': the student-friendly teacher "
                f"needs as many student as teacher cascades ({teacher['cascades']}), found "
                f"{student['cascades']}")


def _check_references(config: dict, source: str) -> None:
    _check_methods(config, source)
    for task, settings in config["tasks"].items():
        for name in settings["datasets"]:
            if name not in config["datasets"]:
                raise KdmriError(
                    f"{source}: key 'tasks.{task}.datasets': unknown dataset {name!r}; "
                    f"defined datasets: {sorted(config['datasets'])}"
                )
    _check_complex(config, source)
    _check_pairs(config, source)
    _check_compression(config, source)
    _check_sft(config, source)


def _check_layer_index(net: dict, index: int, role: str, where: str, source: str) -> None:
    """A numbered pair layer must be a hidden convolution of a plain-CNN network (one whose
    activation exists: 1 .. convs - 1); other families are checked when they are built."""
    if "convs" in net and not 1 <= index < net["convs"]:
        raise KdmriError(
            f"{source}: key '{where}': the {role}'s conv {index} has no activation; expected "
            f"1..{net['convs'] - 1} for {net['family']} with {net['convs']} convolutions"
        )


def _check_compression(config: dict, source: str) -> None:
    """Each compression student pairs its own layers with the teacher layers of the task's
    pairs (one teacher cache serves every student); its pairs default to the task's."""
    for task, settings in config["tasks"].items():
        students = settings["compression"]["students"]
        teacher_side = [pair[0] for pair in settings["pairs"]]
        for name, student in students.items():
            where = f"tasks.{task}.compression.students.{name}"
            student.setdefault("pairs", copy.deepcopy(settings["pairs"]))
            student.setdefault("fsp_pairs", copy.deepcopy(settings["fsp_pairs"]))
            if [pair[0] for pair in student["pairs"]] != teacher_side:
                raise KdmriError(
                    f"{source}: key '{where}.pairs': the teacher's side must be the task's "
                    f"{teacher_side} (one teacher cache serves every student), found "
                    f"{[pair[0] for pair in student['pairs']]}"
                )
            if student["net"]["complex"] != settings["student"]["complex"]:
                raise KdmriError(
                    f"{source}: key '{where}.net.complex': expected "
                    f"{str(settings['student']['complex']).lower()}, as the task's networks"
                )
            for pair in student["pairs"]:
                if not isinstance(pair[1], str):
                    _check_layer_index(student["net"], pair[1], "student", f"{where}.pairs",
                                       source)
            teacher, net = settings["teacher"], student["net"]
            numbered = any(not isinstance(pair[1], str) for pair in student["pairs"])
            if (numbered and teacher["family"] == net["family"] == "dccnn"
                    and teacher["cascades"] != net["cascades"]):
                raise KdmriError(
                    f"{source}: key '{where}.net.cascades': the teacher's pairs give one "
                    f"attention map per cascade ({teacher['cascades']}), a student paired by "
                    f"conv index needs as many, found {net['cascades']}")


def _check_pairs(config: dict, source: str) -> None:
    """A ``family: python`` network has no numbered convolutions: its task's attention
    pairs name modules by path (checked where the study trains an attention stage)."""
    for task, settings in config["tasks"].items():
        names = evaluated_models(config, task)
        if not any("pairs" in _spec_keys(config, m) for name in names if name != "zf"
                   for m in models_needed(name, config)):
            continue
        python = [role for role in ("teacher", "student") if settings[role]["family"] == "python"]
        numbered = [pair for pair in settings["pairs"] if not isinstance(pair[0], str)]
        if python and numbered:
            raise KdmriError(
                f"{source}: key 'tasks.{task}.pairs': the {' and '.join(python)} network "
                f"(family python) is addressed by module path; give each pair as two module "
                f"paths [teacher, student], e.g. [\"cascades.2.cnn.4\", \"body.3\"], "
                f"found {numbered[0]}"
            )


def is_complex(dataset: dict) -> bool:
    """Whether a dataset's targets are complex images (fastmri prepared from k-space)."""
    return dataset["source"] == "kspace"


def _check_complex(config: dict, source: str) -> None:
    """``source: kspace`` is a fastmri option, and a task's networks are complex exactly
    when its datasets are (one task cannot mix complex and magnitude datasets)."""
    for name, dataset in config["datasets"].items():
        if is_complex(dataset) and dataset["format"] != "fastmri":
            raise KdmriError(
                f"{source}: key 'datasets.{name}.source': kspace is an option of format "
                f"fastmri, found format {dataset['format']!r}"
            )
    for task, settings in config["tasks"].items():
        for name in settings["datasets"]:
            data = "complex (source: kspace)" if is_complex(config["datasets"][name]) \
                else "magnitude"
            for role in ("teacher", "student"):
                if settings[role]["complex"] != is_complex(config["datasets"][name]):
                    raise KdmriError(
                        f"{source}: key 'tasks.{task}.{role}.complex': dataset {name!r} is "
                        f"{data} but the {role} network has complex: "
                        f"{str(settings[role]['complex']).lower()}; a task's networks are "
                        "complex exactly when its datasets are"
                    )


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


def digest(obj: Any) -> str:
    """A short stable digest of plain data (sorted JSON)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def train_settings(config: dict, task: str, stage: str) -> dict:
    """Train settings of one stage: global < stages.<stage> < task train < task stages.<stage>."""
    task_cfg = config["tasks"][task]
    settings = config["train"]
    for override in (config["stages"][stage], task_cfg["train"], task_cfg["stages"][stage]):
        settings = _merge(settings, override)
    return settings


def model_spec(config: dict, task: str, model: str, seed: int) -> dict:
    """Everything that determines a trained model's weights, as plain data.

    Data, masks and teacher weights enter through input files; this holds the rest.
    """
    if task not in config["tasks"]:
        raise KdmriError(f"task {task!r} is not configured; configured: {sorted(config['tasks'])}")
    _, variant = split_model(model, config)
    made = recipe(model, config)
    task_cfg = config["tasks"][task]
    nets = {"teacher": task_cfg["teacher"], "student": task_cfg["student"]}
    pairs = {"pairs": task_cfg["pairs"], "fsp_pairs": task_cfg["fsp_pairs"]}
    if variant is not None:
        students = task_cfg["compression"]["students"]
        if variant not in students:
            raise KdmriError(f"model {model!r}: task {task!r} has no compression student "
                             f"{variant!r}; its students: {sorted(students)}")
        nets["student"] = students[variant]["net"]
        pairs = {key: students[variant][key] for key in pairs}
    spec = {
        "task": task,
        "model": model,
        "stage": made.stage,
        "init": made.init,
        "net": net_spec(nets[STAGES[made.stage].network]),
        "loss_weights": loss_weights(config, made),
        "train": train_settings(config, task, made.stage),
        "seed": int(seed),
    }
    keys = _spec_keys(config, model)
    if "teacher_net" in keys:
        spec["teacher_net"] = net_spec(task_cfg["teacher"])
    if "student_net" in keys:  # a teacher trained with the student's layers (sft)
        spec["student_net"] = net_spec(nets["student"])
    spec.update({key: pairs[key] for key in sorted(keys & set(pairs))})
    return spec


def teacher_sources(config: dict, model: str) -> set[str]:
    """What a model's training reads of its teacher (:data:`~kdmri.distill.terms.
    TEACHER_SOURCES`): ``cache``, ``weights``, both or neither."""
    return {TEACHER_SOURCES[name]
            for term in loss_weights(config, recipe(model, config))
            for name in TERMS[term].inputs if name in TEACHER_SOURCES}


def loss_weights(config: dict, method: Method) -> dict[str, float]:
    """A method's loss: its own, else its stage's (from the study's ``kd`` settings)."""
    if method.loss is not None:
        return dict(method.loss)
    return STAGES[method.stage].loss(config["kd"])


def _spec_keys(config: dict, model: str) -> set[str]:
    """The keys a model's spec carries besides the common ones, from what its loss terms
    take (:data:`kdmri.distill.terms.SPEC_KEYS`): ``teacher_net`` for a term reading the
    teacher, ``pairs`` (``fsp_pairs``) for one taken at the layer pairs."""
    keys = set()
    for term in loss_weights(config, recipe(model, config)):
        for name in TERMS[term].inputs:
            if name in TEACHER_SOURCES:
                keys.add("teacher_net")
            if name in SPEC_KEYS:
                keys.add(SPEC_KEYS[name])
    return keys


def teacher_cache_spec(config: dict, task: str) -> dict:
    """What the teacher cache depends on besides the teacher weights: the layer pairs."""
    task_cfg = config["tasks"][task]
    return {"teacher_net": net_spec(task_cfg["teacher"]), "pairs": task_cfg["pairs"]}


def net_spec(net: dict) -> dict:
    """A network as jobs see it: ``complex`` only where it is true, so that a magnitude
    network's spec (a job's params, a model file's ``net``) is the one it had before the
    option existed and a study trained before is neither re-run nor refused."""
    return {k: v for k, v in net.items() if not (k == "complex" and v is False)}


def models_needed(model: str, config: dict | None = None) -> list[str]:
    """The trained models ``model`` depends on (its init chain), itself last."""
    chain = [model]
    while (init := recipe(chain[0], config).init) is not None:
        chain.insert(0, init)
    return chain


def method_description(config: dict, task: str, model: str) -> dict:
    """How a model of a task is made, for the table of methods: the teacher it learns from
    (the teacher of the last stage of its chain that reads one; None if none does) and its
    stages, first first: stage, loss and epochs."""
    chain = models_needed(model, config)
    reads = [m for m in chain if teacher_sources(config, m)]
    stages = []
    for name in chain:
        made = recipe(name, config)
        stages.append({"stage": made.stage, "loss": loss_weights(config, made),
                       "epochs": train_settings(config, task, made.stage)["epochs"]})
    return {"teacher": recipe(reads[-1], config).teacher if reads else None,
            "stages": stages}


def methods_description(config: dict) -> dict[str, dict[str, dict]]:
    """:func:`method_description` of every trained model of the study's ``models``, per
    task with datasets (``kdmri tables --methods``)."""
    return {task: {m: method_description(config, task, m) for m in config["models"]
                   if m != "zf"}
            for task, settings in config["tasks"].items() if settings["datasets"]}

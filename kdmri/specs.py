"""What each job is given: the job specs built from a validated config.

:func:`model_spec` resolves, for one trained model, exactly the settings that affect it
(its stage, init, network, loss, train settings, seed, and what its loss terms take);
the Snakefile passes it to ``kdmri train`` and uses it as the rule's params, so a change
re-runs only the jobs it touches. :func:`teacher_cache_spec` is the teacher cache's,
:func:`method_description` a model's line in the table of methods.

This module must not import torch: the Snakefile imports it on every invocation.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import replace

from kdmri.distill.terms import SPEC_KEYS, TEACHER_SOURCES, TERMS
from kdmri.errors import KdmriError
from kdmri.methods import (
    STAGES,
    Method,
    evaluated_models,
    loss_weights,
    models_needed,
    recipe,
    split_model,
)
from kdmri.sweeps import SWEEP, setting_of, with_overrides


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
    made = resolved(model, config)
    base = config
    config = with_overrides(config, made.overrides)  # a sweep candidate's setting
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
    if made.init_output is not None:  # a stage output of its init model, not its model.pt
        spec["init_output"] = made.init_output
    if SWEEP in made.teacher:  # a sweep candidate learning from a teacher of its own
        spec["teacher"] = made.teacher
    keys = _spec_keys(base, model)
    if "teacher_net" in keys:
        spec["teacher_net"] = net_spec(task_cfg["teacher"])
    if "student_net" in keys:  # a teacher trained with the student's layers (sft)
        spec["student_net"] = net_spec(nets["student"])
    spec.update({key: pairs[key] for key in sorted(keys & set(pairs))})
    return spec


def canonical(config: dict, model: str) -> str:
    """The model whose job a name's is: for a sweep candidate whose setting changes
    nothing of its job (the spec of every task with datasets, its init and its teacher
    being the model's own), the model itself, so that it is trained and evaluated once;
    else the name itself."""
    name, setting = setting_of(model, config)
    if setting is None:
        return model
    tasks = [t for t, settings in config["tasks"].items() if settings["datasets"]]
    for task in tasks:
        own = {k: v for k, v in model_spec(config, task, name, 0).items() if k != "model"}
        swept = {k: v for k, v in model_spec(config, task, model, 0).items() if k != "model"}
        if own != swept:
            return model
    return name


def resolved(model: str, config: dict) -> Method:
    """:func:`~kdmri.methods.recipe` with the init and the teacher by the name of their
    jobs (:func:`canonical`): where the workflow finds their files (the teacher only where
    the model reads one: :func:`teacher_sources`)."""
    made = recipe(model, config)
    if not made.overrides:
        return made
    teacher = (canonical(config, made.teacher) if teacher_sources(config, model)
               else setting_of(made.teacher, config)[0])  # a teacher it does not read
    return replace(made, init=canonical(config, made.init) if made.init else None,
                   teacher=teacher)


def chain(model: str, config: dict) -> list[str]:
    """:func:`~kdmri.methods.models_needed` by the name of each model's job: the trained
    models ``model``'s job depends on (its init chain), itself last."""
    found = [canonical(config, model)]
    while (init := resolved(found[0], config).init) is not None:
        found.insert(0, init)
    return found


def evaluated(config: dict, task: str) -> list[str]:
    """The jobs of :func:`~kdmri.methods.evaluated_models` (each by :func:`canonical`
    name, once), in order."""
    return list(dict.fromkeys(canonical(config, m) for m in evaluated_models(config, task)))


def teacher_sources(config: dict, model: str) -> set[str]:
    """What a model's training reads of its teacher (:data:`~kdmri.distill.terms.
    TEACHER_SOURCES`): ``cache``, ``weights``, both or neither."""
    return {TEACHER_SOURCES[name]
            for term in loss_weights(config, recipe(model, config))
            for name in TERMS[term].inputs if name in TEACHER_SOURCES}


def spec_keys(terms: Iterable[str]) -> dict[str, str]:
    """The keys a job spec must carry, besides the common ones, for a loss of ``terms``,
    from what each term takes: ``teacher_net`` for a term reading the teacher
    (:data:`~kdmri.distill.terms.TEACHER_SOURCES`), then the key naming the layers or the
    network of each input taken there (:data:`~kdmri.distill.terms.SPEC_KEYS`: ``pairs``,
    ``fsp_pairs``, ``student_net``). Each key maps to the first of ``terms`` that needs it
    (:func:`model_spec` writes these keys; ``kdmri train`` requires them)."""
    keys: dict[str, str] = {}
    for term in terms:
        inputs = TERMS[term].inputs
        if any(name in TEACHER_SOURCES for name in inputs):
            keys.setdefault("teacher_net", term)
        for name in inputs:
            if name in SPEC_KEYS:
                keys.setdefault(SPEC_KEYS[name], term)
    return keys


def _spec_keys(config: dict, model: str) -> set[str]:
    """:func:`spec_keys` of a model's loss."""
    return set(spec_keys(loss_weights(config, recipe(model, config))))


def teacher_cache_spec(config: dict, task: str) -> dict:
    """What the teacher cache depends on besides the teacher weights: the layer pairs."""
    task_cfg = config["tasks"][task]
    return {"teacher_net": net_spec(task_cfg["teacher"]), "pairs": task_cfg["pairs"]}


def net_spec(net: dict) -> dict:
    """A network as jobs see it: ``complex`` only where it is true, so that a magnitude
    network's spec (a job's params, a model file's ``net``) is the one it had before the
    option existed and a study trained before is neither re-run nor refused."""
    return {k: v for k, v in net.items() if not (k == "complex" and v is False)}


def learns_from(config: dict, model: str) -> str | None:
    """The teacher a model's own stage learns from: the teacher it reads
    (:func:`teacher_sources`), else the teacher-stage model whose stage output it starts
    from (``student_sft``: the SFT stage's student cascades); None for neither."""
    made = recipe(model, config)
    if teacher_sources(config, model):
        return made.teacher
    return made.init if made.init_output is not None else None


def method_description(config: dict, task: str, model: str) -> dict:
    """How a model of a task is made, for the table of methods: the teacher it learns from
    (:func:`learns_from` of the last model of its chain that learns from one; None if none
    does) and its stages, first first: stage, loss, epochs and ``model`` (the model that
    stage trains)."""
    chain = models_needed(model, config)
    teachers = [t for m in chain if (t := learns_from(config, m))]
    stages = []
    for name in chain:
        made = recipe(name, config)
        stages.append({"stage": made.stage, "loss": loss_weights(config, made),
                       "epochs": train_settings(config, task, made.stage)["epochs"],
                       "model": name})
    return {"teacher": teachers[-1] if teachers else None, "stages": stages}


def methods_description(config: dict) -> dict[str, dict[str, dict]]:
    """:func:`method_description` of every trained model of the study's ``models``, per
    task with datasets (``kdmri tables --methods``)."""
    return {task: {m: method_description(config, task, m) for m in config["models"]
                   if m != "zf"}
            for task, settings in config["tasks"].items() if settings["datasets"]}

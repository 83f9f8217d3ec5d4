"""The training stages and the methods: how each trained model is made.

:data:`STAGES` is the table of training stages (the network each trains, its default
loss), :data:`MODELS` the shipped methods (each model's stage, the model it starts from,
its loss, the model it learns from); a study adds its own (``methods`` in its config,
:func:`methods`). The functions here resolve a model's name (``kd``, ``kd@d5c3f16``) to
its method, its init chain and its loss, and list the models a study trains and
evaluates. The job specs built from them are :mod:`kdmri.specs`'s.

This module must not import torch: the Snakefile imports it on every invocation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from kdmri.errors import KdmriError
from kdmri.sweeps import candidates, setting_of, with_overrides


@dataclass(frozen=True)
class Stage:
    """A training stage: the network it trains, and its loss (term name -> weight) as a
    function of the study's ``kd`` settings, for the models that do not give their own
    (None: every model of the stage gives its loss). A stage's train settings are
    ``train`` merged with its ``stages.<name>`` overrides (:func:`train_settings`).

    ``select`` is the loss term whose validation value chooses the best epoch (the weights
    ``model.pt`` keeps; None: the weighted sum of all terms). ``outputs`` names the files
    the stage writes beside ``model.pt`` (name -> file name), each a model file of a
    network the stage trains besides its own; a method starts from one by naming it
    (:attr:`Method.init_output`)."""

    network: str
    loss: Callable[[dict], dict[str, float]] | None
    select: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)


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
    # the student's cascades (step 1); its best epoch is the teacher's own (its validation
    # reconstruction loss), its teacher cascades then teach any method, and its student
    # cascades are the student the *_sft methods start from (step 2)
    "sft": Stage("teacher", lambda kd: {"reconstruction": 1.0,
                                        "sft_reconstruction": kd["sft_branch_reconstruction"],
                                        "sft_imitation": kd["sft_branch_imitation"]},
                 select="reconstruction", outputs={"student": "sft_student.pt"}),
}


@dataclass(frozen=True)
class Method:
    """How one trained model is made: its stage, the model it starts from (``init``), its
    loss where it is not its stage's, the model whose outputs and features the
    distillation terms read (``teacher``), and which file of ``init`` it starts from
    (``init_output``: None for its ``model.pt``, else one of the ``outputs`` of the init
    model's stage, e.g. ``student``: the SFT stage's student cascades). ``overrides``: a
    sweep candidate's setting, the config keys (dotted) and values it is trained under
    (:mod:`kdmri.sweeps`)."""

    stage: str
    init: str | None = None
    loss: dict[str, float] | None = None
    teacher: str = "teacher"
    init_output: str | None = None
    overrides: tuple[tuple[str, Any], ...] = ()


#: The feature methods, each shipped as ``hint_<name>`` (a hint stage weighing that term
#: alone) and ``kd_<name>`` (then the imitation stage): name -> loss term. CC's is the
#: embedded form, as its paper computes it; its pooled form (``cc``) stays a term a study
#: can weigh. docs/methods.md says why each suits image-to-image networks.
FEATURE_METHODS = {"fitnets": "fitnets", "fsp": "fsp", "sp": "sp", "cc": "cc_embedded",
                   "vid": "vid", "ab": "ab", "ickd": "ickd"}

#: The shipped methods: every trained model by name (``zf``, the zero-filled input, is
#: evaluated but not trained). A study adds its own under ``methods`` (:func:`methods`).
#: ``kd_<name>`` is SFT-KD-Recon's comparison: a hint stage with that feature loss, then
#: the imitation stage, as ``kd`` is the paper's attention stage then imitation. These
#: start from random weights (FitNets' protocol); ``<name>_fromstudent`` is the same method
#: started from the trained plain student (``student``), as SFT-KD-Recon's scripts run
#: their hint stages; ``<name>_sft`` learns from the student-friendly teacher and starts
#: from the SFT stage's student cascades (SFT-KD-Recon's steps 1 and 2), and
#: ``student_sft`` is that student trained on, with no distillation.
_STANDARD: dict[str, Method] = {
    "attention": Method("attention"),
    "kd": Method("imitation", init="attention"),
    "kd_imitation": Method("imitation"),
    "kd_attention": Method("student", init="attention"),
    **{name: method for short, term in FEATURE_METHODS.items() for name, method in (
        (f"hint_{short}", Method("hint", loss={term: 1.0})),
        (f"kd_{short}", Method("imitation", init=f"hint_{short}")),
    )},
}


def _variant(method: Method, suffix: str, init: str, init_output: str | None,
             teacher: str) -> Method:
    """``method`` learning from ``teacher``, its init renamed ``<init><suffix>`` where it
    has one, else (the first stage of its chain) started from ``init`` (its
    ``init_output``)."""
    if method.init:
        return Method(method.stage, f"{method.init}{suffix}", method.loss, teacher)
    return Method(method.stage, init, method.loss, teacher, init_output)


#: How each variant of the standard methods starts its chain: (init, init_output, teacher).
_STARTS = {
    "_fromstudent": ("student", None, "teacher"),
    "_sft": ("sft_teacher", "student", "sft_teacher"),
}
MODELS: dict[str, Method] = {
    "teacher": Method("teacher"),
    "student": Method("student"),
    "sft_teacher": Method("sft"),
    "student_sft": _variant(Method("student"), "_sft", *_STARTS["_sft"]),
    **_STANDARD,
    **{f"{name}{suffix}": _variant(m, suffix, *start)
       for suffix, start in _STARTS.items() for name, m in _STANDARD.items()},
}
#: Between a model and a compression student's name: ``kd@d5c3f16`` is the model ``kd``
#: trained with the student network ``d5c3f16`` of its task's ``compression.students``.
VARIANT = "@"


def methods(config: dict | None = None) -> dict[str, Method]:
    """The method table of a study: the shipped :data:`MODELS` and the study's own
    ``methods`` (None: the shipped ones)."""
    table = dict(MODELS)
    for name, entry in (config["methods"] if config is not None else {}).items():
        table[name] = Method(entry["stage"], entry["init"], entry["loss"], entry["teacher"],
                             entry["init_output"])
    return table


def split_model(model: str, config: dict | None = None) -> tuple[str, str | None]:
    """``(method, student)`` of a model name: ``("kd", "d5c3f16")`` for ``kd@d5c3f16``,
    ``("kd", None)`` for ``kd`` (and for a sweep's candidate ``kd~alpha~0.3``). Raises
    :class:`KdmriError` for a name that is neither."""
    return _split(setting_of(model, config)[0], methods(config))


def _split(model: str, table: dict[str, Method]) -> tuple[str, str | None]:
    base, sep, variant = model.partition(VARIANT)
    if base not in table or (sep and not variant):
        raise KdmriError(f"unknown model {model!r}; expected one of {sorted(table)}, "
                         f"optionally followed by {VARIANT}<student name>")
    return base, variant or None


def recipe(model: str, config: dict | None = None) -> Method:
    """The method of a model name (the study's table where ``config`` is given); a
    compression student's model starts from the model of the same student (``kd@s`` from
    ``attention@s``); a sweep's candidate (``kd~alpha~0.3``) is its model's method under
    the setting's values (``overrides``), starting from and learning from the candidates
    of the same setting (``attention~alpha~0.3``, ``teacher~alpha~0.3``; where the setting
    leaves such a job unchanged, that is the model itself: :func:`kdmri.specs.canonical`)."""
    table = methods(config)
    name, setting = setting_of(model, config)
    base, variant = _split(name, table)
    found = table[base]
    if variant and found.init:
        found = replace(found, init=f"{found.init}{VARIANT}{variant}")
    if setting is not None:
        suffix = model[len(name):]
        found = replace(found, init=f"{found.init}{suffix}" if found.init else None,
                        teacher=f"{found.teacher}{suffix}",
                        overrides=tuple(setting.items()))
    return found


def init_file(method: Method, config: dict | None = None) -> str | None:
    """The file of its ``init`` model's folder a method starts from: ``model.pt``, or the
    stage output its ``init_output`` names (``sft_student.pt``); None without an init."""
    if method.init is None:
        return None
    if method.init_output is None:
        return "model.pt"
    return STAGES[recipe(method.init, config).stage].outputs[method.init_output]


def compression_models(config: dict, task: str) -> list[str]:
    """The models a task's compression study evaluates: per student ``s``, ``student@s``
    and ``<method>@s`` (in the order the students are listed)."""
    comp = config["tasks"][task]["compression"]
    return [f"{m}{VARIANT}{s}" for s in comp["students"] for m in ("student", comp["method"])]


def evaluated_models(config: dict, task: str) -> list[str]:
    """Every model evaluated in a task's cells: the study's ``models``, then, where the task
    has a compression study, the teacher (its point on the curve) and the students', then
    each sweep candidate (by name: one that is its model itself, as
    :func:`kdmri.specs.canonical` finds, is evaluated once)."""
    models = list(config["models"])
    extra = compression_models(config, task)
    if extra and "teacher" not in models:
        models.append("teacher")
    return models + extra + [name for name, model, *_ in candidates(config) if model in models]


def study_models(config: dict) -> list[str]:
    """Every model name any task of the study may train or evaluate (with each
    compression model's and each sweep candidate's init chain, and the candidates of the
    teachers they learn from), for the workflow's wildcards."""
    names = {"zf", *methods(config)}
    for task in config["tasks"]:
        names.update(m for model in compression_models(config, task)
                     for m in models_needed(model, config))
    for name, *_ in candidates(config):
        chain = models_needed(name, config)
        names.update(chain)
        names.update(m for model in chain
                     for m in models_needed(recipe(model, config).teacher, config))
    return sorted(names)


def models_needed(model: str, config: dict | None = None) -> list[str]:
    """The trained models ``model`` depends on (its init chain), itself last."""
    chain = [model]
    while (init := recipe(chain[0], config).init) is not None:
        chain.insert(0, init)
    return chain


def loss_weights(config: dict, method: Method) -> dict[str, float]:
    """A method's loss: its own, else its stage's (from the study's ``kd`` settings, under
    a sweep candidate's ``overrides``)."""
    if method.loss is not None:
        return dict(method.loss)
    return STAGES[method.stage].loss(with_overrides(config, method.overrides)["kd"])

"""The checks across keys of a study config, after the schema's (one key at a time).

:func:`check_study` runs them on a validated config with its defaults filled
(:func:`kdmri.config.validate` calls it): the study's methods extend the shipped table
soundly, every dataset a task names exists, multi-coil data go to networks that take
them (a multi-coil family, E2E-VarNet; DC-CNN by SENSE, with the dataset's sensitivity
maps; the U-Net without DC by RSS) in the reconstruction task and a multi-coil family to
nothing else, the demo's simulated coils are set where they apply, complex networks go
with complex data, the layer pairs fit the networks, and a student-friendly teacher has DC-CNN
cascades to branch at.
Each raises :class:`KdmriError` with one line naming the key, what was expected and what
was found. What a network family can do is read from its registry entry
(:data:`kdmri.models.MODEL_FAMILIES`), never from its name.
"""

from __future__ import annotations

from kdmri.data.coils import coil_settings
from kdmri.data.readers import fastmri_kspace_shape
from kdmri.data.sensitivity import maps_settings
from kdmri.distill.terms import TERMS
from kdmri.errors import KdmriError
from kdmri.methods import MODELS, STAGES, evaluated_models, methods, models_needed, recipe
from kdmri.models import (
    COIL_INPUTS,
    MODEL_FAMILIES,
    coil_input,
    coil_requirements,
    family,
)
from kdmri.specs import _spec_keys, canonical
from kdmri.sweeps import candidate


def check_study(config: dict, source: str) -> None:
    """Every check across keys of ``config`` (validated, defaults filled), in order; the
    first failing one raises."""
    _check_methods(config, source)
    for task, settings in config["tasks"].items():
        for name in settings["datasets"]:
            if name not in config["datasets"]:
                raise KdmriError(
                    f"{source}: key 'tasks.{task}.datasets': unknown dataset {name!r}; "
                    f"defined datasets: {sorted(config['datasets'])}"
                )
    _check_evaluate_on(config, source)
    _check_multicoil(config, source)
    _check_simulated_coils(config, source)
    _check_complex(config, source)
    _check_pairs(config, source)
    _check_compression(config, source)
    _check_sft(config, source)
    _check_sweeps(config, source)


def _check_sweeps(config: dict, source: str) -> None:
    """Each sweep varies models of ``models`` (not zf), and each key it names changes the
    job of at least one of them for at least one of its values (a key that changes none
    would train the same models again under other names)."""
    for name, sweep in config["sweeps"].items():
        for i, model in enumerate(sweep["models"]):
            if model == "zf" or model not in config["models"]:
                raise KdmriError(f"{source}: key 'sweeps.{name}.models.{i}': {model!r} is not "
                                 f"a trained model of models {config['models']}")
        for key, values in sweep["values"].items():
            alone = {**config, "sweeps": {name: {**sweep, "values": {key: values},
                                                 "combine": "grid"}}}
            if not any(canonical(alone, candidate(model, name, {key: value})) != model
                       for model in sweep["models"] for value in values):
                raise KdmriError(
                    f"{source}: key 'sweeps.{name}.values.{key}': changes nothing any of "
                    f"{sweep['models']} is trained with, for any of its values {values} "
                    "(the setting a model's stages read: docs/sweeps.md)")


def evaluation_cells(config: dict, task: str) -> dict[str, tuple[str, str]]:
    """A task's evaluation-only cells: ``<dataset>_from_<trained-on>`` -> (the dataset it
    is evaluated on, the dataset its models were trained on), per ``evaluate_on`` and
    ``datasets`` of the task, in order."""
    settings = config["tasks"][task]
    return {f"{name}_from_{trained}": (name, trained)
            for name in settings["evaluate_on"] for trained in settings["datasets"]}


def _check_evaluate_on(config: dict, source: str) -> None:
    """A task's evaluation-only datasets are defined, not among the datasets it trains on,
    of the same kind (complex or magnitude) as those, and their cells' names are no
    dataset's."""
    for task, settings in config["tasks"].items():
        for i, name in enumerate(settings["evaluate_on"]):
            where = f"tasks.{task}.evaluate_on.{i}"
            if name not in config["datasets"]:
                raise KdmriError(f"{source}: key '{where}': unknown dataset {name!r}; "
                                 f"defined datasets: {sorted(config['datasets'])}")
            if name in settings["datasets"]:
                raise KdmriError(f"{source}: key '{where}': {name!r} is a dataset the task "
                                 "trains on; its test split is evaluated already")
            for trained in settings["datasets"]:
                kinds = data_kind(config["datasets"][name]), data_kind(config["datasets"][trained])
                if kinds[0] != kinds[1]:
                    raise KdmriError(
                        f"{source}: key '{where}': {name!r} is {kinds[0]} data and {trained!r} "
                        f"(trained on) {kinds[1]}; a task's models are evaluated on data of "
                        "the kind they were trained on (multi-coil, complex or magnitude)")
        for cell in evaluation_cells(config, task):
            if cell in config["datasets"]:
                raise KdmriError(f"{source}: key 'tasks.{task}.evaluate_on': its cell {cell!r} "
                                 "is also the name of a dataset; rename that dataset")


def check_terms(loss: dict, where: str, source: str) -> None:
    """Every term a loss (term name -> weight) names is in the table
    :data:`kdmri.distill.terms.TERMS`; ``where`` is the loss's key."""
    for term in loss:
        if term not in TERMS:
            raise KdmriError(f"{source}: key '{where}': unknown loss term {term!r}; "
                             f"terms: {list(TERMS)}")


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
        if entry["init_output"] is not None:
            outputs = STAGES[table[entry["init"]].stage].outputs if entry["init"] else {}
            if entry["init_output"] not in outputs:
                raise KdmriError(f"{source}: key '{where}.init_output': the init's stage writes "
                                 f"no {entry['init_output']!r}; its outputs: "
                                 f"{sorted(outputs) or 'none besides model.pt'}")
        if STAGES[table[entry["teacher"]].stage].network != "teacher":
            raise KdmriError(f"{source}: key '{where}.teacher': {entry['teacher']!r} is "
                             f"trained in the {table[entry['teacher']].stage} stage, not as a "
                             "teacher")
        if entry["loss"] is None and STAGES[entry["stage"]].loss is None:
            raise KdmriError(f"{source}: key '{where}.loss': a {entry['stage']} stage has no "
                             f"loss of its own; give the terms, e.g. {{fitnets: 1.0}}")
        check_terms(entry["loss"] or {}, f"{where}.loss", source)
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


def _task_nets(task: str, settings: dict) -> dict[str, dict]:
    """A task's networks by their key: teacher, student and the compression students."""
    nets = {f"tasks.{task}.{role}": settings[role] for role in ("teacher", "student")}
    nets |= {f"tasks.{task}.compression.students.{name}.net": student["net"]
             for name, student in settings["compression"]["students"].items()}
    return nets


def _single_coil(dataset: dict) -> bool:
    """Whether a dataset is known before any job runs to give single-coil data: any but the
    demo with ``simulated_coils`` and fastmri with ``source: kspace``, and the latter where
    its first file's ``kspace`` has 3 dims (slices x H x W)."""
    if dataset["format"] == "fastmri" and is_complex(dataset):  # one read of the first file
        found = fastmri_kspace_shape(dataset)
        return found is not None and len(found[1]) == 3
    return not is_multicoil(dataset)


def _check_coil_net(where: str, net: dict, name: str, dataset: dict, at: str,
                    source: str) -> None:
    """The network ``net`` (at key ``where``) takes the multi-coil dataset ``name`` (at key
    ``at``): it has a coil input (:func:`kdmri.models.coil_input`; else the first option
    it lacks is named, or the families that take multi-coil data), and the dataset has the
    keys that input reads (SENSE: sensitivity maps)."""
    kind = coil_input(net)
    if kind is None:
        needed = coil_requirements(net)
        if needed:
            key, value = next((k, v) for k, v in needed if net.get(k) != v)
            entry = family(net)
            raise KdmriError(
                f"{source}: key '{where}.{key}': dataset {name!r} ({at}) is multi-coil "
                f"({coil_source(dataset)}); family {net['family']} takes it with {key}: "
                f"{str(value).lower()} ({COIL_INPUTS[entry.coil_input].description}), "
                f"found {str(net.get(key)).lower()}")
        takers = [n for n, e in MODEL_FAMILIES.items() if e.multicoil or e.coil_input]
        raise KdmriError(
            f"{source}: key '{at}': dataset {name!r} is multi-coil ({coil_source(dataset)}), which "
            f"{where} (family {net['family']}) does not take: it reconstructs single-coil "
            f"images; use family {' or '.join(takers)}")
    if "maps" in COIL_INPUTS[kind].keys and maps_settings(dataset) is None:
        raise KdmriError(
            f"{source}: key 'datasets.{name}.sensitivity_maps': {where} (family "
            f"{net['family']}) takes {COIL_INPUTS[kind].description}, which needs the "
            f"dataset's sensitivity maps; set sensitivity_maps: {{kind: espirit}} on "
            f"dataset {name!r}")


def _check_multicoil(config: dict, source: str) -> None:
    """Multi-coil data and the networks that take them go together: a multi-coil family
    (``multicoil`` in the registry entry: E2E-VarNet, fed the coil k-space and the mask)
    serves its tasks only (reconstruction), returns the RSS magnitude image (``complex:
    false``) and takes no dataset known to be single-coil; a multi-coil dataset (the demo
    with ``simulated_coils``) goes to a task that multi-coil families serve, and each of
    its networks takes it (:func:`_check_coil_net`: DC-CNN with ``complex: true`` by SENSE,
    the U-Net with ``dc: false`` by RSS)."""
    coil_families = [n for n, e in MODEL_FAMILIES.items() if e.multicoil]
    single_families = [n for n, e in MODEL_FAMILIES.items() if not e.multicoil]
    coil_tasks = sorted({t for n in coil_families for t in MODEL_FAMILIES[n].tasks})
    for task, settings in config["tasks"].items():
        nets = _task_nets(task, settings)
        for where, net in nets.items():
            entry = family(net)
            if entry.multicoil and task not in entry.tasks:
                raise KdmriError(
                    f"{source}: key '{where}.family': family {net['family']} reconstructs "
                    f"multi-coil k-space in task(s) {', '.join(entry.tasks)}, not in {task!r}")
            if entry.multicoil and net["complex"]:
                raise KdmriError(
                    f"{source}: key '{where}.complex': family {net['family']} reconstructs "
                    "multi-coil k-space to the RSS magnitude image; complex must be false")
        for key in ("datasets", "evaluate_on"):
            for i, name in enumerate(settings[key]):
                dataset, at = config["datasets"][name], f"tasks.{task}.{key}.{i}"
                if is_multicoil(dataset):
                    if task not in coil_tasks:
                        raise KdmriError(
                            f"{source}: key '{at}': dataset {name!r} is multi-coil "
                            f"({coil_source(dataset)}), which task {task!r} does not take (multi-coil "
                            f"data are reconstructed: task(s) {', '.join(coil_tasks)})")
                    for where, net in nets.items():
                        _check_coil_net(where, net, name, dataset, at, source)
                elif _single_coil(dataset):
                    for where, net in nets.items():
                        if family(net).multicoil:
                            raise KdmriError(
                                f"{source}: key '{where}.family': family {net['family']} "
                                f"reconstructs multi-coil k-space, and dataset {name!r} "
                                f"({at}) is single-coil; set simulated_coils on a demo "
                                f"dataset, or use a single-coil family "
                                f"({', '.join(single_families)})")


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
        coil = [role for role in ("teacher", "student") if family(settings[role]).multicoil]
        if coil:
            raise KdmriError(
                f"{source}: key 'tasks.{task}.{coil[0]}.family': {uses[0]} needs the "
                f"student-friendly teacher, whose branches run DC-CNN cascades on images; "
                f"family {settings[coil[0]]['family']} reconstructs multi-coil k-space and "
                "is not supported")
        coil_data = [(key, i, name) for key in ("datasets", "evaluate_on")
                     for i, name in enumerate(settings[key])
                     if is_multicoil(config["datasets"][name])]
        if coil_data:
            key, i, name = coil_data[0]
            raise KdmriError(
                f"{source}: key 'tasks.{task}.{key}.{i}': {uses[0]} needs the "
                f"student-friendly teacher, whose branches run single-coil data "
                f"consistency; dataset {name!r} is multi-coil "
                f"({coil_source(config['datasets'][name])}), which it "
                "does not support")
        if not (family(teacher).cascades and family(student).cascades):
            without = [name for name, entry in MODEL_FAMILIES.items() if not entry.cascades]
            raise KdmriError(
                f"{source}: key 'models': {uses[0]} needs the student-friendly teacher, which "
                f"needs DC-CNN teacher and student (cascades to branch at); task {task!r} has "
                f"{teacher['family']} and {student['family']} (families without cascades: "
                f"{', '.join(without)})")
        if teacher["cascades"] != student["cascades"]:
            raise KdmriError(
                f"{source}: key 'tasks.{task}.student.cascades': the student-friendly teacher "
                f"needs as many student as teacher cascades ({teacher['cascades']}), found "
                f"{student['cascades']}")


def _check_layer_index(net: dict, index: int, role: str, where: str, source: str) -> None:
    """A numbered pair layer must be a hidden convolution of a network numbered by
    convolution (one whose activation exists: 1 .. convs - 1); other families are checked
    when they are built."""
    if family(net).convs and not 1 <= index < net["convs"]:
        raise KdmriError(
            f"{source}: key '{where}': the {role}'s conv {index} has no activation; expected "
            f"1..{net['convs'] - 1} for {net['family']} with {net['convs']} convolutions"
        )


def _check_compression(config: dict, source: str) -> None:
    """Each compression student pairs its own layers with the teacher layers of the task's
    pairs (one teacher cache serves every student; its pairs default to the task's, filled
    by :func:`kdmri.config.validate`)."""
    for task, settings in config["tasks"].items():
        students = settings["compression"]["students"]
        teacher_side = [pair[0] for pair in settings["pairs"]]
        for name, student in students.items():
            where = f"tasks.{task}.compression.students.{name}"
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
            if (numbered and family(teacher).cascades and family(net).cascades
                    and teacher["cascades"] != net["cascades"]):
                raise KdmriError(
                    f"{source}: key '{where}.net.cascades': the teacher's pairs give one "
                    f"attention map per cascade ({teacher['cascades']}), a student paired by "
                    f"conv index needs as many, found {net['cascades']}")


def _check_pairs(config: dict, source: str) -> None:
    """A network whose layers have no numbers (``family: python``) is addressed by module
    path: its task's attention pairs name modules (checked where the study trains an
    attention stage)."""
    for task, settings in config["tasks"].items():
        names = evaluated_models(config, task)
        if not any("pairs" in _spec_keys(config, m) for name in names if name != "zf"
                   for m in models_needed(name, config)):
            continue
        by_path = [role for role in ("teacher", "student") if not family(settings[role]).numbered]
        numbered = [pair for pair in settings["pairs"] if not isinstance(pair[0], str)]
        if by_path and numbered:
            families = sorted({settings[role]["family"] for role in by_path})
            raise KdmriError(
                f"{source}: key 'tasks.{task}.pairs': the {' and '.join(by_path)} network "
                f"(family {' and '.join(families)}) is addressed by module path; give each pair "
                f"as two module paths [teacher, student], e.g. [\"cascades.2.cnn.4\", \"body.3\"], "
                f"found {numbered[0]}"
            )


def is_complex(dataset: dict) -> bool:
    """Whether a dataset's targets are complex images (fastmri prepared from k-space)."""
    return dataset["source"] == "kspace"


def coil_source(dataset: dict) -> str | None:
    """Why a dataset is known before any job runs to give multi-coil data (None where it is
    not): the demo with ``simulated_coils`` (a count above 0), or a fastmri dataset with
    ``source: kspace`` whose first file holds multi-coil ``kspace`` (slices x coils x H x
    W; :func:`kdmri.data.readers.fastmri_kspace_shape` reads its shape, not its data)."""
    if dataset["format"] == "demo" and coil_settings(dataset) is not None:
        return "simulated_coils"
    found = fastmri_kspace_shape(dataset)
    if found is not None and len(found[1]) == 4:
        return f"{found[0].name}: kspace of shape {found[1]}"
    return None


def is_multicoil(dataset: dict) -> bool:
    """Whether a dataset is known before any job runs to give multi-coil data
    (:func:`coil_source`). A fastmri k-space dataset whose files cannot be read yet is
    not; the stages then check the prepared stores (:func:`kdmri.data.store.coil_count`)."""
    return coil_source(dataset) is not None


def data_kind(dataset: dict) -> str:
    """What a dataset's models reconstruct: ``multi-coil`` data (:func:`is_multicoil`),
    ``complex`` single-coil images (fastmri from k-space) or ``magnitude`` images."""
    if is_multicoil(dataset):
        return "multi-coil"
    return "complex" if is_complex(dataset) else "magnitude"


def _check_simulated_coils(config: dict, source: str) -> None:
    """``simulated_coils`` is a demo option that replaces the demo's magnitude noise (which
    tasks and networks take a multi-coil dataset: :func:`_check_multicoil`)."""
    for name, dataset in config["datasets"].items():
        coils = coil_settings(dataset)
        if coils is None:
            continue
        where = f"datasets.{name}.simulated_coils"
        if dataset["format"] != "demo":
            raise KdmriError(f"{source}: key '{where}': simulated coils are an option of "
                             f"format demo, found format {dataset['format']!r}")
        if dataset["noise"] > 0:
            raise KdmriError(
                f"{source}: key 'datasets.{name}.noise': {dataset['noise']} with "
                f"simulated_coils; the coils' noise is set by simulated_coils.snr_db "
                f"({coils['snr_db']} dB), so noise must be 0")


def _check_complex(config: dict, source: str) -> None:
    """``source: kspace`` is a fastmri option, sensitivity maps one of multi-coil data,
    and a task's networks are complex exactly when its datasets are (one task cannot mix
    complex and magnitude datasets); a multi-coil family's networks are never complex:
    they take the coil k-space of a dataset prepared from k-space and return the RSS
    magnitude image, its target. On a multi-coil demo dataset the coil input decides
    (:func:`_check_coil_net`: DC-CNN is complex, on the SENSE-combined image)."""
    for name, dataset in config["datasets"].items():
        if is_complex(dataset) and dataset["format"] != "fastmri":
            raise KdmriError(
                f"{source}: key 'datasets.{name}.source': kspace is an option of format "
                f"fastmri, found format {dataset['format']!r}"
            )
        if "coil_compression" in dataset and not (dataset["format"] == "fastmri"
                                                  and is_complex(dataset)):
            raise KdmriError(
                f"{source}: key 'datasets.{name}.coil_compression': coil compression is an "
                "option of format fastmri with source kspace (multi-coil files); found format "
                f"{dataset['format']!r} with source {dataset['source']!r}")
        maps = maps_settings(dataset)
        if maps is not None and not (is_complex(dataset) or is_multicoil(dataset)):
            raise KdmriError(
                f"{source}: key 'datasets.{name}.sensitivity_maps': {maps['kind']} maps are computed "
                "from multi-coil k-space, an option of format fastmri with source kspace or of "
                f"the demo with simulated_coils; found format {dataset['format']!r} with source "
                f"{dataset['source']!r}"
            )
    for task, settings in config["tasks"].items():
        for name in settings["datasets"]:
            if is_multicoil(config["datasets"][name]):
                continue  # a network's complex on multi-coil data: _check_coil_net
            data = "complex (source: kspace)" if is_complex(config["datasets"][name]) \
                else "magnitude"
            for role in ("teacher", "student"):
                if family(settings[role]).multicoil:
                    continue
                if settings[role]["complex"] != is_complex(config["datasets"][name]):
                    raise KdmriError(
                        f"{source}: key 'tasks.{task}.{role}.complex': dataset {name!r} is "
                        f"{data} but the {role} network has complex: "
                        f"{str(settings[role]['complex']).lower()}; a task's networks are "
                        "complex exactly when its datasets are"
                    )


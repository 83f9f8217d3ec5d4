# Validation, grids, wildcard constraints, and the input and params functions (the rule
# files hold rules only). Rules stay thin: they call the kdmri CLI; everything a job's
# result depends on reaches it as --spec JSON, which is also the rule's params, so a
# changed setting re-runs exactly the jobs it touches.
import json
import os
import re
import shlex

import pandas as pd

from kdmri.comparisons import HINT_STAGES, compares_methods
from kdmri.config import apply_overrides, validate
from kdmri.crosschecks import evaluation_cells
from kdmri.data.readers import dataset_spec, source_files
from kdmri.keys import SPLITS
from kdmri.methods import (
    STAGES,
    compression_models,
    init_file,
    recipe,
    study_models,
)
from kdmri.priorities import StudyPriorities
from kdmri.provenance import recorded_config
from kdmri.specs import (
    canonical,
    evaluated,
    methods_description,
    model_spec,
    resolved,
    teacher_cache_spec,
    teacher_sources,
)
from kdmri.sweeps import candidates, swept_models
from kdmri.tables import has_ablation
from kdmri.tracking import environment as tensorboard_environment

# Validate before any key is read: an unknown key or a wrong type stops the run here.
# --config values arrive as strings where nested; apply_overrides types them by the schema.
config = validate(
    apply_overrides(config, workflow.config_settings.config or {}), source="config"
)

R = config["results"]
TRAIN_THREADS = config["resources"]["train_threads"]
THREADS = config["resources"]["threads"]
GPU = config["resources"]["gpu"]
# k GPU jobs share each GPU (kdmri.device reads this when a job claims its slot). An
# environment variable, not a command option: changing how jobs share GPUs re-runs nothing.
os.environ.update(KDMRI_JOBS_PER_GPU=str(config["resources"]["jobs_per_gpu"]))
# Live training curves (logging.tensorboard): the log folder reaches `kdmri train` by the
# environment too, so switching logging re-runs nothing (kdmri.tracking).
os.environ.update(tensorboard_environment(config))


def cluster_resources(gpu_job):
    """Memory (MB), wall time (minutes) and, where the study names one, the SLURM partition
    of a job with or without a GPU; cluster profiles use them, a local run ignores them.
    """
    res = config["resources"]
    partition = (
        (res["gpu_partition"] or res["partition"]) if gpu_job else res["partition"]
    )
    resources = {
        "mem_mb": res["mem_mb"] if gpu_job else res["cpu_mem_mb"],
        "runtime": res["runtime"] if gpu_job else res["cpu_runtime"],
    }
    if partition:
        resources["slurm_partition"] = partition
    return resources


GPU_JOB = cluster_resources(gpu_job=True)
CPU_JOB = cluster_resources(gpu_job=False)


def predict_resources():
    """A network's prediction is a GPU job (it claims a GPU as training does); zf's is not."""

    def pick(key):
        return lambda w: (CPU_JOB if w.model == "zf" else GPU_JOB).get(key, "")

    return {
        "gpu": lambda w: 0 if w.model == "zf" else GPU,
        **{key: pick(key) for key in sorted(GPU_JOB.keys() | CPU_JOB.keys())},
    }


def acc_str(value):
    return f"{float(value):g}"


def grid():
    """(task, dataset, acceleration, seed) of every configured study cell."""
    for task, settings in config["tasks"].items():
        for dataset in settings["datasets"]:
            for acc in settings["accelerations"]:
                for seed in config["seeds"]:
                    yield task, dataset, acc_str(acc), seed


CELLS = list(grid())
TRAINED_DATASETS = sorted({d for _, d, _, _ in CELLS})
# evaluation-only cells (tasks.<task>.evaluate_on): <dataset>_from_<trained-on>, with the
# dataset they read and the one their models were trained on
EVALUATED = {
    cell: pair
    for task, settings in config["tasks"].items()
    if settings["datasets"]
    for cell, pair in evaluation_cells(config, task).items()
}
EVAL_CELLS = [
    (task, cell, acc_str(acc), seed)
    for task, settings in config["tasks"].items()
    for cell in evaluation_cells(config, task)
    for acc in settings["accelerations"]
    for seed in config["seeds"]
]
# the dataset wildcard's values: datasets prepared, cells of datasets
DATASETS = sorted(
    {*TRAINED_DATASETS, *EVALUATED, *(name for name, _ in EVALUATED.values())}
)


def data_name(dataset):
    """The prepared dataset a cell's dataset wildcard reads: itself, or the dataset an
    evaluation-only cell is evaluated on."""
    return EVALUATED[dataset][0] if dataset in EVALUATED else dataset


def trained_on(dataset):
    """The dataset whose cell holds a cell's models: itself, or the dataset an
    evaluation-only cell's models were trained on."""
    return EVALUATED[dataset][1] if dataset in EVALUATED else dataset


# every model name a job may have: the model table's, each compression student's and
# each sweep candidate's
STUDY_MODELS = study_models(config)


def names_pattern(names):
    """A wildcard constraint matching exactly these names (a candidate's has dots)."""
    return "|".join(re.escape(n) for n in names) if names else "none"


wildcard_constraints:
    task="recon|sr",
    dataset=names_pattern(DATASETS),
    acc=r"[0-9]+(\.[0-9]+)?",
    seed=r"[0-9]+",
    model=names_pattern(STUDY_MODELS),
    split="train|val|test",


def model_dir(
    task="{task}", dataset="{dataset}", acc="{acc}", model="{model}", seed="{seed}"
):
    """The folder of one model of one study cell, R/<task>/<dataset>/acc<acc>/<model>/seed<seed>
    (the cell's mask and zero-filled inputs are its model `inputs`). The defaults are the
    wildcards: model_dir() is the pattern of the rules' outputs."""
    return f"{R}/{task}/{dataset}/acc{acc}/{model}/seed{seed}"


def cell_dir(w, model):
    """The folder of `model` in the cell of the job with wildcards `w`."""
    return model_dir(w.task, w.dataset, w.acc, model, w.seed)


def job_key(model=True):
    """A job's name in its log and benchmark files: <task>_<dataset>_acc<acc>[_<model>]_seed<seed>
    (wildcards)."""
    return "{task}_{dataset}_acc{acc}" + ("_{model}" if model else "") + "_seed{seed}"


def figure_dir(task="{task}", dataset="{dataset}", acc="{acc}", seed="{seed}"):
    """The folder of one cell's figures (defaults: the wildcards, as model_dir)."""
    return f"{R}/figures/{task}/{dataset}/acc{acc}/seed{seed}"


# The critical path first (kdmri.priorities): the jobs that unlock training rank above
# every training job, and among training jobs the longest remaining chain goes first.
# Computed at the first job's priority; no job's spec or command depends on it. A dry run
# starts no job, so it asks for none (counting the networks' FLOPs imports torch).
PRIORITIES = StudyPriorities(config)


def job_priority(kind):
    """A rule's priority function for one kind of job of kdmri.priorities."""
    ask = {
        "prepare": lambda w: PRIORITIES.prepare(w.dataset),
        "inputs": lambda w: PRIORITIES.inputs(w.task, w.dataset),
        "cache": lambda w: PRIORITIES.cache(w.task, w.dataset, w.model),
        "train": lambda w: PRIORITIES.train(w.task, w.dataset, w.model),
    }[kind]
    # what only an evaluation-only cell needs unlocks no training: priority 0
    return lambda w: (
        0 if workflow.dryrun or w.dataset not in TRAINED_DATASETS else ask(w)
    )


def spec_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def train_spec(w):
    return spec_json(model_spec(config, w.task, w.model, int(w.seed)))


def train_inputs(w):
    """A training job's inputs: its stores, and what its method reads: the teacher cache
    and/or the teacher's weights (of the method's teacher), the model it starts from (its
    model.pt, or the stage output its method names: kdmri.methods.init_file)."""
    made = resolved(w.model, config)
    sources = teacher_sources(config, w.model)
    inputs = {"data": [f"{cell_dir(w, 'inputs')}/{s}.h5" for s in ("train", "val")]}
    if "cache" in sources:
        inputs["cache"] = [
            f"{cell_dir(w, made.teacher)}/cache/{s}.h5" for s in ("train", "val")
        ]
    if "weights" in sources:
        inputs["teacher"] = f"{cell_dir(w, made.teacher)}/model.pt"
    if made.init:
        inputs["init"] = f"{cell_dir(w, made.init)}/{init_file(made, config)}"
    return inputs


def stage_outputs(stage):
    """The files a stage writes beside model.pt, as named outputs of its training jobs
    (kdmri.methods.Stage.outputs; the sft stage's student cascades, sft_student.pt)."""
    return {
        name: f"{model_dir()}/{file}" for name, file in STAGES[stage].outputs.items()
    }


def stage_models(stage):
    """The model names trained by one stage's rule (a regular expression)."""
    return names_pattern(
        [m for m in STUDY_MODELS if m != "zf" and recipe(m, config).stage == stage]
    )


def teacher_models():
    """The models trained as teachers (a regular expression): the ones a cache is made of."""
    return names_pattern(
        [
            m
            for m in STUDY_MODELS
            if m != "zf" and STAGES[recipe(m, config).stage].network == "teacher"
        ]
    )


def trust_code(*nets):
    """The option `--trust-code` (with its leading space) for a job that loads a model file
    holding a family: python network (of `nets`, the study config's): the config names its
    target, and is the user's consent to import it (kdmri.checkpoints.load_model); empty
    otherwise, so the commands of studies of built-in networks stay as they are."""
    return " --trust-code" if any(net["family"] == "python" for net in nets) else ""


def train_options(w, input):
    options = []
    if "cache" in input.keys():
        options.append(f"--cache-dir {os.path.dirname(input.cache[0])}")
    if "teacher" in input.keys():
        options.append(f"--teacher {input.teacher}")
    if "init" in input.keys():
        options.append(f"--init {input.init}")
    spec = model_spec(config, w.task, w.model, int(w.seed))
    loaded = [spec["teacher_net"]] if "teacher" in input.keys() else []
    loaded += [spec["net"]] if "init" in input.keys() else []
    return " ".join(options) + trust_code(*loaded)


def input_dir(name):
    """A params function: the folder of the job's input `name` (of its first file where
    `name` is a list), for kdmri commands that read fixed file names from a folder."""
    return lambda wildcards, input: os.path.dirname(_first(input[name]))


def output_dir(name):
    """A params function: the folder of the job's output `name` (of its first file where
    `name` is a list), for kdmri commands that write fixed file names into a folder."""
    return lambda wildcards, output: os.path.dirname(_first(output[name]))


def _first(files):
    return files if isinstance(files, str) else files[0]


def mask_spec(w):
    task = config["tasks"][w.task]
    if w.task == "sr":
        return spec_json({"kind": "lowres", "acceleration": float(w.acc)})
    return spec_json(dict(task["mask"], acceleration=float(w.acc)))


def predict_trust(w):
    if w.model == "zf":
        return ""
    return trust_code(model_spec(config, w.task, w.model, int(w.seed))["net"])


def predict_model_input(w):
    """The model.pt a prediction runs: the cell's own, or in an evaluation-only cell that
    of the cell its models were trained in."""
    if w.model == "zf":
        return []
    return (
        f"{model_dir(w.task, trained_on(w.dataset), w.acc, w.model, w.seed)}/model.pt"
    )


def split_stores(w):
    """The prepared split stores a cell's inputs are made from (of data_name)."""
    return [f"{R}/data/{data_name(w.dataset)}/{s}.h5" for s in SPLITS]


def panel_inputs(w):
    return {m: prediction(w, m) for m in config["models"]}


def curve_inputs(w):
    return {m: f"{cell_dir(w, m)}/history.csv" for m in config["models"] if m != "zf"}


def writes_ablation():
    """Whether `kdmri tables` writes ablation.csv for this study: the metrics it reads are
    those of config["models"], and kdmri.tables.has_ablation decides from their models.
    """
    return has_ablation(pd.DataFrame({"model": config["models"]}))


def prediction(w, model):
    return f"{cell_dir(w, model)}/test_pred.h5"


def metrics_files():
    return [
        f"{model_dir(t, d, a, m, s)}/metrics.csv"
        for t, d, a, s in CELLS + EVAL_CELLS
        for m in evaluated(config, t)
    ]


def trained_models():
    return {
        f"{t}/{d}/acc{a}/{m}/seed{s}": f"{model_dir(t, d, a, m, s)}/model.pt"
        for t, d, a, s in CELLS
        for m in sorted(set(evaluated(config, t)) - {"zf"})
    }


def writes_methods():
    """Whether `kdmri tables` writes the table of methods (methods.csv/.md/.tex): where the
    study evaluates two or more models that learn from a teacher; figures/methods.png too.
    """
    return compares_methods(methods_description(config))


def hint_histories():
    """The history.csv of every hint stage of the study's compared methods, keyed
    task/dataset/acceleration/model/seed (`kdmri tables --histories`: the validation PSNR
    at the end of each); none where the study writes no table of methods."""
    if not writes_methods():
        return {}
    described = methods_description(config)
    hints = {
        t: sorted(
            {
                stage["model"]
                for info in described.get(t, {}).values()
                if info["teacher"]
                for stage in info["stages"]
                if stage["stage"] in HINT_STAGES
            }
        )
        for t in described
    }
    return {
        f"{t}/{d}/{a}/{m}/{s}": f"{R}/{t}/{d}/acc{a}/{m}/seed{s}/history.csv"
        for t, d, a, s in CELLS
        for m in hints.get(t, [])
    }


def methods_options():
    """`kdmri tables`' options for the table of methods (empty where there is none): the
    methods' description and their hint stages' histories (the rule's inputs)."""
    if not writes_methods():
        return ""
    histories = " ".join(f"{key}={path}" for key, path in hint_histories().items())
    return f"--methods {shlex.quote(spec_json(methods_description(config)))}" + (
        f" --histories {histories}" if histories else ""
    )


def writes_sweep():
    """Whether the study sweeps settings (sweeps:): then `kdmri sweep` writes sweep.csv /
    .md, `kdmri tables` shows each swept model's chosen candidate, and the workflow draws
    figures/sweep.png."""
    return bool(swept_models(config)) and bool(CELLS)


def sweep_plan():
    """`kdmri sweep`'s plan and the model files it reads: per cell (task, dataset,
    acceleration) and swept model, each setting's candidate (by its job's name), then the
    model under the config's own values unless a setting's candidate is that job; each
    with its model.pt per seed, keyed by number; an evaluation-only cell's choice is that
    of the cell its models were trained in (the same model files)."""
    from kdmri.sweeps import OWN, setting_label

    plan, files = [], {}
    cells = dict.fromkeys((t, d, a) for t, d, a, _ in CELLS + EVAL_CELLS)
    for t, d, a in cells:
        for model in swept_models(config):
            rows = [
                (
                    sweep,
                    ",".join(setting),
                    setting_label(setting),
                    canonical(config, name),
                )
                for name, m, sweep, setting in candidates(config)
                if m == model
            ]
            if model not in {c for *_, c in rows}:
                rows.append(("", "", OWN, model))
            for sweep, keys, label, job in rows:
                seed_files = []
                for s in config["seeds"]:
                    key = str(len(files))
                    files[key] = f"{model_dir(t, trained_on(d), a, job, s)}/model.pt"
                    seed_files.append(key)
                plan.append(
                    {
                        "task": t,
                        "dataset": d,
                        "acceleration": float(a),
                        "model": model,
                        "sweep": sweep,
                        "keys": keys,
                        "setting": label,
                        "candidate": job,
                        "seeds": seed_files,
                    }
                )
    return plan, files


# computed once: the plan names every candidate of every cell (kdmri.specs.canonical)
SWEEP_PLAN, SWEEP_FILES = sweep_plan()


def writes_compression():
    """Whether the study has a compression curve (a task with students and cells): then
    `kdmri tables` writes compression.csv and the workflow draws figures/compression.png.
    """
    return any(compression_models(config, t) for t, _, _, _ in CELLS)


def figure_files():
    files = []
    for t, d, a, s in CELLS:
        files += [
            f"{figure_dir(t, d, a, s)}/panel.png",
            f"{figure_dir(t, d, a, s)}/curves.png",
            f"{figure_dir(t, d, a, s)}/mask.png",
        ]
    for t, d, a, s in EVAL_CELLS:  # no training of their own: no curves
        files += [
            f"{figure_dir(t, d, a, s)}/panel.png",
            f"{figure_dir(t, d, a, s)}/mask.png",
        ]
    return files


def all_outputs():
    return [
        f"{R}/tables/summary.csv",
        f"{R}/tables/kd_gain.csv",
        f"{R}/tables/provenance.json",
        *figure_files(),
        *([f"{R}/figures/compression.png"] if writes_compression() else []),
        *([f"{R}/figures/methods.png"] if writes_methods() else []),
        *([f"{R}/figures/sweep.png"] if writes_sweep() else []),
    ]

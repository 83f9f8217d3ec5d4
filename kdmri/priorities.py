"""Job priorities: the critical path first.

On a few cores the order in which ready jobs start sets a study's wall time. The workflow
gives every job that trains or unlocks training a priority computed here from the study's
config alone; no job's spec or command depends on it, so changing it re-runs nothing.

**The rule.** The study is a graph of jobs, each with a cost and the jobs waiting for it.
A job's *chain* is its cost plus the largest chain among the jobs waiting for it: the
work on the longest path from its start to the end of the study (its bottom level; list
scheduling by it is the classic highest-level-first rule)::

    chain(j) = cost(j) + max(chain(d) for d waiting for j)      (0 where none waits)

- Among training jobs, the larger chain goes first: the head of the longest remaining
  chain starts before a job that ends a short one.
- The jobs that only unlock training (:data:`UNLOCKING`: preparing a dataset, a cell's
  mask and undersampled stores, a teacher's cache) take seconds, and a training job that
  starts while one of them is ready holds a core for minutes while the chain behind it
  cannot start. So each ranks above every training job of the study: its priority is its
  chain plus the largest chain of any training job. (Snakemake does not pass a job's
  priority on to the jobs it waits for, so these are given their own.)

Jobs after training (prediction, metrics, tables, figures) keep priority 0: they fill
cores that nothing else can use.

**The cost of a training job**, in GFLOP per training slice (every job of a cell reads
the same slices, so the slice count is a common factor; between datasets only the slices'
size is counted, since the number of slices is known only once the data is prepared)::

    epochs x (3 F(net) + F(frozen teacher) + 3 F(branches))

with F the FLOPs of one forward pass on one slice (:func:`kdmri.models.flops_per_slice`)
at the dataset's size (``size``, else its format's default, else
:data:`REFERENCE_SIZE`); a network of a multi-coil family (E2E-VarNet) on as many coils as
the dataset's ``simulated_coils``, else :data:`kdmri.models.EXAMPLE_COILS` (a fastMRI
file's coil count is known once it is read). A training step is a forward and a backward pass, about
:data:`STEP_PASSES` forward passes; the frozen teacher runs forward only, where the
method reads its weights (the feature terms); the student-friendly teacher's branches run
(K-1)K/2 student cascades of the K per step (:mod:`kdmri.distill.sft`), i.e. (K-1)/2
student networks, trained with the teacher. A teacher's cache is one forward pass of the
teacher; a dataset's and a cell's data jobs cost 0 here (seconds).
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterable, Mapping
from functools import cache

from kdmri.specs import chain, evaluated, model_spec, resolved, teacher_sources

#: Forward passes' worth of FLOPs in one training step (forward, and backward at about
#: twice the forward).
STEP_PASSES = 3
#: The in-plane size a dataset's networks are counted at when the config does not give it
#: (the files' own size, known once they are read).
REFERENCE_SIZE = 64
#: Kinds of job that only unlock training: each ranks above every training job.
UNLOCKING = ("prepare", "inputs", "cache")
#: Priorities are integers (Snakemake's MILP scheduler trades a priority step of 1 against
#: other goals): the chains in MFLOP per slice.
UNIT = 1e-3


def chains(cost: Mapping[Hashable, float],
           waiting: Mapping[Hashable, Iterable[Hashable]]) -> dict[Hashable, float]:
    """``chain(j) = cost(j) + max(chain(d) for d in waiting[j])`` (0 without ``d``) of every
    job ``j`` of ``cost``; ``waiting`` may leave out the jobs nothing waits for. Raises
    ``ValueError`` on a cycle."""
    done: dict[Hashable, float] = {}
    visiting: set[Hashable] = set()

    def chain(job: Hashable) -> float:
        if job not in done:
            if job in visiting:
                raise ValueError(f"the jobs wait for each other in a cycle through {job!r}")
            visiting.add(job)
            done[job] = cost[job] + max((chain(d) for d in waiting.get(job, ())), default=0.0)
            visiting.discard(job)
        return done[job]

    for job in cost:
        chain(job)
    return done


def priorities(cost: Mapping[Hashable, float], waiting: Mapping[Hashable, Iterable[Hashable]],
               unlocking: Iterable[Hashable]) -> dict[Hashable, int]:
    """Snakemake priorities of a graph of jobs (module docstring): a training job's is its
    chain, an unlocking job's its chain plus the largest chain of any training job, both in
    units of :data:`UNIT` (rounded up, so a job with a cost ranks above 0)."""
    chain = chains(cost, waiting)
    unlocking = set(unlocking)
    top = max((c for job, c in chain.items() if job not in unlocking), default=0.0)
    return {job: _integer(c + top if job in unlocking else c) for job, c in chain.items()}


def _integer(gflop: float) -> int:
    return int(-(-gflop // UNIT))


@cache
def _forward_gflop(net_json: str, size: int, coils: int | None) -> float:
    from kdmri.models import build_model, flops_per_slice

    return flops_per_slice(build_model(json.loads(net_json)), size, size, coils=coils) / 1e9


def forward_gflop(net: dict, size: int, coils: int | None = None) -> float:
    """GFLOP of one forward pass of the network ``net`` (a net spec) on one size x size
    slice (built once per spec and size); a multi-coil family's on ``coils`` coils (None:
    :data:`kdmri.models.EXAMPLE_COILS`)."""
    return _forward_gflop(json.dumps(net, sort_keys=True), size, coils)


def dataset_size(dataset: dict) -> int:
    """The in-plane size a dataset's networks are counted at (module docstring)."""
    from kdmri.data.readers import DEFAULT_SIZE

    return dataset["size"] or DEFAULT_SIZE[dataset["format"]] or REFERENCE_SIZE


def dataset_coils(dataset: dict) -> int | None:
    """The coil count a multi-coil network is counted with on a dataset: its
    ``simulated_coils`` count, None where the config does not give one (module docstring)."""
    from kdmri.data.coils import coil_settings

    settings = coil_settings(dataset)
    return settings["count"] if settings else None


def training_cost(config: dict, task: str, dataset: str, model: str) -> float:
    """GFLOP per training slice of training ``model`` in a cell of ``task`` on ``dataset``
    (module docstring)."""
    spec = model_spec(config, task, model, seed=0)
    size = dataset_size(config["datasets"][dataset])
    coils = dataset_coils(config["datasets"][dataset])
    trained = forward_gflop(spec["net"], size, coils)
    if "student_net" in spec:  # the student-friendly teacher's branches
        trained += (spec["student_net"]["cascades"] - 1) / 2 * forward_gflop(
            spec["student_net"], size, coils)
    frozen = (forward_gflop(spec["teacher_net"], size, coils)
              if "weights" in teacher_sources(config, model) else 0.0)
    return spec["train"]["epochs"] * (STEP_PASSES * trained + frozen)


def cell_graph(config: dict, task: str, dataset: str) -> tuple[dict, dict]:
    """``(cost, waiting)`` of one cell's jobs (the same for each acceleration and seed):
    ``("inputs",)`` (its mask and stores), ``("train", model)`` of every model the cell
    trains and ``("cache", teacher)`` of every teacher whose cache a model reads."""
    trained = {m for model in evaluated(config, task) if model != "zf"
               for m in chain(model, config)}
    for model in list(trained):  # the teachers the models learn from, with their chains
        if teacher_sources(config, model):
            trained.update(chain(resolved(model, config).teacher, config))
    cost = {("inputs",): 0.0}
    waiting: dict[tuple, set] = {("inputs",): set()}
    for model in sorted(trained):
        made, sources = resolved(model, config), teacher_sources(config, model)
        node = ("train", model)
        cost[node] = training_cost(config, task, dataset, model)
        waiting[("inputs",)].add(node)
        if made.init:
            waiting.setdefault(("train", made.init), set()).add(node)
        if "weights" in sources:
            waiting.setdefault(("train", made.teacher), set()).add(node)
        if "cache" in sources:
            cache = ("cache", made.teacher)
            spec = model_spec(config, task, made.teacher, seed=0)
            data = config["datasets"][dataset]
            cost[cache] = forward_gflop(spec["net"], dataset_size(data), dataset_coils(data))
            waiting.setdefault(("train", made.teacher), set()).add(cache)
            waiting.setdefault(cache, set()).add(node)
            waiting[("inputs",)].add(cache)
    return cost, waiting


class StudyPriorities:
    """The priority of every job of a study that trains or unlocks training (module
    docstring), computed for the whole study at the first question (it builds each network
    once to count its FLOPs) and the same for every acceleration and seed of a cell."""

    def __init__(self, config: dict):
        self.config = config
        self._table: dict[tuple, int] | None = None

    @property
    def table(self) -> dict[tuple, int]:
        """``(kind, ...) -> priority``: ``("prepare", dataset)``, ``("inputs", task,
        dataset)``, ``("cache", task, dataset, teacher)``, ``("train", task, dataset, model)``."""
        if self._table is None:
            cost: dict[tuple, float] = {}
            waiting: dict[tuple, set] = {}
            for task, settings in self.config["tasks"].items():
                for dataset in settings["datasets"]:
                    cell_cost, cell_waiting = cell_graph(self.config, task, dataset)
                    cost.update({_key(node, task, dataset): c for node, c in cell_cost.items()})
                    for node, after in cell_waiting.items():
                        waiting[_key(node, task, dataset)] = {_key(d, task, dataset) for d in after}
                    prepare = ("prepare", dataset)
                    cost[prepare] = 0.0
                    waiting.setdefault(prepare, set()).add(("inputs", task, dataset))
            self._table = priorities(cost, waiting,
                                     unlocking=[n for n in cost if n[0] in UNLOCKING])
        return self._table

    def prepare(self, dataset: str) -> int:
        return self.table[("prepare", dataset)]

    def inputs(self, task: str, dataset: str) -> int:
        """Of a cell's mask and undersampling jobs."""
        return self.table[("inputs", task, dataset)]

    def cache(self, task: str, dataset: str, teacher: str) -> int:
        return self.table[("cache", task, dataset, teacher)]

    def train(self, task: str, dataset: str, model: str) -> int:
        return self.table[("train", task, dataset, model)]


def _key(node: tuple, task: str, dataset: str) -> tuple:
    return (node[0], task, dataset, *node[1:])


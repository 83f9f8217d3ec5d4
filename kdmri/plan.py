"""The stage plan: what a training stage computes besides its network, built from its spec.

A stage weighs loss terms (:data:`kdmri.distill.terms.TERMS`); each term takes inputs
(:data:`kdmri.distill.terms.INPUTS`, the one table of them, which also says how each is
gathered for a batch), and the inputs a stage's terms take decide what it needs besides its
network and the batch:

=========================  ==========================================================
input                      the plan
=========================  ==========================================================
``teacher_output``,        the teacher cache's keys to read (:data:`kdmri.teacher.
``teacher_maps``           CACHE_KEYS`); the maps are checked against the pairs
``student_features``       hooks on the network at the student's side of ``pairs``
``student_feature_pairs``  hooks at the student's side of ``fsp_pairs`` (F1, F2 each)
``teacher_features``,      the live teacher (:class:`kdmri.teacher.LiveTeacher`, the
``teacher_feature_pairs``  spec's ``--teacher``) hooked at the teacher's side of them
``adapters``,              the modules learnt per layer pair (FitNets' adapters, CC's
``cc_embeddings``, ...     embeddings, ...: :data:`kdmri.distill.learnt.BUILDERS`,
                           :meth:`StagePlan._learnt`)
``branch_outputs``         the SFT branches (:class:`kdmri.distill.sft.StudentBranches`)
                           and hooks at the network's cascades they start from
=========================  ==========================================================

A plan is made in two steps: :class:`StagePlan` from the spec alone (the terms, their
weights and options, their inputs and the cache keys; every check that needs no network),
before the data are read; :meth:`StagePlan.build` once the network is built: the hooks,
the live teacher, the learnt modules and the branches, in that order (each of the last three
draws its initial weights from torch's generator after the network's, so the order is part
of a run's numbers). Per batch, :meth:`StagePlan.losses` evaluates the terms on a
:class:`Step`, which gathers each input at most once. The learnt modules and the branches
train with the network (:meth:`StagePlan.auxiliary`); the trainer (:mod:`kdmri.train`) keeps
them in its resume checkpoint, not in ``model.pt``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from kdmri.batch import Batch, coil_arrays, forward, make_batch
from kdmri.distill.hooks import FeatureHooks
from kdmri.distill.learnt import BUILDERS
from kdmri.distill.pairs import fsp_paths, pair_paths
from kdmri.distill.sft import StudentBranches
from kdmri.distill.terms import INPUTS, LEARNT_INPUTS, TEACHER_SOURCES, TERMS
from kdmri.errors import KdmriError
from kdmri.models import place_model
from kdmri.teacher import CACHE_KEYS, LiveTeacher

#: The inputs the live teacher gives (``--teacher``; the cache holds the others).
LIVE_TEACHER_INPUTS = tuple(k for k, v in TEACHER_SOURCES.items() if v == "weights")


def stage_terms(weights: dict[str, float], stage: str) -> list[str]:
    """The terms a stage weighs (a weight of 0 leaves a term out), in the order of
    :data:`kdmri.distill.terms.TERMS`; an unknown name, or a term needing an input the
    trainer cannot give (one not in :data:`kdmri.distill.terms.INPUTS`), raises a one-line
    error."""
    unknown = sorted(set(weights) - set(TERMS))
    if unknown:
        raise KdmriError(f"stage {stage!r}: unknown loss term {unknown[0]!r}; "
                         f"known terms: {', '.join(TERMS)}")
    names = [name for name in TERMS if weights.get(name)]
    if not names:
        raise KdmriError(f"stage {stage!r}: every loss weight is 0; weigh at least one of "
                         f"{', '.join(TERMS)}")
    for name in names:
        missing = [i for i in TERMS[name].inputs if i not in INPUTS]
        if missing:
            raise KdmriError(f"stage {stage!r}: loss term {name!r} needs inputs the trainer "
                             f"cannot give ({', '.join(missing)}); it cannot be trained yet")
    return names


def term_options(options: dict, names: list[str], stage: str) -> dict[str, dict]:
    """A spec's ``loss_options`` checked against the terms it weighs and their options."""
    for name, given in options.items():
        if name not in names:
            raise KdmriError(f"stage {stage!r}: loss_options for {name!r}, which the stage "
                             f"does not weigh (it weighs {', '.join(names)})")
        allowed = TERMS[name].options
        for key, value in given.items():
            if key not in allowed:
                raise KdmriError(f"stage {stage!r}: loss term {name!r} has no option {key!r}; "
                                 f"options: {', '.join(allowed) or 'none'}")
            if value not in allowed[key]:
                raise KdmriError(f"stage {stage!r}: loss term {name!r}: {key} {value!r}; "
                                 f"expected one of {', '.join(map(str, allowed[key]))}")
    return {name: dict(given) for name, given in options.items() if given}


def probe_batch(data: Mapping[str, torch.Tensor], device: torch.device, complex: bool) -> Batch:
    """The first two training slices as a batch without targets: what one forward of a
    network is run on before training (to check a user's network, to size the adapters);
    of multi-coil data, their coil arrays."""
    return make_batch(data["zf"][:2], data["mask"], None, device, complex=complex,
                      **coil_arrays(data, slice(0, 2)))


class StagePlan:
    """The terms of the stage of ``spec`` and what they need (see the module docstring);
    ``teacher`` is the teacher's ``model.pt`` for a stage whose terms take the live
    teacher's features (refused without it).

    From the spec: ``terms`` (names, in the table's order), ``weights`` (name -> weight),
    ``options`` (name -> keyword options), ``needs`` (the inputs they take) and
    ``cache_keys`` (the teacher cache's keys to read). After :meth:`build`: ``hooks`` (input
    -> the network's module paths hooked for it), ``teacher``, ``learnt`` (input -> its
    modules), ``branches`` (None where the stage has none).
    """

    def __init__(self, spec: dict, teacher: str | Path | None = None,
                 trust_code: bool | None = None):
        self.spec = spec
        self.stage = spec["stage"]
        self.weights = {k: float(v) for k, v in spec["loss_weights"].items() if v}
        self.terms = stage_terms(spec["loss_weights"], self.stage)
        self.options = term_options(spec.get("loss_options", {}), self.terms, self.stage)
        self.needs = {i for name in self.terms for i in TERMS[name].inputs}
        self.live = [name for name in self.terms
                     if set(TERMS[name].inputs) & set(LIVE_TEACHER_INPUTS)]
        if self.live and teacher is None:
            raise KdmriError(
                f"stage {self.stage!r}: loss term {self.live[0]!r} needs the teacher's "
                "features, which the teacher cache does not hold: give the teacher's model.pt "
                "(--teacher)")
        self.teacher_path = teacher
        self.trust_code = trust_code  # kdmri.checkpoints.load_model's consent for the teacher
        self.cache_keys = [CACHE_KEYS[i] for i in CACHE_KEYS if i in self.needs]
        self.hooks: dict[str, list[str]] = {}
        self.teacher: LiveTeacher | None = None
        self.learnt: dict[str, torch.nn.Module] = {}
        self.branches: StudentBranches | None = None
        self.device = torch.device("cpu")
        self.amp = False

    # ------------------------------------------------------------------ building
    def build(self, model: torch.nn.Module, data: Mapping[str, torch.Tensor],
              device: torch.device, amp: bool) -> None:
        """Build what the stage needs around the built ``model`` (on ``device``, with
        ``amp`` the trainer's mixed precision), given its training split ``data`` (the
        trainer's: ``zf``, ``mask`` and the cached keys)."""
        spec, needs = self.spec, self.needs
        self.device, self.amp = device, amp
        if "student_features" in needs:
            self.hooks["student_features"] = pair_paths(model, spec["pairs"], "student")
        if "student_feature_pairs" in needs:
            self.hooks["student_feature_pairs"] = [
                p for pair in fsp_paths(model, spec["fsp_pairs"], "student") for p in pair]
        if self.live:
            self.teacher = LiveTeacher(
                self.teacher_path, spec["teacher_net"], device,
                spec["pairs"] if "teacher_features" in needs else None,
                spec["fsp_pairs"] if "teacher_feature_pairs" in needs else None, amp=amp,
                trust_code=self.trust_code)
            self._check_live_pairs()
        learnt = [name for name in LEARNT_INPUTS if name in needs]
        if learnt:
            self.learnt = self._learnt(model, probe_batch(data, device, model.complex), learnt)
        if "branch_outputs" in needs:  # built after the network: its initial weights are
            # the plain teacher's of the same seed
            self.branches = place_model(StudentBranches(model, spec["student_net"]), device)
            self.hooks["branch_outputs"] = self.branches.teacher_paths
        if "teacher_maps" in needs:
            n_maps = data["attention"].shape[1]
            n_pairs = len(self.hooks.get("student_features", []))
            if n_maps != n_pairs:
                raise KdmriError(f"teacher cache has {n_maps} attention maps per slice, the "
                                 f"student's pairs give {n_pairs}")

    @property
    def feature_paths(self) -> list[str]:
        """Every hooked module path of the network, input by input (the order in which
        :meth:`Step.hooked` splits what the hooks captured)."""
        return [path for paths in self.hooks.values() for path in paths]

    @property
    def adapters(self) -> torch.nn.ModuleList | None:
        """FitNets' adapters (None where the stage has none)."""
        return self.learnt.get("adapters")

    def outputs(self) -> dict[str, tuple[dict, torch.nn.Module]]:
        """The networks the stage trains besides its own that it writes as model files
        (:attr:`kdmri.methods.Stage.outputs`), by output name: ``student``, the SFT
        branches' student cascades, with its network spec (``student_net``)."""
        if self.branches is None:
            return {}
        return {"student": (self.spec["student_net"], self.branches.student)}

    def auxiliary(self) -> dict[str, torch.nn.Module]:
        """The modules the stage trains besides the network, by their checkpoint key: the
        learnt modules by their input's name, then ``branches``."""
        branches = {"branches": self.branches} if self.branches is not None else {}
        return {**self.learnt, **branches}

    def _check_live_pairs(self) -> None:
        """The teacher's layers pair one to one with the student's."""
        counts = {"pairs": ("teacher_features", self.teacher.n_features,
                            len(self.hooks.get("student_features", []))),
                  "fsp_pairs": ("teacher_feature_pairs", self.teacher.n_pairs,
                                len(self.hooks.get("student_feature_pairs", [])) // 2)}
        for key, (needed, n_teacher, n_student) in counts.items():
            if needed in self.needs and n_teacher != n_student:
                raise KdmriError(f"{key}: the teacher's layers give {n_teacher} features, the "
                                 f"student's {n_student}; they are paired one to one")

    def _learnt(self, model: torch.nn.Module, probe: Batch,
                names: list[str]) -> dict[str, torch.nn.Module]:
        """The modules of the learnt inputs ``names`` (:data:`kdmri.distill.learnt.BUILDERS`),
        sized by one forward of both networks on ``probe`` at the layer pairs."""
        model.eval()
        with torch.no_grad(), FeatureHooks(model, self.hooks["student_features"]) as hooks:
            forward(model, probe)
            student = hooks.pop()
        teacher = self.teacher.features(probe)["teacher_features"]
        return {name: place_model(BUILDERS[name](student, teacher), self.device)
                for name in names}

    # ------------------------------------------------------------------ per batch
    def losses(self, step: Step) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The named terms on one batch (each ``function(*inputs, **options)``) and their
        total weighted by the stage's weights."""
        terms: dict[str, torch.Tensor] = {}
        for name in self.terms:
            args = [step.input(key) for key in TERMS[name].inputs]
            terms[name] = TERMS[name].function(*args, **self.options.get(name, {}))
        # (a weight of 1 multiplies nothing: two fewer kernels per step, same numbers)
        weighted = [value if self.weights[name] == 1.0 else self.weights[name] * value
                    for name, value in terms.items()]
        total = weighted[0]
        for value in weighted[1:]:
            total = total + value
        return total, terms

    def branch_outputs(self, teacher_images: list[torch.Tensor],
                       batch: Batch) -> list[torch.Tensor]:
        """The SFT branches on the network's hooked images (gradients reach both); not
        on multi-coil data (their data consistency is single-coil)."""
        if batch.maps is not None:
            raise KdmriError("the student-friendly teacher's branches run single-coil data "
                             "consistency; multi-coil data (SENSE) are not supported")
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp):
            outputs = self.branches(teacher_images, batch.kspace, batch.mask)
        return [output.float() for output in outputs]


class Step:
    """One batch as the terms of ``plan`` take it: the network's ``prediction`` (float32),
    the ``batch``, the teacher cache's slices of it (``cached``: ``teacher_output``,
    ``attention``) and the network's ``hooks`` (on :attr:`StagePlan.feature_paths`, after
    the network's forward on the batch). :meth:`input` gathers an input by its entry of
    :data:`kdmri.distill.terms.INPUTS`, once per batch; the hooks are read once, the live
    teacher and the branches run once."""

    def __init__(self, plan: StagePlan, prediction: torch.Tensor, batch: Batch,
                 cached: Mapping[str, torch.Tensor], hooks: FeatureHooks | None):
        self.plan = plan
        self.prediction = prediction
        self.batch = batch
        self.cached = cached
        self._hooks = hooks
        self._hooked: dict[str, list] | None = None
        self._live: dict[str, list] | None = None
        self._inputs: dict = {}

    def input(self, name: str):
        """Input ``name`` of this batch (gathered at its first request)."""
        if name not in self._inputs:
            self._inputs[name] = INPUTS[name].gather(self)
        return self._inputs[name]

    def hooked(self, name: str) -> list[torch.Tensor]:
        """What the hooks captured at the paths of input ``name`` (:attr:`StagePlan.hooks`);
        the hooks' store is emptied by one pop per forward."""
        if self._hooked is None:
            features, start = self._hooks.pop(), 0
            self._hooked = {}
            for key, paths in self.plan.hooks.items():
                self._hooked[key] = features[start:start + len(paths)]
                start += len(paths)
        return self._hooked[name]

    def live(self, name: str) -> list:
        """The live teacher's ``name`` (``teacher_features``, ``teacher_feature_pairs``) on
        this batch."""
        if self._live is None:
            self._live = self.plan.teacher.features(self.batch)
        return self._live[name]

    def learnt(self, name: str) -> torch.nn.Module:
        """The stage's modules learnt for input ``name``."""
        return self.plan.learnt[name]

    def branch_outputs(self) -> list[torch.Tensor]:
        return self.plan.branch_outputs(self.hooked("branch_outputs"), self.batch)

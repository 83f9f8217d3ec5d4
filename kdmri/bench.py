"""``kdmri bench``: the performance figures of the real code paths, measured in one run.

Every figure with a target is a ratio of two timings taken in the same process on the same
machine, interleaved round by round (one warm-up round, then the best of the timed rounds),
so a busy or slow machine shifts both sides alike. Absolute times are reported too, without
targets: they only compare across runs on a GPU.

==========================  =============================================================
figure                      what is timed
==========================  =============================================================
``train_vs_bare_*``         :meth:`kdmri.train.Trainer.train_epoch` of the teacher (student)
                            against a bare loop of forward, L1 loss, backward and optimiser
                            step of the same network on batches already on the device:
                            throughput trainer / bare (>= 0.90)
``kd_vs_student_epoch``     epoch of the imitation stage (reading the teacher cache written
                            by :func:`kdmri.inference.cache_teacher`) / epoch of the
                            baseline student (<= 1.15)
``latency_ratio``           :func:`kdmri.inference.latency_ms` student / teacher at the
                            bench size, one slice per pass (<= 0.55; ``_256``: at
                            256 x 256, <= 0.50: the paper's "2x faster"); ``_b16``: per
                            slice in passes of 16 slices, as ``kdmri predict`` runs a
                            test set (no target)
``loading_speedup``         :class:`kdmri.data.store.SliceDataset` (built, then one epoch of
                            shuffled batches) against opening the HDF5 file for every slice,
                            the authors' loader (>= 20)
``noop_snakemake_s``        wall time of ``snakemake --cores 1`` with nothing to do (<= 5 s)
``float64_ops_per_step``    operators that produce float64/complex128 tensors in one
                            training step of the imitation stage (0)
==========================  =============================================================

Every stage keeps networks in channels-last memory format (:func:`kdmri.models.place_model`);
``channels_last_*`` compare it with the plain (contiguous) layout and ``compile_*`` with
``torch.compile`` (values > 1 mean faster). ``latency_ms_student_torchscript`` times the
student as ``kdmri export`` writes it (TorchScript, saved and loaded back) and
``torchscript_vs_eager_student`` divides that by the eager student's latency (no target).
On CUDA the bench adds mixed-precision rows and the teacher's training throughput at
256 x 256 with batch 4 and 16.

The noop figure runs the workflow's real Snakefile (source checkout only) in a scratch
folder: every output of the study's DAG is created empty, ``snakemake --touch`` orders
their times and records their metadata, then a real run must find nothing to do.

This module is imported by every ``kdmri`` call: it imports torch only inside functions.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kdmri.errors import KdmriError

#: The source checkout (Snakefile, config/) when kdmri runs from one.
ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("name", "value", "target", "unit", "passed")
#: Every figure with a target: (comparison, bound).
TARGETS = {
    "train_vs_bare_teacher": (">=", 0.90),
    "train_vs_bare_student": (">=", 0.90),
    "kd_vs_student_epoch": ("<=", 1.15),
    "latency_ratio": ("<=", 0.55),
    "latency_ratio_256": ("<=", 0.50),
    "loading_speedup": (">=", 20.0),
    "noop_snakemake_s": ("<=", 5.0),
    "float64_ops_per_step": ("<=", 0.0),
}
NAN = float("nan")


@dataclass(frozen=True)
class Plan:
    """How much the bench measures: ``quick`` for tests and CI, else the full run."""

    quick: bool
    size: int
    train_slices: int
    val_slices: int
    rounds: int  # timed rounds after the warm-up round
    loading_slices: int
    latency_repeats: int
    big_size: int | None  # the second latency size (256), None to skip
    compile: bool
    noop_config: Path
    noop_repeats: int
    cuda_slices: int

    @classmethod
    def make(cls, quick: bool, size: int | None, compile: bool | None) -> Plan:
        if quick:
            return cls(quick=True, size=size or 16, train_slices=4, val_slices=2, rounds=1,
                       loading_slices=64, latency_repeats=3, big_size=None,
                       compile=bool(compile), noop_config=ROOT / "config" / "test.yaml",
                       noop_repeats=1, cuda_slices=16)
        # six timed rounds, so that a burst of other load on a shared machine, which slows
        # single rounds, cannot move a ratio past its target (docs/performance.md)
        return cls(quick=False, size=size or 64, train_slices=32, val_slices=8, rounds=6,
                   loading_slices=512, latency_repeats=10, big_size=256,
                   compile=compile is not False, noop_config=ROOT / "config" / "config.yaml",
                   noop_repeats=3, cuda_slices=64)


@dataclass
class Bench:
    """Rows in the order measured, and notes printed under the table."""

    rows: dict[str, tuple[float, str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, name: str, value: float, unit: str) -> None:
        self.rows[name] = (float(value), unit)

    def table(self) -> list[dict]:
        out = []
        for name, (value, unit) in self.rows.items():
            target, passed = "", ""
            if name in TARGETS:
                op, bound = TARGETS[name]
                target = f"{op}{bound:g}"
                if not math.isnan(value):
                    passed = str(value >= bound if op == ">=" else value <= bound)
            out.append({"name": name, "value": "" if math.isnan(value) else f"{value:.4g}",
                        "target": target, "unit": unit, "passed": passed})
        return out


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _best(times: list[float]) -> float:
    """Best (shortest) of the timed rounds; the first entry is the warm-up."""
    timed = times[1:] or times
    return min(timed) if timed else NAN


def _ratio(a: float, b: float) -> float:
    return a / b if b and not (math.isnan(a) or math.isnan(b)) else NAN


# ---------------------------------------------------------------------- data
def _smooth_volume(rng, slices: int, size: int):
    """Smooth random non-negative images in [0, 1] (float32), a stand-in for anatomy."""
    import numpy as np

    freq = np.fft.fftfreq(size).astype(np.float32)
    lowpass = np.exp(-(freq[:, None] ** 2 + freq[None, :] ** 2) / (2 * 0.06**2))
    noise = rng.standard_normal((slices, size, size), dtype=np.float32)
    images = np.abs(np.fft.ifft2(np.fft.fft2(noise) * lowpass).real).astype(np.float32)
    return images / images.max(axis=(1, 2), keepdims=True)


def _volumes(plan: Plan) -> dict[str, list[tuple[str, object]]]:
    """Train and val volumes: demo subjects (full run) or smooth random images (quick)."""
    import numpy as np

    need = {"train": plan.train_slices, "val": plan.val_slices}
    out: dict[str, list] = {"train": [], "val": []}
    if plan.quick:
        rng = np.random.default_rng(0)
        for split, n in need.items():
            out[split].append((f"{split}-0", _smooth_volume(rng, n, plan.size)))
        return out
    from kdmri.data.demo import demo_subject

    index = 0
    for split, n in need.items():
        while n > 0:
            volume = demo_subject(index, size=plan.size)[:n]
            out[split].append((f"sub-{index:03d}", volume))
            n -= len(volume)
            index += 1
    return out


def _input_stores(folder: Path, volumes: dict[str, list], size: int) -> dict[str, Path]:
    """Target stores (StoreWriter) and input stores (undersample_store), 4x random mask."""
    from kdmri.data.prepare import undersample_store
    from kdmri.data.store import StoreWriter
    from kdmri.masks import create_mask_func

    mask = create_mask_func("random", 4, 0.08)((size, size), seed=0)
    stores = {}
    for split, vols in volumes.items():
        with StoreWriter(folder / "data" / f"{split}.h5", (size, size)) as writer:
            for name, volume in vols:
                writer.add_volume(name, volume)
        stores[split] = folder / "inputs" / f"{split}.h5"
        undersample_store(folder / "data" / f"{split}.h5", mask, stores[split])
    return stores


# ---------------------------------------------------------------------- training
def _study_config() -> dict:
    """The demo study's validated config (the schema's defaults outside a source checkout)."""
    from kdmri.config import load_config, validate

    path = ROOT / "config" / "config.yaml"
    if path.is_file():
        return load_config(path)
    return validate({"datasets": {"demo": {"format": "demo"}},
                     "tasks": {"recon": {"datasets": ["demo"]}}})


def _specs(config: dict) -> dict[str, dict]:
    """The real model specs of teacher, student and the imitation stage (kd), one epoch."""
    from kdmri.specs import model_spec

    specs = {}
    for name in ("teacher", "student", "kd"):
        spec = model_spec(config, "recon", name, seed=0)
        spec["train"]["epochs"] = 1
        specs[name] = spec
    return specs


class BareLoop:
    """The limit of training: forward, L1 loss, backward and optimiser step of the same
    network on batches made once and kept on the device; nothing else."""

    def __init__(self, spec: dict, store: Path, device, channels_last: bool = True,
                 compile: bool = False):
        import numpy as np
        import torch

        from kdmri.batch import make_batch
        from kdmri.data.store import SliceDataset
        from kdmri.models import build_model, place_model
        from kdmri.optim import build_optimizer

        self.device = device
        data = SliceDataset(store, keys=["zf", "target"], extra=["mask"])
        everything = data.batch(np.arange(len(data)))
        size = int(spec["train"]["batch_size"])
        self.batches = [
            make_batch(zf, data.extra["mask"], target, device)
            for zf, target in zip(everything["zf"].split(size), everything["target"].split(size),
                                  strict=True)
        ]
        torch.manual_seed(spec["seed"])
        # the trainer's layout (channels-last); channels_last=False measures the plain one
        self.model = place_model(build_model(spec["net"]), device).train()
        if not channels_last:
            self.model = self.model.to(memory_format=torch.contiguous_format)
        self.forward = torch.compile(self.model) if compile else self.model
        self.optimizer = build_optimizer(self.model.parameters(), spec["train"])
        self.slices = len(data)

    def step(self, batch) -> None:
        from kdmri.distill.losses import reconstruction_loss

        loss = reconstruction_loss(self.forward(batch.image, batch.kspace, batch.mask),
                                   batch.target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def epoch(self) -> float:
        """Seconds of one pass over every batch."""
        _sync(self.device)
        start = time.perf_counter()
        for batch in self.batches:
            self.step(batch)
        _sync(self.device)
        return time.perf_counter() - start


def _sync(device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _count_wide_dtypes() -> Iterator[dict]:
    """Count operators whose outputs are float64 or complex128 while the block runs."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    wide = {torch.float64, torch.complex128}
    counts: dict[str, int] = {}

    class Counter(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if any(isinstance(t, torch.Tensor) and t.dtype in wide for t in tree_leaves(out)):
                counts[str(func)] = counts.get(str(func), 0) + 1
            return out

    with Counter():
        yield counts


def bench_training(bench: Bench, plan: Plan, stores: dict[str, Path], workdir: Path,
                   device) -> None:
    """Rows of points 1a, 1b, 2 (training) and the float64 check."""
    import warnings

    from kdmri.inference import cache_teacher
    from kdmri.train import Trainer

    config = _study_config()
    specs = _specs(config)
    quiet = {"device": device, "log": lambda message: None, "progress": False}
    # The teacher is trained for real once (model.pt), then its outputs are cached.
    teacher = Trainer(specs["teacher"], stores["train"], stores["val"], workdir / "teacher",
                      **quiet)
    teacher.run()
    pairs = config["tasks"]["recon"]["pairs"]
    cache_teacher(workdir / "teacher" / "model.pt", specs["teacher"]["net"], pairs,
                  {"train": stores["train"], "val": stores["val"]}, workdir / "cache", device)
    trainers = {
        "teacher": teacher,
        "student": Trainer(specs["student"], stores["train"], stores["val"],
                           workdir / "student", **quiet),
        "kd": Trainer(specs["kd"], stores["train"], stores["val"], workdir / "kd",
                      cache_dir=workdir / "cache", **quiet),
    }
    loops = {
        "teacher": BareLoop(specs["teacher"], stores["train"], device),
        "student": BareLoop(specs["student"], stores["train"], device),
        "teacher_contiguous": BareLoop(specs["teacher"], stores["train"], device,
                                       channels_last=False),
    }
    compile_s = NAN
    if plan.compile:
        _log("bench: compiling the teacher's training step (torch.compile)")
        loops["teacher_compiled"] = BareLoop(specs["teacher"], stores["train"], device,
                                             compile=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # inductor: no code generation for complex ops
            start = time.perf_counter()
            loops["teacher_compiled"].step(loops["teacher_compiled"].batches[0])
            _sync(device)
            compile_s = time.perf_counter() - start

    times: dict[str, list[float]] = {}
    wide: dict[str, int] = {}
    steps = trainers["kd"].steps_per_epoch
    order = ["teacher", "bare:teacher", "bare:teacher_contiguous", "bare:teacher_compiled",
             "student", "bare:student", "kd"]
    # A GPU epoch of the bench's small split is short, so its timings need more rounds
    rounds = plan.rounds * (4 if device.type == "cuda" else 1)
    for round_ in range(rounds + 1):
        _log(f"bench: training round {round_ + 1}/{rounds + 1}"
             + (" (warm-up)" if round_ == 0 else ""))
        for key in order:
            kind, _, name = key.rpartition(":")
            if kind == "bare":
                if name in loops:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        times.setdefault(key, []).append(loops[name].epoch())
            else:
                # the float64 check watches the imitation stage's warm-up epoch (not timed)
                watch = round_ == 0 and name == "kd"
                with _count_wide_dtypes() if watch else contextlib.nullcontext() as counts:
                    seconds = trainers[name].train_epoch(round_)["seconds"]
                wide = counts if watch else wide
                times.setdefault(key, []).append(seconds)

    best = {key: _best(value) for key, value in times.items()}
    n = loops["teacher"].slices
    for role in ("teacher", "student"):
        bench.add(f"train_vs_bare_{role}", _ratio(best[f"bare:{role}"], best[role]), "ratio")
        bench.add(f"train_slices_per_s_{role}", n / best[role], f"slices/s at {plan.size}")
        bench.add(f"bare_slices_per_s_{role}", n / best[f"bare:{role}"], f"slices/s at {plan.size}")
    bench.add("kd_vs_student_epoch", _ratio(best["kd"], best["student"]), "ratio")
    bench.add("kd_epoch_s", best["kd"], f"s per epoch of {n} slices")
    bench.add("student_epoch_s", best["student"], f"s per epoch of {n} slices")
    bench.add("float64_ops_per_step", sum(wide.values()) / steps, "ops per step")
    if wide:
        bench.notes.append(f"float64/complex128 operators in a training step: {sorted(wide)}")
    bench.add("channels_last_speedup_teacher",
              _ratio(best["bare:teacher_contiguous"], best["bare:teacher"]), "ratio (>1 faster)")
    bench.add("compile_speedup_teacher",
              _ratio(best["bare:teacher"], best.get("bare:teacher_compiled", NAN)),
              "ratio (>1 faster)")
    bench.add("compile_s_teacher", compile_s, "s (first compiled step)")
    if not plan.compile:
        bench.notes.append("torch.compile skipped (quick mode or --no-compile)")


# ---------------------------------------------------------------------- inference
@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the C++ profiler's start/stop lines written straight to file descriptor 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory_mb(model, size: int, device, amp: bool = False) -> float:
    """Peak memory (MiB) allocated by one forward pass of one slice, beyond what was live
    before it: the CUDA allocator's peak, or on the CPU the running sum of the profiler's
    allocation events."""
    import torch

    from kdmri.batch import make_batch
    from kdmri.models import place_model

    model = place_model(model, device).eval()
    zf = torch.randn(1, size, size, dtype=torch.complex64)
    batch = make_batch(zf, torch.ones(size, size), None, device)
    autocast = torch.autocast(device_type=device.type, dtype=torch.float16,
                              enabled=amp and device.type == "cuda")
    with torch.no_grad(), autocast:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            model(batch.image, batch.kspace, batch.mask)
            torch.cuda.synchronize(device)
            return (torch.cuda.max_memory_allocated(device) - before) / 2**20
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU]
        with _quiet_stderr(), profile(activities=activities, profile_memory=True) as prof:
            model(batch.image, batch.kspace, batch.mask)
        try:
            events = prof.profiler.kineto_results.events()
        except AttributeError:
            return NAN
        memory = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
        live = peak = 0
        for _, nbytes in memory:
            live += nbytes
            peak = max(peak, live)
        return peak / 2**20


def bench_inference(bench: Bench, plan: Plan, device) -> None:
    """Rows of point 1c and the inference half of point 2, in interleaved rounds."""
    import warnings

    import torch

    from kdmri.inference import PREDICT_BATCH, latency_ms
    from kdmri.models import build_model, place_model

    specs = _specs(_study_config())

    def fresh(role: str):
        torch.manual_seed(0)
        return place_model(build_model(specs[role]["net"]), device).eval()

    big = plan.big_size if plan.big_size != plan.size else None  # (--size 256: one size)
    sizes = {plan.size: ""} | ({big: f"_{big}"} if big else {})
    models = {role: fresh(role) for role in ("teacher", "student")}
    variants = {}  # row suffix -> (model, image size, mixed precision, batch size)
    for size, suffix in sizes.items():
        for role, model in models.items():
            variants[f"{role}{suffix}"] = (model, size, False, 1)
            if device.type == "cuda":
                variants[f"{role}{suffix}_amp"] = (model, size, True, 1)
    for role, model in models.items():  # per-slice time of a volume run as `kdmri predict` does
        variants[f"{role}_b{PREDICT_BATCH}"] = (model, plan.size, False, PREDICT_BATCH)
    variants["teacher_contiguous"] = (
        fresh("teacher").to(memory_format=torch.contiguous_format), plan.size, False, 1)
    # the student as `kdmri export` writes it (TorchScript), saved and loaded back
    variants["student_torchscript"] = (_torchscript(fresh("student"), device), plan.size, False, 1)
    compile_s = NAN
    if plan.compile:
        _log("bench: compiling the teacher for inference (torch.compile)")
        compiled = torch.compile(fresh("teacher"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # inductor: no code generation for complex ops
            start = time.perf_counter()
            latency_ms(compiled, (plan.size, plan.size), device, repeats=1)
            compile_s = time.perf_counter() - start
        variants["teacher_compiled"] = (compiled, plan.size, False, 1)

    latencies: dict[str, list[float]] = {}
    big_repeats = max(3, plan.latency_repeats // 4)  # a 256x256 pass takes ~16 times longer
    for _ in range(max(1, plan.rounds)):
        for key, (model, size, amp, batch) in variants.items():
            repeats = plan.latency_repeats if size == plan.size else big_repeats
            autocast = torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp)
            with warnings.catch_warnings(), autocast:
                warnings.simplefilter("ignore")
                latencies.setdefault(key, []).append(
                    latency_ms(model, (size, size), device, repeats=repeats, batch_size=batch))
    best = {key: min(value) for key, value in latencies.items()}

    for size, suffix in sizes.items():
        for role, model in models.items():
            for amp in (False, True) if device.type == "cuda" else (False,):
                tail = "_amp" if amp else ""
                what = f"{size}x{size}" + (", fp16" if amp else "")
                bench.add(f"latency_ms_{role}{suffix}{tail}", best[f"{role}{suffix}{tail}"],
                          f"ms/slice at {what}")
                bench.add(f"peak_mem_mb_{role}{suffix}{tail}",
                          peak_memory_mb(model, size, device, amp=amp), f"MiB at {what}")
        bench.add(f"latency_ratio{suffix}",
                  _ratio(best[f"student{suffix}"], best[f"teacher{suffix}"]), "ratio")
    for role in models:
        bench.add(f"latency_ms_{role}_b{PREDICT_BATCH}", best[f"{role}_b{PREDICT_BATCH}"],
                  f"ms/slice at {plan.size}x{plan.size}, batches of {PREDICT_BATCH}")
    bench.add(f"latency_ratio_b{PREDICT_BATCH}",
              _ratio(best[f"student_b{PREDICT_BATCH}"], best[f"teacher_b{PREDICT_BATCH}"]), "ratio")
    if not big:
        for name in ("latency_ms_teacher_256", "latency_ms_student_256", "latency_ratio_256",
                     "peak_mem_mb_teacher_256", "peak_mem_mb_student_256"):
            unit = "ratio" if "ratio" in name else ("MiB" if "mem" in name else "ms/slice")
            bench.add(name, NAN, unit + " at 256x256")
        bench.notes.append("second latency size (256x256) skipped: quick mode or --size 256")
    bench.add("channels_last_speedup_infer_teacher",
              _ratio(best["teacher_contiguous"], best["teacher"]), "ratio (>1 faster)")
    bench.add("compile_speedup_infer_teacher",
              _ratio(best["teacher"], best.get("teacher_compiled", NAN)), "ratio (>1 faster)")
    bench.add("compile_s_infer_teacher", compile_s, "s (first compiled pass)")
    bench.add("latency_ms_student_torchscript", best["student_torchscript"],
              f"ms/slice at {plan.size}x{plan.size} (the module kdmri export saves)")
    bench.add("torchscript_vs_eager_student",
              _ratio(best["student_torchscript"], best["student"]), "ratio (<1 faster)")


def _torchscript(model, device):
    """``model`` as the TorchScript module ``kdmri export --format torchscript`` saves (the
    module itself: kdmri loads no TorchScript file, which can hold code)."""
    import warnings

    from kdmri.export import script

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript, torch >= 2.13
        return script(model).to(device).eval()


# ---------------------------------------------------------------------- cuda only
def bench_cuda_training(bench: Bench, plan: Plan, workdir: Path, device, size: int = 256) -> None:
    """Teacher training throughput at 256 x 256, batch 4 and 16, mixed precision off/on."""
    import numpy as np

    from kdmri.train import Trainer

    rng = np.random.default_rng(1)
    stores = _input_stores(workdir / "data", {
        "train": [("train-0", _smooth_volume(rng, plan.cuda_slices, size))],
        "val": [("val-0", _smooth_volume(rng, 4, size))],
    }, size)
    spec = _specs(_study_config())["teacher"]
    for batch_size in (4, 16):
        for amp in (False, True):
            run = dict(spec, train=dict(spec["train"], batch_size=batch_size, amp=amp))
            trainer = Trainer(run, stores["train"], stores["val"],
                              workdir / f"teacher_b{batch_size}_amp{int(amp)}", device=device,
                              log=lambda message: None, progress=False)
            seconds = [trainer.train_epoch(r)["seconds"] for r in range(plan.rounds + 1)]
            bench.add(f"train_slices_per_s_teacher_{size}_b{batch_size}" + ("_amp" if amp else ""),
                      plan.cuda_slices / _best(seconds), f"slices/s at {size}x{size}")


# ---------------------------------------------------------------------- data loading
def bench_loading(bench: Bench, plan: Plan, store: Path, workdir: Path) -> None:
    """Point 1d: the project's dataset against reopening the file for every slice."""
    import h5py
    import numpy as np

    from kdmri.data.store import SliceDataset, read_store

    target = read_store(store, ["target"])["target"]
    reps = -(-plan.loading_slices // len(target))
    volume = np.concatenate([target] * reps)[: plan.loading_slices]
    path = _input_stores(workdir / "loading", {"train": [("loading", volume)]}, plan.size)["train"]
    order = np.random.default_rng(0).permutation(plan.loading_slices)
    batches = np.array_split(order, -(-len(order) // 4))

    def epoch(data) -> None:
        for idx in batches:
            data.batch(idx)

    def reopen() -> None:  # the authors' loader: one open per slice, every epoch
        for i in order:
            with h5py.File(path, "r") as handle:
                handle["zf"][i]
                handle["target"][i]

    def build(in_memory: bool | None):
        return SliceDataset(path, keys=["zf", "target"], extra=["mask"], in_memory=in_memory)

    in_memory, streaming = build(None), build(False)
    runs = {
        "reopen": reopen,
        "dataset": lambda: epoch(in_memory),
        "streaming": lambda: epoch(streaming),
        "cold": lambda: epoch(build(None)),
    }
    times: dict[str, list[float]] = {}
    for _ in range(3):  # no warm-up round: the file is in the page cache from writing it
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times.setdefault(name, []).append(time.perf_counter() - start)
    best = {name: min(value) for name, value in times.items()}
    n = plan.loading_slices
    bench.add("loading_speedup", _ratio(best["reopen"], best["dataset"]), "ratio")
    bench.add("loading_slices_per_s", n / best["dataset"], f"slices/s at {plan.size}")
    bench.add("reopen_slices_per_s", n / best["reopen"], f"slices/s at {plan.size}")
    bench.add("loading_speedup_cold", _ratio(best["reopen"], best["cold"]), "ratio")
    bench.add("loading_speedup_streaming", _ratio(best["reopen"], best["streaming"]), "ratio")
    bench.notes.append(
        f"loading: one epoch of {n} slices (zf and target) in shuffled batches of 4; "
        "cold: dataset built in the epoch; streaming: in_memory=False"
    )


# ---------------------------------------------------------------------- snakemake
def noop_snakemake(config: Path, workdir: Path, repeats: int) -> tuple[float, str]:
    """Best wall time (s) of ``snakemake --cores 1`` on ``config`` with nothing to do."""
    from kdmri.io import write_bytes

    snakefile = ROOT / "Snakefile"
    if not snakefile.is_file() or not config.is_file():
        return NAN, f"noop: skipped, no Snakefile or {config.name} (not a source checkout)"
    if importlib.util.find_spec("snakemake") is None:
        return NAN, "noop: skipped, snakemake is not installed"
    workdir.mkdir(parents=True, exist_ok=True)
    base = [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile),
            "--directory", str(workdir), "--configfile", str(config), "--cores", "1"]

    def run(*extra: str) -> subprocess.CompletedProcess:
        out = subprocess.run([*base, *extra], capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise KdmriError(f"snakemake {' '.join(extra)} failed on {config}: "
                             f"{(out.stderr or out.stdout).strip().splitlines()[-1:]}")
        return out

    summary = run("--summary").stdout.splitlines()
    outputs = [line.split("\t")[0] for line in summary[1:] if line.strip()]
    for name in outputs:  # empty stand-ins: a no-op run reads no output's content
        if not (workdir / name).exists():
            write_bytes(workdir / name, b"")
    run("--touch")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - start)
        if "Nothing to be done" not in out.stdout + out.stderr:
            return NAN, f"noop: the run on {config.name} had jobs to do; not timed"
    return min(times), (f"noop: {config.name} ({len(outputs)} outputs, best of {repeats}; "
                        "outputs made by --touch, not by running the study)")


# ---------------------------------------------------------------------- command
def _machine(device) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    text = (f"{os.cpu_count()}-core {cpu}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch threads")
    if device.type == "cuda":
        text += f", {torch.cuda.get_device_name(device)}"
    return text


def run_bench(plan: Plan, workdir: Path, device) -> Bench:
    import torch

    bench = Bench()
    bench.add("torch_threads", torch.get_num_threads(), "threads")

    @contextlib.contextmanager
    def section(what: str) -> Iterator[None]:
        _log(f"bench: {what}")
        start = time.perf_counter()
        yield
        _log(f"bench: {what}: {time.perf_counter() - start:.1f} s")

    with section(f"making the {plan.size}x{plan.size} stores"):
        stores = _input_stores(workdir / "stores", _volumes(plan), plan.size)
    with section("training"):
        bench_training(bench, plan, stores, workdir / "train", device)
    with section("inference"):
        bench_inference(bench, plan, device)
    with section("data loading"):
        bench_loading(bench, plan, stores["train"], workdir)
    if device.type == "cuda":
        with section("CUDA training at 256x256"):
            bench_cuda_training(bench, plan, workdir / "cuda", device)
    with section("snakemake with nothing to do"):
        seconds, note = noop_snakemake(plan.noop_config, workdir / "noop", plan.noop_repeats)
    bench.add("noop_snakemake_s", seconds, "s")
    bench.notes.append(note)
    return bench


def write_csv(rows: list[dict], path: Path) -> None:
    from kdmri.io import atomic_path

    with atomic_path(path, suffix=".csv") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def format_table(rows: list[dict]) -> str:
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in COLUMNS}
    lines = ["  ".join(c.ljust(widths[c]) for c in COLUMNS)]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in COLUMNS) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def cmd_bench(args) -> int:
    import torch

    from kdmri.device import keep_freed_memory, select_device

    keep_freed_memory()  # as every kdmri command that runs a network does
    if args.size is not None and args.size < 16:
        raise KdmriError(f"--size must be at least 16, found {args.size}")
    previous_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    plan = Plan.make(args.quick, args.size, args.compile)
    device, slot = select_device(args.device, log=_log)
    scratch = None
    try:
        if args.workdir:
            workdir = Path(args.workdir) / "kdmri-bench"
            if workdir.exists():  # stale stores or a half-run study would skew the timings
                shutil.rmtree(workdir)
        else:
            scratch = tempfile.mkdtemp(prefix="kdmri-bench-")
            workdir = Path(scratch)
        machine = _machine(device)
        start = time.perf_counter()
        bench = run_bench(plan, workdir, device)
    finally:
        if slot is not None:
            slot.release()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        torch.set_num_threads(previous_threads)
    rows = bench.table()
    write_csv(rows, Path(args.out))
    mode = "quick" if plan.quick else "full"
    print(f"kdmri bench ({mode}, {time.perf_counter() - start:.0f} s) on {device}: {machine}")
    print(format_table(rows))
    for note in bench.notes:
        print(f"- {note}")
    print(f"-> {args.out}")
    return 0

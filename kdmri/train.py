"""The one training engine: every stage of every task runs through :class:`Trainer`.

A stage is a weighted sum of named loss terms (the table :data:`kdmri.distill.terms.TERMS`:
``reconstruction``, ``imitation``, ``attention``, ...), the network it trains and the
weights it starts from, all read from a model spec (:func:`kdmri.specs.model_spec`).
The distillation terms read the teacher's outputs and attention maps from the teacher
cache, so the paper's stages never run the teacher; the terms taking the teacher's
features (FitNets, FSP, SP, CC, VID, AB, ICKD) get them from the frozen teacher run on
every batch (``teacher``: its ``model.pt``; :mod:`kdmri.teacher` says why). The modules
some terms learn per layer pair (FitNets' adapters, CC's embeddings, ...:
:mod:`kdmri.distill.learnt`) train with the student, and the student-friendly teacher's
stage (``sft``) trains the student's cascades on the teacher's intermediate images
(:class:`~kdmri.distill.sft.StudentBranches`) with the teacher: both are in the resume
checkpoint, not in ``model.pt``.

This module is the loop, validation and checkpoints; its other parts have their own
modules: what a stage computes besides its network (the terms and their inputs, the hooks,
the live teacher, the adapters, the branches: :class:`kdmri.plan.StagePlan`), the batch
contract (:mod:`kdmri.batch`), ``model.pt`` and the resume checkpoint
(:mod:`kdmri.checkpoints`), the teacher cache and its checks (:mod:`kdmri.teacher`), the
optimisers (:mod:`kdmri.optim`).

Per epoch: train, validate (loss and PSNR), append a row to ``history.csv``, and write the
resume checkpoint ``checkpoint/last.pt`` atomically (model, optimiser, scheduler, epoch,
RNG states, best weights so far, history). Running the same command again after a crash
resumes from it; a checkpoint written under another spec is refused, naming what differs.
At the end ``model.pt`` holds the best weights (by validation loss: the weighted sum of the
stage's terms, or the one term its :attr:`~kdmri.methods.Stage.select` names, the SFT
stage's teacher reconstruction) and ``last.pt`` is marked complete (it holds the last
weights). A stage with :attr:`~kdmri.methods.Stage.outputs` writes each beside ``model.pt``
as a model file of its own, with the weights of the same best epoch (the SFT stage: its
student cascades, ``sft_student.pt``).

Given a :class:`kdmri.tracking.TensorBoardLog` (``tracker``), the trainer also sends it
every step's losses and learning rate (the values :meth:`Trainer._settle` has already
moved to the host), every history row and, every few validated epochs, a validation
image panel. The logger reads and never writes the training's state, and its errors end
the logging, not the training, so the weights are the same with and without it.

A NaN or infinite loss or gradient stops training with the epoch and batch named, before
the epoch's checkpoint is written (checked every step on the CPU; on a GPU every
``CHECK_EVERY_GPU`` steps, so that the GPU never waits for the host in between, and the
splits are kept in GPU memory when they fit: :meth:`Trainer._place_data`).
"""

from __future__ import annotations

import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from kdmri.batch import (
    Batch,
    check_complex,
    coil_arrays,
    forward,
    input_keys,
    make_batch,
    network_image,
    stored_image,
)
from kdmri.checkpoints import (
    load_model,
    restore_rng,
    resume_state,
    training_state,
    write_model_file,
)
from kdmri.data.store import SliceDataset, coil_count, is_complex_store
from kdmri.distill.hooks import FeatureHooks
from kdmri.errors import KdmriError
from kdmri.io import atomic_path, save_torch
from kdmri.masks import recorded_settings
from kdmri.methods import STAGES
from kdmri.metrics import psnr
from kdmri.models import build_model, count_parameters, place_model
from kdmri.models.python_family import check_forward, is_user_network, source_record
from kdmri.optim import build_optimizer
from kdmri.plan import StagePlan, Step, probe_batch
from kdmri.teacher import read_teacher_cache

#: Training steps queued on a GPU between two checks of their losses and gradients.
CHECK_EVERY_GPU = 32
#: Largest share of a GPU's free memory that the training and validation splits may take
#: to be kept on it.
DATA_ON_GPU_SHARE = 0.25


def lr_factor(schedule: dict, lr: float, step: int, steps_per_epoch: int, total_steps: int) -> float:
    """Learning-rate multiplier at optimiser step ``step`` (0-based) of a complete schedule
    (every key of the schema's ``schedule``) for base learning rate ``lr``.

    A linear warm-up over ``warmup_epochs`` multiplies by (step + 1) / warm-up steps; then
    ``constant`` gives 1, ``step`` gives gamma ** floor(step / (step_epochs * steps per
    epoch)), and ``cosine`` decays from 1 to min_lr / lr over the remaining steps:
    f + (1 - f) (1 + cos(pi p)) / 2 with f = min_lr / lr and p the share of them done.
    """
    warmup = schedule["warmup_epochs"] * steps_per_epoch
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule["kind"] == "step":
        return schedule["gamma"] ** (step // (schedule["step_epochs"] * steps_per_epoch))
    if schedule["kind"] == "cosine":
        progress = (step - warmup) / max(1, total_steps - warmup)
        floor = schedule["min_lr"] / lr
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


class Trainer:
    """Train one model of one stage. See the module docstring."""

    def __init__(self, spec: dict, train_store: str | Path, val_store: str | Path,
                 out_dir: str | Path, cache_dir: str | Path | None = None,
                 init: str | Path | None = None, device: torch.device | str = "cpu",
                 log=None, progress: bool | None = None, teacher: str | Path | None = None,
                 trust_code: bool | None = None, tracker=None):
        self.spec = spec
        self.out_dir = Path(out_dir)
        self.device = torch.device(device)
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.tracker = tracker  # a kdmri.tracking.TensorBoardLog, or None
        self.settings = spec["train"]
        self.ckpt_path = self.out_dir / "checkpoint" / "last.pt"
        self.amp = self.settings["amp"] and self.device.type == "cuda"

        self.plan = StagePlan(spec, teacher, trust_code)
        self.trust_code = trust_code
        self.train_data = self._data(train_store, cache_dir, "train")
        self.val_data = self._data(val_store, cache_dir, "val")
        if len(self.train_data["target"]) == 0:
            raise KdmriError(f"{train_store}: the training split has no slices")
        self.mask_settings = recorded_settings(train_store)  # model.pt's "mask" (kdmri apply)
        self.coils = coil_count(train_store)  # model.pt's "coils" (> 0: multi-coil)
        self._place_data()
        self.model = self._network(train_store, init)
        self.complex = self.model.complex  # its input; its output is of the targets' kind:
        self.complex_output = is_complex_store(train_store)  # real RSS of multi-coil data
        self.params = count_parameters(self.model)
        self.plan.build(self.model, self.train_data, self.device, self.amp)
        self.select, self.outputs = self._selection()

        self.batch_size = int(self.settings["batch_size"])
        self.steps_per_epoch = math.ceil(len(self.train_data["target"]) / self.batch_size)
        self.epochs = int(self.settings["epochs"])
        self.optimizer = build_optimizer(self._trained_parameters(), self.settings)
        self.scheduler = self._scheduler()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        # Steps between the loss/gradient checks, each of which waits for the device: on a
        # GPU a wait per step would idle it while the next step is being queued.
        self.check_every = 1 if self.device.type == "cpu" else CHECK_EVERY_GPU
        self.history: list[dict] = []
        self.best: dict | None = None
        self.start_epoch = 0

    def _network(self, train_store: str | Path, init: str | Path | None) -> torch.nn.Module:
        """The trained network on the device: built from the spec's seed, checked against
        the data (complex or not; a user's forward, once, before any epoch), then given the
        weights of ``init`` (a ``model.pt``) where there is one."""
        torch.manual_seed(self.spec["seed"])
        model = place_model(build_model(self.spec["net"]), self.device)
        check_complex(train_store, model, f"the {self.spec['model']} network")
        if is_user_network(model):
            first = probe_batch(self.train_data, self.device, model.complex)
            check_forward(model, first.image, first.kspace, first.mask)
        if init is not None:
            init_model, _ = load_model(init, expect_net=self.spec["net"], role="initial student",
                                       trust_code=self.trust_code)
            model.load_state_dict(init_model.state_dict())
        return model

    def _selection(self) -> tuple[str, dict[str, str]]:
        """The validation column that chooses the best epoch (``val_loss``, or
        ``val_<term>`` for a stage whose ``select`` names a term) and the stage's outputs
        (name -> file name), each checked against what the plan trains."""
        stage = STAGES.get(self.spec["stage"])
        select, outputs = (stage.select, stage.outputs) if stage else (None, {})
        if select is not None and select not in self.plan.terms:
            raise KdmriError(f"stage {self.spec['stage']!r} chooses its best epoch by its "
                             f"{select!r} term, which its loss does not weigh")
        missing = sorted(set(outputs) - set(self.plan.outputs()))
        if missing:
            raise KdmriError(f"stage {self.spec['stage']!r} writes {outputs[missing[0]]} from "
                             f"its branches; its loss weighs no branch term (sft_reconstruction "
                             "or sft_imitation)")
        return (f"val_{select}" if select else "val_loss"), outputs

    def _scheduler(self) -> torch.optim.lr_scheduler.LambdaLR:
        """The learning rate per optimiser step (:func:`lr_factor` of the spec's schedule)."""
        total = self.steps_per_epoch * self.epochs
        schedule, lr = self.settings["schedule"], self.settings["lr"]
        return torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(schedule, lr, step, self.steps_per_epoch, total)
        )

    @property
    def feature_paths(self) -> list[str]:
        """The network's module paths the stage hooks (:attr:`StagePlan.feature_paths`)."""
        return self.plan.feature_paths

    @property
    def adapters(self) -> torch.nn.ModuleList | None:
        """FitNets' adapters, trained with the network (None where the stage has none); the
        modules of every learnt input are in ``plan.learnt``."""
        return self.plan.adapters

    @property
    def branches(self) -> torch.nn.Module | None:
        """The SFT branches, trained with the network (None where the stage has none)."""
        return self.plan.branches

    def _trained_parameters(self) -> list[torch.nn.Parameter]:
        """What the optimiser trains: the network's parameters, then the learnt modules' and
        the SFT branches' if any."""
        params = list(self.model.parameters())
        for module in self.plan.auxiliary().values():
            params += list(module.parameters())
        return params

    # ------------------------------------------------------------------ data
    def _data(self, store, cache_dir, split) -> dict[str, torch.Tensor]:
        keys = input_keys(store, self.spec["net"])  # zf, and the coil arrays of multi-coil data
        dataset = SliceDataset(store, keys=[*keys, "target"], extra=["mask"])
        if not dataset.in_memory:
            raise KdmriError(f"{store}: split too large to hold in memory for training")
        batch = dataset.batch(np.arange(len(dataset)))
        data = {
            **{key: batch[key] for key in keys},
            "target": batch["target"],
            "mask": dataset.extra["mask"],
            "volume": torch.from_numpy(dataset.volume.astype(np.int64)),
        }
        if self.plan.cache_keys:
            data.update(read_teacher_cache(cache_dir, split, self.spec, self.plan.cache_keys,
                                           len(dataset), store, self.spec["stage"]))
        return data

    def _place_data(self) -> None:
        """On a GPU, keep both splits on the device when they take at most
        ``DATA_ON_GPU_SHARE`` of its free memory: each step then gathers its batch there,
        with no copy from the host (a copy from pageable memory waits for the GPU). Larger
        splits stay in host memory and only the mask moves."""
        if self.device.type != "cuda":
            return
        splits = (self.train_data, self.val_data)
        size = sum(t.numel() * t.element_size() for data in splits for t in data.values())
        free, _ = torch.cuda.mem_get_info(self.device)
        for data in splits:
            for key in data if size <= DATA_ON_GPU_SHARE * free else ["mask"]:
                data[key] = data[key].to(self.device)

    # ------------------------------------------------------------------ losses
    def _batch(self, data: dict, idx: torch.Tensor) -> tuple[Batch, dict]:
        batch = make_batch(data["zf"][idx], data["mask"], data["target"][idx], self.device,
                           complex=self.complex, **coil_arrays(data, idx))
        extra = {k: data[k][idx].to(self.device) for k in ("teacher_output", "attention") if k in data}
        if "teacher_output" in extra:
            extra["teacher_output"] = network_image(extra["teacher_output"], self.complex_output)
        return batch, extra

    def losses(self, batch: Batch, extra: dict, hooks: FeatureHooks | None):
        """Named loss terms and their weighted total for one batch."""
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp):
            prediction = forward(self.model, batch)
        prediction = prediction.float()
        total, terms = self.plan.losses(Step(self.plan, prediction, batch, extra, hooks))
        return total, terms, prediction

    # ------------------------------------------------------------------ checkpoints
    def _state(self, epoch: int, completed: bool) -> dict:
        parts = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict()}
        parts.update({key: module.state_dict() for key, module in self.plan.auxiliary().items()})
        return training_state(self.spec, epoch, completed, parts, self.best, self.history,
                              self.device)

    def _try_resume(self) -> None:
        state = resume_state(self.ckpt_path, self.spec, self.log)
        if state is None:
            return
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        for key, module in self.plan.auxiliary().items():
            module.load_state_dict(state[key])
        restore_rng(state, self.device)
        self.best = state["best"]
        self.history = list(state["history"])
        self.start_epoch = int(state["epoch"])
        self.log(f"resuming from {self.ckpt_path} after epoch {self.start_epoch}")

    # ------------------------------------------------------------------ loops
    def _epoch_order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.spec["seed"] * 1_000_003 + epoch)
        return torch.randperm(len(self.train_data["target"]), generator=generator)

    def train_epoch(self, epoch: int) -> dict:
        self.model.train()
        order = self._epoch_order(epoch)
        sums: dict[str, float] = defaultdict(float)
        pending: list[tuple[int, int, float, torch.Tensor, torch.Tensor | None, dict]] = []
        n_seen = 0
        start = time.perf_counter()
        batches = order.to(self.train_data["target"].device).split(self.batch_size)
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{self.epochs}", leave=False,
                   disable=not self.progress, file=sys.stderr)
        with FeatureHooks(self.model, self.feature_paths) as hooks:
            for b, idx in enumerate(bar):
                batch, extra = self._batch(self.train_data, idx)
                total, terms, _ = self.losses(batch, extra, hooks)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(total).backward()
                # the gradient norm for the NaN/inf check (with AMP the scaler itself skips
                # steps with inf gradients); clipping computes it anyway and returns it
                norm = None
                if self.settings["grad_clip"]:
                    self.scaler.unscale_(self.optimizer)
                    clipped = torch.nn.utils.clip_grad_norm_(self._trained_parameters(),
                                                             self.settings["grad_clip"])
                    norm = None if self.amp else clipped
                elif not self.amp:
                    norm = torch.nn.utils.get_total_norm(
                        [p.grad for p in self._trained_parameters() if p.grad is not None])
                lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.scheduler.step()
                pending.append((b, len(idx), lr, total.detach(), norm,
                                {name: value.detach() for name, value in terms.items()}))
                n_seen += len(idx)
                if len(pending) >= self.check_every or b == len(batches) - 1:
                    self._settle(pending, sums, epoch)
                    pending = []
                    if self.progress:
                        bar.set_postfix(loss=f"{sums['loss'] / n_seen:.4g}")
        seconds = time.perf_counter() - start
        row = {f"train_{k}": v / n_seen for k, v in sums.items()}
        row.update(seconds=seconds, samples_per_s=n_seen / seconds)
        return row

    def _settle(self, pending: list, sums: dict[str, float], epoch: int) -> None:
        """Check and add up the losses of the steps since the last call, with one transfer
        from the device: the first step whose loss or gradient was NaN or infinite stops
        training, named by epoch and batch, before any checkpoint holds its weights. Each
        checked step goes to the tracker, if any."""
        values = torch.stack([
            torch.stack([total.float(), (total if norm is None else norm).float(),
                         *(value.float() for value in terms.values())])
            for _, _, _, total, norm, terms in pending
        ]).tolist()
        for (b, n, lr, _, norm, terms), (total, grad_norm, *term_values) in zip(
                pending, values, strict=True):
            if not math.isfinite(total):
                raise KdmriError(
                    f"training loss became {total} at epoch {epoch + 1}, batch {b + 1}; "
                    f"{self._stopped(epoch)}"
                )
            if norm is not None and not math.isfinite(grad_norm):
                raise KdmriError(f"training gradient became {grad_norm} at epoch {epoch + 1}, "
                                 f"batch {b + 1}; {self._stopped(epoch)}")
            sums["loss"] += total * n
            for name, value in zip(terms, term_values, strict=True):
                sums[name] += value * n
            if self.tracker is not None:
                self.tracker.step(epoch * self.steps_per_epoch + b + 1, total,
                                  dict(zip(terms, term_values, strict=True)), lr)

    def _stopped(self, epoch: int) -> str:
        return f"stopped (last good checkpoint: {self.ckpt_path}, epoch {epoch})"

    def _check_weights(self, epoch: int) -> None:
        """Never checkpoint weights that are no longer finite."""
        if not all(torch.isfinite(p).all() for p in self._trained_parameters()):
            raise KdmriError(f"weights became NaN or infinite during epoch {epoch + 1}; "
                             f"{self._stopped(epoch)}")

    def validate(self) -> dict:
        """The validation row of history.csv: ``val_loss``, ``val_<term>`` (means over
        the validation slices) and ``val_psnr`` (the mean over validation volumes of each
        volume's PSNR)."""
        return self._validation()[0]

    @torch.no_grad()
    def _validation(self) -> tuple[dict, np.ndarray]:
        """The validation row and the predictions of every validation slice (as stored)."""
        self.model.eval()
        data = self.val_data
        n = len(data["target"])
        sums: dict[str, float] = defaultdict(float)
        outputs = []
        with FeatureHooks(self.model, self.feature_paths) as hooks:
            for idx in torch.arange(n, device=data["target"].device).split(max(self.batch_size, 16)):
                batch, extra = self._batch(data, idx)
                total, terms, prediction = self.losses(batch, extra, hooks)
                sums["loss"] += total.item() * len(idx)
                for name, value in terms.items():
                    sums[name] += value.item() * len(idx)
                outputs.append(stored_image(prediction, self.complex_output).cpu())
        prediction = torch.cat(outputs).numpy()
        target = data["target"].cpu().numpy()
        volumes = data["volume"].cpu().numpy()
        val_psnr = float(np.mean([
            psnr(target[volumes == v], prediction[volumes == v]) for v in np.unique(volumes)
        ]))
        row = {f"val_{k}": v / n for k, v in sums.items()}
        row["val_psnr"] = val_psnr
        return row, prediction

    def _panel_slice(self) -> int:
        """The validation slice of the tracker's image panel: the middle slice of the first
        validation volume."""
        volumes = self.val_data["volume"].cpu().numpy()
        rows = np.flatnonzero(volumes == volumes.min())
        return int(rows[len(rows) // 2])

    def _track_epoch(self, row: dict, prediction: np.ndarray | None, epoch: int) -> None:
        """Send the epoch's history row and, when due, the image panel to the tracker."""
        step = (epoch + 1) * self.steps_per_epoch
        self.tracker.epoch(row, step)
        if prediction is not None and self.tracker.wants_panel(epoch + 1,
                                                               epoch + 1 == self.epochs):
            from kdmri.tracking import panel_image

            i = self._panel_slice()
            self.tracker.panel(panel_image(self.val_data["zf"][i].cpu().numpy(), prediction[i],
                                           self.val_data["target"][i].cpu().numpy()), step)

    def run(self) -> dict:
        """Train (or resume) to the last epoch; write ``model.pt`` and ``history.csv``."""
        self._try_resume()
        total_epochs = self.epochs
        self.log(
            f"training {self.spec['model']} ({self.spec['stage']} stage, {self.params:,} parameters) "
            f"on {self.device}: {len(self.train_data['target'])} slices, batch {self.batch_size}, "
            f"{total_epochs} epochs x {self.steps_per_epoch} steps, losses {self.plan.weights}"
        )
        val_every = int(self.settings["val_every"])
        if self.tracker is not None:
            self.tracker.start(self.start_epoch * self.steps_per_epoch + 1)
        try:
            self._epochs(val_every)
        finally:  # what was logged reaches the disk, also when training stops on an error
            if self.tracker is not None:
                self.tracker.close()
        self._write_outputs()
        save_torch(self._state(total_epochs, completed=True), self.ckpt_path)
        return {"best": {k: v for k, v in self.best.items() if k not in ("state_dict", "outputs")},
                "params": self.params}

    def _epochs(self, val_every: int) -> None:
        """The epochs from ``start_epoch`` to the last, each ending with its history row and
        its checkpoint."""
        total_epochs = self.epochs
        for epoch in range(self.start_epoch, total_epochs):
            row = {"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"]}
            row.update(self.train_epoch(epoch))
            self._check_weights(epoch)
            prediction = None
            if (epoch + 1) % val_every == 0 or epoch + 1 == total_epochs:
                validation, prediction = self._validation()
                row.update(validation)
                if self.best is None or row[self.select] < self.best.get(self.select, math.inf):
                    self.best = {
                        "epoch": epoch + 1,
                        "val_loss": row["val_loss"],
                        "val_psnr": row["val_psnr"],
                        self.select: row[self.select],
                        "state_dict": _cpu_copy(self.model),
                        "outputs": {name: _cpu_copy(module) for name, (_, module)
                                    in self.plan.outputs().items() if name in self.outputs},
                    }
            self.history.append(row)
            save_torch(self._state(epoch + 1, completed=False), self.ckpt_path)
            self.log(
                f"epoch {epoch + 1}/{total_epochs} loss {row['train_loss']:.5f} "
                + (f"val_loss {row['val_loss']:.5f} val_psnr {row['val_psnr']:.2f} "
                   if "val_loss" in row else "")
                + f"{row['samples_per_s']:.0f} slices/s"
            )
            if self.tracker is not None:
                self._track_epoch(row, prediction, epoch)

    def _write_outputs(self) -> None:
        mask = {"mask": self.mask_settings} if self.mask_settings else {}
        if self.coils:  # trained on multi-coil data
            mask["coils"] = self.coils
        for name, file in self.outputs.items():  # the stage's outputs, of the best epoch
            net, module = self.plan.outputs()[name]
            write_model_file(self.out_dir / file, self.spec, self.best["outputs"][name], net=net,
                             epoch=self.best["epoch"], params=count_parameters(module),
                             device=str(self.device), output=name, **mask)
        source = source_record(self.model)  # a family: python network's target and file hash
        write_model_file(
            self.out_dir / "model.pt", self.spec, self.best["state_dict"],
            epoch=self.best["epoch"], val_loss=self.best["val_loss"],
            val_psnr=self.best["val_psnr"], params=self.params, device=str(self.device),
            **({"source": source} if source else {}),
            **mask,
        )
        with atomic_path(self.out_dir / "history.csv", suffix=".csv") as tmp:
            pd.DataFrame(self.history).to_csv(tmp, index=False)


def _cpu_copy(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A module's state dict copied to the host (the best epoch's weights)."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}

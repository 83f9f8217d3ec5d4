"""Live training curves: every training's scalars and a validation image panel in TensorBoard.

A study switches it on with ``logging: {tensorboard: true}``; the training jobs then write
into one log folder per study, ``<results>/tensorboard``, one run per trained model named
``<task>/<dataset>/acc<k>/<model>/seed<s>`` (its output folder relative to the results
folder, :func:`run_folder`), so that ``tensorboard --logdir <results>/tensorboard`` shows
every run of the study while it trains. TensorBoard, because the reference code of KD for
MRI and fastMRI's modules log to it: its files are plain event files in the results
folder, readable offline and without an account or a server.

The workflow hands the folder to ``kdmri train`` by the environment (:data:`ENV_DIR`,
:data:`ENV_IMAGE_EVERY`; :func:`environment`), not by its command or its ``--spec``: a
training's result does not depend on it, so switching logging on or off re-runs nothing.
``kdmri train --tensorboard DIR`` gives the folder by hand.

What a run holds, every value at the 1-based optimiser step it was reached after (global
step = epoch x steps per epoch + batch + 1, so that every curve shares one axis):

``step/loss``, ``step/<term>``, ``step/lr``
    each training step's weighted total loss, each loss term's value (as ``history.csv``'s
    ``train_<term>`` averages them) and the learning rate the step used;
``epoch/<column>``
    every column of the epoch's ``history.csv`` row but ``epoch`` (``train_loss``, the
    terms, ``lr`` at the epoch's start, ``seconds``, ``samples_per_s``, and on validated
    epochs ``val_loss``, ``val_<term>``, ``val_psnr``), at the epoch's last step;
``validation/panel``
    one validation slice (the middle slice of the first validation volume), side by side:
    the zero-filled input, the output, the target and ``ERROR_GAIN`` x |output - target|
    (magnitudes where complex), each divided by the target's maximum and clipped to
    [0, 1]; written on validated epochs that are multiples of ``logging.image_every``,
    and after the last.

Logging never changes a training: it only reads what the trainer has computed anyway
(each step's losses once the trainer has moved them to the host for its NaN check, the
history rows, the validation outputs) and touches no network, optimiser or random
generator. Any error of the writer (a full disk, a vanished folder, a failing file
system) is reported once in the training's log and ends the logging; the training goes
on and its outputs are those of a run without logging. A resumed training purges the
events from its first step on (``purge_step``), so the curves do not show the
interrupted epoch twice.

This module must not import torch at import time: the Snakefile imports it.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from kdmri.errors import KdmriError

#: The environment variable holding the study's log folder ("" or unset: no logging).
ENV_DIR = "KDMRI_TENSORBOARD"
#: The environment variable holding ``logging.image_every``.
ENV_IMAGE_EVERY = "KDMRI_TENSORBOARD_IMAGE_EVERY"
#: The log folder's name inside the study's results folder.
LOG_FOLDER = "tensorboard"
#: The error image of the panel is |output - target| times this.
ERROR_GAIN = 5.0
INSTALL_HINT = 'pip install -e ".[tracking]" (or pip install tensorboard)'


def available() -> bool:
    """Whether the ``tensorboard`` package (which torch's ``SummaryWriter`` needs) is
    installed."""
    return importlib.util.find_spec("tensorboard") is not None


def check_available(source: str) -> None:
    """Raise :class:`KdmriError` naming ``source`` when logging is asked for and the
    ``tensorboard`` package is missing: before any job or epoch runs."""
    if not available():
        raise KdmriError(f"{source}: TensorBoard logging is switched on but the tensorboard "
                         f"package is not installed; {INSTALL_HINT}")


def environment(config: dict) -> dict[str, str]:
    """The environment the workflow gives its jobs for a validated study ``config``:
    :data:`ENV_DIR` = ``<results>/tensorboard`` where ``logging.tensorboard`` is on, else
    "" (which also overrides a folder set in the user's shell), and
    :data:`ENV_IMAGE_EVERY`. Checks that tensorboard is installed where it is on."""
    settings = config["logging"]
    if settings["tensorboard"]:
        check_available("config key logging.tensorboard")
    folder = os.path.join(config["results"], LOG_FOLDER) if settings["tensorboard"] else ""
    return {ENV_DIR: folder, ENV_IMAGE_EVERY: str(settings["image_every"])}


def default_image_every() -> int:
    """The schema's default of ``logging.image_every``."""
    from kdmri.config import fill_defaults

    return int(fill_defaults("logging", {})["image_every"])


def log_settings(folder: str | None, image_every: int | None) -> tuple[Path | None, int]:
    """The log folder (None: no logging) and the panel interval of one training: the
    options given, else the environment (:data:`ENV_DIR`, :data:`ENV_IMAGE_EVERY`), else
    no logging and the schema's default."""
    folder = os.environ.get(ENV_DIR, "") if folder is None else folder
    if image_every is None:
        text = os.environ.get(ENV_IMAGE_EVERY, "")
        try:
            image_every = int(text) if text else default_image_every()
        except ValueError:
            raise KdmriError(f"environment variable {ENV_IMAGE_EVERY}: expected a positive "
                             f"integer, found {text!r}") from None
    if image_every < 1:
        raise KdmriError(f"TensorBoard image interval: expected a positive integer, found "
                         f"{image_every}")
    return (Path(folder) if folder else None), image_every


def run_folder(log_dir: str | Path, out_dir: str | Path) -> Path:
    """A training's run folder in the log folder ``log_dir``: its output folder relative
    to ``log_dir``'s parent (in the workflow ``<results>/tensorboard`` and
    ``<results>/<task>/<dataset>/acc<k>/<model>/seed<s>``, so the run is named
    ``<task>/<dataset>/acc<k>/<model>/seed<s>``); an output folder elsewhere gives its own
    name."""
    log_dir = Path(log_dir)
    base = Path(os.path.abspath(log_dir)).parent
    relative = Path(os.path.relpath(os.path.abspath(out_dir), base))
    if relative.parts[:1] == ("..",) or relative == Path("."):
        relative = Path(Path(os.path.abspath(out_dir)).name)
    return log_dir / relative


def panel_image(zf: np.ndarray, output: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The validation panel of one slice ``(H, W)`` (complex images by magnitude) as a
    ``(1, H, 4 W)`` float32 image in [0, 1]: zf, output, target and ERROR_GAIN x
    |output - target| (of the magnitudes where complex), each divided by the target's
    maximum and clipped."""
    from kdmri.metrics import magnitude

    zf, output, target = (magnitude(a).astype(np.float64) for a in (zf, output, target))
    peak = target.max() if target.max() > 0 else 1.0
    tiles = [zf, output, target, ERROR_GAIN * np.abs(output - target)]
    return np.clip(np.concatenate(tiles, axis=1) / peak, 0.0, 1.0).astype(np.float32)[None]


def _summary_writer(log_dir: Path, purge_step: int):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


class TensorBoardLog:
    """The TensorBoard run of one training (see the module docstring for its tags).

    ``writer_factory(log_dir, purge_step)`` makes the writer (torch's ``SummaryWriter``
    by default) when the training starts (:meth:`start`); every call that writes is
    guarded: the first error is reported through ``log`` and ends the logging, never the
    training.
    """

    def __init__(self, log_dir: str | Path, image_every: int, log: Callable[[str], None],
                 writer_factory: Callable | None = None):
        self.log_dir = Path(log_dir)
        self.image_every = int(image_every)
        self.log = log
        self.writer_factory = writer_factory or _summary_writer
        self.writer = None
        self.failed: str | None = None

    @property
    def active(self) -> bool:
        return self.writer is not None

    def _guard(self, what: str, action: Callable[[], None]) -> None:
        try:
            action()
        except Exception as exc:  # a failing logger must never stop the training
            self.failed = f"{what}: {type(exc).__name__}: {exc}"
            self.log(f"warning: TensorBoard logging to {self.log_dir} stopped ({self.failed}); "
                     "the training goes on without it")
            writer, self.writer = self.writer, None
            if writer is not None:
                try:
                    writer.close()
                except Exception:  # already reported; closing may fail as well
                    pass

    def start(self, first_step: int) -> None:
        """Open the run; events of steps from ``first_step`` on (an interrupted epoch's,
        when the training resumes) are purged."""

        def open_writer():
            self.writer = self.writer_factory(self.log_dir, first_step)

        self._guard("opening the run", open_writer)

    def step(self, step: int, loss: float, terms: dict[str, float], lr: float) -> None:
        """One optimiser step's total loss, loss terms and learning rate."""
        if not self.active:
            return

        def write():
            self.writer.add_scalar("step/loss", loss, step)
            for name, value in terms.items():
                self.writer.add_scalar(f"step/{name}", value, step)
            self.writer.add_scalar("step/lr", lr, step)

        self._guard(f"step {step}", write)

    def epoch(self, row: dict, step: int) -> None:
        """An epoch's ``history.csv`` row (all but ``epoch``), at its last step, flushed to
        disk so the curves are current."""
        if not self.active:
            return

        def write():
            for name, value in row.items():
                if name != "epoch":
                    self.writer.add_scalar(f"epoch/{name}", value, step)
            self.writer.flush()

        self._guard(f"epoch {row['epoch']}", write)

    def wants_panel(self, epoch: int, last: bool) -> bool:
        """Whether validated epoch ``epoch`` (1-based) gets an image panel."""
        return self.active and (epoch % self.image_every == 0 or last)

    def panel(self, image: np.ndarray, step: int) -> None:
        """The validation panel (:func:`panel_image`) at ``step``."""
        if not self.active:
            return

        def write():
            self.writer.add_image("validation/panel", image, step, dataformats="CHW")
            self.writer.flush()

        self._guard(f"the validation panel at step {step}", write)

    def close(self) -> None:
        """Flush and close the run (also after a failed training)."""
        if not self.active:
            return

        def close_writer():
            writer, self.writer = self.writer, None
            writer.close()

        self._guard("closing the run", close_writer)

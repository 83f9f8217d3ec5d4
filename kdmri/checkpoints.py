"""The files a training run writes and reads back: ``model.pt`` and the resume checkpoint.

``model.pt`` (:data:`MODEL_FORMAT`) holds one network: its architecture ``net``, the model
spec, its weights and a few figures (epoch, validation loss and PSNR, parameters, device);
``mask``, the settings of the mask its training inputs were undersampled with (the
sidecar of ``kdmri mask``: kind, acceleration, centre fraction, seed, shape; absent where
the stores record none, :func:`kdmri.masks.recorded_settings`), from which ``kdmri apply``
makes the mask at another image size; ``source`` for a ``family: python`` network. It is
what later stages start from and what every evaluation loads (:func:`load_model`), and it
is data: loading it never imports code the user has not allowed.
Nothing a stage learns besides the network (a FitNets adapter, the student-friendly
teacher's branches) is in it; a stage's declared outputs (:attr:`kdmri.methods.Stage.
outputs`: the SFT stage's student cascades, ``sft_student.pt``) are model files of their
own, written beside it in the same format.

``checkpoint/last.pt`` (:data:`STATE_FORMAT`) holds everything needed to continue a run
exactly: the spec and its digest, the epoch, ``completed``, the state dicts of the
network, the optimiser, the scheduler and the AMP scaler, the RNG states, the best weights
so far and the history; and the modules a stage learns besides the network where it
trains them: each learnt input's by its name (``adapters`` for FitNets, ``cc_embeddings``,
...: :mod:`kdmri.distill.learnt`), ``branches`` for the SFT stage. :func:`resume_state`
reads it back, refusing a checkpoint written under another spec (naming what differs).
"""

from __future__ import annotations

from pathlib import Path

import torch

from kdmri import __version__
from kdmri.errors import KdmriError
from kdmri.io import load_torch, save_torch
from kdmri.keys import digest
from kdmri.models import build_model
from kdmri.models.python_family import check_consent

MODEL_FORMAT = "kdmri-model/1"
STATE_FORMAT = "kdmri-train-state/1"


def load_model(path: str | Path, expect_net: dict | None = None, role: str = "model",
               trust_code: bool | None = None):
    """Load a ``model.pt`` (weights only) and build its network; check its architecture.

    The one loader of model files: every command that runs a trained network goes through
    it. A file is data and never chooses code to import: a ``family: python`` network
    (whose ``target`` names a module to import, which runs that module's code) is built only
    with the user's consent (:func:`kdmri.models.python_family.check_consent`), checked
    before any import:

    * ``trust_code=True``: the user said so (``--trust-code``);
    * ``trust_code=None`` (the library's default) and ``expect_net`` given: the caller named
      the network itself (a spec or study config), and the file must hold exactly that
      network, so the file chooses nothing;
    * otherwise (``trust_code=False``, the command line without ``--trust-code``) a one-line
      error naming the file, the target and the flag.
    """
    ckpt = load_torch(path)
    if ckpt.get("format") != MODEL_FORMAT:
        raise KdmriError(f"{path}: not a kdmri model file (format {ckpt.get('format')!r})")
    if expect_net is not None and ckpt["net"] != expect_net:
        raise KdmriError(
            f"{path}: {role} architecture {ckpt['net']} does not match the config's {expect_net}"
        )
    trusted = (expect_net is not None) if trust_code is None else bool(trust_code)
    check_consent(ckpt["net"], trusted, f"{path}: the {role}")
    model = build_model(ckpt["net"])
    model.load_state_dict(ckpt["state_dict"])
    return model, ckpt


def write_model_file(path: str | Path, spec: dict, state_dict: dict, net: dict | None = None,
                     **meta) -> None:
    """Write a ``model.pt`` (:data:`MODEL_FORMAT`): the network ``net`` (default
    ``spec["net"]``; a stage output such as the SFT stage's student cascades names its
    own), the model spec, its weights and ``meta`` (epoch, val_loss, val_psnr, params,
    device; ``mask`` and ``source`` where there are such), atomically.
    The file :class:`kdmri.train.Trainer` writes and :func:`load_model` reads."""
    save_torch({
        "format": MODEL_FORMAT,
        "kdmri_version": __version__,
        "net": spec["net"] if net is None else net,
        "spec": spec,
        "spec_digest": digest(spec),
        "state_dict": state_dict,
        **meta,
    }, path)


def check_single_coil(model_path: str | Path, ckpt: dict, command: str) -> None:
    """Refuse, for ``command`` (``kdmri apply``, ``kdmri export``, which give a network
    single-coil images and single-coil data consistency), the model file of a network
    trained on multi-coil data: its ``coils``, the number of coils of its training data
    (recorded by :class:`kdmri.train.Trainer` where there are any)."""
    if ckpt.get("coils"):
        raise KdmriError(f"{model_path}: trained on multi-coil data ({ckpt['coils']} coils); "
                         f"{command} gives networks single-coil images and does not take it")


def spec_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """The keys (dotted) where two specs differ, as ``key: old -> new``."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += spec_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return diffs


def training_state(spec: dict, epoch: int, completed: bool, parts: dict[str, dict],
                   best: dict | None, history: list[dict], device: torch.device) -> dict:
    """The resume checkpoint's content (:data:`STATE_FORMAT`); ``parts`` holds the state
    dicts (model, optimizer, scheduler, scaler and, where trained, the learnt modules or
    branches)."""
    rng = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return {
        "format": STATE_FORMAT,
        "kdmri_version": __version__,
        "spec": spec,
        "spec_digest": digest(spec),
        "epoch": epoch,
        "completed": completed,
        **parts,
        "rng": rng,
        "best": best,
        "history": history,
    }


def resume_state(path: Path, spec: dict, log) -> dict | None:
    """The checkpoint at ``path`` to continue from, or None where there is none or its run
    had finished; one written under a spec other than ``spec`` is refused."""
    if not path.exists():
        return None
    state = load_torch(path)
    if state.get("format") != STATE_FORMAT:
        raise KdmriError(f"{path}: not a kdmri training checkpoint")
    if state.get("completed"):
        log(f"{path}: previous run had finished; training again from epoch 0")
        return None
    if state.get("spec_digest") != digest(spec):
        diff = "; ".join(spec_diff(state.get("spec", {}), spec)[:5])
        raise KdmriError(
            f"{path}: checkpoint was written under a different config ({diff}); "
            "delete it to start this model again"
        )
    return state


def restore_rng(state: dict, device: torch.device) -> None:
    """Set the RNG states a checkpoint holds (the CUDA one only on a GPU)."""
    torch.set_rng_state(state["rng"]["torch"])
    if "cuda" in state["rng"] and device.type == "cuda":
        torch.cuda.set_rng_state(state["rng"]["cuda"], device)

"""The ``kdmri`` command line: one subcommand per pipeline stage.

Every Snakemake rule calls one subcommand. A subcommand is one ``cmd_<name>`` function here,
which imports the module doing its work only when it runs (so ``kdmri bench`` and the
tables are not imported by every call), and its arguments in :func:`build_parser`.
Settings that determine a job's result arrive as ``--spec``: JSON text, or ``@file`` to
read it from a file (the Snakefile builds it with :mod:`kdmri.specs`, so the rule re-runs
exactly when its spec changes). A user's mistake prints one line ``kdmri: error: ...`` and
exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kdmri import __version__
from kdmri.errors import KdmriError
from kdmri.keys import TRUST_FLAG


def _spec(text: str, option: str = "--spec") -> dict:
    """The JSON object given to ``option``: JSON text, or ``@file`` to read it from a file."""
    if text.startswith("@"):
        path = Path(text[1:])
        if not path.is_file():
            raise KdmriError(f"{path}: {option} file not found")
        text = path.read_text()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KdmriError(f"{option} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise KdmriError(f"{option} must be a JSON object")
    return value


def _json_file(path: str, option: str) -> dict:
    file = Path(path)
    if not file.is_file():
        raise KdmriError(f"{file}: file not found (given as {option})")
    try:
        value = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise KdmriError(f"{file}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise KdmriError(f"{file}: expected a JSON object, found {type(value).__name__}")
    return value


def _check_train_spec(spec: dict) -> dict:
    """Check a training ``--spec`` (the schema's ``train_spec``, the loss's terms and the
    keys they need) and return it with the schema's defaults filled in for the train
    settings and the networks (a spec from kdmri.specs.model_spec has them all)."""
    from kdmri.config import check_spec, fill_defaults
    from kdmri.crosschecks import check_terms
    from kdmri.distill.terms import TERMS
    from kdmri.specs import spec_keys

    check_spec("train_spec", spec)
    check_terms(spec["loss_weights"], "loss_weights", "--spec")
    for key, term in spec_keys(t for t in TERMS if spec["loss_weights"].get(t)).items():
        if key not in spec:
            raise KdmriError(f"--spec: key {key!r} is required by the {term} loss")
    filled = dict(spec, train=fill_defaults("train", spec["train"]))
    for key in ("net", "teacher_net", "student_net"):
        if key in spec:
            filled[key] = fill_defaults("net", spec[key])
    return filled


def _split_store(folder: str | Path, split: str) -> Path:
    """``<folder>/<split>.h5``, or an error saying what the folder holds instead."""
    folder = Path(folder)
    if not folder.is_dir():
        raise KdmriError(f"{folder}: data folder not found")
    path = folder / f"{split}.h5"
    if not path.is_file():
        found = sorted(p.name for p in folder.iterdir())
        raise KdmriError(f"{folder}: no {split}.h5 in this folder (found {found or 'nothing'})")
    return path


def _setup_torch(args) -> None:
    import torch

    from kdmri.device import keep_freed_memory

    keep_freed_memory()
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- subcommands
def cmd_prepare(args) -> int:
    from kdmri.data.prepare import prepare_dataset

    info = prepare_dataset(args.name, _spec(args.spec), args.out_dir, progress=not args.quiet)
    counts = ", ".join(f"{s} {v['slices']}" for s, v in info["splits"].items())
    _log(f"prepared {args.name}: {counts} slices ({info['slices_per_s']:.0f} slices/s)")
    return 0


def cmd_mask(args) -> int:
    from kdmri.config import fill_defaults
    from kdmri.data.store import image_shape
    from kdmri.masks import create_mask_func, load_mask, save_mask

    spec = fill_defaults("mask", _spec(args.spec))
    shape = image_shape(args.like)
    if spec["file"]:
        mask = load_mask(spec["file"], shape)
        params = {"kind": "file", "file": spec["file"]}
    else:
        if "acceleration" not in spec:
            raise KdmriError("--spec: missing key 'acceleration' (or 'file' for an external mask)")
        func = create_mask_func(spec["kind"], spec["acceleration"], spec["center_fraction"])
        mask = func(shape, seed=args.seed)
        params = dict(func.params(), seed=args.seed)
    save_mask(mask, args.out, params)
    _log(f"mask {args.out}: {shape}, {mask.mean():.3f} of k-space sampled "
         f"(effective acceleration {1 / max(mask.mean(), 1e-12):.2f})")
    return 0


def cmd_undersample(args) -> int:
    from kdmri.data.prepare import undersample_store
    from kdmri.data.store import image_shape, read_store
    from kdmri.keys import SPLITS
    from kdmri.masks import load_mask, mask_params

    data_dir, out_dir = Path(args.data_dir), Path(args.out_dir)
    stores = {split: _split_store(data_dir, split) for split in SPLITS}
    shape = image_shape(stores["train"])
    mask = load_mask(args.mask, shape)
    for store in stores.values():  # check every split before writing any output
        if image_shape(store) != shape:
            raise KdmriError(f"{store}: images of {image_shape(store)}, train.h5 has {shape}")
        read_store(store, ["target", "volume", "slice"])
    params = mask_params(args.mask)  # recorded in the stores, then in model.pt (kdmri apply)
    for split, store in stores.items():
        undersample_store(store, mask, out_dir / f"{split}.h5", mask_params=params)
    _log(f"undersampled {data_dir} with {args.mask} -> {out_dir}")
    return 0


def _tracker(args):
    """The training's TensorBoard run (kdmri.tracking), or None without logging: the folder
    from ``--tensorboard`` or the environment the workflow sets."""
    from kdmri import tracking

    folder, image_every = tracking.log_settings(args.tensorboard, args.tensorboard_image_every)
    if folder is None:
        return None
    tracking.check_available(f"--tensorboard {folder}")
    run = tracking.run_folder(folder, args.out_dir)
    _log(f"TensorBoard run {run} (tensorboard --logdir {folder})")
    return tracking.TensorBoardLog(run, image_every, _log)


def cmd_train(args) -> int:
    from kdmri.device import select_device
    from kdmri.io import ensure_dir
    from kdmri.train import Trainer

    _setup_torch(args)
    spec = _check_train_spec(_spec(args.spec))
    stores = {split: _split_store(args.inputs_dir, split) for split in ("train", "val")}
    tracker = _tracker(args)
    device, slot = select_device(args.device, log=_log)
    try:
        trainer = Trainer(spec, stores["train"], stores["val"], args.out_dir,
                          cache_dir=args.cache_dir, init=args.init, device=device, log=_log,
                          teacher=args.teacher, trust_code=args.trust_code, tracker=tracker)
        ensure_dir(args.out_dir)  # fail now, not after the first epoch
        result = trainer.run()
    finally:
        if slot is not None:
            slot.release()
    best = result["best"]
    _log(f"done: best epoch {best['epoch']} val_psnr {best['val_psnr']:.2f} dB -> {args.out_dir}")
    return 0


def cmd_cache_teacher(args) -> int:
    from kdmri.config import check_spec, fill_defaults
    from kdmri.device import select_device
    from kdmri.inference import cache_teacher

    _setup_torch(args)
    spec = _spec(args.spec)
    check_spec("teacher_cache_spec", spec)
    spec = dict(spec, teacher_net=fill_defaults("net", spec["teacher_net"]))
    stores = {split: _split_store(args.inputs_dir, split) for split in ("train", "val")}
    device, slot = select_device(args.device, log=_log)
    try:
        cache_teacher(args.teacher, spec["teacher_net"], spec["pairs"], stores, args.out_dir,
                      device, trust_code=args.trust_code)
    finally:
        if slot is not None:
            slot.release()
    _log(f"teacher cache -> {args.out_dir}")
    return 0


def cmd_predict(args) -> int:
    import torch

    from kdmri.checkpoints import load_model
    from kdmri.data.store import coil_count, write_store
    from kdmri.device import select_device
    from kdmri.inference import latency_ms, run_model, zero_filled_output
    from kdmri.io import write_json
    from kdmri.models import count_parameters, flops_per_slice

    _setup_torch(args)
    info: dict = {"model": args.model}
    if args.model == "zf":
        result = zero_filled_output(args.inputs)
        info.update(params=0, flops=0, latency_ms=0.0, device="none")
    else:
        device, slot = select_device(args.device, log=_log)
        try:
            model, ckpt = load_model(args.model, trust_code=args.trust_code)
            result = run_model(model, args.inputs, device)
            shape = result["output"].shape[1:]
            coils = coil_count(args.inputs)  # a multi-coil network's input: the store's coils
            info.update(params=count_parameters(model),
                        flops=flops_per_slice(model, *shape, coils=coils),
                        device=str(device),
                        latency_ms=latency_ms(model, shape, device, repeats=args.repeats,
                                              coils=coils),
                        trained_on=ckpt.get("device"), best_epoch=ckpt.get("epoch"))
        finally:
            if slot is not None:
                slot.release()
    write_store(args.out, {"output": result["output"], "volume": result["volume"],
                           "slice": result["slice"]},
                attrs={"volume_names": result["volume_names"].tolist()})
    info["torch_threads"] = torch.get_num_threads()
    write_json(args.info, info)
    _log(f"predicted {len(result['output'])} slices -> {args.out}")
    return 0


def cmd_evaluate(args) -> int:
    from kdmri.evaluate import evaluate, write_csv

    meta = _spec(args.meta, "--meta")
    if args.predict_info:
        info = _json_file(args.predict_info, "--predict-info")
        meta.update(params=info.get("params"), flops=info.get("flops"),
                    latency_ms=info.get("latency_ms"))
    frame = evaluate(args.inputs, args.predictions)
    for i, (key, value) in enumerate(meta.items()):
        if key in frame.columns:
            raise KdmriError(f"--meta: key {key!r} would replace a metrics column")
        frame.insert(i, key, value)
    write_csv(frame, args.out)
    _log(f"{args.out}: PSNR {frame['psnr'].mean():.2f} dB, SSIM {frame['ssim'].mean():.4f} "
         f"over {len(frame)} slices")
    return 0


def cmd_export(args) -> int:
    from kdmri.export import export_model, summary

    _setup_torch(args)
    _log(summary(export_model(args.model, args.format, args.out, trust_code=args.trust_code)))
    return 0


def cmd_apply(args) -> int:
    from kdmri.apply import apply_model, made_mask_path, write_output
    from kdmri.device import select_device

    _setup_torch(args)
    device, slot = select_device(args.device, log=_log)
    try:
        result = apply_model(args.model, args.input, args.mask, axis=args.axis, device=device,
                             progress=not args.quiet, trust_code=args.trust_code)
    finally:
        if slot is not None:
            slot.release()
    write_output(result, args.out)
    if result.made_mask:
        made = result.made_mask
        options = ", ".join(f"{key.replace('_', ' ')} {made[key]:g}" for key in
                            ("acceleration", "center_fraction", "seed") if key in made)
        _log(f"no --mask: made the model's {made['kind']} mask ({options}) at "
             f"{' x '.join(map(str, result.mask.shape))} -> {made_mask_path(args.out)}")
    note = f"; {result.volume.note}" if result.volume.note else ""
    _log(f"applied {args.model} ({result.task}) to {len(result.output)} slices of "
         f"{tuple(result.output.shape[1:])} -> {args.out}{note}")
    return 0


def cmd_tables(args) -> int:
    from kdmri.tables import cmd_tables as run

    return run(args)


def cmd_figures(args) -> int:
    from kdmri.figures import cmd_figures as run

    return run(args)


def cmd_sweep(args) -> int:
    from kdmri.sweeps import cmd_sweep as run

    return run(args)


def cmd_provenance(args) -> int:
    from kdmri.provenance import cmd_provenance as run

    return run(args)


def cmd_bench(args) -> int:
    from kdmri.bench import cmd_bench as run

    return run(args)


# ---------------------------------------------------------------------- parser
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdmri",
        description="Knowledge distillation for MRI reconstruction and restoration (KD-MRI).",
    )
    parser.add_argument("--version", action="version", version=f"kdmri {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, func, help_text):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    def trust_arg(p):
        p.add_argument(TRUST_FLAG, action="store_true",
                       help="build a family: python network that a model file names: imports "
                            "its module, which runs that module's code (only for files you "
                            "trust; docs/reliability.md)")

    def device_args(p):
        p.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N|mps (default auto)")
        p.add_argument("--threads", type=_positive_int, default=None, help="CPU threads for torch")

    p = add("prepare", cmd_prepare, "read a dataset once and write its train/val/test stores")
    p.add_argument("--name", required=True, help="dataset name (used in tables)")
    p.add_argument("--spec", required=True, help="dataset settings as JSON (or @file)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = add("mask", cmd_mask, "make (or load) the undersampling mask of one acceleration")
    p.add_argument("--spec", required=True, help="mask settings as JSON: kind, acceleration, ...")
    p.add_argument("--like", required=True, help="a store whose image size the mask takes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="mask .npy (a .json sidecar is written beside it)")

    p = add("undersample", cmd_undersample, "write the zero-filled input stores of every split")
    p.add_argument("--data-dir", required=True, help="folder with train/val/test target stores")
    p.add_argument("--mask", required=True)
    p.add_argument("--out-dir", required=True)

    p = add("train", cmd_train, "train one model (teacher, student, attention or imitation stage)")
    p.add_argument("--spec", required=True, help="model spec as JSON (kdmri.specs.model_spec)")
    p.add_argument("--inputs-dir", required=True, help="folder with train.h5 and val.h5 inputs")
    p.add_argument("--cache-dir", default=None, help="teacher cache folder (distillation stages)")
    p.add_argument("--teacher", default=None,
                   help="teacher model.pt, run frozen in every step (terms taking the teacher's "
                        "features: fitnets, fsp, sp, cc, attention_batchnorm)")
    p.add_argument("--init", default=None, help="model.pt to start from")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="log the training's curves and validation images to TensorBoard in "
                        "DIR, run named by --out-dir (default: the environment variable "
                        "KDMRI_TENSORBOARD, which the workflow sets from logging.tensorboard; "
                        "empty: no logging); changes no result")
    p.add_argument("--tensorboard-image-every", type=_positive_int, default=None, metavar="N",
                   help="validation image panel every N epochs (default: the environment "
                        "variable KDMRI_TENSORBOARD_IMAGE_EVERY, else logging.image_every's "
                        "default)")
    trust_arg(p)
    device_args(p)

    p = add("cache-teacher", cmd_cache_teacher, "store the frozen teacher's outputs and attention maps")
    p.add_argument("--teacher", required=True, help="teacher model.pt")
    p.add_argument("--spec", required=True, help="JSON with teacher_net and pairs")
    p.add_argument("--inputs-dir", required=True)
    p.add_argument("--out-dir", required=True)
    trust_arg(p)
    device_args(p)

    p = add("predict", cmd_predict, "run a model (or zf) over a test store and time it")
    p.add_argument("--model", required=True, help="model.pt, or zf for the zero-filled baseline")
    p.add_argument("--inputs", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--info", required=True,
                   help="JSON file for parameters, FLOPs per slice, latency, device")
    p.add_argument("--repeats", type=_positive_int, default=20,
                   help="timed forward passes for latency")
    trust_arg(p)
    device_args(p)

    p = add("evaluate", cmd_evaluate, "per-slice PSNR, SSIM, NMSE, HFEN of one model")
    p.add_argument("--inputs", required=True, help="test input store (targets)")
    p.add_argument("--predictions", required=True)
    p.add_argument("--meta", default="{}",
                   help="JSON columns to add (task, dataset, model, ...), or @file")
    p.add_argument("--predict-info", default=None, help="predict's JSON (params, flops, latency)")
    p.add_argument("--out", required=True)

    p = add("export", cmd_export, "write a trained network as one self-contained TorchScript "
            "or ONNX file (docs/deploy.md)")
    p.add_argument("--model", required=True, help="model.pt written by kdmri train")
    p.add_argument("--format", default="torchscript", help="torchscript (default) or onnx")
    p.add_argument("--out", required=True, help="file to write (FILE.json is written beside it)")
    p.add_argument("--threads", type=_positive_int, default=None, help="CPU threads for torch")
    trust_arg(p)

    p = add("apply", cmd_apply, "run a trained network on one NIfTI, fastMRI HDF5 or DICOM "
            "volume and write a NIfTI (docs/deploy.md)")
    p.add_argument("--model", required=True, help="model.pt written by kdmri train")
    p.add_argument("--input", required=True,
                   help="volume: .nii/.nii.gz, fastMRI .h5, or a DICOM series folder")
    p.add_argument("--out", required=True, help="output .nii or .nii.gz")
    p.add_argument("--mask", default=None,
                   help="a mask .npy of the slices' shape (e.g. the study's mask.npy); "
                        "without it, reconstruction makes the mask of the model's own "
                        "settings at the input's size and writes it beside --out; for "
                        "super-resolution, makes the low-resolution input from the volume")
    p.add_argument("--axis", type=int, default=2, help="NIfTI axis the slices are taken "
                   "across (default 2, as the nifti reader)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    trust_arg(p)
    device_args(p)

    p = add("tables", cmd_tables,
            "summary, KD-gain, ablation, compression and methods tables from metrics.csv files")
    p.add_argument("--metrics", nargs="+", required=True,
                   help="metrics.csv of every model and seed")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--methods", default=None,
                   help="JSON: task -> model -> {teacher, stages}, for the table of methods")
    p.add_argument("--histories", nargs="+", default=None,
                   help="task/dataset/acceleration/model/seed=history.csv of the methods' hint "
                        "stages, for the validation PSNR at the end of each")
    p.add_argument("--sweep", default=None,
                   help="sweep.csv of kdmri sweep: each swept model's row is its chosen "
                        "candidate's, the other candidates' test figures are not shown")

    p = add("sweep", cmd_sweep,
            "choose each swept model's setting on validation PSNR: sweep.csv and sweep.md")
    p.add_argument("--plan", required=True,
                   help="JSON list of candidates: {task, dataset, acceleration, model, sweep, "
                        "setting, candidate, seeds: [keys of --models]}")
    p.add_argument("--models", nargs="+", required=True, metavar="KEY=PATH",
                   help="the candidates' model.pt files (their recorded validation PSNR), "
                        "each after the key the plan's seeds give it (no = in a key)")
    p.add_argument("--out-dir", required=True)

    p = add("figures", cmd_figures,
            "reconstruction panel, training curves, mask, compression, methods or sweep figure")
    p.add_argument("--kind", required=True,
                   choices=["panel", "curves", "mask", "compression", "methods", "sweep"])
    p.add_argument("--inputs", help="panel: test input store (targets)")
    p.add_argument("--pred", nargs="+", metavar="NAME=PATH",
                   help="panel: prediction stores, e.g. zf=... teacher=... student=... kd=...")
    p.add_argument("--history", nargs="+", metavar="NAME=PATH", help="curves: history.csv files")
    p.add_argument("--mask", help="mask: the mask .npy")
    p.add_argument("--table", help="compression, methods, sweep: compression.csv or "
                                   "methods.csv of kdmri tables, sweep.csv of kdmri sweep")
    p.add_argument("--title", default="")
    p.add_argument("--out", required=True, help="figure file (.png, .pdf or .svg)")

    p = add("provenance", cmd_provenance, "record versions, git state, devices and config digest")
    p.add_argument("--config-json", required=True,
                   help="the run's config: a JSON file, @file, or JSON text")
    p.add_argument("--models", nargs="*", default=[], metavar="NAME=PATH",
                   help="trained model.pt files whose training device to record")
    p.add_argument("--out", required=True, help="provenance JSON file")

    p = add("bench", cmd_bench, "measure training, inference, loading and workflow overheads")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes, one timed round, no torch.compile, the test study's noop")
    p.add_argument("--out", default="results/bench/bench.csv", help="CSV of the figures")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N (default auto)")
    p.add_argument("--threads", type=_positive_int, default=None, help="CPU threads for torch")
    p.add_argument("--size", type=int, default=None,
                   help="image size of the training and loading stores (default 64, quick 16)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="time torch.compile (default: on, off with --quick)")
    p.add_argument("--workdir", default=None,
                   help="folder for scratch files: its kdmri-bench/ subfolder is replaced "
                        "(default: a temporary folder, removed at the end)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KdmriError as exc:
        message = " ".join(str(exc).split())  # always one line, whatever a library said
        print(f"kdmri: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kdmri: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

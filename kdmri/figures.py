"""Figures: a reconstruction panel, training curves and a mask picture.

``kdmri figures --kind panel|curves|mask ... --out FILE``:

``panel``
    ``--inputs test.h5 --pred zf=P teacher=P student=P kd=P ...``: one test slice (the
    one with the median kd PSNR, or the median of the last ``--pred`` model when there is
    no kd). Top row: the target and every model's image on the grey scale 0..slice
    maximum; bottom row: each model's absolute error on one shared scale (up to the 99th
    percentile of all error maps) with one colourbar. PSNR and SSIM of that slice are in
    the titles, with the data range of the slice's volume maximum as in ``metrics.csv``.
``curves``
    ``--history model=history.csv ...``: validation PSNR per epoch of every model, and
    the training loss on a log scale beside it.
``mask``
    ``--mask mask.npy``: the mask and its column profile (sampled fraction per column).
``compression``
    ``--table compression.csv``: the compression curve, one panel per (task, dataset,
    acceleration): test PSNR against parameters (log axis), one curve for the plain
    students, one for the distilled students, the teacher as a star.
``methods``
    ``--table methods.csv``: the share of the standard teacher-student gap each method
    closes, one panel per (task, dataset, acceleration), a bar per method coloured by the
    teacher it learns from; a bar whose Holm-corrected p is below 0.05 is marked.

Figures are drawn with matplotlib's Agg backend (set when a figure is first drawn, not on
import) and written atomically; the format follows the suffix of ``--out`` (PNG default).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from kdmri.errors import KdmriError
from kdmri.io import atomic_path, parse_named

DPI = 120
ERROR_PERCENTILE = 99.0
FORMATS = {"png", "pdf", "svg"}


# ---------------------------------------------------------------------- helpers
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: str | Path) -> None:
    """Save ``fig`` atomically to ``out`` (format from the suffix, PNG if none) and close it."""
    plt = _pyplot()
    out = Path(out)
    fmt = out.suffix.lower().lstrip(".") or "png"
    if fmt not in FORMATS:
        plt.close(fig)
        raise KdmriError(f"{out}: unsupported figure format {fmt!r}; expected {sorted(FORMATS)}")
    try:
        with atomic_path(out, suffix=f".{fmt}") as tmp:
            fig.savefig(tmp, format=fmt, dpi=DPI)
    finally:
        plt.close(fig)


# ---------------------------------------------------------------------- panel
def _volume_max(target: np.ndarray, volume: np.ndarray) -> np.ndarray:
    """Per slice: the maximum of its volume's target (fastMRI's data range)."""
    out = np.empty(len(volume), dtype=np.float64)
    for v in np.unique(volume):
        rows = volume == v
        out[rows] = target[rows].max()
    return out


def median_slice(target: np.ndarray, output: np.ndarray, volume: np.ndarray) -> int:
    """Index of the slice with the median PSNR of ``output`` (lower median, stable ties)."""
    from kdmri.metrics import psnr_slices

    ranges = _volume_max(target, volume)
    values = np.array([
        psnr_slices(target[i : i + 1], output[i : i + 1], ranges[i])[0]
        for i in range(len(target))
    ])
    order = np.argsort(values, kind="stable")
    return int(order[(len(order) - 1) // 2])


def read_panel_data(inputs: str | Path, preds: dict[str, Path]) -> dict:
    """Targets and each model's outputs, checked to cover the same slices in order
    (magnitudes where they are complex images)."""
    from kdmri.data.store import read_store
    from kdmri.metrics import magnitude

    truth = read_store(inputs, ["target", "volume", "slice"])
    truth["target"] = magnitude(truth["target"])
    outputs = {}
    for name, path in preds.items():
        pred = read_store(path, ["output", "volume", "slice"])
        if pred["output"].shape != truth["target"].shape or not (
            np.array_equal(pred["volume"], truth["volume"])
            and np.array_equal(pred["slice"], truth["slice"])
        ):
            raise KdmriError(
                f"{path}: predictions of {name!r} {pred['output'].shape} do not cover the "
                f"slices of {inputs} {truth['target'].shape} in the same order"
            )
        outputs[name] = magnitude(pred["output"])
    return {"truth": truth, "outputs": outputs}


def panel_figure(inputs: str | Path, preds: dict[str, Path], out: str | Path,
                 title: str = "") -> dict:
    """Draw the reconstruction panel; return the chosen slice and per-model PSNR/SSIM."""
    from kdmri.metrics import psnr, ssim

    if not preds:
        raise KdmriError("--pred: give at least one model as NAME=PATH")
    data = read_panel_data(inputs, preds)
    truth, outputs = data["truth"], data["outputs"]
    if len(truth["target"]) == 0:
        raise KdmriError(f"{inputs}: the store has no slices")
    chooser = "kd" if "kd" in outputs else list(outputs)[-1]
    index = median_slice(truth["target"], outputs[chooser], truth["volume"])
    data_range = float(_volume_max(truth["target"], truth["volume"])[index])
    target = truth["target"][index].astype(np.float64)
    images = {name: out_[index].astype(np.float64) for name, out_ in outputs.items()}
    errors = {name: np.abs(img - target) for name, img in images.items()}
    scores = {
        name: (psnr(target[None], img[None], data_range), ssim(target[None], img[None], data_range))
        for name, img in images.items()
    }
    vmax_img = float(target.max()) or 1.0
    vmax_err = float(np.percentile(np.concatenate([e.ravel() for e in errors.values()]),
                                   ERROR_PERCENTILE)) or 1e-12

    plt = _pyplot()
    n = len(images) + 1
    fig, axes = plt.subplots(2, n, figsize=(2.3 * n, 5.0), squeeze=False,
                             layout="constrained")
    axes[0, 0].imshow(target, cmap="gray", vmin=0, vmax=vmax_img)
    axes[0, 0].set_title("target", fontsize=9)
    axes[1, 0].set_visible(False)
    err_im = None
    for col, name in enumerate(images, start=1):
        p, s = scores[name]
        axes[0, col].imshow(images[name], cmap="gray", vmin=0, vmax=vmax_img)
        axes[0, col].set_title(f"{name}\n{p:.2f} dB / {s:.4f}", fontsize=9)
        err_im = axes[1, col].imshow(errors[name], cmap="inferno", vmin=0, vmax=vmax_err)
        axes[1, col].set_title(f"|{name} - target|", fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(err_im, ax=axes[1, 1:].tolist(), shrink=0.9, label="absolute error")
    names = truth["volume_names"]
    v = int(truth["volume"][index])
    where = f"{names[v] if len(names) > v else v}, slice {int(truth['slice'][index])}"
    fig.suptitle(f"{title} ({where})" if title else where, fontsize=10)
    _save(fig, out)
    return {"index": index, "volume": v, "slice": int(truth["slice"][index]),
            "chosen_by": chooser, "scores": scores}


# ---------------------------------------------------------------------- curves
def read_history(path: str | Path):
    import pandas as pd

    path = Path(path)
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise KdmriError(f"{path}: not a readable CSV file ({exc})") from None
    missing = [c for c in ("epoch", "train_loss") if c not in frame.columns]
    if missing:
        raise KdmriError(
            f"{path}: history is missing columns {missing} (found {list(frame.columns)})"
        )
    return frame


def curves_figure(histories: dict[str, Path], out: str | Path, title: str = "") -> None:
    """Validation PSNR per epoch (left) and training loss, log scale (right), per model."""
    if not histories:
        raise KdmriError("--history: give at least one model as NAME=PATH")
    frames = {name: read_history(path) for name, path in histories.items()}
    plt = _pyplot()
    fig, (ax_psnr, ax_loss) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    for name, frame in frames.items():
        if "val_psnr" in frame.columns:
            val = frame[["epoch", "val_psnr"]].dropna()
            if len(val):
                ax_psnr.plot(val["epoch"], val["val_psnr"], marker="o", markersize=3, label=name)
        loss = frame[["epoch", "train_loss"]].dropna()
        loss = loss[loss["train_loss"] > 0]
        ax_loss.plot(loss["epoch"], loss["train_loss"], label=name)
    ax_psnr.set(xlabel="epoch", ylabel="validation PSNR (dB)", title="validation PSNR")
    ax_loss.set_yscale("log")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="training loss")
    for ax in (ax_psnr, ax_loss):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    _save(fig, out)


# ---------------------------------------------------------------------- mask
def mask_figure(mask_path: str | Path, out: str | Path, title: str = "") -> None:
    """The mask (sampled = white) and the sampled fraction of each column."""
    from kdmri.masks import effective_acceleration, load_mask

    mask = load_mask(mask_path)
    plt = _pyplot()
    fig, (ax_img, ax_prof) = plt.subplots(
        2, 1, figsize=(4.5, 6), height_ratios=[3, 1], layout="constrained"
    )
    ax_img.imshow(mask, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax_img.set(xticks=[], yticks=[],
               title=f"sampled {mask.mean():.3f} (acceleration {effective_acceleration(mask):.2f})")
    columns = np.arange(mask.shape[1])
    ax_prof.fill_between(columns, mask.mean(axis=0), step="mid", alpha=0.6)
    ax_prof.step(columns, mask.mean(axis=0), where="mid", linewidth=0.8)
    ax_prof.set(xlim=(-0.5, mask.shape[1] - 0.5), ylim=(0, 1.05), xlabel="column (phase encode)",
                ylabel="sampled fraction")
    if title:
        fig.suptitle(title)
    _save(fig, out)


# ---------------------------------------------------------------------- compression
def _comparison_cells(table_path: str | Path, columns: list[str], what: str, empty: str):
    """The rows of a comparison table of ``kdmri tables`` per (task, dataset, acceleration),
    with one-line errors for a missing file, missing columns and no rows."""
    import pandas as pd

    from kdmri.stats import GROUP

    table_path = Path(table_path)
    if not table_path.is_file():
        raise KdmriError(f"{table_path}: {what} table not found")
    table = pd.read_csv(table_path)
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise KdmriError(f"{table_path}: missing columns {missing}")
    if not len(table):
        raise KdmriError(f"{table_path}: no rows ({empty})")
    return table, list(table.groupby(GROUP, sort=False))


def compression_figure(table_path: str | Path, out: str | Path, title: str = "") -> None:
    """PSNR against parameters (log axis) of every compression student, plain and
    distilled, with the teacher as a point; one panel per (task, dataset, acceleration)."""
    from kdmri.comparisons import COMPRESSION_COLUMNS

    _, cells = _comparison_cells(table_path, COMPRESSION_COLUMNS, "compression",
                                 "no student has a plain and a distilled model")
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(cells), figsize=(5.2 * len(cells), 4.2), squeeze=False,
                             layout="constrained")
    for ax, ((task, dataset, acc), cell) in zip(axes[0], cells, strict=True):
        cell = cell.sort_values("params")
        method = cell["method"].iloc[0]
        ax.plot(cell["params"], cell["student_psnr"], "o-", label="student (plain)")
        ax.plot(cell["params"], cell["kd_psnr"], "s-", label=f"student ({method})")
        for _, row in cell.iterrows():
            ax.annotate(row["student"], (row["params"], row["student_psnr"]), fontsize=7,
                        textcoords="offset points", xytext=(0, -11), ha="center")
        teacher = cell[["teacher_params", "teacher_psnr"]].dropna()
        if len(teacher):
            ax.plot(teacher["teacher_params"].iloc[:1], teacher["teacher_psnr"].iloc[:1], "*",
                    markersize=14, color="black", label="teacher")
        ax.set_xscale("log")
        ax.set(xlabel="parameters", ylabel="test PSNR (dB)", title=f"{task} {dataset} {acc:g}x")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title)
    _save(fig, out)


# ---------------------------------------------------------------------- methods
def methods_figure(table_path: str | Path, out: str | Path, title: str = "") -> None:
    """Gap closed (%) per method and teacher, with its 95 % bootstrap interval, one panel
    per cell (``*``: p_Holm < 0.05)."""
    from kdmri.comparisons import METHOD_COLUMNS

    table, cells = _comparison_cells(table_path, METHOD_COLUMNS, "methods",
                                     "no cell has a student and a method")
    teachers = list(dict.fromkeys(table["teacher"]))
    colours = {t: f"C{i}" for i, t in enumerate(teachers)}
    plt = _pyplot()
    height = 0.9 + 0.32 * max(len(cell) for _, cell in cells)
    fig, axes = plt.subplots(1, len(cells), figsize=(4.6 * len(cells), height), squeeze=False,
                             layout="constrained", sharey=True)
    methods = list(dict.fromkeys(table["method"]))
    for ax, ((task, dataset, acc), cell) in zip(axes[0], cells, strict=True):
        cell = cell.set_index("method")
        for i, method in enumerate(methods):
            if method not in cell.index:
                continue
            row = cell.loc[method]
            gap = 100 * row["gap_closed"]
            if not np.isfinite(gap):  # the teacher is not above the student: no gap
                ax.annotate("no gap", (0, i), xytext=(3, -4), textcoords="offset points",
                            fontsize="small")
                continue
            low, high = 100 * row["gap_ci_low"], 100 * row["gap_ci_high"]
            interval = ([[max(0.0, gap - low)], [max(0.0, high - gap)]]
                        if np.isfinite([gap, low, high]).all() else None)
            ax.barh(i, gap, color=colours[row["teacher"]], xerr=interval, capsize=2,
                    error_kw={"linewidth": 0.8})
            if row["p_holm"] < 0.05:
                ax.annotate("*", (gap, i), xytext=(3, -4), textcoords="offset points")
        ax.axvline(0, color="black", linewidth=0.8)
        ax.axvline(100, color="grey", linewidth=0.8, linestyle="--")
        ax.set(title=f"{task} {dataset} {acc:g}x", xlabel="gap closed (%)")
        ax.grid(alpha=0.3, axis="x")
    axes[0][0].set_yticks(range(len(methods)), methods)
    axes[0][0].invert_yaxis()
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[t]) for t in teachers]
    axes[0][-1].legend(handles, [f"teacher: {t}" for t in teachers], fontsize=8,
                       loc="lower right")
    if title:
        fig.suptitle(title)
    _save(fig, out)


# ---------------------------------------------------------------------- sweeps
def sweep_figure(table_path: str | Path, out: str | Path, title: str = "") -> None:
    """Validation PSNR (mean over seeds, with the standard deviation as a bar) of each
    setting of each sweep (``sweep.csv`` of :mod:`kdmri.sweeps`): one row of panels per
    sweep, one panel per cell (task, dataset, acceleration) on its own PSNR axis, one curve
    per model; a sweep of one numeric key on a numeric axis, others by setting; the chosen
    candidate circled."""
    from kdmri.sweeps import COLUMNS, OWN

    table, _ = _comparison_cells(table_path, COLUMNS, "sweep", "no candidate")
    table = table[table["setting"] != OWN]
    sweeps = list(dict.fromkeys(table["sweep"]))
    if not sweeps:
        raise KdmriError(f"{table_path}: no sweep setting")
    cell = ["task", "dataset", "acceleration"]
    width = max(table[table["sweep"] == sweep][cell].drop_duplicates().shape[0]
                for sweep in sweeps)
    plt = _pyplot()
    fig, axes = plt.subplots(len(sweeps), width, figsize=(4.6 * width, 3.8 * len(sweeps)),
                             squeeze=False, layout="constrained")
    for row_axes, sweep in zip(axes, sweeps, strict=True):
        rows = table[table["sweep"] == sweep]
        labels = list(dict.fromkeys(rows["setting"].astype(str)))
        numeric = all(_is_number(text) for text in labels)
        position = {text: (float(text) if numeric else i) for i, text in enumerate(labels)}
        cells = list(rows.groupby(cell, sort=False))
        for ax in row_axes[len(cells):]:
            ax.set_visible(False)
        for ax, ((task, dataset, acc), panel) in zip(row_axes, cells, strict=False):
            for model, curve in panel.groupby("model", sort=False):
                x = [position[str(s)] for s in curve["setting"]]
                line = ax.errorbar(x, curve["val_psnr_mean"],
                                   yerr=curve["val_psnr_std"].fillna(0), marker="o",
                                   capsize=2, label=model)
                chosen = curve["chosen"].to_numpy(dtype=bool)
                ax.plot(np.asarray(x)[chosen], curve["val_psnr_mean"].to_numpy()[chosen], "o",
                        markersize=12, markerfacecolor="none", color=line[0].get_color())
            if not numeric:
                ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
            ax.set(xlabel=", ".join(dict.fromkeys(rows["keys"].astype(str))),
                   ylabel="validation PSNR (dB)",
                   title=f"sweep {sweep}: {task} {dataset} {acc:g}x")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    _save(fig, out)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------- CLI
def cmd_figures(args) -> int:
    def need(option: str, value) -> None:
        if not value:
            raise KdmriError(f"figures --kind {args.kind}: {option} is required")

    if args.kind == "panel":
        need("--inputs", args.inputs)
        need("--pred", args.pred)
        info = panel_figure(args.inputs, parse_named(args.pred, "--pred"), args.out, args.title)
        print(f"panel: slice {info['slice']} of volume {info['volume']} "
              f"(median {info['chosen_by']} PSNR) -> {args.out}", file=sys.stderr)
    elif args.kind == "curves":
        need("--history", args.history)
        curves_figure(parse_named(args.history, "--history"), args.out, args.title)
        print(f"curves -> {args.out}", file=sys.stderr)
    elif args.kind in ("compression", "methods", "sweep"):
        need("--table", args.table)
        draw = {"compression": compression_figure, "methods": methods_figure,
                "sweep": sweep_figure}[args.kind]
        draw(args.table, args.out, args.title)
        print(f"{args.kind} -> {args.out}", file=sys.stderr)
    else:
        need("--mask", args.mask)
        mask_figure(args.mask, args.out, args.title)
        print(f"mask -> {args.out}", file=sys.stderr)
    return 0

"""Result tables from the per-slice ``metrics.csv`` files of every model and seed.

``kdmri tables --metrics F1 F2 ... --out-dir DIR`` writes into ``DIR``:

``summary.csv``
    One row per (task, dataset, acceleration, model): mean and standard deviation of
    PSNR, SSIM, NMSE and HFEN over all test slices pooled over seeds (slice-pooled), the
    number of distinct test slices, the parameter count, the FLOPs of one forward pass on
    one test slice (``kdmri.models.flops_per_slice``; empty where the metrics files
    predate it), the latency (mean over seeds) and the number of seeds; then fastMRI's
    volume-wise PSNR, SSIM and NMSE (``volume_*_mean`` / ``_std``: per test volume with
    its own maximum as data range, then the mean over volumes; the convention of
    published tables) and the number of test volumes (:func:`kdmri.stats.summarise`).
``summary.md``, ``summary.tex``
    The paper's table: one block per task and dataset, models as rows, accelerations as
    column groups, cells ``PSNR mean ± std / SSIM mean ± std`` of the slice-pooled
    figures, as its note says; per column the best value is bold and the second best
    underlined.
``kd_gain.csv``
    Per (task, dataset, acceleration) with a teacher, a student and a kd model: the KD
    gain over the student, the share of the teacher-student gap it closes, and a paired
    two-sided Wilcoxon signed-rank test of per-slice PSNR (kd vs student).
``ablation.csv``
    Only when kd_imitation or kd_attention results are present: mean PSNR and SSIM of
    student, kd_imitation, kd_attention and kd, and each one's gain over the student.
``compression.csv`` / ``.md``, ``methods.csv`` / ``.md`` / ``.tex``
    The comparisons of :mod:`kdmri.comparisons`: the compression curve, where a
    compression study's models are present, and the table of distillation methods, where
    ``--methods`` describes two or more distilled models (with ``--histories``, the
    ``history.csv`` of their hint stages, the validation PSNR at the end of each).

The pure functions :func:`read_metrics`, :func:`kdmri.stats.summarise`, :func:`kd_gain`,
:func:`ablation`, :func:`to_markdown` and :func:`to_latex` do the work, on the statistics
of :mod:`kdmri.stats`; the CLI only reads and writes files.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from kdmri.errors import KdmriError
from kdmri.io import atomic_path, write_text
from kdmri.notation import format_acceleration, format_params, latex_escape
from kdmri.stats import (
    GAP_ALPHA,
    GROUP,
    SUMMARY_COLUMNS,
    check_metrics,
    gap_closed,
    paired,
    seed_std,
    sort_rows,
    summarise,
    wilcoxon_p,
)

KD_GAIN_COLUMNS = [
    "task", "dataset", "acceleration",
    "kd_minus_student_psnr", "kd_minus_student_ssim", "teacher_minus_student_psnr",
    "gap_closed", "wilcoxon_p", "teacher_minus_student_p",
    "n_seeds", "gap_closed_seed_mean", "gap_closed_seed_std", "kd_minus_student_psnr_seed_std",
]
TRIO = ("teacher", "student", "kd")
ABLATION_MODELS = ["student", "kd_imitation", "kd_attention", "kd"]
#: What summary.md, .tex and .html show, and where the volume-wise figures are.
POOLING_NOTE = (
    "Slice-pooled: mean ± std over all test slices pooled over seeds{seeds}, not the "
    "volume-wise means of fastMRI's evaluation that published tables report (summary.csv: "
    "volume_psnr_mean, volume_ssim_mean, volume_nmse_mean)."
)
FAIRNESS_RULE = (
    "Fairness rule: kd: attention stage, then the imitation stage with as many steps as "
    "the baseline student."
)


# ---------------------------------------------------------------------- reading
def read_metrics(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Read and concatenate metrics files, checking each one's columns."""
    frames = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise KdmriError(f"{path}: metrics file not found")
        try:
            frame = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise KdmriError(f"{path}: not a readable CSV file ({exc})") from None
        frames.append(check_metrics(frame, str(path)))
    if not frames:
        raise KdmriError("--metrics: no metrics files given")
    frame = pd.concat(frames, ignore_index=True)
    _check_unique(frame)
    return frame


def _check_unique(frame: pd.DataFrame) -> None:
    """Each slice of each model and seed must appear once (a file given twice would not)."""
    keys = [*GROUP, "model", "seed", "volume", "slice"]
    dup = frame.duplicated(keys, keep=False)
    if dup.any():
        first = frame.loc[dup, keys].iloc[0].to_dict()
        raise KdmriError(
            f"metrics: {int(dup.sum())} duplicate rows for the same model, seed and slice "
            f"(first: {first}); was a metrics file given twice?"
        )


# ---------------------------------------------------------------------- KD gain
def kd_gain(frame: pd.DataFrame) -> pd.DataFrame:
    """How much KD helps, per (task, dataset, acceleration) having teacher, student and kd.

    On PSNR/SSIM means pooled over slices and seeds: ``kd_minus_student_*`` and
    ``teacher_minus_student_psnr``; ``wilcoxon_p``: two-sided Wilcoxon signed-rank test
    of kd vs student per-slice PSNR, pairs joined on (seed, volume, slice); NaN when
    every pair is equal; ``teacher_minus_student_p`` the same test of teacher vs student.
    ``gap_closed = (KD - S) / (T - S)`` where there is a gap to close, the teacher above
    the student with ``teacher_minus_student_p`` below :data:`kdmri.stats.GAP_ALPHA`;
    NaN elsewhere (a share of a gap that is noise, or negative, would read as a result:
    on data the models were not trained on the teacher can fall to the student or below).
    Per seed the same gap is computed from that seed's means; ``gap_closed_seed_mean``/
    ``_std`` (over the seeds whose teacher is above their student; NaN, like
    ``gap_closed``, where the pooled gap is not real) and ``kd_minus_student_psnr_seed_std``
    summarise them (std with ``ddof=1``, or 0 for one seed). Only seeds that all three
    models have are used.
    """
    check_metrics(frame)
    rows = []
    for key, group in frame.groupby(GROUP, sort=False, dropna=False):
        models = set(group["model"])
        if not set(TRIO) <= models:
            continue
        seed_sets = (set(group.loc[group["model"] == m, "seed"]) for m in TRIO)
        seeds = sorted(set.intersection(*seed_sets))
        if not seeds:
            continue
        group = group[group["seed"].isin(seeds)]
        where = ", ".join(f"{k}={v}" for k, v in zip(GROUP, key, strict=True))
        pairs = paired(group, where)
        gap_pairs = paired(group, where, kd="teacher")
        means = group.groupby("model")[["psnr", "ssim"]].mean()
        by_seed = group.groupby(["seed", "model"])["psnr"].mean().unstack("model")
        seed_gain = (by_seed["kd"] - by_seed["student"]).to_numpy()
        seed_gap = np.array(
            [gap_closed(r["kd"], r["student"], r["teacher"]) for _, r in by_seed.iterrows()]
        )
        t, s, k = (means.loc[m, "psnr"] for m in TRIO)
        teacher_p = wilcoxon_p(gap_pairs["psnr_kd"].to_numpy(float),
                               gap_pairs["psnr_student"].to_numpy(float))
        real_gap = t > s and teacher_p < GAP_ALPHA
        finite_gap = seed_gap[np.isfinite(seed_gap)] if real_gap else np.array([])
        rows.append({
            **dict(zip(GROUP, key, strict=True)),
            "kd_minus_student_psnr": float(k - s),
            "kd_minus_student_ssim": float(means.loc["kd", "ssim"] - means.loc["student", "ssim"]),
            "teacher_minus_student_psnr": float(t - s),
            "gap_closed": gap_closed(k, s, t) if real_gap else math.nan,
            "wilcoxon_p": wilcoxon_p(pairs["psnr_kd"].to_numpy(float),
                                     pairs["psnr_student"].to_numpy(float)),
            "teacher_minus_student_p": teacher_p,
            "n_seeds": len(seeds),
            "gap_closed_seed_mean": float(finite_gap.mean()) if finite_gap.size else math.nan,
            "gap_closed_seed_std": seed_std(finite_gap) if finite_gap.size else math.nan,
            "kd_minus_student_psnr_seed_std": seed_std(seed_gain),
        })
    result = pd.DataFrame(rows, columns=KD_GAIN_COLUMNS)
    return sort_rows(result, GROUP) if len(result) else result


# ---------------------------------------------------------------------- ablation
def has_ablation(frame: pd.DataFrame) -> bool:
    return bool(frame["model"].isin(["kd_imitation", "kd_attention"]).any())


def ablation(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean PSNR/SSIM of student, kd_imitation, kd_attention and kd and gains over student.

    One row per (task, dataset, acceleration) that has a student and at least one of the
    other three; a model that is absent there leaves NaN in its columns. Means are pooled
    over slices and seeds as in :func:`kdmri.stats.summarise`.
    """
    check_metrics(frame)
    columns = list(GROUP)
    for model in ABLATION_MODELS:
        columns += [f"{model}_psnr_mean", f"{model}_ssim_mean"]
    for model in ABLATION_MODELS[1:]:
        columns += [f"{model}_psnr_gain", f"{model}_ssim_gain"]
    rows = []
    for key, group in frame.groupby(GROUP, sort=False, dropna=False):
        means = group.groupby("model")[["psnr", "ssim"]].mean()
        present = [m for m in ABLATION_MODELS[1:] if m in means.index]
        if "student" not in means.index or not present:
            continue
        row = dict(zip(GROUP, key, strict=True))
        for model in ABLATION_MODELS:
            for metric in ("psnr", "ssim"):
                value = means.loc[model, metric] if model in means.index else np.nan
                row[f"{model}_{metric}_mean"] = float(value)
                if model != "student":
                    row[f"{model}_{metric}_gain"] = float(value - means.loc["student", metric])
        rows.append(row)
    result = pd.DataFrame(rows, columns=columns)
    return sort_rows(result, GROUP) if len(result) else result


# ---------------------------------------------------------------------- paper table
def _ranks(values: pd.Series, decimals: int) -> pd.Series:
    """1 for the best (highest) shown value, 2 for the next; ties share a rank."""
    return values.round(decimals).rank(method="min", ascending=False)


def _cells(summary: pd.DataFrame) -> list[tuple]:
    """Per (task, dataset) block: accelerations, models, cells and parameter texts.

    A cell is ``((psnr_mean, psnr_std, rank), (ssim_mean, ssim_std, rank))`` as text plus
    the rank of the shown mean among the block's models at that acceleration.
    """
    # the tables show none of these
    optional = ("flops", "n_seeds", *(c for c in SUMMARY_COLUMNS if c.startswith("volume_")),
                "n_volumes")
    missing = [c for c in SUMMARY_COLUMNS if c not in summary.columns and c not in optional]
    if missing:
        raise KdmriError(f"summary: missing columns {missing}")
    summary = sort_rows(summary, [*GROUP, "model"])
    blocks = []
    for key, block in summary.groupby(["task", "dataset"], sort=False):
        accelerations = list(dict.fromkeys(block["acceleration"]))
        models = list(dict.fromkeys(block["model"]))
        cells: dict[tuple, tuple] = {}
        for acc in accelerations:
            part = block[block["acceleration"] == acc].set_index("model")
            psnr_rank = _ranks(part["psnr_mean"], 2)
            ssim_rank = _ranks(part["ssim_mean"], 4)
            for model, row in part.iterrows():
                cells[model, acc] = (
                    (f"{row['psnr_mean']:.2f}", f"{row['psnr_std']:.2f}", psnr_rank[model]),
                    (f"{row['ssim_mean']:.4f}", f"{row['ssim_std']:.4f}", ssim_rank[model]),
                )
        params = {
            m: " / ".join(dict.fromkeys(
                format_params(p) for p in block.loc[block["model"] == m, "params"]))
            for m in models
        }
        blocks.append((key, accelerations, models, cells, params))
    return blocks


def _mark(text: str, rank, bold, underline) -> str:
    if rank == 1:
        return bold(text)
    if rank == 2:
        return underline(text)
    return text


def _row(cells: dict, model, accs, plus_minus: str, bold, underline, missing: str) -> list[str]:
    """One model's cells: "PSNR ± std / SSIM ± std" per acceleration, best bold, second
    underlined, in the notation of the output format."""
    parts = []
    for acc in accs:
        cell = cells.get((model, acc))
        parts.append(missing if cell is None else " / ".join(
            _mark(f"{mean} {plus_minus} {std}", rank, bold, underline) for mean, std, rank in cell
        ))
    return parts


def to_markdown(summary: pd.DataFrame) -> str:
    """The paper's table in Markdown (best bold, second best underlined per column)."""
    lines = []
    n_seeds = sorted(set(summary["n_seeds"].dropna().astype(int))) if "n_seeds" in summary else []
    for (task, dataset), accs, models, cells, params in _cells(summary):
        lines.append(f"### {task} / {dataset}")
        lines.append("")
        lines.append("| Model | Params | " + " | ".join(f"{format_acceleration(a)}× PSNR / SSIM"
                                                       for a in accs) + " |")
        lines.append("|---|---:|" + "---|" * len(accs))
        for model in models:
            parts = _row(cells, model, accs, "±", lambda t: f"**{t}**", lambda t: f"<u>{t}</u>",
                         "-")
            lines.append(f"| {model} | {params[model]} | " + " | ".join(parts) + " |")
        lines.append("")
    seeds = "/".join(str(n) for n in n_seeds) or "?"
    lines.append(POOLING_NOTE.format(seeds=f" (n_seeds = {seeds})")
                 + " Per column the best value is **bold**, the second best <u>underlined</u>.")
    lines.append("")
    lines.append(FAIRNESS_RULE)
    return "\n".join(lines) + "\n"


def to_html(summary: pd.DataFrame, gain: pd.DataFrame) -> str:
    """A self-contained HTML page: the paper's table per task and dataset (best bold,
    second underlined) and the KD-gain table; the HTML report shows it inline."""
    import html

    parts = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'><title>kdmri summary</title>",
             "<style>body{font-family:sans-serif} table{border-collapse:collapse;margin:1em 0}"
             " td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}"
             " td:first-child{text-align:left}</style></head><body>",
             "<h2>Summary: PSNR (dB) / SSIM, mean &plusmn; std over the test slices "
             "(slice-pooled)</h2>", f"<p>{html.escape(POOLING_NOTE.format(seeds=''))}</p>"]
    for (task, dataset), accs, models, cells, params in _cells(summary):
        parts.append(f"<h3>{html.escape(str(task))} / {html.escape(str(dataset))}</h3>")
        parts.append("<table class='summary'><tr><th>Model</th><th>Params</th>"
                     + "".join(f"<th>{format_acceleration(a)}&times; PSNR / SSIM</th>"
                               for a in accs) + "</tr>")
        for model in models:
            row = [html.escape(str(model)), params[model]] + _row(
                cells, model, accs, "&plusmn;", lambda t: f"<b>{t}</b>", lambda t: f"<u>{t}</u>",
                "-")
            parts.append("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>")
        parts.append("</table>")
    parts.append(f"<p>{html.escape(FAIRNESS_RULE)}</p>")
    if len(gain):
        parts.append("<h2>What distillation buys (kd_gain.csv)</h2>")
        parts.append(gain.to_html(index=False, float_format=lambda v: f"{v:.4g}",
                                  classes="kd-gain", border=0))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def to_latex(summary: pd.DataFrame) -> str:
    """The paper's table as LaTeX ``tabular`` fragments, one per task and dataset.

    Uses only standard LaTeX (``\\hline``, ``\\textbf``, ``\\underline``, ``$\\pm$``), so it
    compiles with ``\\input`` inside any ``table`` environment without extra packages.
    """
    out = []
    for (task, dataset), accs, models, cells, params in _cells(summary):
        ncol = 2 + len(accs)
        lines = [
            r"\begin{tabular}{lr" + "c" * len(accs) + "}",
            r"\hline",
            rf"\multicolumn{{{ncol}}}{{l}}{{\textit{{{latex_escape(task)} / "
            rf"{latex_escape(dataset)}}}}} \\",
            r"\hline",
            "Model & Params & " + " & ".join(
                rf"${latex_escape(format_acceleration(a))}\times$" for a in accs) + r" \\",
            " & & " + " & ".join("PSNR / SSIM" for _ in accs) + r" \\",
            r"\hline",
        ]
        for model in models:
            parts = _row(cells, model, accs, r"$\pm$", lambda t: rf"\textbf{{{t}}}",
                         lambda t: rf"\underline{{{t}}}", "--")
            lines.append(f"{latex_escape(model)} & {latex_escape(params[model])} & "
                         + " & ".join(parts) + r" \\")
        lines += [r"\hline", r"\end{tabular}"]
        out.append("\n".join(lines))
    return ("% kdmri tables: slice-pooled, mean $\\pm$ std over test slices pooled over seeds "
            "(the volume-wise means: summary.csv)\n") + (
        "\n\\medskip\n\n".join(out) + "\n"
    )


# ---------------------------------------------------------------------- CLI
def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path, suffix=".csv") as tmp:
        frame.to_csv(tmp, index=False)


def _write_optional(tables: dict, out_dir: Path, name: str, table: pd.DataFrame | None,
                    texts: dict) -> None:
    """Write ``<name>.csv`` and the text forms ``texts`` (suffix -> function of the table)
    where ``table`` is given; else remove them, as a stale table from an earlier run would
    no longer describe these inputs."""
    files = [f"{name}.csv", *(f"{name}{suffix}" for suffix in texts)]
    if table is None:
        for file in files:
            (out_dir / file).unlink(missing_ok=True)
        return
    tables[name] = table
    _write_csv(table, out_dir / files[0])
    for suffix, render in texts.items():
        write_text(out_dir / f"{name}{suffix}", render(table))


def read_histories(histories: dict[str, str | Path]) -> pd.DataFrame:
    """The final validation PSNR of trained models (:func:`kdmri.comparisons.
    final_val_psnr` of each ``history.csv``), keyed ``task/dataset/acceleration/model/seed``
    (``recon/demo/4/hint_fitnets/0``), as a frame of :data:`kdmri.comparisons.
    HISTORY_COLUMNS`."""
    from kdmri import comparisons

    rows = []
    for key, path in histories.items():
        parts = key.split("/")
        if len(parts) != 5:
            raise KdmriError(f"--histories: {key!r}: expected task/dataset/acceleration/model/"
                             "seed=path")
        task, dataset, acc, model, seed = parts
        rows.append({"task": task, "dataset": dataset, "acceleration": float(acc),
                     "model": model, "seed": int(seed),
                     "val_psnr": comparisons.final_val_psnr(pd.read_csv(path))})
    return pd.DataFrame(rows, columns=comparisons.HISTORY_COLUMNS)


def _choose(frame: pd.DataFrame, sweep: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The metrics with each swept model's rows those of its candidate chosen on validation
    (:func:`kdmri.sweeps.apply_choice`), and the setting of each row of the summary."""
    from kdmri import sweeps

    path = Path(sweep)
    if not path.is_file():
        raise KdmriError(f"{path}: sweep table not found")
    table = pd.read_csv(path, keep_default_na=False, na_values=[""],
                        dtype={"setting": str, "candidate": str, "model": str})
    missing = [c for c in sweeps.COLUMNS if c not in table.columns]
    if missing:
        raise KdmriError(f"{path}: missing columns {missing}")
    table["chosen"] = table["chosen"].astype(str).str.lower() == "true"
    frame = sweeps.apply_choice(frame, table)
    settings = frame[[*GROUP, "model", "setting"]].drop_duplicates([*GROUP, "model"])
    return frame.drop(columns="setting"), settings


def _sweep_note(summary: pd.DataFrame) -> str:
    """The line under summary.md naming each swept model's chosen setting (none without
    sweeps)."""
    if "setting" not in summary:
        return ""
    picked = summary[summary["setting"] != ""]
    if picked.empty:
        return ""
    cells = "; ".join(f"{r.model} {r.task}/{r.dataset}/{format_acceleration(r.acceleration)}x: "
                      f"{r.setting}" for r in picked.itertuples())
    return (f"\nSwept models show their candidate chosen on validation PSNR (sweep.md): "
            f"{cells}.\n")


def write_tables(metrics: Sequence[str | Path], out_dir: str | Path,
                 methods: dict | None = None,
                 histories: dict[str, str | Path] | None = None,
                 sweep: str | Path | None = None) -> dict[str, pd.DataFrame]:
    """Read the metrics files and write every table into ``out_dir``; ``methods`` (model
    -> its teacher and stages, :func:`kdmri.comparisons.methods_table`) adds the table of
    methods where it names two or more distilled models, ``histories`` (key -> a
    ``history.csv``, :func:`read_histories`) the validation PSNR of their hint stages;
    ``sweep`` (a ``sweep.csv`` of :mod:`kdmri.sweeps`) replaces each swept model by its
    chosen candidate (the summary gains ``setting``) and drops the other candidates."""
    from kdmri import comparisons

    out_dir = Path(out_dir)
    frame = read_metrics(metrics)
    chosen = None
    if sweep is not None:
        frame, chosen = _choose(frame, sweep)
    summary = summarise(frame)
    if chosen is not None:
        summary = summary.merge(chosen, on=[*GROUP, "model"], how="left")
        summary["setting"] = summary["setting"].fillna("")
    gain = kd_gain(frame)
    _write_csv(summary, out_dir / "summary.csv")
    write_text(out_dir / "summary.md", to_markdown(summary) + _sweep_note(summary))
    write_text(out_dir / "summary.tex", to_latex(summary))
    _write_csv(gain, out_dir / "kd_gain.csv")
    write_text(out_dir / "summary.html", to_html(summary, gain))
    tables = {"summary": summary, "kd_gain": gain}
    _write_optional(tables, out_dir, "ablation", ablation(frame) if has_ablation(frame)
                    else None, {})
    _write_optional(tables, out_dir, "compression", comparisons.compression(frame)
                    if comparisons.has_compression(frame) else None,
                    {".md": comparisons.compression_markdown})
    finals = read_histories(histories) if histories else None
    _write_optional(tables, out_dir, "methods", comparisons.methods_table(frame, methods, finals)
                    if comparisons.compares_methods(methods) else None,
                    {".md": comparisons.methods_markdown, ".tex": comparisons.methods_latex})
    return tables


def cmd_tables(args) -> int:
    methods = None
    if args.methods:
        import json

        try:
            methods = json.loads(args.methods)
        except json.JSONDecodeError as exc:
            raise KdmriError(f"--methods: not valid JSON ({exc.msg} at {exc.pos})") from None
        if not isinstance(methods, dict) or not all(
                isinstance(models, dict) and all(
                    isinstance(v, dict) and "teacher" in v and "stages" in v
                    for v in models.values()) for models in methods.values()):
            raise KdmriError("--methods: expected {task: {model: {\"teacher\": ..., "
                             "\"stages\": [...]}}}")
    histories = {}
    for entry in args.histories or []:
        key, sep, path = entry.partition("=")
        if not sep:
            raise KdmriError(f"--histories: {entry!r}: expected key=path")
        histories[key] = path
    tables = write_tables(args.metrics, args.out_dir, methods, histories, args.sweep)
    counts = ", ".join(f"{len(table)} {name} rows" for name, table in tables.items())
    print(f"tables: {counts} -> {args.out_dir}", file=sys.stderr, flush=True)
    return 0

"""Result tables from the per-slice ``metrics.csv`` files of every model and seed.

``kdmri tables --metrics F1 F2 ... --out-dir DIR`` writes into ``DIR``:

``summary.csv``
    One row per (task, dataset, acceleration, model): mean and standard deviation of
    PSNR, SSIM, NMSE and HFEN over all test slices pooled over seeds, the number of
    distinct test slices, the parameter count, the FLOPs of one forward pass on one test
    slice (``kdmri.models.flops_per_slice``; empty where the metrics files predate it),
    the latency (mean over seeds) and the number of seeds.
``summary.md``, ``summary.tex``
    The paper's table: one block per task and dataset, models as rows, accelerations as
    column groups, cells ``PSNR mean ± std / SSIM mean ± std``; per column the best value
    is bold and the second best underlined.
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
    ``--methods`` describes two or more distilled models.

The pure functions :func:`read_metrics`, :func:`summarise`, :func:`kd_gain`,
:func:`ablation`, :func:`to_markdown` and :func:`to_latex` do the work; the CLI only reads
and writes files.
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

#: Columns every metrics.csv must have (``flops`` is read where present: files written
#: before it existed have none).
METRICS_COLUMNS = [
    "task", "dataset", "acceleration", "model", "seed", "params", "latency_ms",
    "volume", "slice", "psnr", "ssim", "nmse", "hfen",
]
METRIC_NAMES = ["psnr", "ssim", "nmse", "hfen"]
#: Row order of models in every table; other model names follow alphabetically.
MODEL_ORDER = ["zf", "teacher", "student", "kd", "kd_imitation", "kd_attention"]
GROUP = ["task", "dataset", "acceleration"]
SUMMARY_COLUMNS = [
    "task", "dataset", "acceleration", "model",
    "psnr_mean", "psnr_std", "ssim_mean", "ssim_std",
    "nmse_mean", "nmse_std", "hfen_mean", "hfen_std",
    "n_slices", "params", "flops", "latency_ms", "n_seeds",
]
KD_GAIN_COLUMNS = [
    "task", "dataset", "acceleration",
    "kd_minus_student_psnr", "kd_minus_student_ssim", "teacher_minus_student_psnr",
    "gap_closed", "wilcoxon_p",
    "n_seeds", "gap_closed_seed_mean", "gap_closed_seed_std", "kd_minus_student_psnr_seed_std",
]
TRIO = ("teacher", "student", "kd")
ABLATION_MODELS = ["student", "kd_imitation", "kd_attention", "kd"]
FAIRNESS_RULE = (
    "Fairness rule: kd: attention stage, then the imitation stage with as many steps as "
    "the baseline student."
)


# ---------------------------------------------------------------------- reading
def check_metrics(frame: pd.DataFrame, source: str = "metrics") -> pd.DataFrame:
    """Raise :class:`KdmriError` naming ``source`` if required columns are missing."""
    missing = [c for c in METRICS_COLUMNS if c not in frame.columns]
    if missing:
        raise KdmriError(
            f"{source}: missing columns {missing} (expected {METRICS_COLUMNS}, "
            f"found {list(frame.columns)})"
        )
    return frame


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


# ---------------------------------------------------------------------- ordering
def _sort_key(column: pd.Series) -> pd.Series:
    if column.name == "model":
        names = column.astype(str)
        others = sorted(set(names) - set(MODEL_ORDER))
        order = {name: i for i, name in enumerate([*MODEL_ORDER, *others])}
        return names.map(order)
    if column.name == "acceleration":
        numeric = pd.to_numeric(column, errors="coerce")
        if numeric.notna().all():
            return numeric
    return column.astype(str)


def _sorted(frame: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    return frame.sort_values(list(by), key=_sort_key, kind="stable").reset_index(drop=True)


def _param_value(values: pd.Series, where: str, what: str = "parameter counts"):
    distinct = values.dropna().unique()
    if len(distinct) > 1:
        raise KdmriError(f"metrics: {where} has different {what} {sorted(distinct)}")
    return int(distinct[0]) if len(distinct) else np.nan


# ---------------------------------------------------------------------- summary
def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (task, dataset, acceleration, model): pooled means and stds of every metric.

    Means and standard deviations run over all test slices of all seeds together; the
    standard deviation is the population one (numpy's default, ``ddof=0``).
    ``n_slices`` counts distinct (volume, slice) test slices, ``n_seeds`` distinct seeds;
    ``latency_ms`` is the mean over seeds of each seed's latency.
    """
    check_metrics(frame)
    rows = []
    for key, group in frame.groupby([*GROUP, "model"], sort=False, dropna=False):
        row = dict(zip([*GROUP, "model"], key, strict=True))
        for metric in METRIC_NAMES:
            values = group[metric].to_numpy(dtype=float)
            row[f"{metric}_mean"] = float(np.mean(values))
            row[f"{metric}_std"] = float(np.std(values))
        row["n_slices"] = int(len(group[["volume", "slice"]].drop_duplicates()))
        row["params"] = _param_value(group["params"], f"model {key[3]!r} at {key[:3]}")
        row["flops"] = (_param_value(group["flops"], f"model {key[3]!r} at {key[:3]}",
                                     "FLOP counts") if "flops" in group else np.nan)
        per_seed = group.groupby("seed")["latency_ms"].mean()
        row["latency_ms"] = float(per_seed.mean()) if per_seed.notna().any() else np.nan
        row["n_seeds"] = int(group["seed"].nunique())
        rows.append(row)
    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    summary["params"] = summary["params"].astype("Int64")
    summary["flops"] = summary["flops"].astype("Int64")
    return _sorted(summary, [*GROUP, "model"])


# ---------------------------------------------------------------------- KD gain
def _gap(kd: float, student: float, teacher: float) -> float:
    denominator = teacher - student
    if denominator == 0 or not math.isfinite(denominator):
        return math.nan
    return (kd - student) / denominator


def _seed_std(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _wilcoxon(kd: np.ndarray, student: np.ndarray) -> float:
    """Two-sided paired Wilcoxon p of kd vs student; NaN when no pair differs."""
    from scipy.stats import wilcoxon

    with np.errstate(invalid="ignore"):
        diff = kd - student
    diff = diff[np.isfinite(diff)]  # inf - inf (two perfect slices) carries no information
    if not np.any(diff != 0):
        return math.nan
    return float(wilcoxon(diff, alternative="two-sided").pvalue)


def _paired(group: pd.DataFrame, where: str, kd: str = "kd",
            student: str = "student") -> pd.DataFrame:
    """Rows of models ``kd`` and ``student`` of one group joined on (seed, volume, slice),
    as columns ``psnr_kd``, ``psnr_student``, ``ssim_kd``, ``ssim_student``."""
    keys = ["seed", "volume", "slice"]
    first = group.loc[group["model"] == kd, [*keys, "psnr", "ssim"]]
    second = group.loc[group["model"] == student, [*keys, "psnr", "ssim"]]
    pairs = first.merge(second, on=keys, how="outer", suffixes=("_kd", "_student"),
                        indicator=True, validate="one_to_one")
    unmatched = pairs["_merge"] != "both"
    if unmatched.any():
        example = pairs.loc[unmatched, keys].iloc[0].to_dict()
        raise KdmriError(
            f"metrics: {where}: {kd} and {student} were evaluated on different slices "
            f"({int(unmatched.sum())} unmatched, e.g. {example})"
        )
    return pairs.drop(columns="_merge")


def kd_gain(frame: pd.DataFrame) -> pd.DataFrame:
    """How much KD helps, per (task, dataset, acceleration) having teacher, student and kd.

    On PSNR/SSIM means pooled over slices and seeds: ``kd_minus_student_*`` and
    ``teacher_minus_student_psnr``; ``gap_closed = (KD - S) / (T - S)`` (NaN when T = S).
    ``wilcoxon_p``: two-sided Wilcoxon signed-rank test of kd vs student per-slice PSNR,
    pairs joined on (seed, volume, slice); NaN when every pair is equal. Per seed the same
    gap is computed from that seed's means; ``gap_closed_seed_mean``/``_std`` and
    ``kd_minus_student_psnr_seed_std`` summarise them (std with ``ddof=1``, or 0 for one
    seed). Only seeds that all three models have are used.
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
        pairs = _paired(group, where)
        means = group.groupby("model")[["psnr", "ssim"]].mean()
        by_seed = group.groupby(["seed", "model"])["psnr"].mean().unstack("model")
        seed_gain = (by_seed["kd"] - by_seed["student"]).to_numpy()
        seed_gap = np.array(
            [_gap(r["kd"], r["student"], r["teacher"]) for _, r in by_seed.iterrows()]
        )
        finite_gap = seed_gap[np.isfinite(seed_gap)]
        t, s, k = (means.loc[m, "psnr"] for m in TRIO)
        rows.append({
            **dict(zip(GROUP, key, strict=True)),
            "kd_minus_student_psnr": float(k - s),
            "kd_minus_student_ssim": float(means.loc["kd", "ssim"] - means.loc["student", "ssim"]),
            "teacher_minus_student_psnr": float(t - s),
            "gap_closed": _gap(k, s, t),
            "wilcoxon_p": _wilcoxon(pairs["psnr_kd"].to_numpy(float),
                                    pairs["psnr_student"].to_numpy(float)),
            "n_seeds": len(seeds),
            "gap_closed_seed_mean": float(finite_gap.mean()) if finite_gap.size else math.nan,
            "gap_closed_seed_std": _seed_std(finite_gap) if finite_gap.size else math.nan,
            "kd_minus_student_psnr_seed_std": _seed_std(seed_gain),
        })
    result = pd.DataFrame(rows, columns=KD_GAIN_COLUMNS)
    return _sorted(result, GROUP) if len(result) else result


# ---------------------------------------------------------------------- ablation
def has_ablation(frame: pd.DataFrame) -> bool:
    return bool(frame["model"].isin(["kd_imitation", "kd_attention"]).any())


def ablation(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean PSNR/SSIM of student, kd_imitation, kd_attention and kd and gains over student.

    One row per (task, dataset, acceleration) that has a student and at least one of the
    other three; a model that is absent there leaves NaN in its columns. Means are pooled
    over slices and seeds as in :func:`summarise`.
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
    return _sorted(result, GROUP) if len(result) else result


# ---------------------------------------------------------------------- paper table
def _format_params(value) -> str:
    if value is None or pd.isna(value):
        return "-"
    value = int(value)
    if value >= 1_000_000:
        return f"{value / 1e6:.2f}M"
    if value >= 1_000:
        return f"{value / 1e3:.1f}K"
    return str(value)


def _format_acceleration(value) -> str:
    number = pd.to_numeric(pd.Series([value]), errors="coerce").iloc[0]
    if pd.isna(number):
        return str(value)
    return f"{int(number)}" if float(number).is_integer() else f"{number:g}"


def _ranks(values: pd.Series, decimals: int) -> pd.Series:
    """1 for the best (highest) shown value, 2 for the next; ties share a rank."""
    return values.round(decimals).rank(method="min", ascending=False)


def _cells(summary: pd.DataFrame) -> list[tuple]:
    """Per (task, dataset) block: accelerations, models, cells and parameter texts.

    A cell is ``((psnr_mean, psnr_std, rank), (ssim_mean, ssim_std, rank))`` as text plus
    the rank of the shown mean among the block's models at that acceleration.
    """
    optional = ("flops", "n_seeds")  # the tables show neither
    missing = [c for c in SUMMARY_COLUMNS if c not in summary.columns and c not in optional]
    if missing:
        raise KdmriError(f"summary: missing columns {missing}")
    summary = _sorted(summary, [*GROUP, "model"])
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
                _format_params(p) for p in block.loc[block["model"] == m, "params"]))
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
        lines.append("| Model | Params | " + " | ".join(f"{_format_acceleration(a)}× PSNR / SSIM"
                                                       for a in accs) + " |")
        lines.append("|---|---:|" + "---|" * len(accs))
        for model in models:
            parts = _row(cells, model, accs, "±", lambda t: f"**{t}**", lambda t: f"<u>{t}</u>",
                         "-")
            lines.append(f"| {model} | {params[model]} | " + " | ".join(parts) + " |")
        lines.append("")
    seeds = "/".join(str(n) for n in n_seeds) or "?"
    lines.append(
        f"Mean ± std over all test slices pooled over seeds (n_seeds = {seeds}); per column "
        "the best value is **bold**, the second best <u>underlined</u>."
    )
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
             "<h2>Summary: PSNR (dB) / SSIM, mean &plusmn; std over the test slices</h2>"]
    for (task, dataset), accs, models, cells, params in _cells(summary):
        parts.append(f"<h3>{html.escape(str(task))} / {html.escape(str(dataset))}</h3>")
        parts.append("<table class='summary'><tr><th>Model</th><th>Params</th>"
                     + "".join(f"<th>{_format_acceleration(a)}&times; PSNR / SSIM</th>"
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


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
    "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


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
                rf"${latex_escape(_format_acceleration(a))}\times$" for a in accs) + r" \\",
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
    return "% kdmri tables: mean $\\pm$ std over test slices pooled over seeds\n" + (
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


def write_tables(metrics: Sequence[str | Path], out_dir: str | Path,
                 methods: dict | None = None) -> dict[str, pd.DataFrame]:
    """Read the metrics files and write every table into ``out_dir``; ``methods`` (model
    -> its teacher and stages, :func:`kdmri.comparisons.methods_table`) adds the table of
    methods where it names two or more distilled models."""
    from kdmri import comparisons

    out_dir = Path(out_dir)
    frame = read_metrics(metrics)
    summary = summarise(frame)
    gain = kd_gain(frame)
    _write_csv(summary, out_dir / "summary.csv")
    write_text(out_dir / "summary.md", to_markdown(summary))
    write_text(out_dir / "summary.tex", to_latex(summary))
    _write_csv(gain, out_dir / "kd_gain.csv")
    write_text(out_dir / "summary.html", to_html(summary, gain))
    tables = {"summary": summary, "kd_gain": gain}
    _write_optional(tables, out_dir, "ablation", ablation(frame) if has_ablation(frame)
                    else None, {})
    _write_optional(tables, out_dir, "compression", comparisons.compression(frame)
                    if comparisons.has_compression(frame) else None,
                    {".md": comparisons.compression_markdown})
    _write_optional(tables, out_dir, "methods", comparisons.methods_table(frame, methods)
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
    tables = write_tables(args.metrics, args.out_dir, methods)
    counts = ", ".join(f"{len(table)} {name} rows" for name, table in tables.items())
    print(f"tables: {counts} -> {args.out_dir}", file=sys.stderr, flush=True)
    return 0


def register_cli(add) -> None:
    p = add("tables", cmd_tables,
            "summary, KD-gain, ablation, compression and methods tables from metrics.csv files")
    p.add_argument("--metrics", nargs="+", required=True,
                   help="metrics.csv of every model and seed")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--methods", default=None,
                   help="JSON: task -> model -> {teacher, stages}, for the table of methods")

"""Comparisons across models of one cell: the compression curve (students of several
sizes, plain and distilled) and the table of distillation methods (each against the plain
student and the standard teacher, with a Holm-corrected Wilcoxon test).

Both read the per-slice metrics that :mod:`kdmri.tables` reads and use the pooled means,
gap, paired tests and Holm adjustment of :mod:`kdmri.stats`, so one formula serves every
table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kdmri.methods import VARIANT, split_model
from kdmri.notation import format_acceleration, format_params, latex_escape
from kdmri.stats import (
    BOOTSTRAP_SAMPLES,
    GROUP,
    bootstrap_interval,
    check_metrics,
    gap_closed,
    holm,
    paired,
    seed_spread,
    sort_rows,
    summarise,
    wilcoxon_p,
)

# ---------------------------------------------------------------------- compression
COMPRESSION_COLUMNS = [
    "task", "dataset", "acceleration", "student", "method",
    "params", "flops", "latency_ms",
    "student_psnr", "student_ssim", "kd_psnr", "kd_ssim",
    "kd_minus_student_psnr", "kd_minus_student_ssim",
    "teacher_psnr", "teacher_ssim", "teacher_params", "teacher_flops", "teacher_latency_ms",
    "gap_closed", "wilcoxon_p", "n_seeds",
]


def has_compression(frame: pd.DataFrame) -> bool:
    return bool(frame["model"].astype(str).str.contains(VARIANT, regex=False).any())


def compression(frame: pd.DataFrame) -> pd.DataFrame:
    """The compression curve: one row per (task, dataset, acceleration) and compression
    student ``s`` having both ``student@s`` and a distilled ``<method>@s``.

    ``params``, ``flops`` and ``latency_ms`` are the student's (the distilled one has the
    same network); PSNR / SSIM means are pooled over slices and seeds as in
    :func:`kdmri.stats.summarise`; ``kd_*`` are the distilled student's. ``gap_closed =
    (KD - S) / (T - S)`` against the cell's teacher (NaN without a teacher or when T = S);
    ``wilcoxon_p`` is the two-sided paired Wilcoxon test of per-slice PSNR, distilled vs
    plain, on the seeds both have. Rows are ordered by parameters within a cell.
    """
    check_metrics(frame)
    summary = summarise(frame).set_index([*GROUP, "model"])
    rows = []
    for key, group in frame.groupby(GROUP, sort=False, dropna=False):
        where = ", ".join(f"{k}={v}" for k, v in zip(GROUP, key, strict=True))
        names = [split_model(str(m)) for m in dict.fromkeys(group["model"])
                 if VARIANT in str(m)]
        students = dict.fromkeys(v for _, v in names)
        teacher = summary.loc[(*key, "teacher")] if (*key, "teacher") in summary.index \
            else None
        for name in students:
            plain = f"student{VARIANT}{name}"
            methods = [base for base, v in names if v == name and base != "student"]
            if (*key, plain) not in summary.index or not methods:
                continue
            for method in methods:
                distilled = f"{method}{VARIANT}{name}"
                seeds = sorted(set(group.loc[group["model"] == plain, "seed"])
                               & set(group.loc[group["model"] == distilled, "seed"]))
                both = group[group["seed"].isin(seeds)]
                pairs = paired(both, where, distilled, plain)
                s_psnr, k_psnr = pairs["psnr_student"].mean(), pairs["psnr_kd"].mean()
                s_row = summary.loc[(*key, plain)]
                t = {c: (teacher[c] if teacher is not None else np.nan)
                     for c in ("psnr_mean", "ssim_mean", "params", "flops", "latency_ms")}
                rows.append({
                    **dict(zip(GROUP, key, strict=True)),
                    "student": name, "method": method,
                    "params": s_row["params"], "flops": s_row["flops"],
                    "latency_ms": s_row["latency_ms"],
                    "student_psnr": float(s_psnr), "student_ssim": float(pairs["ssim_student"].mean()),
                    "kd_psnr": float(k_psnr), "kd_ssim": float(pairs["ssim_kd"].mean()),
                    "kd_minus_student_psnr": float(k_psnr - s_psnr),
                    "kd_minus_student_ssim": float(pairs["ssim_kd"].mean()
                                                   - pairs["ssim_student"].mean()),
                    "teacher_psnr": t["psnr_mean"], "teacher_ssim": t["ssim_mean"],
                    "teacher_params": t["params"], "teacher_flops": t["flops"],
                    "teacher_latency_ms": t["latency_ms"],
                    "gap_closed": gap_closed(k_psnr, s_psnr, t["psnr_mean"]),
                    "wilcoxon_p": wilcoxon_p(pairs["psnr_kd"].to_numpy(float),
                                             pairs["psnr_student"].to_numpy(float)),
                    "n_seeds": len(seeds),
                })
    result = pd.DataFrame(rows, columns=COMPRESSION_COLUMNS)
    for column in ("params", "flops", "teacher_params", "teacher_flops"):
        result[column] = result[column].astype("Int64")
    if not len(result):
        return result
    order = result.sort_values("params", kind="stable")
    return sort_rows(order, GROUP)


def compression_markdown(table: pd.DataFrame) -> str:
    """The compression curve as Markdown, one block per (task, dataset, acceleration)."""
    lines = []
    for key, block in table.groupby(GROUP, sort=False):
        task, dataset, acc = key
        first = block.iloc[0]
        lines += [f"### {task} / {dataset} / {format_acceleration(acc)}×", "",
                  "| Student | Params | MFLOP/slice | Latency ms | Student PSNR / SSIM | "
                  f"{first['method']} PSNR / SSIM | Gain dB | Gap closed | p |",
                  "|---|---:|---:|---:|---|---|---:|---:|---:|"]
        for _, row in block.iterrows():
            flops = "-" if pd.isna(row["flops"]) else f"{row['flops'] / 1e6:.1f}"
            gap = "-" if pd.isna(row["gap_closed"]) else f"{100 * row['gap_closed']:.0f} %"
            p = "-" if pd.isna(row["wilcoxon_p"]) else f"{row['wilcoxon_p']:.2g}"
            lines.append(
                f"| {row['student']} | {format_params(row['params'])} | {flops} | "
                f"{row['latency_ms']:.2f} | {row['student_psnr']:.2f} / "
                f"{row['student_ssim']:.4f} | {row['kd_psnr']:.2f} / {row['kd_ssim']:.4f} | "
                f"{row['kd_minus_student_psnr']:+.2f} | {gap} | {p} |")
        if not pd.isna(first["teacher_psnr"]):
            flops = ("-" if pd.isna(first["teacher_flops"])
                     else f"{first['teacher_flops'] / 1e6:.1f}")
            lines.append(f"| teacher | {format_params(first['teacher_params'])} | {flops} | "
                         f"{first['teacher_latency_ms']:.2f} | {first['teacher_psnr']:.2f} / "
                         f"{first['teacher_ssim']:.4f} | | | | |")
        lines.append("")
    lines.append("Means over all test slices pooled over seeds; gap closed = (KD - S) / "
                 "(T - S) in PSNR; p: two-sided paired Wilcoxon signed-rank test of per-slice "
                 "PSNR, distilled vs plain. Every student trains with the same steps.")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- methods
METHOD_COLUMNS = [
    "task", "dataset", "acceleration", "method", "teacher", "stages",
    "psnr", "ssim", "gain_psnr", "gain_ssim", "gap_closed", "wilcoxon_p", "p_holm",
    "gain_seed_mean", "gain_seed_std", "gain_ci_low", "gain_ci_high",
    "gap_seed_mean", "gap_seed_std", "gap_ci_low", "gap_ci_high", "hint_val_psnr",
    "student_psnr", "student_ssim", "teacher_psnr", "n_seeds",
]
#: The stages that distil features before a method's output stage: the table reports the
#: validation PSNR at the end of the last of them (``hint_val_psnr``).
HINT_STAGES = ("attention", "hint")
#: The columns of a frame of final validation PSNRs (:func:`methods_table`'s ``histories``).
HISTORY_COLUMNS = [*GROUP, "model", "seed", "val_psnr"]


def describe_stages(stages: list[dict]) -> str:
    """A method's stages as text: ``hint fitnets 11 ep -> imitation 11 ep``."""
    parts = []
    for stage in stages:
        loss = stage["loss"]
        terms = "+".join(t for t in loss if loss[t]
                         and t not in (stage["stage"], "reconstruction", "imitation"))
        parts.append(" ".join(x for x in (stage["stage"], terms, f"{stage['epochs']} ep") if x))
    return " -> ".join(parts)


def distilled(methods: dict[str, dict[str, dict]]) -> list[str]:
    """The models of a ``--methods`` description that read a teacher (in any task)."""
    return list(dict.fromkeys(m for task in methods.values() for m, info in task.items()
                              if info["teacher"]))


def compares_methods(methods: dict[str, dict[str, dict]] | None) -> bool:
    """Whether a ``--methods`` description makes a table of methods: two or more models
    that learn from a teacher."""
    return methods is not None and len(distilled(methods)) >= 2


def final_val_psnr(history: pd.DataFrame) -> float:
    """The validation PSNR at the end of a stage: its ``history.csv``'s last validated
    epoch's (NaN where none was validated)."""
    if "val_psnr" not in history:
        return np.nan
    validated = history["val_psnr"].dropna()
    return float(validated.iloc[-1]) if len(validated) else np.nan


def _hint_val_psnr(histories: pd.DataFrame | None, key: tuple, stages: list[dict],
                   seeds: list) -> float:
    """Mean over ``seeds`` of the final validation PSNR of the last hint stage of a
    method's ``stages`` in cell ``key`` (NaN without one, or without its histories)."""
    hints = [stage.get("model") for stage in stages if stage["stage"] in HINT_STAGES]
    if histories is None or not hints or hints[-1] is None:
        return np.nan
    cell = histories
    for column, value in zip(GROUP, key, strict=True):
        cell = cell[cell[column] == (float(value) if column == "acceleration" else value)]
    found = cell[(cell["model"] == hints[-1]) & cell["seed"].isin(seeds)]["val_psnr"]
    return float(found.mean()) if len(found) else np.nan


def methods_table(frame: pd.DataFrame, methods: dict[str, dict[str, dict]],
                  histories: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every distilled method of ``methods`` against the plain student, per cell.

    ``methods``: task -> model -> ``{"teacher": the model it learns from (None: reads no
    teacher), "stages": [{"stage", "loss", "epochs", "model"}, ...]}`` (its init chain,
    first stage first). Per (task, dataset, acceleration) having a ``student``, on the
    seeds both the method and the student have: PSNR / SSIM means pooled over slices and
    seeds, the gain over the student, ``gap_closed = (M - S) / (T - S)`` against the
    *standard* teacher (model ``teacher``) whatever the method learns from, the two-sided
    paired Wilcoxon p of per-slice PSNR against the student (pooled over seeds), and
    ``p_holm``: those p Holm-adjusted over the methods of the cell. Over seeds
    (:func:`kdmri.stats.seed_spread`): the mean ± std of the per-seed gain and gap closed;
    their 95 % bootstrap intervals resampling seeds and slices
    (:func:`kdmri.stats.bootstrap_interval`; the teacher's PSNR taken on the same slices);
    ``hint_val_psnr``: the validation PSNR at the end of the method's last hint stage
    (:data:`HINT_STAGES`), mean over its seeds, from ``histories``
    (:data:`HISTORY_COLUMNS`; NaN where it has none).
    """
    check_metrics(frame)
    rows = []
    for key, group in frame.groupby(GROUP, sort=False, dropna=False):
        info = methods.get(str(key[0]), {})
        names = [m for m, entry in info.items() if entry["teacher"]]
        where = ", ".join(f"{k}={v}" for k, v in zip(GROUP, key, strict=True))
        present = set(group["model"])
        if "student" not in present:
            continue
        means = group.groupby("model")[["psnr", "ssim"]].mean()
        teacher = means.loc["teacher", "psnr"] if "teacher" in present else np.nan
        cell_rows = []
        for method in names:
            if method not in present:
                continue
            seeds = sorted(set(group.loc[group["model"] == method, "seed"])
                           & set(group.loc[group["model"] == "student", "seed"]))
            pairs = paired(group[group["seed"].isin(seeds)], where, method, "student")
            m_psnr, s_psnr = pairs["psnr_kd"].mean(), pairs["psnr_student"].mean()
            m_ssim, s_ssim = pairs["ssim_kd"].mean(), pairs["ssim_student"].mean()
            compared = _compared(pairs, group)
            cell_rows.append({
                **dict(zip(GROUP, key, strict=True)),
                "method": method, "teacher": info[method]["teacher"],
                "stages": describe_stages(info[method]["stages"]),
                "psnr": float(m_psnr), "ssim": float(m_ssim),
                "gain_psnr": float(m_psnr - s_psnr), "gain_ssim": float(m_ssim - s_ssim),
                "gap_closed": gap_closed(m_psnr, s_psnr, teacher),
                "wilcoxon_p": wilcoxon_p(pairs["psnr_kd"].to_numpy(float),
                                         pairs["psnr_student"].to_numpy(float)),
                **seed_spread(compared), **bootstrap_interval(compared),
                "hint_val_psnr": _hint_val_psnr(histories, key, info[method]["stages"], seeds),
                "student_psnr": float(s_psnr), "student_ssim": float(s_ssim),
                "teacher_psnr": float(teacher), "n_seeds": len(seeds),
            })
        adjusted = holm([r["wilcoxon_p"] for r in cell_rows])
        for row, p in zip(cell_rows, adjusted, strict=True):
            row["p_holm"] = float(p)
        rows += cell_rows
    return pd.DataFrame(rows, columns=METHOD_COLUMNS)


def _compared(pairs: pd.DataFrame, group: pd.DataFrame) -> pd.DataFrame:
    """The paired slices of a method and the student with the standard teacher's PSNR on
    the same slice (NaN where the cell has no teacher), as :data:`kdmri.stats.COMPARED`."""
    keys = ["seed", "volume", "slice"]
    teacher = group.loc[group["model"] == "teacher", [*keys, "psnr"]]
    joined = pairs.merge(teacher.rename(columns={"psnr": "teacher"}), on=keys, how="left",
                         validate="one_to_one")
    return joined.rename(columns={"psnr_kd": "model", "psnr_student": "student"})[
        ["seed", "model", "student", "teacher"]]


def _wide(table: pd.DataFrame):
    """Per (task, dataset): its accelerations and, per method, the row of each."""
    for (task, dataset), block in table.groupby(["task", "dataset"], sort=False):
        accs = list(dict.fromkeys(block["acceleration"]))
        methods = list(dict.fromkeys(block["method"]))
        cells = {(r["method"], r["acceleration"]): r for _, r in block.iterrows()}
        yield task, dataset, accs, methods, cells


#: The columns of the methods table per acceleration, as Markdown headers (and LaTeX).
METHOD_CELLS = ["PSNR / SSIM", "gain dB", "gap closed", "p (Holm)", "hint val PSNR"]


def _interval(low: float, high: float, scale: float, form: str) -> str:
    return "" if pd.isna(low) else f" [{scale * low:{form}}, {scale * high:{form}}]"


def _method_cells(row) -> list[str]:
    """A method's cells in one acceleration (:data:`METHOD_CELLS`): PSNR / SSIM pooled;
    gain and gap closed pooled, then mean ± std over seeds and the 95 % interval; Holm p;
    the validation PSNR at the end of its last hint stage."""
    if row is None:
        return ["-"] * len(METHOD_CELLS)
    gain = (f"{row['gain_psnr']:+.2f} ({row['gain_seed_mean']:+.2f} ± "
            f"{row['gain_seed_std']:.2f})"
            + _interval(row["gain_ci_low"], row["gain_ci_high"], 1, "+.2f"))
    gap = "-" if pd.isna(row["gap_closed"]) else (
        f"{100 * row['gap_closed']:.0f} % ({100 * row['gap_seed_mean']:.0f} ± "
        f"{100 * row['gap_seed_std']:.0f})"
        + _interval(row["gap_ci_low"], row["gap_ci_high"], 100, ".0f"))
    p = "-" if pd.isna(row["p_holm"]) else f"{row['p_holm']:.2g}"
    hint = "-" if pd.isna(row["hint_val_psnr"]) else f"{row['hint_val_psnr']:.2f}"
    return [f"{row['psnr']:.2f} / {row['ssim']:.4f}", gain, gap, p, hint]


def methods_note(table: pd.DataFrame) -> str:
    stages = dict.fromkeys(zip(table["task"], table["method"], table["stages"], strict=True))
    listed = "; ".join(f"{m} ({t}): {s}" for t, m, s in stages)
    seeds = sorted(set(table["n_seeds"]))
    return ("PSNR / SSIM: means over all test slices pooled over seeds "
            f"({' or '.join(map(str, seeds))} seeds); gain: over the plain student in dB, "
            "and gap closed: the share of the standard teacher-student gap, (M - S) / (T - S), "
            "each pooled, then (mean ± std over seeds of the per-seed value) and [95 % "
            f"bootstrap interval: {BOOTSTRAP_SAMPLES} resamples of seeds and, within each, "
            "test slices]; p: two-sided paired Wilcoxon signed-rank test of per-slice PSNR "
            "against the student, pooled over seeds, Holm-corrected over the methods of each "
            "column; hint val PSNR: the validation PSNR at the end of the method's hint stage, "
            "mean over seeds. Each method is read against its control (the method without "
            "the one stage or setting it adds; docs/methods.md). "
            f"Stages (epochs of the same length in every stage: same steps): {listed}.")


def methods_markdown(table: pd.DataFrame) -> str:
    """The methods table in Markdown: rows method (and its teacher), per acceleration the
    cells of :data:`METHOD_CELLS`."""
    lines = []
    for task, dataset, accs, methods, cells in _wide(table):
        lines += [f"### {task} / {dataset}", ""]
        head = ["Method", "Teacher"]
        for acc in accs:
            a = format_acceleration(acc)
            head += [f"{a}× {name}" for name in METHOD_CELLS]
        lines += ["| " + " | ".join(head) + " |",
                  "|---|---|" + "---|---:|---:|---:|---:|" * len(accs)]
        first = {acc: next(r for (m, a), r in cells.items() if a == acc) for acc in accs}
        for label, column in (("student", "student"), ("teacher", "teacher")):
            values = []
            for acc in accs:
                psnr = first[acc][f"{column}_psnr"]
                ssim = first[acc].get(f"{column}_ssim", np.nan)
                text = f"{psnr:.2f}" + ("" if pd.isna(ssim) else f" / {ssim:.4f}")
                values += [text] + [""] * (len(METHOD_CELLS) - 1)
            lines.append(f"| {label} | | " + " | ".join(values) + " |")
        for method in methods:
            row0 = next(r for (m, _), r in cells.items() if m == method)
            values = [v for acc in accs for v in _method_cells(cells.get((method, acc)))]
            lines.append(f"| {method} | {row0['teacher']} | " + " | ".join(values) + " |")
        lines.append("")
    lines.append(methods_note(table))
    return "\n".join(lines) + "\n"


def methods_latex(table: pd.DataFrame) -> str:
    """The methods table as a LaTeX tabular per (task, dataset) (booktabs)."""
    out = []
    for task, dataset, accs, methods, cells in _wide(table):
        n = len(METHOD_CELLS)
        out += [f"% {task} / {dataset}", "\\begin{tabular}{ll" + "c" * n * len(accs) + "}",
                "\\toprule",
                "Method & Teacher & " + " & ".join(
                    f"\\multicolumn{{{n}}}{{c}}{{{format_acceleration(a)}$\\times$}}"
                    for a in accs) + " \\\\",
                " & & " + " & ".join([" & ".join(latex_escape(c) for c in METHOD_CELLS)]
                                     * len(accs)) + " \\\\", "\\midrule"]
        for method in methods:
            row0 = next(r for (m, _), r in cells.items() if m == method)
            values = [latex_escape(v) for acc in accs
                      for v in _method_cells(cells.get((method, acc)))]
            out.append(f"{latex_escape(method)} & {latex_escape(str(row0['teacher']))} & "
                       + " & ".join(values) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}", ""]
    return "\n".join(out)

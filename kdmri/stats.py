"""The statistics every results table uses, on a frame of per-slice metrics.

A *metrics frame* has one row per (task, dataset, acceleration, model, seed, volume,
slice) with the columns :data:`METRICS_COLUMNS` (``flops`` where present). On it:

* :func:`summarise`: per (task, dataset, acceleration, model) the mean and the population
  standard deviation (``ddof=0``) of every metric over all test slices of all seeds
  pooled (*slice-pooled*), the slice, seed, parameter and FLOP counts and the mean
  latency over seeds; beside them the *volume-wise* means and standard deviations of
  :data:`VOLUME_COLUMNS` (fastMRI's leaderboard convention: one value per test volume
  and seed, the mean over them);
* :func:`gap_closed`: the share of the teacher-student gap a distilled student closes,
  ``(KD - S) / (T - S)``, where there is one (``T > S``);
* :func:`seed_spread` and :func:`bootstrap_interval`: over the seeds of a comparison (a
  model M against the student S, with the teacher T, slice by slice), the mean and
  standard deviation over seeds of the PSNR gain and of the gap closed, and their 95 %
  bootstrap intervals, resampling seeds and, within each, test slices;
* :func:`paired` and :func:`wilcoxon_p`: two models' slices joined on (seed, volume,
  slice), and the two-sided Wilcoxon signed-rank test of their paired differences;
* :func:`holm`: Holm's step-down adjustment of a family of p-values;
* :func:`sort_rows`: the row order of every table (models in :data:`MODEL_ORDER`).

:mod:`kdmri.tables` (summary, KD gain, ablation) and :mod:`kdmri.comparisons`
(compression curve, methods) build their tables from these, so each formula is written
once. Nothing here reads or writes files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from kdmri.errors import KdmriError

#: Columns every metrics.csv must have (``flops`` is read where present: files written
#: before it existed have none).
METRICS_COLUMNS = [
    "task", "dataset", "acceleration", "model", "seed", "params", "latency_ms",
    "volume", "slice", "psnr", "ssim", "nmse", "hfen",
]
METRIC_NAMES = ["psnr", "ssim", "nmse", "hfen"]
#: Optional columns of a metrics.csv: fastMRI's volume-wise metrics of the row's volume
#: (:func:`kdmri.metrics.evaluation_metrics`), the same on every row of a volume. Files
#: written before they existed have none; their summary columns are then empty.
VOLUME_COLUMNS = ["volume_psnr", "volume_ssim", "volume_nmse"]
#: Row order of models in every table; other model names follow alphabetically.
MODEL_ORDER = ["zf", "teacher", "student", "kd", "kd_imitation", "kd_attention"]
#: The cell a table row describes.
GROUP = ["task", "dataset", "acceleration"]
SUMMARY_COLUMNS = [
    "task", "dataset", "acceleration", "model",
    "psnr_mean", "psnr_std", "ssim_mean", "ssim_std",
    "nmse_mean", "nmse_std", "hfen_mean", "hfen_std",
    "n_slices", "params", "flops", "latency_ms", "n_seeds",
    "volume_psnr_mean", "volume_psnr_std", "volume_ssim_mean", "volume_ssim_std",
    "volume_nmse_mean", "volume_nmse_std", "n_volumes",
]


def check_metrics(frame: pd.DataFrame, source: str = "metrics") -> pd.DataFrame:
    """Raise :class:`KdmriError` naming ``source`` if required columns are missing."""
    missing = [c for c in METRICS_COLUMNS if c not in frame.columns]
    if missing:
        raise KdmriError(
            f"{source}: missing columns {missing} (expected {METRICS_COLUMNS}, "
            f"found {list(frame.columns)})"
        )
    return frame


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


def sort_rows(frame: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """``frame`` sorted (stably) by the columns ``by``: models in :data:`MODEL_ORDER`
    then alphabetically, accelerations numerically where all are numbers, anything else
    as text; the index renumbered."""
    return frame.sort_values(list(by), key=_sort_key, kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------------- summary
def _param_value(values: pd.Series, where: str, what: str = "parameter counts"):
    distinct = values.dropna().unique()
    if len(distinct) > 1:
        raise KdmriError(f"metrics: {where} has different {what} {sorted(distinct)}")
    return int(distinct[0]) if len(distinct) else np.nan


def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (task, dataset, acceleration, model): pooled means and stds of every metric.

    Means and standard deviations run over all test slices of all seeds together; the
    standard deviation is the population one (numpy's default, ``ddof=0``).
    ``n_slices`` counts distinct (volume, slice) test slices, ``n_seeds`` distinct seeds;
    ``latency_ms`` is the mean over seeds of each seed's latency.

    The volume-wise columns ``volume_<metric>_mean`` / ``_std`` (fastMRI's leaderboard
    figures) take one value per (seed, volume), the row's :data:`VOLUME_COLUMNS`, and
    average them: the mean over the test volumes (of every seed; with the same volumes
    in every seed, the mean over seeds of each seed's mean over volumes) and its
    population standard deviation. ``n_volumes`` counts distinct test volumes. They are
    NaN where a metrics file has no volume columns.
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
        row.update(_volume_wise(group, f"model {key[3]!r} at {key[:3]}"))
        rows.append(row)
    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    summary["params"] = summary["params"].astype("Int64")
    summary["flops"] = summary["flops"].astype("Int64")
    return sort_rows(summary, [*GROUP, "model"])


def _volume_wise(group: pd.DataFrame, where: str) -> dict:
    """The volume-wise summary columns of one model's rows (see :func:`summarise`)."""
    row = {"n_volumes": int(group["volume"].nunique())}
    present = all(c in group.columns for c in VOLUME_COLUMNS)
    volumes = group[["seed", "volume", *VOLUME_COLUMNS]].drop_duplicates() if present else None
    if present and volumes.duplicated(["seed", "volume"]).any():
        first = volumes.loc[volumes.duplicated(["seed", "volume"]), ["seed", "volume"]].iloc[0]
        raise KdmriError(f"metrics: {where} has different volume-wise metrics on the slices "
                         f"of one volume (seed {first['seed']}, volume {first['volume']!r})")
    for column in VOLUME_COLUMNS:
        values = volumes[column].to_numpy(dtype=float) if present else np.array([np.nan])
        row[f"{column}_mean"] = float(np.mean(values))
        row[f"{column}_std"] = float(np.std(values))
    return row


# ---------------------------------------------------------------------- gap and spread
def gap_closed(kd: float, student: float, teacher: float) -> float:
    """``(kd - student) / (teacher - student)``: the share of the teacher-student gap the
    distilled student closes (1: all of it, 0: none, < 0: worse than the student); NaN
    where there is no gap to close: the teacher is not above the student (``teacher <=
    student``; on data the models were not trained on it can be below), or either is not
    finite. (A ratio there would read as a share: a KD student below a teacher that is
    itself below the student would "close" more than all of a negative gap.)"""
    denominator = teacher - student
    if not math.isfinite(denominator) or denominator <= 0:
        return math.nan
    return (kd - student) / denominator


#: The level below which the teacher's paired Wilcoxon p against the student shows a
#: teacher-student gap that is more than noise; a table gives the share of the gap a
#: distilled student closes only there (:func:`kdmri.tables.kd_gain`).
GAP_ALPHA = 0.05


def seed_std(values: np.ndarray) -> float:
    """Standard deviation over seeds with ``ddof=1``; 0 for a single seed."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


# ---------------------------------------------------------------------- over seeds
#: Resamples of :func:`bootstrap_interval`, and the seed of its generator: a table's
#: intervals are the same on every run.
BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0
#: The columns of a frame of compared slices (:func:`seed_spread`,
#: :func:`bootstrap_interval`): the seed, then the PSNR of the model, the student and the
#: teacher (NaN where there is no teacher) on one test slice.
COMPARED = ["seed", "model", "student", "teacher"]


def _gain_and_gap(model: np.ndarray, student: np.ndarray, teacher: np.ndarray) -> tuple:
    """``(mean(M) - mean(S), gap_closed(mean M, mean S, mean T))`` of paired slices."""
    m, s, t = float(np.mean(model)), float(np.mean(student)), float(np.mean(teacher))
    return m - s, gap_closed(m, s, t)


def seed_spread(compared: pd.DataFrame) -> dict[str, float]:
    """Per seed of ``compared`` (:data:`COMPARED`), the gain ``g = mean(M) - mean(S)`` and
    the gap closed ``(mean M - mean S) / (mean T - mean S)`` over that seed's slices; then
    over seeds the mean of each and its standard deviation (:func:`seed_std`, ``ddof=1``;
    0 for one seed): ``gain_seed_mean``, ``gain_seed_std``, ``gap_seed_mean``,
    ``gap_seed_std``."""
    per_seed = np.array([_gain_and_gap(g["model"], g["student"], g["teacher"])
                         for _, g in compared.groupby("seed", sort=True)], dtype=float)
    gains, gaps = per_seed[:, 0], per_seed[:, 1]
    return {"gain_seed_mean": float(np.mean(gains)), "gain_seed_std": seed_std(gains),
            "gap_seed_mean": float(np.mean(gaps)), "gap_seed_std": seed_std(gaps)}


def bootstrap_interval(compared: pd.DataFrame, level: float = 0.95,
                       samples: int = BOOTSTRAP_SAMPLES,
                       seed: int = BOOTSTRAP_SEED) -> dict[str, float]:
    """The ``level`` percentile-bootstrap intervals of the pooled gain ``mean(M) -
    mean(S)`` and gap closed ``(mean M - mean S) / (mean T - mean S)`` of ``compared``
    (:data:`COMPARED`), resampling at both levels the study varies: each of ``samples``
    resamples draws k of the k seeds with replacement (``rng.integers(0, k, k)``, seeds in
    ascending order), then for each drawn seed, in the order drawn, its n slices with
    replacement (``rng.integers(0, n, n)``), and computes both statistics on the slices
    drawn, pooled; the interval is the (1 - level) / 2 and (1 + level) / 2 quantiles of
    each (numpy's linear interpolation), ``rng = numpy.random.default_rng(seed)``.
    Returns ``gain_ci_low``, ``gain_ci_high``, ``gap_ci_low``, ``gap_ci_high``."""
    rng = np.random.default_rng(seed)
    groups = [g[["model", "student", "teacher"]].to_numpy(dtype=float)
              for _, g in compared.groupby("seed", sort=True)]
    k = len(groups)
    values = np.empty((samples, 2))
    for b in range(samples):
        drawn = [groups[j][rng.integers(0, len(groups[j]), len(groups[j]))]
                 for j in rng.integers(0, k, k)]
        pooled = np.concatenate(drawn)
        values[b] = _gain_and_gap(pooled[:, 0], pooled[:, 1], pooled[:, 2])
    tails = [100 * (1 - level) / 2, 100 * (1 + level) / 2]
    with np.errstate(invalid="ignore"):
        gain = np.percentile(values[:, 0], tails)
        gap = np.percentile(values[:, 1], tails)
    return {"gain_ci_low": float(gain[0]), "gain_ci_high": float(gain[1]),
            "gap_ci_low": float(gap[0]), "gap_ci_high": float(gap[1])}


# ---------------------------------------------------------------------- paired tests
def paired(group: pd.DataFrame, where: str, kd: str = "kd",
           student: str = "student") -> pd.DataFrame:
    """Rows of models ``kd`` and ``student`` of one group joined on (seed, volume, slice),
    as columns ``psnr_kd``, ``psnr_student``, ``ssim_kd``, ``ssim_student``; a slice that
    only one of them has raises :class:`KdmriError` naming ``where``."""
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


def wilcoxon_p(kd: np.ndarray, student: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p of the paired differences ``kd - student``
    (scipy's default zero handling); pairs whose difference is not finite (two perfect
    slices: inf - inf) are left out; NaN when no pair differs."""
    from scipy.stats import wilcoxon

    with np.errstate(invalid="ignore"):
        diff = kd - student
    diff = diff[np.isfinite(diff)]  # inf - inf (two perfect slices) carries no information
    if not np.any(diff != 0):
        return math.nan
    return float(wilcoxon(diff, alternative="two-sided").pvalue)


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjustment of p-values for a family of tests: with the m finite p
    sorted ascending, p_(i) * (m - i + 1), made non-decreasing and capped at 1; NaN entries
    stay NaN and do not count in m."""
    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full_like(p, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted

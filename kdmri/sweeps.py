"""Sweeps: the settings a study's ``sweeps`` give, the candidates they make, and the choice
on validation data.

A sweep (``sweeps.<name>`` of the config) varies config keys (dotted: ``kd.alpha``) for
some of the study's models. Its *settings* are the combinations of the keys' values
(:func:`settings`: every combination, or the i-th values together); each setting makes
one *candidate* of each model it varies, named ``<model>~<sweep>~<label>`` (``kd~alpha~0.3``:
:func:`candidate`), trained under the study's config with the setting's values
(:func:`with_overrides`). The model itself, under the config's own values, is a candidate
too. A candidate's chain (the models it starts from, the teacher it learns from) is made
of candidates of the same setting; one whose job the setting does not change is the
model itself, trained once (:func:`kdmri.specs.canonical`).

The choice (:func:`choose`) uses validation data only: each candidate's validation PSNR is
the one its ``model.pt`` records (the mean over validation volumes of each volume's PSNR,
at the epoch the model keeps); per task, dataset, acceleration and model, the candidate
with the highest mean over seeds is chosen (the first listed on a tie, the config's own
value first). The tables then show the chosen candidate's test figures under the model's
name (:func:`apply_choice`) and ``sweep.csv`` every candidate's validation figures.

The names and settings here must not import torch: the Snakefile imports them.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kdmri.errors import KdmriError

#: Between a model and a sweep setting's name: ``kd~alpha~0.3``.
SWEEP = "~"
#: Between a sweep's name and its setting's label (not "=": command lines pass paths as
#: name=path).
LABEL = "~"
#: The label of a model's own candidate (the config's values) in sweep.csv.
OWN = "config"
#: The columns of sweep.csv.
COLUMNS = ["task", "dataset", "acceleration", "model", "sweep", "keys", "setting",
           "candidate", "n_seeds", "val_psnr_mean", "val_psnr_std", "chosen"]


def label(value: Any) -> str:
    """A value as it appears in a candidate's name: ``0.3``, ``1e-05``, ``true``, ``adam``
    (floats by ``repr``, so two different values never share a label)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def settings(sweep: dict, where: str = "sweeps") -> list[dict[str, Any]]:
    """The settings of one sweep entry (``models``, ``values``, ``combine``; as validated,
    its defaults filled): each a dict
    config key -> value, in order (grid: the last key varies fastest)."""
    keys = list(sweep["values"])
    lists = [sweep["values"][k] for k in keys]
    if sweep["combine"] == "zip":
        lengths = {len(values) for values in lists}
        if len(lengths) > 1:
            raise KdmriError(
                f"config: key '{where}.values': combine zip needs lists of one length, found "
                + ", ".join(f"{k}: {len(v)}" for k, v in zip(keys, lists, strict=True)))
        rows = zip(*lists, strict=True)
    else:
        rows = itertools.product(*lists)
    return [dict(zip(keys, row, strict=True)) for row in rows]


def setting_label(setting: dict[str, Any]) -> str:
    """A setting's label: its values' labels joined by commas, in key order."""
    return ",".join(label(v) for v in setting.values())


def candidate(model: str, sweep: str, setting: dict[str, Any]) -> str:
    """The name of ``model``'s candidate under one setting of a sweep."""
    return f"{model}{SWEEP}{sweep}{LABEL}{setting_label(setting)}"


def split(name: str) -> tuple[str, str | None, str | None]:
    """``(model, sweep, label)`` of a name: ``("kd", "alpha", "0.3")`` for ``kd~alpha~0.3``,
    ``(name, None, None)`` for a name without a setting."""
    model, sep, rest = name.partition(SWEEP)
    if not sep:
        return name, None, None
    sweep, sep, text = rest.partition(LABEL)
    if not sep or not sweep or not text:
        raise KdmriError(f"model {name!r}: expected <model>{SWEEP}<sweep>{LABEL}<setting>")
    return model, sweep, text


def setting_of(name: str, config: dict | None) -> tuple[str, dict[str, Any] | None]:
    """``(model, setting)`` of a name: the setting (config key -> value) of a candidate's
    sweep whose label its name gives, None for a name without one. Raises
    :class:`KdmriError` for a sweep or label the config does not have."""
    model, sweep, text = split(name)
    if sweep is None:
        return name, None
    sweeps = config["sweeps"] if config is not None else {}
    if sweep not in sweeps:
        raise KdmriError(f"model {name!r}: the study has no sweep {sweep!r}; its sweeps: "
                         f"{sorted(sweeps)}")
    for setting in settings(sweeps[sweep], f"sweeps.{sweep}"):
        if setting_label(setting) == text:
            return model, setting
    raise KdmriError(f"model {name!r}: sweep {sweep!r} has no setting {text!r}")


def with_overrides(config: dict, overrides: Iterable[tuple[str, Any]]) -> dict:
    """A copy of ``config`` with each dotted key of ``overrides`` set to its value (the
    sections on the way made where the config has none); ``config`` itself where there
    is nothing to set."""
    overrides = list(overrides)
    if not overrides:
        return config
    result = copy.deepcopy(config)
    for key, value in overrides:
        *path, last = key.split(".")
        node = result
        for part in path:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise KdmriError(f"config: key {key!r}: {part!r} is not a section")
        node[last] = copy.deepcopy(value)
    return result


def candidates(config: dict) -> list[tuple[str, str, str, dict[str, Any]]]:
    """``(candidate, model, sweep, setting)`` of every setting of every sweep, per model it
    varies (in the config's order)."""
    return [(candidate(model, name, setting), model, name, setting)
            for name, sweep in config["sweeps"].items()
            for setting in settings(sweep, f"sweeps.{name}")
            for model in sweep["models"]]


def swept_models(config: dict) -> list[str]:
    """The models some sweep varies, in the order of ``models``."""
    swept = {m for sweep in config["sweeps"].values() for m in sweep["models"]}
    return [m for m in config["models"] if m in swept]


# ---------------------------------------------------------------------- the choice
def read_val_psnr(models: dict[str, str | Path]) -> dict[str, float]:
    """The validation PSNR each ``model.pt`` records (the epoch it keeps), keyed as given."""
    from kdmri.io import load_torch

    found = {}
    for key, path in models.items():
        if not Path(path).is_file():
            raise KdmriError(f"{path}: model file not found")
        ckpt = load_torch(path)
        if "val_psnr" not in ckpt:
            raise KdmriError(f"{path}: the model file records no validation PSNR (val_psnr)")
        found[key] = float(ckpt["val_psnr"])
    return found


def choose(plan: list[dict], val_psnr: dict[str, float]):
    """The sweep table: one row per candidate of each (task, dataset, acceleration, model)
    in ``plan`` (rows of ``task``, ``dataset``, ``acceleration``, ``model``, ``sweep``,
    ``keys`` (its config keys, joined by commas), ``setting`` (the values' label),
    ``candidate``, ``seeds``: the keys of their ``val_psnr`` by seed), with the
    mean and standard deviation over seeds of the validation PSNR and ``chosen`` true for
    the highest mean of each group (the first in ``plan``'s order on a tie). Only
    validation figures enter: no test figure is read here."""
    import numpy as np
    import pandas as pd

    rows = []
    for entry in plan:
        values = [val_psnr[key] for key in entry["seeds"]]
        rows.append({**{k: entry[k] for k in COLUMNS[:8]}, "n_seeds": len(values),
                     "val_psnr_mean": float(np.mean(values)),
                     "val_psnr_std": float(np.std(values, ddof=1)) if len(values) > 1
                     else np.nan,
                     "chosen": False})
    table = pd.DataFrame(rows, columns=COLUMNS)
    for _, group in table.groupby(["task", "dataset", "acceleration", "model"], sort=False):
        if group["val_psnr_mean"].notna().any():
            table.loc[group["val_psnr_mean"].idxmax(), "chosen"] = True
    return table


def apply_choice(frame, table):
    """The metrics ``frame`` as the tables show it: per (task, dataset, acceleration) the
    rows of each swept model's chosen candidate under the model's name, with its
    ``setting``; the other candidates' rows dropped (their test figures are not shown)."""
    import pandas as pd

    keep = []
    for (task, dataset, acc), cell in frame.groupby(["task", "dataset", "acceleration"],
                                                    sort=False):
        sweeps = table[(table["task"] == task) & (table["dataset"] == dataset)
                       & (table["acceleration"] == acc)]
        cell = cell.copy()
        cell["setting"] = ""
        for model, group in sweeps.groupby("model", sort=False):
            chosen = group[group["chosen"]]
            if chosen.empty:
                continue
            row = chosen.iloc[0]
            cell = cell[(cell["model"] == row["candidate"])
                        | ~cell["model"].isin(set(group["candidate"]))]
            picked = cell["model"] == row["candidate"]
            cell.loc[picked, "setting"] = (OWN if row["setting"] == OWN
                                           else f"{row['sweep']}: {row['setting']}")
            cell.loc[picked, "model"] = model
        keep.append(cell)
    return pd.concat(keep, ignore_index=True) if keep else frame


def sweep_markdown(table) -> str:
    """sweep.md: per (task, dataset, acceleration) and model, each candidate's validation
    PSNR (mean ± std over seeds), the chosen one marked."""
    lines = ["Validation PSNR (dB, mean ± std over seeds; each model's best epoch, the "
             "mean over validation volumes of each volume's PSNR) of each candidate; ** = "
             "chosen (the highest mean). Test figures: summary.md, chosen candidates only.",
             ""]
    for (task, dataset, acc, model), group in table.groupby(
            ["task", "dataset", "acceleration", "model"], sort=False):
        lines += [f"### {task} / {dataset} / {acc:g}x / {model}", "",
                  "| sweep | keys | setting | validation PSNR | seeds |", "|---|---|---|---|---|"]
        for _, row in group.iterrows():
            std = "" if row["val_psnr_std"] != row["val_psnr_std"] else \
                f" ± {row['val_psnr_std']:.2f}"
            cell = f"{row['val_psnr_mean']:.2f}{std}"
            if row["chosen"]:
                cell = f"**{cell}**"
            lines.append(f"| {row['sweep']} | {row['keys']} | {row['setting']} | {cell} | "
                         f"{row['n_seeds']} |")
        lines.append("")
    return "\n".join(lines)


def write_sweep(plan: list[dict], models: dict[str, str | Path], out_dir: str | Path):
    """Read the candidates' validation PSNR, choose, and write sweep.csv and sweep.md."""
    from kdmri.io import atomic_path, write_text

    table = choose(plan, read_val_psnr(models))
    out_dir = Path(out_dir)
    with atomic_path(out_dir / "sweep.csv", suffix=".csv") as tmp:
        table.to_csv(tmp, index=False)
    write_text(out_dir / "sweep.md", sweep_markdown(table))
    return table


def cmd_sweep(args) -> int:
    import sys

    try:
        plan = json.loads(args.plan)
    except json.JSONDecodeError as exc:
        raise KdmriError(f"--plan: not valid JSON ({exc.msg} at {exc.pos})") from None
    if not isinstance(plan, list) or not all(
            isinstance(e, dict) and set(COLUMNS[:8]) | {"seeds"} <= set(e) for e in plan):
        raise KdmriError("--plan: expected a list of {task, dataset, acceleration, model, "
                         "sweep, keys, setting, candidate, seeds}")
    models = {}
    for entry in args.models:
        key, sep, path = entry.partition("=")
        if not sep:
            raise KdmriError(f"--models: {entry!r}: expected key=path")
        models[key] = path
    table = write_sweep(plan, models, args.out_dir)
    chosen = table[table["chosen"]]
    print(f"sweep: {len(table)} candidates, chosen: "
          + "; ".join(f"{r.task}/{r.dataset}/{r.acceleration:g}x/{r.model}: {r.sweep} "
                      f"{r.setting}" for r in chosen.itertuples()) + f" -> {args.out_dir}",
          file=sys.stderr, flush=True)
    return 0

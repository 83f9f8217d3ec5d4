"""Tests for kdmri.tables: summary, KD gain, ablation, Markdown and LaTeX tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon

from kdmri import stats, tables
from kdmri.cli import main
from kdmri.errors import KdmriError

N_SLICES = 30  # 6 volumes x 5 slices
OFFSETS = {"zf": -4.0, "teacher": 1.0, "student": 0.0, "kd": 0.5}
PARAMS = {"zf": 0, "teacher": 5_000_000, "student": 1_000, "kd": 1_000,
          "kd_imitation": 1_000, "kd_attention": 1_000}
FLOPS = {model: 4_096 * params for model, params in PARAMS.items()}


def metrics_frame(models=("zf", "teacher", "student", "kd"), seeds=(0, 1),
                  accelerations=(4, 8), offsets=None, noise=None) -> pd.DataFrame:
    """Per-slice rows; psnr = base(seed, acc, slice) + offset[model] (+ optional noise)."""
    offsets = {**OFFSETS, "kd_imitation": 0.3, "kd_attention": 0.1, **(offsets or {})}
    rng = np.random.default_rng(0)
    rows = []
    for acc in accelerations:
        for seed in seeds:
            base = rng.normal(30.0 - acc / 4, 2.0, N_SLICES)
            for model in models:
                extra = noise.get(model, 0.0) if noise else 0.0
                for i in range(N_SLICES):
                    rows.append({
                        "task": "recon", "dataset": "demo", "acceleration": acc,
                        "model": model, "seed": seed, "params": PARAMS[model],
                        "flops": FLOPS[model],
                        "latency_ms": 0.0 if model == "zf" else 1.0 + seed,
                        "volume": f"vol{i // 5}", "slice": i % 5,
                        "psnr": base[i] + offsets[model] + extra * np.sin(i + seed),
                        "ssim": 0.8 + offsets[model] / 100, "nmse": 0.01, "hfen": 0.1,
                    })
    return pd.DataFrame(rows)


def write_metrics(frame: pd.DataFrame, folder) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for (model, seed), part in frame.groupby(["model", "seed"]):
        path = folder / f"{model}_s{seed}.csv"
        part.to_csv(path, index=False)
        paths.append(str(path))
    return paths


def test_summary_columns_order_and_values() -> None:
    frame = metrics_frame().sample(frac=1.0, random_state=3)  # row order must not matter
    summary = stats.summarise(frame)
    assert list(summary.columns) == [
        "task", "dataset", "acceleration", "model", "psnr_mean", "psnr_std", "ssim_mean",
        "ssim_std", "nmse_mean", "nmse_std", "hfen_mean", "hfen_std", "n_slices", "params",
        "flops", "latency_ms", "n_seeds", "volume_psnr_mean", "volume_psnr_std",
        "volume_ssim_mean", "volume_ssim_std", "volume_nmse_mean", "volume_nmse_std",
        "n_volumes",
    ]
    assert summary["model"].tolist() == ["zf", "teacher", "student", "kd"] * 2
    assert summary["acceleration"].tolist() == [4] * 4 + [8] * 4
    row = summary[(summary["model"] == "kd") & (summary["acceleration"] == 8)].iloc[0]
    part = frame[(frame["model"] == "kd") & (frame["acceleration"] == 8)]
    assert row["psnr_mean"] == pytest.approx(part["psnr"].mean())
    assert row["psnr_std"] == pytest.approx(np.std(part["psnr"].to_numpy()))  # ddof=0
    assert row["n_slices"] == N_SLICES and row["n_seeds"] == 2
    assert row["params"] == 1_000 and row["latency_ms"] == pytest.approx(1.5)
    assert row["flops"] == 4_096_000


def test_flops_are_optional_and_must_agree() -> None:
    """Metrics files written before FLOPs were counted give an empty flops column."""
    summary = stats.summarise(metrics_frame().drop(columns="flops"))
    assert summary["flops"].isna().all() and summary["params"].notna().all()
    tables.to_markdown(summary.drop(columns="flops"))
    frame = metrics_frame()
    frame.loc[(frame["model"] == "kd") & (frame["seed"] == 1), "flops"] = 1
    with pytest.raises(KdmriError, match="different FLOP counts"):
        stats.summarise(frame)


def with_volume_metrics(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with volume-wise columns: per (model, seed, acceleration, volume) values
    drawn at random, repeated on the volume's rows as kdmri evaluate writes them (PSNRs
    of 40 to 50 dB, apart from the slice-pooled ones near 30 dB)."""
    rng = np.random.default_rng(4)
    keys = ["acceleration", "model", "seed", "volume"]
    volumes = frame[keys].drop_duplicates().reset_index(drop=True)
    volumes["volume_psnr"] = rng.uniform(40.0, 50.0, len(volumes))
    volumes["volume_ssim"] = rng.uniform(0.7, 0.95, len(volumes))
    volumes["volume_nmse"] = rng.uniform(0.001, 0.05, len(volumes))
    return frame.merge(volumes, on=keys, how="left")


def test_volume_wise_columns_average_one_value_per_volume_and_seed() -> None:
    frame = with_volume_metrics(metrics_frame())
    summary = stats.summarise(frame.sample(frac=1.0, random_state=1))
    for _, row in summary.iterrows():
        part = frame[(frame["model"] == row["model"])
                     & (frame["acceleration"] == row["acceleration"])]
        for metric in ("psnr", "ssim", "nmse"):
            # one value per (seed, volume): 2 seeds x 6 volumes, each once however many slices
            per_volume = part.groupby(["seed", "volume"])[f"volume_{metric}"].first().to_numpy()
            assert len(per_volume) == 12
            assert row[f"volume_{metric}_mean"] == pytest.approx(per_volume.mean(), rel=1e-12)
            assert row[f"volume_{metric}_std"] == pytest.approx(per_volume.std(), rel=1e-12)
        assert row["n_volumes"] == 6
        # the slice-pooled columns are those of the frame without the volume columns
        assert row["psnr_mean"] == pytest.approx(part["psnr"].mean(), rel=1e-12)
    plain = stats.summarise(metrics_frame())
    columns = [c for c in plain.columns if not c.startswith("volume_")]
    pd.testing.assert_frame_equal(summary[columns], plain[columns])


def test_volume_wise_columns_are_empty_for_older_files_and_must_agree_per_volume() -> None:
    summary = stats.summarise(metrics_frame())  # files written before the volume columns
    assert summary[[c for c in summary.columns if c.startswith("volume_")]].isna().all().all()
    assert (summary["n_volumes"] == 6).all()
    frame = with_volume_metrics(metrics_frame())
    frame.loc[(frame["model"] == "kd") & (frame["volume"] == "vol2")
              & (frame["slice"] == 3) & (frame["seed"] == 1), "volume_psnr"] += 1.0
    with pytest.raises(KdmriError, match=r"model 'kd' at .* different volume-wise metrics .*"
                                         r"seed 1, volume 'vol2'"):
        stats.summarise(frame)


def test_the_paper_tables_say_they_show_slice_pooled_figures() -> None:
    summary = stats.summarise(with_volume_metrics(metrics_frame()))
    note = "Slice-pooled: mean ± std over all test slices pooled over seeds (n_seeds = 2)"
    markdown = tables.to_markdown(summary)
    assert note in markdown and "volume_psnr_mean" in markdown
    assert "slice-pooled" in tables.to_latex(summary).splitlines()[0]
    assert "(slice-pooled)" in tables.to_html(summary, tables.kd_gain(metrics_frame()))
    # the cells are the slice-pooled means
    kd = summary[(summary["model"] == "kd") & (summary["acceleration"] == 4)].iloc[0]
    row = next(line for line in markdown.splitlines() if line.startswith("| kd |"))
    assert f"{kd['psnr_mean']:.2f} ± {kd['psnr_std']:.2f}" in row
    assert f"{kd['volume_psnr_mean']:.2f}" not in row


def test_kd_gain_known_answer_and_wilcoxon() -> None:
    frame = metrics_frame(noise={"kd": 0.1}).sample(frac=1.0, random_state=7)
    gain = tables.kd_gain(frame)
    assert list(gain.columns) == [
        "task", "dataset", "acceleration", "kd_minus_student_psnr", "kd_minus_student_ssim",
        "teacher_minus_student_psnr", "gap_closed", "wilcoxon_p", "teacher_minus_student_p",
        "n_seeds", "gap_closed_seed_mean", "gap_closed_seed_std",
        "kd_minus_student_psnr_seed_std",
    ]
    assert len(gain) == 2
    for _, row in gain.iterrows():
        assert row["teacher_minus_student_psnr"] == pytest.approx(1.0)
        assert row["n_seeds"] == 2
        sub = frame[frame["acceleration"] == row["acceleration"]]
        kd = sub[sub["model"] == "kd"].sort_values(["seed", "volume", "slice"])
        st = sub[sub["model"] == "student"].sort_values(["seed", "volume", "slice"])
        expected_gain = kd["psnr"].mean() - st["psnr"].mean()
        assert row["kd_minus_student_psnr"] == pytest.approx(expected_gain)
        assert row["gap_closed"] == pytest.approx(expected_gain / 1.0)
        assert row["kd_minus_student_ssim"] == pytest.approx(0.005)
        expected_p = wilcoxon(kd["psnr"].to_numpy(), st["psnr"].to_numpy()).pvalue
        assert row["wilcoxon_p"] == pytest.approx(expected_p)
        assert row["wilcoxon_p"] < 0.05
        te = sub[sub["model"] == "teacher"].sort_values(["seed", "volume", "slice"])
        assert row["teacher_minus_student_p"] == pytest.approx(
            wilcoxon(te["psnr"].to_numpy(), st["psnr"].to_numpy()).pvalue)
        seed_gaps = [
            kd.loc[kd["seed"] == s, "psnr"].mean() - st.loc[st["seed"] == s, "psnr"].mean()
            for s in (0, 1)
        ]
        assert row["gap_closed_seed_mean"] == pytest.approx(np.mean(seed_gaps))
        assert row["gap_closed_seed_std"] == pytest.approx(np.std(seed_gaps, ddof=1))


def test_gap_closed_exactly_half_single_seed() -> None:
    gain = tables.kd_gain(metrics_frame(seeds=(3,), accelerations=(4,)))
    row = gain.iloc[0]
    assert row["gap_closed"] == pytest.approx(0.5)
    assert row["n_seeds"] == 1
    assert row["gap_closed_seed_std"] == 0 and row["kd_minus_student_psnr_seed_std"] == 0
    assert row["wilcoxon_p"] < 1e-4  # 30 equal positive differences


def test_no_share_of_a_gap_where_the_teacher_is_not_above_the_student() -> None:
    """On data the models were not trained on the teacher can fall below the student; a
    KD student below both would then "close" more than all of a negative gap. There is
    no gap to close: ``gap_closed`` is NaN (pooled and per seed) while the gains and
    their tests stay; so where the teacher is above the student by noise only."""
    offsets = {"teacher": -0.6, "kd": -0.7}  # the student is at 0
    gain = tables.kd_gain(metrics_frame(offsets=offsets, noise={"kd": 0.1, "teacher": 0.1}))
    for _, row in gain.iterrows():
        assert row["teacher_minus_student_psnr"] == pytest.approx(-0.6, abs=0.05)
        assert row["kd_minus_student_psnr"] == pytest.approx(-0.7, abs=0.05)
        assert np.isnan(row["gap_closed"]) and np.isnan(row["gap_closed_seed_mean"])
        assert row["teacher_minus_student_p"] < 0.05 and row["wilcoxon_p"] < 0.05
    # a teacher above the student by noise only: no share either (its p is shown)
    tiny = tables.kd_gain(metrics_frame(offsets={"teacher": 0.002, "kd": -0.1},
                                        noise={"teacher": 0.5, "kd": 0.1}))
    for _, row in tiny.iterrows():
        assert 0 < row["teacher_minus_student_psnr"] < 0.1
        assert row["teacher_minus_student_p"] >= stats.GAP_ALPHA
        assert np.isnan(row["gap_closed"]) and np.isnan(row["gap_closed_seed_mean"])
    assert np.isnan(stats.gap_closed(29.0, 30.0, 30.0))
    assert np.isnan(stats.gap_closed(29.0, 30.0, 29.5))
    assert stats.gap_closed(30.25, 30.0, 30.5) == pytest.approx(0.5)


def test_kd_gain_needs_all_three_and_pairs_by_key() -> None:
    frame = metrics_frame(models=("zf", "student", "kd"))
    assert tables.kd_gain(frame).empty
    frame = metrics_frame()
    drop = frame.index[(frame["model"] == "kd") & (frame["slice"] == 0)][:1]
    with pytest.raises(KdmriError, match="different slices"):
        tables.kd_gain(frame.drop(drop))


def test_no_difference_gives_nan_p() -> None:
    frame = metrics_frame(offsets={"kd": 0.0})
    assert tables.kd_gain(frame)["wilcoxon_p"].isna().all()


def test_markdown_bold_best_and_underline_second() -> None:
    summary = stats.summarise(metrics_frame())
    text = tables.to_markdown(summary)
    teacher = next(line for line in text.splitlines() if line.startswith("| teacher |"))
    kd = next(line for line in text.splitlines() if line.startswith("| kd |"))
    student = next(line for line in text.splitlines() if line.startswith("| student |"))
    assert teacher.count("**") == 8  # PSNR and SSIM bold at both accelerations
    assert kd.count("<u>") == 4
    assert "**" not in student and "<u>" not in student
    assert "± " in teacher
    assert "5.00M" in teacher
    assert "kd: attention stage, then the imitation stage with as many steps as the " \
           "baseline student" in text
    assert "### recon / demo" in text


def test_latex_escapes_and_marks() -> None:
    frame = metrics_frame(models=("student", "kd", "kd_attention"), accelerations=(4,))
    frame["dataset"] = "fast_mri"
    text = tables.to_latex(stats.summarise(frame))
    assert r"kd\_attention" in text and r"fast\_mri" in text
    body = text.replace(r"\_", "")
    assert "_" not in body
    assert r"\begin{tabular}" in text and r"\end{tabular}" in text
    assert r"$\pm$" in text and "±" not in text
    kd_line = next(line for line in text.splitlines() if line.startswith("kd &"))
    assert kd_line.count(r"\textbf{") == 2
    attention = next(line for line in text.splitlines() if line.startswith(r"kd\_attention"))
    assert attention.count(r"\underline{") == 2
    for line in text.splitlines():
        if line.startswith(("student", "kd")):
            assert line.count("&") == 2 and line.endswith(r"\\")
    assert text.count("{") == text.count("}")


def test_ablation_table() -> None:
    frame = metrics_frame(models=("teacher", "student", "kd", "kd_imitation", "kd_attention"))
    result = tables.ablation(frame)
    assert len(result) == 2
    assert result["kd_imitation_psnr_gain"].to_numpy() == pytest.approx([0.3, 0.3])
    assert result["kd_attention_psnr_gain"].to_numpy() == pytest.approx([0.1, 0.1])
    assert result["kd_psnr_gain"].to_numpy() == pytest.approx([0.5, 0.5])
    assert list(result.columns[:3]) == ["task", "dataset", "acceleration"]
    assert not tables.has_ablation(metrics_frame())


def test_missing_column_names_file(tmp_path) -> None:
    path = tmp_path / "bad.csv"
    metrics_frame().drop(columns=["ssim", "hfen"]).to_csv(path, index=False)
    with pytest.raises(KdmriError, match=r"bad\.csv.*missing columns \['ssim', 'hfen'\]"):
        tables.read_metrics([path])


def test_duplicate_file_refused(tmp_path) -> None:
    paths = write_metrics(metrics_frame(models=("student",)), tmp_path)
    with pytest.raises(KdmriError, match="duplicate"):
        tables.read_metrics([paths[0], paths[0]])


def test_cli_end_to_end(tmp_path, capsys) -> None:
    frame = metrics_frame(models=("zf", "teacher", "student", "kd", "kd_imitation"))
    paths = write_metrics(frame, tmp_path / "metrics")
    out = tmp_path / "tables"
    assert main(["tables", "--metrics", *paths, "--out-dir", str(out)]) == 0
    for name in ("summary.csv", "summary.md", "summary.tex", "kd_gain.csv", "ablation.csv"):
        assert (out / name).stat().st_size > 0
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 10 and summary.columns[0] == "task"
    gain = pd.read_csv(out / "kd_gain.csv")
    assert gain["gap_closed"].to_numpy() == pytest.approx([0.5, 0.5])
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    # a stale ablation table is removed when its inputs are gone
    plain = [p for p in paths if "kd_imitation" not in p]
    assert main(["tables", "--metrics", *plain, "--out-dir", str(out)]) == 0
    assert not (out / "ablation.csv").exists()
    bad = tmp_path / "bad.csv"
    frame.drop(columns=["seed"]).to_csv(bad, index=False)
    assert main(["tables", "--metrics", str(bad), "--out-dir", str(out)]) == 2
    assert "bad.csv" in capsys.readouterr().err

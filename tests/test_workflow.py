"""The whole DAG on config/test.yaml with the real Snakemake, and incremental re-runs."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from tests.workflow_utils import ROOT, planned_jobs, snakemake, write_config

pytestmark = pytest.mark.slow

SUMMARY_COLUMNS = [
    "task", "dataset", "acceleration", "model", "psnr_mean", "psnr_std", "ssim_mean",
    "ssim_std", "nmse_mean", "nmse_std", "hfen_mean", "hfen_std", "n_slices", "params",
    "flops", "latency_ms",
]
KD_GAIN_COLUMNS = [
    "task", "dataset", "acceleration", "kd_minus_student_psnr", "kd_minus_student_ssim",
    "teacher_minus_student_psnr", "gap_closed", "wilcoxon_p",
]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Run config/test.yaml end to end once in a scratch working folder."""
    workdir = tmp_path_factory.mktemp("study")
    config = write_config(workdir / "study.yaml")
    snakemake(workdir, config)
    return workdir, config


def results(workdir):
    return workdir / "results" / "test"


def test_summary_table_rows_and_columns(study):
    workdir, _ = study
    summary = pd.read_csv(results(workdir) / "tables" / "summary.csv")
    assert list(summary.columns[: len(SUMMARY_COLUMNS)]) == SUMMARY_COLUMNS
    for task, acc in (("recon", 4.0), ("sr", 2.0)):
        rows = summary[(summary.task == task) & (summary.acceleration == acc)]
        assert sorted(rows.model) == sorted(["zf", "teacher", "student", "kd"])
    params = summary[summary.task == "recon"].set_index("model")["params"]
    assert params["teacher"] == 141_765 and params["student"] == params["kd"] == 49_285
    assert params["zf"] == 0
    flops = summary[summary.task == "recon"].set_index("model")["flops"]  # per 32 x 32 slice
    assert flops["teacher"] == 2 * 5 * 9 * (32 + 3 * 32 * 32 + 32) * 32 * 32 and flops["zf"] == 0
    assert flops["student"] == flops["kd"] == 2 * 5 * 9 * (32 + 32 * 32 + 32) * 32 * 32
    sr_params = summary[summary.task == "sr"].set_index("model")["params"]
    assert sr_params["teacher"] == 333_569 and sr_params["kd"] == 185_857
    assert (summary.n_slices > 0).all() and summary.psnr_mean.notna().all()
    # fastMRI's volume-wise figures beside them, of the study's one test subject
    assert (summary.n_volumes == 1).all() and summary.volume_psnr_mean.notna().all()
    assert (summary.volume_psnr_mean <= summary.psnr_mean + 1e-9).all()  # Jensen, one volume
    for ext in ("md", "tex"):
        assert (results(workdir) / "tables" / f"summary.{ext}").stat().st_size > 0


def test_kd_gain_table(study):
    workdir, _ = study
    gain = pd.read_csv(results(workdir) / "tables" / "kd_gain.csv")
    assert list(gain.columns[: len(KD_GAIN_COLUMNS)]) == KD_GAIN_COLUMNS
    assert sorted(gain.task) == ["recon", "sr"]
    summary = pd.read_csv(results(workdir) / "tables" / "summary.csv")
    row = gain[gain.task == "recon"].iloc[0]
    psnr = summary[summary.task == "recon"].set_index("model")["psnr_mean"]
    assert row.kd_minus_student_psnr == pytest.approx(psnr["kd"] - psnr["student"], abs=1e-6)


def test_per_slice_metrics_and_figures(study):
    workdir, _ = study
    metrics = pd.read_csv(results(workdir) / "recon/demo/acc4/kd/seed0/metrics.csv")
    assert {"volume", "slice", "psnr", "ssim", "nmse", "hfen"} <= set(metrics.columns)
    for cell in ("recon/demo/acc4/seed0", "sr/demo/acc2/seed0"):
        for name in ("panel", "curves", "mask"):
            png = results(workdir) / "figures" / cell / f"{name}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    provenance = (results(workdir) / "tables" / "provenance.json").read_text()
    assert "torch" in provenance and "config_digest" in provenance


def test_nothing_changed_means_no_job(study):
    workdir, config = study
    assert planned_jobs(workdir, config) == []


def test_changing_kd_alpha_reruns_only_the_imitation_stage(study):
    workdir, _ = study
    changed = write_config(workdir / "alpha.yaml", kd__alpha=0.7)
    jobs = planned_jobs(workdir, changed)
    train_models = {w["model"] for rule, w in jobs if rule.startswith("train_")}
    assert train_models == {"kd"}
    rules = {rule for rule, _ in jobs}
    assert rules <= {"train_imitation", "predict", "evaluate", "tables", "provenance",
                     "figure_panel", "figure_curves"}
    assert {w.get("model") for rule, w in jobs if rule in ("predict", "evaluate")} == {"kd"}


def test_changing_the_student_keeps_data_masks_teacher_and_cache(study):
    workdir, _ = study
    student = {"family": "dccnn", "cascades": 5, "convs": 3, "channels": 16}
    changed = write_config(workdir / "student.yaml", tasks__recon__student=student)
    jobs = planned_jobs(workdir, changed)
    rules = {rule for rule, _ in jobs}
    assert not rules & {"prepare", "mask", "undersample", "cache_teacher"}
    assert "train_teacher" not in {rule for rule, _ in jobs}
    trained = {w["model"] for rule, w in jobs if rule.startswith("train_")}
    assert trained == {"student", "attention", "kd"}
    assert all(w.get("task", "recon") == "recon" for _, w in jobs)


def test_adding_an_acceleration_runs_only_its_jobs_and_the_tables(study):
    workdir, _ = study
    changed = write_config(workdir / "acc.yaml", tasks__recon__accelerations=[4, 6])
    jobs = planned_jobs(workdir, changed)
    per_cell = [(rule, w) for rule, w in jobs if "acc" in w]
    assert per_cell and all(w["acc"] == "6" and w["task"] == "recon" for _, w in per_cell)
    others = {rule for rule, w in jobs if "acc" not in w}
    assert others <= {"tables", "provenance"}


@pytest.fixture(scope="module")
def report(study):
    workdir, config = study
    path = workdir / "report.html"
    snakemake(workdir, config, "--report", str(path))
    return path


def test_report_builds(report):
    html = report.read_text(errors="replace")
    assert report.stat().st_size > 10_000
    for name in ("summary.csv", "summary.html", "kd_gain.csv", "panel.png", "provenance.json"):
        assert name in html


def _browser():
    """Headless Chromium driven by Selenium, or a skip that says what is missing."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("headless Chromium and chromedriver are not installed "
                    "(.ci/run installs Debian's chromium and chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--window-size=1400,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(driver))


@pytest.mark.browser
def test_report_shows_the_summary_table_and_a_figure_in_a_browser(report):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser = _browser()
    wait = WebDriverWait(browser, 20)

    def click(xpath):
        wait.until(ec.element_to_be_clickable((By.XPATH, xpath))).click()

    try:
        browser.get(report.as_uri())
        click("//*[normalize-space(text())='Tables']")
        click("//tr[.//*[contains(text(), 'summary.html')]]//a[@iconname='eye']")
        browser.switch_to.frame(wait.until(ec.presence_of_element_located((By.TAG_NAME, "iframe"))))
        table = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "table.summary")))
        models = [row.find_element(By.TAG_NAME, "td").text
                  for row in table.find_elements(By.TAG_NAME, "tr")[1:]]
        assert models == ["zf", "teacher", "student", "kd"]
        browser.switch_to.default_content()

        click("//*[normalize-space(text())='Results']")
        click("//*[normalize-space(text())='Reconstructions']")
        click("//*[normalize-space(text())='recon demo']")
        click("(//a[@iconname='eye'])[1]")  # results here are listed by their labels
        image = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "img[src^='data:image/png']")))
        wait.until(lambda _: browser.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth", image) > 100)
    finally:
        browser.quit()


def test_readme_mentions_the_config_files():
    text = (ROOT / "README.md").read_text()
    assert "config/test.yaml" in text and "config/config.yaml" in text

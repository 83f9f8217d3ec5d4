"""The SLURM profile against a real one-node SLURM cluster.

The cluster is the tested recipe in ``../shared/slurm`` (``start.sh``: munge, slurmctld,
slurmd, slurmdbd on MariaDB, two fake GPUs; it needs root and Debian packages). The test
starts it (or uses the one already running, which it then leaves running), and skips
with the reason when it cannot. It then runs a reduced ``config/test.yaml`` (recon at 4x
only, every model) with ``snakemake --workflow-profile profiles/slurm`` while the same
config runs locally, and checks:

- every job that is not a local rule went through ``sbatch``: GPU jobs with one GPU
  (``gres/gpu=1``), the others with none, in the config's partition, with its memory and
  time limit;
- the tables equal the local run's (same rows, metrics within 1e-6: CPU training is
  deterministic at one thread, which both runs use);
- a second invocation submits no job;
- a training whose process is killed on the cluster is reported with the paths of its
  logs, and running the command again resumes it from its last epoch checkpoint. The test
  kills the process with SIGKILL, as the kernel's out-of-memory killer does (the job ends
  FAILED; with memory enforced by cgroups SLURM says OUT_OF_MEMORY, at a time limit
  TIMEOUT: the plugin reports these states alike, and the next run resumes alike). A real
  time limit takes minutes (SLURM counts whole minutes), and ``scancel`` is no stand-in:
  plugin 2.8.0 reads sacct's "CANCELLED by <uid>" as still running and waits for ever.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.reliability.helpers import write_prepared_stores
from tests.workflow_utils import ROOT, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

RECIPE = ROOT.parent / "shared" / "slurm"
STATE = Path(os.environ.get("KDMRI_SLURM_STATE", "/tmp/kdmri-slurm"))
PROFILE = ROOT / "profiles" / "slurm"
GPU_RULES = {"train_teacher", "train_student", "train_attention", "train_imitation",
             "cache_teacher", "predict"}
METRICS = ["psnr_mean", "psnr_std", "ssim_mean", "ssim_std", "nmse_mean", "nmse_std",
           "hfen_mean", "hfen_std"]
RESUME_EPOCHS = 8
RESUME_LOG = "results/resume/logs/train/recon_demo_acc4_teacher_seed0.log"
RESUME_TARGET = "results/resume/recon/demo/acc4/teacher/seed0/model.pt"


def _why_no_cluster() -> str | None:
    if not (RECIPE / "start.sh").is_file():
        return f"no SLURM test cluster recipe at {RECIPE}"
    if os.geteuid() != 0:
        return "the SLURM test cluster (../shared/slurm/start.sh) must be started as root"
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm is not installed (pip install -e '.[cluster]')"
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        return "SLURM is not installed and there is no apt-get to install it"
    return None


def _running() -> bool:
    pid_file = STATE / "run" / "slurmctld.pid"
    try:
        pid = pid_file.read_text().strip()
        return Path(f"/proc/{pid}/comm").read_text().strip() == "slurmctld"
    except OSError:
        return False


def _env_file(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^export (\w+)=(.*)$", path.read_text(), flags=re.M))


@pytest.fixture(scope="module")
def cluster():
    reason = _why_no_cluster()
    if reason:
        pytest.skip(reason)
    was_running = _running()
    started = time.monotonic()
    try:
        start = subprocess.run(["bash", str(RECIPE / "start.sh")], capture_output=True,
                               text=True, timeout=600)
    except subprocess.TimeoutExpired:
        pytest.skip("the SLURM test cluster did not start within 10 minutes")
    if start.returncode != 0:
        tail = (start.stdout + start.stderr).strip().splitlines()[-8:]
        pytest.skip("the SLURM test cluster could not start: " + " | ".join(tail))
    env = dict(os.environ, **_env_file(STATE / "env.sh"), OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    yield {"env": env, "start_s": time.monotonic() - started}
    if not was_running:
        subprocess.run(["bash", str(RECIPE / "stop.sh")], capture_output=True, text=True,
                       timeout=300)


def _cmd(workdir: Path, configfile: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
            "--directory", str(workdir), "--configfile", str(configfile), *args]


def _slurm_args(env: dict) -> list[str]:
    """The SLURM profile plus what this cluster needs, as a user would give it."""
    return ["--workflow-profile", str(PROFILE),
            "--default-resources", f"slurm_account={env['KDMRI_SLURM_ACCOUNT']}",
            "--slurm-status-command", env["KDMRI_SLURM_STATUS_COMMAND"],
            # only makes the test faster: the first status check after 2 s, not 40 s
            "--slurm-init-seconds-before-status-checks", "2"]


def _run(cmd: list[str], workdir: Path, env: dict, timeout: float = 900) -> dict:
    started = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                         cwd=workdir)
    return {"rc": out.returncode, "text": out.stdout + out.stderr,
            "wall_s": time.monotonic() - started}


def _submitted(text: str) -> dict[str, str]:
    """SLURM job id -> SLURM log path, from Snakemake's submission messages."""
    return dict(re.findall(r"submitted with SLURM jobid (\d+) \(log: (.+?)\)\.?$", text,
                           flags=re.M))


def _sacct(env: dict, ids) -> list[dict]:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", ",".join(ids), "-o",
                          "JobID,State,Partition,AllocTRES,Timelimit"],
                         capture_output=True, text=True, env=env, check=True)
    keys = ["id", "state", "partition", "tres", "timelimit"]
    return [dict(zip(keys, line.split("|"), strict=True))
            for line in out.stdout.splitlines() if line.strip()]


def _all_jobs(env: dict) -> set[str]:
    """Ids of the jobs the cluster knows: sacct's (where accounting runs) and squeue's
    (finished jobs stay there for MinJobAge = 300 s)."""
    sacct = subprocess.run(["sacct", "-a", "-X", "-n", "-P", "-o", "JobID", "-S", "2000-01-01"],
                           capture_output=True, text=True, env=env)
    squeue = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i"], capture_output=True,
                            text=True, env=env, check=True)
    return set(squeue.stdout.split()) | (set(sacct.stdout.split()) if sacct.returncode == 0
                                         else set())


def _study(partition: str) -> dict:
    """config/test.yaml reduced to recon at 4x, with the cluster resources of this test."""
    config = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    del config["tasks"]["sr"]
    config["resources"] = {"train_threads": 1, "threads": 1, "mem_mb": 2000, "runtime": 10,
                           "cpu_mem_mb": 1000, "cpu_runtime": 10, "partition": partition}
    return config


@pytest.fixture(scope="module")
def study(cluster, tmp_path_factory):
    """The same study through SLURM and locally (at the same time), then SLURM again."""
    env = cluster["env"]
    root = tmp_path_factory.mktemp("slurm")
    configfile = root / "study.yaml"
    configfile.write_text(yaml.safe_dump(_study(env["KDMRI_SLURM_PARTITION"])))
    local_dir, slurm_dir = root / "local", root / "slurm"
    local_dir.mkdir()
    slurm_dir.mkdir()
    with open(root / "local.out", "w") as log:
        local = subprocess.Popen(_cmd(local_dir, configfile, "--cores", "2"), stdout=log,
                                 stderr=subprocess.STDOUT, env=env, cwd=local_dir)
    try:
        first = _run(_cmd(slurm_dir, configfile, *_slurm_args(env)), slurm_dir, env)
    finally:
        local_rc = local.wait(timeout=900)
    jobs_before = _all_jobs(env)
    second = _run(_cmd(slurm_dir, configfile, *_slurm_args(env)), slurm_dir, env)
    time.sleep(1)
    return {
        "env": env, "first": first, "second": second, "local_dir": local_dir,
        "slurm_dir": slurm_dir, "local_rc": local_rc, "local_text": (root / "local.out").read_text(),
        "new_jobs": _all_jobs(env) - jobs_before,
    }


def _job_stats(text: str) -> dict[str, int]:
    """rule -> jobs, from the "Job stats" table Snakemake prints before it starts."""
    table = text.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M))
    return {rule: int(n) for rule, n in counts.items() if rule != "total"}


def test_the_study_runs_through_slurm(study, cluster):
    first = study["first"]
    assert first["rc"] == 0, first["text"][-6000:]
    assert study["local_rc"] == 0, study["local_text"][-4000:]
    local_rules = {"all", "mask", "tables", "provenance", "figure_panel", "figure_curves",
                   "figure_mask"}
    ran_here = set(re.findall(r"^localrule (\w+):", first["text"], flags=re.M))
    assert ran_here == local_rules, ran_here
    planned = _job_stats(first["text"])
    assert planned["train_imitation"] == 1 and planned["predict"] == 4, planned
    submitted = _submitted(first["text"])
    assert len(submitted) == sum(n for rule, n in planned.items() if rule not in local_rules)
    states = {row["state"] for row in _sacct(study["env"], submitted)}
    assert states == {"COMPLETED"}
    print(f"\nSLURM test cluster start: {cluster['start_s']:.0f} s; study through SLURM: "
          f"{first['wall_s']:.0f} s ({len(submitted)} SLURM jobs); "
          f"second invocation: {study['second']['wall_s']:.0f} s")


def test_gpu_jobs_ask_for_one_gpu_and_the_others_for_none(study):
    submitted = _submitted(study["first"]["text"])
    partition = study["env"]["KDMRI_SLURM_PARTITION"]
    rows = {row["id"]: row for row in _sacct(study["env"], submitted)}
    assert set(rows) == set(submitted)
    for job_id, log in submitted.items():
        # results/logs/slurm/rule_<rule>/<wildcards>/<id>.log
        assert "/results/logs/slurm/rule_" in log and log.endswith(f"/{job_id}.log"), log
        rule, wildcards = re.search(r"/rule_(\w+?)/([^/]*)/\d+\.log$", log).groups()
        gpu_job = rule in GPU_RULES and not (rule == "predict" and "_zf_" in wildcards)
        row = rows[job_id]
        assert ("gres/gpu=1" in row["tres"]) == gpu_job, (rule, wildcards, row)
        assert row["partition"] == partition, row
        assert f"mem={2000 if gpu_job else 1000}M" in row["tres"], (rule, row)
        assert row["timelimit"] == "00:10:00", row


def _table(workdir: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(workdir / "results" / "test" / "tables" / name)


def test_tables_equal_those_of_a_local_run(study):
    keys = ["task", "dataset", "acceleration", "model"]
    local = _table(study["local_dir"], "summary.csv").sort_values(keys).reset_index(drop=True)
    slurm = _table(study["slurm_dir"], "summary.csv").sort_values(keys).reset_index(drop=True)
    assert len(local) == 4
    pd.testing.assert_frame_equal(local[keys], slurm[keys])
    pd.testing.assert_frame_equal(local[["n_slices", "params"]], slurm[["n_slices", "params"]])
    pd.testing.assert_frame_equal(local[METRICS], slurm[METRICS], check_exact=False,
                                  rtol=0, atol=1e-6)
    gain_local = _table(study["local_dir"], "kd_gain.csv")
    gain_slurm = _table(study["slurm_dir"], "kd_gain.csv")
    assert list(gain_local.columns) == list(gain_slurm.columns) and len(gain_local) == 1
    numbers = [c for c in gain_local.columns if gain_local[c].dtype.kind == "f"]
    pd.testing.assert_frame_equal(gain_local[numbers], gain_slurm[numbers], check_exact=False,
                                  rtol=0, atol=1e-6)


def test_a_second_invocation_submits_no_job(study):
    second = study["second"]
    assert second["rc"] == 0, second["text"][-4000:]
    assert "Nothing to be done" in second["text"], second["text"][-4000:]
    assert _submitted(second["text"]) == {}
    assert study["new_jobs"] == set()


# ------------------------------------------------------------------ failure and resume
def _training_pids(workdir: Path, out_dir: str) -> list[int]:
    """Processes of ``kdmri train --out-dir <out_dir>`` running in ``workdir``."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            cwd = os.readlink(proc / "cwd")
        except (OSError, ValueError):
            continue
        if "train" in argv and out_dir in argv and Path(cwd) == workdir:
            pids.append(int(proc.name))
    return pids


def _wait_for(condition, timeout: float, what: str, process: subprocess.Popen) -> None:
    wait_for(condition, timeout, what, process, poll_s=0.1)


@pytest.fixture(scope="module")
def killed_and_resumed(cluster, tmp_path_factory):
    """A teacher trained through SLURM, its process killed after epoch 1, then the same
    command again. The inputs are made locally first (prepared stores written by the test)."""
    env = cluster["env"]
    root = tmp_path_factory.mktemp("slurm_resume")
    workdir = root / "study"
    workdir.mkdir()
    config = _study(env["KDMRI_SLURM_PARTITION"])
    config.update(results="results/resume", models=["zf", "teacher"])
    config["train"]["epochs"] = RESUME_EPOCHS
    configfile = root / "study.yaml"
    configfile.write_text(yaml.safe_dump(config))
    write_prepared_stores(workdir / "results/resume/data/demo",
                          {"train": [8, 8, 8], "val": [8], "test": [4]}, (32, 32))
    inputs = "results/resume/recon/demo/acc4/inputs/seed0/train.h5"
    record = {"inputs": _run(_cmd(workdir, configfile, "--cores", "2", inputs), workdir, env)}
    assert record["inputs"]["rc"] == 0, record["inputs"]["text"][-3000:]

    command = _cmd(workdir, configfile, *_slurm_args(env), RESUME_TARGET)
    output = root / "first.out"
    with open(output, "w") as out:
        first = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                 cwd=workdir)
    try:
        log = workdir / RESUME_LOG
        _wait_for(lambda: log.exists() and re.search(rf"^epoch 1/{RESUME_EPOCHS} ",
                                                      log.read_text(), flags=re.M),
                  300, "the end of epoch 1", first)
        job_id = next(iter(_submitted(output.read_text())))
        pids = _training_pids(workdir, str(Path(RESUME_TARGET).parent))
        assert len(pids) == 1, pids
        os.kill(pids[0], signal.SIGKILL)
        first.wait(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    record.update(first_rc=first.returncode, first_text=output.read_text(), job_id=job_id,
                  log_at_kill=(workdir / RESUME_LOG).read_text())
    record["second"] = _run(command, workdir, env)
    record.update(log_after=(workdir / RESUME_LOG).read_text(), workdir=workdir)
    return record


def test_a_killed_cluster_job_is_reported_with_its_logs(killed_and_resumed):
    record = killed_and_resumed
    text, job_id = record["first_text"], record["job_id"]
    assert record["first_rc"] != 0, text[-4000:]
    assert "done:" not in record["log_at_kill"]
    assert f"SLURM-job '{job_id}' failed, SLURM status is: 'FAILED'" in text, text[-4000:]
    assert "Error in rule train_teacher" in text and RESUME_LOG in text, text[-4000:]
    slurm_log = _submitted(text)[job_id]
    assert slurm_log in text.split("Error in rule train_teacher", 1)[1], text[-4000:]
    assert Path(slurm_log).is_file()  # SLURM's log of a failed job is kept
    assert Path(slurm_log).is_relative_to(record["workdir"] / "results" / "logs" / "slurm")


def test_running_again_resumes_from_the_last_checkpoint(killed_and_resumed):
    second = killed_and_resumed["second"]
    assert second["rc"] == 0, second["text"][-4000:]
    log = killed_and_resumed["log_after"]
    found = re.search(r"resuming from .*last\.pt after epoch (\d+)", log)
    assert found, log
    resumed_after = int(found.group(1))
    assert 1 <= resumed_after < RESUME_EPOCHS
    epochs = [int(e) for e in re.findall(rf"^epoch (\d+)/{RESUME_EPOCHS} ", log, flags=re.M)]
    assert epochs == list(range(resumed_after + 1, RESUME_EPOCHS + 1))
    assert (killed_and_resumed["workdir"] / RESUME_TARGET).is_file()

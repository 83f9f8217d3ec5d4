"""The Snakemake profiles: the workstation profile (two trainings on two GPUs at once) and the
SLURM profile's settings. The SLURM profile against a real cluster: ``test_slurm.py``.

Two GPUs are simulated on the CPU with ``KDMRI_FAKE_GPUS=2`` (the allocator then claims and
logs its file-lock slots as on a GPU machine, but trains on the CPU) and a private
``KDMRI_LOCK_DIR``. Three trainings are ready at once and Snakemake has three cores, so only
the GPU count can hold the third back. Which jobs ran at the same time is read from
Snakemake's own log (the order of its job-start and "Finished jobid" entries), which slot
each claimed from the jobs' logs. (The lock itself, with bare processes:
``tests/reliability/test_gpu_slots.py``.)
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.reliability.helpers import write_prepared_stores
from tests.workflow_utils import ROOT, write_config

PROFILES = ROOT / "profiles"

GPU_STUDY = {
    "results": "results/gpus",
    "device": "auto",
    "seeds": [0],
    "models": ["zf", "teacher", "student"],
    "datasets": {"demo": {"format": "demo", "size": 32}},
    "tasks": {"recon": {"datasets": ["demo"], "accelerations": [4, 8]}},
    "train": {"epochs": 4, "batch_size": 4},
}
CELL = "results/gpus/recon/demo/acc{acc}/{model}/seed0/model.pt"
#: The three trainings that become ready together once the inputs exist.
TRAININGS = [("4", "teacher"), ("4", "student"), ("8", "student")]
#: Slices per volume of the prepared stores the test writes (32 x 32 images).
VOLUMES = {"train": [8, 8, 8], "val": [8], "test": [4]}


def _entries_are_commented(path: Path) -> list[str]:
    """Top-level keys of a profile that have no comment line right above them."""
    lines = path.read_text().splitlines()
    bare = []
    for i, line in enumerate(lines):
        if re.match(r"^[a-z][\w-]*:", line):
            if i == 0 or not lines[i - 1].lstrip().startswith("#"):
                bare.append(line.split(":")[0])
    return bare


# ------------------------------------------------------------------------ the profiles
def test_default_profile_is_commented_and_sets_no_gpu_limit():
    path = PROFILES / "default" / "config.yaml"
    profile = yaml.safe_load(path.read_text())
    assert _entries_are_commented(path) == []
    # A GPU limit here would stop a machine without a GPU from training (gpu=0) or make it
    # train one model at a time; --resources gpu=N is given on machines with GPUs.
    assert "resources" not in profile and "executor" not in profile
    assert profile["cores"] == "all"


def test_slurm_profile_is_commented_and_logs_under_results():
    path = PROFILES / "slurm" / "config.yaml"
    profile = yaml.safe_load(path.read_text())
    assert _entries_are_commented(path) == []
    assert profile["executor"] == "slurm"
    assert profile["slurm-logdir"] == "results/logs/slurm"
    # GPUs and cluster resources come from the rules (the study config), not from here
    assert "default-resources" not in profile and "set-resources" not in profile


def _dry_run_jobs(workdir: Path, configfile: Path, *args: str) -> dict[str, list[dict]]:
    """rule -> [{"resources": {...}, "wildcards": {...}}] of a dry run."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
           "--directory", str(workdir), "--configfile", str(configfile), "--dry-run", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=workdir)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    jobs: dict[str, list[dict]] = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out.stdout + out.stderr):
        head = re.match(r"(local)?rule (\w+):", block.strip())
        if not head:
            continue
        fields = {}
        for key in ("resources", "wildcards"):
            found = re.search(rf"^\s+{key}: (.*)$", block, flags=re.M)
            fields[key] = dict(item.split("=", 1) for item in found.group(1).split(", ")) \
                if found else {}
        jobs.setdefault(head.group(2), []).append(fields)
    return jobs


@pytest.mark.skipif(importlib.util.find_spec("snakemake_executor_plugin_slurm") is None,
                    reason="snakemake-executor-plugin-slurm is not installed "
                           "(pip install -e '.[cluster]')")
def test_slurm_profile_dry_run_gives_gpus_partitions_and_local_rules(tmp_path):
    """The profile parses, and each job asks for what the study config says: GPU jobs one
    GPU in the GPU partition, the others none (which jobs stay local: test_slurm.py)."""
    configfile = write_config(
        tmp_path / "study.yaml",
        resources={"partition": "cpuq", "gpu_partition": "gpuq", "mem_mb": 3000,
                   "runtime": 30, "cpu_mem_mb": 1500, "cpu_runtime": 20})
    jobs = _dry_run_jobs(tmp_path, configfile, "--workflow-profile", str(PROFILES / "slurm"))
    gpu_rules = {"train_teacher", "train_student", "train_attention", "train_imitation",
                 "cache_teacher"}
    for rule, found in jobs.items():
        for job in found:
            res = job["resources"]
            if rule in gpu_rules or (rule == "predict" and job["wildcards"]["model"] != "zf"):
                assert (res.get("gpu"), res.get("slurm_partition")) == ("1", "gpuq"), rule
                assert (res["mem_mb"], res["runtime"]) == ("3000", "30"), rule
            elif rule in ("prepare", "undersample", "evaluate", "predict"):
                assert res.get("gpu", "0") == "0" and res["slurm_partition"] == "cpuq", rule
                assert (res["mem_mb"], res["runtime"]) == ("1500", "20"), rule
    assert {"train_imitation", "predict", "evaluate", "prepare"} <= set(jobs)


# ------------------------------------------------------------------------ two GPUs
def _training_runs(text: str) -> list[tuple[str, int, str]]:
    """('start' | 'end', jobid, log path) of every training job, in Snakemake's log order."""
    events, logs, current = [], {}, None
    for line in text.splitlines():
        head = re.match(r"^(?:local)?rule (\w+):", line)
        if head:
            current = {"rule": head.group(1)}
            continue
        field = re.match(r"^\s+(log|jobid): (.*)$", line)
        if current is not None and field:
            current[field.group(1)] = field.group(2)
            if field.group(1) == "jobid":
                if current["rule"].startswith("train_"):
                    jobid = int(current["jobid"])
                    logs[jobid] = current["log"]
                    events.append(("start", jobid, current["log"]))
                current = None
            continue
        done = re.match(r"^Finished jobid: (\d+)", line)
        if done and int(done.group(1)) in logs:
            events.append(("end", int(done.group(1)), logs[int(done.group(1))]))
    return events


def _overlaps(events) -> tuple[int, list[tuple[str, str]], int]:
    """(most trainings running at once, pairs of logs that ran at the same time, trainings
    that started only after another had finished)."""
    running: list[str] = []
    most, pairs, after_a_finish, finished = 0, [], 0, 0
    for kind, _, log in events:
        if kind == "start":
            pairs += [(other, log) for other in running]
            running.append(log)
            most = max(most, len(running))
            after_a_finish += finished > 0
        else:
            running.remove(log)
            finished += 1
    return most, pairs, after_a_finish


def _slot(log_text: str) -> str:
    found = re.findall(r"gpu slot: claimed slot (\d+) of 2", log_text)
    assert len(found) == 1, log_text
    return found[0]


@pytest.fixture(scope="module")
def two_gpus(tmp_path_factory):
    """The three trainings with --resources gpu=2, then again (forced) with gpu=3: more
    jobs than GPUs, as when --resources overstates the machine."""
    root = tmp_path_factory.mktemp("two_gpus")
    workdir = root / "study"
    workdir.mkdir()
    configfile = root / "study.yaml"
    configfile.write_text(yaml.safe_dump(GPU_STUDY))
    write_prepared_stores(workdir / "results/gpus/data/demo", VOLUMES, (32, 32))
    env = dict(os.environ, KDMRI_FAKE_GPUS="2", KDMRI_LOCK_DIR=str(root / "locks"),
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    targets = [CELL.format(acc=acc, model=model) for acc, model in TRAININGS]
    logs = [workdir / f"results/gpus/logs/train/recon_demo_acc{acc}_{model}_seed0.log"
            for acc, model in TRAININGS]

    def run(*args):
        # targets before --resources, which takes every following word as a resource
        cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
               "--directory", str(workdir), "--configfile", str(configfile), "--cores", "3",
               *targets, *args]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env,
                             cwd=workdir)
        return {"out": out, "text": out.stdout + out.stderr,
                "logs": {str(p.relative_to(workdir)): p.read_text() for p in logs if p.exists()}}

    capped = run("--resources", "gpu=2")
    oversubscribed = run("--forcerun", "train_teacher", "train_student", "--resources", "gpu=3")
    return {"capped": capped, "oversubscribed": oversubscribed}


def _held(log_text: str) -> tuple[str, float, float]:
    """(slot, claimed at, released at) from a training log's time-stamped slot lines."""
    claimed = re.findall(r"gpu slot: claimed slot (\d+) of 2 \(.*\) at ([0-9.]+)", log_text)
    released = re.findall(r"gpu slot: released slot (\d+) at ([0-9.]+)", log_text)
    assert len(claimed) == 1 and len(released) == 1, log_text
    assert claimed[0][0] == released[0][0], log_text
    return claimed[0][0], float(claimed[0][1]), float(released[0][1])


@pytest.mark.slow
def test_two_concurrent_trainings_take_different_gpus_and_a_third_waits(two_gpus):
    capped = two_gpus["capped"]
    assert capped["out"].returncode == 0, capped["text"][-4000:]
    assert f"workflow specific profile {PROFILES / 'default'}" in capped["text"]
    events = _training_runs(capped["text"])
    assert sorted(kind for kind, _, _ in events) == ["end"] * 3 + ["start"] * 3, events
    most, _, _ = _overlaps(events)
    assert most <= 2, events  # three cores, two GPUs: at most two trainings at a time
    held = {log: _held(text) for log, text in capped["logs"].items()}
    assert len(held) == 3, capped["logs"]
    # from the jobs' own time stamps: the trainings that held a GPU at the same time ...
    together = [(a, b) for a, b in itertools.combinations(sorted(held), 2)
                if held[a][1] < held[b][2] and held[b][1] < held[a][2]]
    assert together, held
    for a, b in together:  # ... held different GPUs
        assert held[a][0] != held[b][0], (a, b, held)
    # ... and the third claimed its GPU only after another training had given one back
    last = max(held, key=lambda log: held[log][1])
    assert any(held[other][2] <= held[last][1] for other in held if other != last), held
    for text in capped["logs"].values():  # Snakemake held it back, so no lock was ever busy
        assert "busy" not in text and re.search(r"^done: ", text, flags=re.M), text


@pytest.mark.slow
def test_more_jobs_than_gpus_wait_on_the_gpu_lock(two_gpus):
    over = two_gpus["oversubscribed"]
    assert over["out"].returncode == 0, over["text"][-4000:]
    most, _, _ = _overlaps(_training_runs(over["text"]))
    assert most == 3  # --resources gpu=3 let all three start ...
    waited = [log for log, text in over["logs"].items()
              if "gpu slot: all 2 slots busy, waiting" in text]
    assert len(waited) == 1, over["logs"]  # ... and the third waited on the lock
    text = over["logs"][waited[0]]
    assert text.index("busy, waiting") < text.index("claimed slot") < text.index("epoch 1/")
    holders = [_slot(t) for log, t in over["logs"].items() if log not in waited]
    assert sorted(holders) == ["0", "1"]
    assert all(re.search(r"^done: ", t, flags=re.M) for t in over["logs"].values())


# ------------------------------------------------------- two GPUs, two jobs on each
#: Four trainings that become ready together: --resources gpu=4 counts slots, four of them
#: with resources.jobs_per_gpu 2 on two GPUs.
FOUR_TRAININGS = [("4", "teacher"), ("8", "teacher"), ("4", "student"), ("8", "student")]


def _holdings(log_text: str) -> tuple[int, int, float, float]:
    """(slot, GPU, claimed at, released at) from a training log's slot lines."""
    claimed = re.findall(r"gpu slot: claimed slot (\d+) of 4 \(GPU (\d+); .*\) at ([0-9.]+)",
                         log_text)
    released = re.findall(r"gpu slot: released slot (\d+) at ([0-9.]+)", log_text)
    assert len(claimed) == 1 and len(released) == 1, log_text
    (slot, gpu, start), (freed, end) = claimed[0], released[0]
    assert slot == freed, log_text
    return int(slot), int(gpu), float(start), float(end)


@pytest.mark.slow
def test_two_jobs_per_gpu_run_four_trainings_two_on_each_gpu(tmp_path):
    workdir = tmp_path / "study"
    workdir.mkdir()
    study = dict(GPU_STUDY, train={"epochs": 12, "batch_size": 4},
                 resources={"jobs_per_gpu": 2})
    configfile = tmp_path / "study.yaml"
    configfile.write_text(yaml.safe_dump(study))
    write_prepared_stores(workdir / "results/gpus/data/demo", VOLUMES, (32, 32))
    env = dict(os.environ, KDMRI_FAKE_GPUS="2", KDMRI_LOCK_DIR=str(tmp_path / "locks"),
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("KDMRI_JOBS_PER_GPU", None)  # the workflow sets it from the study config
    targets = [CELL.format(acc=acc, model=model) for acc, model in FOUR_TRAININGS]
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
         "--directory", str(workdir), "--configfile", str(configfile), "--cores", "4",
         *targets, "--resources", "gpu=4"],
        capture_output=True, text=True, timeout=600, env=env, cwd=workdir)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    held = {}
    for acc, model in FOUR_TRAININGS:
        log = workdir / f"results/gpus/logs/train/recon_demo_acc{acc}_{model}_seed0.log"
        held[(acc, model)] = _holdings(log.read_text())
    assert sorted(slot for slot, _, _, _ in held.values()) == [0, 1, 2, 3]
    assert all(gpu == slot // 2 for slot, gpu, _, _ in held.values())
    # the four held their slots at one instant: the last claim came before the first release
    assert max(start for _, _, start, _ in held.values()) < min(end for _, _, _, end in held.values())
    # and no GPU ever had three: at each claim, count the jobs holding the same GPU
    for _, gpu, start, _ in held.values():
        on_gpu = [s for s, g, a, b in held.values() if g == gpu and a <= start < b]
        assert len(on_gpu) <= 2, held

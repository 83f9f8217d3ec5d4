"""The workflow's job priorities (kdmri.priorities): the critical path first.

The formula tests check the chains and the costs against sums written out here. The
scheduling test runs the demo study's job graph as sleep jobs under Snakemake with
``--cores 2`` and the priorities the workflow gives the demo study, and checks from the
times the jobs record that no job that unlocks training waited while a training job
started, and that the cores were kept busy: wall time within 1.15 x the jobs' time / 2.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kdmri.config import load_config, validate
from kdmri.models import build_model, flops_per_slice
from kdmri.priorities import (
    UNIT,
    StudyPriorities,
    cell_graph,
    chains,
    priorities,
    training_cost,
)
from kdmri.specs import model_spec
from tests.workflow_utils import ROOT

STUDIES = sorted((ROOT / "config").glob("*.yaml"))


def test_chain_is_the_cost_of_the_longest_path_to_the_end():
    cost = {"a": 1.0, "b": 2.0, "c": 5.0, "d": 1.5, "e": 0.5}
    waiting = {"a": ["b", "c"], "b": ["d"], "c": ["e"]}
    # a -> c -> e is 1 + 5 + 0.5 = 6.5 against a -> b -> d, 1 + 2 + 1.5 = 4.5
    assert chains(cost, waiting) == {"a": 6.5, "b": 3.5, "c": 5.5, "d": 1.5, "e": 0.5}


def test_unlocking_jobs_rank_above_every_training_job():
    cost = {"data_1": 0.0, "data_2": 0.0, "long": 3.0, "after_long": 2.0, "short": 1.0}
    waiting = {"data_1": ["long"], "long": ["after_long"], "data_2": ["short"]}
    ranks = priorities(cost, waiting, unlocking=["data_1", "data_2"])
    top = 5.0  # the largest chain of a training job: long -> after_long
    assert ranks == {"data_1": round((5.0 + top) / UNIT), "data_2": round((1.0 + top) / UNIT),
                     "long": round(5.0 / UNIT), "after_long": round(2.0 / UNIT),
                     "short": round(1.0 / UNIT)}
    assert min(ranks["data_1"], ranks["data_2"]) > max(ranks["long"], ranks["short"])


def test_a_cycle_is_refused():
    with pytest.raises(ValueError, match="cycle"):
        chains({"a": 1.0, "b": 1.0}, {"a": ["b"], "b": ["a"]})


def _gflop(net: dict, size: int) -> float:
    return flops_per_slice(build_model(net), size, size) / 1e9


def test_demo_costs_are_epochs_times_the_step_flops():
    config = validate(load_config(ROOT / "config" / "config.yaml"))
    for task in ("recon", "sr"):
        teacher = model_spec(config, task, "teacher", 0)
        student = model_spec(config, task, "student", 0)
        t_flops, s_flops = _gflop(teacher["net"], 64), _gflop(student["net"], 64)
        # forward + backward = 3 forward passes; the imitation stage reads the teacher cache
        assert training_cost(config, task, "demo", "teacher") == pytest.approx(
            teacher["train"]["epochs"] * 3 * t_flops)
        for model in ("student", "attention", "kd"):
            epochs = model_spec(config, task, model, 0)["train"]["epochs"]
            assert training_cost(config, task, "demo", model) == pytest.approx(
                epochs * 3 * s_flops)
        cost, _ = cell_graph(config, task, "demo")
        assert cost[("cache", "teacher")] == pytest.approx(t_flops)


def test_a_feature_method_counts_its_frozen_teacher_and_sft_its_branches():
    config = validate(load_config(ROOT / "config" / "methods.yaml"))
    spec = model_spec(config, "recon", "hint_fitnets", 0)
    expected = spec["train"]["epochs"] * (3 * _gflop(spec["net"], 64)
                                          + _gflop(spec["teacher_net"], 64))
    assert training_cost(config, "recon", "demo", "hint_fitnets") == pytest.approx(expected)
    sft = model_spec(config, "recon", "sft_teacher", 0)
    cascades = sft["student_net"]["cascades"]
    # branch k runs the student's cascades k+1..K: (K-1)K/2 cascades of K per network
    branches = (cascades - 1) * cascades / 2 / cascades * _gflop(sft["student_net"], 64)
    assert training_cost(config, "recon", "demo", "sft_teacher") == pytest.approx(
        sft["train"]["epochs"] * 3 * (_gflop(sft["net"], 64) + branches))


def test_demo_priorities_put_the_longest_chain_first():
    table = StudyPriorities(validate(load_config(ROOT / "config" / "config.yaml"))).table
    sr = {m: table[("train", "sr", "demo", m)] for m in ("teacher", "attention", "kd", "student")}
    recon = {m: table[("train", "recon", "demo", m)] for m in ("teacher", "attention", "kd")}
    assert sr["teacher"] > sr["attention"] > sr["kd"] and recon["teacher"] > recon["attention"]
    # the SR chain (VDSR, 64 channels) is the demo's longest: its teacher goes first
    assert sr["teacher"] == max(v for k, v in table.items() if k[0] == "train")


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_every_study_ranks_every_job_that_unlocks_training_above_training(path):
    config = validate(load_config(path), source=str(path))
    table = StudyPriorities(config).table
    training = [v for k, v in table.items() if k[0] == "train"]
    unlocking = [v for k, v in table.items() if k[0] != "train"]
    assert training and min(unlocking) > max(training)
    assert min(training) > 0
    # every trained model of every cell has a priority, compression students included
    for task, settings in config["tasks"].items():
        for dataset in settings["datasets"]:
            cost, waiting = cell_graph(config, task, dataset)
            for node in cost:
                assert (node[0], task, dataset, *node[1:]) in table
            # a job ranks above the jobs waiting for it (a teacher's cache, which unlocks
            # training, ranks above the teacher too)
            for node, after in waiting.items():
                for later in after:
                    if node[0] == "train" and later[0] != "train":
                        continue
                    assert (table[(node[0], task, dataset, *node[1:])]
                            > table[(later[0], task, dataset, *later[1:])])


# --- the demo's job graph as sleep jobs, run by Snakemake on 2 cores -----------------------

CORES = 2
#: Seconds of sleep per GFLOP per training slice of the cost model (the demo's training
#: then sums to about 38 s), and the seconds of each job that unlocks training.
SECONDS_PER_GFLOP = 0.1
UNLOCK_SECONDS = 1.0
#: A training job that starts this long before the data job it overtakes is not counted:
#: two jobs started in one scheduling round (every job here runs at least a second).
SAME_ROUND_S = 0.5

SNAKEFILE = textwrap.dedent(
    """
    import json

    JOBS = json.loads({jobs!r})


    rule all:
        input:
            [f"done/{{name}}.txt" for name in JOBS],


    rule job:
        input:
            lambda w: [f"done/{{d}}.txt" for d in JOBS[w.name]["after"]],
        output:
            "done/{{name}}.txt",
        priority: lambda w: JOBS[w.name]["priority"]
        threads: 1
        params:
            seconds=lambda w: JOBS[w.name]["seconds"],
        shell:
            "echo $(date +%s.%N) > {{output}}.tmp; sleep {{params.seconds}};"
            " echo $(date +%s.%N) >> {{output}}.tmp; mv {{output}}.tmp {{output}}"
    """
)


def demo_jobs() -> dict[str, dict]:
    """The demo study's jobs that train or unlock training (one per cell, acceleration
    and kind, with its priority as the workflow gives it), keyed by a file name."""
    config = validate(load_config(ROOT / "config" / "config.yaml"))
    table = StudyPriorities(config).table
    jobs = {}
    for task, settings in config["tasks"].items():
        for dataset in settings["datasets"]:
            jobs[f"prepare_{dataset}"] = {"priority": table[("prepare", dataset)],
                                          "seconds": UNLOCK_SECONDS, "after": [], "kind": "prepare"}
            cost, waiting = cell_graph(config, task, dataset)
            for acc in settings["accelerations"]:
                def name(node, acc=acc, task=task, dataset=dataset):
                    return "_".join([node[0], task, dataset, f"acc{acc:g}", *node[1:]])

                for node, value in cost.items():
                    unlocks = node[0] != "train"
                    jobs[name(node)] = {
                        "priority": table[(node[0], task, dataset, *node[1:])],
                        "seconds": UNLOCK_SECONDS if unlocks else round(value * SECONDS_PER_GFLOP, 2),
                        "after": [f"prepare_{dataset}"] if node == ("inputs",) else [],
                        "kind": node[0],
                    }
                for node, later in waiting.items():
                    for other in later:
                        jobs[name(other)]["after"].append(name(node))
    return jobs


def _times(folder: Path, jobs: dict) -> dict[str, tuple[float, float]]:
    return {name: tuple(float(t) for t in (folder / f"{name}.txt").read_text().split())
            for name in jobs}


def test_demo_graph_on_two_cores_runs_the_critical_path_first(tmp_path):
    jobs = demo_jobs()
    assert sum(j["kind"] == "train" for j in jobs.values()) == 3 * 4  # 3 cells, 4 trainings
    (tmp_path / "Snakefile").write_text(SNAKEFILE.format(jobs=json.dumps(jobs)))
    began = time.time()
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", str(CORES), "--directory", str(tmp_path),
         "--snakefile", str(tmp_path / "Snakefile"), "--quiet", "all"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert time.time() - began < 120
    times = _times(tmp_path / "done", jobs)
    timeline = "\n".join(f"{s - min(t[0] for t in times.values()):6.2f} "
                         f"{e - min(t[0] for t in times.values()):6.2f} {name}"
                         for name, (s, e) in sorted(times.items(), key=lambda kv: kv[1]))
    # no job that unlocks training waited while a training job started in its place
    for name, job in jobs.items():
        if job["kind"] == "train" or not job["after"]:
            continue
        ready = max(times[d][1] for d in job["after"])
        overtaking = [other for other, o in jobs.items() if o["kind"] == "train"
                      and ready <= times[other][0] < times[name][0] - SAME_ROUND_S]
        assert not overtaking, f"{name} waited while {overtaking} started:\n{timeline}"
    # and the two cores were busy: wall time within 1.15 x the jobs' own time / cores
    wall = max(e for _, e in times.values()) - min(s for s, _ in times.values())
    work = sum(e - s for s, e in times.values())
    assert wall <= 1.15 * work / CORES, (
        f"wall {wall:.1f} s for {work:.1f} s of work on {CORES} cores:\n{timeline}")

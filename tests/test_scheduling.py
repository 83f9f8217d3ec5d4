"""Snakemake never runs more jobs than ``--cores`` allows.

Snakemake 9.10 to 9.16 lost track of free cores whenever exactly one job was ready in a
scheduling round, and then ran more jobs than cores: on a 2-core machine the demo study ran
three one-thread trainings at once. Every timing of a study depends on this, so it is
checked here on the installed Snakemake with a DAG of sleep jobs that record when they ran.

The DAG mixes the two situations that matter: jobs that become ready one at a time (a chain,
each link ready only when the one before it ends, while long independent jobs run beside
it) and jobs that become ready together (a fan-out), with one- and two-thread jobs. The test
asserts that the threads of the jobs running at any instant never exceed the cores given.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

CORES = 2

#: The DAG: ``long_*`` run beside a chain ``link_1 -> ... -> link_6`` whose links become
#: ready one at a time; when the chain ends a fan-out of four jobs is ready at once, then a
#: two-thread job that needs every core.
SNAKEFILE = textwrap.dedent(
    """
    LONG = range(3)
    LINKS = range(1, 7)
    FAN = range(4)


    rule all:
        input:
            "done/wide.txt",


    rule long:
        output:
            "done/long_{i}.txt",
        threads: 1
        shell:
            "echo start $(date +%s.%N) 1 > {output}.tmp; sleep 1.5;"
            " echo end $(date +%s.%N) 1 >> {output}.tmp; mv {output}.tmp {output}"


    def previous_link(w):
        i = int(w.i)
        return [] if i == 1 else f"done/link_{i - 1}.txt"


    rule link:
        input:
            previous_link,
        output:
            "done/link_{i}.txt",
        threads: 1
        shell:
            "echo start $(date +%s.%N) 1 > {output}.tmp; sleep 0.4;"
            " echo end $(date +%s.%N) 1 >> {output}.tmp; mv {output}.tmp {output}"


    rule fan:
        input:
            "done/link_6.txt",
        output:
            "done/fan_{i}.txt",
        threads: 1
        shell:
            "echo start $(date +%s.%N) 1 > {output}.tmp; sleep 0.6;"
            " echo end $(date +%s.%N) 1 >> {output}.tmp; mv {output}.tmp {output}"


    rule wide:
        input:
            expand("done/long_{i}.txt", i=LONG),
            expand("done/fan_{i}.txt", i=FAN),
        output:
            "done/wide.txt",
        threads: 2
        shell:
            "echo start $(date +%s.%N) 2 > {output}.tmp; sleep 0.3;"
            " echo end $(date +%s.%N) 2 >> {output}.tmp; mv {output}.tmp {output}"
    """
)


def _intervals(folder: Path) -> list[tuple[float, float, int, str]]:
    """(start, end, threads, job) of every job, from the times the jobs wrote."""
    intervals = []
    for path in sorted(folder.glob("*.txt")):
        (_, start, threads), (_, end, _) = (line.split() for line in path.read_text().splitlines())
        intervals.append((float(start), float(end), int(threads), path.stem))
    return intervals


def _peak(intervals: list[tuple[float, float, int, str]]) -> tuple[int, list[str]]:
    """The largest sum of threads running at one instant, and the jobs running then."""
    # A job that ends at the instant another starts does not overlap it: ends sort first.
    events = sorted([(s, 1, t, name) for s, _, t, name in intervals]
                    + [(e, 0, -t, name) for _, e, t, name in intervals])
    running, peak, at_peak, now = 0, 0, [], set()
    for _, is_start, threads, name in events:
        running += threads
        now = now | {name} if is_start else now - {name}
        if running > peak:
            peak, at_peak = running, sorted(now)
    return peak, at_peak


def test_the_overlap_count_is_computed_right():
    jobs = [(0.0, 2.0, 1, "a"), (1.0, 3.0, 1, "b"), (2.0, 4.0, 2, "c"), (3.5, 5.0, 1, "d")]
    # a and b overlap (2 threads); c (2 threads) starts as a ends, beside b (3 threads)
    assert _peak(jobs) == (3, ["b", "c"])
    assert _peak(jobs[:2]) == (2, ["a", "b"])


def test_snakemake_runs_no_more_jobs_than_cores(tmp_path):
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", str(CORES), "--directory", str(tmp_path),
         "--snakefile", str(tmp_path / "Snakefile"), "--quiet", "all"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    intervals = _intervals(tmp_path / "done")
    assert len(intervals) == 3 + 6 + 4 + 1
    # the chain really ran one link at a time, so single jobs became ready one by one
    links = sorted((s, e) for s, e, _, name in intervals if name.startswith("link_"))
    assert all(later[0] >= earlier[1] for earlier, later in zip(links, links[1:], strict=False))
    peak, jobs = _peak(intervals)
    assert peak <= CORES, f"{peak} threads ran at once on {CORES} cores: {jobs}"
    # and the cores were used: the long jobs ran beside the chain
    assert peak == CORES

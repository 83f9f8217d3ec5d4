"""Run many ``kdmri`` CLI calls, each in its own process, paying for the imports once.

``python tests/reliability/cli_runner.py BATCH.json`` (or ``--serve``: one batch per line
of stdin, answered by one line of statuses). A batch is ``{"jobs": [...], "parallel":
bool}``; a job is ``{"name", "argv", "stdout", "stderr"}`` and optionally ``"setup"``:
Python code the child runs first (how a test injects a fault, such as a loss that turns
NaN). Jobs run in order, or all at once when the batch is parallel.

The runner imports kdmri (and torch) once, then forks one child per call; the child runs
``kdmri.cli.main(argv)`` exactly as the console script ``kdmri`` does, with its stdout and
stderr redirected to the given files, and exits with its status (an uncaught exception
prints its traceback and exits 1, as Python does). The runner prints ``{name: exit status}``
as JSON. A child is a real process with its own exit status and file descriptors; only the
interpreter start-up (mostly torch's import, seconds per call on a small machine) is shared.
"""

from __future__ import annotations

import json
import os
import sys
import traceback


def _child(job: dict) -> int:
    from kdmri.cli import main

    for fd, path in ((1, job["stdout"]), (2, job["stderr"])):
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(handle, fd)
        os.close(handle)
    try:
        if job.get("setup"):
            exec(compile(job["setup"], f"<setup of {job['name']}>", "exec"), {})
        code = main(job["argv"])
    except SystemExit as exc:  # argparse and sys.exit, as the interpreter would handle them
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return int(code or 0)


def _fork(job: dict) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = _child(job)
        finally:
            os._exit(code)
    return pid


def _run(batch: dict) -> dict[str, int]:
    """Run a batch's jobs one after the other, or all at once if ``batch["parallel"]``."""
    statuses = {}
    if batch.get("parallel"):
        pids = {_fork(job): job["name"] for job in batch["jobs"]}
        while pids:
            pid, status = os.wait()
            statuses[pids.pop(pid)] = os.waitstatus_to_exitcode(status)
        return statuses
    for job in batch["jobs"]:
        _, status = os.waitpid(_fork(job), 0)
        statuses[job["name"]] = os.waitstatus_to_exitcode(status)
    return statuses


def main() -> None:
    import torch
    import torch._dynamo  # noqa: F401  (torch.optim imports it on first use: seconds)

    import kdmri.cli
    import kdmri.inference  # noqa: F401  (imported once here, not in every child)
    import kdmri.train  # noqa: F401

    torch.set_num_threads(1)
    if sys.argv[1] == "--serve":  # one JSON batch per stdin line, its statuses per line
        for line in sys.stdin:
            print(json.dumps(_run(json.loads(line))), flush=True)
    else:
        print(json.dumps(_run(json.loads(open(sys.argv[1]).read()))))


if __name__ == "__main__":
    main()

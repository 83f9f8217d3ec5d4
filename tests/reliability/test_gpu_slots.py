"""Concurrency on GPUs: two training processes never hold the same GPU slot at once.

Real ``kdmri train`` processes run side by side with ``KDMRI_FAKE_GPUS`` (slots are claimed
with the real file locks; the work runs on the CPU). ``tests/test_train.py`` checks the
allocator with idle holder processes; here whole trainings compete for the slots, and a
process killed with SIGKILL must not keep its slot. (Two Snakemake runs on one results
folder: ``test_kill_resume.py``.)
"""

from __future__ import annotations

import json
import re

import pytest

from kdmri.device import claim_gpu_slot
from tests.reliability.helpers import run_many, spec

#: Child set-up: fake GPUs, a private lock folder, a wall-clock stamp on every log line, a
#: start barrier (every child waits until all have started, so that they really compete for
#: the slots however slowly the machine starts processes) and a holder that keeps its slot
#: a while before training (a tiny training alone can end before the other child asks).
FAKE_GPUS = """
import os, pathlib, time
import kdmri.cli, kdmri.device
os.environ["KDMRI_FAKE_GPUS"] = "{gpus}"
os.environ["KDMRI_LOCK_DIR"] = {lock_dir!r}
original = kdmri.cli._log
kdmri.cli._log = lambda message: original(f"{{time.time():.6f}} {{message}}")
claim = kdmri.device.claim_gpu_slot
def held_claim(*args, **kwargs):
    slot = claim(*args, **kwargs)
    time.sleep(1.5)
    return slot
kdmri.device.claim_gpu_slot = held_claim
barrier = pathlib.Path({barrier!r})
barrier.mkdir(parents=True, exist_ok=True)
(barrier / {name!r}).touch()
deadline = time.time() + 120
while len(list(barrier.iterdir())) < {count} and time.time() < deadline:
    time.sleep(0.01)
"""


def _stamps(stderr: str, pattern: str) -> list[float]:
    return [float(line.split(" ", 1)[0]) for line in stderr.splitlines()
            if re.search(pattern, line) and re.match(r"^\d+\.\d+ ", line)]


def _trainings(stores, root, gpus: int, names: list[str]) -> dict:
    args = ["train", "--spec", json.dumps(spec()), "--inputs-dir", stores.inputs_dir,
            "--device", "auto", "--threads", "1"]
    setup = {name: FAKE_GPUS.format(gpus=gpus, lock_dir=str(root / "locks"), name=name,
                                    barrier=str(root / "started"), count=len(names))
             for name in names}
    return run_many({name: [*args, "--out-dir", root / name] for name in names}, root / "runs",
                    setup=setup, parallel=True)


@pytest.fixture(scope="module")
def one_slot(stores, tmp_path_factory):
    root = tmp_path_factory.mktemp("one_slot")
    return _trainings(stores, root, 1, ["a", "b"])


def test_two_trainings_on_one_gpu_take_turns(one_slot):
    for name, result in one_slot.items():
        assert result.returncode == 0, (name, result.stderr)
        assert "claimed slot 0 of 1" in result.stderr
    waiting = [n for n, r in one_slot.items() if "all 1 slots busy, waiting" in r.stderr]
    assert len(waiting) == 1, {n: r.stderr for n, r in one_slot.items()}
    waiter = one_slot[waiting[0]].stderr
    holder = one_slot[({"a", "b"} - set(waiting)).pop()].stderr
    claimed = _stamps(waiter, "claimed slot 0")[0]
    first_epoch, last_epoch = _stamps(holder, r"epoch 1/3")[0], _stamps(holder, r"epoch 3/3")[0]
    assert _stamps(waiter, "busy, waiting")[0] < first_epoch  # it really waited for the holder
    assert claimed >= last_epoch  # ... and trained only after the holder had finished
    assert _stamps(waiter, r"epoch 1/3")[0] > last_epoch


def test_two_trainings_on_two_gpus_take_different_slots(stores, tmp_path):
    results = _trainings(stores, tmp_path, 2, ["a", "b"])
    slots = []
    for result in results.values():
        assert result.returncode == 0, result.stderr
        assert "busy" not in result.stderr
        slots += re.findall(r"claimed slot (\d) of 2", result.stderr)
    assert sorted(slots) == ["0", "1"]


KILLED_HOLDER = """
import os, signal
os.environ["KDMRI_FAKE_GPUS"] = "1"
os.environ["KDMRI_LOCK_DIR"] = {lock_dir!r}
from kdmri.device import select_device
device, slot = select_device("auto", log=print)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_process_does_not_keep_its_slot(tmp_path, monkeypatch):
    results = run_many({"holder": ["--version"]}, tmp_path / "runs",
                       setup={"holder": KILLED_HOLDER.format(lock_dir=str(tmp_path / "locks"))})
    assert results["holder"].returncode == -9
    assert "claimed slot 0 of 1" in results["holder"].stdout
    monkeypatch.setenv("KDMRI_LOCK_DIR", str(tmp_path / "locks"))
    messages: list[str] = []
    slot = claim_gpu_slot(1, poll_s=0.05, timeout_s=2, log=messages.append)
    slot.release()
    assert slot.index == 0 and not any("busy" in m for m in messages)

"""Helpers to run the real Snakemake workflow in a scratch folder and read its job lists."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def snakemake(workdir: Path, configfile: Path, *args: str, check: bool = True,
              timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``snakemake`` on the repository's Snakefile with ``workdir`` as working folder."""
    cmd = [
        sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
        "--directory", str(workdir), "--configfile", str(configfile), "--cores", "2", *args,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(
            f"snakemake failed ({out.returncode}):\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
        )
    return out


def write_config(path: Path, base: Path = ROOT / "config" / "test.yaml", **changes) -> Path:
    """Copy a config with nested changes given as ``a__b__c=value``."""
    config = yaml.safe_load(base.read_text())
    for dotted, value in changes.items():
        node = config
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(config))
    return path


def planned_jobs(workdir: Path, configfile: Path) -> list[tuple[str, dict]]:
    """(rule, wildcards) of every job a dry run would execute."""
    out = snakemake(workdir, configfile, "--dry-run")
    text = out.stdout + out.stderr
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", text):
        head = re.match(r"(?:local)?rule (\w+):", block.strip())
        if not head or head.group(1) == "all":
            continue
        wildcards = {}
        found = re.search(r"wildcards: (.*)", block)
        if found:
            wildcards = dict(item.split("=", 1) for item in found.group(1).split(", "))
        jobs.append((head.group(1), wildcards))
    return jobs


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)


def wait_for(condition, timeout: float, what: str, process: subprocess.Popen,
             poll_s: float = 0.05) -> None:
    """Poll ``condition`` until it holds; fail if ``process`` ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"snakemake ended (status {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(poll_s)

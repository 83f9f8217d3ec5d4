"""Config mistakes stop a study before any job runs, with one line naming the key.

Each bad config is checked twice: by :func:`kdmri.config.load_config` (the one line a
user reads) and by the real ``snakemake`` on the Snakefile, which validates the config
first and must fail before it plans or runs a job, its message naming the key.
"""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from kdmri.config import load_config
from kdmri.errors import KdmriError
from tests.reliability.helpers import ROOT
from tests.workflow_utils import snakemake

BASE = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())


def _changed(path: str, value=None, rename: str | None = None) -> dict:
    """The test config with ``a.b.c`` set to ``value``, or the key renamed to ``rename``."""
    config = copy.deepcopy(BASE)
    *parents, leaf = path.split(".")
    node = config
    for key in parents:
        node = node.setdefault(key, {})
    if rename is not None:
        node[rename] = node.pop(leaf)
    else:
        node[leaf] = value
    return config


#: name -> (config, what the message must contain)
BAD_CONFIGS = {
    "mistyped_key": (_changed("train", rename="trian"), ["unknown key 'trian'", "train"]),
    "mistyped_nested_key": (
        _changed("tasks.recon.mask", {"kind": "random", "centre_fraction": 0.1}),
        ["unknown key 'tasks.recon.mask.centre_fraction'", "center_fraction"]),
    "wrong_value_type": (_changed("train.epochs", "ten"),
                         ["key 'train.epochs'", "expected integer", "'ten'"]),
    "unknown_model": (_changed("models", ["zf", "teachr"]),
                      ["key 'models.1'", "'teachr'", "kd_attention"]),
    "unknown_stage": (_changed("stages.distill", {"epochs": 1}),
                      ["unknown key 'stages.distill'", "imitation"]),
    "acceleration_below_1": (_changed("tasks.recon.accelerations", [0.5]),
                             ["key 'tasks.recon.accelerations.0'", "0.5", "minimum of 1"]),
    "unknown_dataset": (_changed("tasks.recon.datasets", ["brain"]),
                        ["key 'tasks.recon.datasets'", "'brain'", "demo"]),
}


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_load_config_names_the_key_in_one_line(name, tmp_path):
    config, names = BAD_CONFIGS[name]
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(KdmriError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    for text in names:
        assert text in message, (text, message)


def test_the_base_config_is_valid(tmp_path):
    path = tmp_path / "good.yaml"
    path.write_text(yaml.safe_dump(BASE))
    assert load_config(path)["train"]["epochs"] == BASE["train"]["epochs"]


@pytest.mark.parametrize("text, expected", [
    ("train: [epochs: 2\n", "not valid YAML"),
    ("- just\n- a list\n", "expected a mapping"),
])
def test_unreadable_config_file(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(KdmriError, match=expected) as info:
        load_config(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


#: Bad configs also given to ``snakemake -n`` (each costs a Snakemake start-up; the others
#: take the same path through the Snakefile's validation).
DRY_RUN = ["mistyped_key", "unknown_stage", "wrong_value_type"]


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory):
    """``snakemake -n`` on bad configs (two at a time), each in its own folder."""
    root = tmp_path_factory.mktemp("config_errors")

    def dry_run(name):
        workdir = root / name
        workdir.mkdir()
        configfile = workdir / "config.yaml"
        configfile.write_text(yaml.safe_dump(BAD_CONFIGS[name][0]))
        return workdir, snakemake(workdir, configfile, "--dry-run", check=False, timeout=300)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(DRY_RUN, pool.map(dry_run, DRY_RUN), strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("name", DRY_RUN)
def test_snakemake_stops_before_any_job_naming_the_key(dry_runs, name):
    workdir, result = dry_runs[name]
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "KdmriError" in output, output
    for text in BAD_CONFIGS[name][1]:
        assert text in output, (text, output)
    assert "Job stats" not in output and "rule prepare" not in output, output
    assert not (workdir / "results").exists()


@pytest.mark.slow
def test_a_real_run_with_a_bad_config_runs_no_job(tmp_path):
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(BAD_CONFIGS["unknown_model"][0]))
    result = snakemake(tmp_path, configfile, check=False, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "key 'models.1'" in output and "'teachr'" in output
    assert not (tmp_path / "results").exists()
    assert not (tmp_path / ".snakemake" / "locks").exists() or not any(
        (tmp_path / ".snakemake" / "locks").iterdir())

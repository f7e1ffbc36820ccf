import os

import pytest
import torch
from _pytest.nodeid import NodeId

# Small, reproducible CPU runs; tests use 2 threads like the CI machine.
torch.set_num_threads(2)
os.environ.setdefault("OMP_NUM_THREADS", "2")


# The fast tier (`pytest -m "not slow"`) leaves out what runs the Snakemake workflow: tests marked slow, and
# every test that reads a finished workflow run (these fixtures).
WORKFLOW_FIXTURES = {"tiny_run", "two_seed_run", "trained_run", "reference"}


# Two workers (pytest-xdist: `-n 2 --dist loadgroup` in pyproject.toml): a workflow run is CPU-bound only part
# of its time (a chain of single jobs, job start-up, SLURM's status polling), so a second worker fills the
# rest. Tests that share a run (a session or module fixture) stay in one worker, so each run is made once, and
# so do the tests that start this machine's one SLURM controller (its config and ports are the machine's).
SHARED_RUN_GROUPS = {"two_seed_run": "two_seed_run", "tiny_run": "tiny_run", "reference": "tiny_run",
                     "trained_run": "trained_run", "local_template_run": "slurm_and_template"}
MODULE_GROUPS = {"test_slurm.py": "slurm_and_template", "test_template_run.py": "slurm_and_template"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if WORKFLOW_FIXTURES & fixtures:
            item.add_marker(pytest.mark.slow)
        mark = item.get_closest_marker("xdist_group")  # set by the test where it asks for a run at run time
        group = mark.args[0] if mark else MODULE_GROUPS.get(item.path.name) or next(
            (SHARED_RUN_GROUPS[f] for f in sorted(fixtures) if f in SHARED_RUN_GROUPS), None)
        if group and getattr(config.option, "loadgroup", False):  # (a worker of `--dist loadgroup`)
            # pytest-xdist's scheduler reads a test's group from its id ("<id>@<group>"); xdist 3.8 writes it
            # to item._nodeid, which pytest 9 no longer reads, so its own xdist_group marks group nothing
            item._id = NodeId.parse(f"{item.nodeid}@{group}")


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One uninterrupted local run of the tiny config: (workdir, configfile, completed process)."""
    from workflow_helpers import snakemake, write_config

    work = tmp_path_factory.mktemp("tiny")
    cfg = write_config(work / "tiny.yaml")
    return work, cfg, snakemake(work, cfg)


@pytest.fixture(scope="session")
def two_seed_run(tmp_path_factory):
    """One uninterrupted local run of the tiny config over two token seeds with four baseline families and
    two judges (workflow_helpers.TWO_SEED_RUN): (workdir, configfile, the rules it executed). Tests that
    change it work on a copy (workflow_helpers.copy_run)."""
    from workflow_helpers import TWO_SEED_RUN, executed_rules, snakemake, write_config

    work = tmp_path_factory.mktemp("two_seeds")
    cfg = write_config(work / "two_seeds.yaml", TWO_SEED_RUN)
    return work, cfg, executed_rules(snakemake(work, cfg, timeout=1200).stderr)

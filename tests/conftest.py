import os

import pytest
import torch

# Small, reproducible CPU runs; tests use 2 threads like the CI machine.
torch.set_num_threads(2)
os.environ.setdefault("OMP_NUM_THREADS", "2")


# The fast tier (`pytest -m "not slow"`) leaves out what runs the Snakemake workflow: tests marked slow, and
# every test that reads a finished workflow run (these fixtures).
WORKFLOW_FIXTURES = {"tiny_run", "two_seed_run", "trained_run", "reference"}


def pytest_collection_modifyitems(items):
    for item in items:
        if WORKFLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


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

import os

import pytest
import torch

# Small, reproducible CPU runs; tests use 2 threads like the CI machine.
torch.set_num_threads(2)
os.environ.setdefault("OMP_NUM_THREADS", "2")


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

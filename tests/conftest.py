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

"""Resume after a crash: progress is kept beside the output, finished work is not redone, and the
result is byte-identical to an uninterrupted run. (The whole workflow killed at seeded moments, with
SIGKILL and SIGTERM: tests/test_faults.py.)"""
import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from elude.models import cache
from elude.pipeline.artifacts import content_checksum


class Flaky(nn.Module):
    """Runs ``inner`` but raises on the forward call number ``fail_at`` (a crash mid-stage)."""

    def __init__(self, inner: nn.Module, fail_at: int):
        super().__init__()
        self.inner, self.fail_at, self.calls = inner, fail_at, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("simulated crash")
        return self.inner(x)


def test_cache_resumes_from_recorded_chunks_and_matches_uninterrupted(tmp_path, rng):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 10), nn.GELU(), nn.Linear(10, 4)).eval()
    images = torch.from_numpy(rng.normal(size=(40, 3, 6)).astype(np.float32))  # 3 instances per image
    kw = dict(batch_size=4, dtype="float16", chunk_rows=10, compressor="lz4-1")
    (tmp_path / "full").mkdir()
    cache.write_cache(net, net[2], TensorDataset(images), tmp_path / "full", **kw)
    part = tmp_path / "part"
    part.mkdir()
    with pytest.raises(RuntimeError, match="simulated"):
        cache.write_cache(Flaky(net, fail_at=6), net[2], TensorDataset(images), part, **kw)
    done = json.loads((part / cache.PROGRESS).read_text())["chunks_done"]
    assert done == 6  # 5 batches x 12 rows = 60 rows: 6 whole chunks on disk
    stats = cache.write_cache(net, net[2], TensorDataset(images), part, **kw)
    assert stats["chunks_resumed"] == 6 and stats["chunks_written_this_run"] == 12 - 6
    assert not (part / cache.PROGRESS).exists()
    assert content_checksum(part) == content_checksum(tmp_path / "full")

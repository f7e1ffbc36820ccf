"""Resume after a kill: progress is kept beside the output, finished work is not redone, and the
result is byte-identical to an uninterrupted run."""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset
from torch import nn

from elude import cache
from elude.artifacts import content_checksum, partial_dir
from workflow_helpers import TINY, ids_for, snakemake, snakemake_cmd, write_config


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


def _wait_for(predicate, proc, timeout=240.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    return False


def _kill_group(proc):
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def reference_checkpoint(tiny_run):
    """The disentangled checkpoint of an uninterrupted run of the tiny config."""
    work, cfg, _ = tiny_run
    return sha256(work / "results/merge" / ids_for(cfg)["merge"] / "layer.safetensors")


def test_sigkill_during_cache_and_cluster_then_resume(tmp_path, reference_checkpoint):
    cfg = write_config(tmp_path / "tiny.yaml")
    ids = ids_for(cfg)
    results = tmp_path / "results"
    shard0 = results / "cache" / ids["cache"] / "shard-0000"  # the first dataset shard's job
    cache_partial = partial_dir(shard0)
    cache_progress = cache_partial / cache.PROGRESS

    def chunks_done() -> int:
        try:
            return json.loads(cache_progress.read_text())["chunks_done"]
        except (FileNotFoundError, json.JSONDecodeError):
            return 0

    # 1. kill the whole workflow (its process group) with SIGKILL in the middle of the cache stage
    proc = subprocess.Popen(snakemake_cmd(tmp_path, cfg), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    assert _wait_for(lambda: chunks_done() >= 20, proc), "the cache stage never got going"
    _kill_group(proc)
    at_kill = chunks_done()
    assert at_kill >= 20 and not shard0.exists()

    # 2. rerun: the cache continues from its progress; kill again in the middle of the cluster stage
    cluster_dir = results / "cluster" / ids["cluster"]
    unit_files = lambda: list(cluster_dir.glob(".shard-*.partial/units/unit-*.safetensors"))  # noqa: E731
    subprocess.run(snakemake_cmd(tmp_path, cfg, "--unlock"), capture_output=True, check=True)
    proc = subprocess.Popen(snakemake_cmd(tmp_path, cfg), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    assert _wait_for(lambda: len(unit_files()) >= 3, proc), "the cluster stage never got going"
    _kill_group(proc)
    units_at_kill = len(unit_files())
    cache_manifest = json.loads((shard0 / "manifest.json").read_text())
    n_chunks = -(-cache_manifest["n_instances"] // TINY["cache"]["chunk_rows"])
    assert at_kill < n_chunks  # the kill landed mid-stage
    assert cache_manifest["chunks_resumed"] == at_kill
    assert cache_manifest["chunks_written_this_run"] == n_chunks - at_kill  # finished chunks were not redone
    assert not (results / "merge" / ids["merge"]).exists()

    # 3. rerun to the end: finished units are not clustered again, and the checkpoint is the same bytes
    subprocess.run(snakemake_cmd(tmp_path, cfg, "--unlock"), capture_output=True, check=True)
    snakemake(tmp_path, cfg)
    shard_manifests = [json.loads(p.read_text()) for p in cluster_dir.glob("shard-*/manifest.json")]
    assert sum(m["units_resumed"] for m in shard_manifests) == units_at_kill
    assert not list(results.rglob("*.partial"))
    assert sha256(results / "merge" / ids["merge"] / "layer.safetensors") == reference_checkpoint

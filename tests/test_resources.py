"""What GPU jobs ask for on one machine (issue 29, point 7): each job's GPU memory (resource gpu_mb) from the
artifacts it reads, the GPU's memory that the workflow offers, and the demo backbone trained on the run's
device. (The GPU run itself, `bench/default_run.py` with compute.device: cuda, needs a GPU: docs/performance.md.)"""
import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from elude.method.limits import GPU_BUDGET_MB, unit_gpu_mb
from elude.pipeline import resources
from elude.pipeline.config import merge_config, validate_config
from elude.pipeline.plan import artifact_ids

REPO = Path(__file__).resolve().parents[1]


def config(**overrides) -> dict:
    return validate_config(merge_config(yaml.safe_load((REPO / "config.yaml").read_text()), overrides))


def backbone_folder(root: Path, n_params: int, side: int, n_upstream: int) -> Path:
    """What a backbone artifact holds that the estimate reads: the weights, the image size, the layer's shape."""
    root.mkdir()
    save_file({"w": torch.zeros(n_params)}, str(root / "model.safetensors"))
    (root / "preprocess.json").write_text(json.dumps({"size": side}))
    (root / "layer.json").write_text(json.dumps({"n_units": n_upstream // 4, "n_upstream": n_upstream}))
    return root


def test_forward_jobs_ask_for_what_the_model_and_their_batches_hold(tmp_path):
    demo = backbone_folder(tmp_path / "demo", 200_000, 8, 256)  # the demo's 0.8 MB ViT on 8 x 8 digits
    vit_b = backbone_folder(tmp_path / "vit-b", 86_000_000, 224, 3072)
    small = resources.forward_job_gpu_mb(demo, 128)
    # the demo's jobs hold little beyond the process: a dozen share a 24 GB GPU
    assert resources.CUDA_PROCESS_MB <= small < resources.CUDA_PROCESS_MB + 50
    assert 12 * small < 24_000
    # ViT-B at batch 256: above what issue 29 measured on an H200 (backbone and dense layer 3.5 GB) plus a context
    big = resources.forward_job_gpu_mb(vit_b, 256)
    assert 3540 + 500 < big < 8000
    assert resources.forward_job_gpu_mb(vit_b, 512) > big  # larger batches ask for more
    # before the backbone exists (a dry run) the guess is ViT-B's
    assert resources.forward_job_gpu_mb(tmp_path / "missing", 256) == pytest.approx(big, rel=0.05)


def test_a_cluster_shard_asks_for_its_units_at_once():
    cfg = config(cluster={"min_cluster_size": 1000, "min_samples": None})["cluster"]
    one = unit_gpu_mb(400_000, 3072, 1000)
    at_paper_scale = resources.cluster_gpu_mb(cfg, 400_000, "/nonexistent")  # ViT-B's 3,072 inputs guessed
    assert at_paper_scale == resources.CUDA_PROCESS_MB + max(1, GPU_BUDGET_MB // one) * one
    two = resources.cluster_gpu_mb({**cfg, "units_at_once": 2}, 400_000, "/nonexistent")
    assert two == resources.CUDA_PROCESS_MB + 2 * one


def test_gpu_jobs_by_kind_and_the_demo_trains_on_the_runs_device():
    cpu, cuda = config(), config(compute={"device": "cuda"})
    assert resources.gpus(cpu) == {"forward": 0, "cluster": 0, "judge": 0, "backbone": 0}
    assert resources.gpus(cuda) == {"forward": 1, "cluster": 1, "judge": 1, "backbone": 1}
    timm = config(compute={"device": "cuda"}, backbone={"kind": "timm", "timm": {"name": "vit_tiny_patch16_224"}})
    assert resources.gpus(timm)["backbone"] == 0  # a pretrained backbone is only loaded
    # weights trained on a GPU are other bytes: another backbone id, and every artifact after it; a CPU run's
    # parameters name no device (its ids are those of the runs before the demo could train on a GPU)
    cpu_ids, cuda_ids = artifact_ids(cpu), artifact_ids(cuda)
    assert "device" not in cpu_ids["backbone"]["params"] and cuda_ids["backbone"]["params"]["device"] == "cuda"
    assert cpu_ids["backbone"]["id"] != cuda_ids["backbone"]["id"]


def fake_nvidia_smi(folder: Path, script: str) -> dict:
    folder.mkdir()
    (folder / "nvidia-smi").write_text(f"#!/bin/sh\n{script}\n")
    (folder / "nvidia-smi").chmod(0o755)
    return {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}


def test_the_gpus_memory_on_offer(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", fake_nvidia_smi(tmp_path / "h100", 'echo "81559"')["PATH"])
    assert resources.local_gpu_mb() == int(0.95 * 81559)
    monkeypatch.setenv("PATH", fake_nvidia_smi(tmp_path / "broken", 'echo "NVIDIA-SMI has failed" >&2; exit 9')["PATH"])
    assert resources.local_gpu_mb() is None  # then the workflow runs one GPU job at a time (rules/common.smk)
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert resources.local_gpu_mb() is None

"""How long a run's jobs take, from the per-stage costs measured in this project (docs/benchmarks.md) and the
model's forward pass timed on this machine: ``python -m elude.doctor`` prints it before a run.

Rough by design (a factor of ~2): it says whether a config is a minutes, hours or days run, and which stage
dominates. The CPU rates were measured on a 2-core machine; on a GPU, clustering is priced at the paper's
figure (Sec. E.2) and baseline training, which has no measured GPU rate, at the CPU rate (an upper bound).
"""
from __future__ import annotations

import math
import time

from ..baselines import LIVE_MATCH_TRIES

# Per job: Python, torch, timm and elude imported, the inputs opened (on 2 cores, tests/test_template_run.py's
# run: 3.1 s per surgery shard, which does little else, 4.8 s per baseline training job of a few steps).
JOB_START_S = 4.0
# Exact torch HDBSCAN, one unit on 2 CPU cores (bench/cluster_scale.py): 7.0 s at 12,000 points x 768 dims,
# growing as n^2.1 (12k -> 50k: 7.0 -> 134 s) and d^0.72 (768 -> 3,072: x2.6-2.8).
CLUSTER_UNIT_S, CLUSTER_N, CLUSTER_D, CLUSTER_N_EXP, CLUSTER_D_EXP = 7.0, 12_000, 768, 2.1, 0.72
CLUSTER_UNIT_FLOOR_S = 0.05  # a small unit: reading its rows, contributions, the bookkeeping (64 units at k = 480: 3 s)
# On a GPU, the paper's own figure (Sec. E.2): 768 units of DINOv2-B/14 at k = 400,000 and 3,072 dims in 26-30 h
# on one A100 (cuML), i.e. ~131 s per unit; scaled with the same exponents.
GPU_CLUSTER_UNIT_S, GPU_CLUSTER_N, GPU_CLUSTER_D = 28 * 3600 / 768, 400_000, 3072
# Baselines, seconds per epoch at the paper's shape on 2 CPU cores (bench/baselines.py: ViT-B fc2 3072 -> 768,
# 6,144 features, 2,562,334 instances); a run's epoch scales with instances x features x (read + write width).
BASELINE_EPOCH_S = {"vanilla": 816, "topk": 1556, "jumprelu": 1239, "batchtopk": 919, "matryoshka": 1539,
                    "archetypal": 13944, "mp": 16717, "transcoder": 1591}
BASELINE_SHAPE = (2_562_334, 6144, 768, 3072)  # instances, features, units, upstream
# ... and on the demo's 21,369 instances (fc2 256 -> 64, 512 features), where per-batch overheads, not the
# matrix products, set the time: the floor per instance for small layers.
BASELINE_DEMO_EPOCH_S = {"vanilla": 0.15, "topk": 0.22, "jumprelu": 0.34, "batchtopk": 0.29, "matryoshka": 0.34,
                         "archetypal": 0.30, "mp": 1.66, "transcoder": 0.21}
BASELINE_DEMO_INSTANCES = 21_369
# Forward-pass equivalents over the evaluation images, fitted to the template run (80 images, vit_tiny at 224 px,
# 2 cores): verify runs the original and the disentangled model; evaluate and a baseline's evaluation both too,
# plus the per-unit top images and their embeddings for the MS-Score (decoding the images included).
PASSES = {"verify": 3, "evaluate": 5, "baseline_eval": 7}


def forward_seconds_per_image(model, image_size: int, channels: int, device: str, batch: int = 8,
                              repeats: int = 3, examples=None) -> float:
    """The model's forward pass timed here on ``batch`` blank images: the fastest of ``repeats`` batches after
    two warm-up batches (the first calls pay for allocation and kernel selection). ``examples(n)``: the model
    input for n real examples instead (a factory dataset's, e.g. token ids: a text model takes no image)."""
    import torch

    from ..models.backbones import call_model

    model = model.to(device)
    times = []
    with torch.no_grad():
        for size in (batch, 16 * batch):  # a small model is timed again at a batch its overheads do not swamp
            x = examples(size) if examples is not None else torch.zeros(size, channels, image_size, image_size)
            for _ in range(2 + repeats):
                start = time.perf_counter()
                call_model(model, x, device)
                if device == "cuda":
                    torch.cuda.synchronize()
                times.append((time.perf_counter() - start) / size)
            if times[-1] * size > 0.05:
                break
    return min(times[2:])


def cluster_unit_seconds(k: int, dims: int, gpu: bool = False) -> float:
    """One unit's exact clustering at ``k`` points of ``dims`` dimensions, on 2 CPU cores or on one GPU."""
    unit_s, n, d = (GPU_CLUSTER_UNIT_S, GPU_CLUSTER_N, GPU_CLUSTER_D) if gpu else (CLUSTER_UNIT_S, CLUSTER_N, CLUSTER_D)
    return max(CLUSTER_UNIT_FLOOR_S, unit_s * (k / n) ** CLUSTER_N_EXP * (dims / d) ** CLUSTER_D_EXP)


def baseline_epoch_seconds(family: str, instances: int, features: int, units: int, upstream: int) -> float:
    n, f, u, q = BASELINE_SHAPE
    read = upstream if family == "transcoder" else units
    read_ref = q if family == "transcoder" else u
    at_scale = BASELINE_EPOCH_S[family] * (instances / n) * (features * (read + units)) / (f * (read_ref + u))
    return max(at_scale, BASELINE_DEMO_EPOCH_S[family] * instances / BASELINE_DEMO_INSTANCES)


def probe_instances(config: dict, shape: dict, probe_images: int) -> int:
    """Instances the cache holds per token seed: tokens_per_image (or every instance) of each probe image."""
    return probe_images * min(config["cache"]["tokens_per_image"] or shape["per_image"], shape["per_image"])


def assumed_ef(config: dict) -> float:
    """ELUDe's EF before clustering gives it: cluster.target_ef, else 4 (the paper's layers: 2-8). At the paper's
    ratios on a small probe set it can be ten times that (docs/findings/real-models.md: 44.7 on MiniLM at k/400)."""
    return config["cluster"]["target_ef"] or 4


def stage_seconds(config: dict, shape: dict, probe_images: int, eval_images: int, per_image_s: float) -> dict:
    """Seconds of job time per stage (summed over its jobs, job start-up included) for a run of ``config`` on a
    layer of ``shape`` (units, inputs, per_image), from the registry of every artifact the run builds."""
    from .plan import n_shards, registry, run_artifacts
    from .resources import gpus

    reg = registry(run_artifacts(config))
    units, inputs = shape["units"], shape["inputs"]
    instances = probe_instances(config, shape, probe_images)
    shards = n_shards(units, config["cluster"]["units_per_shard"])
    red = config["cluster"]["reduce"]
    dims = min(red["dims"], inputs) if red["method"] != "none" else inputs
    subunits = units * assumed_ef(config)
    out: dict[str, float] = {}

    def add(stage: str, jobs: int, work_s: float) -> None:
        out[stage] = out.get(stage, 0.0) + jobs * JOB_START_S + work_s

    for stage, arts in reg.items():
        for a in arts.values():
            p = a["params"]
            if stage == "backbone" and p["kind"] == "demo":  # trained in its job: forward + backward per epoch
                add(stage, 1, 3 * p["demo"]["train"]["epochs"] * probe_images * per_image_s)
            elif stage == "cache":
                add(stage, p["shards"], probe_images * per_image_s)
            elif stage == "topk":
                add(stage, config["cache"]["shards"] + 1, 0.0)
            elif stage == "cluster":
                k = min(reg["topk"][a["inputs"]["topk"]]["params"]["k"], instances)
                add(stage, shards, units * cluster_unit_seconds(k, dims, gpus(config)["cluster"] > 0))
            elif stage == "surgery":
                add(stage, shards, 0.0)
            elif stage in PASSES:
                add(stage, 1, PASSES[stage] * eval_images * per_image_s)
            elif stage == "baseline_train":
                ef = p["expansion_factor"]
                features = subunits if ef in ("match", "match_live") else int(ef * units)
                tries = 1 + LIVE_MATCH_TRIES if ef == "match_live" else 1  # at most; each about ELUDe's size
                add(stage, 1, tries * p["epochs"] * baseline_epoch_seconds(p["family"], instances, features, units, inputs))
            else:  # merge, report, selection and the studies' own jobs: start-up and little work
                add(stage, 1, 0.0)
    return out


def describe(seconds: dict, per_image_s: float, timed_on: str, device: str) -> str:
    """One line: the total, the three costliest stages and the forward rate; on CUDA the baselines' training,
    which has no measured GPU rate, is named apart with its CPU price instead of entering the total."""
    def hm(s: float) -> str:
        return f"{s / 3600:,.1f} h" if s >= 5400 else f"{max(1, math.ceil(s / 60))} min"

    seconds = dict(seconds)
    apart = seconds.pop("baseline_train", 0.0) if device == "cuda" else 0.0
    top = sorted(seconds.items(), key=lambda kv: -kv[1])[:3]
    return (f"about {hm(sum(seconds.values()))} of job time ({', '.join(f'{s} {hm(t)}' for s, t in top)}), before "
            f"parallel jobs share it" + (f", plus the baselines' training on the GPU (not measured; {hm(apart)} at the "
                                         f"2-core CPU rate)" if apart else "")
            + f"; forward pass {1 / per_image_s:,.0f} images/s measured here on {timed_on}")

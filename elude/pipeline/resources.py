"""What each job asks the scheduler for: memory (``mem_mb``) and run time, from what the job holds, with the
measured constants they rest on. The workflow's ``rules/common.smk`` calls these with the artifacts' shapes,
read from the upstream artifacts once they exist and guessed (paper-scale defaults) in a dry run, before
they do."""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..method.limits import BLOCK_MB, PRECOMPUTED_MAX_ROWS, planned_units_at_once, unit_gpu_mb

# torch backend, host bytes per radius-list edge: 52 measured (peak RSS, 20k x 64 points, min_samples 200 vs 5), x2
TORCH_BYTES_PER_RADIUS_EDGE = 100


def shard_memory_mb(cluster: dict, k: int, n_upstream: int, itemsize: int = 2, gpu: bool = False) -> int:
    """Memory request of a cluster/surgery shard job, from what :func:`cluster_shard` holds: the shard's
    top-k rows in the cache's storage type (``itemsize`` bytes; x2 while gathering), one unit's rows as
    float32 contributions (x3: raw, normalised, a copy), ~1.5 GB for the process, and the clustering:
    ``cluster`` is the config's ``cluster`` section (units_per_shard, backend, min_samples, reduce); the
    per-unit parts count once per unit clustered at the same time (:func:`planned_units_at_once`).
    - torch backend (auto/torch): the points in float64 and float32 (reduced width with ``reduce``), a few
      blocks of distances, and the radius lists, k x (min_samples + 1) edges at
      :data:`TORCH_BYTES_PER_RADIUS_EDGE` each (indices, Borůvka and Prim bookkeeping; 52 bytes
      measured, doubled). With ``gpu`` the points in float64, the blocks and Borůvka's arrays live in GPU
      memory (the float64 points are made there: issue 29, item 10) and the host keeps the float32 points it
      hands over and Prim's int32 adjacency, forward and reverse (16 bytes per edge: an estimate from the
      arrays, not yet measured on a GPU);
    - hdbscan backend: one unit's k x k float64 distance matrix (x3 inside hdbscan) up to its precomputed limit.
    """
    backend, red = cluster["backend"], cluster.get("reduce") or {}
    min_samples = cluster["min_samples"] or cluster["min_cluster_size"]
    dims = red.get("dims") if red.get("method", "none") != "none" else None
    rows = 2 * cluster["units_per_shard"] * k * n_upstream * itemsize
    if backend in ("hdbscan", "cpu", "cuml"):
        per_unit = 3 * min(k, PRECOMPUTED_MAX_ROWS) ** 2 * 8
        at_once = cluster.get("units_at_once") or 1
    else:
        d = min(dims or n_upstream, n_upstream)
        per_edge = 16 if gpu else TORCH_BYTES_PER_RADIUS_EDGE
        per_unit = k * d * (4 if gpu else 20) + (0 if gpu else 2 * BLOCK_MB["cpu"] * 2**20) \
            + k * (min(min_samples, k) + 1) * per_edge
        at_once = planned_units_at_once(cluster.get("units_at_once"), gpu, k, d, min_samples)
    return int(1500 + (rows + at_once * (per_unit + 3 * k * n_upstream * 4)) / 2**20)


def topk_memory_mb(k: int, n_units: int, buffer_rows: int = 16384, unit_block: int = 64) -> int:
    """Memory request of a top-k job (partial or merge), from what :mod:`elude.method.topk` holds: the running
    and the new top-k (values float32 + indices int64, x2), the buffered activations (x2 while
    concatenated), one unit block's sort temporaries (x3), and ~1.5 GB for the process."""
    cols = max(k, buffer_rows)
    best = 2 * n_units * k * 12
    buf = 2 * n_units * (cols + 4096) * 4
    block = 3 * unit_block * (k + cols) * 12
    return int(1500 + (best + buf + block) / 2**20)


def cache_memory_mb(batch_size: int, workers: int, image_side: int) -> int:
    """Memory request of a cache job: 4 GB (model, one batch of activations, chunks waiting for the
    writer) plus the decoded batches the DataLoader workers hold (2 each, 3 x side x side float32)."""
    return int(4000 + 2 * max(1, workers) * batch_size * 3 * image_side**2 * 4 / 2**20)


def evaluate_memory_mb(n_units: int, n_subunits: int, ms_top_k: int, batch_size: int,
                       n_images: int = 50_000, instances: int = 257) -> int:
    """Memory request of an evaluate job (:mod:`elude.evaluation.scoring`): 4 GB, plus the layer-space embeddings
    of the selected (image, instance) pairs ((units + 2 x sub-units) x ms_top_k x units float32), the
    pooled embeddings (``n_images`` x units), one batch of unit, sub-unit and control activations (x2), and the
    sibling correlation's float32 and float64 copies of a batch of sub-units (x3;
    :class:`elude.evaluation.diagnostics.SiblingCorrelation`)."""
    sets = n_units + 2 * n_subunits
    pairs = sets * ms_top_k * n_units * 4
    batch = batch_size * instances * 4
    return int(4000 + (pairs + n_images * n_units * 4 + batch * (2 * sets + 3 * n_subunits)) / 2**20)


def baseline_memory_mb(params: dict, n_units: int, n_upstream: int, chunk_rows: int) -> int:
    """Memory request of a baseline training job: ~1.5 GB for the process, the dictionary and encoder with
    gradients and Adam's two moments (x4; at ``match`` assumed 16 x units, at ``match_live`` 32 x), the archetypal mixing matrix
    (features x candidate points, x4) and candidates, and the shuffling window of cache chunks (q and a,
    float32, x3 while permuted)."""
    ef = {"match": 16, "match_live": 32}.get(params["expansion_factor"], params["expansion_factor"])
    n_feat = int(ef * n_units)
    d_read = n_upstream if params["family"] == "transcoder" else n_units
    weights = 4 * n_feat * (d_read + n_units + 2) * 4
    if params["family"] == "archetypal":
        weights += 4 * n_feat * params["archetypal_points"] * 4 + params["archetypal_points"] * n_units * 4
    from ..baselines import WINDOW_CHUNKS

    window = 3 * WINDOW_CHUNKS * chunk_rows * (n_upstream + n_units) * 4
    return int(1500 + (weights + window) / 2**20)


def labels_memory_mb(n_images: int, n_features: int) -> int:
    """Memory request of a labels job: 6 GB (the backbone and a CLIP-like model), the per-image max
    activations (images x features float32, twice while standardised) and the sub-units' correlation
    matrix (features^2 float64, twice)."""
    return int(6000 + (2 * n_images * n_features * 4 + 2 * n_features**2 * 8) / 2**20)


def gpus(config: dict) -> dict[str, int]:
    """GPUs each kind of job requests (resource ``gpu``: SLURM --gpus; on one machine the jobs share the GPU by
    ``gpu_mb`` instead): ``forward`` (jobs that run the model: cache, verify, evaluate, baselines, Table 5, labels),
    ``backbone`` (the demo's training),
    ``cluster`` (cuML needs a GPU; the torch backend, auto or torch, uses one when the run computes on CUDA) and
    ``judge`` (vLLM: its tensor-parallel size)."""
    forward = int(config["compute"]["device"] == "cuda")
    backend = config["cluster"]["backend"]
    cluster = int(backend == "cuml" or (backend in ("auto", "torch") and bool(forward)))
    judge = config["judges"]["tensor_parallel_size"] if config["judges"]["backend"] == "vllm" else forward
    backbone = forward if config["backbone"]["kind"] == "demo" else 0  # the demo trains there; others only load
    return {"forward": forward, "cluster": cluster, "judge": judge, "backbone": backbone}


# --- GPU memory (resource ``gpu_mb``): jobs that need a small share of a GPU share it ----------------------
# On one machine (profiles/local) the workflow offers the GPU's memory as the resource gpu_mb (local_gpu_mb), and
# each GPU job asks for what it holds, so the demo's small jobs run side by side on one GPU instead of queueing
# for it; under SLURM each job gets its own GPU (gpu=1), or with compute.gpu_shards the shards of one that its
# gpu_mb needs (gpu_shards).
CUDA_PROCESS_MB = 1000  # a job's CUDA context, torch's kernels and the caching allocator's slack (an estimate)


def gpu_shards(gpu_mb: int, sharing: dict, members: int = 1) -> int:
    """Shards of one GPU (SLURM's gres/shard) that a job asks for with the config's ``compute.gpu_shards``
    (``sharing``: ``per_gpu`` shards of a ``gpu_mb`` MB GPU): its GPU memory's share, rounded up to whole shards, at
    least one and at most all of them (a job whose estimate exceeds the GPU plans its work by the GPU's free
    memory: a cluster shard, its units at once). ``members``: jobs of one rule grouped into one SLURM job (run side by
    side there); a job's shards come from one GPU (Slurm 22.05, measured: a request above one GPU's shards waits
    forever), so a group that needs more fails here, before anything is submitted."""
    per_gpu = sharing["per_gpu"]
    one = min(per_gpu, max(1, math.ceil(per_gpu * gpu_mb / sharing["gpu_mb"])))
    if one * members > per_gpu:
        raise ValueError(f"compute.gpu_shards: a group of {members} jobs of {one} shard(s) each needs {one * members} "
                         f"shards of one GPU, which has {per_gpu}: set --group-components for that group to at most "
                         f"{per_gpu // one}, or do not group these jobs")
    return one * members


def forward_gpu_mb(weights_mb: float, batch_size: int, side: int, n_upstream: int) -> int:
    """GPU memory of a job that runs the model (cache, verify, evaluate, the baselines, Table 5, labels, the
    demo's training): the process, the weights three times (weights, a copy while loading, gradients or the
    disentangled layer's), and four batches of the layer's input (the hook's copy, the backbone's transient
    activations, the dense layer's sub-unit blocks) at (side / 16)^2 + 1 tokens per image. On ViT-B (330 MB
    of weights, batch 256, 3,072 inputs) 4.4 GB, against 3.5 GB measured for the backbone and the dense layer
    (issue 29's H200 run) plus the context."""
    tokens = (side / 16) ** 2 + 1
    return int(CUDA_PROCESS_MB + 3 * weights_mb + 4 * batch_size * tokens * n_upstream * 4 / 2**20)


def forward_job_gpu_mb(backbone_dir, batch_size: int) -> int:
    """:func:`forward_gpu_mb` with the backbone's weights, image size and layer width (ViT-B before they exist)."""
    weights = sum(f.stat().st_size for f in Path(str(backbone_dir)).glob("*.safetensors")) / 2**20 or 330.0
    pre = _read(backbone_dir, "preprocess.json") or {"size": GUESS_SIDE}
    layer = _read(backbone_dir, "layer.json") or {"n_upstream": GUESS_UPSTREAM}
    return forward_gpu_mb(weights, batch_size, pre["size"], layer["n_upstream"])


def cluster_gpu_mb(cluster: dict, k: int, backbone_dir) -> int:
    """GPU memory of a cluster shard on the torch backend: the process and its units at once
    (:func:`elude.method.limits.unit_gpu_mb` each; cuML: the same model, an estimate)."""
    red = cluster.get("reduce") or {}
    n_upstream = (_read(backbone_dir, "layer.json") or {"n_upstream": GUESS_UPSTREAM})["n_upstream"]
    d = min(red["dims"], n_upstream) if red.get("method", "none") != "none" else n_upstream
    min_samples = cluster["min_samples"] or cluster["min_cluster_size"]
    at_once = planned_units_at_once(cluster.get("units_at_once"), True, k, d, min_samples)
    return CUDA_PROCESS_MB + at_once * unit_gpu_mb(k, d, min_samples)


def local_gpu_mb() -> int | None:
    """Memory of this machine's first GPU in MB (nvidia-smi; 95 %: the driver keeps some), or None without one."""
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=30)
        return int(0.95 * float(out.stdout.split()[0])) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def baseline_threads(config: dict) -> int:
    """CPU runs: one thread per training job (small models; jobs run side by side); GPU jobs: a few threads to
    feed the GPU (reading and decompressing cache chunks)."""
    return 1 if config["compute"]["device"] == "cpu" else 4


def judge_mem_mb(config: dict) -> int:
    """Host memory of a judge job: vLLM maps the weights; transformers loads them."""
    return 64000 if config["judges"]["backend"] == "vllm" else 16000


def explain_mem_mb(config: dict) -> int:
    """Host memory of an explanations job: the demo LM is tiny (3 GB for the process); an LLM as a judge's."""
    from ..models import demo_seed

    if demo_seed(config["explain"]["model"] or "") is not None:
        return 3000
    return 64000 if config["explain"]["backend"] == "vllm" else 16000


# --- the jobs' requests, from the upstream artifacts' shapes -------------------------------------------------
# Before an upstream artifact exists (a dry run) its shape is guessed at paper scale: a ViT-B MLP layer.
GUESS_UNITS, GUESS_UPSTREAM, GUESS_IMAGES, GUESS_SIDE = 1024, 3072, 50_000, 224


def _read(folder, name: str) -> dict | None:
    path = Path(str(folder)) / name
    return json.loads(path.read_text()) if path.exists() else None


def shard_job_mb(cluster: dict, k: int, backbone_dir, cache_dtype: str, gpu: bool) -> int:
    """A cluster or surgery shard job: :func:`shard_memory_mb` with the layer's width and the cache's item size."""
    layer = _read(backbone_dir, "layer.json") or {"n_upstream": GUESS_UPSTREAM}
    return shard_memory_mb(cluster, k, layer["n_upstream"], 2 if cache_dtype == "float16" else 4, gpu=gpu)


def shard_job_minutes(cluster: dict) -> int:
    """A cluster or surgery shard job: 10 + units_per_shard x cluster.minutes_per_unit."""
    return int(10 + cluster["units_per_shard"] * cluster["minutes_per_unit"])


def topk_job_mb(k: int, backbone_dir) -> int:
    """A top-k job: :func:`topk_memory_mb` with the layer's unit count."""
    return topk_memory_mb(k, (_read(backbone_dir, "layer.json") or {"n_units": GUESS_UNITS})["n_units"])


def cache_job_mb(cache: dict, workers: int, backbone_dir) -> int:
    """A cache job: :func:`cache_memory_mb` with the backbone's image size."""
    pre = _read(backbone_dir, "preprocess.json")
    return cache_memory_mb(cache["batch_size"], workers, pre["size"] if pre else GUESS_SIDE)


def evaluate_job_mb(evaluate: dict, backbone_dir, merge_dir=None, model_dir=None) -> int:
    """An evaluate job (``merge_dir``: ELUDe's sub-units) or a baseline evaluation (``model_dir``: its features
    counted as sub-units, an overestimate): :func:`evaluate_memory_mb`."""
    units = (_read(backbone_dir, "layer.json") or {"n_units": GUESS_UNITS})["n_units"]
    if model_dir is not None:
        features = (_read(model_dir, "model.json") or {"n_features": 16 * units})["n_features"]
    else:
        features = (_read(merge_dir, "manifest.json") or {"n_subunits": 8 * units})["n_subunits"]
    return evaluate_memory_mb(units, features, evaluate["ms_top_k"], evaluate["batch_size"])


def baseline_train_job_mb(params: dict, backbone_dir, chunk_rows: int) -> int:
    """A baseline training job: :func:`baseline_memory_mb` with the layer's shape (768 x 3072 before it exists)."""
    layer = _read(backbone_dir, "layer.json") or {"n_units": 768, "n_upstream": GUESS_UPSTREAM}
    return baseline_memory_mb(params, layer["n_units"], layer["n_upstream"], chunk_rows)


def labels_job_mb(evaluate_dir, merge_dir) -> int:
    """A labels job: :func:`labels_memory_mb` with the evaluation's image and unit counts and the sub-units."""
    m = _read(evaluate_dir, "metrics.json") or {"n_images": GUESS_IMAGES, "n_units": GUESS_UNITS}
    subunits = (_read(merge_dir, "manifest.json") or {"n_subunits": 8 * m["n_units"]})["n_subunits"]
    return labels_memory_mb(m["n_images"], m["n_units"] + subunits)

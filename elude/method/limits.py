"""The clustering backends' working-set limits, in a module of their own without torch: the backends use them
(:mod:`elude.method.clustering`, :mod:`elude.method._exact_hdbscan`) and so does the jobs' memory model
(:mod:`elude.pipeline.resources`), which the workflow evaluates while it builds the DAG."""

PRECOMPUTED_MAX_ROWS = 6000  # hdbscan backend: exact torch distances up to this many points (6000^2 float64 = 288 MB)
BLOCK_MB = {"cpu": 256, "cuda": 8192}  # torch backend: working set of one block of rows (~4 block x n float64)
MAX_UNITS_AT_ONCE = 8  # cluster.units_at_once's automatic ceiling on a GPU
GPU_BUDGET_MB = 40_000  # GPU memory a shard plans its units for (issue 29: <= 40 GB per paper-scale unit)
GPU_BYTES_PER_RADIUS_EDGE = 8  # torch backend on a GPU: the CSR's int32 and the copy that concatenates it
GPU_RADIUS_CHUNK_EDGES = 1 << 25  # a Borůvka round's flat radius-edge tensors (~64 bytes an edge) at a time


def unit_gpu_mb(k: int, d: int, min_samples: int) -> int:
    """GPU memory of one unit's exact clustering (torch backend on CUDA): 20 bytes per value of the points
    during the core pass (float64, a float64 copy in group order and the prescreen's float32 one; the finish's
    component-ordered copy comes after those are freed), one block of screened distances (BLOCK_MB, or k x k
    of them when smaller), the radius edges and one chunk of a Borůvka round's flat edges."""
    block = min(BLOCK_MB["cuda"] * 2**20, 32 * k * k)
    edges = k * (min(min_samples, k) + 1)
    chunk = 64 * min(edges, GPU_RADIUS_CHUNK_EDGES)
    return int((k * d * 20 + block + edges * GPU_BYTES_PER_RADIUS_EDGE + chunk) / 2**20) + 1


def planned_units_at_once(requested: int | None, gpu: bool, k: int, d: int, min_samples: int) -> int:
    """Units a cluster shard clusters at once (``cluster.units_at_once``): the request; else on a GPU as many as
    GPU_BUDGET_MB holds (at most MAX_UNITS_AT_ONCE), on the CPU 1. The job's host memory is sized for this many;
    on the GPU the job also stops at what its free memory holds then."""
    if requested:
        return int(requested)
    if not gpu:
        return 1
    return max(1, min(MAX_UNITS_AT_ONCE, GPU_BUDGET_MB // unit_gpu_mb(k, d, min_samples)))

"""HDBSCAN on normalised contribution vectors, and cluster representatives (Section 3.2, eq. 2).

Backends (``cluster.backend``):
- ``torch`` (what ``auto`` picks): exact HDBSCAN whose expensive half (core distances, the
  mutual-reachability spanning tree) runs in torch in blocks, on the GPU when one is visible and on the
  CPU otherwise; the tree half is a linear-time copy of the package's (:mod:`elude.method._exact_hdbscan`). Labels
  and probabilities bitwise the package's on the CPU, bounded memory, no cliff with n.
- ``hdbscan``: the package end to end. Up to ``precomputed_max_rows`` points the pairwise distances are
  computed blockwise in torch (float64) and passed as a precomputed matrix (avoids hdbscan's slow trees in
  high dimension and numpy's BLAS crash on some CPUs); above that its own tree algorithms (slow: minutes
  at 12,000 x 768). ``cpu`` is the old name of this backend, still accepted (deprecated).
- ``cuml``: RAPIDS cuML on the GPU (``pip install -e '.[cuml]'``); approximate where cuML's parallel
  tree differs at ties.
All use euclidean distance on the L2-normalised vectors (monotone in cosine distance; hdbscan's own
``metric='cosine'`` is broken). ``min_samples`` is the package's: core distance = distance to the
min_samples-th nearest other point.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from .contributions import contributions, normalise_rows
from .limits import PRECOMPUTED_MAX_ROWS, planned_units_at_once, unit_gpu_mb

log = logging.getLogger(__name__)

REP_EPS = 1e-8  # eq. 2's epsilon
BACKENDS = ("auto", "torch", "hdbscan", "cuml", "cpu")


def cuml_available() -> tuple[bool, str]:
    """(usable, reason): cuML imports and a CUDA GPU is visible."""
    if not torch.cuda.is_available():
        return False, "no CUDA GPU is visible to torch"
    try:
        import cuml  # noqa: F401
    except Exception as exc:  # ImportError, or a CUDA/driver mismatch raised at import
        return False, f"cuML does not import ({exc}); install the 'cuml' extra (pip install cuml-cu13)"
    return True, "ok"


def resolve_backend(backend: str) -> str:
    """The backend that runs here: 'torch:cuda', 'torch:cpu', 'hdbscan' or 'cuml'.

    'auto' = torch on the GPU if one is visible, else on the CPU. An explicit 'cuml' that cannot run
    fails here, early. 'cpu' is the deprecated name of 'hdbscan'.
    """
    if backend not in BACKENDS:
        raise ValueError(f"cluster.backend: {backend!r} is not one of {', '.join(map(repr, BACKENDS))}")
    if backend == "cpu":
        log.warning("cluster.backend 'cpu' is deprecated: it is now called 'hdbscan' (the package end to end); "
                    "'auto' (exact torch backend) is faster and gives the same clusters")
        return "hdbscan"
    if backend == "hdbscan":
        return "hdbscan"
    if backend == "cuml":
        ok, why = cuml_available()
        if not ok:
            raise RuntimeError(f"cluster.backend is 'cuml' but cuML cannot run here: {why}. "
                               "Set cluster.backend to 'auto' (exact torch backend, GPU or CPU) or run on a GPU "
                               "node with cuml-cu13.")
        return "cuml"
    return "torch:cuda" if torch.cuda.is_available() else "torch:cpu"


def backend_device(backend: str) -> str:
    """The torch device of a resolved backend ('torch:cuda' -> 'cuda'); 'cpu' for the others."""
    return backend.split(":", 1)[1] if backend.startswith("torch:") else "cpu"


def reduce_dims(x: np.ndarray, method: str, dims: int, device: str = "cpu") -> tuple[np.ndarray, float]:
    """Optional pre-reduction before clustering (``cluster.reduce``): (reduced rows float64, variance kept).

    ``pca``: project the centred rows on the top ``dims`` principal axes (float64 in torch; eigenvector
    signs fixed so the result is deterministic). Distances in the subspace approximate the euclidean
    distances HDBSCAN would see in full dimension; Table 7's UMAP row is the paper's precedent for
    clustering a reduced space. ``none``, or ``dims`` >= the width, returns the rows unchanged (kept 1.0).
    """
    if method == "none" or dims >= x.shape[1] or len(x) < 2:
        return x, 1.0
    if method == "umap":
        return umap_reduce(x, dims), float("nan")  # a non-linear embedding keeps no variance share
    if method != "pca":
        raise ValueError(f"cluster.reduce.method: {method!r} is not one of 'none', 'pca', 'umap'")
    t = torch.from_numpy(np.asarray(x, dtype=np.float64)).to(device)
    t = t - t.mean(0)
    cov = t.T @ t
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    evals, evecs = evals.flip(0), evecs.flip(1)
    evecs = evecs[:, :dims]
    sign = torch.sign(evecs.gather(0, evecs.abs().argmax(0, keepdim=True)))
    evecs = evecs * torch.where(sign == 0, torch.ones_like(sign), sign)
    total = float(evals.clamp(min=0).sum())
    kept = float(evals[:dims].clamp(min=0).sum() / total) if total > 0 else 1.0
    return (t @ evecs).cpu().numpy(), kept


def umap_check():
    """The umap module, or an error naming the fix (before any work)."""
    try:
        import umap
    except ImportError as exc:
        raise RuntimeError(f"cluster.reduce.method is 'umap' but umap-learn is not importable here ({exc}): "
                           "install it (`.venv/bin/pip install umap-learn`) or use 'pca'") from None
    return umap


def umap_reduce(x: np.ndarray, dims: int, seed: int = 0) -> np.ndarray:
    """Table 7's UMAP pre-reduction: a seeded euclidean UMAP of the (L2-normalised) rows to ``dims``
    dimensions (n_neighbors 15, min_dist 0: the settings the UMAP docs give for clustering)."""
    umap = umap_check()
    k = max(2, min(15, len(x) - 1))
    emb = umap.UMAP(n_components=dims, n_neighbors=k, min_dist=0.0, metric="euclidean", random_state=seed,
                    init="random" if len(x) <= dims + 1 else "spectral").fit_transform(np.asarray(x, np.float32))
    return emb.astype(np.float64)


def pairwise_distances(x: np.ndarray, block: int = 2048) -> np.ndarray:
    """Euclidean distance matrix in float64, computed blockwise in torch."""
    t = torch.from_numpy(x).double()
    sq = (t * t).sum(1)
    out = torch.empty((len(t), len(t)), dtype=torch.float64)
    for i in range(0, len(t), block):
        d2 = sq[i : i + block, None] + sq[None, :] - 2.0 * (t[i : i + block] @ t.T)
        out[i : i + block] = d2.clamp_min_(0).sqrt_()
    out.fill_diagonal_(0.0)
    return out.numpy()


def units_at_once(requested: int | None, backend: str, k: int, d: int, min_samples: int, reduce: dict) -> int:
    """How many units a cluster shard clusters at the same time (``cluster.units_at_once``): as planned by
    :func:`elude.method.limits.planned_units_at_once` (the job's memory request counts them), and with the
    automatic setting on a GPU no more than its free memory holds now."""
    if reduce.get("method", "none") != "none":
        d = min(d, reduce["dims"])
    gpu = backend == "torch:cuda"
    planned = planned_units_at_once(requested, gpu, k, d, min_samples)
    if gpu and not requested:
        free, _ = torch.cuda.mem_get_info()
        planned = max(1, min(planned, int(0.9 * free / 2**20) // unit_gpu_mb(k, d, min_samples)))
    return planned


def hdbscan_labels(x: np.ndarray, *, min_cluster_size: int, min_samples: int | None, method: str,
                   backend: str, precomputed_max_rows: int = PRECOMPUTED_MAX_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """(labels, membership probabilities); label -1 is noise. ``backend`` as :func:`resolve_backend` returns.

    ``min_samples`` follows the hdbscan package's convention; ``None`` means the library default
    (= ``min_cluster_size``). Too few points to form a cluster gives all noise.
    """
    n = len(x)
    ms = min_cluster_size if min_samples is None else min_samples
    if n < max(min_cluster_size, 2) or n < ms:
        return np.full(n, -1, dtype=np.int64), np.zeros(n, dtype=np.float32)
    if backend.startswith("torch"):
        from ._exact_hdbscan import hdbscan_from_mst, mutual_reachability_mst

        mst = mutual_reachability_mst(x, ms, device=backend_device(backend))
        return hdbscan_from_mst(mst, min_cluster_size, method)
    if backend == "cuml":
        import cupy as cp
        from cuml.cluster import HDBSCAN as CumlHDBSCAN

        # cuML's core distance is its min_samples-th neighbour counting the point itself; the package
        # queries min_samples + 1 with the point first (rapidsai/cuml#4877): add one to match.
        model = CumlHDBSCAN(min_cluster_size=min_cluster_size, min_samples=min(n - 1, ms) + 1,
                            cluster_selection_method=method, metric="euclidean")
        model.fit(cp.asarray(x, dtype=cp.float32))
        labels = cp.asnumpy(cp.asarray(model.labels_)).astype(np.int64)
        probs = cp.asnumpy(cp.asarray(model.probabilities_)).astype(np.float32)
        return labels, probs
    if backend != "hdbscan":
        raise ValueError(f"unknown resolved clustering backend {backend!r}")
    import hdbscan

    if n <= precomputed_max_rows:
        model = hdbscan.HDBSCAN(min_cluster_size=min_cluster_size, min_samples=ms,
                                cluster_selection_method=method, metric="precomputed")
        model.fit(pairwise_distances(np.asarray(x, dtype=np.float64)))
    else:
        model = hdbscan.HDBSCAN(min_cluster_size=min_cluster_size, min_samples=ms,
                                cluster_selection_method=method, metric="euclidean", core_dist_n_jobs=1)
        model.fit(np.asarray(x, dtype=np.float64))
    return model.labels_.astype(np.int64), model.probabilities_.astype(np.float32)


def representatives(c_norm: np.ndarray, labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Eq. 2: per cluster, the probability-weighted sum of its normalised contributions, L2-normalised.

    Returns (K, upstream) with K = number of clusters (labels 0..K-1); noise points are ignored.
    """
    k = int(labels.max()) + 1 if (labels >= 0).any() else 0
    reps = np.zeros((k, c_norm.shape[1]), dtype=np.float64)
    for c in range(k):
        members = labels == c
        reps[c] = (probs[members, None].astype(np.float64) * c_norm[members]).sum(0)
    return (reps / (np.linalg.norm(reps, axis=1, keepdims=True) + REP_EPS)).astype(np.float32)


@dataclass
class UnitClusters:
    """One unit's clustering (Section 3.2): per top-k instance its cluster (-1: noise) and membership
    probability, and per cluster its representative (eq. 2)."""
    labels: np.ndarray  # (k,) int64
    probabilities: np.ndarray  # (k,) float32
    representatives: np.ndarray  # (clusters, upstream) float32
    never_active: bool  # every top-k pre-activation <= 0: not clustered (the unit stays one sub-unit)
    variance_kept: float  # share of the contributions' variance the pre-reduction kept (1.0 without one)


def cluster_unit(q_rows: np.ndarray, w_u: np.ndarray, top_values: np.ndarray, *, min_cluster_size: int,
                 min_samples: int | None, method: str = "leaf", backend: str = "auto",
                 reduce: dict | None = None) -> UnitClusters:
    """Cluster one unit's top-k instances by their contribution vectors (Section 3.2): c = W_u * q,
    L2-normalised; HDBSCAN on them (optionally on a pre-reduction, ``reduce`` = {"method", "dims"}: the
    representatives stay in upstream space); representatives by eq. 2. ``q_rows`` (k, upstream): the unit's
    top-k layer inputs; ``w_u``: its weight row; ``top_values``: its top-k pre-activations (a unit whose are
    all <= 0 never activates and is not clustered). ``backend``: a ``cluster.backend`` name or what
    :func:`resolve_backend` returned."""
    resolved = backend if backend.startswith("torch:") or backend in ("hdbscan", "cuml") else resolve_backend(backend)
    never_active = bool(np.max(top_values) <= 0)
    c = normalise_rows(contributions(q_rows, w_u))  # float32
    red, kept = reduce or {"method": "none", "dims": 0}, 1.0
    if never_active:
        labels, probs = np.full(len(c), -1, np.int64), np.zeros(len(c), np.float32)
    else:
        x, kept = reduce_dims(c, red["method"], red["dims"], backend_device(resolved))
        labels, probs = hdbscan_labels(x, min_cluster_size=min_cluster_size, min_samples=min_samples, method=method,
                                       backend=resolved)
    return UnitClusters(labels, probs, representatives(c, labels, probs), never_active, kept)

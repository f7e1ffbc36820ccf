"""HDBSCAN on normalised contribution vectors, and cluster representatives (Section 3.2, eq. 2).

Backends: ``cpu`` (the hdbscan package) and ``cuml`` (RAPIDS cuML on the GPU), picked by ``auto``.
Both use euclidean distance on the L2-normalised vectors (monotone in cosine distance; hdbscan's own
``metric='cosine'`` is broken). On the CPU, up to ``precomputed_max_rows`` points the pairwise
distances are computed blockwise in torch (float64) and passed as a precomputed matrix, which is
exact and avoids both hdbscan's slow trees in high dimension and numpy's BLAS crash on this CPU.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

log = logging.getLogger(__name__)

REP_EPS = 1e-8  # eq. 2's epsilon
PRECOMPUTED_MAX_ROWS = 6000  # CPU: exact torch distances up to this many points (6000^2 float64 = 288 MB)


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
    """'auto' -> 'cuml' when usable else 'cpu'; an explicit 'cuml' that cannot run fails here, early."""
    if backend not in ("auto", "cpu", "cuml"):
        raise ValueError(f"cluster.backend: {backend!r} is not one of 'auto', 'cpu', 'cuml'")
    if backend == "cpu":
        return "cpu"
    ok, why = cuml_available()
    if backend == "cuml" and not ok:
        raise RuntimeError(f"cluster.backend is 'cuml' but cuML cannot run here: {why}. "
                           "Set cluster.backend to 'cpu' or 'auto', or run on a GPU node with cuml-cu13.")
    return "cuml" if ok else "cpu"


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


def hdbscan_labels(x: np.ndarray, *, min_cluster_size: int, min_samples: int | None, method: str,
                   backend: str, precomputed_max_rows: int = PRECOMPUTED_MAX_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """(labels, membership probabilities); label -1 is noise.

    ``min_samples`` follows the hdbscan package's convention (the point itself counts); ``None`` means
    the library default (= ``min_cluster_size``). Too few points to form a cluster gives all noise.
    """
    n = len(x)
    ms = min_cluster_size if min_samples is None else min_samples
    if n < max(min_cluster_size, 2) or n < ms:
        return np.full(n, -1, dtype=np.int64), np.zeros(n, dtype=np.float32)
    if backend == "cuml":
        import cupy as cp
        from cuml.cluster import HDBSCAN as CumlHDBSCAN

        # cuML counts min_samples neighbours excluding the point itself: subtract one to match hdbscan.
        model = CumlHDBSCAN(min_cluster_size=min_cluster_size, min_samples=max(1, ms - 1),
                            cluster_selection_method=method, metric="euclidean")
        model.fit(cp.asarray(x, dtype=cp.float32))
        labels = cp.asnumpy(cp.asarray(model.labels_)).astype(np.int64)
        probs = cp.asnumpy(cp.asarray(model.probabilities_)).astype(np.float32)
        return labels, probs
    import hdbscan

    if n <= precomputed_max_rows:
        model = hdbscan.HDBSCAN(min_cluster_size=min_cluster_size, min_samples=ms,
                                cluster_selection_method=method, metric="precomputed")
        model.fit(pairwise_distances(x))
    else:
        model = hdbscan.HDBSCAN(min_cluster_size=min_cluster_size, min_samples=ms,
                                cluster_selection_method=method, metric="euclidean", core_dist_n_jobs=1)
        model.fit(x.astype(np.float64))
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

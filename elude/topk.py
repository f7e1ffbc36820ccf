"""Streaming per-unit top-k over the activation cache (eq. 1).

The unit's activation is its pre-activation a_u = W_u . q + b_u, recomputed from the cached layer
input. Memory bound: O(k x units) for the running result plus one chunk of rows.
"""
from __future__ import annotations

import logging
import warnings

import numpy as np
import torch

from .cache import iter_chunks
from .progress import progress

log = logging.getLogger(__name__)


def clamp_k(k: int, n_instances: int) -> int:
    if k > n_instances:
        warnings.warn(f"topk.k={k} exceeds the {n_instances} cached instances; clamped to {n_instances}")
        return n_instances
    return k


@torch.no_grad()
def streaming_topk(q, weight: torch.Tensor, bias: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 1: per unit, the k instances with the largest pre-activation.

    Returns (indices, values), each (units, k), sorted by value descending; ties keep the earlier instance.
    """
    n_units = weight.shape[0]
    best_val = torch.full((n_units, 0), -torch.inf)
    best_idx = torch.zeros((n_units, 0), dtype=torch.int64)
    n_chunks = (q.shape[0] + q.chunks[0] - 1) // q.chunks[0]
    for start, rows in progress(iter_chunks(q), n_chunks, "topk chunks"):
        act = (torch.from_numpy(rows) @ weight.T + bias).T  # (units, rows)
        idx = torch.arange(start, start + rows.shape[0]).expand(n_units, -1)
        vals = torch.cat([best_val, act], dim=1)
        ids = torch.cat([best_idx, idx], dim=1)
        # A stable sort keeps earlier instances first among equal values: deterministic ties.
        order = torch.sort(vals, dim=1, descending=True, stable=True).indices[:, :k]
        best_val, best_idx = torch.gather(vals, 1, order), torch.gather(ids, 1, order)
    return best_idx.numpy(), best_val.numpy()

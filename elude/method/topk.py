"""Streaming per-unit top-k over the activation cache (eq. 1).

The unit's activation is its pre-activation a_u = W_u . q + b_u, recomputed from the cached layer
input. Each dataset shard gets a partial top-k (:func:`streaming_topk`), and :func:`merge_topk` combines
them. Memory bound: O(k x units) for the running result plus one chunk of rows.
"""
from __future__ import annotations

import logging
import warnings

import numpy as np
import torch

from ..util.progress import progress

log = logging.getLogger(__name__)


def clamp_k(k: int, n_instances: int) -> int:
    if k > n_instances:
        warnings.warn(f"topk.k={k} exceeds the {n_instances} cached instances; clamped to {n_instances}")
        return n_instances
    return k


def _keep_best(vals: torch.Tensor, ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    # A stable sort keeps earlier columns first among equal values; columns are in instance order, so
    # ties go to the earlier instance, in one pass and in a merge of shards alike.
    order = torch.sort(vals, dim=1, descending=True, stable=True).indices[:, :k]
    return torch.gather(vals, 1, order), torch.gather(ids, 1, order)


@torch.no_grad()
def streaming_topk(cache, weight: torch.Tensor, bias: torch.Tensor, k: int, buffer_rows: int = 16384,
                   unit_block: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 1: per unit, the k instances with the largest pre-activation, in one pass over the chunks of a
    :class:`elude.models.cache.Cache`.

    Chunk activations are buffered until at least max(k, ``buffer_rows``) columns wait, then merged with
    the running top-k in one stable sort: about N / max(k, buffer_rows) sorts instead of one per chunk,
    with the same result. Memory: O(max(k, buffer_rows) x units).
    Returns (indices, values), each (units, <= k), sorted by value descending; ties keep the earlier instance.
    """
    n_units = weight.shape[0]
    best_val = torch.full((n_units, 0), -torch.inf)
    best_idx = torch.zeros((n_units, 0), dtype=torch.int64)
    acts, starts, n_buf = [], [], 0

    def flush():
        nonlocal best_val, best_idx, acts, starts, n_buf
        if not acts:
            return
        act = torch.cat(acts, 1)
        idx = torch.cat([torch.arange(s, s + a.shape[1]) for s, a in zip(starts, acts)])
        best_val, best_idx = _merge_blocks(best_val, best_idx, act, idx.expand(n_units, -1), k, unit_block)
        acts, starts, n_buf = [], [], 0

    for start, rows in progress(cache.iter_chunks(), cache.n_chunks(), "topk chunks"):
        acts.append((torch.from_numpy(rows) @ weight.T + bias).T.contiguous())  # (units, rows)
        starts.append(start)
        n_buf += rows.shape[0]
        if n_buf >= max(k, buffer_rows):
            flush()
    flush()
    return best_idx.numpy(), best_val.numpy()


def _merge_blocks(val_a, idx_a, val_b, idx_b, k: int, unit_block: int):
    """Top-k of the columns of a then b (a's instances come first), unit block by unit block so that the
    sort's temporaries stay within O(unit_block x (k + columns))."""
    out_v, out_i = [], []
    for u in range(0, val_b.shape[0], unit_block):
        v, i = _keep_best(torch.cat([val_a[u : u + unit_block], val_b[u : u + unit_block]], 1),
                          torch.cat([idx_a[u : u + unit_block], idx_b[u : u + unit_block]], 1), k)
        out_v.append(v)
        out_i.append(i)
    return torch.cat(out_v), torch.cat(out_i)


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int, unit_block: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """The top-k of the union of partial top-k results (one per dataset shard, in shard order): equal
    to a single pass over all shards, ties included. Merged pairwise: memory O(k x units)."""
    best_idx, best_val = (torch.from_numpy(a) for a in parts[0])
    best_val, best_idx = _merge_blocks(best_val[:, :0], best_idx[:, :0], best_val, best_idx, k, unit_block)
    for idx, val in parts[1:]:
        best_val, best_idx = _merge_blocks(best_val, best_idx, torch.from_numpy(val), torch.from_numpy(idx), k, unit_block)
    return best_idx.numpy(), best_val.numpy()

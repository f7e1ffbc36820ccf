"""Per-image activations of units and sub-units on a dataset, and concept groups across neurons.

ELUDe splits each neuron on its own, so sub-units of different neurons can carry the same concept (the
paper's stated limitation, Sec. 4.2: redundancy at the layer level, "reduced via correlation-based pruning").
A concept group is a set of sub-units whose per-image activations on the evaluation split correlate: average
linkage on 1 - Pearson correlation, cut at 1 - ``threshold``, so every merge joins two sets whose mean
pairwise correlation is at least the threshold (average linkage does not chain through single pairs the way
connected components of the threshold graph would). Grouping is a view: no weight changes.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..models.data import iter_batches


@torch.no_grad()
def per_image_max(model: nn.Module, layer_path: str, layer, dataset, batch_size: int = 256,
                  workers: int = 0) -> dict[str, torch.Tensor]:
    """Each image's max over its valid instances of every unit (the original layer output) and sub-unit
    (``layer`` applied to the original layer input; the model is not changed): {"units" (N, U),
    "subunits" (N, S), "labels" (N,)} in dataset order, float32. Images without a valid instance are 0.
    Memory: N x (U + S) float32 (50,000 images x 4,000 features: 0.8 GB)."""
    from .scoring import forward_batch

    units, subs, labels = [], [], []
    for batch in iter_batches(dataset, batch_size, workers=workers):
        f = forward_batch(model, layer_path, batch)
        mask = ~f.valid[..., None]
        for out, acts in ((units, f.layer_out), (subs, layer.subunits_of_instances(f.layer_in))):
            m = acts.masked_fill(mask, -torch.inf).amax(1)
            out.append(torch.where(torch.isfinite(m), m, torch.zeros_like(m)).float())
        labels.append(batch.labels)
    return {"units": torch.cat(units), "subunits": torch.cat(subs), "labels": torch.cat(labels)}


def active(acts: torch.Tensor) -> torch.Tensor:
    """Features that fire (max > 0) and vary across images: the ones a label or a correlation can mean
    something for (the MS-Score's rule, per image)."""
    return (acts.amax(0) > 0) & (acts.std(0) > 0)


def correlation(acts: torch.Tensor) -> torch.Tensor:
    """Pearson correlation between the columns of ``acts`` (N, F) across images, in float64 (torch, not
    numpy: numpy's OpenBLAS crashes on large float64 products on some CPUs)."""
    x = acts.double()
    x = x - x.mean(0)
    x = x / x.norm(dim=0).clamp_min(1e-300)
    return (x.T @ x).clamp(-1, 1)


def concept_groups(acts: torch.Tensor, parent: np.ndarray, threshold: float) -> dict:
    """Group the active sub-units (columns of ``acts``, (N, S)) by correlation across images.

    Returns {"group": (S,) int array, -1 for inactive sub-units; groups numbered by decreasing size,
    "n_groups", "n_active_subunits", "n_multi_unit_groups" (groups spanning several neurons),
    "sizes", "mean_corr" (mean pairwise correlation within each group, NaN for singletons)}."""
    from scipy.cluster.hierarchy import fcluster, linkage

    on = active(acts).numpy()
    idx = np.nonzero(on)[0]
    group = np.full(acts.shape[1], -1, dtype=np.int64)
    if len(idx) == 0:
        return {"group": group, "n_groups": 0, "n_active_subunits": 0, "n_multi_unit_groups": 0,
                "sizes": [], "mean_corr": []}
    corr = correlation(acts[:, idx]).numpy()
    if len(idx) == 1:
        raw = np.ones(1, dtype=np.int64)
    else:
        dist = 1.0 - corr[np.triu_indices(len(idx), 1)]  # condensed form, row by row
        raw = fcluster(linkage(np.clip(dist, 0, 2), method="average"), t=1.0 - threshold, criterion="distance")
    labels, sizes = np.unique(raw, return_counts=True)
    order = labels[np.lexsort((labels, -sizes))]  # largest first; ties by first appearance in fcluster's order
    renumber = {int(old): new for new, old in enumerate(order)}
    group[idx] = [renumber[int(r)] for r in raw]
    sizes, mean_corr, multi = [], [], 0
    for g in range(len(order)):
        members = np.nonzero(group[idx] == g)[0]
        sizes.append(int(len(members)))
        block = corr[np.ix_(members, members)]
        mean_corr.append(float(block[np.triu_indices(len(members), 1)].mean()) if len(members) > 1 else float("nan"))
        multi += int(len(np.unique(parent[idx[members]])) > 1)
    return {"group": group, "n_groups": len(order), "n_active_subunits": int(len(idx)),
            "n_multi_unit_groups": multi, "sizes": sizes, "mean_corr": mean_corr}

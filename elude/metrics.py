"""Metrics: MS-Score (eq. 7, Section B.2), layer R^2, output differences, accuracy."""
from __future__ import annotations

import numpy as np
import torch


def ms_score(emb: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Eq. 7 for a batch of units: emb (units, K, D) L2-normalised, w (units, K) -> (units,).

    The weighted mean off-diagonal pairwise cosine similarity:
    (||sum_i w_i e_i||^2 - sum_i w_i^2) / ((sum_i w_i)^2 - sum_i w_i^2).
    """
    e = emb.double()
    w = w.double()
    num = ((w[..., None] * e).sum(1) ** 2).sum(-1) - (w**2).sum(1)
    den = w.sum(1) ** 2 - (w**2).sum(1)
    return (num / den).float()


def ms_scores(acts: torch.Tensor, layer_emb: torch.Tensor, pooled_emb: torch.Tensor, top_k: int,
              block: int = 64) -> dict[str, np.ndarray]:
    """MS-Score per unit in two spaces, following Section B.2.

    acts (images, instances, units): the units' activations on the evaluation split.
    layer_emb (images, instances, D): the original layer output (the paper's space).
    pooled_emb (images, D'): the model's pooled pre-logit image embedding (our second space).
    Per unit: rank images by max activation over instances, keep the top ``top_k``; embed each at
    its argmax instance (layer space) or as a whole image (pooled space); weight it by its
    activation min-max normalised with the unit's range over all evaluation instances. Units that
    never activate (max <= 0) or are constant are NaN (excluded from means). Also returns each
    unit's top image ids, for reports.
    """
    n_img, n_inst, n_units = acts.shape
    top_k = min(top_k, n_img)
    layer_emb = torch.nn.functional.normalize(layer_emb.float(), dim=-1)
    pooled_emb = torch.nn.functional.normalize(pooled_emb.float(), dim=-1)
    out = {"layer": np.full(n_units, np.nan, np.float32), "pooled": np.full(n_units, np.nan, np.float32),
           "top_images": np.zeros((n_units, top_k), np.int64)}
    for u0 in range(0, n_units, block):
        a = acts[:, :, u0 : u0 + block].float()  # (N, T, b)
        img_max, arg_inst = a.max(1)  # (N, b)
        lo, hi = a.amin((0, 1)), a.amax((0, 1))
        top_val, top_img = img_max.topk(top_k, dim=0)  # (K, b), sorted descending
        w = ((top_val - lo) / (hi - lo).clamp_min(1e-12)).T  # (b, K)
        inst = torch.gather(arg_inst, 0, top_img)  # (K, b)
        e_layer = layer_emb[top_img, inst].transpose(0, 1)  # (b, K, D)
        e_pool = pooled_emb[top_img].transpose(0, 1)
        valid = ((hi > 0) & (hi > lo)).numpy()
        for name, e in (("layer", e_layer), ("pooled", e_pool)):
            s = ms_score(e, w).numpy()
            out[name][u0 : u0 + block] = np.where(valid, s, np.nan)
        out["top_images"][u0 : u0 + block] = top_img.T.numpy()
    return out


def layer_r2(original: torch.Tensor, other: torch.Tensor) -> float:
    """R^2 = 1 - SSE / SST with SST summed over features around each feature's own mean
    (per-feature variance, pooled): rows are instances, columns features."""
    o = original.double().reshape(-1, original.shape[-1])
    r = other.double().reshape(-1, other.shape[-1])
    sse = ((o - r) ** 2).sum()
    sst = ((o - o.mean(0)) ** 2).sum()
    return float(1.0 - sse / sst)


def output_differences(y0: torch.Tensor, y1: torch.Tensor) -> dict[str, float]:
    """Max absolute difference, and max over samples of ||y1 - y0||_inf / ||y0||_inf (relative)."""
    diff = (y1.double() - y0.double()).abs().reshape(len(y0), -1)
    scale = y0.double().abs().reshape(len(y0), -1).amax(1).clamp_min(1e-30)
    return {"max_abs_diff": float(diff.max()), "max_rel_diff": float((diff.amax(1) / scale).max())}


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(-1) == labels).double().mean())

"""Metrics: MS-Score (eq. 7, Section B.2; its streaming top-K half is elude.evaluation.top_images.TopImages), output
differences, accuracy, R^2 (streamed)."""
from __future__ import annotations

import torch


def ms_score(emb: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Eq. 7 for a batch of units: emb (units, K, D) L2-normalised, w (units, K) -> (units,).

    The weighted mean off-diagonal pairwise cosine similarity:
    (||sum_i w_i e_i||^2 - sum_i w_i^2) / ((sum_i w_i)^2 - sum_i w_i^2).
    Undefined (NaN) for a unit with fewer than two images of non-zero weight (no pair to compare: a sparse
    feature that fires on one evaluation image).
    """
    e = emb.double()
    w = w.double()
    num = ((w[..., None] * e).sum(1) ** 2).sum(-1) - (w**2).sum(1)
    den = w.sum(1) ** 2 - (w**2).sum(1)
    return torch.where(den > 0, num / den, torch.nan).float()


def output_differences(y0: torch.Tensor, y1: torch.Tensor) -> dict[str, float]:
    """Max absolute difference, and max over samples of ||y1 - y0||_inf / ||y0||_inf (relative)."""
    diff = (y1.double() - y0.double()).abs().reshape(len(y0), -1)
    scale = y0.double().abs().reshape(len(y0), -1).amax(1).clamp_min(1e-30)
    return {"max_abs_diff": float(diff.max()), "max_rel_diff": float((diff.amax(1) / scale).max())}


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(-1) == labels).double().mean())


class R2:
    """R^2 = 1 - SSE / SST over instances, SST around each feature's own mean, pooled over features."""

    def __init__(self):
        self.n, self.s, self.ss, self.sse = 0, 0.0, 0.0, 0.0

    def update(self, ref: torch.Tensor, other: torch.Tensor) -> None:
        o, r = ref.double(), other.double()
        self.n += len(o)
        self.s, self.ss = self.s + o.sum(0), self.ss + (o**2).sum(0)
        self.sse += float(((o - r) ** 2).sum())

    def value(self) -> float:
        sst = float((self.ss - self.s**2 / max(self.n, 1)).sum())
        return float(1.0 - self.sse / sst) if sst > 0 else float("nan")

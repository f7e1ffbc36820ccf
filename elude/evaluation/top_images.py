"""The streaming half of the MS-Score (Section B.2): per feature, its top-K evaluation images (texts) and activation
range, read off batch by batch (:class:`TopImages`)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .metrics import ms_score


WEIGHT_RANGES = ("instances", "images")


class TopImages:
    """Streaming half of the MS-Score (Section B.2) for a set of units: per unit, the top-K images ranked
    by their max activation over valid instances (with that instance), and the unit's activation range
    over the evaluation split. Section B.2 normalises each image's weight "using the activation range
    observed across the entire evaluation split"; ``weight_range`` picks the reading: ``instances`` (the
    range of every valid instance's activation: the workflow's) or ``images`` (the range of the images'
    activations, each image's max over its instances). They differ only where the minimum differs: for a
    signed unit the instances' minimum lies far below any image's max, which flattens its weights; codes
    that are >= 0 with a zero somewhere get lo = 0 either way (docs/findings/faithfulness-audit.md, D6)."""

    def __init__(self, n_units: int, k: int, weight_range: str = "instances"):
        if weight_range not in WEIGHT_RANGES:
            raise ValueError(f"weight_range {weight_range!r}: one of {WEIGHT_RANGES}")
        self.k, self.weight_range = k, weight_range
        self.val = torch.full((n_units, 0), -torch.inf)
        self.img = torch.zeros((n_units, 0), dtype=torch.int64)
        self.inst = torch.zeros((n_units, 0), dtype=torch.int64)
        self.lo = torch.full((n_units,), torch.inf)
        self.hi = torch.full((n_units,), -torch.inf)
        self.lo_image = torch.full((n_units,), torch.inf)  # the smallest image activation (max over instances)
        self.fired = torch.zeros(n_units, dtype=torch.float64)  # valid instances where each unit fires (> 0)
        self.n_instances = 0

    def update(self, acts: torch.Tensor, valid: torch.Tensor, images: torch.Tensor) -> None:
        """acts (B, instances, units), valid (B, instances), images (B,) evaluation image ids."""
        if valid.any():
            v = acts[valid]
            self.lo, self.hi = torch.minimum(self.lo, v.amin(0)), torch.maximum(self.hi, v.amax(0))
            self.fired += (v > 0).sum(0, dtype=torch.float64)
            self.n_instances += len(v)
        img_max, arg = acts.masked_fill(~valid[..., None], -torch.inf).max(1)  # (B, units)
        if valid.any():
            self.lo_image = torch.minimum(self.lo_image, img_max[valid.any(1)].amin(0))
        vals = torch.cat([self.val, img_max.T], 1)
        order = torch.sort(vals, dim=1, descending=True, stable=True).indices[:, : self.k]
        self.val = torch.gather(vals, 1, order)
        self.img = torch.gather(torch.cat([self.img, images.expand(len(vals), -1)], 1), 1, order)
        self.inst = torch.gather(torch.cat([self.inst, arg.T], 1), 1, order)

    def activity(self) -> dict:
        """On the evaluation instances: L0 (features firing, i.e. > 0, per valid instance, on average) and the
        live features (fired at least once), out of ``n_features``."""
        return {"n_features": len(self.hi), "live_eval": int((self.hi > 0).sum()),
                "l0_eval": float(self.fired.sum()) / max(self.n_instances, 1)}

    def scores(self, layer_emb, pooled_emb: torch.Tensor) -> dict[str, np.ndarray]:
        """Eq. 7 per unit in the layer space (``layer_emb(images, instances)`` -> (units, K, D)) and the
        pooled space (``pooled_emb`` (images, D)); each image weighted by its activation min-max normalised
        with the unit's range. Units that never activate (max <= 0), are constant, or fire on a single image
        (no pair) are NaN."""
        k = int(torch.isfinite(self.val).all(0).sum())  # images with no valid instance never count
        val, img, inst = self.val[:, :k], self.img[:, :k], self.inst[:, :k]
        lo = self.lo if self.weight_range == "instances" else self.lo_image
        w = (val - lo[:, None]) / (self.hi - lo).clamp_min(1e-12)[:, None]
        ok = ((self.hi > 0) & (self.hi > lo)).numpy()
        out = {"top_images": img.numpy()}
        for name, emb in (("layer", layer_emb(img, inst)), ("pooled", pooled_emb[img])):
            out[name] = np.where(ok, ms_score(nn.functional.normalize(emb.float(), dim=-1), w).numpy(), np.nan)
        return out

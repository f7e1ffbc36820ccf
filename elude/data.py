"""Probe and evaluation datasets.

The embedded demo uses scikit-learn's digits (1,797 real 8x8 handwritten digits that ship with
scikit-learn, so nothing is downloaded). Images are scaled to [0, 1] and kept at 8x8: the demo ViT
uses 2x2 patches, which gives 16 patch tokens plus CLS per image.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class ImageSplit:
    images: torch.Tensor  # (N, C, H, W) float32, model-ready
    labels: torch.Tensor  # (N,) int64
    raw: np.ndarray  # (N, H, W) uint8, for display in reports


def digits_splits(eval_fraction: float, seed: int) -> dict[str, ImageSplit]:
    """Stratified, seeded split of scikit-learn's digits into 'probe' (training) and 'eval' (held out)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.images.astype(np.float32) / 16.0
    y = digits.target.astype(np.int64)
    idx = np.arange(len(y))
    probe_idx, eval_idx = train_test_split(idx, test_size=eval_fraction, random_state=seed, stratify=y)
    out = {}
    for name, ids in (("probe", np.sort(probe_idx)), ("eval", np.sort(eval_idx))):
        out[name] = ImageSplit(
            images=torch.from_numpy(x[ids][:, None]),
            labels=torch.from_numpy(y[ids]),
            raw=(x[ids] * 255).round().astype(np.uint8),
        )
    return out


def load_split(data_cfg: dict, split: str) -> ImageSplit:
    """The configured dataset's 'probe' or 'eval' split."""
    kind = data_cfg["kind"]
    if kind == "digits":
        return digits_splits(data_cfg["eval_fraction"], data_cfg["split_seed"])[split]
    raise ValueError(f"data.kind: unknown dataset kind {kind!r}; allowed: 'digits'")


def batches(split: ImageSplit, batch_size: int):
    """Yield (start index, image batch) in order."""
    for start in range(0, len(split.labels), batch_size):
        yield start, split.images[start : start + batch_size]

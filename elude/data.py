"""Probe and evaluation datasets.

The embedded demo uses scikit-learn's digits (1,797 real 8x8 handwritten digits that ship with
scikit-learn, so nothing is downloaded). Images are scaled to [0, 1] and kept at 8x8: the demo ViT
uses 2x2 patches, which gives 16 patch tokens plus CLS per image. ``imagefolder`` reads
``<dir>/<class>/<image>`` trees (ImageNet layout), resized to a square and scaled to [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch


@dataclass(frozen=True)
class ImageSplit:
    images: torch.Tensor  # (N, C, H, W) float32, model-ready
    labels: torch.Tensor  # (N,) int64
    raw: np.ndarray  # (N, H, W) or (N, H, W, 3) uint8, for display in reports
    skipped: list[str] = field(default_factory=list)  # unreadable files skipped by policy


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


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def image_folder(root: str | Path, image_size: int, channels: int, on_bad_image: str, key: str) -> ImageSplit:
    """All images under ``root/<class>/``, classes in sorted order; files sorted within a class.

    An unreadable or corrupt file raises (``on_bad_image: fail``, naming the file and the key to change)
    or is skipped and listed in ``skipped`` (``skip``).
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{key}: {str(root)!r} is not a directory (expected <dir>/<class>/<image>)")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    arrays, labels, skipped = [], [], []
    for label, cls in enumerate(classes):
        for path in sorted(p for p in (root / cls).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            try:
                with Image.open(path) as im:
                    im = im.convert("L" if channels == 1 else "RGB").resize((image_size, image_size), Image.BILINEAR)
                    arrays.append(np.asarray(im, dtype=np.uint8))
            except (UnidentifiedImageError, OSError, ValueError) as exc:
                if on_bad_image == "fail":
                    raise ValueError(f"{key}: cannot read image {path} ({exc}); fix or remove it, or set "
                                     "data.on_bad_image: skip to skip unreadable files and count them") from None
                skipped.append(str(path))
            else:
                labels.append(label)
    if not arrays:
        raise ValueError(f"{key}: no readable images under {root} (expected <dir>/<class>/<image>)")
    raw = np.stack(arrays)
    x = torch.from_numpy(raw.astype(np.float32) / 255.0)
    x = x[:, None] if channels == 1 else x.permute(0, 3, 1, 2)
    return ImageSplit(images=x.contiguous(), labels=torch.tensor(labels), raw=raw, skipped=skipped)


def load_split(data_cfg: dict, split: str) -> ImageSplit:
    """The configured dataset's 'probe' or 'eval' split."""
    kind = data_cfg["kind"]
    if kind == "digits":
        return digits_splits(data_cfg["eval_fraction"], data_cfg["split_seed"])[split]
    if kind == "imagefolder":
        key = f"data.{split}_dir"
        return image_folder(data_cfg[f"{split}_dir"], data_cfg["image_size"], data_cfg["channels"],
                            data_cfg["on_bad_image"], key)
    raise ValueError(f"data.kind: unknown dataset kind {kind!r}; allowed: 'digits', 'imagefolder'")


def batches(split: ImageSplit, batch_size: int):
    """Yield (start index, image batch) in order."""
    for start in range(0, len(split.labels), batch_size):
        yield start, split.images[start : start + batch_size]

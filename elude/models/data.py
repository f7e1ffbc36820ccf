"""Probe and evaluation datasets, streamed in batches.

Kinds (``data.kind``):
- ``digits``: scikit-learn's 1,797 real 8x8 handwritten digits (shipped, nothing downloaded), in memory.
- ``imagefolder``: ``<dir>/<class>/<image>`` trees (ImageNet layout), classes and files sorted.
- ``filelist``: a text file with one ``<path> [<integer label>]`` per line, paths relative to the file.
- ``text``: texts from a file, a folder or Python's own documentation, tokenized by the backbone's tokenizer
  (:mod:`elude.models.text`); instances are the tokens.
- ``factory``: a user function ``"package.module:function"`` called as ``fn(split="probe"|"eval", **kwargs)``
  returning a torch ``Dataset``. An item is a tensor, an ``(input, label)`` pair, or a dict with ``input``
  (a tensor, or a dict of tensors passed to the model as keyword arguments, e.g. ``input_ids`` and
  ``attention_mask``), optional ``label`` and optional ``valid``: a bool vector over the target layer's
  instances (e.g. False at padding tokens). Invalid instances never enter the cache or any metric.

Image files are decoded lazily in DataLoader workers and put through the backbone's native
preprocessing (:func:`image_transform`), so memory holds a bounded number of batches whatever the dataset
size. An unreadable image fails the stage (``on_bad_image: fail``) or becomes an all-invalid example
(``skip``): it keeps its index, contributes no instance, and is listed in the stage's manifest.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


@dataclass
class Batch:
    index: torch.Tensor  # (B,) dataset indices
    inputs: torch.Tensor | dict  # model input: a tensor, or keyword tensors
    labels: torch.Tensor  # (B,) int64, -1 = no label
    valid: torch.Tensor | None  # (B, instances) bool, or None = every instance is valid
    bad: dict[int, str]  # batch row -> file skipped by the on_bad_image policy (its instances are invalid)

    def __len__(self) -> int:
        return len(self.index)

    def valid_mask(self, n_instances: int) -> torch.Tensor:
        """(B, instances) instances that count: the dataset's mask, minus images skipped as unreadable."""
        if self.valid is None:
            valid = torch.ones(len(self), n_instances, dtype=torch.bool)
        elif tuple(self.valid.shape) != (len(self), n_instances):
            raise ValueError(f"data.factory: the dataset's 'valid' mask has {tuple(self.valid.shape)[1:]} entries per "
                             f"example, but the target layer sees {n_instances} instances: give one bool per instance")
        else:
            valid = self.valid.clone()
        for i in self.bad:  # an unreadable image (on_bad_image: skip) was replaced by zeros: none of it counts
            valid[i] = False
        return valid


# --- preprocessing ---------------------------------------------------------------------------------
def image_transform(pre: dict):
    """PIL image -> (C, H, W) float32: resize the short side to size / crop_pct and centre-crop to size
    (timm's and DINOv2's eval transform), or with ``resize: squash`` resize straight to size x size (the
    SigLIP image processors); then scale to [0, 1] and normalise by mean/std."""
    from torchvision.transforms import v2 as T

    interp = {"nearest": T.InterpolationMode.NEAREST, "bilinear": T.InterpolationMode.BILINEAR,
              "bicubic": T.InterpolationMode.BICUBIC}[pre["interpolation"]]
    size = int(pre["size"])
    resize = size if pre["crop_pct"] >= 1 else int(math.floor(size / pre["crop_pct"]))
    if pre.get("resize", "short_side") == "squash":
        resize = (size, size)
    return T.Compose([T.ToImage(), T.Resize(resize, interpolation=interp, antialias=True), T.CenterCrop(size),
                      T.ToDtype(torch.float32, scale=True), T.Normalize(list(pre["mean"]), list(pre["std"]))])


def read_image(path: Path, channels: int):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("L" if channels == 1 else "RGB")


# --- datasets --------------------------------------------------------------------------------------
class DigitsDataset(torch.utils.data.Dataset):
    """One split of scikit-learn's digits, scaled to [0, 1], 1 x 8 x 8 (stratified, seeded split)."""

    def __init__(self, split: str, eval_fraction: float, seed: int):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        idx = np.arange(len(digits.target))
        probe, ev = train_test_split(idx, test_size=eval_fraction, random_state=seed, stratify=digits.target)
        ids = np.sort(probe if split == "probe" else ev)
        self.raw = (digits.images[ids] / 16.0 * 255).round().astype(np.uint8)  # for display
        self.images = torch.from_numpy(digits.images[ids].astype(np.float32)[:, None] / 16.0)
        self.labels = torch.from_numpy(digits.target[ids].astype(np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"input": self.images[i], "label": int(self.labels[i])}

    def thumbnail(self, i: int, size: int = 64) -> np.ndarray:
        return self.raw[i]  # 8x8: always at full resolution


class ImageFiles(torch.utils.data.Dataset):
    """Image files with integer labels, decoded on access with the backbone's preprocessing."""

    def __init__(self, items: list[tuple[Path, int]], preprocess: dict | None, on_bad_image: str, key: str):
        if preprocess is None:
            raise ValueError(f"{key}: image files need a preprocessing, and this backbone has no native one: "
                             "set backbone.preprocess (size, crop_pct, mean, std, interpolation, channels)")
        self.items, self.pre, self.on_bad_image, self.key = items, preprocess, on_bad_image, key
        self.transform = image_transform(preprocess)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        from PIL import UnidentifiedImageError

        path, label = self.items[i]
        try:
            x = self.transform(read_image(path, self.pre["channels"]))
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            if self.on_bad_image == "fail":
                raise ValueError(f"{self.key}: cannot read image {path} ({exc}); fix or remove it, or set "
                                 "data.on_bad_image: skip to skip unreadable files and count them") from None
            size = int(self.pre["size"])
            return {"input": torch.zeros(self.pre["channels"], size, size), "label": label, "bad": str(path)}
        return {"input": x, "label": label}

    def thumbnail(self, i: int, size: int = 64) -> np.ndarray:
        from PIL import Image

        im = read_image(self.items[i][0], self.pre["channels"])
        im.thumbnail((size, size), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


def image_reader(ds, size: int, needed_by: str):
    """``image(i)``: evaluation example i as a uint8 image array at most ``size`` px (the dataset's
    ``thumbnail``), for stages that show or embed images; a dataset without images (e.g. text from a
    factory) is an error naming ``needed_by`` and the fix, before any work."""
    thumb = getattr(ds, "thumbnail", None)
    if thumb is None or len(ds) == 0 or thumb(0) is None:
        raise ValueError(f"{needed_by} needs the evaluation images, and this dataset has no thumbnail(i) method "
                         "returning an image array: add one to data.factory's dataset, or turn it off")
    return lambda i: thumb(int(i), size)


def folder_items(root: str | Path, key: str) -> list[tuple[Path, int]]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{key}: {str(root)!r} is not a directory (expected <dir>/<class>/<image>)")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    items = [(p, label) for label, cls in enumerate(classes)
             for p in sorted(p for p in (root / cls).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)]
    if not items:
        raise ValueError(f"{key}: no readable images under {root} (expected <dir>/<class>/<image>)")
    return items


def list_items(list_file: str | Path, key: str) -> list[tuple[Path, int]]:
    """``<path> [<label>]`` per line (blank lines and # comments ignored); relative paths are relative to
    the list file's folder; a missing label is -1."""
    list_file = Path(list_file)
    if not list_file.is_file():
        raise FileNotFoundError(f"{key}: {str(list_file)!r} is not a file (expected one '<path> [<label>]' per line)")
    items = []
    for line in list_file.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.rsplit(None, 1)
        path, label = (parts[0], parts[1]) if len(parts) == 2 and parts[1].lstrip("-").isdigit() else (line, "-1")
        items.append((list_file.parent / path, int(label)))
    if not items:
        raise ValueError(f"{key}: {list_file} lists no images")
    return items


def as_item(item) -> dict:
    """A dataset item as {"input", "label" (-1 = none), ["valid"], ["bad"]}: from a dict, an (input,) or
    (input, label) tuple (e.g. torch's TensorDataset), or a bare input."""
    if isinstance(item, dict):
        out = {"input": item["input"], "label": int(item.get("label", -1))}
        if "valid" in item:
            out["valid"] = torch.as_tensor(item["valid"], dtype=torch.bool)
        if "bad" in item:
            out["bad"] = item["bad"]
        return out
    if isinstance(item, (tuple, list)):
        return {"input": item[0], "label": int(item[1]) if len(item) > 1 else -1}
    return {"input": item, "label": -1}


class FactoryDataset(torch.utils.data.Dataset):
    """A user dataset, its items normalised to dicts (see the module docstring)."""

    def __init__(self, target: str, kwargs: dict, split: str):
        from .backbones import import_target

        self.inner = import_target(target, "data.factory.target")(split=split, **kwargs)
        if not hasattr(self.inner, "__getitem__") or not hasattr(self.inner, "__len__"):
            raise TypeError(f"data.factory.target: {target!r} returned a {type(self.inner).__name__}, not a "
                            "map-style torch Dataset (with __len__ and __getitem__)")

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> dict:
        return as_item(self.inner[i])

    def thumbnail(self, i: int, size: int = 64):
        return self.inner.thumbnail(i) if hasattr(self.inner, "thumbnail") else None  # the user's own size


def check_data(data_cfg: dict) -> None:
    """Before any job: the configured image folders or lists exist and hold at least one image (a cheap scan
    that stops at the first image; the jobs read everything), the texts can be read. Errors name the key."""
    for split in ("probe", "eval"):
        if data_cfg["kind"] == "imagefolder":
            key = f"data.{split}_dir"
            root = Path(data_cfg[key[5:]])
            if not root.is_dir():
                raise FileNotFoundError(f"{key}: {str(root)!r} is not a directory (expected <dir>/<class>/<image>)")
            if not any(p.suffix.lower() in IMAGE_SUFFIXES for d in root.iterdir() if d.is_dir() for p in d.iterdir()):
                raise ValueError(f"{key}: no images under {root} (expected <dir>/<class>/<image>, with suffixes "
                                 f"{', '.join(sorted(IMAGE_SUFFIXES))})")
        elif data_cfg["kind"] == "filelist":
            list_items(data_cfg[f"{split}_list"], f"data.{split}_list")
    if data_cfg["kind"] == "text":
        from .text import read_texts

        read_texts(data_cfg["text"])


def open_dataset(data_cfg: dict, split: str, preprocess: dict | None = None,
                 tokenizer_dir: str | Path | None = None) -> torch.utils.data.Dataset:
    """The configured dataset's 'probe' or 'eval' split; ``preprocess`` is the backbone's (for image files),
    ``tokenizer_dir`` its tokenizer (for text)."""
    kind = data_cfg["kind"]
    if kind == "text":
        from .text import TextDataset

        return TextDataset(data_cfg, split, tokenizer_dir)
    if kind == "digits":
        return DigitsDataset(split, data_cfg["eval_fraction"], data_cfg["split_seed"])
    if kind == "imagefolder":
        key = f"data.{split}_dir"
        return ImageFiles(folder_items(data_cfg[key[5:]], key), preprocess, data_cfg["on_bad_image"], key)
    if kind == "filelist":
        key = f"data.{split}_list"
        return ImageFiles(list_items(data_cfg[key[5:]], key), preprocess, data_cfg["on_bad_image"], key)
    if kind == "factory":
        ds = FactoryDataset(data_cfg["factory"]["target"], data_cfg["factory"].get("kwargs", {}), split)
        if len(ds) == 0:
            raise ValueError(f"data.factory.target: {data_cfg['factory']['target']!r} returned an empty {split!r} split; "
                             "both the 'probe' and the 'eval' split need examples")
        return ds
    raise ValueError(f"data.kind: unknown dataset kind {kind!r}; allowed: digits, imagefolder, filelist, text, factory")


# --- batches ---------------------------------------------------------------------------------------
def collate(items: list[dict], indices: list[int]) -> Batch:
    first = items[0]["input"]
    inputs = ({k: torch.stack([torch.as_tensor(it["input"][k]) for it in items]) for k in first}
              if isinstance(first, dict) else torch.stack([torch.as_tensor(it["input"]) for it in items]))
    valid = torch.stack([it["valid"] for it in items]) if "valid" in items[0] else None
    return Batch(torch.tensor(indices), inputs, torch.tensor([it["label"] for it in items]), valid,
                 {i: it["bad"] for i, it in enumerate(items) if "bad" in it})


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, ds, indices):
        self.ds, self.indices = ds, indices

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, j):
        return self.indices[j], as_item(self.ds[self.indices[j]])


def _collate_pairs(pairs):
    return collate([p[1] for p in pairs], [p[0] for p in pairs])


def iter_batches(ds, batch_size: int, indices=None, workers: int = 0):
    """Batches of ``ds`` over ``indices`` (default: all), in order. ``workers`` > 0 decodes in that many
    processes (at most 2 batches ahead each), so memory stays bounded for any dataset size."""
    indices = list(range(len(ds))) if indices is None else list(indices)
    if not indices:
        return iter(())
    in_memory = isinstance(ds, DigitsDataset)
    loader = torch.utils.data.DataLoader(_Indexed(ds, indices), batch_size=batch_size, shuffle=False,
                                         num_workers=0 if in_memory else workers, collate_fn=_collate_pairs,
                                         prefetch_factor=2 if workers and not in_memory else None,
                                         persistent_workers=False)
    return iter(loader)


def materialize(ds) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) of a whole small dataset (the demo model's training set)."""
    if isinstance(ds, DigitsDataset):
        return ds.images, ds.labels
    b = collate([ds[i] for i in range(len(ds))], list(range(len(ds))))
    return b.inputs, b.labels

"""The default run's backbone: a tiny timm VisionTransformer trained by the backbone stage on scikit-learn's
digits (8x8 images, ten classes), in about a minute on two CPU cores."""
from __future__ import annotations

import logging
import time

import torch
from torch import nn
from tqdm import tqdm

from ..models.backbones import build_from_spec

log = logging.getLogger(__name__)
# grey 8x8 digits scaled to [0, 1] by the dataset: no normalisation, one channel
DEMO_PREPROCESS = {"crop_pct": 1.0, "mean": [0.0], "std": [1.0], "interpolation": "bilinear", "channels": 1}


def demo_model_spec(arch: dict) -> dict:
    """The timm spec of the demo ViT (random init until trained)."""
    return {
        "kind": "timm",
        "name": "vit_tiny_patch16_224",  # overridden by kwargs below; timm needs a registered name
        "kwargs": {
            "img_size": arch["img_size"],
            "patch_size": arch["patch_size"],
            "in_chans": 1,
            "num_classes": 10,
            "embed_dim": arch["embed_dim"],
            "depth": arch["depth"],
            "num_heads": arch["num_heads"],
            "mlp_ratio": arch["mlp_ratio"],
        },
    }


def train_demo(arch: dict, train: dict, images: torch.Tensor, labels: torch.Tensor,
               device: str = "cpu") -> tuple[nn.Module, dict]:
    """Train the demo ViT on the probe split on ``device``; returns the model (on the CPU, eval mode) and
    training stats.

    Augmentation: random integer shifts of up to one pixel (digits are tiny; this is enough to
    generalise). Deterministic for a given seed; CPU results depend on the thread count, so training
    uses ``train['threads']`` (a parameter, part of the id) whatever the job was given. On CUDA the bytes
    differ from the CPU's (the device is then part of the backbone's id: elude.pipeline.plan).
    """
    job_threads = torch.get_num_threads()
    torch.set_num_threads(train["threads"])
    try:
        return _train(arch, train, images, labels, torch.device(device))
    finally:
        torch.set_num_threads(job_threads)


def _train(arch: dict, train: dict, images: torch.Tensor, labels: torch.Tensor,
           device: torch.device) -> tuple[nn.Module, dict]:
    torch.manual_seed(train["seed"])
    spec = demo_model_spec(arch)
    model = build_from_spec(spec).to(device)  # initialised on the CPU: the same start on every device
    images, labels = images.to(device), labels.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=train["lr"], weight_decay=train["weight_decay"])
    steps_per_epoch = (len(labels) + train["batch_size"] - 1) // train["batch_size"]
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=train["lr"], total_steps=train["epochs"] * steps_per_epoch, pct_start=0.15
    )
    gen = torch.Generator().manual_seed(train["seed"])
    t0 = time.time()
    for epoch in range(train["epochs"]):
        model.train()
        order = torch.randperm(len(labels), generator=gen)
        total = 0.0
        for i in range(0, len(labels), train["batch_size"]):
            idx = order[i : i + train["batch_size"]].to(device)
            x = images[idx]
            shift = torch.randint(-1, 2, (2,), generator=gen).tolist()
            x = torch.roll(x, shifts=shift, dims=(2, 3)) if train.get("shift_aug", True) else x
            loss = nn.functional.cross_entropy(model(x), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if (epoch + 1) % max(1, train["epochs"] // 10) == 0 or epoch == train["epochs"] - 1:
            meter = tqdm.format_meter(epoch + 1, train["epochs"], time.time() - t0, unit="epoch")
            log.info("train loss %.4f, epochs %s", total / len(labels), meter)
    return model.cpu().eval(), {"train_seconds": time.time() - t0, "final_loss": total / len(labels),
                                "device": str(device)}

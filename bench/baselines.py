"""Baseline training cost benchmark (not a test): what one epoch of each SAE/transcoder family costs, and
what the paper's full sweep (Sec. E.1: 99 configurations x 50 epochs, then the selected point on the two
other token seeds) would cost, at two shapes.

    .venv/bin/python bench/baselines.py [--threads 2] [--steps 20] [--device cpu]

- ``demo``: the default run's layer (fc2 256 -> 64, 512 features, 21,369 probe instances, batch 1,024),
  on a real zarr cache of synthetic rows streamed as in a training job (one full epoch per family, timed,
  after a warm-up epoch);
- ``paper``: a ViT-B fc2 (3072 -> 768, EF 8 = 6,144 features, batch 1,024, 32,000 archetypal candidates):
  ``--steps`` optimiser steps per family on random rows (in memory), extrapolated to an epoch of the
  paper's probe set (1,281,167 images x 2 tokens = 2,562,334 instances = 2,503 steps).

Prints per family: seconds per epoch, the cost of the family's sweep on one token seed (grid points x 50
epochs) and of the two extra seeds, and the total. Every family is measured in one run, side by side.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from elude.baselines import FAMILIES, GRID_AXES  # noqa: E402
from elude.baselines.models import Baseline  # noqa: E402
from elude.baselines.train import InstanceStream, fit, loss_terms  # noqa: E402
from elude.models import cache  # noqa: E402

SETTINGS = {"sparsity": 20, "archetypal_ratio": 0.1, "matryoshka_prefixes": [0.0625, 0.125, 0.25, 0.5, 1.0],
            "init_seed": 42}
HP = {"lr": 1e-3, "w_dead": 1e-4, "w_l1": 5e-3, "w_sp": 1e-3}
EPOCHS, PAPER_ROWS, SEEDS = 50, 1_281_167 * 2, 3


def sweep_points(family: str) -> int:
    return 3 ** len(GRID_AXES[family])  # the paper's grid: 3 values per axis


def demo_epoch(family: str, stream: InstanceStream, device) -> float:
    torch.manual_seed(42)
    points = torch.randn(2048, 64) if family == "archetypal" else None
    model = Baseline({"family": family, **SETTINGS}, 256, 64, 512, points)
    t = time.perf_counter()
    fit(model, stream, hp=HP, epochs=1, batch_size=1024, seed=42, device=device)
    return time.perf_counter() - t


def paper_step(family: str, steps: int, device) -> float:
    torch.manual_seed(42)
    d_in, d_out, n_feat, batch = 3072, 768, 6144, 1024
    points = torch.randn(32000, d_out) if family == "archetypal" else None
    model = Baseline({"family": family, **SETTINGS}, d_in, d_out, n_feat, points).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=HP["lr"])
    q, a = torch.randn(batch, d_in, device=device), torch.randn(batch, d_out, device=device)
    for i in range(steps + 2):  # two warm-up steps
        if i == 2:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
        x, y = model.inputs(q, a)
        loss, _ = loss_terms(model, x, y, HP)
        opt.zero_grad()
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / steps


def hours(s: float) -> str:
    return f"{s / 3600:.2f} h" if s >= 360 else f"{s:.0f} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", choices=["demo", "paper"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.only != "paper":
            rng = np.random.default_rng(0)
            x = torch.from_numpy(np.maximum(rng.standard_normal((21_369, 256)), 0).astype(np.float32))
            layer, net = torch.nn.Linear(256, 64), torch.nn.Sequential(torch.nn.Identity())
            cache.write_cache(net, net[0], torch.utils.data.TensorDataset(x), Path(tmp),
                              batch_size=4096, dtype="float16", chunk_rows=4096, compressor="lz4-1")
            stream = InstanceStream(cache.Cache([tmp]), layer.weight.detach(), layer.bias.detach())
            demo_epoch("topk", stream, device)  # warm-up: first-call costs (thread pools, lazy inits) not billed to a family
            for f in FAMILIES:
                rows.append(("demo", f, demo_epoch(f, stream, device)))
        if args.only != "demo":
            steps_per_epoch = PAPER_ROWS // 1024
            for f in FAMILIES:
                rows.append(("paper", f, paper_step(f, args.steps, device) * steps_per_epoch))
    print(f"device {device}, {args.threads} threads; sweep = 3 values per grid axis x {EPOCHS} epochs on the first"
          f" token seed; seeds = the selected point on {SEEDS - 1} more")
    print(f"| shape | family | s / epoch | grid points | sweep (1 seed) | + {SEEDS - 1} seeds | total |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    totals: dict[str, float] = {}
    for shape, f, epoch in rows:
        sweep = epoch * EPOCHS * sweep_points(f)
        extra = epoch * EPOCHS * (SEEDS - 1)
        totals[shape] = totals.get(shape, 0.0) + sweep + extra
        print(f"| {shape} | {f} | {epoch:.2f} | {sweep_points(f)} | {hours(sweep)} | {hours(extra)} | {hours(sweep + extra)} |")
    for shape, total in totals.items():
        print(f"| {shape} | **all 8 families** | | 99 | | | **{hours(total)}** |")


if __name__ == "__main__":
    main()

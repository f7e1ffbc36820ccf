"""The exact HDBSCAN core pass's primitives on one device, timed per block, with the totals they imply at n.

Issue 29's 20 s target at 400k x 3,072 hinges on the GPU's core pass (25 s on an H200 before; ~15 s of it the
float64 GEMM at the FP64 rate). Two ways down were analysed without a GPU (docs/performance.md): a float32-grade
screen from three TF32 GEMMs (its wider band costs exact recomputations, not timed here) and a symmetric pass
(each pair's product once, every row's candidates merged tile by tile). This script times what decides between
them, side by side in one process:

    python bench/gpu_core_pass.py                      # n = 400,000 on CUDA (~30 GB of GPU memory, < 1 min)
    python bench/gpu_core_pass.py --device cpu --n 20000 --d 256   # a smoke run

Rows: today's pass per block (float64 GEMM, top-k of min_samples + 1 + min_samples / 8 candidates, the 64 group
minima); the float32 screen with TF32 off and the three-TF32 split; a symmetric tile (float64 GEMM of b x b, then
both sides' candidates merged with a top-k). Each time is the median of 3 after a warm-up, synchronised.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the GPU machine has no installed elude

from elude.method.limits import BLOCK_MB  # noqa: E402


def timed(fn, device: torch.device, repeat: int = 3) -> float:
    """Median seconds of fn() over ``repeat`` runs after one warm-up."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def tf32_parts(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (float32) = hi + lo with hi and lo exact TF32 numbers (10 mantissa bits; lo truncated)."""
    hi = ((x.view(torch.int32) + 0x1000) & ~0x1FFF).view(torch.float32)
    lo = ((x - hi).view(torch.int32) & ~0x1FFF).view(torch.float32)
    return hi, lo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", type=int, default=None, help="points (default 400,000 on CUDA, 20,000 on the CPU)")
    ap.add_argument("--d", type=int, default=3072)
    ap.add_argument("--min-samples", type=int, default=1000)
    ap.add_argument("--tile", type=int, default=8192, help="a symmetric tile's side")
    args = ap.parse_args()
    dev = torch.device(args.device)
    n = args.n or (400_000 if dev.type == "cuda" else 20_000)
    d, ms = args.d, args.min_samples
    keep = min(n, ms + 1 + max(8, ms // 8))
    block = max(16, min(n, (BLOCK_MB[dev.type] * 2**20) // (4 * 8 * n)))  # as Points sizes it
    tile = min(args.tile, n)
    gen = torch.Generator(device=dev).manual_seed(0)
    centres = torch.randn(12, d, device=dev, generator=gen)
    x32 = centres[torch.randint(0, 12, (n,), device=dev, generator=gen)]
    x32 += torch.randn(n, d, device=dev, generator=gen)
    x32 /= x32.norm(dim=1, keepdim=True)
    x64 = x32.double()
    sq64, sq32 = (x64 * x64).sum(1), (x32 * x32).sum(1)
    hi, lo = tf32_parts(x32)
    ptr = torch.linspace(0, n, 65, device="cpu").long().tolist()
    rows = torch.arange(block, device=dev)
    allow = torch.backends.cuda.matmul.allow_tf32
    out: dict[str, tuple[float, float]] = {}  # name -> (seconds per unit, units)
    blocks = n / block

    def gemm64():
        return torch.addmm(sq64[None, :].expand(block, -1), x64[rows], x64.T, alpha=-2.0)

    d2 = gemm64()
    out["float64 GEMM (today)"] = (timed(gemm64, dev), blocks)
    out["top-k of the float64 block (today)"] = (timed(lambda: torch.topk(d2, keep, dim=1, largest=False), dev), blocks)
    out["64 group minima (today)"] = (timed(lambda: [d2[:, a:b].amin(1) for a, b in zip(ptr[:-1], ptr[1:])], dev), blocks)
    del d2
    torch.backends.cuda.matmul.allow_tf32 = False
    out["float32 GEMM, TF32 off"] = (timed(lambda: torch.addmm(sq32[None, :].expand(block, -1), x32[rows], x32.T,
                                                               alpha=-2.0), dev), blocks)
    torch.backends.cuda.matmul.allow_tf32 = True

    def split():
        g = torch.addmm(sq32[None, :].expand(block, -1), hi[rows], hi.T, alpha=-2.0)
        g.addmm_(hi[rows], lo.T, alpha=-2.0)
        return g.addmm_(lo[rows], hi.T, alpha=-2.0)

    d2s = split()
    out["three TF32 GEMMs (split float32)"] = (timed(split, dev), blocks)
    torch.backends.cuda.matmul.allow_tf32 = allow
    out["top-k of a float32 block"] = (timed(lambda: torch.topk(d2s, keep, dim=1, largest=False), dev), blocks)
    del d2s
    # a symmetric tile: one float64 GEMM of tile x tile, both sides' running candidates merged
    running = torch.full((tile, keep), float("inf"), dtype=torch.float64, device=dev)
    running_idx = torch.zeros((tile, keep), dtype=torch.int32, device=dev)
    cols = torch.arange(tile, 2 * tile, device=dev) % n
    col_ids = cols.to(torch.int32)[None, :].expand(tile, -1)

    def symmetric_tile():
        t = torch.addmm(sq64[cols][None, :].expand(tile, -1), x64[:tile], x64[cols].T, alpha=-2.0)
        for side in (t, t.T):
            vals, pos = torch.topk(torch.cat([running, side], 1), keep, dim=1, largest=False)
            torch.gather(torch.cat([running_idx, col_ids], 1), 1, pos)
        return vals

    tiles = (n / tile) * (n / tile + 1) / 2
    out[f"symmetric tile {tile} x {tile}: GEMM + 2 merges"] = (timed(symmetric_tile, dev), tiles)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}; n = {n:,}, d = {d:,}, min_samples {ms}, keep {keep}, block {block} rows")
    print(f"{'primitive':<46} {'ms per unit':>12} {'units':>9} {'implied s':>10}")
    for k, (s, units) in out.items():
        print(f"{k:<46} {1000 * s:>12.2f} {units:>9.1f} {s * units:>10.2f}")
    today = sum(out[k][0] * out[k][1] for k in out if k.endswith("(today)"))
    split_total = sum(out[k][0] * out[k][1] for k in ("three TF32 GEMMs (split float32)", "top-k of a float32 block",
                                                      "64 group minima (today)"))
    sym = next(v[0] * v[1] for k, v in out.items() if k.startswith("symmetric"))
    print(f"today's pass (GEMM + top-k + minima): {today:.2f} s; the TF32 split's (before its exact band): "
          f"{split_total:.2f} s; symmetric (before minima and the band): {sym:.2f} s")


if __name__ == "__main__":
    main()

"""Scale benchmark (not a test): cache -> top-k -> one cluster shard -> surgery on a random-init layer
shaped like ViT-B's fc2 (3072 -> 768), fed with synthetic activations, at growing instance counts.

Prints per stage: wall time, throughput (instances/s) and peak memory (max RSS of the stage's own
process), the growth exponent of each between consecutive sizes (time ~ N^a, memory ~ N^b), and the
cache stage's throughput as a ratio to the bare forward pass on the same inputs.

    .venv/bin/python bench/scale.py [--sizes 8000 16000 32000 80000] [--k 2000] [--units 4]

Each stage runs in a fresh process (`--stage`), so peak memory is that stage's alone. Synthetic inputs
are generated inside the cache process (and counted in its memory: the demo data path holds the
probe set in memory; streaming data loading is issue 5's).
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TOKENS = 10  # instances per synthetic "image"
STAGES = ["forward", "cache", "topk", "cluster", "surgery"]


def synthetic(n_rows: int) -> torch.Tensor:
    """GELU of a low-rank Gaussian: activations with structure, (images, TOKENS, 3072)."""
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(64, 3072, generator=g)
    out = torch.empty(n_rows // TOKENS, TOKENS, 3072)
    for i in range(0, len(out), 256):
        z = torch.randn(min(256, len(out) - i), TOKENS, 64, generator=g)
        out[i : i + 256] = nn.functional.gelu(z @ basis / 8)
    return out


def layer() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Identity(), nn.Linear(3072, 768)).eval()


def run_stage(stage: str, n: int, work: Path, k: int, units: int) -> dict:
    from elude import backbones
    from elude.stages import Stage, cache, cluster_shard, surgery_shard, topk

    t0 = time.perf_counter()
    if stage == "forward":  # the bare forward pass the cache stage is compared with
        model, x = layer(), synthetic(n)
        t0 = time.perf_counter()
        with torch.no_grad():
            for i in range(0, len(x), 256):
                model(x[i : i + 256])
    elif stage == "cache":
        model = layer()
        bb = work / "backbone"
        if not bb.exists():
            bb.mkdir()
            spec = {"kind": "factory", "target": "bench.scale:layer", "kwargs": {}}
            backbones.save_backbone(model, spec, bb)
            (bb / "layer.json").write_text(json.dumps({"path": "1", "type": "Linear", "n_units": 768, "n_upstream": 3072}))
        x = synthetic(n)
        from elude.cache import write_cache

        t0 = time.perf_counter()
        out = work / "cache"
        out.mkdir()
        write_cache(model, model[1], x, out, batch_size=256, dtype="float16", chunk_rows=4096, compressor="lz4-1")
    elif stage == "topk":
        topk(Stage("topk", "t", {"k": k}), str(work / "cache"), str(work / "backbone"), str(work / "topk"))
    elif stage == "cluster":
        p = {"backend": "cpu", "min_cluster_size": 50, "min_samples": 10, "cluster_selection_method": "leaf",
             "units_per_shard": units}
        cluster_shard(Stage("cluster", "c", p), 0, str(work / "cache"), str(work / "topk"), str(work / "backbone"),
                      str(work / "cluster"))
    elif stage == "surgery":
        surgery_shard(Stage("surgery", "s", {"rho_grid": [round(0.05 * i, 2) for i in range(1, 21)]}),
                      str(work / "cluster"), str(work / "cache"), str(work / "topk"), str(work / "backbone"),
                      str(work / "surgery"))
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[8000, 16000, 32000, 80000])
    ap.add_argument("--k", type=int, default=2000)
    ap.add_argument("--units", type=int, default=4, help="units in the one cluster/surgery shard")
    ap.add_argument("--stage", choices=STAGES)
    ap.add_argument("--n", type=int)
    ap.add_argument("--work", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.stage:  # child process: one stage, one size
        print(json.dumps(run_stage(args.stage, args.n, args.work, args.k, args.units)))
        return
    results: dict[tuple[str, int], dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            work = Path(tmp) / str(n)
            work.mkdir()
            for stage in STAGES:
                out = subprocess.run([sys.executable, __file__, "--stage", stage, "--n", str(n), "--work", str(work),
                                      "--k", str(args.k), "--units", str(args.units)], capture_output=True, text=True,
                                     cwd=ROOT, check=True)
                results[stage, n] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"layer 3072 -> 768, synthetic activations, k={args.k}, one shard of {args.units} units, 2 threads\n")
    print(f"{'stage':8} {'instances':>9} {'wall s':>8} {'inst/s':>10} {'peak MB':>8} {'time exp':>8} {'mem exp':>8}")
    for stage in STAGES:
        prev = None
        for n in args.sizes:
            r = results[stage, n]
            a = b = ""
            if prev:
                pn, pr = prev
                a = f"{math.log(r['seconds'] / pr['seconds']) / math.log(n / pn):.2f}"
                b = f"{math.log(r['max_rss_mb'] / pr['max_rss_mb']) / math.log(n / pn):.2f}"
            print(f"{stage:8} {n:>9} {r['seconds']:8.2f} {n / r['seconds']:10.0f} {r['max_rss_mb']:8.0f} {a:>8} {b:>8}")
            prev = (n, r)
    print("\ncache throughput / bare forward throughput (same inputs; goal >= 0.9):")
    for n in args.sizes:
        print(f"  {n:>9} instances: {results['forward', n]['seconds'] / results['cache', n]['seconds']:.2f}")


if __name__ == "__main__":
    main()

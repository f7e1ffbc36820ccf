"""Scale benchmark (not a test): cache -> top-k -> one cluster shard -> surgery on a random-init layer
shaped like ViT-B's fc2 (3072 -> 768), fed with synthetic activations, at growing instance counts.

Prints per stage: wall time, throughput (instances/s) and peak memory (max RSS of the stage's own
process), the growth exponent of each between consecutive sizes (time ~ N^a, memory ~ N^b), and the
cache stage's throughput as a ratio to the bare forward pass on the same inputs.

    .venv/bin/python bench/scale.py [--sizes 16000 32000 64000 160000] [--k 2000] [--units 4]

Each stage runs in a fresh process (`--stage`), so peak memory is that stage's alone. The synthetic
inputs are a map-style dataset that makes each image's activations on access (seeded by its index), so
the cache stage streams them in batches exactly as it streams image files; the bare forward pass reads
the same dataset through the same batch iterator, so the ratio isolates what caching adds (capture,
fp16 cast, compression and writes).
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
STAGES = ["forward", "cache", "cache_t2", "topk", "cluster", "surgery"]  # cache_t2: 2 tokens per image


class Synthetic(torch.utils.data.Dataset):
    """GELU of a low-rank Gaussian, made on access: activations with structure, (TOKENS, 3072) per image."""

    def __init__(self, n_rows: int):
        self.n = n_rows // TOKENS
        self.basis = torch.randn(64, 3072, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        z = torch.randn(TOKENS, 64, generator=torch.Generator().manual_seed(i + 1))
        return nn.functional.gelu(z @ self.basis / 8)


def layer() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Identity(), nn.Linear(3072, 768)).eval()


def run_stage(stage: str, n: int, work: Path, k: int, units: int) -> dict:
    from elude.models import backbones
    from elude.models.data import iter_batches
    from elude.pipeline.stages import cluster_shard, surgery_shard, topk, topk_part
    from elude.pipeline.stages.job import Stage

    t0 = time.perf_counter()
    if stage == "forward":  # the bare forward pass the cache stage is compared with
        model, x = layer(), Synthetic(n)
        t0 = time.perf_counter()
        with torch.no_grad():
            for batch in iter_batches(x, 256):
                model(batch.inputs)
    elif stage in ("cache", "cache_t2"):
        model = layer()
        bb = work / "backbone"
        if not bb.exists():
            bb.mkdir()
            spec = {"kind": "factory", "target": "bench.scale:layer", "kwargs": {}}
            backbones.save_backbone(model, spec, bb)
            (bb / "layer.json").write_text(json.dumps({"path": "1", "type": "Linear", "n_units": 768, "n_upstream": 3072}))
        x = Synthetic(n)
        from elude.models.cache import write_cache

        t0 = time.perf_counter()
        out = work / stage
        out.mkdir()
        write_cache(model, model[1], x, out, batch_size=256, dtype="float16", chunk_rows=4096, compressor="lz4-1",
                    tokens_per_image=2 if stage == "cache_t2" else None)
        seconds = time.perf_counter() - t0
        disk = sum(f.stat().st_size for f in (out / "q.zarr").rglob("*") if f.is_file())
        return {"seconds": seconds, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "disk_bytes": disk}
    elif stage == "topk":  # one dataset shard's partial top-k, then the merge
        topk_part(Stage("topk", "t", {"k": k}), str(work / "cache"), str(work / "backbone"), str(work / "part"))
        topk(Stage("topk", "t", {"k": k}), [str(work / "part")], str(work / "backbone"), str(work / "topk"))
    elif stage == "cluster":
        p = {"backend": "cpu", "min_cluster_size": 50, "min_samples": 10, "cluster_selection_method": "leaf",
             "units_per_shard": units}
        cluster_shard(Stage("cluster", "c", p), 0, [str(work / "cache")], str(work / "topk"), str(work / "backbone"),
                      str(work / "cluster"))
    elif stage == "surgery":
        surgery_shard(Stage("surgery", "s", {"rho_grid": [round(0.05 * i, 2) for i in range(1, 21)]}),
                      str(work / "cluster"), [str(work / "cache")], str(work / "topk"), str(work / "backbone"),
                      str(work / "surgery"))
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[16000, 32000, 64000, 160000])
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
    print("\ncache throughput / bare forward throughput (same inputs; goal >= 0.9), and bytes on disk per cached row:")
    for n in args.sizes:
        f = results["forward", n]["seconds"]
        print(f"  {n:>9} instances: all instances {f / results['cache', n]['seconds']:.2f} "
              f"({results['cache', n]['disk_bytes'] / n:.0f} B/row); 2 tokens per image "
              f"{f / results['cache_t2', n]['seconds']:.2f} ({results['cache_t2', n]['disk_bytes'] / (n // TOKENS * 2):.0f} B/row)")


if __name__ == "__main__":
    main()

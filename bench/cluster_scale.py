"""Per-unit clustering at scale (not a test): the hdbscan package against the exact torch backend, with
and without PCA pre-reduction, on the CPU and (where CUDA is present) on the GPU, side by side in one run.

Prints per variant, points n and width d: wall time of one unit's clustering, peak memory (max RSS of the
variant's own process; on the GPU also torch.cuda.max_memory_allocated), agreement with the exact
full-dimension result at the same (n, d) (ARI, and the fraction of points whose noise/cluster status
agrees), and growth exponents of time in n (time ~ n^a between consecutive sizes).

    .venv/bin/python bench/cluster_scale.py [--sizes 2000 6000 12000 25000 50000] [--dims 768 3072]
        [--package-limit 300] [--gpu-sizes 25000 50000 100000 200000 400000]

Data: L2-normalised Gaussian blobs with 5% uniform noise (like contribution vectors, rows are unit
length), seeded by (n, d). CPU rows use min_cluster_size 50, min_samples 5, leaf (the setting of the
issue's measurements); GPU rows use the paper's setting (Sec. E.7): min_cluster_size 1000, min_samples
at the library default (= 1000), leaf. Each variant runs in a fresh process (2 threads), so its peak RSS
is its own; the process first clusters a tiny warm-up unit (imports, compiled code, CUDA context: what a
shard job pays once), then the timed unit. The package is skipped where its predicted time (n^2 from the previous size) exceeds
--package-limit seconds; the torch backend's agreement reference is itself (exact by construction and
tested against the package in tests/test_exact_hdbscan.py).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CPU_SETTING = {"min_cluster_size": 50, "min_samples": 5, "method": "leaf"}
GPU_SETTING = {"min_cluster_size": 1000, "min_samples": None, "method": "leaf"}
VARIANTS = {  # name -> (backend, reduction dims or None)
    "hdbscan package": ("hdbscan", None),
    "torch CPU": ("torch:cpu", None),
    "torch CPU + PCA 64": ("torch:cpu", 64),
    "torch CPU + PCA 128": ("torch:cpu", 128),
    "torch GPU": ("torch:cuda", None),
    "torch GPU + PCA 128": ("torch:cuda", 128),
    "torch GPU + PCA 64": ("torch:cuda", 64),
}


def make_points(n: int, d: int) -> np.ndarray:
    rng = np.random.default_rng(n * 7919 + d)
    k = 12
    centres = rng.normal(size=(k, d))
    n_noise = n // 20
    x = centres[rng.integers(0, k, n - n_noise)] + rng.normal(size=(n - n_noise, d)) * rng.uniform(0.6, 1.2, (n - n_noise, 1))
    x = np.concatenate([x, rng.normal(size=(n_noise, d)) * 3.0]).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def run_variant(variant: str, n: int, d: int, setting: dict, out: Path) -> None:
    """Child process: cluster one unit, write labels and timings."""
    import torch

    torch.set_num_threads(2)
    from elude.method import clustering

    backend, dims = VARIANTS[variant]
    # warm up (imports, numba's compiled functions, CUDA context): a shard job pays this once, not per unit
    warm = make_points(300, 16)
    clustering.hdbscan_labels(warm, backend=backend, min_cluster_size=20, min_samples=5, method="leaf")
    x = make_points(n, d)
    if backend == "torch:cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    kept = 1.0
    if dims:
        x, kept = clustering.reduce_dims(x, "pca", dims, clustering.backend_device(backend))
    labels, probs = clustering.hdbscan_labels(x, backend=backend, **setting)
    if backend == "torch:cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    np.save(out / "labels.npy", labels)
    gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if backend == "torch:cuda" else None
    (out / "result.json").write_text(json.dumps({"seconds": seconds, "gpu_mb": gpu_mb,
                                                 "variance_kept": kept, "clusters": int(labels.max() + 1),
                                                 "noise": float((labels < 0).mean())}))


def measure(variant: str, n: int, d: int, setting: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, __file__, "--child", variant, str(n), str(d), json.dumps(setting), tmp]
        env = {**os.environ, "OMP_NUM_THREADS": "2"}
        proc = subprocess.Popen(cmd, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        if status != 0:
            return {"failed": f"exit status {status}"}
        r = json.loads((Path(tmp) / "result.json").read_text())
        r["labels"] = np.load(Path(tmp) / "labels.npy")
        r["rss_peak_mb"] = usage.ru_maxrss / 1024
        return r


def agreement(ref: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import adjusted_rand_score

    return adjusted_rand_score(ref, got), float(((ref < 0) == (got < 0)).mean())


def table(rows: list[dict], title: str) -> None:
    print(f"\n{title}")
    print(f"{'variant':22} {'d':>5} {'n':>7} {'wall s':>8} {'RSS MB':>8} {'GPU MB':>8} {'var kept':>8} {'K':>4} "
          f"{'noise':>6} {'ARI':>7} {'status':>7} {'time exp':>8}")
    for r in rows:
        if "skipped" in r or "failed" in r:
            print(f"{r['variant']:22} {r['d']:>5} {r['n']:>7}  {r.get('skipped') or r.get('failed')}")
            continue
        gpu = f"{r['gpu_mb']:8.0f}" if r.get("gpu_mb") else f"{'-':>8}"
        ari = f"{r['ari']:7.4f}" if r.get("ari") is not None else f"{'-':>7}"
        st = f"{r['status']:7.4f}" if r.get("status") is not None else f"{'-':>7}"
        print(f"{r['variant']:22} {r['d']:>5} {r['n']:>7} {r['seconds']:8.2f} {r['rss_peak_mb']:8.0f} {gpu} "
              f"{r['variance_kept']:8.3f} {r['clusters']:>4} {r['noise']:6.3f} {ari} {st} {r.get('exp', '-'):>8}")


def sweep(variants: list[str], sizes: list[int], dims: list[int], setting: dict, reference: str,
          package_limit: float) -> list[dict]:
    rows = []
    for d in dims:
        last: dict[str, tuple[int, float]] = {}
        for n in sizes:
            ref_labels = None
            for v in variants:
                row = {"variant": v, "n": n, "d": d}
                if v == "hdbscan package" and v in last:
                    n0, s0 = last[v]
                    predicted = s0 * (n / n0) ** 2
                    if predicted > package_limit:
                        rows.append({**row, "skipped": f"skipped: predicted {predicted:.0f} s > --package-limit"})
                        continue
                r = measure(v, n, d, setting)
                row.update(r)
                if "failed" not in r:
                    if v in last:
                        n0, s0 = last[v]
                        row["exp"] = f"{math.log(r['seconds'] / s0) / math.log(n / n0):.2f}"
                    last[v] = (n, r["seconds"])
                    if v == reference:
                        ref_labels = r["labels"]
                    if ref_labels is not None:
                        row["ari"], row["status"] = agreement(ref_labels, r["labels"])
                rows.append(row)
                print(f"  done: {v}, d={d}, n={n}: {row.get('seconds', float('nan')):.2f} s", file=sys.stderr, flush=True)
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        variant, n, d, setting, out = sys.argv[2:7]
        run_variant(variant, int(n), int(d), json.loads(setting), Path(out))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 6000, 12000, 25000, 50000])
    ap.add_argument("--dims", type=int, nargs="+", default=[768, 3072])
    ap.add_argument("--package-limit", type=float, default=300.0)
    ap.add_argument("--gpu-sizes", type=int, nargs="+", default=[25000, 50000, 100000, 200000, 400000])
    ap.add_argument("--variants", nargs="+", default=None, help="subset of the variants (default: all that can run)")
    args = ap.parse_args()
    import torch

    cpu = [v for v in VARIANTS if "GPU" not in v and (args.variants is None or v in args.variants)]
    # reference first: the exact full-dimension result
    cpu = ["torch CPU"] + [v for v in cpu if v != "torch CPU"]
    print(f"CPU: {os.cpu_count()} cores visible, 2 threads per variant; setting {CPU_SETTING}")
    table(sweep(cpu, args.sizes, args.dims, CPU_SETTING, "torch CPU", args.package_limit),
          "CPU (agreement against torch CPU, full dimension)")
    if torch.cuda.is_available():
        gpu = [v for v in VARIANTS if "GPU" in v and (args.variants is None or v in args.variants)]
        print(f"\nGPU: {torch.cuda.get_device_name()}; setting {GPU_SETTING}")
        table(sweep(gpu, args.gpu_sizes, [3072], GPU_SETTING, "torch GPU", args.package_limit),
              "GPU (agreement against torch GPU, full dimension)")
    else:
        print("\nGPU: CUDA not available here; the GPU half (torch GPU, full and PCA, n up to 400k at d = 3072, "
              "min_cluster_size 1000, min_samples default) runs unchanged where it is.")


if __name__ == "__main__":
    main()

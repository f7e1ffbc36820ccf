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

Presets (issue 29), each printing per rung the exact backend's phases (points, core distances, each
Borůvka round and the few-components finish, the long edges, Prim's replay, the tree half) and its
machine-independent counters (pairs screened, pairs prescreened (the core pass's cheap bounds), pairs
recomputed exactly, points searched per round, radius edges, rows screened in full), and writing the rows
as JSON (``--json``):

    .venv/bin/python bench/cluster_scale.py --cpu-proxy [--baseline-rev e61c9f0] [--json proxy.json]
    .venv/bin/python bench/cluster_scale.py --paper [--baseline-rev e61c9f0] [--json paper.json]
    .venv/bin/python bench/cluster_scale.py --tree-half [--json tree.json]

``--cpu-proxy``: n = 25,000 at d = 768, the paper's setting, torch on 2 CPU threads. ``--paper``: the
GPU ladder n = 25k .. 400k at d = 3072, the paper's setting, torch on CUDA. ``--baseline-rev`` runs the
same child on that commit's ``elude/`` (``git archive`` into a temporary folder) on the same machine in
the same run, and reports the speed-up and whether the labels are identical (rungs up to
``--baseline-max-n``). ``--screen float32|float64`` makes this code screen in that precision (default: as
the device chooses, ``elude.method._exact_hdbscan.points.screen_dtype``); ``--rungs`` replaces a preset's
sizes; ``--cpu-proxy --gpu-arithmetic [--proxy-d 3072]`` runs the GPU path's arithmetic on the CPU, whose
counters (pairs recomputed exactly, rows screened in full) are what a GPU would do; ``--unclustered`` replaces
the blobs with L2-normalised Gaussian points (no clusters: what the core pass's pruning costs where it finds
nothing to prune). Each row names its screen.
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
sys.path.insert(0, os.environ.get("ELUDE_CODE", str(ROOT)))  # a child may run another commit's elude/
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
    if os.environ.get("BENCH_DATA") == "unclustered":  # --unclustered: no structure for any pruning to use
        x = rng.normal(size=(n, d)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)
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
    stats = {}
    if backend.startswith("torch"):  # the exact backend's two halves, for its phases and counters
        from elude.method import _exact_hdbscan

        ms = setting["min_samples"] or setting["min_cluster_size"]
        how = {"screen": os.environ["BENCH_SCREEN"]} if os.environ.get("BENCH_SCREEN") else {}  # --screen
        if os.environ.get("BENCH_GPU_ARITHMETIC"):  # --gpu-arithmetic
            how["gpu_arithmetic"] = True
        mst = _exact_hdbscan.mutual_reachability_mst(x, ms, device=clustering.backend_device(backend), **how)
        labels, probs = _exact_hdbscan.hdbscan_from_mst(mst, setting["min_cluster_size"], setting["method"])
        stats = mst.stats
    else:
        labels, probs = clustering.hdbscan_labels(x, backend=backend, **setting)
    if backend == "torch:cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    np.save(out / "labels.npy", labels)
    np.save(out / "probs.npy", probs)
    gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if backend == "torch:cuda" else None
    (out / "result.json").write_text(json.dumps({"seconds": seconds, "gpu_mb": gpu_mb, "stats": stats,
                                                 "variance_kept": kept, "clusters": int(labels.max() + 1),
                                                 "noise": float((labels < 0).mean())}))


def measure(variant: str, n: int, d: int, setting: dict, code: str | None = None) -> dict:
    """One fresh child process; ``code``: a folder holding another commit's ``elude/`` to run instead."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, __file__, "--child", variant, str(n), str(d), json.dumps(setting), tmp]
        env = {**os.environ, "OMP_NUM_THREADS": "2", **({"ELUDE_CODE": code} if code else {})}
        if code:  # an older commit has no screen argument: it screens as it did
            env.pop("BENCH_SCREEN", None)
        proc = subprocess.Popen(cmd, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        if status != 0:
            return {"failed": f"exit status {status}"}
        r = json.loads((Path(tmp) / "result.json").read_text())
        r["labels"] = np.load(Path(tmp) / "labels.npy")
        r["probs"] = np.load(Path(tmp) / "probs.npy")
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


def export_rev(rev: str, into: Path) -> str:
    """``rev``'s elude/ in ``into`` (git archive), for a side-by-side run of that commit's code; ``rev`` may
    also be a folder that holds such an elude/ already (a machine without the git history: bench/gpu_checks.sh)."""
    if (Path(rev) / "elude").is_dir():
        return str(Path(rev).resolve())
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "elude"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return str(into)


def phases_table(rows: list[dict]) -> None:
    """Per rung: the exact backend's phases (seconds) and its machine-independent counters."""
    print(f"\n{'code':10} {'n':>7} {'total s':>8} {'points':>7} {'core':>7} {'rounds (s/searched)':>34} "
          f"{'long':>6} {'prim':>6} {'tree':>6} {'screened':>10} {'prescreen':>10} {'exact':>10} {'radius':>10} {'full':>5} "
          f"{'speed-up':>8} {'labels':>9}")
    for r in rows:
        if "failed" in r or "skipped" in r:
            print(f"{r['code']:10} {r['n']:>7}  {r.get('failed') or r.get('skipped')}")
            continue
        st, ph = r.get("stats", {}), r.get("stats", {}).get("phase_s", {})
        f = lambda k: f"{ph[k]:7.2f}" if k in ph else f"{'-':>7}"  # noqa: E731
        rounds = " ".join(("F" if x["finish"] else "") + f"{x['s']:.1f}/{x['searched']}" for x in st.get("rounds", []))
        c = lambda k: f"{st[k]:10.3g}" if k in st else f"{'-':>10}"  # noqa: E731
        print(f"{r['code'] + ' ' + st.get('screen', '')[5:]:10} {r['n']:>7} {r['seconds']:8.2f} {f('points')} {f('core_distances')} {rounds or '-':>34} "
              f"{f('long_edges')[1:]} {f('prim')[1:]} {f('tree')[1:]} {c('pairs_screened')} {c('pairs_prescreened')} "
              f"{c('pairs_exact')} "
              f"{c('radius_edges')} {st.get('rows_screened_in_full', st.get('rows_exact_in_full', '-')):>5} "
              f"{r.get('speedup', '-'):>8} {r.get('identical', '-'):>9}")
        if st.get("prescreen_failed"):
            print("  ^ the prescreen's bound failed on this rung: its core pass ran again without it (a warning says where)")
        if st.get("rows_not_prescreened"):
            print(f"  ^ {st['rows_not_prescreened']} rows without the prescreen: there it skipped less than it cost")


def preset(name: str, sizes: list[int], d: int, variant: str, baseline_rev: str | None, baseline_max_n: int,
           json_path: str | None) -> None:
    """A preset ladder: this code (and a baseline commit's, side by side) at the paper's setting."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = export_rev(baseline_rev, Path(tmp)) if baseline_rev else None
        for n in sizes:
            now = {"code": "this", "n": n, "d": d, **measure(variant, n, d, GPU_SETTING)}
            print(f"  done: this code, n={n}: {now.get('seconds', float('nan')):.2f} s", file=sys.stderr, flush=True)
            rows.append(now)
            if base and n <= baseline_max_n:
                old = {"code": Path(baseline_rev).name[:10], "n": n, "d": d, **measure(variant, n, d, GPU_SETTING, base)}
                print(f"  done: {baseline_rev}, n={n}: {old.get('seconds', float('nan')):.2f} s", file=sys.stderr, flush=True)
                if "failed" not in now and "failed" not in old:
                    now["speedup"] = f"{old['seconds'] / now['seconds']:.2f}x"
                    same = np.array_equal(now["labels"], old["labels"]) and np.array_equal(now["probs"], old["probs"])
                    now["identical"] = "yes" if same else f"ARI {agreement(old['labels'], now['labels'])[0]:.4f}"
                rows.append(old)
    import torch

    where = torch.cuda.get_device_name() if variant == "torch GPU" else f"{os.cpu_count()} CPU cores visible, 2 threads"
    print(f"\n{name}: d = {d}, setting {GPU_SETTING} (the paper's, Sec. E.7); {where}; {time.strftime('%Y-%m-%d')}")
    print("rounds: per Borůvka round seconds/points searched, F = the few-components finish; screened/exact: "
          "pairs; radius: radius-list edges; full: rows whose band ran past their candidates (screened in full; older code: recomputed exactly in full); labels: labels and "
          "probabilities identical to the baseline's")
    phases_table(rows)
    if json_path:
        keep = [{k: v for k, v in r.items() if k not in ("labels", "probs")} for r in rows]
        Path(json_path).write_text(json.dumps({"preset": name, "d": d, "setting": GPU_SETTING, "device": where,
                                               "date": time.strftime("%Y-%m-%d"), "rows": keep}, indent=1))
        print(f"wrote {json_path}")


def tree_half(sizes: list[int], json_path: str | None) -> None:
    """The tree half alone (single linkage, condensed tree, selection, probabilities) on spanning trees of n
    points (random attachment, continuous weights: the shape does not change the work, which is linear),
    ours against the hdbscan package's functions, side by side, outputs compared bitwise."""
    from hdbscan._hdbscan_linkage import label
    from hdbscan.hdbscan_ import _tree_to_labels

    from elude.method._exact_hdbscan.tree import tree_to_labels

    tree_to_labels(np.array([[0, 1, 1.0], [1, 2, 2.0]]), 2, "leaf")  # compile (numba's cache) outside the timing
    rows_out = []
    print("\nTree half, min_cluster_size 1000: seconds (ours | the package), identical outputs")
    print(f"{'n':>8} {'method':>6} {'ours s':>8} {'package s':>10} {'speed-up':>9} {'identical':>9}")
    for n in sizes:
        rng = np.random.default_rng(n)
        new = np.arange(1, n)
        rows = np.stack([rng.integers(0, new), new, rng.random(n - 1)], 1)
        for method in ("leaf", "eom"):
            t = time.perf_counter()
            ours = tree_to_labels(rows, 1000, method)
            t_ours = time.perf_counter() - t
            t = time.perf_counter()
            ref = _tree_to_labels(None, label(rows[np.argsort(rows.T[2]), :]), 1000, method)[:2]
            t_ref = time.perf_counter() - t
            same = np.array_equal(ours[0], ref[0]) and np.array_equal(ours[1], ref[1])
            rows_out.append({"n": n, "method": method, "ours_s": t_ours, "package_s": t_ref, "identical": same})
            print(f"{n:>8} {method:>6} {t_ours:8.3f} {t_ref:10.2f} {t_ref / t_ours:8.0f}x {'yes' if same else 'NO':>9}", flush=True)
    if json_path:
        Path(json_path).write_text(json.dumps({"preset": "tree half", "date": time.strftime("%Y-%m-%d"), "rows": rows_out}, indent=1))


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
    ap.add_argument("--cpu-proxy", action="store_true", help="n = 25k at d = 768, the paper's setting, on the CPU")
    ap.add_argument("--paper", action="store_true", help="the GPU ladder n = 25k..400k at d = 3072, the paper's setting")
    ap.add_argument("--baseline-rev", default=None,
                    help="with a preset: also run this commit's code (or a folder holding its elude/), side by side")
    ap.add_argument("--baseline-max-n", type=int, default=100_000, help="largest rung the baseline runs on")
    ap.add_argument("--json", default=None, help="with a preset: write its rows here")
    ap.add_argument("--tree-half", action="store_true", help="the tree half alone at n = 25k..400k, ours vs the package's")
    ap.add_argument("--screen", choices=["float32", "float64"], default=None,
                    help="this code's screen precision (default: as the device chooses; a baseline keeps its own)")
    ap.add_argument("--rungs", type=int, nargs="+", default=None,
                    help="with a preset: these n instead of its own (--paper 25k..400k, --cpu-proxy 25k)")
    ap.add_argument("--proxy-d", type=int, default=768, help="with --cpu-proxy: the points' width")
    ap.add_argument("--gpu-arithmetic", action="store_true",
                    help="with --cpu-proxy: the GPU path's arithmetic run on the CPU (its counters are the GPU's)")
    ap.add_argument("--unclustered", action="store_true",
                    help="L2-normalised Gaussian points without blobs: the worst case for the core pass's pruning")
    args = ap.parse_args()
    import torch

    if args.screen:
        os.environ["BENCH_SCREEN"] = args.screen  # this code's children only (measure drops it for a baseline)
    if args.gpu_arithmetic:
        os.environ["BENCH_GPU_ARITHMETIC"] = "1"
    if args.unclustered:
        os.environ["BENCH_DATA"] = "unclustered"  # every child's points, this code's and a baseline's

    if args.tree_half:
        tree_half([25_000, 100_000, 400_000], args.json)
        return
    if args.cpu_proxy:
        title = "CPU proxy" + (", the GPU's arithmetic" if args.gpu_arithmetic else "")
        preset(title + (", unclustered" if args.unclustered else ""), args.rungs or [25_000], args.proxy_d, "torch CPU",
               args.baseline_rev, args.baseline_max_n, args.json)
        return
    if args.paper:
        if not torch.cuda.is_available():
            sys.exit("--paper needs a CUDA GPU (it measures the GPU ladder); --cpu-proxy runs on the CPU")
        preset("GPU ladder", args.rungs or [25_000, 50_000, 100_000, 200_000, 400_000], 3072, "torch GPU",
               args.baseline_rev, args.baseline_max_n, args.json)
        return

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

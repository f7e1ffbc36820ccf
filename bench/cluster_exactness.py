"""Held-out exactness of the exact torch HDBSCAN (not a test): cases the test suite does not hold, up to n = 20,000,
each compared with the hdbscan package end to end (its exact ``prims_kdtree`` algorithm, euclidean).

    .venv/bin/python bench/cluster_exactness.py [--max-n 20000] [--quick]

Cases (seeded apart from tests/test_exact_hdbscan.py's): L2-normalised blobs at d = 8, 64 and 768; blobs with
10 % and 50 % exact duplicates; grid-quantised points (many equal distances); each with leaf and EOM selection
and min_samples 1, 5 and the library default (= min_cluster_size). Per case it prints whether labels and
probabilities are bitwise the package's ("exact"), else whether the clusterings agree up to renumbering with
probabilities within 1e-5 ("same"), for the torch backend on the CPU, the GPU's arithmetic run on the CPU
(top-k selection, sums in torch) with a float64 and with a float32 screen, and CUDA where a GPU is visible
(with its own choice of screen, and with the other one); and the seconds of each.

    .venv/bin/python bench/cluster_exactness.py --tie-sweep 60

runs instead 60 small grid-quantised and 60 binary cases (exact distance ties between distinct pairs) x 4
min_samples x 2 selection methods in the three CPU arithmetics (and CUDA's two screens where a GPU is visible, as
for every mode below), printing only the comparisons that are not exact.

    .venv/bin/python bench/cluster_exactness.py --fuzz 40

runs instead 40 random small cases (one of seven families each: grid-quantised, extra exact copies, binary, 2-d
mixtures, rows at mixed scales, sparse non-negative, heavy-tailed norms; n 500..5,000, d 2..128) x min_samples 1, 5,
25, 60 x 2 selection methods in every arithmetic, printing only the comparisons that are not exact.

    .venv/bin/python bench/cluster_exactness.py --edge-cases

runs instead 20 cases at the edges of the screen's bounds and of the library's small-n rules (n = min_samples + 1,
all points identical, copies in groups larger than min_samples, d = 1, coordinates scaled by 1e4 and 1e-4, an
offset of 1e3 (|x|^2 ~ 1.6e7 against distances ~ 1: the screen's bound covers every pair), pairs one ulp apart, an
outlier, min_samples up to n - 1, float16-quantised values), both selection methods, through the library's entry
point (``clustering.hdbscan_labels``) and every arithmetic.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def blobs(rng, n: int, d: int, k: int = 8, spread: float = 0.9) -> np.ndarray:
    x = rng.normal(size=(k, d))[rng.integers(0, k, n)] + spread * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def cases(max_n: int, quick: bool) -> dict[str, tuple[np.ndarray, int]]:
    """name -> (points, min_cluster_size)."""
    rng = np.random.default_rng(20261205)
    out = {
        "blobs d=8": (blobs(rng, min(max_n, 20_000), 8), 100),
        "blobs d=64": (blobs(rng, min(max_n, 6_000), 64), 50),
        "blobs d=768": (blobs(rng, min(max_n, 3_000), 768), 30),
        "10% duplicates d=32": (np.concatenate([b := blobs(rng, 3_600, 32), b[:400]]), 40),
        "50% duplicates d=16": (np.repeat(blobs(rng, 1_500, 16), 2, axis=0), 40),
        "grid-quantised d=4": (np.round(blobs(rng, min(max_n, 10_000), 4) * 6) / 6, 60),
    }
    if quick:
        out = {k: (x[: min(len(x), 2_000)], mcs) for k, (x, mcs) in out.items()}
    return out


def package(x: np.ndarray, mcs: int, ms: int | None, method: str):
    import hdbscan

    model = hdbscan.HDBSCAN(min_cluster_size=mcs, min_samples=ms, algorithm="prims_kdtree",
                            cluster_selection_method=method, core_dist_n_jobs=1)
    model.fit(np.asarray(x, dtype=np.float64))
    return model.labels_.astype(np.int64), model.probabilities_


def compare(ref, got) -> str:
    (lr, pr), (lg, pg) = ref, got
    if np.array_equal(lr, lg) and np.array_equal(pr.astype(np.float32), pg):
        return "exact"
    if not np.array_equal(lr < 0, lg < 0):
        return f"DIFFERENT noise (ARI {adjusted_rand(lr, lg):.4f})"
    pairs = np.unique(np.stack([lr[lr >= 0], lg[lg >= 0]], 1), axis=0) if (lr >= 0).any() else np.zeros((0, 2))
    same = (len(pairs) == len(np.unique(lr[lr >= 0])) == len(np.unique(lg[lg >= 0]))
            and np.abs(pr - pg).max() <= 1e-5)
    return "same" if same else f"DIFFERENT (ARI {adjusted_rand(lr, lg):.4f})"


def adjusted_rand(a, b) -> float:
    from sklearn.metrics import adjusted_rand_score

    return adjusted_rand_score(a, b)


def tie_cases(seeds: int):
    """Small cases where distinct pairs lie at exactly equal distances (the ties the sparse graph of Prim's replay
    must hold): per seed a grid-quantised one (n in 300..1500, d in {2, 3, 4, 6}, q in {3, 4, 6, 8} steps per
    unit) and a binary one (prototypes of 0/1 features with 8 % of bits flipped, n in 300..1500, d in {8, 16, 32};
    every other seed L2-normalised). Yields (name, rng, points)."""
    for seed in range(seeds):
        rng = np.random.default_rng(1000 + seed)
        n, d, q = int(rng.integers(300, 1500)), int(rng.choice([2, 3, 4, 6])), int(rng.choice([3, 4, 6, 8]))
        yield f"grid seed {seed} n {n} d {d} q {q}", rng, np.round(blobs(rng, n, d) * q) / q
        rng = np.random.default_rng(5000 + seed)
        n, d, k = int(rng.integers(300, 1500)), int(rng.choice([8, 16, 32])), int(rng.integers(3, 8))
        x = ((rng.random((k, d)) < 0.3)[rng.integers(0, k, n)] ^ (rng.random((n, d)) < 0.08)).astype(np.float32)
        if seed % 2:
            x = (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)
        yield f"binary seed {seed} n {n} d {d}", rng, x


def edge_cases(rng):
    """(name, points, min_cluster_size, min_samples) at the edges listed in the module docstring."""
    x = blobs(rng, 1000, 16, 4)
    yield "n = min_samples + 1", blobs(rng, 11, 5), 5, 10
    yield "n = min_cluster_size", blobs(rng, 20, 5), 20, 5
    yield "all identical", np.ones((200, 7), np.float32), 10, 5
    yield "two identical groups", np.repeat(np.eye(2, 6, dtype=np.float32), 100, 0), 10, 5
    yield "copies > min_samples", np.repeat(blobs(rng, 60, 20, 3), 12, 0), 15, 5
    yield "d = 1 continuous", rng.normal(size=(800, 1)).astype(np.float32), 20, 5
    yield "d = 1 integers", rng.integers(0, 30, size=(800, 1)).astype(np.float32), 20, 5
    yield "scaled by 1e4", blobs(rng, 1500, 32, 5) * 1e4, 30, 5
    yield "scaled by 1e-4", blobs(rng, 1500, 32, 5) * 1e-4, 30, 5
    yield "offset 1e3", blobs(rng, 1500, 16, 5) + 1e3, 30, 5
    yield "pairs one ulp apart", np.concatenate([x, np.nextafter(x, np.float32(2))]), 30, 5
    yield "one far outlier", np.concatenate([blobs(rng, 900, 16, 3), np.full((1, 16), 50, np.float32)]), 30, 5
    yield "min_samples 400 of 600", blobs(rng, 600, 16, 3), 30, 400
    yield "min_samples = n - 1", blobs(rng, 300, 16, 3), 30, 299
    yield "one blob", blobs(rng, 1200, 40, 1, 0.3), 30, 5
    yield "gaussian, unnormalised", rng.normal(size=(2000, 50)).astype(np.float32), 25, 5
    yield "sparse non-negative", np.maximum(rng.normal(size=(1500, 64)) - 1.5, 0).astype(np.float32), 25, 5
    yield "half zero rows", np.concatenate([blobs(rng, 500, 30, 3), np.zeros((500, 30), np.float32)]), 25, 5
    yield "copies among blobs", np.concatenate([blobs(rng, 800, 24, 4), np.repeat(blobs(rng, 40, 24, 4), 7, 0)]), 25, 3
    yield "float16-quantised", blobs(rng, 1500, 8, 5).astype(np.float16).astype(np.float32), 25, 5


def edge_sweep(arithmetics: dict) -> int:
    """:func:`edge_cases` through ``clustering.hdbscan_labels`` (its small-n rules included) and each arithmetic's
    MST; prints one line per case and method, returns the number of comparisons that are not exact."""
    from elude.method import _exact_hdbscan as exact
    from elude.method import clustering

    bad = total = 0
    started = time.perf_counter()
    for name, x, mcs, ms in edge_cases(np.random.default_rng(20261206)):
        x = np.ascontiguousarray(x, dtype=np.float32)
        msts = {v: exact.mutual_reachability_mst(x, ms, device=dev, gpu_arithmetic=gpu, screen=screen)
                for v, (dev, gpu, screen) in arithmetics.items()}
        for method in ("leaf", "eom"):
            ref = package(x, mcs, ms, method)
            verdicts = {"entry point": compare(ref, clustering.hdbscan_labels(
                x, min_cluster_size=mcs, min_samples=ms, method=method, backend="torch:cpu"))}
            verdicts |= {v: compare(ref, exact.hdbscan_from_mst(mst, mcs, method)) for v, mst in msts.items()}
            total += len(verdicts)
            bad += sum(v != "exact" for v in verdicts.values())
            print(f"{name:24} n {len(x):5} d {x.shape[1]:3} mcs {mcs:3} ms {ms:3} {method:4} clusters "
                  f"{ref[0].max() + 1:2} noise {(ref[0] < 0).sum():5} | " +
                  " ".join(f"{v}: {verdict}" for v, verdict in verdicts.items()), flush=True)
    print(f"edge cases: {bad} of {total} comparisons not exact ({time.perf_counter() - started:.0f} s)")
    return bad


def fuzz_cases(seeds: int):
    """Random small cases, one family per seed (n 500..5,000, d 2..128): grid-quantised, extra exact copies, binary,
    2-d mixtures, rows at mixed scales (1e-2, 1, 1e2), sparse non-negative, heavy-tailed (Cauchy) norms.
    Yields (name, rng, points)."""
    for seed in range(seeds):
        rng = np.random.default_rng(9000 + seed)
        kind = str(rng.choice(["quantised", "copies", "binary", "2-d", "scales", "sparse", "heavy-tailed"]))
        n, d = int(rng.integers(500, 5000)), int(rng.choice([2, 3, 5, 8, 16, 48, 128]))
        k, spread = int(rng.integers(2, 12)), float(rng.uniform(0.3, 1.5))
        x = blobs(rng, n, d, k, spread)
        if kind == "quantised":
            x = np.round(x * int(rng.integers(2, 12)))
        elif kind == "copies":
            x = np.concatenate([x, x[rng.integers(0, n, int(rng.integers(1, n // 2)))]])
        elif kind == "binary":
            x = (rng.random((k, d)) < 0.3)[rng.integers(0, k, n)] ^ (rng.random((n, d)) < rng.uniform(0.02, 0.2))
        elif kind == "2-d":
            x = rng.normal(size=(k, 2))[rng.integers(0, k, n)] * 3 + rng.normal(size=(n, 2))
        elif kind == "scales":
            x = x * rng.choice([1e-2, 1.0, 1e2], size=(n, 1))
        elif kind == "sparse":
            x = np.maximum(x * 3 - 1, 0)
        else:
            x = x * rng.standard_cauchy((n, 1))
        x = np.ascontiguousarray(x, dtype=np.float32)
        yield f"{kind} seed {seed} n {len(x)} d {x.shape[1]}", rng, x


def sweep(cases, arithmetics: dict, min_samples=(1, 3, 5, 10), min_cluster_sizes=(10, 25, 40)) -> int:
    """Each case with every min_samples and a min_cluster_size drawn for each, leaf and EOM, in every arithmetic.
    Prints the comparisons that are not exact and the totals per kind (a case name's first word); returns the
    number not exact."""
    from elude.method import _exact_hdbscan as exact

    bad, total = {}, {}
    started = time.perf_counter()
    for case, rng, x in cases:
        kind = case.split()[0]
        for ms in min_samples:
            mcs = int(rng.choice(min_cluster_sizes))
            msts = {v: exact.mutual_reachability_mst(x, ms, device=dev, gpu_arithmetic=gpu, screen=screen)
                    for v, (dev, gpu, screen) in arithmetics.items()}
            for method in ("leaf", "eom"):
                ref = package(x, mcs, ms, method)
                for v, mst in msts.items():
                    verdict = compare(ref, exact.hdbscan_from_mst(mst, mcs, method))
                    total[kind] = total.get(kind, 0) + 1
                    if verdict != "exact":
                        bad[kind] = bad.get(kind, 0) + 1
                        print(f"{case} ms {ms} mcs {mcs} {method} {v}: {verdict}", flush=True)
    for kind in total:
        print(f"{kind}: {bad.get(kind, 0)} of {total[kind]} comparisons not exact")
    print(f"({len(arithmetics)} arithmetics, {time.perf_counter() - started:.0f} s)")
    return sum(bad.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-n", type=int, default=20_000)
    ap.add_argument("--quick", action="store_true", help="at most 2,000 points per case")
    ap.add_argument("--tie-sweep", type=int, default=0, metavar="SEEDS",
                    help="instead: this many small grid-quantised and binary cases (exact distance ties) in every "
                         "arithmetic")
    ap.add_argument("--fuzz", type=int, default=0, metavar="SEEDS",
                    help="instead: this many random small cases of seven families in every arithmetic")
    ap.add_argument("--edge-cases", action="store_true",
                    help="instead: 20 cases at the edges of the screen's bounds and the small-n rules")
    args = ap.parse_args()
    import torch

    from elude.method import _exact_hdbscan as exact

    torch.set_num_threads(2)
    variants = {"CPU": ("cpu", None, None), "GPU arithmetic on CPU": ("cpu", True, "float64"),
                "GPU arithmetic, float32 screen": ("cpu", True, "float32")}
    if torch.cuda.is_available():
        from elude.method._exact_hdbscan.points import screen_dtype

        own = str(screen_dtype(torch.device("cuda"), True)).removeprefix("torch.")
        variants[f"CUDA ({own} screen)"] = ("cuda", None, own)
        other = {"float32": "float64", "float64": "float32"}[own]
        variants[f"CUDA ({other} screen)"] = ("cuda", None, other)
    if args.tie_sweep:
        sys.exit(1 if sweep(tie_cases(args.tie_sweep), variants) else 0)
    if args.fuzz:
        sys.exit(1 if sweep(fuzz_cases(args.fuzz), variants, (1, 5, 25, 60), (10, 25, 50, 100)) else 0)
    if args.edge_cases:
        sys.exit(1 if edge_sweep(variants) else 0)
    print(f"{'case':22} {'n':>6} {'d':>4} {'mcs':>4} {'ms':>5} {'method':>6} {'package s':>9} " +
          " ".join(f"{v:>28}" for v in variants))
    bad = 0
    for name, (x, mcs) in cases(args.max_n, args.quick).items():
        for ms in (1, 5, None):
            msts = {}
            for v, (dev, gpu, screen) in variants.items():
                t = time.perf_counter()
                mst = exact.mutual_reachability_mst(x, ms or mcs, device=dev, gpu_arithmetic=gpu, screen=screen)
                msts[v] = (mst, time.perf_counter() - t)
            for method in ("leaf", "eom"):
                t = time.perf_counter()
                ref = package(x, mcs, ms, method)
                ref_s = time.perf_counter() - t
                cells = []
                for v, (mst, s) in msts.items():
                    verdict = compare(ref, exact.hdbscan_from_mst(mst, mcs, method))
                    bad += verdict.startswith("DIFF")
                    cells.append(f"{verdict} {s:6.2f} s")
                print(f"{name:22} {len(x):>6} {x.shape[1]:>4} {mcs:>4} {str(ms or 'mcs'):>5} {method:>6} {ref_s:9.2f} " +
                      " ".join(f"{c:>28}" for c in cells), flush=True)
    print(f"\n{'all cases agree' if not bad else f'{bad} case(s) differ'} (exact = labels and probabilities bitwise "
          "the package's; same = the same clusters up to renumbering, probabilities within 1e-5)")


if __name__ == "__main__":
    main()

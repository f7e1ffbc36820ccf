"""The torch clustering backend gives the hdbscan package's clusters: same clusters up to renumbering, the
same noise set, probabilities within 1e-5, on planted blobs, real contribution vectors of the tiny demo
run, exact duplicates, lattice ties, all-zero rows, one cluster and all noise, for both selection methods
and several min_samples including the library default."""

import hdbscan
import numpy as np
import pytest
import torch
from workflow_helpers import ids_for

from elude.method import _exact_hdbscan as exact_hdbscan
from elude.method import clustering, contributions
from elude.models.backbones import get_module, layer_weight_bias, load_backbone
from elude.models.cache import Cache

MIN_CLUSTER_SIZE = 25
MIN_SAMPLES = [1, 5, None]  # None = the library default (= min_cluster_size)


def blobs(rng, n: int, d: int, k: int, spread: float) -> np.ndarray:
    centres = rng.normal(size=(k, d))
    x = centres[rng.integers(0, k, n)] + spread * rng.normal(size=(n, d))
    return contributions.normalise_rows(x.astype(np.float32))


def package(x: np.ndarray, min_samples, method: str, min_cluster_size: int = MIN_CLUSTER_SIZE
            ) -> tuple[np.ndarray, np.ndarray]:
    """The reference: the hdbscan package end to end, with its exact algorithm for euclidean data."""
    model = hdbscan.HDBSCAN(min_cluster_size=min_cluster_size, min_samples=min_samples, algorithm="prims_kdtree",
                            cluster_selection_method=method, core_dist_n_jobs=1)
    model.fit(np.asarray(x, dtype=np.float64))
    return model.labels_, model.probabilities_


def assert_same_clustering(ref: tuple[np.ndarray, np.ndarray], got: tuple[np.ndarray, np.ndarray]) -> None:
    (lr, pr), (lg, pg) = ref, got
    np.testing.assert_array_equal(lg < 0, lr < 0, err_msg="noise sets differ")
    pairs = np.unique(np.stack([lr[lr >= 0], lg[lg >= 0]], 1), axis=0)  # a bijection between cluster ids
    assert len(pairs) == len(np.unique(lr[lr >= 0])) == len(np.unique(lg[lg >= 0])), "clusters differ"
    np.testing.assert_allclose(pg, pr, atol=1e-5, rtol=0)


def datasets(rng) -> dict[str, np.ndarray]:
    one_blob = blobs(rng, 1500, 80, 1, 0.3)
    return {
        "planted blobs": blobs(rng, 2000, 64, 6, 0.8),
        "noisy blobs (bridging points)": blobs(rng, 3000, 100, 8, 1.5),
        "exact duplicates": np.repeat(blobs(rng, 300, 70, 3, 0.8), 5, axis=0),
        "lattice ties": rng.integers(0, 4, size=(1500, 3)).astype(np.float32),
        "all-zero rows": np.concatenate([blobs(rng, 800, 80, 3, 0.8), np.zeros((100, 80), np.float32)]),
        "one blob (a unit with one concept)": one_blob,
        "all noise": contributions.normalise_rows(rng.normal(size=(60, 300)).astype(np.float32)),
    }


@pytest.mark.parametrize("min_samples", MIN_SAMPLES)
def test_torch_backend_equals_package(min_samples):
    rng = np.random.default_rng(0)
    seen = {}
    for name, x in datasets(rng).items():
        mst = exact_hdbscan.mutual_reachability_mst(x, min_samples or MIN_CLUSTER_SIZE)
        assert mst.tie_order == "prim", name
        for method in ("leaf", "eom"):
            ref = package(x, min_samples, method)
            got = exact_hdbscan.hdbscan_from_mst(mst, MIN_CLUSTER_SIZE, method)
            try:
                assert_same_clustering(ref, got)
            except AssertionError as exc:
                raise AssertionError(f"{name}, min_samples={min_samples}, {method}: {exc}") from None
            seen[name, method] = (ref[0].max() + 1, (ref[0] < 0).sum())
    # the cases are what they say they are
    assert seen["all noise", "leaf"] == (0, 60)
    assert seen["planted blobs", "eom"][0] == 6


@pytest.fixture(scope="module")
def demo_contributions(tiny_run) -> list[np.ndarray]:
    """Real contribution vectors of the tiny demo run: for two units, the top 6,000 instances by pre-activation."""
    work, cfg, _ = tiny_run
    ids = ids_for(cfg)
    backbone_dir = work / "results" / "backbone" / ids["backbone"]
    q = Cache(sorted((work / "results" / "cache" / ids["cache"]).glob("shard-*")))
    rows = q.gather(np.arange(q.n_rows), np.float32)
    import json

    layer = get_module(load_backbone(backbone_dir), json.loads((backbone_dir / "layer.json").read_text())["path"])
    w, b = layer_weight_bias(layer)
    pre = rows @ w.numpy().T + b.numpy()
    out = []
    for u in (0, 1):
        top = np.argsort(-pre[:, u], kind="stable")[:6000]
        out.append(contributions.normalise_rows(contributions.contributions(rows[top], w[u].numpy())))
    return out


@pytest.mark.parametrize("min_samples", MIN_SAMPLES)
def test_torch_backend_equals_package_on_real_contributions(demo_contributions, min_samples):
    for x in demo_contributions:
        assert x.shape[0] == 6000
        mst = exact_hdbscan.mutual_reachability_mst(x, min_samples or MIN_CLUSTER_SIZE)
        assert mst.tie_order == "prim"
        for method in ("leaf", "eom"):
            assert_same_clustering(package(x, min_samples, method),
                                   exact_hdbscan.hdbscan_from_mst(mst, MIN_CLUSTER_SIZE, method))


def test_a_shard_clustering_units_at_once_gives_the_same_clusters(tiny_run, tmp_path):
    """cluster.units_at_once: the tiny run's shard 0 clustered again with three units at a time (threads)
    holds the same clusters, array for array, and its manifest the seconds of every unit."""
    import json

    from elude.pipeline.config import resolve_config
    from elude.pipeline.plan import artifact_ids
    from elude.pipeline.stages import cluster_shard
    from elude.pipeline.stages.job import Stage
    from elude.util.files import load_arrays

    work, cfg, _ = tiny_run
    art = artifact_ids(resolve_config([cfg]))
    res = work / "results"
    cache_dirs = [str(d) for d in sorted((res / "cache" / art["cache"]["id"]).glob("shard-*"))]
    st = Stage("cluster", art["cluster"]["id"], art["cluster"]["params"], runtime={"units_at_once": 3})
    out = tmp_path / "shard-0000"
    cluster_shard(st, 0, cache_dirs, str(res / "topk" / art["topk"]["id"] / "merged"), str(res / "backbone" / art["backbone"]["id"]),
                  str(out))
    before = load_arrays(res / "cluster" / art["cluster"]["id"] / "shard-0000" / "clusters.safetensors")
    again = load_arrays(out / "clusters.safetensors")
    assert before.keys() == again.keys()
    for key in before:
        np.testing.assert_array_equal(again[key], before[key], err_msg=key)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["units_at_once"] == 3
    assert sorted(map(int, manifest["unit_seconds"])) == before["units"].tolist()
    assert all(s > 0 for s in manifest["unit_seconds"].values())


def test_pipeline_backends_agree_and_blocks_do_not_matter(rng):
    """The pipeline's entry point: 'auto' (torch) = 'hdbscan' (the package, precomputed distances); the
    result does not depend on the block size (16-row blocks here, never an n x n matrix)."""
    x = blobs(rng, 1200, 96, 4, 1.0)
    kw = dict(min_cluster_size=20, min_samples=None, method="leaf")
    auto = clustering.hdbscan_labels(x, backend=clustering.resolve_backend("auto"), **kw)
    assert_same_clustering(clustering.hdbscan_labels(x, backend="hdbscan", **kw), auto)
    small = exact_hdbscan.mutual_reachability_mst(x, 20, block_mb=1)
    big = exact_hdbscan.mutual_reachability_mst(x, 20, block_mb=512)
    np.testing.assert_array_equal(small.rows, big.rows)
    np.testing.assert_array_equal(small.core, big.core)


def test_core_distances_are_the_packages(rng):
    """Core distance = the min_samples-th nearest other point, bitwise as the package computes it."""
    from sklearn.neighbors import KDTree

    x = blobs(rng, 700, 90, 3, 0.9)
    for ms in (1, 7, 40):
        ref = KDTree(x.astype(np.float64)).query(x.astype(np.float64), k=ms + 1)[0][:, -1]
        got = exact_hdbscan.mutual_reachability_mst(x, ms).core
        np.testing.assert_array_equal(got, ref)


ARITHMETICS = [(False, None), (True, "float64"), (True, "float32")]  # the CPU's; the GPU's with either screen


@pytest.mark.parametrize("gpu_arithmetic,screen", ARITHMETICS)
def test_radius_lists_are_every_other_point_within_the_core_distance(rng, gpu_arithmetic, screen):
    """The core pass (CPU: a sampled threshold, the band recomputed exactly, long lists redone alone; the GPU's
    arithmetic, with a float64 screen (datacenter GPUs) or a float32 one (GPUs with slow float64): a top-k of
    candidates, a row whose band runs past them banded over its whole screened row):
    each point's core distance and radius list against all n^2 exact distances (in the arithmetic's own
    order), on blobs, on a lattice full of exact ties, and on points whose every 8th (the sampled columns)
    sits in a tight centre, so that the sample's threshold falls short and rows are read in full."""
    from elude.method._exact_hdbscan.core import core_distances
    from elude.method._exact_hdbscan.points import Points

    lattice = (np.round(rng.normal(size=(1200, 3)) * 2) / 2).astype(np.float32)
    centred = rng.normal(size=(1200, 24)).astype(np.float32)
    centred[::8] *= 0.01
    for x, ms in ((blobs(rng, 1200, 64, 3, 0.9), 40), (lattice, 10), (lattice, 1), (centred, 40)):
        pts = Points(x, torch.device("cpu"), block_mb=1, gpu_arithmetic=gpu_arithmetic,
                     screen=screen and getattr(torch, screen))
        core, indptr, neighbours, stats = core_distances(pts, ms)
        n = len(x)
        everyone = torch.arange(n)
        for i in range(n):
            d = pts.exact(torch.full((n,), i), everyone).numpy()
            d[i] = np.inf
            assert core[i].item() == np.sort(d)[ms - 1]
            listed = sorted(neighbours[indptr[i] : indptr[i + 1]].tolist())
            assert listed == np.flatnonzero(d <= core[i].item()).tolist()
        if x is lattice and ms == 10:
            assert stats["core_fallback_rows"] > 0  # ties made lists longer than the candidates'
            assert gpu_arithmetic == (pts.counters["rows_screened_in_full"] > 0)


@pytest.mark.parametrize("gpu_arithmetic,screen", ARITHMETICS)
def test_the_finish_screens_few_pairs_and_keeps_the_packages_tree(rng, gpu_arithmetic, screen):
    """The finish screens a row against a component only where its group bound can reach the pair's
    cheapest edge: far fewer pairs than the full pass, and the tree is still the package's (noisy blobs:
    the noise joins no group and is screened directly; min_samples = min_cluster_size, so mutual
    reachability is flat and many edges tie near each pair's minimum). The GPU's arithmetic (either screen;
    a float64 one in the points' order with a group-ordered copy for the core pass) run on the CPU as well."""
    x = np.concatenate([blobs(rng, 2400, 64, 6, 0.8), contributions.normalise_rows(rng.normal(size=(120, 64)))])
    x = x[rng.permutation(len(x))].astype(np.float32)
    mst = exact_hdbscan.mutual_reachability_mst(x, MIN_CLUSTER_SIZE, gpu_arithmetic=gpu_arithmetic, screen=screen)
    assert mst.stats["screen"] == (screen or "float32")
    n = len(x)
    finish = [r for r in mst.stats["rounds"] if r["finish"]]
    assert finish and finish[0]["components"] > 2
    assert mst.stats["pairs_screened"] < 1.3 * n * n  # the core pass's n^2, the full finish would add ~0.4 n^2
    assert mst.tie_order == "prim"
    for method in ("leaf", "eom"):
        assert_same_clustering(package(x, None, method), exact_hdbscan.hdbscan_from_mst(mst, MIN_CLUSTER_SIZE, method))


def assert_core_distances_and_lists_exact(pts, min_samples: int, core, indptr, neighbours) -> None:
    """Every core distance and radius list is that of the point's n exact distances."""
    n = pts.n
    for i in range(n):
        d = pts.exact(torch.full((n,), i), torch.arange(n)).numpy()
        d[i] = np.inf
        assert core[i].item() == np.sort(d)[min_samples - 1]
        assert sorted(neighbours[indptr[i] : indptr[i + 1]].tolist()) == np.flatnonzero(d <= core[i].item()).tolist()


@pytest.mark.parametrize("gpu_arithmetic,screen", ARITHMETICS)
def test_the_prescreen_sits_out_where_it_skips_less_than_it_costs(rng, gpu_arithmetic, screen, monkeypatch):
    """Points without clusters (unit Gaussian rows in 48 dimensions): no tile can be ruled out, so after its
    first blocks only one block in PROBE_EVERY prescreens, and every core distance and radius list is exact.
    Where the probes find tiles to skip again (one group diffuse, the next tight), it is back on for every
    block."""
    from elude.method._exact_hdbscan import core as core_module
    from elude.method._exact_hdbscan import points
    from elude.method._exact_hdbscan.core import _Tiles, core_distances
    from elude.method._exact_hdbscan.points import Points

    monkeypatch.setattr(points, "_cpu_bf16_speedup", lambda: 3.0)  # a CPU with fast bfloat16, whatever this one is
    window, every = core_module.PRESCREEN_WINDOW, core_module.PROBE_EVERY
    x = contributions.normalise_rows(rng.normal(size=(2100, 48))).astype(np.float32)
    n = len(x)
    pts = Points(x, torch.device("cpu"), block_mb=1, gpu_arithmetic=gpu_arithmetic,
                 screen=screen and getattr(torch, screen))
    core, indptr, neighbours, _ = core_distances(pts, 30)
    blocks, left_out = -(-n // pts.block), pts.counters["rows_not_prescreened"]
    assert pts.counters["pairs_prescreened"] == (n - left_out) * n and pts.counters["pairs_screened"] > 0.9 * n * n
    assert n - left_out <= (window + blocks // every) * pts.block  # the first blocks and the probes
    assert_core_distances_and_lists_exact(pts, 30, core, indptr, neighbours)

    with pts.in_group_order():  # the decision alone, block by block: a diffuse group, then a tight one
        tiles, rows = _Tiles(pts, 30, True), torch.arange(pts.block)
        sq_r = pts.sq64[rows]
        prescreens = []
        for block in range(1, 4 * every + 1):
            pre, _, first = tiles.first(rows, 0, pts.block, sq_r)
            prescreens.append(pre is not None)
            tight = block > every  # from the second PROBE_EVERY blocks on, 90 % of the columns skipped
            tiles.account(pts.block, n // 10 if tight else n, pre is not None)
        assert prescreens[:every] == [True] * window + [False] * (every - window - 1) + [True]  # off; a probe
        assert sum(prescreens[every : 2 * every]) == 1 and all(prescreens[-every:])  # one more probe: back on


@pytest.mark.parametrize("gpu_arithmetic,screen", ARITHMETICS)
def test_the_core_pass_skips_tiles_that_hold_no_neighbour(rng, gpu_arithmetic, screen, monkeypatch):
    """The core pass screens a block of rows (in group order) only against the tiles whose prescreened
    lower bound can reach a row's neighbours: on six noisy blobs under half of the n^2 pairs, every core
    distance and radius list still those of all n^2 exact distances (in the arithmetic's order), and the
    finish's group minima (from the prescreen, lowered by its bound) still below every group's true minimum.
    Points too large for a float32 prescreen are screened in full."""
    from elude.method._exact_hdbscan import points
    from elude.method._exact_hdbscan.core import core_distances
    from elude.method._exact_hdbscan.points import Points

    monkeypatch.setattr(points, "_cpu_bf16_speedup", lambda: 3.0)  # a CPU with fast bfloat16, whatever this one is
    x = np.concatenate([blobs(rng, 2000, 48, 6, 0.8), contributions.normalise_rows(rng.normal(size=(100, 48)))])
    x = x[rng.permutation(len(x))].astype(np.float32)
    n = len(x)
    for scale, pruned in ((1.0, True), (1e16, False)):
        pts = Points(x * scale, torch.device("cpu"), block_mb=1, gpu_arithmetic=gpu_arithmetic,
                     screen=screen and getattr(torch, screen))
        core, indptr, neighbours, _ = core_distances(pts, 30)
        left_out = pts.counters["rows_not_prescreened"]  # the far points' blocks at the end: nothing to skip there
        assert pts.counters["pairs_prescreened"] == ((n - left_out) * n if pruned else 0)
        assert left_out < 0.15 * n if pruned else left_out == 0
        assert (pts.counters["pairs_screened"] < 0.5 * n * n) if pruned else pts.counters["pairs_screened"] == n * n
        assert_core_distances_and_lists_exact(pts, 30, core, indptr, neighbours)
        d2 = torch.cdist(pts.x64, pts.x64) ** 2
        tol = pts.tol(torch.arange(n)).numpy()
        _, ptr, order = pts.groups
        for g in range(len(ptr) - 1):
            if ptr[g + 1] > ptr[g]:
                true_min = d2[:, torch.from_numpy(order[ptr[g] : ptr[g + 1]])].min(1).values.numpy()
                assert np.all(pts.group_minima[:, g] + pts.sq64.numpy() <= true_min + tol * 1.01 + 1e-9 * scale**2)


@pytest.mark.parametrize("gpu_arithmetic", [True, False])
def test_the_prescreens_bound_holds(rng, gpu_arithmetic, monkeypatch):
    """The prescreen (the GPU's: float32 copies cut to TF32's 10 mantissa bits, as tensor cores take them; the
    CPU's: bfloat16 GEMMs) is within its bound of every exact squared distance: unit rows, rows of mixed norms,
    far from the origin, at d from 1 to 3,072 and on exact copies."""
    from elude.method._exact_hdbscan import points
    from elude.method._exact_hdbscan.points import Points, Prescreen

    monkeypatch.setattr(points, "_cpu_bf16_speedup", lambda: 3.0)  # a CPU with fast bfloat16, whatever this one is
    mixed = rng.normal(size=(300, 40)) * rng.lognormal(0, 3, size=(300, 1))
    cases = {"unit, d 3072": contributions.normalise_rows(rng.normal(size=(300, 3072))), "mixed norms": mixed,
             "offset 1e3": rng.normal(size=(300, 16)) + 1e3, "d 1": rng.normal(size=(300, 1)),
             "copies": np.repeat(rng.normal(size=(30, 8)), 10, 0)}
    for name, x in cases.items():
        x = x.astype(np.float32)
        pts = Points(x, torch.device("cpu"), block_mb=64, gpu_arithmetic=gpu_arithmetic)
        with pts.in_group_order():
            lp = Prescreen(pts)
            assert lp.usable
            rows = torch.arange(len(x))
            got = lp.less_row_norm(rows).double()[:, pts.pos] + pts.sq64[:, None]  # columns back to point order
        diff = (got - torch.cdist(pts.x64, pts.x64, compute_mode="donot_use_mm_for_euclid_dist") ** 2).abs()
        assert bool((diff <= lp.tol(rows)[:, None]).all()), name
        assert float((diff / lp.tol(rows)[:, None]).max()) > 1e-3, name  # the cut was felt: not a vacuous check


def test_radius_edges_in_chunks_are_the_one_pass(rng, monkeypatch):
    """The GPU's cheapest radius edge per point into another component, taken over chunks of whole rows,
    equals the CPU's one pass over the lists (lattice ties: equal weights decided by the lower, then the
    higher index)."""
    import importlib

    from elude.method._exact_hdbscan.core import core_distances
    from elude.method._exact_hdbscan.points import Points

    boruvka = importlib.import_module("elude.method._exact_hdbscan.boruvka")  # the package exports a function so named
    x = (np.round(rng.normal(size=(900, 3)) * 2) / 2).astype(np.float32)
    core, indptr, neighbours, _ = core_distances(Points(x, torch.device("cpu"), block_mb=1), 10)
    comp = torch.from_numpy(rng.integers(0, 40, len(x)))
    want = boruvka._radius_key_min(indptr.numpy(), neighbours.numpy(), core.numpy(), comp.numpy())
    monkeypatch.setattr(boruvka.limits, "GPU_RADIUS_CHUNK_EDGES", 97)  # chunks end inside rows: they are cut at row ends
    got = boruvka._radius_key_min_torch(indptr, neighbours, core, comp)
    assert np.isfinite(want[0]).sum() > 800
    for w, g in zip(want, got):
        np.testing.assert_array_equal(g.numpy(), w)


def test_radius_lists_read_backwards_by_a_sort_are_the_counting_sorts(rng):
    """The GPU path reverses the radius lists with a stable sort on the device; the CPU with a counting sort
    in numba: the same CSR, sources in increasing order per target (Prim's offers depend on that order)."""
    from elude.method._exact_hdbscan.core import core_distances
    from elude.method._exact_hdbscan.points import Points
    from elude.method._exact_hdbscan.prim import _reversed_lists, reversed_lists_torch

    x = (np.round(rng.normal(size=(900, 3)) * 2) / 2).astype(np.float32)
    _, indptr, neighbours, _ = core_distances(Points(x, torch.device("cpu"), block_mb=1), 10)
    want = _reversed_lists(indptr.numpy(), neighbours.numpy())
    got = reversed_lists_torch(indptr, neighbours)
    assert len(want[1]) == len(neighbours) and np.diff(want[0]).std() > 0  # uneven in-degrees
    for w, g in zip(want, got):
        np.testing.assert_array_equal(g, w)


def test_duplicate_groups_are_every_exact_copy(rng):
    """A long edge's endpoints' exact copies (identical rows), found by a projection filter and an exact
    comparison, are the groups a sort of all rows finds: copies of continuous points, of zero rows, and
    points one float apart from a copy (near, not equal)."""
    from elude.method._exact_hdbscan import _duplicate_groups
    from elude.method._exact_hdbscan.points import Points

    x = rng.normal(size=(600, 37)).astype(np.float32)
    x[100:110] = x[5]
    x[200:203] = 0.0
    x[300] = x[7]
    x[301] = np.nextafter(x[7], np.float32(np.inf))  # one ulp away in every coordinate: not a copy
    pts = Points(x, torch.device("cpu"), block_mb=1)
    _, inverse, counts = torch.unique(pts.x64, dim=0, return_inverse=True, return_counts=True)
    asked = np.array([5, 7, 200, 301, 42, 105])
    got = _duplicate_groups(pts, asked)
    want = {int(p): np.flatnonzero(inverse == inverse[p]) for p in asked if counts[inverse[p]] > 1}
    assert set(got) == set(want) == {5, 7, 200, 105}
    for p in want:
        np.testing.assert_array_equal(got[p], want[p])


def test_backend_names():
    assert clustering.resolve_backend("auto") == ("torch:cuda" if torch.cuda.is_available() else "torch:cpu")
    assert clustering.resolve_backend("torch") == clustering.resolve_backend("auto")
    assert clustering.resolve_backend("hdbscan") == "hdbscan"
    assert clustering.resolve_backend("cpu") == "hdbscan"  # deprecated alias
    with pytest.raises(ValueError, match="cluster.backend"):
        clustering.resolve_backend("gpu")


def test_pca_reduction(rng):
    x = blobs(rng, 500, 64, 3, 0.5)
    same, kept = clustering.reduce_dims(x, "none", 8)
    assert same is x and kept == 1.0
    red, kept = clustering.reduce_dims(x, "pca", 8)
    assert red.shape == (500, 8) and 0 < kept < 1
    again, kept2 = clustering.reduce_dims(x.copy(), "pca", 8)
    np.testing.assert_array_equal(red, again)  # deterministic signs
    # the kept variance is the variance of the projection
    centred = x.astype(np.float64) - x.mean(0)
    assert kept == pytest.approx((red**2).sum() / (centred**2).sum(), rel=1e-9)
    # planted blobs survive the reduction
    lab_full = clustering.hdbscan_labels(x, min_cluster_size=25, min_samples=5, method="eom", backend="torch:cpu")[0]
    lab_red = clustering.hdbscan_labels(red, min_cluster_size=25, min_samples=5, method="eom", backend="torch:cpu")[0]
    assert lab_full.max() == lab_red.max() == 2


@pytest.mark.parametrize("screen", ["float64", "float32"])
@pytest.mark.parametrize("min_samples", [5, None])
def test_gpu_arithmetic_equals_package(min_samples, screen):
    """The GPU path's arithmetic (top-k selection, exact sums in torch) with either screen, run on the CPU:
    same clusters."""
    rng = np.random.default_rng(1)
    cases = datasets(rng)
    for name in ("noisy blobs (bridging points)", "exact duplicates", "lattice ties", "all-zero rows"):
        x = cases[name]
        mst = exact_hdbscan.mutual_reachability_mst(x, min_samples or MIN_CLUSTER_SIZE, gpu_arithmetic=True,
                                                    screen=screen)
        assert mst.tie_order == "prim", name
        assert mst.stats["screen"] == screen
        for method in ("leaf", "eom"):
            assert_same_clustering(package(x, min_samples, method),
                                   exact_hdbscan.hdbscan_from_mst(mst, MIN_CLUSTER_SIZE, method))


def test_the_screens_precision_is_chosen_by_arithmetic_and_checked(monkeypatch):
    """The CPU's arithmetic screens in float32 (its selection kernel holds float32 values), the GPU's run on the
    CPU in float64 as on a datacenter GPU; on CUDA float32 where the measured float64 GEMM is 4x slower or more
    (the measurement itself needs a GPU: bench/gpu_checks.sh); a float64 screen for the CPU's arithmetic is
    refused, not rounded."""
    from elude.method._exact_hdbscan import points
    from elude.method._exact_hdbscan.points import screen_dtype

    cpu = torch.device("cpu")
    assert screen_dtype(cpu, False) == torch.float32 and screen_dtype(cpu, True) == torch.float64
    for slowdown, dtype in ((1.05, torch.float64), (2.0, torch.float64), (4.0, torch.float32), (64.0, torch.float32)):
        monkeypatch.setattr(points, "_float64_gemm_slowdown", lambda index, s=slowdown: s)
        assert screen_dtype(torch.device("cuda", 0), True) == dtype, slowdown
    x = blobs(np.random.default_rng(2), 200, 8, 2, 0.5)
    with pytest.raises(ValueError, match="CPU's arithmetic screens in float32"):
        exact_hdbscan.mutual_reachability_mst(x, 5, screen="float64")
    with pytest.raises(ValueError, match="screen must be"):
        exact_hdbscan.mutual_reachability_mst(x, 5, screen="bfloat16")


@pytest.mark.parametrize("gpu_arithmetic,screen", ARITHMETICS)
def test_a_long_pair_tied_with_a_radius_edge_is_in_prims_graph(gpu_arithmetic, screen):
    """Grid-quantised points: a long pair (d above both core distances) at exactly the weight of a radius MST edge
    can be the package's Prim choice, so the tie pass must look for pairs at every MST weight, not only the long
    edges' (before: 540 instead of 547 points clustered here, the weights identical, the merge order not)."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(8, 4))[rng.integers(0, 8, 1000)] + 0.9 * rng.normal(size=(1000, 4))
    x = np.round((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32) * 6) / 6
    mst = exact_hdbscan.mutual_reachability_mst(x, 5, gpu_arithmetic=gpu_arithmetic, screen=screen)
    assert mst.tie_order == "prim" and mst.stats["long_ties_seen"]
    for method in ("leaf", "eom"):
        assert_same_clustering(package(x, 5, method, 40), exact_hdbscan.hdbscan_from_mst(mst, 40, method))


@pytest.mark.parametrize("gpu_arithmetic,screen", ARITHMETICS)
def test_far_from_the_origin_and_at_extreme_scales(gpu_arithmetic, screen):
    """The screen's error bound grows with |x|^2 + |y|^2, not with the distances: blobs offset by 1e3 (|x|^2 ~ 1.6e7
    against squared distances ~ 1, so a float32 screen's band holds every pair and all of it is recomputed exactly)
    and scaled by 1e4 and 1e-4 give the package's clusters in every arithmetic (with a bound blind to |x|^2 the
    float32 screens fail here; bench/cluster_exactness.py --edge-cases has more such cases)."""
    rng = np.random.default_rng(11)
    base = blobs(rng, 1200, 16, 5, 0.9)
    for name, x in {"offset 1e3": base + 1e3, "scaled by 1e4": base * 1e4, "scaled by 1e-4": base * 1e-4}.items():
        mst = exact_hdbscan.mutual_reachability_mst(x, 5, gpu_arithmetic=gpu_arithmetic, screen=screen)
        ref = package(x, 5, "leaf", 30)
        assert ref[0].max() >= 2, name  # clusters to get right, not all noise
        try:
            assert_same_clustering(ref, exact_hdbscan.hdbscan_from_mst(mst, 30, "leaf"))
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None


def test_screens_run_whatever_tf32_api_the_process_used():
    """torch >= 2.9 raises on reading the legacy ``allow_tf32`` once anything set the new ``fp32_precision``
    (a user's training code may): the screens' TF32 guard goes through the new API, turns TF32 off inside and
    gives the process its setting back."""
    from elude.method._exact_hdbscan.points import _no_tf32

    matmul = torch.backends.cuda.matmul
    torch.backends.fp32_precision = "tf32"
    try:
        with _no_tf32():
            assert matmul.fp32_precision == "ieee"
            with _no_tf32():  # nested (several units at once): still off, and on only after the outer one
                pass
            assert matmul.fp32_precision == "ieee"
        assert matmul.fp32_precision == "tf32"
        x = blobs(np.random.default_rng(4), 400, 16, 3, 0.5)
        labels, _ = exact_hdbscan.hdbscan_from_mst(exact_hdbscan.mutual_reachability_mst(x, 5), 25, "leaf")
        assert labels.max() >= 1
    finally:
        torch.backends.fp32_precision = "none"  # torch's default: the legacy flag readable again


def test_a_prescreen_with_tf32_on_and_a_screen_with_it_off_take_turns():
    """Units clustered at once in threads: while one thread launches its prescreen with TF32 on, another's
    screen waits, and runs with TF32 off; GEMMs on the CPU do not wait (cuBLAS's setting is not theirs)."""
    import threading

    from elude.method._exact_hdbscan.points import _cublas_tf32, _no_tf32

    matmul = torch.backends.cuda.matmul
    inside, release, seen = threading.Event(), threading.Event(), []

    def prescreen():
        with _cublas_tf32(True):
            inside.set()
            release.wait(5)

    def screen():
        with _no_tf32():
            seen.append(matmul.fp32_precision)

    def cpu_screen():
        with _no_tf32(torch.device("cpu")):
            seen.append("cpu")

    first = threading.Thread(target=prescreen)
    first.start()
    inside.wait(5)
    waiting, free = threading.Thread(target=screen), threading.Thread(target=cpu_screen)
    waiting.start()
    free.start()
    free.join(5)
    waiting.join(0.3)
    assert seen == ["cpu"] and waiting.is_alive()  # the CUDA screen waits for the prescreen's launch
    release.set()
    first.join(5)
    waiting.join(5)
    assert seen == ["cpu", "ieee"]


def random_msts():
    """Spanning trees as the MST step hands them over, in unsorted order: random attachment (bushy) and
    paths (deep), with continuous weights, heavy ties and zero weights (infinite lambdas)."""
    for seed in range(60):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(2, 600))
        new = np.arange(1, n)
        old = new - 1 if seed % 4 == 3 else rng.integers(0, new)
        w = [rng.random(n - 1), rng.integers(0, 6, n - 1).astype(float),
             np.round(rng.exponential(1.0, n - 1), 1)][seed % 3]
        yield seed, np.stack([old, new, w], 1).astype(np.float64)[rng.permutation(n - 1)]


def test_tree_half_is_the_packages():
    """Our linear-time tree half gives the package's single linkage, condensed tree (row for row), labels
    and probabilities bitwise, for both selection methods and small to large min_cluster_size."""
    from hdbscan._hdbscan_linkage import label
    from hdbscan._hdbscan_tree import condense_tree
    from hdbscan.hdbscan_ import _tree_to_labels

    from elude.method._exact_hdbscan import tree

    clustered = 0
    for seed, rows in random_msts():
        ordered = rows[np.argsort(rows.T[2]), :]
        linkage = label(ordered)
        np.testing.assert_array_equal(tree.single_linkage(ordered), linkage, err_msg=f"seed {seed}")
        for mcs in (2, 5, 25, 120):
            ref = condense_tree(linkage, mcs)
            for got, field in zip(tree.condense_tree(linkage, mcs), ("parent", "child", "lambda_val", "child_size")):
                np.testing.assert_array_equal(got, ref[field], err_msg=f"seed {seed}, mcs {mcs}: {field}")
            for method in ("leaf", "eom"):
                labels, probs, *_ = _tree_to_labels(None, linkage, mcs, method)
                got_labels, got_probs = tree.tree_to_labels(rows, mcs, method)
                np.testing.assert_array_equal(got_labels, labels, err_msg=f"seed {seed}, mcs {mcs}, {method}")
                np.testing.assert_array_equal(got_probs, probs, err_msg=f"seed {seed}, mcs {mcs}, {method}")
                clustered += labels.max() >= 1
    assert clustered > 100  # most cases select several clusters

"""The real workflow on a tiny config: summary values, a verify that fails the run, incremental reruns,
config errors before any job, and byte-for-byte determinism."""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from workflow_helpers import executed_rules, ids_for, snakemake, write_config

from elude.evaluation.diagnostics import DIAGNOSTICS, GAINS
from elude.util.files import load_arrays


def test_tiny_run_summary(tiny_run):
    work, _, proc = tiny_run
    ran = executed_rules(proc.stderr)
    assert {"backbone", "cache_shard", "topk_part", "topk", "cluster_shard", "surgery_shard", "merge", "verify",
            "evaluate", "report"} <= set(ran)
    assert ran.count("cache_shard") == ran.count("topk_part") == 2  # dataset shards
    summary = json.loads((work / "results/runs/tiny/summary.json").read_text())
    lossless = summary["lossless"]
    assert lossless["max_rel_diff"] <= 1e-5 and lossless["max_abs_diff"] < 1e-4
    assert lossless["prediction_agreement"] == 1.0 and lossless["r2"] > 1 - 1e-9
    assert summary["accuracy"]["original"] == summary["accuracy"]["disentangled"]
    assert 0.1 < summary["accuracy"]["original"] <= 1.0
    assert summary["n_units"] == 32
    assert summary["n_subunits"] >= 32
    assert summary["expansion_factor"] == pytest.approx(summary["n_subunits"] / 32)
    assert sum(summary["k_histogram"].values()) == 32
    assert sum(int(k) * n for k, n in summary["k_histogram"].items()) == summary["n_subunits"]
    for key in ("units_mean", "subunits_mean", "random_mean", "units_mean_pooled", "subunits_mean_pooled"):
        assert 0 <= summary["ms_score"][key] <= 100
    # content addressing: every stage's folder carries a 12-hex id and a manifest naming its inputs
    for stage, path in summary["artifacts"].items():
        folder = work / path
        assert re.fullmatch(rf"results/{stage}/[0-9a-f]{{12}}", path)
        sharded = stage in ("cache", "topk", "cluster", "surgery")  # shard-*, or part-* and merged/
        manifests = list(folder.glob("*/manifest.json")) if sharded else [folder / "manifest.json"]
        assert manifests, stage
        for m in manifests:
            man = json.loads(m.read_text())
            assert man["id"] == folder.name and man["stage"] == stage
    assert json.loads((work / summary["artifacts"]["topk"] / "merged/manifest.json").read_text())["inputs"] == {
        "cache": Path(summary["artifacts"]["cache"]).name}
    html = (work / "results/runs/tiny/report.html").read_text()
    assert "MS-Score" in html and "data:image/png;base64" in html
    # why a split helps: per split unit in evaluate's tables, their rank correlations in the summary and report,
    # each split unit's own on its page
    diag = summary["split_diagnostics"]
    assert diag["n_split_units"] == summary["n_split_units"] > 0
    assert set(diag["rank_correlation"]) == set(GAINS) and all(set(c) == set(DIAGNOSTICS) for c in diag["rank_correlation"].values())
    cell = diag["rank_correlation"]["gain_parent_layer"]["exclusive_fraction"]
    assert cell["n"] == diag["n_split_units"] and (cell["rho"] is None or -1 <= cell["rho"] <= 1)
    assert f"across {diag['n_split_units']} split units</h2>" in html
    tables = load_arrays(work / summary["artifacts"]["evaluate"] / "tables.safetensors")
    split = tables["k_per_unit"] > 1
    assert np.isfinite(tables["diag_exclusive_fraction"][split]).all() and np.isnan(tables["diag_top_overlap"][~split]).all()
    u = int(np.flatnonzero(split)[0])
    page = (work / f"results/runs/tiny/units/{u}.html").read_text()
    assert "Why this split helps" in page and DIAGNOSTICS["activation_correlation"] in page
    assert not list((work / "results").rglob(".*.partial")) and not list((work / "results").rglob(".*.tmp-*"))


def test_verify_fails_the_run_and_keeps_finished_artifacts(tiny_run):
    work, cfg, _ = tiny_run
    summary = json.loads((work / "results/runs/tiny/summary.json").read_text())
    if summary["lossless"]["max_rel_diff"] == 0.0:
        pytest.skip("this build reproduced the outputs bit for bit; no tolerance below 0 exists to fail")
    strict = write_config(work / "strict.yaml", {"verify": {"max_rel_diff": 1.0e-15}})
    before = {p: p.stat().st_mtime_ns for p in (work / "results").rglob("manifest.json")}
    proc = snakemake(work, strict, check=False)
    assert proc.returncode != 0
    assert "NOT lossless" in proc.stderr and "max relative output difference" in proc.stderr
    assert re.search(r"results/logs/verify/[0-9a-f]{12}\.log", proc.stderr)
    # only verify ran (its id changed); everything upstream was found by id and left untouched
    assert executed_rules(proc.stderr) == ["verify"]
    assert {p: p.stat().st_mtime_ns for p in (work / "results").rglob("manifest.json")} == before
    assert not (work / "results/verify" / ids_for(strict)["verify"]).exists()


def test_incremental_reruns(tiny_run):
    work, cfg, _ = tiny_run
    changed = write_config(work / "mcs.yaml", {"cluster": {"min_cluster_size": 20}})
    proc = snakemake(work, changed)
    ran = executed_rules(proc.stderr)
    assert set(ran) == {"cluster_shard", "surgery_shard", "merge", "verify", "evaluate", "report", "all"}
    assert ran.count("cluster_shard") == 3  # 32 units in shards of 12
    # going back to the old value runs nothing: every artifact is found by its id
    proc = snakemake(work, cfg)
    assert executed_rules(proc.stderr) == []
    assert "Nothing to be done" in proc.stderr
    assert json.loads((work / "results/runs/tiny/summary.json").read_text())["artifacts"]["cluster"].endswith(
        ids_for(cfg)["cluster"])  # the run's alias points at the old report again
    # an evaluation option reruns evaluate and report; a report option, the report alone
    proc = snakemake(work, write_config(work / "ms.yaml", {"evaluate": {"ms_top_k": 25}}))
    assert set(executed_rules(proc.stderr)) == {"evaluate", "report", "all"}
    proc = snakemake(work, write_config(work / "rep.yaml", {"report": {"n_examples": 2}}))
    assert set(executed_rules(proc.stderr)) == {"report", "all"}


@pytest.mark.slow
def test_config_errors_before_any_job(tmp_path):
    """Every problem listed at once, while the DAG is built (the messages, case by case: test_faults.py)."""
    proc = snakemake(tmp_path, write_config(tmp_path / "bad.yaml", {"topk": {"k": 0}, "cluster": {"min_cluster_sise": 5}}),
                     check=False)
    assert proc.returncode != 0
    assert "topk.k: 0 is out of range; allowed: >= 1" in proc.stderr
    assert "cluster: unknown key(s) min_cluster_sise" in proc.stderr
    assert executed_rules(proc.stderr) == [] and not (tmp_path / "results").exists()


@pytest.mark.parametrize("override, message", [
    ({"cluster": {"backend": "cuml"}}, "cluster.backend is 'cuml' but cuML cannot run here"),
    ({"compute": {"device": "cuda"}}, "compute.device is 'cuda' but torch sees no CUDA GPU here"),
])
@pytest.mark.slow
def test_gpu_requests_that_cannot_run_fail_before_any_job(tmp_path, override, message):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU, so the request can run")
    proc = snakemake(tmp_path, write_config(tmp_path / "gpu.yaml", override), check=False)
    assert proc.returncode != 0 and message in proc.stderr
    assert executed_rules(proc.stderr) == [] and not (tmp_path / "results").exists()


def test_token_seeds_run_all_and_aggregate(two_seed_run):
    """cache.token_seed as a list: one cache..report chain per seeded token dataset (the backbone is
    shared), then an aggregate of their summaries, published with each seed's report. (On the two-seed run
    that the Table 2 and LLM Rank tests share: conftest.py.)"""
    work, cfg, ran = two_seed_run
    assert ran.count("backbone") == 1 and ran.count("report") == 2 and ran.count("aggregate") == 1
    assert ran.count("cache_shard") == 4  # 2 seeds x 2 dataset shards
    run = work / "results/runs/tiny"
    agg = json.loads((run / "summary.json").read_text())
    assert agg["token_seeds"] == [1, 2] and agg["lossless_all_seeds"] is True
    per_seed = [json.loads((run / f"seed-{s}/summary.json").read_text()) for s in (1, 2)]
    ms = agg["metrics"]["ms_score.subunits_mean"]
    assert ms["per_seed"] == [p["ms_score"]["subunits_mean"] for p in per_seed]
    assert ms["mean"] == pytest.approx(sum(ms["per_seed"]) / 2)
    caches = {p["artifacts"]["cache"] for p in per_seed}
    assert len(caches) == 2  # the seed is part of the cache id
    for p in per_seed:
        manifest = json.loads((work / p["artifacts"]["cache"] / "shard-0000/manifest.json").read_text())
        assert manifest["tokens_per_image"] == 6


def test_pca_reduction_reruns_clustering_and_records_variance(tiny_run):
    work, cfg, _ = tiny_run
    # the reduction's settings are part of the cluster id only when it is on
    off = write_config(work / "off.yaml", {"cluster": {"reduce": {"method": "none", "dims": 7}}})
    assert ids_for(off)["cluster"] == ids_for(cfg)["cluster"]
    pca = write_config(work / "pca.yaml", {"cluster": {"reduce": {"method": "pca", "dims": 16}}})
    assert ids_for(pca)["cluster"] != ids_for(cfg)["cluster"]
    proc = snakemake(work, pca)
    assert set(executed_rules(proc.stderr)) == {"cluster_shard", "surgery_shard", "merge", "verify", "evaluate",
                                                 "report", "all"}
    shards = sorted((work / "results/cluster" / ids_for(pca)["cluster"]).glob("shard-*/manifest.json"))
    kept = {}
    for m in shards:
        man = json.loads(m.read_text())
        assert man["backend"] in ("torch:cpu", "torch:cuda")
        kept.update(man["variance_kept"])
    assert len(kept) == 32 and all(0 < v <= 1 for v in kept.values())
    summary = json.loads((work / "results/runs/tiny/summary.json").read_text())
    assert summary["lossless"]["prediction_agreement"] == 1.0 and summary["lossless"]["max_rel_diff"] <= 1e-5

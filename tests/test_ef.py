"""ELUDe at a target expansion factor (cluster.target_ef, Sec. E.6), Table 6's EF axis and Figure 2."""
import json

import numpy as np
import pytest

from elude.method import expansion as ef
from elude.pipeline.config import load_run_config, merge_config, validate_config
from elude.pipeline.plan import all_ids, artifact_ids, baseline_artifacts, run_artifacts
from elude.reporting import ef_tables


def search(efs: list[float], target: float) -> tuple[dict, int]:
    """Run the bisection on a known EF curve: (the choice, clusterings used)."""
    state = ef.initial_state(len(efs))
    for _ in range(ef.n_steps(len(efs))):
        j = ef.next_index(state)
        if j is None:
            break
        state = ef.advance(state, j, efs[j], target)
    assert ef.next_index(state) is None  # closed within the bound
    return ef.choose(state, target), len(state["path"])


def test_bisection_finds_the_closest_candidate_of_a_monotone_curve_within_its_bound(rng):
    for _ in range(400):
        n_units, g = int(rng.integers(4, 100)), int(rng.integers(1, 20))
        counts = np.sort(rng.integers(n_units, 12 * n_units, g))[::-1]  # sub-unit counts, falling along the grid
        efs = (counts / n_units).tolist()
        target = float(rng.uniform(0.5, 14))
        chosen, used = search(efs, target)
        assert used <= ef.n_steps(g) == int(np.ceil(np.log2(g + 1)))
        assert abs(chosen["ef"] - target) == min(abs(e - target) for e in efs)  # as good as clustering the whole grid
    # exact hit: stops there; beyond the ends: the end
    assert search([8.0, 6.0, 4.0, 2.0], 6.0)[0]["index"] == 1
    assert search([8.0, 6.0, 4.0, 2.0], 100.0)[0]["index"] == 0 and search([8.0, 6.0, 4.0, 2.0], 0.1)[0]["index"] == 3
    # a curve that is not monotone: the best point seen, ties to the smaller EF
    assert search([5.0, 9.0, 3.0], 4.0)[0]["ef"] == 3.0


def test_default_grid_is_ordered_by_falling_ef_around_the_base():
    cluster = validate_config({})["cluster"]
    grid = ef.candidate_values({**cluster, "min_cluster_size": 1000}, 400_000)
    assert len(grid) == 13 and grid[0] == 125 and grid[6] == 1000 and grid[-1] == 8000 and grid == sorted(grid)
    topk = ef.candidate_values({**cluster, "ef_search": {"axis": "topk_k", "values": None}}, 60_000)
    assert topk[0] == 480_000 and topk[-1] == 7500 and topk == sorted(topk, reverse=True)  # more points: more clusters


def test_candidates_are_the_plain_runs_artifacts_and_a_target_changes_only_the_search():
    base = validate_config({"cache": {"token_seed": 42}, "baselines": {"families": ["topk"]}, "ablations": {"variants": [
        {"name": "eom", "cluster": {"cluster_selection_method": "eom"}},
        {"name": "mcs-50", "cluster": {"min_cluster_size": 50}}]}})
    target = merge_config(base, {"cluster": {"target_ef": 4, "ef_search": {"values": [10, 25, 50]}}})
    chain = artifact_ids(target)
    assert "cluster" not in chain and chain["surgery"]["inputs"] == {"ef_search": chain["ef_search"]["id"]}
    candidates = chain["ef_search"]["params"]["candidates"]
    for v, cid in zip([10, 25, 50], candidates):  # shared with a plain run at that setting, by id
        assert artifact_ids(merge_config(base, {"cluster": {"min_cluster_size": v}}))["cluster"]["id"] == cid
    other = artifact_ids(merge_config(target, {"cluster": {"target_ef": 6}}))
    assert other["ef_search"]["params"]["candidates"] == candidates and other["ef_search"]["id"] != chain["ef_search"]["id"]
    assert other["topk"] == chain["topk"] and other["surgery"]["id"] != chain["surgery"]["id"]
    assert len([a for a in chain["ef_search"]["search"] if a["stage"] == "ef_search"]) == ef.n_steps(3) - 1
    ids = all_ids(target)
    assert set(candidates) <= ids["cluster"] and len(ids["ef_search"]) >= ef.n_steps(3)
    # Table 7 at a target EF: a variant that sets min_cluster_size keeps it; the others are searched too
    studies = {a["id"]: a for a in run_artifacts(target)["studies"]}
    ablation = next(a for a in studies.values() if a["stage"] == "ablation")
    surgeries = {k: studies[studies[studies[i]["inputs"]["merge"]]["inputs"]["surgery"]]["inputs"]
                 for k, i in ablation["inputs"].items() if k != "evaluate-base-42"}
    assert set(surgeries["evaluate-eom-42"]) == {"ef_search"} and set(surgeries["evaluate-mcs-50-42"]) == {"cluster"}
    # topk_k: each candidate has its own top-k
    chain = artifact_ids(merge_config(base, {"cluster": {"target_ef": 4, "ef_search": {"axis": "topk_k", "values": [100, 200]}}}))
    topks = {a["id"] for a in chain["ef_search"]["search"] if a["stage"] == "topk"}
    assert len(topks) == 2 and chain["topk"]["id"] not in topks


def test_ef_sweep_plans_each_target_with_baselines_at_that_ef():
    cfg = validate_config({"cache": {"token_seed": 42}, "baselines": {"families": ["topk"]},
                           "ef_sweep": {"targets": [2, 8.0]}})  # 8.0 is 8
    sweep = next(a for a in run_artifacts(cfg)["studies"] if a["stage"] == "ef_sweep")
    assert sweep["id"] == artifact_ids(cfg)["report"]["inputs"]["ef_sweep"]
    main_eval = next(a["id"] for a in baseline_artifacts(cfg) if a["stage"] == "baseline_eval")
    assert sweep["inputs"]["baseline_eval-topk-8-42"] == main_eval  # EF 8 is the run's own baseline: shared
    assert sweep["inputs"]["baseline_eval-topk-2-42"] != main_eval
    assert set(sweep["inputs"]) == {f"{s}-{t}-42" for s in ("evaluate", "ef_search", "baseline_eval-topk") for t in (2, 8)}


def test_figure2_points_by_hand():
    rows = {"backbone": {"method": "Backbone only", "ms_score": 30.0, "accuracy": 80.0, "r2": 100.0},
            "topk": {"method": "TopK-SAE", "ms_score": 50.0, "accuracy": 78.5, "r2": 85.0, "ef": 8.0},
            "elude": {"method": "ELUDe", "ms_score": {"mean": 60.0, "std": 1.0}, "accuracy": {"mean": 80.0}, "r2": 100.0,
                      "ef": {"mean": 7.9}, "live": {"mean": 501.5}}}
    points = ef_tables.figure2(rows, {"blocks": {"4": {k: dict(r) for k, r in rows.items()}}})
    assert [(p["block"], p["method"]) for p in points] == [("Table 2", "topk"), ("Table 2", "elude"), ("EF 4", "topk"),
                                                            ("EF 4", "elude")]
    assert points[0]["accuracy_drop"] == 1.5 and points[1] == {
        "block": "Table 2", "method": "elude", "name": "ELUDe", "ef": 7.9, "ms_score": 60.0, "r2": 100.0, "live": 501.5,
        "accuracy_drop": 0.0}
    assert points[0]["live"] is None  # a row without the fair columns (an older summary) has no point in that panel
    assert ef_tables.figure2_png(points)[:8] == b"\x89PNG\r\n\x1a\n"


GRID = [5, 10, 20, 40, 80]
SWEEP = {"cluster": {"target_ef": 4, "ef_search": {"values": GRID}, "units_per_shard": 32},  # one shard: fewer jobs
         "baselines": {"families": ["topk"], "expansion_factor": 4, "epochs": 2},
         "ef_sweep": {"targets": [2, 4]}}


@pytest.mark.slow
def test_workflow_target_ef_and_the_ef_axis(tiny_run, tmp_path):
    """A run matched to EF 4 with Table 6's EF axis at 2 and 4 (TopK beside ELUDe): each search lands on the
    grid's closest candidate (all candidates clustered afterwards to check), surgery uses its clustering,
    the report has both EF blocks and Figure 2; the same command again runs nothing."""
    pytest.importorskip("overcomplete")
    from workflow_helpers import copy_run, executed_rules, snakemake, write_config

    copy_run(tiny_run, tmp_path)  # the tiny run's backbone, cache and top-k are this run's too (same ids)
    cfg = write_config(tmp_path / "ef.yaml", SWEEP)
    ran = executed_rules(snakemake(tmp_path, cfg, timeout=1200).stderr)
    assert "backbone" not in ran and "cache_shard" not in ran and "topk" not in ran
    # two searches over one grid share their candidates: each candidate clustered once (one unit shard)
    assert ran.count("cluster_shard") <= len(GRID) and ran.count("surgery_shard") == 2
    assert ran.count("ef_search") == 2 * ef.n_steps(len(GRID)) and ran.count("ef_sweep") == 1
    summary = json.loads((tmp_path / "results/runs/tiny/summary.json").read_text())
    t6 = summary["table6_ef"]
    assert list(t6["blocks"]) == ["2", "4"]

    candidates = artifact_ids(load_run_config(cfg))["ef_search"]["params"]["candidates"]
    n_units = summary["n_units"]
    shards = lambda cid: sorted((tmp_path / "results/cluster" / cid).glob("shard-*"))  # noqa: E731
    targets = [f"results/cluster/{cid}/shard-0000" for cid in candidates]
    snakemake(tmp_path, cfg, *targets)  # the candidates the searches skipped, to know the whole curve
    curve = [ef.effective_ef(shards(cid))[0] for cid in candidates]
    for key, rows in t6["blocks"].items():
        search = t6["searches"][key]["42"]
        chosen, target = search["chosen"], float(key)
        assert abs(chosen["ef"] - target) <= min(abs(e - target) for e in curve) + 1 / n_units
        assert chosen["ef"] == curve[chosen["index"]] and rows["elude"]["ef"]["mean"] == chosen["ef"]
        assert [p["value"] for p in search["path"]] == [GRID[p["index"]] for p in search["path"]]
        assert len(search["path"]) <= ef.n_steps(len(GRID))
        assert rows["elude"]["r2"]["mean"] == 100.0 and rows["elude"]["accuracy"] == rows["backbone"]["accuracy"]
        assert rows["topk"]["ef"]["mean"] == float(key) and 0 < rows["topk"]["r2"]["mean"] < 100
    # the run itself is the EF-4 search: its merge has the chosen EF, its manifest the path
    assert summary["expansion_factor"] == t6["searches"]["4"]["42"]["chosen"]["ef"]
    manifest = json.loads((tmp_path / summary["artifacts"]["ef_search"] / "manifest.json").read_text())
    assert manifest["path"] == t6["searches"]["4"]["42"]["path"] and manifest["inputs"] == {
        "cluster": manifest["chosen"]["cluster"]}
    blocks = {p["block"] for p in summary["figure2"]}
    assert blocks == {"Table 2", "EF 2", "EF 4"}
    assert (tmp_path / "results/runs/tiny/plots/figure2.png").read_bytes()[:4] == b"\x89PNG"
    html = (tmp_path / "results/runs/tiny/report.html").read_text()
    assert "Expansion-factor axis (Table 6)" in html and "Figure 2" in html and "<h3>EF 2</h3>" in html

    ran = executed_rules(snakemake(tmp_path, cfg).stderr)
    assert ran == []

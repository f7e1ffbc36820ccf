"""The input-key format (elude.pipeline.input_keys): what the id computation writes into an artifact's ``inputs``,
the workflow's input functions read back, on the artifacts of a real run plan with every study on."""
from pathlib import Path

import pytest
import yaml

from elude.pipeline.config import merge_config, validate_config
from elude.pipeline.input_keys import (
    ablation_runs,
    dictionary_runs,
    ef_sweep_runs,
    input_key,
    qualified,
    rank_runs,
    split_key,
)
from elude.pipeline.plan import registry, run_artifacts, token_seeds

REPO = Path(__file__).resolve().parents[1]
# every study on, over two token seeds, an ablation variant whose name holds '-', and Table 6's EF axis
EVERYTHING = {"cache": {"tokens_per_image": 2, "token_seed": [0, 1]},
              "ablations": {"variants": [{"name": "min-cluster-size-30", "cluster": {"min_cluster_size": 30}}]},
              "ef_sweep": {"targets": [2, 4.5]}}


@pytest.fixture(scope="module")
def plan():
    config = validate_config(merge_config(yaml.safe_load((REPO / "config.yaml").read_text()), EVERYTHING))
    return config, registry(run_artifacts(config))


def test_keys_round_trip_through_their_parts():
    assert input_key("judge", 3, 0) == "judge-3-0"
    assert qualified({"judge-3-0": "a", "judge-4-1": "b", "grids-3": "c"}, "judge", 2) == {("3", "0"): "a", ("4", "1"): "b"}
    assert split_key("mcs-50-7") == ("mcs-50", "7")  # the first part may hold '-'
    assert qualified({input_key("evaluate", "mcs-50", 7): "x"}, "evaluate", 2) == {("mcs-50", "7"): "x"}


def test_every_multi_input_artifact_decodes_to_what_the_plan_encoded(plan):
    config, reg = plan
    seeds = [str(s) for s in token_seeds(config)]
    families, judges = config["baselines"]["families"], config["judges"]["models"]
    for report in reg["report"].values():
        assert sorted(qualified(report["inputs"], "baseline_eval")) == sorted(families)
    for grids in reg["grids"].values():
        assert sorted(qualified(grids["inputs"], "baseline_eval")) == sorted(families)
    for rank in reg["rank"].values():
        grids, judged = rank_runs(rank["inputs"])
        assert sorted(grids) == seeds and all(len(ids) == len(judges) for ids in judged.values())
        assert all(reg["judge"][i]["inputs"] == {"grids": grids[s]} for s, ids in judged.items() for i in ids)
    (ablation,) = reg["ablation"].values()
    runs = ablation_runs(ablation["inputs"])
    assert sorted(runs) == ["base", "min-cluster-size-30"] and all(sorted(r) == seeds for r in runs.values())
    (dictionary,) = reg["dictionary"].values()
    merges, models = dictionary_runs(dictionary["inputs"])
    assert len(merges) == config["dictionary"]["elude_runs"] and all(m in reg["merge"] for m in merges)
    assert sorted(models) == sorted(families)
    assert all(len(ids) == len(config["dictionary"]["init_seeds"]) for ids in models.values())
    (efficiency,) = reg["efficiency"].values()
    assert sorted(qualified(efficiency["inputs"], "baseline")) == sorted(families)
    (sweep,) = reg["ef_sweep"].values()
    found = ef_sweep_runs(sweep["inputs"])
    assert sorted({t for t, _ in found["evaluate"]}) == ["2", "4.5"] and {s for _, s in found["evaluate"]} == set(seeds)
    assert {f for f, _, _ in found["baseline_eval"]} == set(families)
    # and back: each decoded entry re-encodes to exactly the key it came from
    encoded = {input_key(kind, *(k if isinstance(k, tuple) else (k,))): i for kind, ids in found.items()
               for k, i in ids.items()}
    assert encoded == sweep["inputs"]
    (aggregate,) = reg["aggregate"].values()
    assert sorted(qualified(aggregate["inputs"], "report")) == seeds

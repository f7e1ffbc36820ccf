"""Using the sub-units (issue 13): the clustering ablations of Table 7 as one DAG, concept labels and groups,
and steering by class and by label (Section C.3) on a model trained well enough to have classes to steer."""
import json
import subprocess
import sys

import numpy as np
import pytest
from workflow_helpers import REPO, executed_rules, ids_for, snakemake, write_config

# The tiny config with a backbone trained long enough to classify (60 epochs: ~75% held-out accuracy), one
# ablation variant, and labels by the demo CLIP (trained on the digits' names in the job).
USING = {"backbone": {"demo": {"train": {"epochs": 60}}},
         "ablations": {"variants": [{"name": "eom", "cluster": {"cluster_selection_method": "eom"}}]},
         "labels": {"model": "demo:0", "concepts": "digits"}}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("using")
    cfg = write_config(work / "using.yaml", USING)
    return work, cfg, snakemake(work, cfg, timeout=1200)


def test_table7_runs_each_variant_on_the_shared_cache_and_a_changed_variant_reruns_only_its_chain(trained_run):
    work, cfg, proc = trained_run
    ran = executed_rules(proc.stderr)
    assert ran.count("cache_shard") == 2 and ran.count("topk") == 1  # shared by the base run and the variant
    assert ran.count("merge") == 2 and ran.count("evaluate") == 2 and ran.count("ablation") == 1
    summary = json.loads((work / "results/runs/tiny/summary.json").read_text())
    rows = summary["table7"]["rows"]
    assert list(rows) == ["eom", "base"]
    for r in rows.values():
        assert 0 < r["ms_subunits"]["mean"] <= 100 and r["ms_random"] is not None
        assert r["expansion_factor"]["mean"] >= 1
    base_eval = json.loads((work / "results/evaluate" / ids_for(cfg)["evaluate"] / "metrics.json").read_text())
    assert rows["base"]["ms_subunits"]["mean"] == pytest.approx(100 * base_eval["ms_score"]["subunits_mean"])
    assert "Clustering ablations (Table 7)" in (work / "results/runs/tiny/report.html").read_text()

    changed = write_config(work / "changed.yaml", USING, {"ablations": {"variants": [
        {"name": "eom", "cluster": {"cluster_selection_method": "eom", "min_cluster_size": 20}}]}})
    ran = executed_rules(snakemake(work, changed).stderr)
    assert sorted(set(ran)) == ["ablation", "all", "cluster_shard", "evaluate", "merge", "report", "surgery_shard"]
    assert ran.count("evaluate") == 1  # the variant's chain only: the base run is reused (labels too)

    # a surgery variant (surgery.merge_siblings) reuses the base clustering and is verified lossless
    merged = write_config(work / "merged.yaml", USING, {"ablations": {"variants": [
        *USING["ablations"]["variants"], {"name": "merge-r0.7", "surgery": {"merge_siblings": {"correlation": 0.7}}}]}})
    ran = executed_rules(snakemake(work, merged).stderr)
    assert sorted(set(ran)) == ["ablation", "all", "evaluate", "merge", "report", "surgery_shard", "verify"]
    rows = json.loads((work / "results/runs/tiny/summary.json").read_text())["table7"]["rows"]
    assert rows["merge-r0.7"]["max_rel_diff"] < 1e-5 and "max_rel_diff" not in rows["eom"]
    assert rows["merge-r0.7"]["expansion_factor"]["mean"] < rows["base"]["expansion_factor"]["mean"]
    assert rows["merge-r0.7"]["ms_units"] == rows["base"]["ms_units"]  # the same original units


def test_suppressing_a_class_lowers_that_class_most_and_gains_of_one_are_exact(trained_run):
    from elude.evaluation.steering import steer_classes
    from elude.method.layers import LazyDisentangledLayer
    from elude.models.data import DigitsDataset
    from elude.pipeline.stages.job import load_layer

    work, cfg, _ = trained_run
    ids = ids_for(cfg)
    model, original, info = load_layer(work / "results/backbone" / ids["backbone"])
    layer = LazyDisentangledLayer.load(work / "results/merge" / ids["merge"], original)
    ds = DigitsDataset("eval", 0.3, 0)
    own, others = [], []
    for c in range(10):
        res = steer_classes(model, info["path"], layer, ds, suppress=[c], kappa=4)
        assert res["gains_one_max_change"] == 0.0 and res["gains_one"] == res["before"]  # exact, not close
        assert len(res["suppressed"]) == 4 and res["max_output_change"] > 0
        if res["before"][c] >= 0.5:  # a class the model knows
            own.append(res["before"][c] - res["after"][c])
            others.append(np.mean([res["before"][k] - res["after"][k] for k in res["before"] if k != c]))
    assert len(own) >= 4
    assert np.mean(own) > 0.2 and np.mean(own) > 4 * max(np.mean(others), 0.01)
    # nu: steering each example's most active token only (tests/test_layers.py checks which ones) reaches
    # the logits too, never by more than steering every token (the head reads the class token only)
    every = steer_classes(model, info["path"], layer, ds, suppress=[0], kappa=4)
    one = steer_classes(model, info["path"], layer, ds, suppress=[0], kappa=4, nu=1)
    assert 0 < one["max_output_change"] <= every["max_output_change"] + 1e-5
    # the steering context is gone afterwards: the model gives its original predictions again
    from elude.evaluation.steering import per_class_accuracy

    assert per_class_accuracy(model, info["path"], ds)[0] == one["before"]


def test_the_public_api_puts_a_finished_runs_layer_into_the_users_model(trained_run):
    """README's snippet, through the names elude exports: the run's folders, the lazy layer swapped into a
    model the user loaded (here: the run's own backbone), outputs bit-identical, steering changes them."""
    import torch

    import elude
    from elude.models.backbones import load_backbone
    from elude.models.data import DigitsDataset

    work, cfg, _ = trained_run
    folders = elude.run_folders(cfg, work)
    assert {"backbone", "merge", "evaluate", "report"} <= set(folders)
    assert folders["merge"] == work / "results/merge" / ids_for(cfg)["merge"]
    model = load_backbone(folders["backbone"]).eval()
    x = DigitsDataset("eval", 0.3, 0).images[:64]
    with torch.no_grad():
        ref = model(x)
        layer = elude.disentangle(model, "blocks.1.mlp.fc2", folders["merge"])
        assert torch.equal(model(x), ref)  # lazy: bit for bit
        layer.subunit_gain = elude.gains(layer.n_subunits, suppress=[0, 1, 2])
        assert not torch.equal(model(x), ref)
        layer.subunit_gain = None
        assert torch.equal(model(x), ref)
    dense = elude.disentangle(load_backbone(folders["backbone"]).eval(), "blocks.1.mlp.fc2", folders["merge"], "dense")
    assert isinstance(dense, elude.DisentangledLayer)


def test_steer_cli_prints_accuracy_per_class(trained_run):
    work, cfg, _ = trained_run
    proc = subprocess.run([sys.executable, "-m", "elude.steer", "--run", str(work), "--configfile", str(cfg),
                           "--by", "class", "--suppress", "0", "--kappa", "4"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "gains of 1: max |output change| 0;" in proc.stdout
    lines = [line.split() for line in proc.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [int(r[0]) for r in lines] == list(range(10))


def _run_model(work, cfg):
    from elude.method.layers import LazyDisentangledLayer
    from elude.models.data import DigitsDataset
    from elude.pipeline.stages.job import load_layer

    ids = ids_for(cfg)
    model, original, info = load_layer(work / "results/backbone" / ids["backbone"])
    return model, info["path"], LazyDisentangledLayer.load(work / "results/merge" / ids["merge"], original), \
        DigitsDataset("eval", 0.3, 0), ids


def test_labels_name_the_digit_each_subunit_responds_to_and_groups_are_a_view(trained_run):
    import pandas as pd

    from elude.demo.clip import DIGIT_NAMES
    from elude.evaluation.groups import active, per_image_max
    from elude.evaluation.steering import class_selectivity

    work, cfg, _ = trained_run
    model, path, layer, ds, ids = _run_model(work, cfg)
    folder = work / "results/labels" / ids["labels"]
    doc = json.loads((folder / "labels.json").read_text())
    acts = per_image_max(model, path, layer, ds)
    alive = active(acts["subunits"]).tolist()
    subs = doc["subunits"]
    assert len(subs) == layer.n_subunits and len(doc["units"]) == acts["units"].shape[1]
    assert [s["label"] is not None for s in subs] == alive  # every sub-unit that fires, and only those
    assert {s["label"] for s in subs} - {None} <= set(DIGIT_NAMES)
    # the labels agree with what the sub-units respond to: the class each is most selective for. Measured over
    # backbone seeds 0-4 and demo CLIP seeds 0-2 (2026-12-06, an AMD EPYC without AVX-512): 0.49-0.61 of 93-126
    # labelled sub-units; the same labels shuffled among the sub-units 0.08-0.12. The rate follows the CPU's
    # rounding through training: 0.6 held on earlier machines and failed here (0.55, seed 0); torch's vector
    # kernels at their baseline ISA (ATEN_CPU_CAPABILITY=default) train other weights and give 0.57.
    sel = class_selectivity(model, path, layer, ds)
    hits = [s["label"] == DIGIT_NAMES[int(np.argmax(sel[i]))] for i, s in enumerate(subs) if s["label"]]
    assert np.mean(hits) > 0.4, np.mean(hits)
    table = pd.read_csv(folder / "labels.csv")
    assert len(table) == len(subs) + len(doc["units"]) and set(table["kind"]) == {"unit", "subunit"}
    assert table[table.kind == "subunit"]["label"].fillna("").tolist() == [s["label"] or "" for s in subs]
    g = doc["groups"]
    groups = [s["group"] for s in subs if s["group"] is not None]
    assert len(groups) == g["n_active_subunits"] == sum(alive) and len(set(groups)) == g["n_groups"] <= sum(alive)
    for big in g["largest"]:
        assert big["size"] == len(big["members"]) == groups.count(big["group"])
    summary = json.loads((work / "results/runs/tiny/summary.json").read_text())
    assert summary["labels"]["n_groups"] == g["n_groups"]


def test_steering_by_label_lowers_the_named_digit_most_and_a_whole_group_with_gains_one_is_exact(trained_run):
    from elude.demo.clip import DIGIT_NAMES
    from elude.evaluation.steering import load_labels, steer_labels

    work, cfg, _ = trained_run
    model, path, layer, ds, ids = _run_model(work, cfg)
    labels, clip = load_labels(work / "results/labels" / ids["labels"])
    own, others = [], []
    for c, name in enumerate(DIGIT_NAMES):
        if not any(s["label"] == name for s in labels):
            continue
        res = steer_labels(model, path, layer, ds, labels, clip, suppress=[name], kappa=4)
        named = {i for i, s in enumerate(labels) if s["label"] == name}  # exact matches rank first
        assert set(res["suppressed"]) <= named if len(named) >= 4 else named <= set(res["suppressed"])
        if res["before"][c] >= 0.5:
            own.append(res["before"][c] - res["after"][c])
            others.append(np.mean([res["before"][k] - res["after"][k] for k in res["before"] if k != c]))
    assert len(own) >= 4
    assert np.mean(own) > 0.2 and np.mean(own) > 4 * max(np.mean(others), 0.01)
    # steering a whole concept group: grouping is a view of the lossless layer, gains of 1 change nothing
    name = next(s["label"] for s in labels if s["label"])
    res = steer_labels(model, path, layer, ds, labels, clip, suppress=[name], kappa=1, groups=True, gamma=1.0)
    group = labels[res["suppressed"][0]]["group"]
    assert [i for i, s in enumerate(labels) if s["group"] == group] == [i for i in res["suppressed"]
                                                                          if labels[i]["group"] == group]
    assert res["gains_one_max_change"] == 0.0 and res["max_output_change"] == 0.0


def test_steer_cli_by_label_and_a_changed_group_threshold_reruns_only_labels(trained_run):
    work, cfg, _ = trained_run
    proc = subprocess.run([sys.executable, "-m", "elude.steer", "--run", str(work), "--configfile", str(cfg),
                           "--suppress", "three", "--kappa", "4", "--groups"], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "suppressed sub-units (" in proc.stdout and "'three'" in proc.stdout
    changed = write_config(work / "threshold.yaml", USING, {"labels": {"group_threshold": 0.5}})
    ran = executed_rules(snakemake(work, changed).stderr)
    assert sorted(ran) == ["all", "labels", "report"]

"""Tables 4 and 5: dictionary metrics (B.3), the efficiency protocol (B.4), and both as workflow stages."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from elude.evaluation import dictionary as dic
from elude.evaluation.efficiency import measure, method_variants
from tests.workflow_helpers import (
    REPO,
    copy_run,
    executed_rules,
    snakemake,
    write_config,
)


def test_a_permuted_copy_is_perfectly_stable_and_an_independent_dictionary_is_not():
    torch.manual_seed(0)
    d = torch.randn(300, 64)
    assert dic.matched_similarity(d, d[torch.randperm(300)]) == pytest.approx(1.0, abs=1e-12)
    assert dic.matched_similarity(d, 3.0 * d[torch.randperm(300)]) == pytest.approx(1.0, abs=1e-12)  # by direction
    independent = dic.matched_similarity(d, torch.randn(300, 64))
    assert 0.0 < independent < 0.5
    runs = [d, d[torch.randperm(300)], torch.randn(300, 64)]
    st = dic.stability(runs)
    assert set(st["pairs"]) == {"0-1", "0-2", "1-2"}
    assert st["pairs"]["0-1"] == pytest.approx(1.0) and st["mean"] == pytest.approx(np.mean(list(st["pairs"].values())))


def test_per_neuron_matching_charges_unmatched_atoms_by_the_count_penalty():
    e = torch.eye(4)
    # neuron 0: run a has atoms e0, e1, e2; run b has e1, e0 (2 of 3 matched perfectly): 1 - 1/3
    # neuron 1: identical single atom: 1; neuron 2: e3 against -e3 (cos -1): -1
    a = [e[[0, 1, 2]], e[[3]], e[[3]]]
    b = [e[[1, 0]], e[[3]], -e[[3]]]
    assert dic.matched_similarity(a[0], b[0]) == pytest.approx(1 - 1 / 3)
    assert dic.blockwise_similarity(a, b) == pytest.approx(((1 - 1 / 3) + 1 - 1) / 3)
    # a neuron with no live atom in either run does not count; one side empty scores 0
    assert dic.blockwise_similarity([e[[0]], e[:0]], [e[[0]], e[:0]]) == pytest.approx(1.0)
    assert dic.matched_similarity(e[[0]], e[:0]) == 0.0


def test_effective_rank_coherence_and_dead_atoms():
    assert dic.effective_rank(torch.eye(6)) == pytest.approx(6.0)
    assert dic.effective_rank(torch.ones(5, 3)) == pytest.approx(1.0, abs=1e-6)  # one direction
    assert dic.coherence(torch.eye(5)) == pytest.approx(0.0, abs=1e-6)
    dup = torch.cat([torch.eye(3), torch.eye(3)[:1] * 2])
    assert dic.coherence(dup) == pytest.approx(1.0, abs=1e-5)  # a duplicated direction
    w = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    blocks = dic.elude_blocks(w, torch.tensor([0, 0, 1, 2]), 3)
    assert [len(b) for b in blocks] == [1, 1, 1]  # the zero row (a dead sub-unit) is left out
    assert len(dic.live(w, torch.tensor([True, True, False, True]))) == 2
    lw = dic.live(w)
    row = dic.method_row([lw, lw.flip(0), lw])
    assert row["stability"]["mean"] == pytest.approx(1.0) and row["effective_rank"]["std"] == pytest.approx(0.0)


@torch.no_grad()
def test_efficiency_protocol_measures_every_variant_on_one_model(rng):
    from elude.method.layers import LazyDisentangledLayer
    from tests.test_layers import random_split

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16), torch.nn.ReLU(),
                              torch.nn.Linear(16, 3)).eval()
    dense = random_split(net[2], rng)
    variants = method_variants(net, "2", dense=lambda: dense, lazy=lambda: LazyDisentangledLayer.from_dense(dense, net[2]))
    rows = measure(net, torch.randn(64, 12), variants, warmup=2, iterations=6, rounds=3, compile=False)
    assert list(rows) == ["backbone", "elude_dense", "elude_lazy"]
    assert all(r["iterations"] == 6 and r["ms_per_batch"] > 0 for r in rows.values())
    assert rows["backbone"]["ms_per_batch_ratio"] == 1.0
    # weights: lazy adds nothing to the backbone; dense adds its sub-unit projection minus the layer it replaces
    extra = (dense.weight.numel() + dense.bias.numel() - net[2].weight.numel() - net[2].bias.numel()) * 4
    assert rows["elude_lazy"]["param_mb"] == rows["backbone"]["param_mb"]
    assert rows["elude_dense"]["param_mb"] * 2**20 >= rows["backbone"]["param_mb"] * 2**20 + extra
    assert isinstance(net[2], torch.nn.Linear)  # every variant restored the model
    # the GPU protocol compiles each variant (here on the CPU): one round, the same rows
    compiled = measure(net, torch.randn(64, 12), variants, warmup=1, iterations=2, rounds=3, compile=True)
    assert all(r["compile"] and r["rounds"] == 1 and r["iterations"] == 2 for r in compiled.values())


@pytest.mark.slow
def test_workflow_tables_4_and_5_in_the_report_and_the_bench_on_its_artifacts(tiny_run, tmp_path):
    """The tiny run with one baseline family, Table 4 over three ELUDe runs and two init seeds, and Table 5 on
    the CPU (on a copy of the tiny run: its artifacts are the first ELUDe run's); then bench/efficiency.py on
    the same artifacts; then a changed efficiency setting reruns only the efficiency stage and the report."""
    pytest.importorskip("overcomplete")
    study = {"baselines": {"families": ["topk"], "epochs": 2, "archetypal_points": 256},
             "dictionary": {"enabled": True, "init_seeds": [42, 7], "elude_runs": 3},
             "efficiency": {"enabled": True, "cpu": {"batch_size": 32, "warmup": 1, "iterations": 4, "rounds": 2}}}
    copy_run(tiny_run, tmp_path)
    cfg = write_config(tmp_path / "study.yaml", study)
    proc = snakemake(tmp_path, cfg)
    ran = executed_rules(proc.stderr)
    # ELUDe's runs 1 and 2 (run 0 is the tiny run's, reused); nothing upstream of the clustering reruns
    assert ran.count("merge") == 2 and ran.count("dictionary") == 1 and ran.count("efficiency") == 1
    assert "backbone" not in ran and "cache_shard" not in ran and "topk" not in ran
    assert ran.count("baseline_train") == 2  # the sweep's one point (seed 42) and the selected point at seed 7
    summary = json.loads((tmp_path / "results/runs/tiny/summary.json").read_text())
    t4 = summary["table4"]
    assert t4["elude_runs_identical"] is True  # the CPU backend: three identical runs
    assert t4["rows"]["elude"]["stability"]["mean"] == pytest.approx(100.0)
    assert t4["rows"]["elude"]["dim"] == 128 and t4["rows"]["topk"]["dim"] == 32  # input rows vs decoder rows
    assert 0 < t4["rows"]["topk"]["stability"]["mean"] < 100  # two inits of an SAE differ
    assert t4["rows"]["elude_output_space"]["coherence"]["mean"] == pytest.approx(100.0, abs=1e-3)  # duplicates
    t5 = summary["table5"]
    assert list(t5["rows"]) == ["backbone", "topk", "elude_lazy", "elude_dense"]
    assert t5["rows"]["elude_lazy"]["param_mb"] == t5["rows"]["backbone"]["param_mb"]
    html = (tmp_path / "results/runs/tiny/report.html").read_text()
    assert "(Table 4)" in html and "(Table 5)" in html and "Coherence, max |cos| (↓)" in html

    bench = subprocess.run([sys.executable, str(REPO / "bench/efficiency.py"), "--run", str(tmp_path), "--configfile",
                            str(cfg), "--iterations", "3", "--warmup", "1", "--rounds", "1"],
                           capture_output=True, text=True, timeout=300)
    assert bench.returncode == 0, bench.stderr[-3000:]
    lines = bench.stdout.splitlines()
    assert any(line.startswith("elude_lazy ") for line in lines) and any(line.startswith("topk ") for line in lines)
    assert "elude_dense:" in bench.stdout and "paper, dense: +14.9% time" in bench.stdout

    cfg2 = write_config(tmp_path / "study2.yaml", study, {"efficiency": {"cpu": {"iterations": 5}}})
    proc = snakemake(tmp_path, cfg2)
    assert sorted(executed_rules(proc.stderr)) == ["all", "efficiency", "report"]
    t5 = json.loads((tmp_path / "results/runs/tiny/summary.json").read_text())["table5"]
    assert t5["settings"]["iterations"] == 5  # the report now shows the new measurement


def test_overcomplete_metrics_then_sae_in_one_process():
    """The dictionary job imports overcomplete's metrics, then loads baselines (its sae package)."""
    code = ("from elude.baselines import overcomplete_module, overcomplete_sae\n"
            "overcomplete_module('metrics'); overcomplete_sae(); overcomplete_module('metrics')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_tables_4_and_5_rank_what_they_measure_and_say_where_elude_loses():
    from elude.reporting import study_tables as report

    def row(stab, er, coh, n, dim):
        return {"stability": {"mean": stab, "std": 0.0}, "effective_rank": {"mean": er, "std": 0.0},
                "coherence": {"mean": coh, "std": 0.0}, "n_atoms": {"mean": n}, "dim": dim}

    t4 = report.table4({"init_seeds": [42, 7], "elude_runs": 2, "rows": {
        "topk": row(0.4, 60.0, 0.5, 512, 64), "mp": row(0.3, 30.0, 0.9, 512, 64),
        "elude_output_space": row(1.0, 62.0, 1.0, 200, 64), "elude": {**row(1.0, 100.0, 0.99, 200, 256)}}})
    rows = t4["rows"]
    assert rows["elude"]["effective_rank_share"]["mean"] == pytest.approx(50.0)  # 100 of min(200, 256)
    assert rows["topk"]["effective_rank_share"]["mean"] == pytest.approx(100 * 60 / 64)
    found = report.studies_summary({"table4": t4})["table4_elude_not_best"]
    assert found == ["Eff. rank / min(atoms, dim), %: TopK-SAE 93.75 beats ELUDe's 50.00.",
                     "Coherence, max |cos|: TopK-SAE 50.00 beats ELUDe's 99.00."]  # lower coherence wins
    html = report.ranked_table_html(rows, report.TABLE4_COLUMNS, {"coherence"}, unranked=("elude_output_space",))
    cells = {r.split("</td>", 1)[0]: r for r in html.split("<tr><td>")[1:]}
    assert cells["TopK-SAE"].endswith("<td><b>50.00 ± 0.00</b></td></tr>")  # coherence: lowest is best
    assert cells["Matching Pursuit"].endswith("<td><u>90.00 ± 0.00</u></td></tr>")
    assert "<b>" not in cells["ELUDe, one-hot output atoms e_u (reference)"]  # the reference row is not ranked


"""LLM Rank's protocol and aggregation (Section B.1), checked against hand-computed cases."""
import pytest

from elude.evaluation.judges.consensus import (
    bootstrap,
    comparisons,
    consensus,
    ranks,
    win_rates,
)
from elude.evaluation.judges.protocol import (
    PROMPT,
    parse_answer,
    presentations,
    sample_unit_pairs,
)


def test_prompt_is_the_papers():
    assert PROMPT.startswith("Each grid shows the 9 images that most strongly activate a neural network unit.")
    assert "Grid A = first image. Grid B = second image." in PROMPT
    assert PROMPT.endswith('{"reasoning_a": "...", "reasoning_b": "...", "answer": "A" or "B"}')


def test_every_unit_pair_is_shown_in_both_orders_with_a_recorded_seed():
    units = {"backbone": 64, "topk": 512, "elude": 236}
    shown = presentations(units, 5, seed=42)
    assert len(shown) == 3 * 5 * 2  # 3 method pairs x 5 unit pairs x both orders
    assert shown == presentations(units, 5, seed=42)  # the seed fixes the sample
    assert shown != presentations(units, 5, seed=43)
    for first, second in zip(shown[::2], shown[1::2]):
        assert (first["a"], first["b"]) == (second["b"], second["a"]) and not first["swapped"] and second["swapped"]
        assert first["a"][0] == first["pair"][0]
    assert {p["pair"] for p in shown} == {("backbone", "topk"), ("backbone", "elude"), ("topk", "elude")}
    assert all(0 <= p["a"][1] < units[p["a"][0]] and 0 <= p["b"][1] < units[p["b"][0]] for p in shown)
    assert len(sample_unit_pairs(3, 4, 10, 0)) == 10  # fewer units than pairs: drawn with replacement
    with pytest.raises(ValueError, match="need a unit"):
        sample_unit_pairs(0, 4, 2, 0)


@pytest.mark.parametrize("text, answer", [
    ('{"reasoning_a": "dogs", "reasoning_b": "mixed", "answer": "A"}', "A"),
    ('Sure!\n```json\n{"reasoning_a": "a {brace} \\"quoted\\"", "reasoning_b": "x", "answer": "b"}\n```', "B"),
    ('{"answer": "Grid B", "reasoning_a": "", "reasoning_b": ""}', "B"),
    ('I think A is more coherent.', None),  # no JSON: unparseable, never guessed
    ('{"reasoning_a": "x", "answer": "both"}', None),
    ('{"reasoning_a": "x", "answer": "A"', None),  # truncated at max_tokens
])
def test_answers_are_parsed_or_recorded_as_unparseable(text, answer):
    parsed = parse_answer(text)
    assert parsed["answer"] == answer and parsed["parsed"] is (answer is not None)


def test_consensus_is_a_majority_of_all_judges_and_ties_are_dropped():
    assert consensus(["A", "A", "B"]) == "A"
    assert consensus(["B", None, "B"]) == "B"  # 2 of 3
    assert consensus(["A", None, "B"]) is None  # no majority: dropped
    assert consensus(["A", None, None]) is None
    assert consensus(["A", "B"]) is None  # an even split


def test_win_rates_intervals_and_ranks_by_hand():
    shown = presentations({"x": 4, "y": 4, "z": 4}, 1, seed=0)  # (x,y), (x,z), (y,z), each in both orders
    answers = {"j1": ["A", "B", "A", "A", "B", "A"], "j2": ["A", "B", "A", "B", "B", "A"],
               "j3": ["B", "A", None, "A", "B", "A"]}
    results, counts = comparisons(shown, answers)
    # 1: A,A,B -> A: x beats y. 2 (swapped: a=y): B,B,A -> B: x beats y. 3: A,A,None -> A: x beats z.
    # 4 (swapped: a=z): A,B,A -> A: z beats x. 5: B,B,B -> B: z beats y. 6 (swapped: a=z): A,A,A -> A: z beats y.
    assert results == [("x", "y"), ("x", "y"), ("x", "z"), ("z", "x"), ("z", "y"), ("z", "y")]
    assert counts == {"presentations": 6, "ties_dropped": 0, "comparisons": 6}
    rates = win_rates(results, ["x", "y", "z"])
    assert rates == {"x": 3 / 4, "y": 0.0, "z": 3 / 4}
    assert ranks(rates) == {"x": 1, "y": 3, "z": 1}
    ci = bootstrap(results, ["x", "y", "z"], n=2000, seed=1)
    assert ci["y"] == (0.0, 0.0)  # y never wins in any resample
    lo, hi = ci["x"]
    assert 0.0 <= lo < 0.75 < hi <= 1.0
    assert bootstrap(results, ["x", "y", "z"], n=2000, seed=1) == ci  # seeded
    _, counts = comparisons(shown[:1], {"j1": ["A"], "j2": ["B"]})
    assert counts["ties_dropped"] == 1
    assert win_rates([], ["x"]) == {"x": None} and ranks({"x": None, "y": 0.5}) == {"x": None, "y": 1}


def test_grids_put_the_top_nine_images_in_3x3_cells(tmp_path):
    import numpy as np
    from PIL import Image

    from elude.evaluation.judges.grids import EMPTY, cell_image, grid_image, save_grid
    from elude.models.data import DigitsDataset

    digits = DigitsDataset("eval", 0.3, 0)
    images = [digits.thumbnail(i) for i in range(7)]  # 8x8 digits; only 7: two cells stay empty
    grid = grid_image(images, cell=48)
    assert grid.shape == (144, 144, 3) and grid.dtype == np.uint8
    first = cell_image(images[0], 48)
    assert np.array_equal(grid[:48, :48], first)  # row by row, best first
    assert np.array_equal(grid[48:96, 48:96], cell_image(images[4], 48))
    assert (grid[96:, 48:] == EMPTY).all()  # cells 8 and 9
    # nearest-neighbour enlargement: each digit pixel is a 6x6 block of one value
    assert (first[:6, :6] == first[0, 0]).all() and len(np.unique(first[..., 0])) > 2
    wide = cell_image(np.zeros((20, 40, 3), np.uint8) + np.arange(40, dtype=np.uint8)[None, :, None], 10)
    assert wide.shape == (10, 10, 3) and wide[0, 0, 0] > 0  # the shorter side fits, the longer is centre-cropped
    save_grid(tmp_path / "g.png", images, cell=48)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "g.png")), grid)


def test_transformers_judge_asks_every_presentation_in_both_orders_and_resumes(tmp_path):
    import io

    from PIL import Image

    from elude.demo.judge import build_demo_judge
    from elude.evaluation.judges.backends import (
        JudgmentStore,
        TransformersJudge,
        run_judge,
    )
    from elude.evaluation.judges.grids import grid_image
    from elude.models.data import DigitsDataset

    digits = DigitsDataset("eval", 0.3, 0)
    top = {"backbone": [[u + 9 * r for r in range(9)] for u in range(4)], "elude": [[u * 3 + r for r in range(9)] for u in range(6)]}

    def grid_png(unit):
        buf = io.BytesIO()
        Image.fromarray(grid_image([digits.thumbnail(i) for i in top[unit[0]][unit[1]]], cell=16)).save(buf, format="PNG")
        return buf.getvalue()

    shown = presentations({m: len(t) for m, t in top.items()}, 3, seed=42)
    judge = TransformersJudge(str(build_demo_judge(tmp_path / "vlm", answers=False)), max_tokens=12, batch_size=4)
    asked = []

    def ask(pairs):
        asked.extend(pairs)
        return judge.ask(pairs)

    store = JudgmentStore(tmp_path / "judgments.jsonl")
    first = run_judge("tiny", ask, shown[:4], grid_png, store)
    assert len(asked) == 4
    # a kill mid-write leaves a cut line: it is ignored, and a rerun asks only what is missing
    with open(tmp_path / "judgments.jsonl", "a") as f:
        f.write('{"key": "cut')
    store = JudgmentStore(tmp_path / "judgments.jsonl")
    every = run_judge("tiny", ask, shown, grid_png, store)
    assert len(shown) == 6 and len(asked) == 6 and every[:4] == first  # 1 method pair x 3 unit pairs x 2 orders
    assert [(j["a"], j["b"]) for j in every[::2]] == [(j["b"], j["a"]) for j in every[1::2]]  # both orders
    assert all(j["parsed"] is (j["answer"] in ("A", "B")) and isinstance(j["reply"], str) for j in every)
    assert not any(j["parsed"] for j in every)  # a random model's noise is counted as unparseable, never guessed
    assert run_judge("tiny", ask, shown, grid_png, JudgmentStore(tmp_path / "judgments.jsonl")) == every
    assert len(asked) == 6  # nothing asked again
    run_judge("other", lambda pairs: ['{"answer": "A"}'] * len(pairs), shown[:2], grid_png, store)
    assert len(asked) == 6 and len(store.done) == 8  # one more judge asks only that judge


def test_vllm_requests_and_a_clear_error_where_it_cannot_run():
    import base64
    import io

    import numpy as np
    from PIL import Image

    from elude.evaluation.judges.backends import (
        JudgeDependencyError,
        VllmJudge,
        vllm_requests,
        vllm_settings,
    )

    a, b = (Image.fromarray(np.full((6, 6, 3), v, np.uint8)) for v in (10, 200))
    (conv,) = vllm_requests([(a, b)])
    parts = conv[0]["content"]
    assert [p["type"] for p in parts] == ["image_url", "image_url", "text"] and parts[2]["text"] == PROMPT
    first = Image.open(io.BytesIO(base64.b64decode(parts[0]["image_url"]["url"].split(",", 1)[1])))
    assert np.asarray(first)[0, 0, 0] == 10  # grid A first
    s = vllm_settings()
    assert s["engine"]["limit_mm_per_prompt"] == {"image": 2} and s["engine"]["max_model_len"] == 32768
    assert s["sampling"] == {"temperature": 0.0, "max_tokens": 256, "seed": 42}
    with pytest.raises(JudgeDependencyError, match="backend 'transformers'"):
        VllmJudge("any-model")  # no vLLM (or no GPU) here: refused before any model is loaded


# --- the workflow: grids -> a judge job per judge and token seed -> rank; Table 3 in the report -----------
@pytest.mark.slow
@pytest.mark.xdist_group("two_seed_run")  # the worker that makes the run (tests/conftest.py)
def test_workflow_llm_rank_pools_seeds_resumes_a_killed_judge_and_adds_a_judge_alone(request, tmp_path):
    """Two token seeds, six methods (backbone, four baseline families, ELUDe: workflow_helpers.TWO_SEED_RUN,
    shared with tests/test_baselines.py), two tiny random judges through the real transformers backend: every
    presentation asked in both orders, Table 3 recomputed here from the stored judgments, the LLM Rank column
    filled; a judge job killed halfway resumes asking only the missing judgments; one more judge runs only
    that judge's jobs."""
    import json
    import shutil

    pytest.importorskip("overcomplete")
    from workflow_helpers import (
        RUN_FAMILIES,
        TWO_SEED_RUN,
        copy_run,
        executed_rules,
        snakemake,
        write_config,
    )

    from elude.evaluation.judges.consensus import comparisons, ranks, win_rates

    two_seed_run = request.getfixturevalue("two_seed_run")  # (after the skip: the run needs overcomplete)
    ran = two_seed_run[2]
    assert ran.count("grids") == 2 and ran.count("judge") == 4 and ran.count("rank") == 1
    cfg = copy_run(two_seed_run, tmp_path)  # the kill and the third judge below change it: a copy of its own
    summary = json.loads((tmp_path / "results/runs/tiny/summary.json").read_text())
    t3 = summary["table3"]
    methods = ["backbone", *RUN_FAMILIES, "elude"]
    method_pairs = len(methods) * (len(methods) - 1) // 2
    unit_pairs = TWO_SEED_RUN["judges"]["pairs_per_method_pair"]
    assert t3["counts"]["presentations"] == 2 * method_pairs * unit_pairs * 2  # seeds x method pairs x unit pairs x orders
    assert t3["token_seeds"] == ["1", "2"]

    # recompute the consensus from the stored judgments and presentations
    first = json.loads((tmp_path / "results/runs/tiny/seed-1/summary.json").read_text())
    assert first["table3"] == t3  # the first seed's report carries it; the aggregate copies it
    rank_dir = tmp_path / first["artifacts"]["rank"]
    manifest = json.loads((rank_dir / "manifest.json").read_text())
    presented, answers = [], {"1": [], "2": []}
    for seed in ("1", "2"):
        grids = tmp_path / "results/grids" / manifest["inputs"][f"grids-{seed}"]
        shown = json.loads((grids / "presentations.json").read_text())["presentations"]
        assert all((grids / "grids" / a[0] / f"{a[1]:06d}.png").exists() for s in shown for a in (s["a"], s["b"]))
        presented += shown
        for k in range(2):
            lines = (tmp_path / "results/judge" / manifest["inputs"][f"judge-{seed}-{k}"] / "judgments.jsonl").read_text()
            recs = [json.loads(line) for line in lines.splitlines()]
            assert [(r["a"], r["b"]) for r in recs] == [(s["a"], s["b"]) for s in shown]
            assert [(r["a"], r["b"]) for r in recs[::2]] == [(r["b"], r["a"]) for r in recs[1::2]]  # both orders
            assert all(r["parsed"] is (r["answer"] in ("A", "B")) for r in recs)
            answers[str(k + 1)] += [r["answer"] for r in recs]
    results, counts = comparisons(presented, answers)
    assert counts == t3["counts"]
    rates = win_rates(results, methods)
    assert {m: r["win_rate"] for m, r in t3["rows"].items()} == {m: pytest.approx(100 * v, abs=1e-3) for m, v in rates.items()}
    assert {m: r["llm_rank"] for m, r in summary["table2"]["rows"].items()} == ranks(rates)
    assert {m: r["llm_rank"] for m, r in first["table2"]["rows"].items()} == ranks(rates)
    assert "(Table 3)" in (tmp_path / "results/runs/tiny/report.html").read_text()
    html = (tmp_path / "results/runs/tiny/seed-1/report.html").read_text()
    assert "(Table 3)" in html and html.count('" width="336">') == 2  # the two grids of one judged pair

    # a judge killed halfway: its partial folder holds half of the judgments and a cut line
    judge_dir = tmp_path / "results/judge" / manifest["inputs"]["judge-1-0"]
    lines = (judge_dir / "judgments.jsonl").read_text().splitlines(keepends=True)
    partial = judge_dir.with_name(f".{judge_dir.name}.partial")
    partial.mkdir()
    (partial / "judgments.jsonl").write_text("".join(lines[:7]) + lines[7][:20])
    shutil.rmtree(judge_dir)
    ran = executed_rules(snakemake(tmp_path, cfg, str(judge_dir.relative_to(tmp_path))).stderr)
    assert ran == ["judge"]
    stats = json.loads((judge_dir / "judge.json").read_text())
    assert stats["reused"] == 7 and stats["asked_this_run"] == len(lines) - 7
    assert (judge_dir / "judgments.jsonl").read_text().splitlines(keepends=True) == lines  # same answers
    assert not partial.exists()

    cfg3 = write_config(tmp_path / "j3.yaml", TWO_SEED_RUN, {"judges": {"models": ["demo:1", "demo:2", "demo:3"]}})
    ran = executed_rules(snakemake(tmp_path, cfg3).stderr)
    assert sorted(ran) == ["aggregate", "all", "judge", "judge", "rank", "report"]  # one new judge per seed
    assert len(json.loads((tmp_path / "results/runs/tiny/summary.json").read_text())["table3"]["judges"]) == 3


def test_judge_agreement_by_hand():
    from elude.evaluation.judges.consensus import judge_agreement

    # one unit pair in both orders, then a second pair shown once; x prefers unit (m, 0) both times
    shown = [{"pair": ("m", "n"), "index": 0, "a": ("m", 0), "b": ("n", 5)},
             {"pair": ("m", "n"), "index": 0, "a": ("n", 5), "b": ("m", 0)},
             {"pair": ("m", "n"), "index": 1, "a": ("m", 1), "b": ("n", 6)}]
    answers = {"x": ["A", "B", "A"], "y": ["A", "A", None], "z": ["B", "B", "A"]}
    out = judge_agreement(shown, answers)
    assert out["x"]["order_consistency"] == 1.0 and out["y"]["order_consistency"] == 0.0  # y always says A
    assert out["y"]["parsed_share"] == pytest.approx(2 / 3) and out["x"]["chose_a_share"] == pytest.approx(2 / 3)
    # consensus: A (x, y), B (x, z), A (x, z; y unparseable) -> x agrees 3/3, y 1/2 answered, z 2/3
    assert out["x"]["agreement_with_consensus"] == 1.0 and out["y"]["agreement_with_consensus"] == 0.5
    assert out["z"]["agreement_with_consensus"] == pytest.approx(2 / 3)
    assert out["x"]["agreement_with"] == {"y": 0.5, "z": pytest.approx(2 / 3)}


def test_units_that_never_fire_are_not_shown_and_bad_judge_settings_fail_early(tmp_path):
    import numpy as np

    from elude.evaluation.judges.backends import JudgeDependencyError, model_check
    from elude.pipeline.config import ConfigError, merge_config, validate_config
    from elude.pipeline.stages.judging import method_units
    from elude.util.files import save_arrays

    ms = np.array([0.3, np.nan, 0.5])
    top = np.arange(30).reshape(3, 10)
    save_arrays(tmp_path / "tables.safetensors", {"units_ms_layer": ms, "units_top_images": top,
                                                   "subunits_ms_layer": np.array([np.nan, 0.1]),
                                                   "subunits_top_images": top[:2]})
    m = method_units(tmp_path, {})
    assert list(m) == ["backbone", "elude"] and m["backbone"]["units"].tolist() == [0, 2]
    assert m["elude"]["units"].tolist() == [1] and m["elude"]["total"] == 2
    with pytest.raises(JudgeDependencyError, match="judges.models: 'nobody/no-such-judge' is neither"):
        model_check("nobody/no-such-judge")
    model_check(str(tmp_path))  # a local folder is accepted as is
    with pytest.raises(ConfigError, match="two judges with the same name"):
        validate_config(merge_config({}, {"judges": {"models": ["a/judge", "b/judge"]}}))


@pytest.mark.slow
def test_vllm_where_it_cannot_run_stops_the_workflow_before_any_job(tmp_path):
    from workflow_helpers import executed_rules, snakemake, write_config

    from elude.evaluation.judges.backends import JudgeDependencyError, vllm_check

    try:
        vllm_check()
        pytest.skip("vLLM and a GPU are here, so the request can run")
    except JudgeDependencyError:
        pass
    cfg = write_config(tmp_path / "v.yaml", {"judges": {"models": ["demo:1"], "backend": "vllm"}})
    proc = snakemake(tmp_path, cfg, check=False)
    assert proc.returncode != 0 and "judges.backend: vllm needs" in proc.stderr
    assert executed_rules(proc.stderr) == [] and not (tmp_path / "results").exists()

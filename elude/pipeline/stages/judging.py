"""LLM Rank as workflow stages (Section B.1): ``grids`` (per token seed: the unit pairs shown and their
top-9 grids), ``judge`` (per judge and token seed: every presentation asked, each judgment stored as it is
made) and ``rank`` (over all seeds and judges: consensus win rates, bootstrap intervals, Table 3)."""
from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from ...evaluation.judges import consensus as cons
from ...evaluation.judges import judge_name, protocol
from ...util.files import load_arrays, write_atomic
from .job import Stage, dataset

log = logging.getLogger(__name__)

GRID_SIDE = 3  # 3x3: the top 9 images (B.1)


# --- grids ------------------------------------------------------------------------------------------
def method_units(evaluate_dir: str | Path, baseline_dirs: dict[str, str]) -> dict[str, dict]:
    """method -> {"units": ids that can be judged, "top_images": (units, K) evaluation image ids by max
    activation (evaluate's MS-Score lists, no second pass), "total": units}, in Table 2's order: backbone,
    each family, ELUDe. A unit is judged when it has an MS-Score (it activates on at least two evaluation
    images): a unit that never fires has no top images to show, the same rule as the MS-Score mean."""
    from ...baselines import FAMILIES

    ev = load_arrays(Path(evaluate_dir) / "tables.safetensors")
    sources = {"backbone": (ev, "units")}
    for family in [f for f in FAMILIES if f in baseline_dirs]:
        sources[family] = (load_arrays(Path(baseline_dirs[family]) / "tables.safetensors"), "features")
    sources["elude"] = (ev, "subunits")
    return {m: {"units": np.flatnonzero(~np.isnan(t[f"{k}_ms_layer"])), "top_images": t[f"{k}_top_images"],
                "total": len(t[f"{k}_ms_layer"]), "contexts": t.get(f"{k}_top_contexts")}  # text runs: token by token
            for m, (t, k) in sources.items()}


def grid_path(grids_dir: str | Path, method: str, unit: int, text: bool = False) -> Path:
    """A unit's grid: its top-9 images as a PNG, or on a text run its top-9 texts, marked (.txt)."""
    return Path(grids_dir) / "grids" / method / f"{unit:06d}.{'txt' if text else 'png'}"


def is_text(grids_dir: str | Path) -> bool:
    return json.loads((Path(grids_dir) / "presentations.json").read_text()).get("format") == "text"


def grids(st: Stage, evaluate_dir: str, baseline_dirs: dict[str, str], backbone_dir: str, out: str) -> None:
    """The presentations of one token dataset (B.1: ``pairs_per_method_pair`` unit pairs per pair of
    methods, each in both orders, sampled with ``sample_seed`` + the token seed) and a PNG grid of every unit
    they show. Memory: one grid at a time (9 images)."""
    from ...evaluation.judges.grids import save_grid
    from ...models.data import image_reader

    p = st.params
    methods = method_units(evaluate_dir, baseline_dirs)
    empty = [m for m, v in methods.items() if not len(v["units"])]
    if empty:
        raise ValueError(f"LLM Rank: {', '.join(empty)} has no unit that activates on two evaluation images, so "
                         "there is nothing to show the judges: check the evaluation split (data.eval_fraction)")
    seed = p["sample_seed"] + p["token_seed"]
    shown = protocol.presentations({m: len(v["units"]) for m, v in methods.items()}, p["pairs_per_method_pair"], seed)
    for s in shown:  # indices into each method's judged units -> unit ids
        s["a"], s["b"] = ([m, int(methods[m]["units"][i])] for m, i in (s["a"], s["b"]))
    ds = dataset(p["data"], "eval", backbone_dir)
    cell = p["cell_size"]
    text = hasattr(ds, "tokens")  # a text run: the top texts, their most active token marked
    image = None if text else image_reader(ds, 2 * cell, "LLM Rank (judges.models)")
    with st.publish(out) as (tmp, _):
        units = sorted({tuple(s[side]) for s in shown for side in ("a", "b")})
        for method, unit in units:
            path = grid_path(tmp, method, unit, text)
            path.parent.mkdir(parents=True, exist_ok=True)
            top = methods[method]["top_images"][unit][: GRID_SIDE**2]
            if text:
                from ...evaluation.explanations import marked

                acts = methods[method]["contexts"][unit][: GRID_SIDE**2]
                lines = [m for i, a in zip(top, acts) if (m := marked(ds.tokens(int(i)), a))]
                path.write_text("\n".join(f"{j + 1}. {m}" for j, m in enumerate(lines)))
            else:
                save_grid(path, [image(i) for i in top], cell)
        (tmp / "presentations.json").write_text(json.dumps({
            "format": "text" if text else "image",
            "seed": seed, "token_seed": p["token_seed"], "pairs_per_method_pair": p["pairs_per_method_pair"],
            "methods": {m: {"judged_units": len(v["units"]), "units": v["total"]} for m, v in methods.items()},
            "presentations": shown}, indent=1))
        log.info("grids: %d presentations over %d methods, %d grids", len(shown), len(methods), len(units))


# --- judge ------------------------------------------------------------------------------------------
def make_judge(p: dict, text: bool = False):
    """The configured backend's ``ask`` (the model loads on first use: a finished job loads nothing); ``text``:
    a text LLM choosing between two sets of texts (:func:`elude.evaluation.explanations.choose`)."""
    from ...demo.judge import build_demo_judge
    from ...evaluation.judges import backends
    from ...models import demo_seed

    state = {}

    def ask(pairs):
        if "judge" not in state and text:
            from ...models.backbones import resolve_device
            from .labeling import make_llm

            t0 = time.perf_counter()
            state["folder"] = tempfile.TemporaryDirectory(prefix="elude-demo-judge-")
            state["judge"] = make_llm(p["model"], p["backend"], str(resolve_device(p["device"])), p["batch_size"],
                                      p["tensor_parallel_size"], state["folder"].name)
            state["load_seconds"] = time.perf_counter() - t0
        if text:
            from ...evaluation.explanations import choose

            return choose(state["judge"], pairs)
        if "judge" not in state:
            t0 = time.perf_counter()
            model = p["model"]
            if demo_seed(model) is not None:  # "demo:<seed>": the tiny random judge, built here (no download)
                state["folder"] = tempfile.TemporaryDirectory(prefix="elude-demo-judge-")
                model = str(build_demo_judge(state["folder"].name, demo_seed(model)))
            if p["backend"] == "vllm":
                state["judge"] = backends.VllmJudge(model, p["max_model_len"], p["tensor_parallel_size"],
                                                    p["max_tokens"], p["batch_size"], p["trust_remote_code"])
            else:
                from ...models.backbones import resolve_device

                state["judge"] = backends.TransformersJudge(model, resolve_device(p["device"]), p["max_tokens"],
                                                            p["batch_size"], p["trust_remote_code"])
            state["load_seconds"] = time.perf_counter() - t0
        return state["judge"].ask(pairs)

    return ask, state


def judge(st: Stage, grids_dir: str, out: str) -> None:
    """Every presentation of one token dataset judged by one model. Resumable: each judgment is appended
    (fsynced) to ``judgments.jsonl`` in the stage's partial folder as it is made, keyed by its content
    (:func:`elude.evaluation.judges.backends.judgment_key`), so a killed job asks only the missing ones."""
    from ...evaluation.judges.backends import (
        JudgmentStore,
        model_check,
        run_judge,
        vllm_check,
    )

    p = st.params
    model_check(p["model"])
    if p["backend"] == "vllm":
        vllm_check()
    shown = json.loads((Path(grids_dir) / "presentations.json").read_text())["presentations"]
    text = is_text(grids_dir)
    ask, state = make_judge(p, text)
    name = judge_name(p["model"])
    with st.publish(out, resumable=True) as (tmp, _):
        store = JudgmentStore(tmp / "judgments.jsonl")
        before = len(store.done)
        t0 = time.perf_counter()
        records = run_judge(name, ask, shown, lambda u: grid_path(grids_dir, *u, text).read_bytes(), store,
                            p["batch_size"], load=(lambda b: b.decode()) if text else None)
        seconds = time.perf_counter() - t0 - state.get("load_seconds", 0.0)
        asked = len(store.done) - before
        # the published file: one judgment per presentation, in presentation order (resume order aside)
        write_atomic(tmp / "judgments.jsonl",
                     lambda f: Path(f).write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records)))
        stats = {"judge": name, "model": p["model"], "backend": p["backend"], "presentations": len(shown),
                 "asked_this_run": asked, "reused": len(shown) - asked,
                 "unparseable": sum(not r["parsed"] for r in records),
                 "load_seconds": round(state.get("load_seconds", 0.0), 3), "generate_seconds": round(seconds, 3),
                 "judgments_per_second": round(asked / seconds, 3) if asked and seconds > 0 else None}
        (tmp / "judge.json").write_text(json.dumps(stats, indent=1))
        log.info("judge %s: %s", name, json.dumps(stats))


# --- rank -------------------------------------------------------------------------------------------
def rank(st: Stage, grids_dirs: dict[str, str], judge_dirs: dict[str, dict[str, str]], out: str) -> None:
    """Table 3 over every token seed: each presentation's consensus (majority of all judges, ties dropped
    and counted), each method's win rate pooled over seeds with a bootstrap 95% interval over the
    comparisons, the ordinal LLM Rank, and per-judge agreement. ``grids_dirs``: token seed -> grids
    artifact; ``judge_dirs``: token seed -> judge name -> judge artifact."""
    p = st.params
    presented, answers, methods, per_seed = [], {}, None, {}
    for seed, gdir in grids_dirs.items():
        meta = json.loads((Path(gdir) / "presentations.json").read_text())
        methods = methods or list(meta["methods"])
        shown = [{**s, "seed": seed} for s in meta["presentations"]]
        for name, jdir in judge_dirs[seed].items():
            recs = [json.loads(line) for line in (Path(jdir) / "judgments.jsonl").read_text().splitlines()]
            if [(r["a"], r["b"]) for r in recs] != [(s["a"], s["b"]) for s in shown]:
                raise ValueError(f"judge {name} on token seed {seed}: {jdir} does not answer {gdir}'s presentations")
            answers.setdefault(name, []).extend(r["answer"] for r in recs)
        presented += shown
        per_seed[seed] = meta["methods"]
    results, counts = cons.comparisons(presented, answers)
    rates = cons.win_rates(results, methods)
    ci = cons.bootstrap(results, methods, n=p["bootstrap"], seed=p["bootstrap_seed"])
    ranks = cons.ranks(rates)
    wins = {m: sum(w == m for w, _ in results) for m in methods}
    played = {m: sum(m in r for r in results) for m in methods}
    table = {"methods": {m: {"win_rate": rates[m], "ci95": ci[m], "rank": ranks[m], "wins": wins[m],
                             "comparisons": played[m]} for m in methods},
             "counts": counts, "judges": cons.judge_agreement(presented, answers), "units_per_seed": per_seed,
             "token_seeds": list(grids_dirs), "bootstrap": p["bootstrap"]}
    with st.publish(out) as (tmp, _):
        table["example"] = _example(presented, answers, grids_dirs, tmp)
        (tmp / "table3.json").write_text(json.dumps(table, indent=1))
    log.info("rank: %s", json.dumps({m: (v["rank"], v["win_rate"]) for m, v in table["methods"].items()}))


def _example(presented: list[dict], answers: dict, grids_dirs: dict, tmp: Path) -> dict | None:
    """The first ELUDe-vs-backbone presentation (else the first one), its two grids copied at one cell's
    width per grid, for the report (Figure 6's layout)."""
    from PIL import Image

    if not presented:
        return None
    i = next((k for k, s in enumerate(presented) if {s["a"][0], s["b"][0]} == {"elude", "backbone"}), 0)
    s = presented[i]
    files = {}
    if is_text(grids_dirs[s["seed"]]):  # a text run: the two sets of texts as they were shown
        for side in ("a", "b"):
            files[side] = f"example_{side}.txt"
            (tmp / files[side]).write_bytes(grid_path(grids_dirs[s["seed"]], *s[side], True).read_bytes())
        return {"seed": s["seed"], "a": s["a"], "b": s["b"], "files": files,
                "answers": {j: a[i] for j, a in answers.items()}, "consensus": cons.consensus([a[i] for a in answers.values()])}
    for side in ("a", "b"):
        im = Image.open(grid_path(grids_dirs[s["seed"]], *s[side]))
        small = im.resize((336, 336), Image.NEAREST if im.size[0] <= 336 else Image.BICUBIC)
        files[side] = f"example_{side}.png"
        small.save(tmp / files[side], format="PNG")
    return {"seed": s["seed"], "a": s["a"], "b": s["b"], "files": files,
            "answers": {j: a[i] for j, a in answers.items()}, "consensus": cons.consensus([a[i] for a in answers.values()])}


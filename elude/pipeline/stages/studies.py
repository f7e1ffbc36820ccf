"""Workflow stages of the run's studies: dictionary structure (Table 4, Section B.3) and inference cost
(Table 5, Section B.4) on the first token seed, the clustering (and surgery) ablations over every seed (Table 7), and
ELUDe at a target expansion factor: the search's steps and Table 6's EF axis (Sec. E.6)."""
from __future__ import annotations

import json
import logging
import platform
from pathlib import Path
from typing import TYPE_CHECKING

from ...util.files import load_arrays
from ..input_keys import split_key
from .job import Stage, dataset, load_layer

if TYPE_CHECKING:  # torch and the measuring modules are imported where used: ablation and the EF axis need none
    import torch

log = logging.getLogger(__name__)


def elude_runs(merge_dir: str | Path) -> dict:
    """One ELUDe run's atoms, read from its merge artifact: per-neuron blocks of live sub-unit weight rows
    (input space: :mod:`elude.evaluation.dictionary`), and for comparison with the paper the same sub-units as their
    output-space atoms e_u."""
    import torch
    from safetensors.torch import load_file

    from ...evaluation import dictionary as dic

    t = load_file(str(Path(merge_dir) / "layer.safetensors"))
    n_units = json.loads((Path(merge_dir) / "layer.json").read_text())["out_features"]
    blocks = dic.elude_blocks(t["weight"], t["parent"], n_units)
    eye = torch.eye(n_units)
    return {"input": blocks, "output": [eye[u].expand(len(b), -1) for u, b in enumerate(blocks)]}


def baseline_atoms(model_dir: str | Path) -> torch.Tensor:
    """A trained baseline's live atoms: decoder rows of the features that fired on the training instances."""
    import torch

    from ...baselines.models import Baseline
    from ...evaluation import dictionary as dic

    alive = torch.from_numpy(load_arrays(Path(model_dir) / "activity.safetensors")["alive"])
    return dic.live(Baseline.load(model_dir).dictionary().cpu(), alive)


def dictionary(st: Stage, merge_dirs: list[str], baseline_dirs: dict[str, list[str]], out: str) -> None:
    """Table 4: per method, stability over every pair of its runs and effective rank and coherence over
    its runs (:func:`elude.evaluation.dictionary.method_row`). ``merge_dirs``: ELUDe's runs on identical inputs;
    ``baseline_dirs``: family -> its runs, one per init seed. Memory: one method's runs' atoms and one
    atoms x atoms cosine matrix at a time."""
    import torch

    from ...baselines import overcomplete_module
    from ...evaluation import dictionary as dic

    overcomplete_module("metrics")  # the capability check, before any work
    runs = [elude_runs(d) for d in merge_dirs]
    rows = {"elude": dic.method_row([r["input"] for r in runs]),
            "elude_output_space": dic.method_row([r["output"] for r in runs])}
    identical = all(all(torch.equal(a, b) for a, b in zip(runs[0]["input"], r["input"])) for r in runs[1:])
    rows["elude"]["runs_identical"] = identical
    for family, dirs in baseline_dirs.items():
        rows[family] = dic.method_row([baseline_atoms(d) for d in dirs])
        log.info("%s: stability %.4f", family, rows[family]["stability"]["mean"])
    log.info("ELUDe: stability %.4f over %d runs (identical: %s)", rows["elude"]["stability"]["mean"], len(runs),
             identical)
    with st.publish(out) as (tmp, manifest):
        (tmp / "table4.json").write_text(json.dumps({"rows": rows, "init_seeds": st.params["init_seeds"],
                                                     "elude_runs": len(merge_dirs)}, indent=1))
        manifest["stability"] = {k: r["stability"]["mean"] for k, r in rows.items()}


def efficiency_settings(params: dict, device: torch.device) -> dict:
    """The protocol's settings for ``device``: the GPU ones, or on the CPU those under ``cpu``; compile
    resolved (:func:`elude.evaluation.efficiency.compile_default`)."""
    from ...evaluation.efficiency import compile_default

    settings = {k: params[k] for k in ("batch_size", "warmup", "iterations", "rounds")}
    if device.type == "cpu":
        settings.update(params["cpu"])
    return {**settings, "compile": compile_default(params["compile"], device)}


def efficiency_table(backbone_dir: str, merge_dir: str, baseline_dirs: dict[str, str], data: dict,
                     device: torch.device, settings: dict) -> dict:
    """Table 5 (:func:`elude.evaluation.efficiency.measure`) of a run's artifacts on the evaluation split's first batch,
    every variant on the same loaded backbone. Memory: the backbone, one batch of activations, and one
    method's modules at a time."""
    import timm  # noqa: F401 (imported before the floor, like the data below: libraries are not the model)

    from ...baselines import overcomplete_sae
    from ...baselines.models import Baseline
    from ...evaluation.efficiency import (
        input_batch,
        measure,
        method_variants,
        release,
        rss_mb,
    )
    from ...method.layers import DisentangledLayer, LazyDisentangledLayer
    from ...models import backbones

    if baseline_dirs:
        overcomplete_sae()
    x = input_batch(dataset(data, "eval", backbone_dir), settings["batch_size"], device)
    release(device)
    floor = rss_mb()  # Python, the libraries and the input batch (CPU memory is counted above it)
    model, _, info = load_layer(backbone_dir)
    model.to(device).eval()
    path = info["path"]
    original = backbones.get_module(model, path)
    loaders = {f: (lambda d=d: Baseline.load(d, device)) for f, d in baseline_dirs.items()}
    variants = method_variants(model, path, dense=lambda: DisentangledLayer.load(merge_dir).to(device),
                               lazy=lambda: LazyDisentangledLayer.load(merge_dir, original), baselines=loaders)
    rows = measure(model, x, variants, warmup=settings["warmup"], iterations=settings["iterations"],
                   rounds=settings["rounds"], compile=settings["compile"], floor_mb=floor)
    return table5_of(rows, original, device, settings)


def table5_of(rows: dict, layer: torch.nn.Module, device: torch.device, settings: dict) -> dict:
    """The efficiency artifact's table: the measured rows with each variant's input dimension (what the
    method reads: ELUDe and the transcoder the layer input, SAEs the layer output) and where it ran."""
    import torch

    from ...models import backbones

    n_out, n_in = backbones.layer_weight_bias(layer)[0].shape
    for name, row in rows.items():
        row["input_dim"] = None if name == "backbone" else n_in if name.startswith("elude") or name == "transcoder" else n_out
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads")
    memory = ("torch.cuda.max_memory_allocated" if device.type == "cuda"
              else "peak resident set above the process's before any model was loaded")
    return {"device": device.type, "device_name": where, "settings": settings, "memory": memory, "rows": rows}


def efficiency(st: Stage, backbone_dir: str, merge_dir: str, baseline_dirs: dict[str, str], out: str) -> None:
    """Table 5 of the first token seed's artifacts (:func:`efficiency_table`): on a GPU with the protocol's
    settings, on the CPU with ``cpu``'s."""
    from ...models.backbones import resolve_device

    p = st.params
    device = resolve_device(p["device"])
    table = efficiency_table(backbone_dir, merge_dir, baseline_dirs, p["data"], device, efficiency_settings(p, device))
    log.info("Table 5 (%s): %s", table["device_name"],
             json.dumps({k: round(r["ms_per_batch"], 3) for k, r in table["rows"].items()}))
    with st.publish(out) as (tmp, manifest):
        (tmp / "table5.json").write_text(json.dumps(table, indent=1))
        manifest["ms_per_batch"] = {k: r["ms_per_batch"] for k, r in table["rows"].items()}


# --- ablation (Table 7) -----------------------------------------------------------------------------
ABLATION_COLUMNS = ("ms_subunits", "ms_subunits_pooled", "ms_random", "ms_units", "expansion_factor", "n_split_units")


def ablation(st: Stage, evaluate_dirs: dict[str, dict[str, str]], out: str,
             verify_dirs: dict[str, dict[str, str]] | None = None) -> None:
    """Table 7: per clustering (or surgery) variant (the base first) its sub-units' MS-Score in both spaces,
    its own random-partition control (the same K_u, dimensions assigned at random), the original units'
    score, the effective expansion factor and the number of split units, each mean ± std over the token
    seeds. ``evaluate_dirs``: variant -> token seed -> evaluate artifact; ``verify_dirs``: the same for the
    variants that change the surgery (their rows add the largest relative output difference over seeds)."""
    from ...reporting.ef_tables import stat

    variants = {v["name"]: v for v in st.params["variants"]}
    rows = {}
    for name, by_seed in evaluate_dirs.items():
        metrics = [json.loads((Path(d) / "metrics.json").read_text()) for d in by_seed.values()]
        ms = [m["ms_score"] for m in metrics]
        pct = lambda key: [None if m[key] is None else 100 * m[key] for m in ms]  # noqa: E731
        v = variants.get(name, {})  # (the base: no change)
        rows[name] = {"cluster": v.get("cluster", {}), **({"surgery": v["surgery"]} if v.get("surgery") else {}),
                      "ms_subunits": stat(pct("subunits_mean")),
                      "ms_subunits_pooled": stat(pct("subunits_mean_pooled")), "ms_random": stat(pct("random_mean")),
                      "ms_units": stat(pct("units_mean")),
                      "expansion_factor": stat([m["expansion_factor"] for m in metrics]),
                      "n_split_units": stat([m["n_split_units"] for m in metrics])}
        if name in (verify_dirs or {}):
            rows[name]["max_rel_diff"] = max(json.loads((Path(d) / "verify.json").read_text())["max_rel_diff"]
                                             for d in verify_dirs[name].values())
        log.info("ablation %s: MS-Score %.2f (random %.2f), EF %.2f", name, rows[name]["ms_subunits"]["mean"],
                 rows[name]["ms_random"]["mean"], rows[name]["expansion_factor"]["mean"])
    with st.publish(out) as (tmp, _):
        (tmp / "table7.json").write_text(json.dumps({"base": st.params["base"], "token_seeds": list(
            next(iter(evaluate_dirs.values()))), "rows": rows}, indent=1))


# --- ELUDe at a target expansion factor (Sec. E.6) and Table 6's EF axis ----------------------------------
def ef_search_step(st: Stage, prev_dir: str | None, cluster_dirs: list[str], out: str) -> None:
    """One bisection step of ``cluster.target_ef`` (:mod:`elude.method.expansion`): the effective EF of the candidate
    clustered for this step (``cluster_dirs``: its shards; none once the bracket is closed), the new bracket,
    the path and the closest candidate so far. The manifest's inputs name that candidate's cluster artifact,
    so the jobs downstream check its bytes; its path and choice are recorded there too."""
    from ...method import expansion as ef

    p = st.params
    state = json.loads((Path(prev_dir) / "search.json").read_text()) if prev_dir else ef.initial_state(len(p["values"]))
    state = {k: state[k] for k in ("lo", "hi", "path")}
    j = ef.next_index(state)
    if j is not None:
        ids = {json.loads((Path(d) / "manifest.json").read_text())["id"] for d in cluster_dirs}
        if ids != {p["candidates"][j]}:
            raise ValueError(f"ef_search step {p['step']}: expected the shards of cluster {p['candidates'][j]}, got {ids}")
        value, (e, subunits, units) = p["values"][j], ef.effective_ef(cluster_dirs)
        state = ef.advance(state, j, e, p["target_ef"], value=value, cluster=p["candidates"][j], n_subunits=subunits,
                           n_units=units, step=p["step"])
        log.info("ef_search step %d: %s = %s gives EF %.4f (target %g)", p["step"], p["axis"], value, e, p["target_ef"])
    chosen = ef.choose(state, p["target_ef"])
    done = ef.next_index(state) is None
    if p["step"] == ef.n_steps(len(p["values"])) - 1 and not done:
        raise RuntimeError(f"ef_search: the bracket is still open after the last step: {state}")
    st.inputs = {"cluster": chosen["cluster"]} if chosen else {}
    with st.publish(out) as (tmp, manifest):
        (tmp / "search.json").write_text(json.dumps({**state, "done": done, "chosen": chosen, "target_ef": p["target_ef"],
                                                     "axis": p["axis"], "values": p["values"]}, indent=1))
        manifest.update(path=state["path"], chosen=chosen, done=done)
    if done and chosen:
        log.info("ef_search: %s = %s, EF %.4f for target %g (%d clusterings)", p["axis"], chosen["value"], chosen["ef"],
                 p["target_ef"], len(state["path"]))


def ef_sweep(st: Stage, dirs: dict[str, dict[str, str]], out: str) -> None:
    """Table 6's EF axis: per target EF the rows of Table 2 (:func:`elude.reporting.summary.table2`: backbone, each
    baseline family at that EF, ELUDe matched to it) as mean ± std over the token seeds, each method's EF and
    LLM Rank (where judges ran), and ELUDe's search per seed. ``dirs``: :func:`ef_sweep_inputs` of the rules."""
    from ...reporting.ef_tables import ef_block
    from ...reporting.study_tables import table3
    from ...reporting.summary import table2

    read = lambda d, f: json.loads((Path(d) / f).read_text())  # noqa: E731
    blocks, searches = {}, {}
    for t in st.params["targets"]:
        key = f"{t:g}"
        seeds = [seed for target, seed in map(split_key, dirs["evaluate"]) if target == key]
        per_seed, efs = [], {}
        for seed in seeds:
            metrics = read(dirs["evaluate"][f"{key}-{seed}"], "metrics.json")
            baselines = {family: read(d, "metrics.json") for (family, target, s), d in
                         ((split_key(k, 3), d) for k, d in dirs.get("baseline_eval", {}).items())
                         if (target, s) == (key, seed)}
            rows = table2(metrics, baselines)["rows"]
            per_seed.append(rows)
            for m, r in rows.items():
                efs.setdefault(m, []).append(r.get("ef", 1.0))  # Table 2's: features / units (backbone: 1)
            searches.setdefault(key, {})[seed] = read(dirs["ef_search"][f"{key}-{seed}"], "search.json")
        rank = dirs.get("rank", {}).get(key)
        ranks = {m: r["rank"] for m, r in table3(read(rank, "table3.json"))["rows"].items()} if rank else None
        blocks[key] = ef_block(per_seed, efs, ranks)
        log.info("EF %s: %s", key, json.dumps({m: r["ms_score"]["mean"] if r["ms_score"] else None
                                               for m, r in blocks[key].items()}))
    with st.publish(out) as (tmp, _):
        (tmp / "table6_ef.json").write_text(json.dumps({"targets": st.params["targets"], "blocks": blocks,
                                                        "searches": searches}, indent=1))

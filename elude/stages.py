"""One function per workflow stage: read inputs, call the method, write a content-addressed artifact.

Each function takes a :class:`Stage` (name, id, parameters, input ids) and plain paths, and publishes
its output folder atomically (see :func:`elude.artifacts.atomic_dir`). The Snakemake scripts in
``workflow_scripts/`` only unpack ``snakemake.*`` and call these.
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import backbones, cache as cache_mod, clustering, contributions, evaluation, surgery as surgery_mod
from .artifacts import atomic_dir, load_arrays, save_arrays, write_atomic
from .data import load_split
from .layers import DisentangledLayer
from .metrics import accuracy
from .progress import progress
from .topk import clamp_k, streaming_topk

log = logging.getLogger(__name__)


@dataclass
class Stage:
    name: str
    id: str
    params: dict
    inputs: dict[str, str] = field(default_factory=dict)

    def publish(self, out: str | Path, resumable: bool = False, **extra):
        return atomic_dir(out, self.name, self.id, self.params, self.inputs, extra, resumable)


def shard_units(n_units: int, units_per_shard: int, shard: int) -> range:
    return range(shard * units_per_shard, min((shard + 1) * units_per_shard, n_units))


def n_shards(n_units: int, units_per_shard: int) -> int:
    return (n_units + units_per_shard - 1) // units_per_shard


def shard_memory_mb(units_per_shard: int, k: int, n_upstream: int) -> int:
    """Memory request of a cluster/surgery shard job, from what :func:`cluster_shard` holds: the shard's
    top-k rows in float32 (x2 while gathering), one unit's k x k float64 distance matrix (x3 inside
    hdbscan; CPU backend, up to its precomputed limit), and ~1.5 GB for the Python/torch process."""
    rows = 2 * units_per_shard * k * n_upstream * 4
    dist = 3 * min(k, clustering.PRECOMPUTED_MAX_ROWS) ** 2 * 8
    return int(1500 + (rows + dist) / 2**20)


def _load_layer(backbone_dir: str | Path):
    model = backbones.load_backbone(backbone_dir)
    info = json.loads((Path(backbone_dir) / "layer.json").read_text())
    return model, backbones.get_module(model, info["path"]), info


# --- backbone ---------------------------------------------------------------------------------------
def backbone(st: Stage, out: str) -> None:
    p = st.params
    with st.publish(out) as (tmp, manifest):
        if p["kind"] == "demo":
            splits = {s: load_split(p["data"], s) for s in ("probe", "eval")}
            model, stats = backbones.train_demo(p["demo"]["arch"], p["demo"]["train"],
                                                splits["probe"].images, splits["probe"].labels)
            with torch.no_grad():
                stats["eval_accuracy"] = accuracy(model(splits["eval"].images), splits["eval"].labels)
            log.info("demo model: held-out accuracy %.4f", stats["eval_accuracy"])
            manifest["training"] = stats
            spec = backbones.demo_model_spec(p["demo"]["arch"])
        elif p["kind"] == "timm":
            spec = {"kind": "timm", "name": p["timm"]["name"], "kwargs": p["timm"].get("kwargs", {})}
            model = backbones.build_from_spec(spec)
            if p["timm"].get("weights"):
                from safetensors.torch import load_file

                w = p["timm"]["weights"]
                state = load_file(w) if w.endswith(".safetensors") else torch.load(w, map_location="cpu")
                model.load_state_dict(state)
        elif p["kind"] in ("hub", "factory"):
            spec = {"kind": p["kind"], **p[p["kind"]]}
            model = backbones.build_from_spec(spec, rebuild=False)
        else:
            raise ValueError(f"backbone.kind: {p['kind']!r} is not one of 'demo', 'timm', 'hub', 'factory'")
        layer = backbones.get_module(model, p["layer"])
        backbones.check_target_layer(layer, p["layer"])
        w, _ = backbones.layer_weight_bias(layer)
        info = {"path": p["layer"], "type": type(layer).__name__, "n_units": w.shape[0], "n_upstream": w.shape[1]}
        (tmp / "layer.json").write_text(json.dumps(info, indent=2))
        backbones.save_backbone(model, spec, tmp)
        manifest["layer"] = info


# --- cache ------------------------------------------------------------------------------------------
def cache(st: Stage, backbone_dir: str, out: str) -> None:
    """Memory: the model, one batch of activations and one chunk of rows (the probe images are in memory).
    Resumable per chunk (see :func:`elude.cache.write_cache`)."""
    p = st.params
    device = backbones.resolve_device(p["device"])
    model, layer, _ = _load_layer(backbone_dir)
    split = load_split(p["data"], "probe")
    with st.publish(out, resumable=True) as (tmp, manifest):
        manifest.update(cache_mod.write_cache(model.to(device), layer, split.images, tmp, batch_size=p["batch_size"],
                                              dtype=p["dtype"], chunk_rows=p["chunk_rows"],
                                              compressor=p["compressor"], device=device,
                                              tokens_per_image=p["tokens_per_image"], token_seed=p["token_seed"]))
        manifest["bad_images_skipped"] = split.skipped


# --- top-k ------------------------------------------------------------------------------------------
def topk(st: Stage, cache_dir: str, backbone_dir: str, out: str) -> None:
    """Memory: O(k x units) plus one chunk of rows."""
    _, layer, info = _load_layer(backbone_dir)
    w, b = backbones.layer_weight_bias(layer)
    q, _ = cache_mod.open_cache(cache_dir)
    k = clamp_k(st.params["k"], q.shape[0])
    with st.publish(out) as (tmp, manifest):
        idx, val = streaming_topk(q, w, b, k)
        save_arrays(tmp / "topk.safetensors", {"indices": idx, "values": val})
        manifest.update({"k": k, "k_requested": st.params["k"], "k_clamped": k != st.params["k"],
                         "n_units": info["n_units"], "n_instances": int(q.shape[0])})


# --- cluster (one unit shard) -----------------------------------------------------------------------
def cluster_shard(st: Stage, shard: int, cache_dir: str, topk_dir: str, backbone_dir: str, out: str) -> None:
    """Memory: the shard's top-k rows (units_per_shard x k x upstream float32), gathered in one pass over
    the cache, plus one unit's k x k distance matrix (float64) on the CPU backend.

    Resumable per unit: each finished unit is saved in the partial folder, and a rerun skips it. A unit
    whose top-k pre-activations are all <= 0 never activates: it is not clustered and stays one sub-unit.
    """
    p = st.params
    backend = clustering.resolve_backend(p["backend"])
    _, layer, info = _load_layer(backbone_dir)
    w, _ = backbones.layer_weight_bias(layer)
    top = load_arrays(Path(topk_dir) / "topk.safetensors")
    units = list(shard_units(info["n_units"], p["units_per_shard"], shard))
    q, _ = cache_mod.open_cache(cache_dir)
    with st.publish(out, shard=shard, backend=backend, resumable=True) as (tmp, manifest):
        unit_dir = tmp / "units"
        unit_dir.mkdir(exist_ok=True)
        unit_file = lambda u: unit_dir / f"unit-{u:06d}.safetensors"  # noqa: E731
        todo = [u for u in units if not unit_file(u).exists()]
        log.info("cluster shard %d: %d units, %d done in an earlier run, %d to cluster (backend %s)",
                 shard, len(units), len(units) - len(todo), len(todo), backend)
        rows = cache_mod.gather_rows(q, top["indices"][todo].reshape(-1)).reshape(len(todo), -1, q.shape[1])
        for i, u in progress(enumerate(todo), len(todo), f"cluster shard {shard} units"):
            never_active = bool(top["values"][u].max() <= 0)
            c = contributions.normalise_rows(contributions.contributions(rows[i], w[u].numpy()))
            if never_active:
                lab, pr = np.full(len(c), -1, np.int64), np.zeros(len(c), np.float32)
            else:
                lab, pr = clustering.hdbscan_labels(c, min_cluster_size=p["min_cluster_size"],
                                                    min_samples=p["min_samples"],
                                                    method=p["cluster_selection_method"], backend=backend)
            save_arrays(unit_file(u), {"labels": lab.astype(np.int32), "probabilities": pr.astype(np.float32),
                                       "representatives": clustering.representatives(c, lab, pr),
                                       "never_active": np.array([never_active])})
        per_unit = [load_arrays(unit_file(u)) for u in units]
        save_arrays(tmp / "clusters.safetensors", {
            "units": np.array(units, np.int64),
            "labels": np.stack([r["labels"] for r in per_unit]),
            "probabilities": np.stack([r["probabilities"] for r in per_unit]),
            "n_clusters": np.array([len(r["representatives"]) for r in per_unit], np.int64),
            "representatives": np.concatenate([r["representatives"] for r in per_unit]),
            "never_active": np.concatenate([r["never_active"] for r in per_unit])})
        shutil.rmtree(unit_dir)
        manifest["units_resumed"] = len(units) - len(todo)
        manifest["n_clusters"] = {str(u): len(r["representatives"]) for u, r in zip(units, per_unit)}
        manifest["never_active_units"] = [u for u, r in zip(units, per_unit) if r["never_active"][0]]
        if manifest["never_active_units"]:
            log.warning("units that never activate (left unchanged): %s", manifest["never_active_units"])


def read_clusters(folder: str | Path) -> dict:
    z = load_arrays(Path(folder) / "clusters.safetensors")
    offsets = np.concatenate([[0], np.cumsum(z["n_clusters"])])
    return {"units": z["units"], "labels": z["labels"], "probabilities": z["probabilities"],
            "never_active": z["never_active"],
            "reps": [z["representatives"][offsets[i] : offsets[i + 1]] for i in range(len(z["units"]))]}


# --- surgery (one unit shard) -----------------------------------------------------------------------
def surgery_shard(st: Stage, cluster_dir: str, cache_dir: str, topk_dir: str, backbone_dir: str, out: str) -> None:
    """Memory: the shard's top-k rows, as in :func:`cluster_shard`, and 20 candidate splits of one unit."""
    _, layer, _ = _load_layer(backbone_dir)
    w, b = backbones.layer_weight_bias(layer)
    cl = read_clusters(cluster_dir)
    top = load_arrays(Path(topk_dir) / "topk.safetensors")
    q, _ = cache_mod.open_cache(cache_dir)
    units = cl["units"]
    rows = cache_mod.gather_rows(q, top["indices"][units].reshape(-1)).reshape(len(units), -1, q.shape[1])
    grid = st.params["rho_grid"]
    fracs, omegas, rhos, scores = [], [], [], []
    for i, u in progress(enumerate(units), len(units), "surgery units"):
        contrib = contributions.contributions(rows[i], w[u].numpy()).astype(np.float64)
        split = surgery_mod.split_unit(cl["reps"][i], contrib, float(b[u]), cl["labels"][i], grid)
        fracs.append(split.fractions)
        omegas.append(split.omega)
        rhos.append(np.nan if split.rho is None else split.rho)
        scores.append(split.scores or [np.nan] * len(grid))
    with st.publish(out) as (tmp, manifest):
        save_arrays(tmp / "surgery.safetensors", {
            "units": np.asarray(units, np.int64), "fractions": np.concatenate(fracs), "omegas": np.concatenate(omegas),
            "n_subunits": np.array([len(o) for o in omegas], np.int64), "rho": np.array(rhos, np.float64),
            "scores": np.array(scores, np.float64), "rho_grid": np.array(grid, np.float64)})
        manifest["rho"] = {str(u): (None if np.isnan(r) else r) for u, r in zip(units, rhos)}


# --- merge ------------------------------------------------------------------------------------------
def merge(st: Stage, surgery_dirs: list[str], cluster_dirs: list[str], backbone_dir: str, out: str) -> None:
    _, layer, info = _load_layer(backbone_dir)
    fracs, omegas, units_meta = {}, {}, {}
    for s_dir, c_dir in zip(surgery_dirs, cluster_dirs):
        z = load_arrays(Path(s_dir) / "surgery.safetensors")
        cl = read_clusters(c_dir)
        offsets = np.concatenate([[0], np.cumsum(z["n_subunits"])])
        for i, u in enumerate(z["units"].tolist()):
            fracs[u] = z["fractions"][offsets[i] : offsets[i + 1]]
            omegas[u] = z["omegas"][offsets[i] : offsets[i + 1]]
            lab = cl["labels"][i]
            k = int(z["n_subunits"][i])
            units_meta[u] = {"k": k, "rho": None if np.isnan(z["rho"][i]) else float(z["rho"][i]),
                             "cluster_sizes": np.bincount(lab[lab >= 0]).tolist(), "noise": int((lab < 0).sum()),
                             "top_k": int(len(lab)), "never_active": bool(cl["never_active"][i]),
                             # share of upstream dimensions won by a proper subset of the sub-units (eq. 3)
                             "exclusive_fraction": float((np.abs(fracs[u] - 1.0 / k) > 1e-12).any(0).mean())}
    if sorted(fracs) != list(range(info["n_units"])):
        raise ValueError(f"merge: surgery shards cover {len(fracs)} of {info['n_units']} units")
    order = range(info["n_units"])
    meta = {"layer": info["path"], "units": [units_meta[u] for u in order]}
    dl = DisentangledLayer.from_fractions(layer, [fracs[u] for u in order], [omegas[u] for u in order], meta)
    with st.publish(out, n_subunits=dl.n_subunits) as (tmp, _):
        dl.save(tmp)


# --- verify -----------------------------------------------------------------------------------------
class NotLosslessError(RuntimeError):
    pass


def verify(st: Stage, backbone_dir: str, merge_dir: str, out: str) -> dict:
    p = st.params
    device = backbones.resolve_device(p["device"])
    model, _, info = _load_layer(backbone_dir)
    split = load_split(p["data"], "eval")
    result = evaluation.verify(model.to(device), info["path"], DisentangledLayer.load(merge_dir), split.images, p["batch_size"])
    failures = evaluation.lossless_failures(result, p["max_rel_diff"])
    result["lossless"] = not failures
    result["bad_images_skipped"] = len(split.skipped)
    log.info("verify: %s", json.dumps(result))
    if failures:
        raise NotLosslessError(f"verify (artifact {st.id}): the disentangled model is NOT lossless: "
                               + "; ".join(failures))
    with st.publish(out) as (tmp, _):
        (tmp / "verify.json").write_text(json.dumps(result, indent=2))
    return result


# --- evaluate ---------------------------------------------------------------------------------------
def evaluate(st: Stage, backbone_dir: str, merge_dir: str, out: str) -> None:
    p = st.params
    device = backbones.resolve_device(p["device"])
    model, _, info = _load_layer(backbone_dir)
    split = load_split(p["data"], "eval")
    res = evaluation.evaluate(model.to(device), info["path"], DisentangledLayer.load(merge_dir), split.images, split.labels,
                              ms_top_k=p["ms_top_k"], random_seed=p["random_seed"], batch_size=p["batch_size"])
    log.info("evaluate: %s", json.dumps(res["summary"]))
    with st.publish(out, bad_images_skipped=split.skipped) as (tmp, _):
        (tmp / "metrics.json").write_text(json.dumps(res["summary"], indent=2))
        save_arrays(tmp / "tables.safetensors", res["tables"])


# --- report -----------------------------------------------------------------------------------------
def report(st: Stage, verify_dir: str, evaluate_dir: str, merge_dir: str, artifacts: dict[str, str],
           out: str) -> None:
    from . import report as report_mod

    verify_res = json.loads((Path(verify_dir) / "verify.json").read_text())
    metrics = json.loads((Path(evaluate_dir) / "metrics.json").read_text())
    tables = load_arrays(Path(evaluate_dir) / "tables.safetensors")
    layer_meta = json.loads((Path(merge_dir) / "layer.json").read_text())["metadata"]
    summary = report_mod.summary(st.params["run_name"], verify_res, metrics, layer_meta,
                                 {**artifacts, "report": str(out)})
    raw = load_split(st.params["data"], "eval").raw
    with st.publish(out) as (tmp, _):
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
        (tmp / "report.html").write_text(report_mod.html(summary, metrics, tables, layer_meta, raw,
                                                         st.params["n_examples"]))


def publish_run(report_dir: str | Path, run_dir: str | Path) -> None:
    """Copy a run's summary.json and report.html to ``results/runs/<run name>/``: a named alias of the
    content-addressed report, refreshed after every successful run (even one that reran nothing)."""
    report_dir, run_dir = Path(report_dir), Path(run_dir)
    if not (report_dir / "summary.json").exists():
        return  # a run that targeted an earlier stage
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in ("summary.json", "report.html"):
        write_atomic(run_dir / name, lambda tmp: shutil.copyfile(report_dir / name, tmp))
    log.info("published %s to %s", report_dir, run_dir)


def run_logged(stage: dict, log_file: str, threads: int, fn) -> None:
    """Run a stage job: logging to its log file and the terminal, torch threads, and a failure message
    that names the stage, the artifact id and the log file."""
    from .progress import setup_logging

    setup_logging(log_file, f"{stage['name']} {stage['id']}")
    torch.set_num_threads(max(1, int(threads)))
    try:
        fn(Stage(**stage))
    except Exception as exc:
        log.error("stage %s (artifact %s) failed: %s: %s -- log: %s", stage["name"], stage["id"],
                  type(exc).__name__, exc, log_file)
        raise

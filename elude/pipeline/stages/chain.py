"""ELUDe's own stages, in DAG order: backbone, cache (dataset shards), top-k (parts, merge), cluster and
surgery (unit shards), merge, verify, evaluate. Each reads its inputs, calls the method (:mod:`elude.method`)
and publishes its artifact."""
from __future__ import annotations

import json
import logging
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ...demo import vit as demo_vit
from ...evaluation import diagnostics, scoring
from ...evaluation.metrics import accuracy
from ...method import clustering, contributions
from ...method import surgery as surgery_mod
from ...method.layers import DisentangledLayer
from ...method.topk import clamp_k, merge_topk, streaming_topk
from ...models import backbones
from ...models import cache as cache_mod
from ...models.data import materialize, open_dataset
from ...util.files import load_arrays, save_arrays
from ...util.progress import progress
from ..plan import shard_units
from .job import Stage, layer_weights, model_job

log = logging.getLogger(__name__)


# --- backbone ---------------------------------------------------------------------------------------
def backbone(st: Stage, out: str) -> None:
    """Build (or train, for the demo) the model once; save its weights, the target layer's shape and the
    preprocessing every later stage applies to image files (native, with ``preprocess`` overrides)."""
    p = st.params
    with st.publish(out) as (tmp, manifest):
        if p["kind"] == "demo" and p["data"]["kind"] == "text":  # a tiny GPT-2 and its tokenizer
            from ...demo import lm as demo_lm

            device = backbones.resolve_device(p.get("device", "cpu"))
            model, spec, manifest["training"] = demo_lm.train_demo_lm(p["demo"], p["data"], tmp / "tokenizer", device)
            pre = None
        elif p["kind"] == "demo":
            spec = demo_vit.demo_model_spec(p["demo"]["arch"])  # the layer is checked before the training
            backbones.check_target_layer(backbones.get_module(backbones.build_from_spec(spec), p["layer"]), p["layer"])
            pre = {"size": p["demo"]["arch"]["img_size"], **demo_vit.DEMO_PREPROCESS, **(p.get("preprocess") or {})}
            splits = {s: open_dataset(p["data"], s, pre) for s in ("probe", "eval")}
            (x, y), (x_eval, y_eval) = materialize(splits["probe"]), materialize(splits["eval"])
            device = backbones.resolve_device(p.get("device", "cpu"))
            model, stats = demo_vit.train_demo(p["demo"]["arch"], p["demo"]["train"], x, y, device)
            with torch.no_grad():
                stats["eval_accuracy"] = accuracy(model(x_eval), y_eval)
            log.info("demo model: held-out accuracy %.4f", stats["eval_accuracy"])
            manifest["training"] = stats
        elif p["kind"] == "timm":
            spec = {"kind": "timm", "name": p["timm"]["name"], "kwargs": p["timm"].get("kwargs", {})}
            model = backbones.build_from_spec(spec, rebuild=False)  # pretrained: the user's hub cache
            if p["timm"].get("weights"):
                t = p["timm"]
                state = backbones.load_weights(t["weights"], st.runtime.get("trust_pickle", False), t.get("checkpoint_key"))
                try:
                    model.load_state_dict(state)
                except RuntimeError as exc:
                    raise ValueError(f"backbone.timm.weights: {t['weights']} does not fit timm model {t['name']} with "
                                     f"kwargs {spec['kwargs']} ({str(exc).splitlines()[1].strip()[:300]} ...): check "
                                     "backbone.timm.name and kwargs (e.g. num_classes, img_size)") from None
        elif p["kind"] in ("hub", "factory"):
            spec = {"kind": p["kind"], **p[p["kind"]]}
            model = backbones.build_from_spec(spec, rebuild=False)
        elif p["kind"] == "hf":
            h = p["hf"]
            model, spec = backbones.load_hf(h["model"], h["class"], h.get("submodule"), h.get("kwargs", {}))
        else:
            raise ValueError(f"backbone.kind: {p['kind']!r} is not one of 'demo', 'timm', 'hub', 'hf', 'factory'")
        if p.get("tokenizer"):  # text data is tokenized by it
            backbones.save_tokenizer(p["tokenizer"], tmp / "tokenizer")
        model = model.eval()
        layer = backbones.get_module(model, p["layer"])
        backbones.check_target_layer(layer, p["layer"])
        w, _ = backbones.layer_weight_bias(layer)
        info = {"path": p["layer"], "type": type(layer).__name__, "n_units": w.shape[0], "n_upstream": w.shape[1]}
        if p["kind"] != "demo":  # a text model (it has a tokenizer) has no image preprocessing
            native = None if (tmp / "tokenizer").is_dir() else backbones.native_preprocess(model, spec)
            pre = {**(native or {}), **(p.get("preprocess") or {})} if native or p.get("preprocess") else None
        (tmp / "layer.json").write_text(json.dumps(info, indent=2))
        (tmp / "preprocess.json").write_text(json.dumps(pre, indent=2))
        backbones.save_backbone(model, spec, tmp)
        manifest["layer"], manifest["preprocess"] = info, pre


# --- cache (one dataset shard) ----------------------------------------------------------------------
def cache_shard(st: Stage, shard: int, backbone_dir: str, out: str) -> None:
    """Cache dataset shard ``shard`` of ``shards`` (a contiguous block of probe images).
    Memory: the model and a bounded number of batches (see :func:`elude.models.cache.write_cache`).
    Resumable per chunk."""
    p = st.params
    job = model_job(p, backbone_dir, "probe")
    ds = job.data
    images = cache_mod.shard_range(len(ds), p["shards"], shard)
    if not images:
        raise ValueError(f"cache.shards={p['shards']} exceeds the {len(ds)} probe images: dataset shard {shard} "
                         "would be empty; lower cache.shards")
    with st.publish(out, resumable=True, shard=shard) as (tmp, manifest):
        manifest.update(cache_mod.write_cache(
            job.model, job.layer, ds, tmp, images=images, batch_size=p["batch_size"], dtype=p["dtype"],
            chunk_rows=p["chunk_rows"], compressor=p["compressor"], device=job.device,
            workers=st.runtime.get("workers", 0), tokens_per_image=p["tokens_per_image"], token_seed=p.get("token_seed", 0)))


# --- top-k ------------------------------------------------------------------------------------------
def topk_part(st: Stage, cache_dir: str, backbone_dir: str, out: str) -> None:
    """Partial top-k over one dataset shard (local row indices). Memory: O(k x units) plus one chunk."""
    w, b, _ = layer_weights(backbone_dir)
    c = cache_mod.Cache([cache_dir])
    with st.publish(out) as (tmp, manifest):
        idx, val = streaming_topk(c, w, b, st.params["k"])
        save_arrays(tmp / "topk.safetensors", {"indices": idx, "values": val})
        manifest["n_rows"] = c.n_rows


def topk(st: Stage, part_dirs: list[str], backbone_dir: str, out: str) -> None:
    """Merge the dataset shards' partial top-k (in shard order) into the top-k over the whole cache
    (eq. 1), with global row indices. Memory: O(k x units) per part."""
    info = json.loads((Path(backbone_dir) / "layer.json").read_text())
    rows = [json.loads((Path(d) / "manifest.json").read_text())["n_rows"] for d in part_dirs]
    offsets = np.concatenate([[0], np.cumsum(rows)])
    n_instances = int(offsets[-1])
    k = clamp_k(st.params["k"], n_instances)
    parts = []
    for off, d in zip(offsets, part_dirs):
        z = load_arrays(Path(d) / "topk.safetensors")
        parts.append((z["indices"] + off, z["values"]))
    with st.publish(out) as (tmp, manifest):
        idx, val = merge_topk(parts, k)
        save_arrays(tmp / "topk.safetensors", {"indices": idx, "values": val})
        manifest.update({"k": k, "k_requested": st.params["k"], "k_clamped": k != st.params["k"],
                         "n_units": info["n_units"], "n_instances": n_instances, "n_parts": len(part_dirs)})


# --- cluster (one unit shard) -----------------------------------------------------------------------
def cluster_shard(st: Stage, shard: int, cache_dirs: list[str], topk_dir: str, backbone_dir: str, out: str) -> None:
    """Memory: the shard's top-k rows (units_per_shard x k x upstream, in the cache's storage type),
    gathered in one pass over the cache, one unit's float32 contributions, plus the clustering's working
    set: blocks of distances and k x (min_samples + 1) radius edges (torch backend), or a k x k distance
    matrix (hdbscan backend) (:func:`shard_memory_mb`).

    Resumable per unit: each finished unit is saved in the partial folder, and a rerun skips it. A unit
    whose top-k pre-activations are all <= 0 never activates: it is not clustered and stays one sub-unit.
    """
    p = st.params
    backend = clustering.resolve_backend(p["backend"])
    red = p.get("reduce") or {"method": "none", "dims": 0}
    if red["method"] == "umap":
        clustering.umap_check()  # before any work
    w, _, info = layer_weights(backbone_dir)
    top = load_arrays(Path(topk_dir) / "topk.safetensors")
    units = list(shard_units(info["n_units"], p["units_per_shard"], shard))
    q = cache_mod.Cache(cache_dirs)
    with st.publish(out, shard=shard, backend=backend, resumable=True) as (tmp, manifest):
        unit_dir = tmp / "units"
        unit_dir.mkdir(exist_ok=True)
        unit_file = lambda u: unit_dir / f"unit-{u:06d}.safetensors"  # noqa: E731
        todo = [u for u in units if not unit_file(u).exists()]
        log.info("cluster shard %d: %d units, %d done in an earlier run, %d to cluster (backend %s)",
                 shard, len(units), len(units) - len(todo), len(todo), backend)
        # (nothing to read when every unit was done before a kill that came just after the last one)
        rows = q.gather(top["indices"][todo].reshape(-1), q.dtype).reshape(len(todo), -1, q.n_upstream) if todo else []

        def one(i: int) -> None:
            u, started = todo[i], time.perf_counter()
            r = clustering.cluster_unit(rows[i], w[u].numpy(), top["values"][u], min_cluster_size=p["min_cluster_size"],
                                        min_samples=p["min_samples"], method=p["cluster_selection_method"],
                                        backend=backend, reduce=red)
            save_arrays(unit_file(u), {"labels": r.labels.astype(np.int32), "probabilities": r.probabilities.astype(np.float32),
                                       "representatives": r.representatives, "never_active": np.array([r.never_active]),
                                       "variance_kept": np.array([r.variance_kept], np.float64),
                                       "seconds": np.array([time.perf_counter() - started])})

        at_once = clustering.units_at_once(st.runtime.get("units_at_once"), backend, len(rows[0]) if todo else 0,
                                           q.n_upstream, p["min_samples"] or p["min_cluster_size"], red)
        manifest["units_at_once"] = at_once
        if at_once == 1:
            for i in progress(range(len(todo)), len(todo), f"cluster shard {shard} units"):
                one(i)
        else:  # each unit writes its own file: the order does not matter. A new thread's OpenMP team would
            # use every core (omp_set_num_threads is per thread): the job's threads are shared out explicitly
            share = max(1, torch.get_num_threads() // at_once)
            with ThreadPoolExecutor(at_once, initializer=torch.set_num_threads, initargs=(share,)) as pool:
                for _ in progress(pool.map(one, range(len(todo))), len(todo), f"cluster shard {shard} units"):
                    pass
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
        # wall seconds per unit (with units_at_once > 1 they overlap), for what a layer costs (docs/performance.md)
        manifest["unit_seconds"] = {str(u): round(float(r["seconds"][0]), 3) for u, r in zip(units, per_unit) if "seconds" in r}
        manifest["n_clusters"] = {str(u): len(r["representatives"]) for u, r in zip(units, per_unit)}
        manifest["never_active_units"] = [u for u, r in zip(units, per_unit) if r["never_active"][0]]
        if red["method"] != "none":  # fraction of each unit's contribution variance the reduction kept
            manifest["variance_kept"] = {str(u): round(float(r["variance_kept"][0]), 6) for u, r in zip(units, per_unit)}
        if manifest["never_active_units"]:
            log.warning("units that never activate (left unchanged): %s", manifest["never_active_units"])


def read_clusters(folder: str | Path) -> dict:
    z = load_arrays(Path(folder) / "clusters.safetensors")
    offsets = np.concatenate([[0], np.cumsum(z["n_clusters"])])
    return {"units": z["units"], "labels": z["labels"], "probabilities": z["probabilities"],
            "never_active": z["never_active"],
            "reps": [z["representatives"][offsets[i] : offsets[i + 1]] for i in range(len(z["units"]))]}


# --- surgery (one unit shard) -----------------------------------------------------------------------
def surgery_shard(st: Stage, cluster_dir: str, cache_dirs: list[str], topk_dir: str, backbone_dir: str, out: str) -> None:
    """Memory: the shard's top-k rows, as in :func:`cluster_shard`, and 20 candidate splits of one unit.

    With ``surgery.merge_siblings`` on, each split's too-similar sibling sub-units are then summed
    (:func:`elude.method.surgery.merge_similar_siblings`); ``merged_into`` records, for every sub-unit of the
    split (``n_split`` per unit), the merged sub-unit it went into, and the manifest the groups per unit."""
    w, b, _ = layer_weights(backbone_dir)
    cl = read_clusters(cluster_dir)
    top = load_arrays(Path(topk_dir) / "topk.safetensors")
    q = cache_mod.Cache(cache_dirs)
    units = cl["units"]
    rows = q.gather(top["indices"][units].reshape(-1), q.dtype).reshape(len(units), -1, q.n_upstream)
    grid = st.params["rho_grid"]
    siblings = st.params.get("merge_siblings")  # only in the params when on (plan.surgery_params)
    fracs, omegas, rhos, scores, n_split, merged_into, merged = [], [], [], [], [], [], {}
    for i, u in progress(enumerate(units), len(units), "surgery units"):
        contrib = contributions.contributions(rows[i], w[u].numpy()).astype(np.float64)
        split = surgery_mod.split_unit(cl["reps"][i], contrib, float(b[u]), cl["labels"][i], grid)
        frac, omega = split.fractions, split.omega
        if siblings:
            m = surgery_mod.merge_similar_siblings(frac, contrib, float(b[u]), cl["labels"][i], **siblings)
            frac, omega = m.fractions, m.omega
            n_split.append(len(split.omega))
            merged_into.append(m.merged_into())
            if len(m.groups) < len(split.omega):
                merged[str(u)] = m.groups
        fracs.append(frac)
        omegas.append(omega)
        rhos.append(np.nan if split.rho is None else split.rho)
        scores.append(split.scores or [np.nan] * len(grid))
    arrays = {"units": np.asarray(units, np.int64), "fractions": np.concatenate(fracs), "omegas": np.concatenate(omegas),
              "n_subunits": np.array([len(o) for o in omegas], np.int64), "rho": np.array(rhos, np.float64),
              "scores": np.array(scores, np.float64), "rho_grid": np.array(grid, np.float64)}
    with st.publish(out) as (tmp, manifest):
        if siblings:
            arrays.update(n_split=np.array(n_split, np.int64), merged_into=np.concatenate(merged_into))
            manifest["merge_siblings"] = {"subunits_before": int(sum(n_split)),
                                          "subunits_after": int(arrays["n_subunits"].sum()), "merged": merged}
        save_arrays(tmp / "surgery.safetensors", arrays)
        manifest["rho"] = {str(u): (None if np.isnan(r) else r) for u, r in zip(units, rhos)}


# --- merge ------------------------------------------------------------------------------------------
def merge(st: Stage, surgery_dirs: list[str], cluster_dirs: list[str], backbone_dir: str, out: str) -> None:
    w, b, info = layer_weights(backbone_dir)  # (not the model: a merge needs only the layer's weights)
    fracs, omegas, units_meta = {}, {}, {}
    for s_dir, c_dir in zip(surgery_dirs, cluster_dirs):
        z = load_arrays(Path(s_dir) / "surgery.safetensors")
        cl = read_clusters(c_dir)
        offsets = np.concatenate([[0], np.cumsum(z["n_subunits"])])
        split_offsets = np.concatenate([[0], np.cumsum(z["n_split"])]) if "n_split" in z else None
        for i, u in enumerate(z["units"].tolist()):
            fracs[u] = z["fractions"][offsets[i] : offsets[i + 1]]
            omegas[u] = z["omegas"][offsets[i] : offsets[i + 1]]
            lab = cl["labels"][i]
            k = int(z["n_subunits"][i])
            units_meta[u] = {"k": k, "rho": None if np.isnan(z["rho"][i]) else float(z["rho"][i]),
                             "cluster_sizes": np.bincount(lab[lab >= 0]).tolist(), "noise": int((lab < 0).sum()),
                             "top_k": int(len(lab)), "never_active": bool(cl["never_active"][i]),
                             "exclusive_fraction": diagnostics.exclusive_fraction(fracs[u])}
            if split_offsets is not None:  # surgery.merge_siblings: sub-unit c sums the clusters merged into it
                into = z["merged_into"][split_offsets[i] : split_offsets[i + 1]]
                meta = units_meta[u]
                meta.update(k_before_merge=len(into), clusters=[np.flatnonzero(into == c).tolist() for c in range(k)])
                if meta["cluster_sizes"]:  # per sub-unit: its clusters' instances
                    meta["cluster_sizes"] = np.bincount(into, weights=meta["cluster_sizes"]).astype(int).tolist()
    if sorted(fracs) != list(range(info["n_units"])):
        raise ValueError(f"merge: surgery shards cover {len(fracs)} of {info['n_units']} units")
    order = range(info["n_units"])
    meta = {"layer": info["path"], "units": [units_meta[u] for u in order]}
    dl = DisentangledLayer.from_weights(w, b, info["kind"], [fracs[u] for u in order], [omegas[u] for u in order], meta)
    with st.publish(out, n_subunits=dl.n_subunits) as (tmp, _):
        dl.save(tmp)


# --- verify -----------------------------------------------------------------------------------------
class NotLosslessError(RuntimeError):
    pass


def verify(st: Stage, backbone_dir: str, merge_dir: str, out: str) -> dict:
    """Memory: the model and one batch (both layers' outputs)."""
    p = st.params
    job = model_job(p, backbone_dir, "eval")
    result = scoring.verify(job.model, job.info["path"], DisentangledLayer.load(merge_dir), job.data, p["batch_size"],
                               st.runtime.get("workers", 0))
    failures = scoring.lossless_failures(result, p["max_rel_diff"])
    result["lossless"] = not failures
    log.info("verify: %s", json.dumps({k: v for k, v in result.items() if k != "bad_images_skipped"}))
    if failures:
        raise NotLosslessError(f"verify (artifact {st.id}): the disentangled model is NOT lossless: "
                               + "; ".join(failures))
    with st.publish(out) as (tmp, _):
        (tmp / "verify.json").write_text(json.dumps(result, indent=2))
    return result


# --- evaluate ---------------------------------------------------------------------------------------
def evaluate(st: Stage, backbone_dir: str, merge_dir: str, cache_dirs: list[str], out: str) -> None:
    """Memory: see :mod:`elude.evaluation.scoring` (streamed; per-unit top-K lists and one batch; then the
    activation cache a chunk at a time, for the features live on the probe instances)."""
    p = st.params
    job = model_job(p, backbone_dir, "eval")
    res = scoring.evaluate(job.model, job.info["path"], DisentangledLayer.load(merge_dir), job.data,
                           ms_top_k=p["ms_top_k"], random_seed=p["random_seed"], batch_size=p["batch_size"],
                           workers=st.runtime.get("workers", 0), accuracy=p["accuracy"],
                           probe=cache_mod.Cache(cache_dirs))
    log.info("evaluate: %s", json.dumps({k: v for k, v in res["summary"].items() if k != "bad_images_skipped"}))
    with st.publish(out) as (tmp, _):
        (tmp / "metrics.json").write_text(json.dumps(res["summary"], indent=2))
        save_arrays(tmp / "tables.safetensors", res["tables"])

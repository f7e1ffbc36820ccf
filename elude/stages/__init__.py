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

from .. import backbones, cache as cache_mod, clustering, contributions, evaluation, surgery as surgery_mod
from ..artifacts import atomic_dir, load_arrays, save_arrays
from ..data import materialize, open_dataset
from ..layers import DisentangledLayer
from ..metrics import accuracy
from ..progress import progress
from ..topk import clamp_k, merge_topk, streaming_topk

log = logging.getLogger(__name__)


@dataclass
class Stage:
    name: str
    id: str
    params: dict
    inputs: dict[str, str] = field(default_factory=dict)
    runtime: dict = field(default_factory=dict)  # settings that do not change results (not in the id)

    def publish(self, out: str | Path, resumable: bool = False, **extra):
        return atomic_dir(out, self.name, self.id, self.params, self.inputs, extra, resumable)


def shard_units(n_units: int, units_per_shard: int, shard: int) -> range:
    return range(shard * units_per_shard, min((shard + 1) * units_per_shard, n_units))


def n_shards(n_units: int, units_per_shard: int) -> int:
    return (n_units + units_per_shard - 1) // units_per_shard


def shard_memory_mb(cluster: dict, k: int, n_upstream: int, itemsize: int = 2, gpu: bool = False) -> int:
    """Memory request of a cluster/surgery shard job, from what :func:`cluster_shard` holds: the shard's
    top-k rows in the cache's storage type (``itemsize`` bytes; x2 while gathering), one unit's rows as
    float32 contributions (x3: raw, normalised, a copy), ~1.5 GB for the process, and the clustering:
    ``cluster`` is the config's ``cluster`` section (units_per_shard, backend, min_samples, reduce).
    - torch backend (auto/torch): the points in float64 and float32 (reduced width with ``reduce``), a few
      blocks of distances, and the radius lists, k x (min_samples + 1) edges at
      :data:`clustering.TORCH_BYTES_PER_RADIUS_EDGE` each (indices, Borůvka and Prim bookkeeping; 52 bytes
      measured, doubled). With ``gpu`` the blocks and Borůvka's arrays live in GPU memory and the host
      keeps the float64 points and Prim's int32 adjacency (16 bytes per edge: an estimate from the arrays,
      not yet measured on a GPU);
    - hdbscan backend: one unit's k x k float64 distance matrix (x3 inside hdbscan) up to its precomputed limit.
    """
    backend, red = cluster["backend"], cluster.get("reduce") or {}
    min_samples = cluster["min_samples"] or cluster["min_cluster_size"]
    dims = red.get("dims") if red.get("method", "none") != "none" else None
    rows = 2 * cluster["units_per_shard"] * k * n_upstream * itemsize + 3 * k * n_upstream * 4
    if backend in ("hdbscan", "cpu", "cuml"):
        work = 3 * min(k, clustering.PRECOMPUTED_MAX_ROWS) ** 2 * 8
    else:
        d = min(dims or n_upstream, n_upstream)
        per_edge = 16 if gpu else clustering.TORCH_BYTES_PER_RADIUS_EDGE
        work = k * d * (8 if gpu else 20) + (0 if gpu else 2 * clustering.BLOCK_MB["cpu"] * 2**20) \
            + k * (min(min_samples, k) + 1) * per_edge
    return int(1500 + (rows + work) / 2**20)


def topk_memory_mb(k: int, n_units: int, buffer_rows: int = 16384, unit_block: int = 64) -> int:
    """Memory request of a top-k job (partial or merge), from what :mod:`elude.topk` holds: the running
    and the new top-k (values float32 + indices int64, x2), the buffered activations (x2 while
    concatenated), one unit block's sort temporaries (x3), and ~1.5 GB for the process."""
    cols = max(k, buffer_rows)
    best = 2 * n_units * k * 12
    buf = 2 * n_units * (cols + 4096) * 4
    block = 3 * unit_block * (k + cols) * 12
    return int(1500 + (best + buf + block) / 2**20)


def cache_memory_mb(batch_size: int, workers: int, image_side: int) -> int:
    """Memory request of a cache job: 4 GB (model, one batch of activations, chunks waiting for the
    writer) plus the decoded batches the DataLoader workers hold (2 each, 3 x side x side float32)."""
    return int(4000 + 2 * max(1, workers) * batch_size * 3 * image_side**2 * 4 / 2**20)


def evaluate_memory_mb(n_units: int, n_subunits: int, ms_top_k: int, batch_size: int,
                       n_images: int = 50_000, instances: int = 257) -> int:
    """Memory request of an evaluate job (:mod:`elude.evaluation`): 4 GB, plus the layer-space embeddings
    of the selected (image, instance) pairs ((units + 2 x sub-units) x ms_top_k x units float32), the
    pooled embeddings (``n_images`` x units), and one batch of unit, sub-unit and control activations (x2)."""
    sets = n_units + 2 * n_subunits
    pairs = sets * ms_top_k * n_units * 4
    return int(4000 + (pairs + n_images * n_units * 4 + 2 * batch_size * instances * sets * 4) / 2**20)


def _load_layer(backbone_dir: str | Path):
    model = backbones.load_backbone(backbone_dir)
    info = json.loads((Path(backbone_dir) / "layer.json").read_text())
    return model, backbones.get_module(model, info["path"]), info


def layer_weights(backbone_dir: str | Path) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(W, b, layer.json) of the target layer, as :func:`elude.backbones.layer_weight_bias` gives them, read
    straight from the saved weights: stages that need only the layer's weights skip rebuilding the model
    (importing timm alone takes ~2.5 s per job). Falls back to the model where the keys differ."""
    from safetensors import safe_open

    info = json.loads((Path(backbone_dir) / "layer.json").read_text())
    with safe_open(str(Path(backbone_dir) / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        if f"{info['path']}.weight" in keys:
            w = f.get_tensor(f"{info['path']}.weight").float()
            w = w.reshape(w.shape[0], -1)
            bias = f"{info['path']}.bias"
            return w, f.get_tensor(bias).float() if bias in keys else torch.zeros(w.shape[0]), info
    w, b = backbones.layer_weight_bias(_load_layer(backbone_dir)[1])
    return w, b, info


def load_preprocess(backbone_dir: str | Path) -> dict | None:
    return json.loads((Path(backbone_dir) / "preprocess.json").read_text())


def _dataset(data: dict, split: str, backbone_dir: str | Path):
    return open_dataset(data, split, load_preprocess(backbone_dir))


DEMO_PREPROCESS = {"crop_pct": 1.0, "mean": [0.0], "std": [1.0], "interpolation": "bilinear", "channels": 1}


# --- backbone ---------------------------------------------------------------------------------------
def backbone(st: Stage, out: str) -> None:
    """Build (or train, for the demo) the model once; save its weights, the target layer's shape and the
    preprocessing every later stage applies to image files (native, with ``preprocess`` overrides)."""
    p = st.params
    with st.publish(out) as (tmp, manifest):
        if p["kind"] == "demo":
            spec = backbones.demo_model_spec(p["demo"]["arch"])  # the layer is checked before the training
            backbones.check_target_layer(backbones.get_module(backbones.build_from_spec(spec), p["layer"]), p["layer"])
            pre = {"size": p["demo"]["arch"]["img_size"], **DEMO_PREPROCESS, **(p.get("preprocess") or {})}
            splits = {s: open_dataset(p["data"], s, pre) for s in ("probe", "eval")}
            (x, y), (x_eval, y_eval) = materialize(splits["probe"]), materialize(splits["eval"])
            model, stats = backbones.train_demo(p["demo"]["arch"], p["demo"]["train"], x, y)
            with torch.no_grad():
                stats["eval_accuracy"] = accuracy(model(x_eval), y_eval)
            log.info("demo model: held-out accuracy %.4f", stats["eval_accuracy"])
            manifest["training"] = stats
        elif p["kind"] == "timm":
            spec = {"kind": "timm", "name": p["timm"]["name"], "kwargs": p["timm"].get("kwargs", {})}
            model = backbones.build_from_spec(spec, rebuild=False)  # pretrained: the user's hub cache
            if p["timm"].get("weights"):
                from safetensors.torch import load_file

                w = p["timm"]["weights"]
                state = load_file(w) if w.endswith(".safetensors") else torch.load(w, map_location="cpu")
                model.load_state_dict(state)
        elif p["kind"] in ("hub", "factory"):
            spec = {"kind": p["kind"], **p[p["kind"]]}
            model = backbones.build_from_spec(spec, rebuild=False)
        elif p["kind"] == "hf":
            h = p["hf"]
            model, spec = backbones.load_hf(h["model"], h["class"], h.get("submodule"), h.get("kwargs", {}))
        else:
            raise ValueError(f"backbone.kind: {p['kind']!r} is not one of 'demo', 'timm', 'hub', 'hf', 'factory'")
        model = model.eval()
        layer = backbones.get_module(model, p["layer"])
        backbones.check_target_layer(layer, p["layer"])
        w, _ = backbones.layer_weight_bias(layer)
        info = {"path": p["layer"], "type": type(layer).__name__, "n_units": w.shape[0], "n_upstream": w.shape[1]}
        if p["kind"] != "demo":
            native = backbones.native_preprocess(model, spec)
            pre = {**(native or {}), **(p.get("preprocess") or {})} if native or p.get("preprocess") else None
        (tmp / "layer.json").write_text(json.dumps(info, indent=2))
        (tmp / "preprocess.json").write_text(json.dumps(pre, indent=2))
        backbones.save_backbone(model, spec, tmp)
        manifest["layer"], manifest["preprocess"] = info, pre


# --- cache (one dataset shard) ----------------------------------------------------------------------
def cache_shard(st: Stage, shard: int, backbone_dir: str, out: str) -> None:
    """Cache dataset shard ``shard`` of ``shards`` (a contiguous block of probe images).
    Memory: the model and a bounded number of batches (see :func:`elude.cache.write_cache`).
    Resumable per chunk."""
    p = st.params
    device = backbones.resolve_device(p["device"])
    model, layer, _ = _load_layer(backbone_dir)
    ds = _dataset(p["data"], "probe", backbone_dir)
    images = cache_mod.shard_range(len(ds), p["shards"], shard)
    if not images:
        raise ValueError(f"cache.shards={p['shards']} exceeds the {len(ds)} probe images: dataset shard {shard} "
                         "would be empty; lower cache.shards")
    with st.publish(out, resumable=True, shard=shard) as (tmp, manifest):
        manifest.update(cache_mod.write_cache(
            model.to(device), layer, ds, tmp, images=images, batch_size=p["batch_size"], dtype=p["dtype"],
            chunk_rows=p["chunk_rows"], compressor=p["compressor"], device=device,
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
    device = clustering.backend_device(backend)
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
        for i, u in progress(enumerate(todo), len(todo), f"cluster shard {shard} units"):
            never_active = bool(top["values"][u].max() <= 0)
            c = contributions.normalise_rows(contributions.contributions(rows[i], w[u].numpy()))  # float32
            kept = 1.0
            if never_active:
                lab, pr = np.full(len(c), -1, np.int64), np.zeros(len(c), np.float32)
            else:
                # optional pre-reduction for clustering only; the representatives (eq. 2) stay in upstream space
                x, kept = clustering.reduce_dims(c, red["method"], red["dims"], device)
                lab, pr = clustering.hdbscan_labels(x, min_cluster_size=p["min_cluster_size"],
                                                    min_samples=p["min_samples"],
                                                    method=p["cluster_selection_method"], backend=backend)
            save_arrays(unit_file(u), {"labels": lab.astype(np.int32), "probabilities": pr.astype(np.float32),
                                       "representatives": clustering.representatives(c, lab, pr),
                                       "never_active": np.array([never_active]),
                                       "variance_kept": np.array([kept], np.float64)})
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
    """Memory: the shard's top-k rows, as in :func:`cluster_shard`, and 20 candidate splits of one unit."""
    w, b, _ = layer_weights(backbone_dir)
    cl = read_clusters(cluster_dir)
    top = load_arrays(Path(topk_dir) / "topk.safetensors")
    q = cache_mod.Cache(cache_dirs)
    units = cl["units"]
    rows = q.gather(top["indices"][units].reshape(-1), q.dtype).reshape(len(units), -1, q.n_upstream)
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
    """Memory: the model and one batch (both layers' outputs)."""
    p = st.params
    device = backbones.resolve_device(p["device"])
    model, _, info = _load_layer(backbone_dir)
    ds = _dataset(p["data"], "eval", backbone_dir)
    result = evaluation.verify(model.to(device), info["path"], DisentangledLayer.load(merge_dir), ds, p["batch_size"],
                               st.runtime.get("workers", 0))
    failures = evaluation.lossless_failures(result, p["max_rel_diff"])
    result["lossless"] = not failures
    log.info("verify: %s", json.dumps({k: v for k, v in result.items() if k != "bad_images_skipped"}))
    if failures:
        raise NotLosslessError(f"verify (artifact {st.id}): the disentangled model is NOT lossless: "
                               + "; ".join(failures))
    with st.publish(out) as (tmp, _):
        (tmp / "verify.json").write_text(json.dumps(result, indent=2))
    return result


# --- evaluate ---------------------------------------------------------------------------------------
def evaluate(st: Stage, backbone_dir: str, merge_dir: str, out: str) -> None:
    """Memory: see :mod:`elude.evaluation` (streamed; per-unit top-K lists and one batch)."""
    p = st.params
    device = backbones.resolve_device(p["device"])
    model, _, info = _load_layer(backbone_dir)
    ds = _dataset(p["data"], "eval", backbone_dir)
    res = evaluation.evaluate(model.to(device), info["path"], DisentangledLayer.load(merge_dir), ds,
                              ms_top_k=p["ms_top_k"], random_seed=p["random_seed"], batch_size=p["batch_size"],
                              workers=st.runtime.get("workers", 0), accuracy=p["accuracy"])
    log.info("evaluate: %s", json.dumps({k: v for k, v in res["summary"].items() if k != "bad_images_skipped"}))
    with st.publish(out) as (tmp, _):
        (tmp / "metrics.json").write_text(json.dumps(res["summary"], indent=2))
        save_arrays(tmp / "tables.safetensors", res["tables"])


# Stages that live in their own modules (imported last: they use the helpers above).
from .reporting import aggregate, publish_run, report  # noqa: E402,F401
from .running import run_logged  # noqa: E402,F401
